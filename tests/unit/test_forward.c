/*
 * test_forward.c - the forward pass against llama.cpp's golden outputs for
 * every model in testdata/models (see testdata/README.md, "How to test an
 * engine against these files"):
 *   - prompt tokenization identical;
 *   - last-position logits within the file's llama.cpp tolerance;
 *   - at every position, each top-20 logit within tolerance, and the set of
 *     the top k ids identical wherever the golden gap after rank k exceeds
 *     twice the tolerance (below that the order is not decidable);
 *   - greedy: teacher-forced argmax equals the golden token at every step
 *     whose margin exceeds 2*atol, and free-running generation matches up to
 *     the first step with a smaller margin (all 48 tokens for stories260K).
 * Also: batch composition (a prompt split into chunks, several sequences in
 * one batch) gives bitwise the same logits as one whole batch, and repacked
 * weights (model.c) the same logits as the file layout.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "orthoserve/engine.h"
#include "testutil.h"

typedef struct {
    eng_model *m;
    eng_context *c;
    json_t *g;
    double atol;
    int32_t n_vocab;
} fixture;

static void fx_open(fixture *f, const char *name, int32_t n_seq)
{
    char rel[256], err[512] = "";
    snprintf(rel, sizeof rel, "models/%s.gguf", name);
    eng_model_params mp = eng_model_default_params();
    mp.n_threads = 2;
    eng_status st = eng_model_load(td_path(rel), &mp, &f->m, err, sizeof err);
    cr_assert_eq(st, ENG_OK, "load %s: %s", name, err);
    eng_context_params cp = eng_context_default_params();
    cp.n_ctx = 256; /* prompt 5 (139 tokens) exceeds stories260K's declared 128 */
    cp.n_seq_max = n_seq;
    cp.n_batch_max = 256;
    cp.type_k = cp.type_v = ENG_KV_F32; /* the goldens' KV (test_kvcache.c: the other types) */
    cr_assert_eq(eng_context_new(f->m, &cp, &f->c), ENG_OK);
    snprintf(rel, sizeof rel, "golden/%s.json", name);
    f->g = td_json(rel);
    f->atol = json_real_value(json_object_get(json_object_get(f->g, "tolerances"), "logits_atol_vs_llamacpp"));
    cr_assert(f->atol > 0);
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

static json_t *prompt_by_id(json_t *g, json_int_t id)
{
    json_t *ps = json_object_get(g, "prompts"), *p;
    size_t i;
    json_array_foreach(ps, i, p) if (json_integer_value(json_object_get(p, "id")) == id) return p;
    cr_assert_fail("no prompt %lld", (long long)id);
    return NULL;
}

/* Decode ids as one sequence (fresh), logits for all positions. */
static void run_all(fixture *f, int32_t seq, const int32_t *ids, size_t n)
{
    eng_seq_truncate(f->c, seq, 0);
    int32_t *pos = malloc(n * sizeof *pos), *sq = malloc(n * sizeof *sq);
    int8_t *want = malloc(n);
    for (size_t i = 0; i < n; i++) {
        pos[i] = (int32_t)i;
        sq[i] = seq;
        want[i] = 1;
    }
    eng_batch b = {(int32_t)n, ids, pos, sq, want};
    cr_assert_eq(eng_decode(f->c, &b), ENG_OK);
    free(pos);
    free(sq);
    free(want);
}

static int32_t argmax(const float *l, int32_t n)
{
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (l[i] > l[best]) best = i;
    return best;
}

static int cmp_desc(const void *a, const void *b)
{
    const float *x = a, *y = b; /* (logit, id) pairs */
    if (x[0] != y[0]) return x[0] < y[0] ? 1 : -1;
    return x[1] < y[1] ? -1 : 1;
}

/* Our top-k ids (ties to lower id) into out. */
static void top_ids(const float *l, int32_t n, int k, int32_t *out)
{
    float *pairs = malloc((size_t)n * 2 * sizeof(float));
    for (int32_t i = 0; i < n; i++) {
        pairs[2 * i] = l[i];
        pairs[2 * i + 1] = (float)i;
    }
    qsort(pairs, (size_t)n, 2 * sizeof(float), cmp_desc);
    for (int i = 0; i < k; i++) out[i] = (int32_t)pairs[2 * i + 1];
    free(pairs);
}

static bool same_set(const int32_t *a, const int32_t *b, int k)
{
    for (int i = 0; i < k; i++) {
        bool found = false;
        for (int j = 0; j < k && !found; j++) found = a[i] == b[j];
        if (!found) return false;
    }
    return true;
}

static void check_tokenization(fixture *f)
{
    const eng_vocab *v = eng_model_vocab(f->m);
    json_t *ps = json_object_get(f->g, "prompts"), *p;
    size_t i;
    json_array_foreach(ps, i, p) {
        const char *text = json_string_value(json_object_get(p, "text"));
        size_t n_exp, n_got = 0;
        int32_t *exp = json_ids(json_object_get(p, "tokens"), &n_exp);
        int32_t got[1024];
        cr_assert_eq(eng_tokenize(v, text, strlen(text), true, false, got, 1024, &n_got), ENG_OK);
        cr_assert_eq(n_got, n_exp, "prompt %zu: %zu tokens, expected %zu", i, n_got, n_exp);
        for (size_t k = 0; k < n_exp; k++)
            cr_assert_eq(got[k], exp[k], "prompt %zu token %zu: %d != %d", i, k, got[k], exp[k]);
        free(exp);
    }
}

/* F32 files of the later architectures: the last-position logits also
 * against the NumPy float64 reference (dequant_reference, exact GELU) with
 * its tighter tolerance; this is what catches architecture mistakes smaller
 * than the llama.cpp atol (gemma3tiny-F32: 2e-3 there, 1e-4 here). */
static void check_dequant_ref(fixture *f, size_t li, const float *last)
{
    const char *file = json_string_value(json_object_get(f->g, "model_file"));
    static const char *const files[] = {"qwen3tiny-F32.gguf", "gemma3tiny-F32.gguf", "phi3tiny-F32.gguf"};
    bool want = false;
    const char *base = strrchr(file, '/') ? strrchr(file, '/') + 1 : file;
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) want |= strcmp(base, files[i]) == 0;
    if (!want) return;
    const double atol =
        json_number_value(json_object_get(json_object_get(f->g, "tolerances"), "logits_atol_vs_dequant_reference"));
    json_t *exp = json_object_get(json_array_get(json_object_get(json_object_get(f->g, "dequant_reference"), "logits"),
                                                 li), "last_logits");
    cr_assert(atol > 0 && (int32_t)json_array_size(exp) == f->n_vocab);
    double maxd = 0;
    for (int32_t t = 0; t < f->n_vocab; t++) {
        double d = fabs((double)last[t] - json_number_value(json_array_get(exp, (size_t)t)));
        if (d > maxd) maxd = d;
    }
    cr_log_info("%s prompt %zu: max |dlogit| vs dequant_reference %.3g (atol %g)", file, li, maxd, atol);
    cr_assert(maxd <= atol, "%s prompt %zu: max |dlogit| vs dequant_reference %g > %g", file, li, maxd, atol);
}

static void check_logits(fixture *f)
{
    json_t *ls = json_object_get(f->g, "logits"), *L;
    size_t li;
    json_array_foreach(ls, li, L) {
        json_t *p = prompt_by_id(f->g, json_integer_value(json_object_get(L, "prompt_id")));
        size_t n;
        int32_t *ids = json_ids(json_object_get(p, "tokens"), &n);
        run_all(f, 0, ids, n);
        /* last position: all logits */
        const float *last = eng_get_logits(f->c, (int32_t)n - 1);
        json_t *exp = json_object_get(L, "last_logits");
        cr_assert_eq((int32_t)json_array_size(exp), f->n_vocab);
        double maxd = 0;
        for (int32_t t = 0; t < f->n_vocab; t++) {
            double d = fabs((double)last[t] - json_number_value(json_array_get(exp, (size_t)t)));
            if (d > maxd) maxd = d;
        }
        cr_assert(maxd <= f->atol, "prompt %zu: max |dlogit| %g > atol %g", li, maxd, f->atol);
        cr_log_info("%s prompt %zu: max |dlogit| vs llama.cpp %.3g (atol %g)",
                    json_string_value(json_object_get(f->g, "model_file")), li, maxd, f->atol);
        check_dequant_ref(f, li, last);
        /* every position: top-20 values and decidable rank sets */
        json_t *top = json_object_get(L, "top20");
        for (size_t pos = 0; pos < n; pos++) {
            const float *l = eng_get_logits(f->c, (int32_t)pos);
            json_t *tp = json_array_get(top, pos);
            int32_t gid[20], ours[20];
            double glog[20];
            for (int k = 0; k < 20; k++) {
                json_t *pr = json_array_get(tp, (size_t)k);
                gid[k] = (int32_t)json_integer_value(json_array_get(pr, 0));
                glog[k] = json_number_value(json_array_get(pr, 1));
                cr_assert(fabs(l[gid[k]] - glog[k]) <= f->atol,
                          "prompt %zu pos %zu id %d: %g vs golden %g", li, pos, gid[k],
                          (double)l[gid[k]], glog[k]);
            }
            top_ids(l, f->n_vocab, 20, ours);
            for (int k = 0; k < 19; k++)
                if (glog[k] - glog[k + 1] > 2 * f->atol)
                    cr_assert(same_set(gid, ours, k + 1), "prompt %zu pos %zu: top-%d ids differ", li,
                              pos, k + 1);
        }
        free(ids);
    }
}

static void check_greedy(fixture *f, bool must_match_all)
{
    json_t *gs = json_object_get(f->g, "greedy"), *G;
    size_t gi;
    json_array_foreach(gs, gi, G) {
        size_t np, ng;
        int32_t *pt = json_ids(json_object_get(G, "prompt_tokens"), &np);
        int32_t *gt = json_ids(json_object_get(G, "tokens"), &ng);
        json_t *margins = json_object_get(G, "step_margins");
        /* teacher-forced: prompt + golden tokens in one batch */
        int32_t *all = malloc((np + ng) * sizeof *all);
        memcpy(all, pt, np * sizeof *pt);
        memcpy(all + np, gt, ng * sizeof *gt);
        run_all(f, 0, all, np + ng - 1);
        size_t first_small = ng;
        for (size_t k = 0; k < ng; k++) {
            double mg = json_number_value(json_array_get(margins, k));
            if (mg <= 2 * f->atol) {
                if (first_small == ng) first_small = k;
                continue;
            }
            int32_t a = argmax(eng_get_logits(f->c, (int32_t)(np - 1 + k)), f->n_vocab);
            cr_assert_eq(a, gt[k], "greedy %zu step %zu (margin %g): %d != %d", gi, k, mg, a, gt[k]);
        }
        if (must_match_all) cr_assert_eq(first_small, ng, "stories260K margins are all large");
        /* free-running, one token per decode call */
        run_all(f, 0, pt, np);
        const float *l = eng_get_logits(f->c, (int32_t)np - 1);
        for (size_t k = 0; k < first_small; k++) {
            int32_t tok = argmax(l, f->n_vocab);
            cr_assert_eq(tok, gt[k], "free-running greedy %zu step %zu: %d != %d", gi, k, tok, gt[k]);
            int32_t p = (int32_t)(np + k), s = 0;
            int8_t w = 1;
            eng_batch b = {1, &tok, &p, &s, &w};
            cr_assert_eq(eng_decode(f->c, &b), ENG_OK);
            l = eng_get_logits(f->c, 0);
        }
        free(all);
        free(pt);
        free(gt);
    }
}

static void golden(const char *name)
{
    fixture f;
    fx_open(&f, name, 1);
    check_tokenization(&f);
    check_logits(&f);
    check_greedy(&f, strcmp(name, "stories260K") == 0);
    fx_close(&f);
}

#define GOLDEN(id, name) \
    Test(forward, id, .timeout = 300) { golden(name); }
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

/* The same prompt decoded whole, in chunks, and next to other sequences in
 * one batch gives bitwise the same logits: batch composition and chunked
 * prefill never change a sequence's arithmetic (prefix reuse relies on it). */
static void batch_composition(const char *name)
{
    fixture f;
    fx_open(&f, name, 3);
    json_t *p = prompt_by_id(f.g, 5);
    size_t n;
    int32_t *ids = json_ids(json_object_get(p, "tokens"), &n);
    run_all(&f, 0, ids, n);
    float *ref = malloc((size_t)f.n_vocab * sizeof(float));
    memcpy(ref, eng_get_logits(f.c, (int32_t)n - 1), (size_t)f.n_vocab * sizeof(float));

    /* chunks of 7 tokens */
    eng_seq_truncate(f.c, 0, 0);
    const float *l = NULL;
    for (size_t i0 = 0; i0 < n; i0 += 7) {
        size_t m = n - i0 < 7 ? n - i0 : 7;
        int32_t pos[7], sq[7] = {0};
        int8_t w[7] = {0};
        for (size_t i = 0; i < m; i++) pos[i] = (int32_t)(i0 + i);
        w[m - 1] = 1;
        eng_batch b = {(int32_t)m, ids + i0, pos, sq, w};
        cr_assert_eq(eng_decode(f.c, &b), ENG_OK);
        l = eng_get_logits(f.c, (int32_t)m - 1);
    }
    for (int32_t t = 0; t < f.n_vocab; t++) cr_assert_eq(l[t], ref[t], "chunked id %d: %.9g vs %.9g", t, l[t], ref[t]);

    /* three sequences in one batch: seq 1 and 2 hold other prompts */
    eng_seq_truncate(f.c, 0, 0);
    size_t n2;
    int32_t *ids2 = json_ids(json_object_get(prompt_by_id(f.g, 4), "tokens"), &n2);
    size_t tot = n + 2 * n2;
    int32_t *tok = malloc(tot * sizeof *tok), *pos = malloc(tot * sizeof *pos), *sq = malloc(tot * sizeof *sq);
    int8_t *w = calloc(tot, 1);
    size_t k = 0;
    for (size_t i = 0; i < n2; i++, k++) { tok[k] = ids2[i]; pos[k] = (int32_t)i; sq[k] = 1; }
    for (size_t i = 0; i < n; i++, k++) { tok[k] = ids[i]; pos[k] = (int32_t)i; sq[k] = 0; }
    for (size_t i = 0; i < n2; i++, k++) { tok[k] = ids2[i]; pos[k] = (int32_t)i; sq[k] = 2; }
    w[n2 + n - 1] = 1;
    w[tot - 1] = 1;
    eng_seq_truncate(f.c, 1, 0);
    eng_seq_truncate(f.c, 2, 0);
    eng_batch b = {(int32_t)tot, tok, pos, sq, w};
    cr_assert_eq(eng_decode(f.c, &b), ENG_OK);
    l = eng_get_logits(f.c, (int32_t)(n2 + n - 1));
    for (int32_t t = 0; t < f.n_vocab; t++) cr_assert_eq(l[t], ref[t], "batched id %d", t);
    free(tok); free(pos); free(sq); free(w); free(ids2); free(ids); free(ref);
    fx_close(&f);
}

Test(forward, batch_composition, .timeout = 120) { batch_composition("tiny256-Q8_0"); }
/* the later architectures: q/k norms, gemma3's post-norms and sliding
 * window (140 tokens, window 32: chunks of 7 see it cut through earlier
 * chunks), phi3's fused matrices */
Test(forward, batch_composition_qwen3, .timeout = 120) { batch_composition("qwen3tiny-Q8_0"); }
Test(forward, batch_composition_gemma3, .timeout = 120) { batch_composition("gemma3tiny-Q8_0"); }
Test(forward, batch_composition_gemma3_f32, .timeout = 120) { batch_composition("gemma3tiny-F32"); }
Test(forward, batch_composition_phi3, .timeout = 120) { batch_composition("phi3tiny-Q8_0"); }

Test(forward, rejects_bad_batches, .timeout = 60)
{
    fixture f;
    fx_open(&f, "stories260K", 2);
    int32_t tok[3] = {1, 403, 407}, pos[3] = {0, 1, 2}, sq[3] = {0, 0, 0};
    eng_batch b = {3, tok, pos, sq, NULL};
    int32_t bad_pos[3] = {1, 2, 3};
    eng_batch b1 = {3, tok, bad_pos, sq, NULL};
    cr_expect_eq(eng_decode(f.c, &b1), ENG_EINVAL, "must start at the cached length");
    int32_t bad_tok[3] = {1, 99999, 2};
    eng_batch b2 = {3, bad_tok, pos, sq, NULL};
    cr_expect_eq(eng_decode(f.c, &b2), ENG_EINVAL, "token out of range");
    int32_t bad_seq[3] = {0, 5, 0};
    eng_batch b3 = {3, tok, pos, bad_seq, NULL};
    cr_expect_eq(eng_decode(f.c, &b3), ENG_EINVAL, "sequence out of range");
    int32_t split_seq[3] = {0, 1, 0}, split_pos[3] = {0, 0, 1};
    eng_batch b4 = {3, tok, split_pos, split_seq, NULL};
    cr_expect_eq(eng_decode(f.c, &b4), ENG_EINVAL, "a sequence's rows must be contiguous");
    cr_expect_eq(eng_seq_len(f.c, 0), 0, "a rejected batch changes nothing");
    cr_expect_eq(eng_decode(f.c, &b), ENG_OK);
    cr_expect_eq(eng_seq_len(f.c, 0), 3);
    cr_expect_null(eng_get_logits(f.c, 0), "no logits were asked for");
    /* context full: n_ctx is 256 */
    int32_t p256 = 256, t1 = 1, s1 = 1;
    eng_batch b5 = {1, &t1, &p256, &s1, NULL};
    cr_expect_eq(eng_decode(f.c, &b5), ENG_EINVAL, "position must continue the sequence");
    fx_close(&f);
}

/* Repacked weights (copied from the mapping, or in place in memory) give the
 * same logits bit for bit as the file layout: a whole prompt (prefill
 * kernels) and then single tokens (decode kernels), on 2 threads. */
static void check_repack_bitwise(const char *path, const int32_t *ids, size_t n)
{
    const bool avx512 = strcmp(eng_kernel_name(), "avx512") == 0;
    eng_model *m[3];
    eng_context *c[3];
    int32_t n_vocab = 0;
    for (int v = 0; v < 3; v++) {
        char err[512] = "";
        eng_model_params mp = eng_model_default_params();
        mp.n_threads = 2;
        mp.use_mmap = v != 2;
        mp.repack = v != 0;
        cr_assert_eq(eng_model_load(path, &mp, &m[v], err, sizeof err), ENG_OK, "%s: %s", path, err);
        if (v == 0) cr_assert_eq(m[v]->n_packed_mats, 0);
        else if (avx512) cr_assert_gt(m[v]->n_packed_mats, 0, "%s: nothing repacked", path);
        eng_context_params cp = eng_context_default_params();
        cp.n_ctx = 256;
        cp.n_batch_max = 256;
        cr_assert_eq(eng_context_new(m[v], &cp, &c[v]), ENG_OK);
        eng_model_info info;
        eng_model_get_info(m[v], &info);
        n_vocab = info.n_vocab;
        fixture f = {.m = m[v], .c = c[v]};
        run_all(&f, 0, ids, n);
    }
    const size_t lb = (size_t)n_vocab * sizeof(float);
    for (size_t t = 0; t < n; t++)
        for (int v = 1; v < 3; v++)
            cr_assert_eq(memcmp(eng_get_logits(c[v], (int32_t)t), eng_get_logits(c[0], (int32_t)t), lb), 0,
                         "%s: prompt position %zu differs (variant %d)", path, t, v);
    for (int32_t step = 0; step < 4; step++) {
        int32_t tok = ids[step], pos = (int32_t)n + step, sq = 0;
        int8_t want = 1;
        eng_batch b = {1, &tok, &pos, &sq, &want};
        for (int v = 0; v < 3; v++) cr_assert_eq(eng_decode(c[v], &b), ENG_OK);
        for (int v = 1; v < 3; v++)
            cr_assert_eq(memcmp(eng_get_logits(c[v], 0), eng_get_logits(c[0], 0), lb), 0,
                         "%s: decode step %d differs (variant %d)", path, step, v);
    }
    for (int v = 0; v < 3; v++) {
        eng_context_free(c[v]);
        eng_model_free(m[v]);
    }
}

Test(forward, repacked_weights_bitwise, .timeout = 120)
{
    static const char *const names[] = {"tiny256-F16", "tiny256-Q8_0", "tiny256-Q4_K_M", "tiny256-Q6_K",
                                        "tiny256-tied-Q8_0"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char rel[256];
        snprintf(rel, sizeof rel, "golden/%s.json", names[i]);
        json_t *g = td_json(rel);
        size_t n;
        int32_t *ids = json_ids(json_object_get(prompt_by_id(g, 5), "tokens"), &n);
        snprintf(rel, sizeof rel, "models/%s.gguf", names[i]);
        check_repack_bitwise(td_path(rel), ids, n);
        free(ids);
        json_decref(g);
    }
}

/* Matrices whose row count is not a multiple of 16 (k/v: 24 rows, output:
 * 300): whole groups packed, the last rows in the file layout, threads
 * splitting across both. The model is written by mkmodel first (ctest
 * fixture; tests/CMakeLists.txt). */
Test(forward, repacked_tail_rows, .timeout = 60)
{
    const char *path = getenv("ORTHOSERVE_TEST_TAIL_MODEL");
    if (!path) cr_skip_test("ORTHOSERVE_TEST_TAIL_MODEL unset: run through ctest, which writes the model");
    int32_t ids[40];
    for (int i = 0; i < 40; i++) ids[i] = 1 + (i * 37) % 299;
    check_repack_bitwise(path, ids, 40);
}
