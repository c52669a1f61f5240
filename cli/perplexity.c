/*
 * perplexity.c - orthoserve perplexity: llama-perplexity's protocol
 * (evaluator.h) over a text, dense or with OrthoRank settings, or a sweep of
 * methods x sparsities x token ratios as a markdown table. Results go to
 * stdout; progress and running values to stderr.
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

#define MAX_GRID 16

/* Comma-separated list of numbers / fractions. */
static int parse_list(const char *s, double lo, double hi, double *out, int max)
{
    int n = 0;
    while (*s) {
        const char *c = strchr(s, ',');
        size_t l = c ? (size_t)(c - s) : strlen(s);
        if (n >= max || !cli_parse_frac(s, l, lo, hi, &out[n])) return -1;
        n++;
        s += l + (c ? 1 : 0);
    }
    return n;
}

static void perplexity_usage(FILE *f)
{
    fprintf(f,
            "usage: orthoserve perplexity -m MODEL -f TEXT [options]\n"
            "\n"
            "llama-perplexity's protocol: the file is tokenized once with BOS, cut into\n"
            "non-overlapping windows of CTX tokens whose first token is replaced by BOS;\n"
            "every window is a fresh sequence decoded in one eng_decode call.\n"
            "Running PPL goes to stderr, the result to stdout.\n"
            "\n"
            "  -m, --model FILE          GGUF model (required)\n"
            "  -f, --file TEXT           text file (required)\n"
            "  -c, --ctx-size N          window size (default 512)\n"
            "      --chunks N            windows to evaluate (default: all)\n"
            "      --mode half|full      half (default, llama.cpp-comparable): score positions\n"
            "                            CTX/2..CTX-2; full: positions 0..CTX-2\n"
            "      --orthorank SPEC      e.g. sparsity=0.2,token_ratio=1/3,decode=threshold,\n"
            "                            method=orthorank|layer_skip|random|inverse,layers=3:1:2,\n"
            "                            min_tokens=16,seed=0 (default: dense)\n"
            "      --plan PLAN.json      install a calibrated layer plan (orthoserve calibrate)\n"
            "      --decode-eval         feed the second half of every window one token per\n"
            "                            call, so it runs under the decode policy\n"
            "      --start-chunk K       skip the first K windows\n"
            "      --offset-bytes B      start reading the text at the line after byte B\n"
            "      --seqs N              windows per eng_decode call (default 4)\n"
            "  -t, --threads N           compute threads (default 2)\n"
            CLI_CACHE_TYPE_USAGE
            "      --sweep               markdown table: method x sparsity x token ratio\n"
            "      --sweep-methods LIST  (default orthorank,layer_skip,random,inverse)\n"
            "      --sweep-sparsity LIST (default 0.1,0.2,0.3,0.4)\n"
            "      --sweep-ratios LIST   (default 1/3,1/2,2/3)\n"
            "  -v, --verbose             engine log messages on stderr\n");
}

static void print_result(const char *what, const run_result *r, const eng_orthorank_params *p,
                         bool decode_eval)
{
    printf("%s\n", what);
    printf("PPL = %.4f +/- %.5f\n", rr_ppl(r), rr_ppl_err(r));
    printf("mean NLL = %.6f over %" PRIu64 " scored tokens, %d windows\n",
           r->count ? r->nll / (double)r->count : NAN, r->count, r->n_windows);
    printf("sparsity_effective = %.4f (%" PRIu64 " of %" PRIu64 " token-layers skipped)\n",
           rr_sparsity(r), r->pf_skipped + r->dc_skipped, r->pf_total + r->dc_total);
    if (decode_eval) {
        printf("prefill: %" PRIu64 " tokens, %" PRIu64 " / %" PRIu64 " token-layers skipped\n",
               r->pf_tokens, r->pf_skipped, r->pf_total);
        printf("decode:  %" PRIu64 " tokens, %" PRIu64 " / %" PRIu64
               " token-layers skipped, realised selection rate %.4f\n",
               r->dc_tokens, r->dc_skipped, r->dc_total, rr_decode_sel(r));
    }
    printf("flops_saved_fraction = %.4f\n", rr_flops(r));
    printf("layers = [%s] (%s)\n", r->layers, r->source);
    if (p)
        printf("settings: method %s, sparsity %.3f (target %.4f), token_ratio %.4f (in force %.4f), decode %s\n",
               eng_orthorank_method_name(p->method), (double)p->sparsity, (double)r->sparsity_target,
               (double)p->token_ratio, (double)r->token_ratio, eng_orthorank_decode_name(p->decode));
    printf("tokens/s = %.1f (%" PRIu64 " tokens in %.3f s of eng_decode, %.3f CPU s: %.1f tokens "
           "per CPU second)\n",
           rr_tps(r), r->n_fed, r->t_decode, r->t_cpu,
           r->t_cpu > 0 ? (double)r->n_fed / r->t_cpu : 0.0);
}

static void row_md(const char *method, double sp, const char *k, double k_req, const run_result *r,
                   double dense_ppl, bool decode_eval)
{
    if (r->err != ENG_OK) {
        printf("| %s | %.2f | %s | - | error: %s | | | | | | |%s\n", method, sp, k,
               eng_strerror(r->err), decode_eval ? " |" : "");
        return;
    }
    /* k as requested, and the k in force when the engine adjusted it to reach the sparsity */
    char kb[48];
    if (k_req > 0 && r->n_orthorank_layers > 0 && fabs(k_req - r->token_ratio) > 1e-3)
        snprintf(kb, sizeof kb, "%s→%.3f", k, (double)r->token_ratio);
    else
        snprintf(kb, sizeof kb, "%s", k);
    printf("| %s | %.2f | %s | %s | %.4f | %.4f | %+.2f%% | %.4f | %.4f | %.0f | %.0f |", method,
           sp, kb, r->layers[0] ? r->layers : "-", rr_ppl(r), rr_ppl_err(r),
           100.0 * (rr_ppl(r) / dense_ppl - 1.0), rr_sparsity(r), rr_flops(r), rr_tps(r),
           r->t_cpu > 0 ? (double)r->n_fed / r->t_cpu : 0.0);
    if (decode_eval) {
        double sel = rr_decode_sel(r);
        if (isfinite(sel)) printf(" %.3f |", sel);
        else printf(" - |");
    }
    printf("\n");
    fflush(stdout);
}

static const char *ratio_label(double k, char *buf, size_t cap)
{
    static const struct { double v; const char *s; } named[] = {
        {1.0 / 3, "1/3"}, {0.5, "1/2"}, {2.0 / 3, "2/3"}, {0.25, "1/4"}, {0.75, "3/4"}};
    for (size_t i = 0; i < sizeof named / sizeof named[0]; i++)
        if (fabs(k - named[i].v) < 1e-4) return named[i].s;
    snprintf(buf, cap, "%.3f", k);
    return buf;
}

typedef struct {
    const char *model, *text, *plan_path;
    long n_ctx, chunks, threads, start_chunk, offset, seqs;
    bool full, decode_eval, sweep, verbose;
    eng_kv_type type_k, type_v;
    bool orthorank_given;
    eng_orthorank_params orthorank;
    eng_orthorank_method methods[8]; /* --sweep */
    int n_methods, n_sp, n_k;
    double sw_sp[MAX_GRID], sw_k[MAX_GRID];
} perplexity_opts;

/* "orthorank,layer_skip" into o->methods: false if a name is unknown. */
static bool parse_methods(const char *list, perplexity_opts *o)
{
    const eng_orthorank_field *f = eng_orthorank_field_find("method", 6);
    eng_orthorank_params p = eng_orthorank_default_params();
    o->n_methods = 0;
    for (const char *s = list; *s;) {
        const char *c = strchr(s, ',');
        size_t l = c ? (size_t)(c - s) : strlen(s);
        if (o->n_methods >= 8 || eng_orthorank_set_name(&p, f, s, l, NULL, 0) != ENG_OK) return false;
        o->methods[o->n_methods++] = p.method;
        s += l + (c ? 1 : 0);
    }
    return true;
}

/* The options into o: -1 to go on, else the exit code. */
static int parse_options(int argc, char **argv, perplexity_opts *o)
{
    bool have_start = false, have_offset = false;
    const char *sw_methods = "orthorank,layer_skip,random,inverse";
    char err[256];
    enum { O_CHUNKS = 256, O_MODE, O_ORTHORANK, O_PLAN, O_DEC, O_START, O_OFF, O_SEQS, O_SWEEP, O_SWM, O_SWS,
           O_SWK, O_CTK, O_CTV };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},       {"file", required_argument, 0, 'f'},
        {"ctx-size", required_argument, 0, 'c'},    {"chunks", required_argument, 0, O_CHUNKS},
        {"mode", required_argument, 0, O_MODE},     {"orthorank", required_argument, 0, O_ORTHORANK},
        {"plan", required_argument, 0, O_PLAN},     {"decode-eval", no_argument, 0, O_DEC},
        {"start-chunk", required_argument, 0, O_START},
        {"offset-bytes", required_argument, 0, O_OFF},
        {"seqs", required_argument, 0, O_SEQS},     {"threads", required_argument, 0, 't'},
        {"sweep", no_argument, 0, O_SWEEP},         {"sweep-methods", required_argument, 0, O_SWM},
        {"sweep-sparsity", required_argument, 0, O_SWS},
        {"sweep-ratios", required_argument, 0, O_SWK},
        {"verbose", no_argument, 0, 'v'},           {"help", no_argument, 0, 'h'},
        {"cache-type-k", required_argument, 0, O_CTK}, {"cache-type-v", required_argument, 0, O_CTV},
        {0, 0, 0, 0}};
    const eng_context_params dp = eng_context_default_params();
    *o = (perplexity_opts){.type_k = dp.type_k, .type_v = dp.type_v, .n_ctx = 512, .threads = 2, .seqs = 4, .orthorank = eng_orthorank_default_params(),
                           .sw_sp = {0.1, 0.2, 0.3, 0.4}, .sw_k = {1.0 / 3, 0.5, 2.0 / 3}, .n_sp = 4, .n_k = 3};
    optind = 1;
    int ch;
    while ((ch = getopt_long(argc, argv, "m:f:c:t:vh", opts, NULL)) != -1) {
        switch (ch) {
        case 'm': o->model = optarg; break;
        case 'f': o->text = optarg; break;
        case 'c': if (!cli_parse_long(optarg, 4, 1 << 20, &o->n_ctx) || o->n_ctx % 2) BAD("--ctx-size", optarg); break;
        case 't': if (!cli_parse_long(optarg, 1, 512, &o->threads)) BAD("--threads", optarg); break;
        case O_CHUNKS: if (!cli_parse_long(optarg, 1, 1L << 30, &o->chunks)) BAD("--chunks", optarg); break;
        case O_MODE:
            if (!strcmp(optarg, "half")) o->full = false;
            else if (!strcmp(optarg, "full")) o->full = true;
            else BAD("--mode", optarg);
            break;
        case O_ORTHORANK:
            if (!cli_parse_orthorank(optarg, &o->orthorank, err, sizeof err)) {
                fprintf(stderr, "orthoserve perplexity: --orthorank: %s\n", err);
                return 2;
            }
            o->orthorank_given = true;
            break;
        case O_PLAN: o->plan_path = optarg; break;
        case O_DEC: o->decode_eval = true; break;
        case O_START:
            if (!cli_parse_long(optarg, 0, 1L << 30, &o->start_chunk)) BAD("--start-chunk", optarg);
            have_start = true;
            break;
        case O_OFF:
            if (!cli_parse_long(optarg, 0, 1L << 40, &o->offset)) BAD("--offset-bytes", optarg);
            have_offset = true;
            break;
        case O_SEQS: if (!cli_parse_long(optarg, 1, 256, &o->seqs)) BAD("--seqs", optarg); break;
        case O_CTK: if (eng_kv_type_parse(optarg, &o->type_k) != ENG_OK) BAD("--cache-type-k", optarg); break;
        case O_CTV: if (eng_kv_type_parse(optarg, &o->type_v) != ENG_OK) BAD("--cache-type-v", optarg); break;
        case O_SWEEP: o->sweep = true; break;
        case O_SWM: sw_methods = optarg; break;
        case O_SWS:
            if ((o->n_sp = parse_list(optarg, 0, 0.9, o->sw_sp, MAX_GRID)) <= 0) BAD("--sweep-sparsity", optarg);
            break;
        case O_SWK:
            if ((o->n_k = parse_list(optarg, 1e-6, 1, o->sw_k, MAX_GRID)) <= 0) BAD("--sweep-ratios", optarg);
            break;
        case 'v': o->verbose = true; break;
        case 'h': perplexity_usage(stdout); return 0;
        default: perplexity_usage(stderr); return 2;
        }
    }
    if (!o->model || !o->text || optind != argc) {
        fprintf(stderr, "orthoserve perplexity: %s\n",
                optind != argc ? "unexpected argument" : "--model and --file are required");
        perplexity_usage(stderr);
        return 2;
    }
    if (have_start && have_offset) {
        fprintf(stderr, "orthoserve perplexity: use --start-chunk or --offset-bytes, not both\n");
        return 2;
    }
    if (!parse_methods(sw_methods, o)) BAD("--sweep-methods", sw_methods);
    return -1;
}

/* One evaluation with the --orthorank settings (or dense): 0 or 1. */
static int run_once(evaluator *ev, run_opts *ro, const perplexity_opts *o)
{
    run_result r;
    ro->orthorank = o->orthorank_given ? &o->orthorank : NULL;
    ro->print_running = true;
    ro->label = "perplexity";
    ro->prog_total = (size_t)ro->n_chunks;
    if (ev_run(ev, ro, &r)) {
        fprintf(stderr, "orthoserve: evaluation failed: %s\n", eng_strerror(r.err));
        return 1;
    }
    ev_progress_clear();
    char what[256];
    snprintf(what, sizeof what, "%s: %d windows of %ld, %s mode%s%s", o->model, ro->n_chunks, o->n_ctx,
             o->full ? "full" : "half", o->decode_eval ? ", decode-eval" : "", o->orthorank_given ? "" : ", dense");
    print_result(what, &r, ro->orthorank, o->decode_eval);
    return 0;
}

/* --sweep: dense, then every method x sparsity (x token ratio) as a table row: 0 or 1. */
static int run_sweep(evaluator *ev, run_opts *ro, const perplexity_opts *o)
{
    const int32_t nch = ro->n_chunks;
    size_t n_runs = 1;
    for (int mi = 0; mi < o->n_methods; mi++)
        n_runs += (size_t)o->n_sp * (o->methods[mi] == ENG_ORTHORANK_METHOD_LAYER_SKIP ? 1 : (size_t)o->n_k);
    ro->prog_total = n_runs * (size_t)nch;
    ro->label = "dense";
    run_result r;
    if (ev_run(ev, ro, &r)) {
        fprintf(stderr, "orthoserve: dense evaluation failed: %s\n", eng_strerror(r.err));
        return 1;
    }
    double dense_ppl = rr_ppl(&r);
    ro->prog_base += (size_t)nch;
    ev_progress_clear();
    printf("%s, %s: %d windows of %ld from window %ld, %s mode, %s, plan %s\n\n", o->model, o->text, nch, o->n_ctx,
           o->start_chunk, o->full ? "full" : "half",
           o->decode_eval ? "second half decoded token by token (decode policy)"
                          : "whole window in one call (prefill top-K)",
           o->plan_path ? o->plan_path : "none (engine fallback order)");
    printf("| method | sparsity | k | layers | PPL | +/- | vs dense | sparsity_eff | flops saved | "
           "tok/s | tok/CPU-s |%s\n",
           o->decode_eval ? " decode sel. rate |" : "");
    printf("|---|---|---|---|---|---|---|---|---|---|---|%s\n", o->decode_eval ? "---|" : "");
    row_md("dense", 0, "-", 0, &r, dense_ppl, o->decode_eval);
    for (int mi = 0; mi < o->n_methods; mi++) {
        bool ls = o->methods[mi] == ENG_ORTHORANK_METHOD_LAYER_SKIP;
        for (int ki = 0; ki < (ls ? 1 : o->n_k); ki++) {
            for (int si = 0; si < o->n_sp; si++) {
                eng_orthorank_params p = o->orthorank;
                p.n_layers = 0;
                p.method = o->methods[mi];
                p.sparsity = (float)o->sw_sp[si];
                p.token_ratio = ls ? o->orthorank.token_ratio : (float)o->sw_k[ki];
                char lbl[64], kb[16];
                const char *kl = ls ? "-" : ratio_label(o->sw_k[ki], kb, sizeof kb);
                snprintf(lbl, sizeof lbl, "%s s=%.2f k=%s", eng_orthorank_method_name(p.method), o->sw_sp[si], kl);
                ro->orthorank = &p;
                ro->label = lbl;
                ev_run(ev, ro, &r); /* errors become table rows */
                ro->prog_base += (size_t)nch;
                ev_progress_clear();
                row_md(eng_orthorank_method_name(p.method), o->sw_sp[si], kl, ls ? 0 : p.token_ratio, &r, dense_ppl,
                       o->decode_eval);
            }
        }
    }
    return 0;
}

int cli_perplexity(int argc, char **argv)
{
    perplexity_opts o;
    int rc = parse_options(argc, argv, &o);
    if (rc >= 0) return rc;
    if (o.verbose) eng_log_set(cli_log_stderr, NULL, ENG_LOG_DEBUG);
    ev_progress_init();

    ev_session S;
    if (ev_session_open(&S, o.model, o.text, (size_t)o.offset, (int32_t)o.threads)) return 1;
    rc = 1;
    evaluator ev = {0};
    char err[512] = "";
    const char *field;
    if (o.orthorank_given && eng_orthorank_check(S.m, &o.orthorank, &field, err, sizeof err) != ENG_OK) {
        fprintf(stderr, "orthoserve perplexity: --orthorank: %s %s\n", field, err);
        rc = 2;
        goto out;
    }
    if (o.plan_path && plan_load(o.plan_path, S.m, err, sizeof err)) {
        fprintf(stderr, "orthoserve: %s\n", err);
        goto out;
    }
    int32_t nch = ev_windows(&S, (int32_t)o.n_ctx, o.start_chunk, o.chunks);
    if (nch < 0) goto out;
    int32_t n_seq = (int32_t)(o.seqs < nch ? o.seqs : nch);
    if (ev_init(&ev, S.m, (int32_t)o.n_ctx, n_seq, (int32_t)o.threads, o.type_k, o.type_v)) goto out;
    cli_print_kv(S.m, o.type_k, o.type_v, (int64_t)n_seq * o.n_ctx);
    fprintf(stderr,
            "orthoserve: %d windows of %ld tokens from window %ld, %s mode%s, %d per call, "
            "%ld threads, kernels %s\n",
            nch, o.n_ctx, o.start_chunk, o.full ? "full" : "half", o.decode_eval ? ", decode-eval" : "", n_seq,
            o.threads, eng_kernel_name());
    run_opts ro = {.toks = S.toks, .n_toks = S.n_toks, .first_chunk = o.start_chunk, .n_chunks = nch,
                   .full = o.full, .decode_eval = o.decode_eval};
    rc = o.sweep ? run_sweep(&ev, &ro, &o) : run_once(&ev, &ro, &o);
out:
    ev_free(&ev);
    ev_session_free(&S);
    return rc;
}
