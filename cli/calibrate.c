/*
 * calibrate.c - orthoserve calibrate: a model's OrthoRank layer plan
 * (SLEB-style greedy orders for OrthoRank and for layer skipping, decode
 * thresholds) computed on calibration text with the evaluator
 * (evaluator.h) and written as JSON (server/plan.h). Results go to stdout;
 * progress to stderr.
 */
#include "cli.h"
#include "evaluator.h"
#include "plan.h"

#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void calibrate_usage(FILE *f)
{
    fprintf(f,
            "usage: orthoserve calibrate -m MODEL -f TEXT -o PLAN.json [options]\n"
            "\n"
            "SLEB-style greedy layer orders by calibration NLL (all positions of every\n"
            "window): repeatedly add the layer whose conversion to an OrthoRank layer\n"
            "(method orthorank, token ratio K) raises NLL least; the same greedy with\n"
            "layer removal gives the layer-skipping order. Decode thresholds are the\n"
            "K-quantile of each layer's sink scores on a dense pass (sink excluded).\n"
            "\n"
            "  -m, --model FILE        GGUF model (required)\n"
            "  -f, --file TEXT         calibration text (required)\n"
            "  -o, --output FILE       plan to write (required)\n"
            "  -c, --ctx-size N        window size (default 256)\n"
            "      --chunks N          calibration windows (default 32)\n"
            "      --start-chunk K     skip the first K windows (keep calibration and\n"
            "                          evaluation text apart)\n"
            "      --exclude WHICH     layers never converted: first,last | first | none\n"
            "                          (default first)\n"
            "      --token-ratio K     OrthoRank token ratio (default 1/3)\n"
            "      --seqs N            windows per eng_decode call (default 4)\n"
            "  -t, --threads N         compute threads (default 2)\n"
            "  -v, --verbose           engine log messages on stderr\n");
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* The q-quantile (linear interpolation between order statistics). Sorts v. */
static float quantile(float *v, size_t n, double q)
{
    qsort(v, n, sizeof *v, cmp_float);
    double p = q * (double)(n - 1);
    size_t i = (size_t)floor(p);
    if (i + 1 >= n) return v[n - 1];
    double f = p - (double)i;
    return (float)((1 - f) * v[i] + f * v[i + 1]);
}

/* Greedy order: candidates cand[0..n_cand); fills order/nll (n_cand entries). */
static int greedy(evaluator *ev, run_opts *ro, eng_orthorank_method method, double k, const int32_t *cand,
                  int32_t n_cand, int32_t *order, double *nll)
{
    bool used[ENG_MAX_LAYERS] = {0};
    eng_orthorank_params p = eng_orthorank_default_params();
    p.method = method;
    p.token_ratio = (float)k;
    p.decode = ENG_ORTHORANK_DECODE_FULL;
    for (int32_t step = 0; step < n_cand; step++) {
        double best = INFINITY;
        int32_t best_l = -1;
        for (int32_t ci = 0; ci < n_cand; ci++) {
            int32_t c = cand[ci];
            if (used[c]) continue;
            memcpy(p.layers, order, (size_t)step * sizeof *p.layers);
            p.layers[step] = c;
            p.n_layers = step + 1;
            char lbl[64];
            snprintf(lbl, sizeof lbl, "%s step %d/%d +%d", eng_orthorank_method_name(method), step + 1, n_cand, c);
            ro->orthorank = &p;
            ro->label = lbl;
            run_result r;
            if (ev_run(ev, ro, &r)) {
                ev_progress_clear();
                fprintf(stderr, "orthoserve: %s with layers +%d failed: %s\n", eng_orthorank_method_name(method), c,
                        eng_strerror(r.err));
                return -1;
            }
            ro->prog_base += (size_t)ro->n_chunks;
            double x = r.nll / (double)r.count;
            if (x < best) {
                best = x;
                best_l = c;
            }
        }
        order[step] = best_l;
        nll[step] = best;
        used[best_l] = true;
        ev_progress_clear();
        fprintf(stderr, "orthoserve: %s step %d: layer %d, NLL %.6f\n", eng_orthorank_method_name(method), step + 1,
                best_l, best);
    }
    return 0;
}

typedef struct {
    const char *model, *text, *out_path, *exclude;
    long n_ctx, chunks, start_chunk, threads, seqs;
    double k;
    bool verbose;
} calibrate_opts;

/* The options into o: -1 to go on, else the exit code. */
static int parse_options(int argc, char **argv, calibrate_opts *o)
{
    enum { O_CHUNKS = 256, O_START, O_EXCL, O_K, O_SEQS };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},      {"file", required_argument, 0, 'f'},
        {"output", required_argument, 0, 'o'},     {"ctx-size", required_argument, 0, 'c'},
        {"chunks", required_argument, 0, O_CHUNKS}, {"start-chunk", required_argument, 0, O_START},
        {"exclude", required_argument, 0, O_EXCL}, {"token-ratio", required_argument, 0, O_K},
        {"seqs", required_argument, 0, O_SEQS},    {"threads", required_argument, 0, 't'},
        {"verbose", no_argument, 0, 'v'},          {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    *o = (calibrate_opts){.exclude = "first", .n_ctx = 256, .chunks = 32, .threads = 2, .seqs = 4, .k = 1.0 / 3};
    optind = 1;
    int ch;
    while ((ch = getopt_long(argc, argv, "m:f:o:c:t:vh", opts, NULL)) != -1) {
        switch (ch) {
        case 'm': o->model = optarg; break;
        case 'f': o->text = optarg; break;
        case 'o': o->out_path = optarg; break;
        case 'c': if (!cli_parse_long(optarg, 4, 1 << 20, &o->n_ctx)) BAD("--ctx-size", optarg); break;
        case 't': if (!cli_parse_long(optarg, 1, 512, &o->threads)) BAD("--threads", optarg); break;
        case O_CHUNKS: if (!cli_parse_long(optarg, 1, 1L << 30, &o->chunks)) BAD("--chunks", optarg); break;
        case O_START: if (!cli_parse_long(optarg, 0, 1L << 30, &o->start_chunk)) BAD("--start-chunk", optarg); break;
        case O_EXCL:
            if (strcmp(optarg, "first,last") && strcmp(optarg, "first") && strcmp(optarg, "none"))
                BAD("--exclude", optarg);
            o->exclude = optarg;
            break;
        case O_K:
            if (!cli_parse_frac(optarg, strlen(optarg), 1e-6, 1, &o->k)) BAD("--token-ratio", optarg);
            break;
        case O_SEQS: if (!cli_parse_long(optarg, 1, 256, &o->seqs)) BAD("--seqs", optarg); break;
        case 'v': o->verbose = true; break;
        case 'h': calibrate_usage(stdout); return 0;
        default: calibrate_usage(stderr); return 2;
        }
    }
    if (!o->model || !o->text || !o->out_path || optind != argc) {
        fprintf(stderr, "orthoserve calibrate: %s\n",
                optind != argc ? "unexpected argument" : "--model, --file and --output are required");
        calibrate_usage(stderr);
        return 2;
    }
    return -1;
}

static void scores_free(score_acc *sa)
{
    for (int32_t l = 0; sa->v && l < sa->n_layer; l++) free(sa->v[l]);
    free(sa->v);
    free(sa->n);
    free(sa->cap);
}

/* The plan's arrays and what it records of the run: 0, or -1 out of memory. */
static int plan_start(plan_data *plan, const calibrate_opts *o, int32_t L, int32_t n_cand, int32_t nch)
{
    plan->order = malloc((size_t)n_cand * sizeof *plan->order);
    plan->order_nll = malloc((size_t)n_cand * sizeof *plan->order_nll);
    plan->skip_order = malloc((size_t)n_cand * sizeof *plan->skip_order);
    plan->skip_nll = malloc((size_t)n_cand * sizeof *plan->skip_nll);
    plan->thresholds = malloc((size_t)L * sizeof *plan->thresholds);
    plan->model_file = strdup(o->model);
    plan->calib_file = strdup(o->text);
    plan->exclude = strdup(o->exclude);
    if (!plan->order || !plan->order_nll || !plan->skip_order || !plan->skip_nll || !plan->thresholds ||
        !plan->model_file || !plan->calib_file || !plan->exclude)
        return -1;
    plan->n_layer = L;
    plan->token_ratio = (float)o->k;
    plan->calib_chunks = nch;
    plan->calib_ctx = (int32_t)o->n_ctx;
    plan->calib_start_chunk = (int32_t)o->start_chunk;
    plan->n_order = plan->n_skip_order = n_cand;
    return 0;
}

/* The dense pass (NLL and sink scores: the thresholds), then both greedy orders: 0 or -1. */
static int compute_plan(evaluator *ev, run_opts *ro, const calibrate_opts *o, const int32_t *cand, int32_t n_cand,
                        plan_data *plan)
{
    const int32_t L = plan->n_layer;
    score_acc sa = {.n_layer = L};
    sa.v = calloc((size_t)L, sizeof *sa.v);
    sa.n = calloc((size_t)L, sizeof *sa.n);
    sa.cap = calloc((size_t)L, sizeof *sa.cap);
    int rc = -1;
    if (!sa.v || !sa.n || !sa.cap) {
        fprintf(stderr, "orthoserve: out of memory\n");
        goto out;
    }
    ro->label = "dense + scores";
    ro->scores = &sa;
    run_result r;
    if (ev_run(ev, ro, &r)) {
        fprintf(stderr, "orthoserve: dense pass failed: %s\n", eng_strerror(r.err));
        goto out;
    }
    ro->prog_base += (size_t)ro->n_chunks;
    ro->scores = NULL;
    plan->dense_nll = r.nll / (double)r.count;
    ev_progress_clear();
    fprintf(stderr, "orthoserve: dense NLL %.6f (PPL %.4f) over %" PRIu64 " tokens\n", plan->dense_nll,
            exp(plan->dense_nll), r.count);
    for (int32_t l = 0; l < L; l++) plan->thresholds[l] = sa.n[l] ? quantile(sa.v[l], sa.n[l], o->k) : NAN;
    if (greedy(ev, ro, ENG_ORTHORANK_METHOD_ORTHORANK, o->k, cand, n_cand, plan->order, plan->order_nll) ||
        greedy(ev, ro, ENG_ORTHORANK_METHOD_LAYER_SKIP, o->k, cand, n_cand, plan->skip_order, plan->skip_nll))
        goto out;
    rc = 0;
out:
    scores_free(&sa);
    return rc;
}

static void print_plan(const plan_data *plan, const calibrate_opts *o, int32_t nch, double seconds)
{
    char buf[512];
    printf("plan written to %s (%.1f s)\n", o->out_path, seconds);
    printf("dense NLL          %.6f (PPL %.4f) on %d windows of %ld from window %ld\n", plan->dense_nll,
           exp(plan->dense_nll), nch, o->n_ctx, o->start_chunk);
    ev_fmt_layers(buf, sizeof buf, plan->order, plan->n_order);
    printf("orthorank order    [%s] (token ratio %.4f, exclude %s)\n", buf, o->k, o->exclude);
    printf("  NLL after each   ");
    for (int32_t i = 0; i < plan->n_order; i++) printf(" %.6f", plan->order_nll[i]);
    ev_fmt_layers(buf, sizeof buf, plan->skip_order, plan->n_skip_order);
    printf("\nlayer_skip order   [%s]\n", buf);
    printf("  NLL after each   ");
    for (int32_t i = 0; i < plan->n_skip_order; i++) printf(" %.6f", plan->skip_nll[i]);
    printf("\nthresholds         ");
    for (int32_t l = 0; l < plan->n_layer; l++) {
        if (isfinite(plan->thresholds[l])) printf(" %.5f", (double)plan->thresholds[l]);
        else printf(" null");
    }
    printf("\n");
}

int cli_calibrate(int argc, char **argv)
{
    calibrate_opts o;
    int rc = parse_options(argc, argv, &o);
    if (rc >= 0) return rc;
    if (o.verbose) eng_log_set(cli_log_stderr, NULL, ENG_LOG_DEBUG);
    ev_progress_init();

    ev_session S;
    if (ev_session_open(&S, o.model, o.text, 0, (int32_t)o.threads)) return 1;
    rc = 1;
    evaluator ev = {0};
    plan_data plan;
    plan_data_init(&plan);
    const int32_t L = S.info.n_layer;
    int32_t nch = ev_windows(&S, (int32_t)o.n_ctx, o.start_chunk, o.chunks);
    if (nch < 0) goto out;
    if (nch < o.chunks) fprintf(stderr, "orthoserve: only %d calibration windows available\n", nch);
    int32_t n_seq = (int32_t)(o.seqs < nch ? o.seqs : nch);
    const eng_context_params dp = eng_context_default_params();
    if (ev_init(&ev, S.m, (int32_t)o.n_ctx, n_seq, (int32_t)o.threads, dp.type_k, dp.type_v)) goto out;

    int32_t cand[ENG_MAX_LAYERS], n_cand = 0;
    bool ex_last = !strcmp(o.exclude, "first,last"), ex_first = strcmp(o.exclude, "none") != 0;
    for (int32_t l = 0; l < L; l++)
        if (!(ex_first && l == 0) && !(ex_last && l == L - 1)) cand[n_cand++] = l;
    if (n_cand == 0) {
        fprintf(stderr, "orthoserve: no candidate layers left after --exclude %s\n", o.exclude);
        goto out;
    }
    size_t n_evals = 1 + (size_t)n_cand * (size_t)(n_cand + 1); /* dense + 2 greedy triangles */
    fprintf(stderr,
            "orthoserve: calibrating on %d windows of %ld from window %ld; %d candidate layers "
            "(exclude %s), token ratio %.4f; %zu evaluations\n",
            nch, o.n_ctx, o.start_chunk, n_cand, o.exclude, o.k, n_evals);
    if (plan_start(&plan, &o, L, n_cand, nch)) {
        fprintf(stderr, "orthoserve: out of memory\n");
        goto out;
    }
    double t0 = cli_now();
    run_opts ro = {.toks = S.toks, .n_toks = S.n_toks, .first_chunk = o.start_chunk, .n_chunks = nch,
                   .full = true, .prog_total = n_evals * (size_t)nch};
    if (compute_plan(&ev, &ro, &o, cand, n_cand, &plan)) goto out;
    ev_progress_clear();
    char err[512];
    if (plan_write(o.out_path, &plan, err, sizeof err)) {
        fprintf(stderr, "orthoserve: %s\n", err);
        goto out;
    }
    print_plan(&plan, &o, nch, cli_now() - t0);
    rc = 0;
out:
    plan_data_free(&plan);
    ev_free(&ev);
    ev_session_free(&S);
    return rc;
}
