/*
 * test_attn.c - the attention kernels (attn.c, attn_avx2.c, attn_avx512.c) of
 * every kernel level the CPU has, on random caches of every pair of K and V
 * types (F32, F16, Q8_0, written by kvcache.c): against a two-pass
 * double-precision softmax written here from the definition (on the values
 * the cache holds, read back), SIMD against the scalar reference, and each
 * query's result independent of the other queries in the call (bit for
 * bit), which the engine's batching guarantees rest on.
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
    float *k, *v;  /* n_blocks blocks of B * n_kvh * hd: the values the cache holds */
    int tk, tv;    /* the cache's types */
    uint8_t *kc, *vc; /* the cache: n_blocks blocks of n_kvh heads of khead (vhead) bytes */
    size_t khead, vhead;
    int32_t *blk;  /* the sequence's blocks, shuffled */
    float *q, *out; /* nq rows of n_kvh * n_rep * hd */
    int32_t *last;
    int32_t *first; /* sliding window: the first key each row sees, or NULL */
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

/* Which key each query row sees last (n_pos keys in the cache, nq rows). */
typedef enum {
    CAUSAL, /* a prompt chunk: rows end at the last nq positions */
    MIXED,  /* causal, but every third row at an arbitrary position */
    SPREAD, /* every row anywhere (rows of sequences at different positions) */
} pattern;

/* The typed cache from the float values, then the floats replaced by what
 * the cache holds (the reference's input); spare blocks all 0xff bytes
 * (NaN for F32 and F16, NaN scales for Q8_0). */
static void make_cache(fixture *f)
{
    f->khead = eng__kv_head_bytes(f->tk, f->hd);
    f->vhead = eng__kv_head_bytes(f->tv, f->hd);
    const size_t kb = f->khead * (size_t)f->n_kvh, vb = f->vhead * (size_t)f->n_kvh;
    f->kc = malloc(kb * (size_t)f->n_blocks);
    f->vc = malloc(vb * (size_t)f->n_blocks);
    memset(f->kc, 0xff, kb * (size_t)f->n_blocks);
    memset(f->vc, 0xff, vb * (size_t)f->n_blocks);
    float *row = malloc(sizeof(float) * (size_t)f->hd);
    for (int h = 0; h < f->n_kvh; h++)
        for (int p = 0; p < f->n_pos; p++) {
            uint8_t *kh = f->kc + f->blk[p / B] * kb + (size_t)h * f->khead;
            uint8_t *vh = f->vc + f->blk[p / B] * vb + (size_t)h * f->vhead;
            for (int d = 0; d < f->hd; d++) row[d] = *kat(f, h, p, d);
            eng__kv_put_k(f->tk, kh, f->hd, p % B, row);
            eng__kv_read_k(f->tk, kh, f->hd, p % B, row);
            for (int d = 0; d < f->hd; d++) *kat(f, h, p, d) = row[d];
            for (int d = 0; d < f->hd; d++) row[d] = *vat(f, h, p, d);
            eng__kv_put_v(f->tv, vh, f->hd, p % B, row);
            eng__kv_read_v(f->tv, vh, f->hd, p % B, row);
            for (int d = 0; d < f->hd; d++) *vat(f, h, p, d) = row[d];
        }
    free(row);
}

static void make(fixture *f, int hd, int n_rep, int n_kvh, int n_pos, int32_t nq, float qscale, pattern pat,
                 int window, int tk, int tv, uint64_t seed)
{
    uint64_t s = seed;
    memset(f, 0, sizeof *f);
    f->hd = hd, f->n_rep = n_rep, f->n_kvh = n_kvh, f->n_pos = n_pos, f->nq = nq;
    f->tk = tk, f->tv = tv;
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
    for (int32_t i = 0; i < nq; i++) {
        const int32_t any = (int32_t)(td_rand(&s) % (uint64_t)n_pos);
        f->last[i] = pat == SPREAD || (pat == MIXED && i % 3 == 2) ? any : n_pos - nq + i;
    }
    if (window > 0) {
        f->first = malloc(sizeof(int32_t) * (size_t)nq);
        for (int32_t i = 0; i < nq; i++) f->first[i] = f->last[i] >= window ? f->last[i] - window + 1 : 0;
    }
    make_cache(f);
}

static void drop(fixture *f)
{
    free(f->k);
    free(f->v);
    free(f->kc);
    free(f->vc);
    free(f->blk);
    free(f->q);
    free(f->out);
    free(f->last);
    free(f->first);
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
        .first = f->first ? f->first + row0 : NULL,
        .k = f->kc + (size_t)h * f->khead,
        .v = f->vc + (size_t)h * f->vhead,
        .type_k = f->tk,
        .type_v = f->tv,
        .blk = f->blk,
        .k_stride = f->khead * (size_t)f->n_kvh,
        .v_stride = f->vhead * (size_t)f->n_kvh,
        .scale = 1.0f / sqrtf((float)f->hd),
        .scratch = scr,
    };
    kt->attn(&a);
    free(scr);
}

/* The definition, in double: two-pass softmax over keys 0..last. Also the
 * sizes the kernels' rounding errors scale with: per dim sc[e] =
 * sum_p w_p |v_pe| (weights w normalized; at most max |v| = 1), and the
 * largest score magnitude before cancellation, max_p scale sum_e |q_e k_pe|
 * (returned). */
static double reference(const fixture *f, int h, int32_t i, int r, double *o, double *sc)
{
    const float *q = f->q + (size_t)i * f->n_kvh * f->n_rep * f->hd + ((size_t)h * f->n_rep + r) * f->hd;
    int n = f->last[i] + 1, p0 = f->first ? f->first[i] : 0;
    double *s = malloc(sizeof(double) * (size_t)n), mx = -INFINITY, sum = 0, big = 0;
    for (int p = p0; p < n; p++) {
        double d = 0, a = 0;
        for (int e = 0; e < f->hd; e++) {
            d += (double)q[e] * *kat(f, h, p, e);
            a += fabs((double)q[e] * *kat(f, h, p, e));
        }
        s[p] = d / sqrt((double)f->hd);
        if (s[p] > mx) mx = s[p];
        if (a / sqrt((double)f->hd) > big) big = a / sqrt((double)f->hd);
    }
    for (int p = p0; p < n; p++) sum += s[p] = exp(s[p] - mx);
    for (int e = 0; e < f->hd; e++) {
        double acc = 0, mag = 0;
        for (int p = p0; p < n; p++) {
            acc += s[p] / sum * *vat(f, h, p, e);
            mag += s[p] / sum * fabs(*vat(f, h, p, e));
        }
        o[e] = acc;
        sc[e] = mag;
    }
    free(s);
    return big;
}

/*
 * Tolerance against the double reference, relative to sc (above). A float
 * kernel's error has two parts:
 *  - the weights': a score s off by ds moves its weight by a factor e^ds and
 *    the output by up to about 2 sc ds. The scores' dot products (hd terms
 *    summed in float) are off by a random walk of about sqrt(hd) / 2 units
 *    of 2^-24 times the score's magnitude before cancellation (big, the
 *    reference's return); forming s - max (in base 2 in the SIMD kernels)
 *    adds about 2^-24 |s|. Allowed: sc 2^-24 big sqrt(hd). This is what the
 *    sharp cases (scores of +-100) need, the scalar reference as much as the
 *    SIMD kernels;
 *  - the exponential's (expf: 1 ulp; the SIMD polynomials: under 1.5 units
 *    of 2^-24, see attn_avx2.c) and the sums' over up to 2,100 keys (random
 *    signs: growing like sqrt(n) 2^-24; n 2^-24 = 1.3e-4 only in the
 *    worst case). Allowed: sc TOL.
 * Measured on these shapes, the largest error of each level is at most
 * about a quarter of that (the test logs it). Any real defect (a dropped
 * key, a wrong scale, a missed rescale) gives errors of order 1e-2 or more.
 */
#define TOL 2e-6
#define EPS (1.0 / 16777216.0)

typedef struct {
    int hd, n_rep, n_kvh, n_pos, nq;
    float qscale;
    pattern pat;
} shape;

static double worst[8]; /* largest error / (sc tol) seen per level */

/* Level lvl on shape c (window > 0: a sliding window) with K of type tk, V
 * of type tv: every (row, head) against the double reference and against the
 * scalar kernel; each row computed alone gives the same bits as in the call
 * of all nq rows. */
static void check(eng__kernel_level lvl, shape c, int window, int tk, int tv)
{
    const eng__kernels *kt = eng__kernels_get(lvl), *ks = eng__kernels_get(ENG_KL_SCALAR);
    if (!kt) cr_skip_test("CPU lacks this kernel level");
    fixture f;
    make(&f, c.hd, c.n_rep, c.n_kvh, c.n_pos, c.nq, c.qscale, c.pat, window, tk, tv,
         77 + (uint64_t)c.hd * 31 + (uint64_t)c.n_pos);
    const int hd = c.hd;
    const size_t qd = (size_t)c.n_kvh * c.n_rep * hd;
    float *one = malloc(sizeof(float) * qd * (size_t)c.nq), *sca = malloc(sizeof(float) * qd * (size_t)c.nq);
    double *ref = malloc(sizeof(double) * (size_t)hd), *sc = malloc(sizeof(double) * (size_t)hd);
    for (int h = 0; h < c.n_kvh; h++) {
        run(kt, &f, h, 0, c.nq, f.out);
        run(ks, &f, h, 0, c.nq, sca);
        for (int32_t i = 0; i < c.nq; i++) {
            run(kt, &f, h, i, 1, one); /* the same row alone */
            for (int r = 0; r < c.n_rep; r++) {
                size_t off = (size_t)i * qd + ((size_t)h * c.n_rep + r) * hd;
                const double big = reference(&f, h, i, r, ref, sc);
                const double tol = TOL + EPS * big * sqrt((double)hd);
                for (int e = 0; e < hd; e++) {
                    const double diff = fabs(f.out[off + e] - ref[e]);
                    const double err = diff == 0 ? 0 : diff / sc[e]; /* sc 0: a lone Q8_0 value of 0 */
                    if (err / tol > worst[lvl]) worst[lvl] = err / tol;
                    cr_assert(err <= tol,
                              "%s K %s V %s hd %d rep %d pos %d nq %d: row %d (last %d) head %d dim %d: %.8g vs %.8g",
                              kt->name, eng_type_name(tk), eng_type_name(tv), hd, c.n_rep, c.n_pos, c.nq, i,
                              f.last[i], r, e, f.out[off + e], ref[e]);
                    cr_assert(fabs(f.out[off + e] - sca[off + e]) <= 2 * tol * sc[e],
                              "%s vs scalar, K %s V %s hd %d rep %d pos %d: row %d head %d dim %d: %.8g vs %.8g",
                              kt->name, eng_type_name(tk), eng_type_name(tv), hd, c.n_rep, c.n_pos, i, r, e,
                              f.out[off + e], sca[off + e]);
                    cr_assert(memcmp(&f.out[off + e], &one[off + e], sizeof(float)) == 0,
                              "%s: row %d alone differs from row %d in a call of %d", kt->name, i, i, c.nq);
                }
            }
        }
    }
    free(one);
    free(sca);
    free(ref);
    free(sc);
    drop(&f);
}

/*
 * Head sizes of the supported models (32, 48, 64, 80, 96, 128, 256) and of
 * the test models (8), ragged ones (13, 100: SIMD tails); GQA factors 1..8
 * (tiles of 6 or 8 queries plus every remainder); block boundaries 1, 15,
 * 16, 17, 33, odd and even block counts (steps of two blocks) and long
 * contexts of 2,100 keys; 1..70 rows (decode, prompt chunks), causal or at
 * scattered positions.
 */
static const shape shapes[] = {
    {8, 2, 4, 1, 1, 1.0f, CAUSAL},     {64, 1, 2, 15, 3, 1.0f, MIXED},    {64, 8, 1, 16, 1, 1.0f, CAUSAL},
    {64, 3, 2, 17, 5, 1.0f, MIXED},    {32, 4, 2, 33, 33, 1.0f, MIXED},   {100, 5, 1, 70, 7, 1.0f, MIXED},
    {128, 2, 1, 200, 4, 1.0f, MIXED},  {13, 1, 3, 47, 9, 1.0f, MIXED},    {48, 7, 1, 49, 13, 1.0f, CAUSAL},
    {80, 6, 1, 130, 11, 1.0f, SPREAD}, {96, 1, 2, 97, 70, 1.0f, CAUSAL},  {256, 4, 1, 300, 9, 1.0f, MIXED},
    {256, 1, 1, 40, 37, 1.0f, CAUSAL}, {32, 5, 1, 1000, 20, 1.0f, SPREAD}, {64, 1, 1, 2100, 70, 1.0f, CAUSAL},
    {128, 8, 1, 2100, 1, 1.0f, CAUSAL}, {80, 2, 1, 2100, 23, 1.0f, SPREAD}, {48, 3, 1, 2100, 2, 1.0f, MIXED},
    /* sharp distributions: scores of +-100 (max subtraction must work) */
    {64, 4, 1, 90, 6, 60.0f, MIXED},   {64, 1, 1, 600, 31, 60.0f, SPREAD},
};

/* Sliding windows (gemma3: first = max(0, last - window + 1)): starts inside
 * a block, on a block boundary, in either block of a two-block step, rows
 * of one tile starting blocks apart. */
static const struct {
    shape s;
    int window;
} windowed[] = {
    {{32, 2, 2, 140, 40, 1.0f, CAUSAL}, 32}, {{64, 4, 1, 300, 9, 1.0f, SPREAD}, 17},
    {{128, 1, 1, 2100, 12, 1.0f, MIXED}, 1024}, {{32, 8, 1, 90, 70, 1.0f, CAUSAL}, 16},
    {{48, 3, 1, 64, 5, 60.0f, MIXED}, 5}, {{256, 1, 2, 200, 33, 1.0f, CAUSAL}, 48},
};

static const int kv_types[] = {ENG_TYPE_F32, ENG_TYPE_F16, ENG_TYPE_Q8_0};

/* Every shape with K and V of types tk and tv. */
static void check_level(eng__kernel_level lvl, int tk, int tv)
{
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) check(lvl, shapes[i], 0, tk, tv);
    for (size_t i = 0; i < sizeof windowed / sizeof windowed[0]; i++)
        check(lvl, windowed[i].s, windowed[i].window, tk, tv);
    cr_log_info("%s K %s V %s: largest error %.3g of the tolerance", eng__kernels_get(lvl)->name,
                eng_type_name(tk), eng_type_name(tv), worst[lvl]);
}

/* One test per level and K type, each V type inside it. */
#define LEVEL(name, lvl)                                                          \
    Test(attn, name##_k_f32) { for (int v = 0; v < 3; v++) check_level(lvl, ENG_TYPE_F32, kv_types[v]); }  \
    Test(attn, name##_k_f16) { for (int v = 0; v < 3; v++) check_level(lvl, ENG_TYPE_F16, kv_types[v]); }  \
    Test(attn, name##_k_q8_0) { for (int v = 0; v < 3; v++) check_level(lvl, ENG_TYPE_Q8_0, kv_types[v]); }
LEVEL(scalar, ENG_KL_SCALAR)
LEVEL(avx2, ENG_KL_AVX2)
LEVEL(avx2vnni, ENG_KL_AVX2VNNI)
LEVEL(avx512, ENG_KL_AVX512)

/* The formats themselves: F16 rounds to nearest, Q8_0 keeps every value
 * within half a quantization step d = amax / 127 of its group plus the
 * scale's own fp16 rounding (127 d 2^-11 = 0.062 d), and a
 * head size that is not a multiple of 32 ends in a short group with its own
 * scale. */
Test(attn, kv_formats)
{
    const int hd = 40;
    float x[40], y[40];
    for (int d = 0; d < hd; d++) x[d] = d < 32 ? (float)(d - 16) * 0.37f : (float)(d - 35) * 1000.0f;
    for (int t = 0; t < 3; t++) {
        const int ty = kv_types[t];
        uint8_t *blk = calloc(1, eng__kv_head_bytes(ty, hd));
        for (int slot = 0; slot < B; slot += 5) {
            eng__kv_put_k(ty, blk, hd, slot, x);
            eng__kv_read_k(ty, blk, hd, slot, y);
            for (int d = 0; d < hd; d++) {
                const float amax = d < 32 ? 16 * 0.37f : 5000.0f;
                const float tol = ty == ENG_TYPE_F32 ? 0.0f : ty == ENG_TYPE_F16 ? fabsf(x[d]) / 2048 : amax / 127 * 0.57f;
                cr_assert(fabsf(y[d] - x[d]) <= tol, "K %s slot %d dim %d: %g vs %g", eng_type_name(ty), slot, d, y[d], x[d]);
            }
            eng__kv_put_v(ty, blk, hd, slot, x);
            eng__kv_read_v(ty, blk, hd, slot, y);
            for (int d = 0; d < hd; d++) {
                const float amax = d < 32 ? 16 * 0.37f : 5000.0f;
                const float tol = ty == ENG_TYPE_F32 ? 0.0f : ty == ENG_TYPE_F16 ? fabsf(x[d]) / 2048 : amax / 127 * 0.57f;
                cr_assert(fabsf(y[d] - x[d]) <= tol, "V %s slot %d dim %d: %g vs %g", eng_type_name(ty), slot, d, y[d], x[d]);
            }
        }
        free(blk);
    }
    cr_assert_eq(eng__kv_head_bytes(ENG_TYPE_Q8_0, 64), (size_t)B * 68); /* 34 bytes per 32 values */
    cr_assert_eq(eng__kv_head_bytes(ENG_TYPE_Q8_0, 40), (size_t)B * (40 + 4));
}
