/*
 * bench-templates - rendering time of the Jinja chat-template interpreter:
 * for each template of the conformance suite (../shared/testdata/templates),
 * its longest case (the longest expected text), rendered in-process again
 * and again; prints the median parse and render times, and the median cost
 * of the server's whole per-request path (chat_tmpl_render: the request's
 * messages normalised, converted and rendered) with 1 and with 8 threads
 * rendering at once, as with 1 and 8 concurrent clients. Not a test.
 *
 *   bench-templates [SUITE_DIR] [--ms N]   (N: time per measurement, default 300)
 */
#include "chat_tmpl.h"
#include "common/machine.h"
#include "jinja_json.h"

#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifndef ORTHOSERVE_TESTDATA
#define ORTHOSERVE_TESTDATA "../shared/testdata"
#endif

static double now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) {
        buf[n] = 0;
        *len = (size_t)n;
    }
    return buf;
}

/* The suite README's render call for case c. */
static eng_jinja_vars *case_vars(json_t *c, json_t *exp)
{
    eng_jinja_vars *v = eng_jinja_vars_new();
    static const char *const first[] = {"messages", "tools", "documents", "add_generation_prompt"};
    for (size_t i = 0; v && i < 4; i++)
        eng_jinja_vars_set(v, first[i], jinja_from_json(v, json_object_get(c, first[i])));
    json_t *objs[3] = {json_object_get(exp, "context"), json_object_get(c, "kwargs"),
                       json_object_get(json_object_get(exp, "case_context"), json_string_value(json_object_get(c, "id")))};
    for (int k = 0; v && k < 3; k++)
        if (json_is_object(objs[k])) jinja_vars_from_object(v, objs[k]);
    return v;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* The server's path: threads rendering the same request body at once. */
typedef struct {
    const chat_tmpl *t;
    const json_t *body;
    double budget_ms;
    double *lat;
    int n;
    bool bad;
} server_run;

static void *server_thread(void *arg)
{
    server_run *r = arg;
    double t_end = now_us() + r->budget_ms * 1e3;
    while (r->n < 20000 && (r->n < 10 || now_us() < t_end)) {
        char *out = NULL, msg[256];
        size_t len = 0;
        const char *param;
        double t0 = now_us();
        int rc = chat_tmpl_render(r->t, r->body, &out, &len, &param, msg, sizeof msg);
        r->lat[r->n++] = now_us() - t0;
        free(out);
        if (rc) {
            r->bad = true;
            break;
        }
    }
    return NULL;
}

/* Median microseconds per request with nthreads rendering together. */
static double server_cost(const chat_tmpl *t, const json_t *body, int nthreads, double budget_ms)
{
    server_run runs[8];
    pthread_t th[8];
    double *all = malloc(sizeof(double) * 20000 * (size_t)nthreads);
    int total = 0;
    bool bad = !all;
    for (int k = 0; k < nthreads && all; k++) {
        runs[k] = (server_run){.t = t, .body = body, .budget_ms = budget_ms, .lat = all + 20000 * k};
        pthread_create(&th[k], NULL, server_thread, &runs[k]);
    }
    for (int k = 0; k < nthreads && all; k++) {
        pthread_join(th[k], NULL);
        memmove(all + total, runs[k].lat, sizeof(double) * (size_t)runs[k].n);
        total += runs[k].n;
        bad |= runs[k].bad;
    }
    double m = bad || !total ? -1 : median(all, total);
    free(all);
    return m;
}

/* The request body a client would send for case c. */
static json_t *case_body(json_t *c)
{
    json_t *b = json_object();
    json_object_set(b, "messages", json_object_get(c, "messages"));
    if (json_is_array(json_object_get(c, "tools"))) json_object_set(b, "tools", json_object_get(c, "tools"));
    json_object_set(b, "add_generation_prompt", json_object_get(c, "add_generation_prompt"));
    json_object_set(b, "chat_template_kwargs", json_object_get(c, "kwargs"));
    return b;
}

/* One template: its longest case, parse and render timed for budget_ms. */
static int bench_one(const char *dir, const char *name, json_t *cases, double budget_ms)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/expected/%s", dir, name);
    json_t *exp = json_load_file(path, 0, NULL);
    if (!exp) return -1;
    json_t *best = NULL;
    size_t best_len = 0, i;
    json_t *c;
    json_array_foreach(cases, i, c) {
        json_t *w = json_object_get(json_object_get(exp, "cases"), json_string_value(json_object_get(c, "id")));
        if (json_is_string(w) && json_string_length(w) > best_len) {
            best = c;
            best_len = json_string_length(w);
        }
    }
    snprintf(path, sizeof path, "%s/%s", dir, json_string_value(json_object_get(exp, "template")));
    size_t len = 0;
    char *src = slurp(path, &len);
    eng_jinja_vars *v = best ? case_vars(best, exp) : NULL;
    int rc = -1;
    enum { MAXN = 100000 };
    double *tp = malloc(MAXN * sizeof *tp), *tr = malloc(MAXN * sizeof *tr);
    eng_jinja_limits lim = eng_jinja_default_limits();
    lim.now = "2026-01-15 10:30:00";
    if (!src || !v || !tp || !tr) goto out;
    int n = 0;
    double t_end = now_us() + budget_ms * 1e3;
    while (n < MAXN && (n < 20 || now_us() < t_end)) {
        eng_jinja *t = NULL;
        double t0 = now_us();
        if (eng_jinja_parse(src, len, &t, NULL) != ENG_OK) goto out;
        double t1 = now_us();
        char *outp = NULL;
        size_t outn = 0;
        eng_status st = eng_jinja_render(t, v, &lim, &outp, &outn, NULL);
        double t2 = now_us();
        eng_free(outp);
        eng_jinja_free(t);
        if (st != ENG_OK || outn != best_len) goto out;
        tp[n] = t1 - t0;
        tr[n] = t2 - t1;
        n++;
    }
    json_t *ctx = json_object_get(exp, "context"), *body = case_body(best);
    json_t *bos = json_object_get(ctx, "bos_token"), *eos = json_object_get(ctx, "eos_token");
    char err[256];
    chat_tmpl *ct = chat_tmpl_new(src, len, json_string_value(bos), json_string_value(eos), err, sizeof err);
    double s1 = ct ? server_cost(ct, body, 1, budget_ms) : -1, s8 = ct ? server_cost(ct, body, 8, budget_ms) : -1;
    chat_tmpl_free(ct);
    json_decref(body);
    printf("%-46s %-26s %7zu %6d %9.1f %9.1f %9.1f %9.1f\n", json_string_value(json_object_get(exp, "template")),
           json_string_value(json_object_get(best, "id")), best_len, n, median(tp, n), median(tr, n), s1, s8);
    rc = 0;
out:
    if (rc) fprintf(stderr, "bench-templates: %s failed\n", name);
    free(tp);
    free(tr);
    eng_jinja_vars_free(v);
    free(src);
    json_decref(exp);
    return rc;
}

static int by_name(const struct dirent **a, const struct dirent **b) { return strcmp((*a)->d_name, (*b)->d_name); }
static int is_json(const struct dirent *d) { size_t n = strlen(d->d_name); return n > 5 && !strcmp(d->d_name + n - 5, ".json"); }

int main(int argc, char **argv)
{
    const char *dir = ORTHOSERVE_TESTDATA "/templates";
    double ms = 300;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--ms") && i + 1 < argc) ms = atof(argv[++i]);
        else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            printf("usage: bench-templates [SUITE_DIR] [--ms N]\n");
            return 0;
        } else dir = argv[i];
    }
    char path[1024], cpu[256];
    snprintf(path, sizeof path, "%s/cases.json", dir);
    json_t *cases = json_object_get(json_load_file(path, 0, NULL), "cases");
    if (!cases) {
        fprintf(stderr, "bench-templates: cannot read %s\n", path);
        return 1;
    }
    mach_cpu_name(cpu, sizeof cpu);
    printf("cpu: %s; median of repeated in-process runs, microseconds\n", cpu);
    printf("%-46s %-26s %7s %6s %9s %9s %9s %9s\n", "template", "longest case", "bytes", "runs", "parse_us",
           "render_us", "server_1", "server_8");
    printf("(server_N: us per request through chat_tmpl_render with N threads; -1.0: the server refuses the case)\n");
    snprintf(path, sizeof path, "%s/expected", dir);
    struct dirent **ents;
    int n = scandir(path, &ents, is_json, by_name), bad = 0;
    for (int i = 0; i < n; i++) {
        bad |= bench_one(dir, ents[i]->d_name, cases, ms) != 0;
        free(ents[i]);
    }
    free(ents);
    return bad || n <= 0;
}
