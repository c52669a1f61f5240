/*
 * metrics.h - a small Prometheus registry: counters and gauges with up to
 * two labels, rendered in the text exposition format. Owned by the loop
 * thread (not thread-safe).
 */
#ifndef ORTHOSERVE_METRICS_H
#define ORTHOSERVE_METRICS_H

#include <stddef.h>

typedef struct metrics metrics;
typedef struct metric metric;

typedef enum { METRIC_COUNTER, METRIC_GAUGE } metric_type;

/* Free with metrics_free(). NULL on allocation failure. */
metrics *metrics_new(void);
void metrics_free(metrics *m);
/* Register a family (name and help are static strings; label names may be
 * NULL). Returns a handle that lives as long as m. */
metric *metrics_add(metrics *m, const char *name, const char *help, metric_type t, const char *label1,
                    const char *label2);
/* Add v to the series with these label values (NULL when the family has
 * fewer labels); the series is created at 0 first. */
void metric_add(metric *f, const char *v1, const char *v2, double v);
void metric_set(metric *f, const char *v1, const char *v2, double v);
double metric_get(metric *f, const char *v1, const char *v2);
/* Render everything; *len is set. Free with free(). */
char *metrics_render(const metrics *m, size_t *len);

#endif
