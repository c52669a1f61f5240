/*
 * metrics.c - Prometheus counters, gauges and histograms. Series are kept in
 * a growing array per family and found by linear search: there are a
 * handful per family (endpoints x statuses), and lookups happen a few times
 * per request (per token for the inter-token-latency histogram, which has
 * one series).
 */
#include "metrics.h"

#include <math.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *lv[METRIC_MAX_LABELS]; /* label values (NULL: absent, rendered "") */
    double v;                    /* counter / gauge value */
    uint64_t *bk;                /* histogram: (n_bounds + 1) non-cumulative counts */
    double sum;
    uint64_t count;
} series;

struct metric {
    const char *name, *help;
    const char *labels[METRIC_MAX_LABELS];
    size_t n_labels;
    char *const_name, *const_value;
    metric_type type;
    double bounds[METRIC_MAX_BUCKETS];
    size_t n_bounds;
    series *s;
    size_t n, cap;
    metric *next;
};

struct metrics {
    metric *head, *tail;
};

metrics *metrics_new(void) { return calloc(1, sizeof(metrics)); }

static void series_free(metric *f, series *s)
{
    for (size_t k = 0; k < f->n_labels; k++) free(s->lv[k]);
    free(s->bk);
}

void metrics_free(metrics *m)
{
    if (!m) return;
    for (metric *f = m->head, *nx; f; f = nx) {
        nx = f->next;
        for (size_t i = 0; i < f->n; i++) series_free(f, &f->s[i]);
        free(f->s);
        free(f->const_name);
        free(f->const_value);
        free(f);
    }
    free(m);
}

static metric *add_family(metrics *m, const char *name, const char *help, metric_type t, const char *const *labels,
                          size_t n)
{
    if (!m || n > METRIC_MAX_LABELS) return NULL;
    metric *f = calloc(1, sizeof *f);
    if (!f) return NULL;
    f->name = name;
    f->help = help;
    f->type = t;
    for (size_t k = 0; k < n; k++) f->labels[k] = labels[k];
    f->n_labels = n;
    if (m->tail) m->tail->next = f;
    else m->head = f;
    m->tail = f;
    return f;
}

metric *metrics_add_labels(metrics *m, const char *name, const char *help, metric_type t,
                           const char *const *labels, size_t n)
{
    if (t == METRIC_HISTOGRAM) return NULL;
    return add_family(m, name, help, t, labels, n);
}

metric *metrics_add(metrics *m, const char *name, const char *help, metric_type t, const char *label1,
                    const char *label2)
{
    const char *l[2] = {label1, label2};
    return metrics_add_labels(m, name, help, t, l, label2 ? 2 : label1 ? 1 : 0);
}

metric *metrics_add_histogram(metrics *m, const char *name, const char *help, const char *label1,
                              const double *bounds, size_t n_bounds)
{
    if (n_bounds > METRIC_MAX_BUCKETS) return NULL;
    for (size_t i = 0; i < n_bounds; i++)
        if (!isfinite(bounds[i]) || (i && bounds[i] <= bounds[i - 1])) return NULL;
    const char *l[1] = {label1};
    metric *f = add_family(m, name, help, METRIC_HISTOGRAM, l, label1 ? 1 : 0);
    if (!f) return NULL;
    memcpy(f->bounds, bounds, n_bounds * sizeof *bounds);
    f->n_bounds = n_bounds;
    return f;
}

void metric_const_label(metric *f, const char *name, const char *value)
{
    if (!f) return;
    free(f->const_name);
    free(f->const_value);
    f->const_name = strdup(name);
    f->const_value = strdup(value ? value : "");
}

static bool eq(const char *a, const char *b) { return (!a && !b) || (a && b && !strcmp(a, b)); }

static series *find(metric *f, const char *const *vals, bool create)
{
    if (!f) return NULL;
    for (size_t i = 0; i < f->n; i++) {
        size_t k = 0;
        while (k < f->n_labels && eq(f->s[i].lv[k], vals[k])) k++;
        if (k == f->n_labels) return &f->s[i];
    }
    if (!create) return NULL;
    if (f->n == f->cap) {
        size_t cap = f->cap ? 2 * f->cap : 8;
        series *ns = realloc(f->s, cap * sizeof *ns);
        if (!ns) return NULL;
        f->s = ns;
        f->cap = cap;
    }
    series *s = &f->s[f->n];
    memset(s, 0, sizeof *s);
    bool fail = false;
    for (size_t k = 0; k < f->n_labels; k++)
        if (vals[k] && !(s->lv[k] = strdup(vals[k]))) fail = true;
    if (f->type == METRIC_HISTOGRAM && !(s->bk = calloc(f->n_bounds + 1, sizeof *s->bk))) fail = true;
    if (fail) {
        series_free(f, s);
        return NULL;
    }
    f->n++;
    return s;
}

void metric_addv(metric *f, const char *const *vals, double v)
{
    if (!f || f->type == METRIC_HISTOGRAM) return;
    series *s = find(f, vals, true);
    if (s) s->v += v;
}

void metric_setv(metric *f, const char *const *vals, double v)
{
    if (!f || f->type == METRIC_HISTOGRAM) return;
    series *s = find(f, vals, true);
    if (s) s->v = v;
}

void metric_add(metric *f, const char *v1, const char *v2, double v)
{
    const char *vals[METRIC_MAX_LABELS] = {v1, v2};
    metric_addv(f, vals, v);
}

void metric_set(metric *f, const char *v1, const char *v2, double v)
{
    const char *vals[METRIC_MAX_LABELS] = {v1, v2};
    metric_setv(f, vals, v);
}

double metric_get(metric *f, const char *v1, const char *v2)
{
    const char *vals[METRIC_MAX_LABELS] = {v1, v2};
    series *s = find(f, vals, false);
    return s ? s->v : 0;
}

void metric_observe_n(metric *f, const char *v1, double x, uint64_t n)
{
    if (!f || f->type != METRIC_HISTOGRAM || !n || isnan(x)) return;
    const char *vals[METRIC_MAX_LABELS] = {v1};
    series *s = find(f, vals, true);
    if (!s) return;
    size_t b = 0;
    while (b < f->n_bounds && x > f->bounds[b]) b++; /* le: x <= bound */
    s->bk[b] += n;
    s->count += n;
    s->sum += x * (double)n;
}

void metric_observe(metric *f, const char *v1, double x) { metric_observe_n(f, v1, x, 1); }

uint64_t metric_hist_count(metric *f, const char *v1, double *sum)
{
    const char *vals[METRIC_MAX_LABELS] = {v1};
    series *s = f && f->type == METRIC_HISTOGRAM ? find(f, vals, false) : NULL;
    if (sum) *sum = s ? s->sum : 0;
    return s ? s->count : 0;
}

/* ------------------------------------------------------------------------ */
/* Rendering                                                                */
/* ------------------------------------------------------------------------ */

typedef struct {
    char *p;
    size_t n, cap;
    bool fail;
} out;

static void put(out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(out *o, const char *fmt, ...)
{
    va_list ap;
    for (;;) {
        va_start(ap, fmt);
        int k = vsnprintf(o->p ? o->p + o->n : NULL, o->p ? o->cap - o->n : 0, fmt, ap);
        va_end(ap);
        if (k < 0) {
            o->fail = true;
            return;
        }
        if (o->p && o->n + (size_t)k < o->cap) {
            o->n += (size_t)k;
            return;
        }
        size_t cap = o->cap ? o->cap * 2 : 4096;
        while (cap < o->n + (size_t)k + 1) cap *= 2;
        char *np = realloc(o->p, cap);
        if (!np) {
            o->fail = true;
            return;
        }
        o->p = np;
        o->cap = cap;
    }
}

/* Label values are escaped as the exposition format asks (\\, \", \n). */
static void put_label(out *o, bool *first, const char *name, const char *v)
{
    put(o, "%s%s=\"", *first ? "{" : ",", name);
    *first = false;
    for (const char *c = v ? v : ""; *c; c++) {
        if (*c == '\\') put(o, "\\\\");
        else if (*c == '"') put(o, "\\\"");
        else if (*c == '\n') put(o, "\\n");
        else put(o, "%c", *c);
    }
    put(o, "\"");
}

static void put_value(out *o, double v)
{
    if (isnan(v)) put(o, " NaN\n");
    else if (isinf(v)) put(o, v > 0 ? " +Inf\n" : " -Inf\n");
    else if (v == floor(v) && fabs(v) < 1e15) put(o, " %.0f\n", v);
    else put(o, " %.17g\n", v);
}

/* NAME[suffix]{const, labels..., le} VALUE */
static void put_sample(out *o, const metric *f, const series *s, const char *suffix, const char *le, double v)
{
    bool first = true;
    put(o, "%s%s", f->name, suffix);
    if (f->const_name) put_label(o, &first, f->const_name, f->const_value);
    for (size_t k = 0; k < f->n_labels; k++) put_label(o, &first, f->labels[k], s ? s->lv[k] : "");
    if (le) put_label(o, &first, "le", le);
    if (!first) put(o, "}");
    put_value(o, v);
}

static void put_histogram(out *o, const metric *f, const series *s)
{
    uint64_t cum = 0;
    char le[48];
    for (size_t b = 0; b < f->n_bounds; b++) {
        cum += s ? s->bk[b] : 0;
        snprintf(le, sizeof le, "%.12g", f->bounds[b]);
        put_sample(o, f, s, "_bucket", le, (double)cum);
    }
    put_sample(o, f, s, "_bucket", "+Inf", s ? (double)s->count : 0);
    put_sample(o, f, s, "_sum", NULL, s ? s->sum : 0);
    put_sample(o, f, s, "_count", NULL, s ? (double)s->count : 0);
}

char *metrics_render(const metrics *m, size_t *len)
{
    static const char *tname[] = {"counter", "gauge", "histogram"};
    out o = {0};
    for (metric *f = m->head; f; f = f->next) {
        put(&o, "# HELP %s %s\n# TYPE %s %s\n", f->name, f->help, f->name, tname[f->type]);
        /* A family without labels always has its one series (at 0). */
        if (!f->n_labels && f->n == 0) {
            if (f->type == METRIC_HISTOGRAM) put_histogram(&o, f, NULL);
            else put_sample(&o, f, NULL, "", NULL, 0);
        }
        for (size_t i = 0; i < f->n; i++) {
            if (f->type == METRIC_HISTOGRAM) put_histogram(&o, f, &f->s[i]);
            else put_sample(&o, f, &f->s[i], "", NULL, f->s[i].v);
        }
    }
    if (o.fail) {
        free(o.p);
        return NULL;
    }
    if (!o.p) put(&o, "%s", "");
    *len = o.n;
    return o.p;
}
