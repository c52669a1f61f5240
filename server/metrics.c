/*
 * metrics.c - Prometheus counters and gauges. Series are kept in a growing
 * array per family and found by linear search: there are a handful per
 * family (endpoints x statuses), and lookups happen once per request.
 */
#include "metrics.h"

#include <math.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *l1, *l2;
    double v;
} series;

struct metric {
    const char *name, *help, *label1, *label2;
    metric_type type;
    series *s;
    size_t n, cap;
    metric *next;
};

struct metrics {
    metric *head, *tail;
};

metrics *metrics_new(void) { return calloc(1, sizeof(metrics)); }

void metrics_free(metrics *m)
{
    if (!m) return;
    for (metric *f = m->head, *nx; f; f = nx) {
        nx = f->next;
        for (size_t i = 0; i < f->n; i++) {
            free(f->s[i].l1);
            free(f->s[i].l2);
        }
        free(f->s);
        free(f);
    }
    free(m);
}

metric *metrics_add(metrics *m, const char *name, const char *help, metric_type t, const char *label1,
                    const char *label2)
{
    metric *f = calloc(1, sizeof *f);
    if (!f) return NULL;
    *f = (metric){.name = name, .help = help, .label1 = label1, .label2 = label2, .type = t};
    if (m->tail) m->tail->next = f;
    else m->head = f;
    m->tail = f;
    return f;
}

static bool eq(const char *a, const char *b) { return (!a && !b) || (a && b && !strcmp(a, b)); }

static series *find(metric *f, const char *v1, const char *v2, bool create)
{
    if (!f) return NULL;
    for (size_t i = 0; i < f->n; i++)
        if (eq(f->s[i].l1, v1) && eq(f->s[i].l2, v2)) return &f->s[i];
    if (!create) return NULL;
    if (f->n == f->cap) {
        size_t cap = f->cap ? 2 * f->cap : 8;
        series *ns = realloc(f->s, cap * sizeof *ns);
        if (!ns) return NULL;
        f->s = ns;
        f->cap = cap;
    }
    series *s = &f->s[f->n];
    *s = (series){v1 ? strdup(v1) : NULL, v2 ? strdup(v2) : NULL, 0};
    if ((v1 && !s->l1) || (v2 && !s->l2)) {
        free(s->l1);
        free(s->l2);
        return NULL;
    }
    f->n++;
    return s;
}

void metric_add(metric *f, const char *v1, const char *v2, double v)
{
    series *s = find(f, v1, v2, true);
    if (s) s->v += v;
}

void metric_set(metric *f, const char *v1, const char *v2, double v)
{
    series *s = find(f, v1, v2, true);
    if (s) s->v = v;
}

double metric_get(metric *f, const char *v1, const char *v2)
{
    series *s = find(f, v1, v2, false);
    return s ? s->v : 0;
}

typedef struct {
    char *p;
    size_t n, cap;
    bool fail;
} out;

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
static void put_label(out *o, const char *name, const char *v)
{
    put(o, "%s=\"", name);
    for (const char *c = v; *c; c++) {
        if (*c == '\\') put(o, "\\\\");
        else if (*c == '"') put(o, "\\\"");
        else if (*c == '\n') put(o, "\\n");
        else put(o, "%c", *c);
    }
    put(o, "\"");
}

static void put_value(out *o, double v)
{
    if (v == floor(v) && fabs(v) < 1e15) put(o, " %.0f\n", v);
    else put(o, " %.17g\n", v);
}

char *metrics_render(const metrics *m, size_t *len)
{
    out o = {0};
    for (metric *f = m->head; f; f = f->next) {
        put(&o, "# HELP %s %s\n# TYPE %s %s\n", f->name, f->help, f->name,
            f->type == METRIC_COUNTER ? "counter" : "gauge");
        if (!f->label1 && f->n == 0) {
            put(&o, "%s", f->name);
            put_value(&o, 0);
        }
        for (size_t i = 0; i < f->n; i++) {
            put(&o, "%s", f->name);
            if (f->label1) {
                put(&o, "{");
                put_label(&o, f->label1, f->s[i].l1 ? f->s[i].l1 : "");
                if (f->label2) {
                    put(&o, ",");
                    put_label(&o, f->label2, f->s[i].l2 ? f->s[i].l2 : "");
                }
                put(&o, "}");
            }
            put_value(&o, f->s[i].v);
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
