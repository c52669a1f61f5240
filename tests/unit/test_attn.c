/*
 * test_attn.c - the attention kernels (attn.c, attn_avx512.c) of every kernel
 * level the CPU has, on random caches: against a two-pass double-precision
 * softmax written here from the definition, SIMD against the scalar
 * reference, and each query's result
 * independent of the other queries in the call (bit for bit), which the
 * engine's batching guarantees rest on.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "testutil.h"

#define B ENG_KV_BLOCK

typedef struct {
    int hd, n_rep, n_kvh, n_pos, n_blocks;
    float *k, *v;  /* n_blocks blocks of B * n_kvh * hd */
    int32_t *blk;  /* the sequence's blocks, shuffled */
    float *q, *out; /* nq rows of n_kvh * n_rep * hd */
    int32_t *last;
    int32_t nq;
} fixture;

static size_t blk_floats(const fixture *f) { return (size_t)B * f->n_kvh * f->hd; }

/* Position p's key/value dim d of kv head h, wherever the layout puts it. */
static float *kat(const fixture *f, int h, int p, int d)
{
    return f->k + f->blk[p / B] * blk_floats(f) + (size_t)h * B * f->hd + (size_t)d * B + p % B;
}
static float *vat(const fixture *f, int h, int p, int d)
{
    return f->v + f->blk[p / B] * blk_floats(f) + ((size_t)h * B + p % B) * f->hd + d;
}

static void make(fixture *f, int hd, int n_rep, int n_kvh, int n_pos, int32_t nq, float qscale, uint64_t seed)
{
    uint64_t s = seed;
    memset(f, 0, sizeof *f);
    f->hd = hd, f->n_rep = n_rep, f->n_kvh = n_kvh, f->n_pos = n_pos, f->nq = nq;
    int nb = (n_pos + B - 1) / B;
    f->n_blocks = nb + 3; /* spare blocks hold garbage the kernel must not read */
    f->k = malloc(f->n_blocks * blk_floats(f) * sizeof(float));
    f->v = malloc(f->n_blocks * blk_floats(f) * sizeof(float));
    for (size_t i = 0; i < f->n_blocks * blk_floats(f); i++) f->k[i] = f->v[i] = NAN;
    f->blk = malloc(sizeof(int32_t) * (size_t)f->n_blocks);
    for (int i = 0; i < f->n_blocks; i++) f->blk[i] = i;
    for (int i = f->n_blocks - 1; i > 0; i--) {
        int j = (int)(td_rand(&s) % (uint64_t)(i + 1));
        int32_t t = f->blk[i];
        f->blk[i] = f->blk[j];
        f->blk[j] = t;
    }
    for (int h = 0; h < n_kvh; h++)
        for (int p = 0; p < n_pos; p++)
            for (int d = 0; d < hd; d++) {
                *kat(f, h, p, d) = td_randf(&s);
                *vat(f, h, p, d) = td_randf(&s);
            }
    size_t qd = (size_t)n_kvh * n_rep * hd;
    f->q = malloc(sizeof(float) * qd * (size_t)nq);
    f->out = malloc(sizeof(float) * qd * (size_t)nq);
    for (size_t i = 0; i < qd * (size_t)nq; i++) f->q[i] = td_randf(&s) * qscale;
    f->last = malloc(sizeof(int32_t) * (size_t)nq);
    /* causal rows ending at the last position, plus a few arbitrary ones */
    for (int32_t i = 0; i < nq; i++)
        f->last[i] = i % 3 == 2 ? (int32_t)(td_rand(&s) % (uint64_t)n_pos) : n_pos - nq + i;
}

static void drop(fixture *f)
{
    free(f->k);
    free(f->v);
    free(f->blk);
    free(f->q);
    free(f->out);
    free(f->last);
}

static void run(const eng__kernels *kt, fixture *f, int h, int32_t row0, int32_t nq, float *out)
{
    size_t qd = (size_t)f->n_kvh * f->n_rep * f->hd;
    float *scr = malloc(sizeof(float) * ENG_ATTN_SCRATCH(f->hd));
    eng__attn_args a = {
        .hd = f->hd,
        .n_rep = f->n_rep,
        .nq = nq,
        .q = f->q + (size_t)row0 * qd + (size_t)h * f->n_rep * f->hd,
        .out = out + (size_t)row0 * qd + (size_t)h * f->n_rep * f->hd,
        .q_stride = qd,
        .last = f->last + row0,
        .k = f->k + (size_t)h * B * f->hd,
        .v = f->v + (size_t)h * B * f->hd,
        .blk = f->blk,
        .blk_stride = blk_floats(f),
        .scale = 1.0f / sqrtf((float)f->hd),
        .scratch = scr,
    };
    kt->attn(&a);
    free(scr);
}

/* The definition, in double: two-pass softmax over keys 0..last. */
static void reference(const fixture *f, int h, int32_t i, int r, double *o)
{
    const float *q = f->q + (size_t)i * f->n_kvh * f->n_rep * f->hd + ((size_t)h * f->n_rep + r) * f->hd;
    int n = f->last[i] + 1;
    double *s = malloc(sizeof(double) * (size_t)n), mx = -INFINITY, sum = 0;
    for (int p = 0; p < n; p++) {
        double d = 0;
        for (int e = 0; e < f->hd; e++) d += (double)q[e] * *kat(f, h, p, e);
        s[p] = d / sqrt((double)f->hd);
        if (s[p] > mx) mx = s[p];
    }
    for (int p = 0; p < n; p++) sum += s[p] = exp(s[p] - mx);
    for (int e = 0; e < f->hd; e++) {
        double acc = 0;
        for (int p = 0; p < n; p++) acc += s[p] / sum * *vat(f, h, p, e);
        o[e] = acc;
    }
    free(s);
}

static void check(eng__kernel_level lvl, int hd, int n_rep, int n_kvh, int n_pos, int32_t nq, float qscale)
{
    const eng__kernels *kt = eng__kernels_get(lvl);
    if (!kt) cr_skip_test("CPU lacks this kernel level");
    fixture f;
    make(&f, hd, n_rep, n_kvh, n_pos, nq, qscale, 77 + (uint64_t)hd * 31 + (uint64_t)n_pos);
    size_t qd = (size_t)n_kvh * n_rep * hd;
    float *one = malloc(sizeof(float) * qd * (size_t)nq);
    double *ref = malloc(sizeof(double) * (size_t)hd);
    for (int h = 0; h < n_kvh; h++) {
        run(kt, &f, h, 0, nq, f.out);
        for (int32_t i = 0; i < nq; i++) {
            run(kt, &f, h, i, 1, one); /* the same row alone */
            for (int r = 0; r < n_rep; r++) {
                size_t off = (size_t)i * qd + ((size_t)h * n_rep + r) * hd;
                reference(&f, h, i, r, ref);
                for (int e = 0; e < hd; e++) {
                    cr_assert(fabs(f.out[off + e] - ref[e]) <= 2e-5 + 2e-5 * fabs(ref[e]),
                              "%s hd %d rep %d pos %d: row %d head %d dim %d: %.8g vs %.8g", kt->name, hd, n_rep,
                              n_pos, i, r, e, f.out[off + e], ref[e]);
                    cr_assert(memcmp(&f.out[off + e], &one[off + e], sizeof(float)) == 0,
                              "%s: row %d alone differs from row %d in a call of %d", kt->name, i, i, nq);
                }
            }
        }
    }
    free(one);
    free(ref);
    drop(&f);
}

static void check_level(eng__kernel_level lvl)
{
    /* head sizes of the test models (8, 32, 64) and ragged ones; block
     * boundaries 1, 15, 16, 17, 33; GQA factors 1..8 (tiles of 4 queries
     * plus remainders) */
    check(lvl, 8, 2, 4, 1, 1, 1.0f);
    check(lvl, 64, 1, 2, 15, 3, 1.0f);
    check(lvl, 64, 8, 1, 16, 1, 1.0f);
    check(lvl, 64, 3, 2, 17, 5, 1.0f);
    check(lvl, 32, 4, 2, 33, 33, 1.0f);
    check(lvl, 100, 5, 1, 70, 7, 1.0f);
    check(lvl, 128, 2, 1, 200, 4, 1.0f);
    check(lvl, 13, 1, 3, 47, 9, 1.0f);
    /* sharp distributions: scores of +-100 (max subtraction must work) */
    check(lvl, 64, 4, 1, 90, 6, 60.0f);
}

Test(attn, scalar) { check_level(ENG_KL_SCALAR); }
Test(attn, avx2) { check_level(ENG_KL_AVX2); }
Test(attn, avx2vnni) { check_level(ENG_KL_AVX2VNNI); }
Test(attn, avx512) { check_level(ENG_KL_AVX512); }

/* Each SIMD level's attention and the scalar one agree closely with each
 * other on a long context. */
static void check_long(eng__kernel_level lvl)
{
    const eng__kernels *kl = eng__kernels_get(lvl), *ks = eng__kernels_get(ENG_KL_SCALAR);
    if (!kl) cr_skip_test("CPU lacks this kernel level");
    fixture f;
    make(&f, 64, 8, 1, 1000, 8, 2.0f, 5);
    size_t qd = (size_t)8 * 64;
    float *a = malloc(sizeof(float) * qd * 8), *b = malloc(sizeof(float) * qd * 8);
    run(kl, &f, 0, 0, 8, a);
    run(ks, &f, 0, 0, 8, b);
    for (size_t i = 0; i < qd * 8; i++)
        cr_assert(fabsf(a[i] - b[i]) <= 1e-5f + 1e-5f * fabsf(b[i]), "%s elem %zu: %.8g vs %.8g", kl->name, i,
                  a[i], b[i]);
    free(a);
    free(b);
    drop(&f);
}

Test(attn, avx2_vs_scalar_long) { check_long(ENG_KL_AVX2); }
Test(attn, avx2vnni_vs_scalar_long) { check_long(ENG_KL_AVX2VNNI); }
Test(attn, avx512_vs_scalar_long) { check_long(ENG_KL_AVX512); }
