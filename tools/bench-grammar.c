/*
 * bench-grammar.c - what structured output costs: JSON Schema compile time
 * (schema -> GBNF -> engine grammar), cached reuse, and the per-step time
 * of masking (eng_matcher_mask + applying it to the logits + accepting the
 * token) beside the dense decode step of the same batch, at batch 1 and 8.
 *
 *   bench-grammar -m MODEL.gguf [--schema FILE.json] [--steps N] [--runs N] [--threads N]
 *
 * Each run decodes --steps steps of B sequences, each under its own
 * matcher of the schema's grammar, sampling at temperature 1 (a random
 * model's choices walk the whole grammar); a sequence whose output is
 * complete starts a new one. Reported: the median over the runs of the
 * mean per-step times; the first run (which builds the grammar's
 * per-position tables) is reported on its own as "cold". Not a test.
 */
#include "grammar_cache.h"
#include "orthoserve/engine.h"
#include "schema_gbnf.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *NESTED =
    "{\"type\":\"object\",\"properties\":{"
    "\"id\":{\"type\":\"string\",\"pattern\":\"^[A-Z]{3}-[0-9]{4}$\"},"
    "\"status\":{\"enum\":[\"active\",\"inactive\",\"pending\"]},"
    "\"owner\":{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\",\"maxLength\":40},"
    "\"email\":{\"type\":\"string\",\"format\":\"email\"},\"age\":{\"type\":\"integer\",\"minimum\":0,"
    "\"maximum\":150}},\"required\":[\"name\",\"age\"]},"
    "\"items\":{\"type\":\"array\",\"maxItems\":20,\"items\":{\"type\":\"object\",\"properties\":{"
    "\"sku\":{\"type\":\"string\"},\"qty\":{\"type\":\"integer\",\"minimum\":1},\"price\":{\"type\":\"number\"},"
    "\"tags\":{\"type\":\"array\",\"items\":{\"type\":\"string\"}}},\"required\":[\"sku\",\"qty\"]}},"
    "\"notes\":{\"type\":\"string\"}},\"required\":[\"id\",\"status\",\"owner\",\"items\"]}";

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static char *schema_gbnf(const char *schema_text)
{
    json_error_t je;
    json_t *s = json_loads(schema_text, 0, &je);
    if (!s) {
        fprintf(stderr, "bench-grammar: the schema is not JSON: %s\n", je.text);
        exit(2);
    }
    schema_limits lim = {.max_depth = 64, .max_rules = 20000, .max_bytes = 1 << 20, .max_count = 1000};
    char *g = NULL, ptr[256], msg[400];
    if (schema_to_gbnf(s, &lim, &g, ptr, sizeof ptr, msg, sizeof msg)) {
        fprintf(stderr, "bench-grammar: schema refused at '%s': %s\n", ptr, msg);
        exit(2);
    }
    json_decref(s);
    return g;
}

/* Compile times: schema -> grammar (fresh), and a cache hit. */
static void bench_compile(const eng_vocab *v, const eng_grammar_vocab *gv, const char *schema, int runs)
{
    double *fresh = calloc((size_t)runs, sizeof *fresh), *hit = calloc((size_t)runs, sizeof *hit);
    eng_grammar_limits lim = eng_grammar_default_limits();
    grammar_cache *gc = grammar_cache_new(v, &lim, 8);
    char err[300];
    for (int r = 0; r < runs; r++) {
        double t0 = now_ms();
        char *text = schema_gbnf(schema);
        eng_grammar *g = NULL;
        if (eng_grammar_new(gv, text, strlen(text), NULL, &lim, &g, err, sizeof err) != ENG_OK) {
            fprintf(stderr, "bench-grammar: %s\n", err);
            exit(2);
        }
        fresh[r] = now_ms() - t0;
        eng_grammar_release(g);
        bool h;
        grammar_cache_get(gc, text, strlen(text), &g, &h, err, sizeof err); /* fills the cache */
        eng_grammar_release(g);
        t0 = now_ms();
        char *again = schema_gbnf(schema);
        grammar_cache_get(gc, again, strlen(again), &g, &h, err, sizeof err);
        hit[r] = now_ms() - t0;
        eng_grammar_release(g);
        free(again);
        free(text);
    }
    printf("compile (schema -> GBNF -> grammar): median %.2f ms; cached reuse (schema -> GBNF -> cache hit): "
           "median %.3f ms\n", median(fresh, runs), median(hit, runs));
    grammar_cache_free(gc);
    free(fresh);
    free(hit);
}

typedef struct {
    eng_matcher *m;
    eng_sampler *smp;
    int32_t last, pos;
} seq;

/* One run: steps decode steps of b sequences; adds the mean dense-step and
 * mask times (ms) to *dense and *mask. */
static long walked_bytes, objects_done; /* what the runs walked through the grammar */
static const eng_vocab *bench_vocab;

static void run_steps(eng_context *ctx, eng_grammar *g, int b, int steps, int32_t n_vocab, uint64_t seed,
                      double *dense, double *mask)
{
    seq *q = calloc((size_t)b, sizeof *q);
    int32_t *tok = calloc((size_t)b, sizeof *tok), *pos = calloc((size_t)b, sizeof *pos),
            *sid = calloc((size_t)b, sizeof *sid);
    int8_t *want = calloc((size_t)b, 1);
    uint32_t *bits = calloc(((size_t)n_vocab + 31) / 32, 4);
    float *lg = malloc((size_t)n_vocab * sizeof *lg);
    eng_sampler_params sp = eng_sampler_default_params();
    sp.temperature = 1.0f;
    sp.top_k = 0;
    sp.top_p = 1.0f;
    sp.min_p = 0.0f;
    for (int i = 0; i < b; i++) {
        eng_seq_truncate(ctx, i, 0);
        sp.seed = seed + (uint64_t)i;
        eng_sampler_new(&sp, n_vocab, &q[i].smp);
        eng_matcher_new(g, &q[i].m);
        q[i].last = 1; /* BOS */
    }
    double td = 0, tm = 0;
    for (int s = 0; s < steps; s++) {
        for (int i = 0; i < b; i++) {
            tok[i] = q[i].last;
            pos[i] = q[i].pos;
            sid[i] = i;
            want[i] = 1;
        }
        eng_batch batch = {b, tok, pos, sid, want};
        double t0 = now_ms();
        if (eng_decode(ctx, &batch) != ENG_OK) {
            fprintf(stderr, "bench-grammar: decode failed (context full? lower --steps)\n");
            exit(1);
        }
        td += now_ms() - t0;
        for (int i = 0; i < b; i++) {
            q[i].pos++;
            const float *l = eng_get_logits(ctx, i);
            double ta = now_ms();
            int32_t n = eng_matcher_mask(q[i].m, bits);
            for (int32_t k = 0; k < n_vocab; k++) lg[k] = (bits[k >> 5] >> (k & 31)) & 1u ? l[k] : -INFINITY;
            tm += now_ms() - ta;
            int32_t t = -1;
            if (n > 0) eng_sampler_sample(q[i].smp, lg, &t); /* sampling is paid with or without a grammar */
            ta = now_ms();
            bool ok = t >= 0 && eng_matcher_accept(q[i].m, t) == ENG_OK;
            tm += now_ms() - ta;
            if (ok) {
                char piece[256];
                size_t np = 0;
                if (eng_token_to_piece(bench_vocab, t, false, piece, sizeof piece, &np) == ENG_OK) walked_bytes += (long)np;
            }
            if (!ok || !eng_matcher_can_continue(q[i].m)) {
                objects_done += ok;
                eng_matcher_free(q[i].m); /* the object is complete: start another */
                eng_matcher_new(g, &q[i].m);
                t = 1;
            }
            q[i].last = t;
        }
    }
    *dense += td / steps;
    *mask += tm / steps;
    for (int i = 0; i < b; i++) {
        eng_matcher_free(q[i].m);
        eng_sampler_free(q[i].smp);
    }
    free(q);
    free(tok);
    free(pos);
    free(sid);
    free(want);
    free(bits);
    free(lg);
}

static void usage(void)
{
    fprintf(stderr, "usage: bench-grammar -m MODEL.gguf [--schema FILE.json] [--steps N] [--runs N] [--threads N]\n");
    exit(2);
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    if (s && fread(s, 1, (size_t)n, f) != (size_t)n) n = 0;
    if (s) s[n] = 0;
    fclose(f);
    return s;
}

int main(int argc, char **argv)
{
    const char *model = NULL, *schema_path = NULL;
    int steps = 48, runs = 5, threads = 2;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-m") && i + 1 < argc) model = argv[++i];
        else if (!strcmp(argv[i], "--schema") && i + 1 < argc) schema_path = argv[++i];
        else if (!strcmp(argv[i], "--steps") && i + 1 < argc) steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--runs") && i + 1 < argc) runs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else usage();
    }
    if (!model || steps < 1 || runs < 1) usage();
    char *schema = schema_path ? read_file(schema_path) : strdup(NESTED);
    if (!schema) usage();
    eng_model_params mp = eng_model_default_params();
    mp.n_threads = threads;
    eng_model *m = NULL;
    char err[512];
    if (eng_model_load(model, &mp, &m, err, sizeof err) != ENG_OK) {
        fprintf(stderr, "bench-grammar: %s\n", err);
        return 1;
    }
    const eng_vocab *v = eng_model_vocab(m);
    bench_vocab = v;
    int32_t nv = eng_vocab_n_tokens(v);
    double t0 = now_ms();
    eng_grammar_vocab *gv = NULL;
    eng_grammar_vocab_new(v, &gv);
    printf("model %s: %d tokens; kernels %s; token trie built in %.1f ms (once per vocabulary)\n", model, nv,
           eng_kernel_name(), now_ms() - t0);
    bench_compile(v, gv, schema, runs);
    char *text = schema_gbnf(schema);
    eng_grammar *g = NULL;
    eng_grammar_new(gv, text, strlen(text), NULL, NULL, &g, err, sizeof err);
    eng_context_params cp = eng_context_default_params();
    cp.n_ctx = steps + 8;
    cp.n_seq_max = 8;
    cp.n_batch_max = 8;
    eng_context *ctx = NULL;
    if (eng_context_new(m, &cp, &ctx) != ENG_OK) return 1;
    const int batches[2] = {1, 8};
    for (int bi = 0; bi < 2; bi++) {
        int b = batches[bi];
        double cold_d = 0, cold_m = 0, *d = calloc((size_t)runs, sizeof *d), *k = calloc((size_t)runs, sizeof *k),
               *fr = calloc((size_t)runs, sizeof *fr);
        if (bi == 0) run_steps(ctx, g, b, steps, nv, 1000, &cold_d, &cold_m);
        for (int r = 0; r < runs; r++) {
            run_steps(ctx, g, b, steps, nv, (uint64_t)r * 7919 + 1, &d[r], &k[r]);
            fr[r] = k[r] / d[r];
        }
        if (bi == 0)
            printf("cold first run (builds the per-position tables), batch 1: dense %.2f ms/step, mask %.3f "
                   "ms/step\n", cold_d, cold_m);
        printf("  (the runs wrote %ld bytes of JSON, %ld objects complete)\n", walked_bytes, objects_done);
        walked_bytes = objects_done = 0;
        printf("batch %d: dense decode %.2f ms/step, masking %.3f ms/step (all %d sequences) = %.2f %% of the "
               "dense step (median of %d runs of %d steps)\n", b, median(d, runs), median(k, runs), b,
               100.0 * median(fr, runs), runs, steps);
        free(d);
        free(k);
        free(fr);
    }
    eng_context_free(ctx);
    eng_grammar_release(g);
    eng_grammar_vocab_free(gv);
    eng_model_free(m);
    free(text);
    free(schema);
    return 0;
}
