/*
 * metrics.h - a small Prometheus registry: counters, gauges and histograms
 * with up to METRIC_MAX_LABELS labels (plus one constant label per family,
 * e.g. model="..."), rendered in the text exposition format 0.0.4. Owned by
 * the loop thread (not thread-safe).
 */
#ifndef ORTHOSERVE_METRICS_H
#define ORTHOSERVE_METRICS_H

#include <stddef.h>
#include <stdint.h>

typedef struct metrics metrics;
typedef struct metric metric;

typedef enum { METRIC_COUNTER, METRIC_GAUGE, METRIC_HISTOGRAM } metric_type;

#define METRIC_MAX_LABELS 6
#define METRIC_MAX_BUCKETS 40

/* Free with metrics_free(). NULL on allocation failure. */
metrics *metrics_new(void);
void metrics_free(metrics *m);
/* Register a counter or gauge family (name and help are static strings;
 * label names may be NULL). Returns a handle that lives as long as m, or
 * NULL on allocation failure (every metric_* call accepts NULL). */
metric *metrics_add(metrics *m, const char *name, const char *help, metric_type t, const char *label1,
                    const char *label2);
/* The same with n (<= METRIC_MAX_LABELS) label names (static strings). */
metric *metrics_add_labels(metrics *m, const char *name, const char *help, metric_type t,
                           const char *const *labels, size_t n);
/* A histogram family: n_bounds (<= METRIC_MAX_BUCKETS) strictly increasing
 * finite upper bounds (copied); the +Inf bucket is implicit. Rendered as
 * cumulative NAME_bucket{le="..."}, NAME_sum and NAME_count. */
metric *metrics_add_histogram(metrics *m, const char *name, const char *help, const char *label1,
                              const double *bounds, size_t n_bounds);
/* A label rendered first on every series of the family, with a fixed value
 * (copied), e.g. model="stories260K.gguf". Not part of the lookup keys. */
void metric_const_label(metric *f, const char *name, const char *value);

/* Counters and gauges. v1/v2: the label values (NULL when the family has
 * fewer labels); a series is created at 0 on first use. */
void metric_add(metric *f, const char *v1, const char *v2, double v);
void metric_set(metric *f, const char *v1, const char *v2, double v);
double metric_get(metric *f, const char *v1, const char *v2);
/* The same with an array of as many values as the family has labels. */
void metric_addv(metric *f, const char *const *vals, double v);
void metric_setv(metric *f, const char *const *vals, double v);
/* Histograms: count x (n times) in the series with label value v1. */
void metric_observe(metric *f, const char *v1, double x);
void metric_observe_n(metric *f, const char *v1, double x, uint64_t n);
/* A histogram series' count and sum (0 when it does not exist). */
uint64_t metric_hist_count(metric *f, const char *v1, double *sum);

/* Render everything; *len is set. Free with free(). NULL on allocation failure. */
char *metrics_render(const metrics *m, size_t *len);

#endif
