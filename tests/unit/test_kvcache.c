/*
 * test_kvcache.c - the forward pass with F16 and Q8_0 KV caches against
 * llama.cpp's golden outputs (made with an F32 KV cache) for every model in
 * testdata/models: the last-position logits and every position's golden
 * top-20 logits stay within 0.03 of the goldens with F16 K and V (issue 18;
 * llama.cpp itself moves by up to 0.027 with an F16 cache), within the
 * measured tolerances below with Q8_0 K and/or V, mixed pairs included; and
 * stories260K's free-running greedy continuation of each golden prompt is
 * the same 64 tokens with an F16 KV cache as with F32. The F32 KV cache is
 * test_forward.c's (the goldens' own tolerances). The largest deviation of
 * each pair is logged.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "orthoserve/engine.h"
#include "testutil.h"

#define F16_TOL 0.03
/*
 * Q8_0 (measured at every kernel level, the same to 1e-5): with Q8_0 V and
 * F32/F16 K at most 0.033 on the synthetic models (tiny256-Q6_K, F16 K)
 * and 0.051 on stories260K; with Q8_0 K at most 0.027 on the synthetic
 * models but 0.77 (F16 V) to 0.86 (Q8_0 V) on stories260K, whose trained
 * attention is sharp (head size 8: one scale per key per head, and a
 * score error of a few tenths moves its softmax). The scalar reference
 * gives the same, so it is the format's, not a kernel's. Allowed: Q8_TOL,
 * and Q8_K_STORIES for Q8_0 K on stories260K.
 */
#define Q8_TOL 0.06
#define Q8_K_STORIES 1.0

typedef struct {
    eng_model *m;
    eng_context *c;
    json_t *g;
    int32_t n_vocab;
} fixture;

static void fx_open(fixture *f, const char *name, eng_kv_type tk, eng_kv_type tv, int32_t n_ctx)
{
    char rel[256], err[512] = "";
    snprintf(rel, sizeof rel, "models/%s.gguf", name);
    eng_model_params mp = eng_model_default_params();
    mp.n_threads = 2;
    cr_assert_eq(eng_model_load(td_path(rel), &mp, &f->m, err, sizeof err), ENG_OK, "load %s: %s", name, err);
    eng_context_params cp = eng_context_default_params();
    cp.n_ctx = n_ctx;
    cp.n_batch_max = 256;
    cp.type_k = tk;
    cp.type_v = tv;
    cr_assert_eq(eng_context_new(f->m, &cp, &f->c), ENG_OK);
    snprintf(rel, sizeof rel, "golden/%s.json", name);
    f->g = td_json(rel);
    eng_model_info info;
    eng_model_get_info(f->m, &info);
    f->n_vocab = info.n_vocab;
}

static void fx_close(fixture *f)
{
    json_decref(f->g);
    eng_context_free(f->c);
    eng_model_free(f->m);
}

static int32_t *json_ids(json_t *a, size_t *n)
{
    *n = json_array_size(a);
    int32_t *ids = malloc((*n + 1) * sizeof *ids);
    for (size_t i = 0; i < *n; i++) ids[i] = (int32_t)json_integer_value(json_array_get(a, i));
    return ids;
}

/* ids as sequence 0 from position 0, logits at every position. */
static void run_all(fixture *f, const int32_t *ids, size_t n)
{
    eng_seq_truncate(f->c, 0, 0);
    int32_t *pos = malloc(n * sizeof *pos), *sq = calloc(n, sizeof *sq);
    int8_t *want = malloc(n);
    for (size_t i = 0; i < n; i++) pos[i] = (int32_t)i, want[i] = 1;
    eng_batch b = {(int32_t)n, ids, pos, sq, want};
    cr_assert_eq(eng_decode(f->c, &b), ENG_OK);
    free(pos);
    free(sq);
    free(want);
}

static json_t *prompt_by_id(json_t *g, json_int_t id)
{
    json_t *ps = json_object_get(g, "prompts"), *p;
    size_t i;
    json_array_foreach(ps, i, p) if (json_integer_value(json_object_get(p, "id")) == id) return p;
    cr_assert_fail("no prompt %lld", (long long)id);
    return NULL;
}

/* The largest |logit - golden| over every golden prompt: all logits of the
 * last position, the golden top-20 of every position. */
static double max_dev(fixture *f)
{
    json_t *ls = json_object_get(f->g, "logits"), *L;
    size_t li;
    double dev = 0;
    json_array_foreach(ls, li, L) {
        size_t n;
        int32_t *ids = json_ids(json_object_get(prompt_by_id(f->g, json_integer_value(json_object_get(L, "prompt_id"))),
                                                "tokens"), &n);
        run_all(f, ids, n);
        const float *last = eng_get_logits(f->c, (int32_t)n - 1);
        json_t *exp = json_object_get(L, "last_logits");
        for (int32_t t = 0; t < f->n_vocab; t++)
            dev = fmax(dev, fabs((double)last[t] - json_number_value(json_array_get(exp, (size_t)t))));
        json_t *top = json_object_get(L, "top20");
        for (size_t pos = 0; pos < n; pos++) {
            const float *l = eng_get_logits(f->c, (int32_t)pos);
            for (size_t k = 0; k < 20; k++) {
                json_t *pr = json_array_get(json_array_get(top, pos), k);
                dev = fmax(dev, fabs((double)l[json_integer_value(json_array_get(pr, 0))] -
                                     json_number_value(json_array_get(pr, 1))));
            }
        }
        free(ids);
    }
    return dev;
}

static void golden(const char *name)
{
    static const struct {
        eng_kv_type k, v;
        double tol;
    } pairs[] = {
        {ENG_KV_F16, ENG_KV_F16, F16_TOL},   {ENG_KV_Q8_0, ENG_KV_Q8_0, Q8_TOL}, {ENG_KV_F16, ENG_KV_Q8_0, Q8_TOL},
        {ENG_KV_Q8_0, ENG_KV_F16, Q8_TOL},   {ENG_KV_F32, ENG_KV_Q8_0, Q8_TOL},  {ENG_KV_F16, ENG_KV_F32, F16_TOL},
    };
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
        fixture f;
        fx_open(&f, name, pairs[i].k, pairs[i].v, 256);
        const double dev = max_dev(&f);
        double tol = pairs[i].tol;
        if (pairs[i].k == ENG_KV_Q8_0 && !strcmp(name, "stories260K")) tol = Q8_K_STORIES;
        cr_log_info("%s K %s V %s (%s): largest |dlogit| vs golden %.4f", name, eng_kv_type_name(pairs[i].k),
                    eng_kv_type_name(pairs[i].v), eng_kernel_name(), dev);
        cr_assert(dev <= tol, "%s K %s V %s: largest |dlogit| %g > %g", name, eng_kv_type_name(pairs[i].k),
                  eng_kv_type_name(pairs[i].v), dev, tol);
        fx_close(&f);
    }
}

#define GOLDEN(id, name) \
    Test(kvcache, id, .timeout = 300) { golden(name); }
GOLDEN(stories260K, "stories260K")
GOLDEN(tiny256_F32, "tiny256-F32")
GOLDEN(tiny256_F16, "tiny256-F16")
GOLDEN(tiny256_BF16, "tiny256-BF16")
GOLDEN(tiny256_Q8_0, "tiny256-Q8_0")
GOLDEN(tiny256_Q4_0, "tiny256-Q4_0")
GOLDEN(tiny256_Q4_K_M, "tiny256-Q4_K_M")
GOLDEN(tiny256_Q5_K_M, "tiny256-Q5_K_M")
GOLDEN(tiny256_Q6_K, "tiny256-Q6_K")
GOLDEN(tiny256_tied_F32, "tiny256-tied-F32")
GOLDEN(tiny256_tied_Q8_0, "tiny256-tied-Q8_0")
GOLDEN(qwen2tiny_F32, "qwen2tiny-F32")
GOLDEN(qwen2tiny_Q8_0, "qwen2tiny-Q8_0")
GOLDEN(qwen3tiny_F32, "qwen3tiny-F32")
GOLDEN(qwen3tiny_Q8_0, "qwen3tiny-Q8_0")
GOLDEN(gemma3tiny_F32, "gemma3tiny-F32")
GOLDEN(gemma3tiny_Q8_0, "gemma3tiny-Q8_0")
GOLDEN(phi3tiny_F32, "phi3tiny-F32")
GOLDEN(phi3tiny_Q8_0, "phi3tiny-Q8_0")

/* Free-running greedy from prompt ids for n tokens, one token per call. */
static void greedy(fixture *f, const int32_t *ids, size_t np, int32_t *out, int n)
{
    run_all(f, ids, np);
    const float *l = eng_get_logits(f->c, (int32_t)np - 1);
    for (int k = 0; k < n; k++) {
        int32_t tok = 0;
        for (int32_t i = 1; i < f->n_vocab; i++)
            if (l[i] > l[tok]) tok = i;
        out[k] = tok;
        int32_t p = (int32_t)np + k, s = 0;
        int8_t w = 1;
        eng_batch b = {1, &tok, &p, &s, &w};
        cr_assert_eq(eng_decode(f->c, &b), ENG_OK);
        l = eng_get_logits(f->c, 0);
    }
}

/* stories260K: 64 greedy tokens after each golden greedy prompt, the same
 * with F16 K and V as with F32. */
Test(kvcache, stories260K_greedy_f16, .timeout = 120)
{
    enum { N = 64 };
    fixture f32, f16;
    fx_open(&f32, "stories260K", ENG_KV_F32, ENG_KV_F32, 256);
    fx_open(&f16, "stories260K", ENG_KV_F16, ENG_KV_F16, 256);
    json_t *gs = json_object_get(f32.g, "greedy"), *G;
    size_t gi;
    json_array_foreach(gs, gi, G) {
        size_t np;
        int32_t *pt = json_ids(json_object_get(G, "prompt_tokens"), &np), a[N], b[N];
        greedy(&f32, pt, np, a, N);
        greedy(&f16, pt, np, b, N);
        for (int k = 0; k < N; k++) cr_assert_eq(a[k], b[k], "greedy %zu step %d: F16 KV %d, F32 KV %d", gi, k, b[k], a[k]);
        free(pt);
    }
    fx_close(&f32);
    fx_close(&f16);
}

/* The types by name, and what a token costs. */
Test(kvcache, names_and_sizes)
{
    eng_kv_type t;
    cr_assert_eq(eng_kv_type_parse("F16", &t), ENG_OK);
    cr_assert_eq(t, ENG_KV_F16);
    cr_assert_eq(eng_kv_type_parse("q8_0", &t), ENG_OK);
    cr_assert_eq(t, ENG_KV_Q8_0);
    cr_assert_eq(eng_kv_type_parse("f32", &t), ENG_OK);
    cr_assert_eq(t, ENG_KV_F32);
    cr_assert_eq(eng_kv_type_parse("q4_0", &t), ENG_EINVAL);
    cr_assert_eq(eng_kv_type_parse("", &t), ENG_EINVAL);
    cr_assert_null(eng_kv_type_name((eng_kv_type)3));
    char err[512] = "";
    eng_model_params mp = eng_model_default_params();
    eng_model *m;
    cr_assert_eq(eng_model_load(td_path("models/stories260K.gguf"), &mp, &m, err, sizeof err), ENG_OK, "%s", err);
    eng_model_info info;
    eng_model_get_info(m, &info);
    const size_t per = (size_t)info.n_layer * (size_t)info.n_head_kv; /* kv heads over all layers */
    const int hd = info.n_embd / info.n_head;
    cr_assert_eq(eng_kv_bytes_per_token(m, ENG_KV_F32, ENG_KV_F32), per * (size_t)hd * 8);
    cr_assert_eq(eng_kv_bytes_per_token(m, ENG_KV_F16, ENG_KV_F16), per * (size_t)hd * 4);
    /* Q8_0: hd int8 and one fp16 scale per (partial) group of 32, for K and for V */
    cr_assert_eq(eng_kv_bytes_per_token(m, ENG_KV_Q8_0, ENG_KV_Q8_0), per * ((size_t)hd + 2 * (((size_t)hd + 31) / 32)) * 2);
    cr_assert_eq(eng_kv_bytes_per_token(m, ENG_KV_F16, ENG_KV_Q8_0),
                 per * ((size_t)hd * 2 + (size_t)hd + 2 * (((size_t)hd + 31) / 32)));
    eng_context_params cp = eng_context_default_params();
    cp.type_k = (eng_kv_type)2;
    eng_context *c = NULL;
    cr_assert_eq(eng_context_new(m, &cp, &c), ENG_EINVAL);
    eng_model_free(m);
}
