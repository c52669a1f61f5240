/*
 * attn_avx512.c - attention over the block KV cache, AVX-512 (see attn.c for
 * the layout and the scalar reference it is tested against; attn_avx2.c is
 * the same design on 8-lane vectors).
 *
 * Queries (row, head) are taken in tiles of up to TILE = 8 consecutive ones
 * (the n_rep heads of a row, then the next rows), which share every loaded
 * key and value vector, and keys in steps of two cache blocks (32 keys): per
 * step the scores of all the tile's queries are computed in 16 accumulators
 * (one vector per query and block; each broadcast query element feeds two
 * FMAs), and the values are accumulated 32 head dims at a time for all of
 * them (16 accumulators again), so each K or V load feeds 8 FMAs.
 *
 * Per query the recipe is fixed whatever the tile holds, so a query's result
 * never depends on the other queries of the call:
 *  - scores: one FMA chain per block of 16 keys, over head dims in order;
 *  - softmax in base 2: t = score * scale * log2(e), per step of 32 keys the
 *    running maximum m, p = 2^(t - m) (exp2_16 below), the running sum kept
 *    as 16 lane partials, and the accumulator rescaled by 2^(m_old - m) only
 *    when the maximum grows (otherwise the factor is exactly 1);
 *  - values: acc = acc * alpha, then one FMA per key in order, per dim.
 * Keys past a query's last position (or before its first, in a sliding
 * window) but inside the tile's range get p = 0 exactly (0 * a finite value adds nothing, bar turning a sum of exactly -0
 * into +0), and a query whose keys ended in an earlier step takes p = 0,
 * alpha = 1 (no change).
 *
 * K and V are read in their cache type (internal.h), converted in registers
 * as they are loaded (F16 by vcvtph2ps, Q8_0 quants by vpmovsxbd and
 * vcvtdq2ps), as in attn_avx2.c: a Q8_0 key's score sums scale * (its
 * group's FMA chain on the quants) over its groups of 32 dims (one block at
 * a time, for the registers), a Q8_0 value's scale is folded into the
 * weight of its key.
 */
#include "internal.h"

#include <immintrin.h>
#include <math.h>

#define AI static inline __attribute__((always_inline))
#define UNROLL _Pragma("GCC unroll 8")
#define TILE 8
#define B ENG_KV_BLOCK

/* 2^x for x <= 0, inputs below -64 giving 2^-64: the polynomial and the
 * error (8.2e-8 relative) of exp2_8 in attn_avx2.c. */
AI __m512 exp2_16(__m512 x)
{
    x = _mm512_max_ps(x, _mm512_set1_ps(-64.0f));
    const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(x, n);
    static const float c[] = {ENG_EXP2_POLY};
    __m512 p = _mm512_set1_ps(c[0]);
    UNROLL for (int i = 1; i < 7; i++) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c[i]));
    const __m512i e = _mm512_slli_epi32(_mm512_cvtps_epi32(n), 23);
    return _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(p), e));
}

/* The 16 keys of dim d of a K block of type TK, as floats. */
AI __m512 kload16(int TK, const void *K, int d)
{
    const size_t i = (size_t)d * B;
    if (TK == ENG_TYPE_F32) return _mm512_loadu_ps((const float *)K + i);
    if (TK == ENG_TYPE_F16) return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)K + i)));
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)((const int8_t *)K + i))));
}

/* Scores of NT queries against the 16 keys of block K0 (s[t][0]) and, when
 * TWO, of block K1 too (s[t][1]); keys transposed, F32 or F16. One FMA chain
 * per query and block, over head dims in order. */
AI void scores(int NT, int TWO, int TK, int hd, const float *const *q, const void *K0, const void *K1,
               __m512 (*s)[2])
{
    __m512 c[TILE][2];
    UNROLL for (int t = 0; t < NT; t++) c[t][0] = c[t][1] = _mm512_setzero_ps();
    for (int d = 0; d < hd; d++) {
        const __m512 k0 = kload16(TK, K0, d);
        const __m512 k1 = TWO ? kload16(TK, K1, d) : k0;
        UNROLL for (int t = 0; t < NT; t++) {
            const __m512 x = _mm512_set1_ps(q[t][d]);
            c[t][0] = _mm512_fmadd_ps(x, k0, c[t][0]);
            if (TWO) c[t][1] = _mm512_fmadd_ps(x, k1, c[t][1]);
        }
    }
    UNROLL for (int t = 0; t < NT; t++) s[t][0] = c[t][0], s[t][1] = c[t][1];
}

/* Scores of NT queries against the 16 Q8_0 keys of block K into s[t][h]:
 * per group of dims an FMA chain on the quants, times the keys' scales,
 * summed over groups. */
AI void scores_q8(int NT, int h, int hd, const float *const *q, const void *K, __m512 (*s)[2])
{
    const uint16_t *sc = (const uint16_t *)((const int8_t *)K + (size_t)B * hd);
    __m512 tot[TILE];
    UNROLL for (int t = 0; t < NT; t++) tot[t] = _mm512_setzero_ps();
    for (int g = 0; g * ENG_KV_GROUP < hd; g++) {
        const int d1 = hd < (g + 1) * ENG_KV_GROUP ? hd : (g + 1) * ENG_KV_GROUP;
        __m512 c[TILE];
        UNROLL for (int t = 0; t < NT; t++) c[t] = _mm512_setzero_ps();
        for (int d = g * ENG_KV_GROUP; d < d1; d++) {
            const __m512 k = kload16(ENG_TYPE_Q8_0, K, d);
            UNROLL for (int t = 0; t < NT; t++) c[t] = _mm512_fmadd_ps(_mm512_set1_ps(q[t][d]), k, c[t]);
        }
        const __m512 scale = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(sc + (size_t)g * B)));
        UNROLL for (int t = 0; t < NT; t++) tot[t] = _mm512_fmadd_ps(scale, c[t], tot[t]);
    }
    UNROLL for (int t = 0; t < NT; t++) s[t][h] = tot[t];
}

AI __mmask16 first(int32_t n) /* lanes 0..n-1, n clamped to 0..16 */
{
    return n >= B ? (__mmask16)0xffff : n <= 0 ? 0 : (__mmask16)((1u << n) - 1);
}

/* One step of the online softmax for one query over a pair of blocks, keys
 * lo..cnt-1 (0 <= lo < cnt <= 32) of its 32: updates its maximum *m (in
 * base-2 units) and lane sums *l, writes its 32 weights to p (0 outside) and
 * the accumulator's factor. */
AI void softmax_step(const __m512 *s, int lo, int cnt, float c, float *m, __m512 *l, float *p, float *alpha)
{
    const __mmask16 v0 = first(cnt) & (__mmask16)~first(lo), v1 = first(cnt - B) & (__mmask16)~first(lo - B);
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    const __m512 t0 = _mm512_mask_mul_ps(ninf, v0, s[0], _mm512_set1_ps(c));
    const __m512 t1 = _mm512_mask_mul_ps(ninf, v1, s[1], _mm512_set1_ps(c));
    const float mb = _mm512_reduce_max_ps(_mm512_max_ps(t0, t1));
    float al = 1.0f;
    if (mb > *m) {
        al = *m == -INFINITY ? 0.0f : _mm512_cvtss_f32(exp2_16(_mm512_set1_ps(*m - mb)));
        *m = mb;
    }
    const __m512 mm = _mm512_set1_ps(*m);
    const __m512 p0 = _mm512_maskz_mov_ps(v0, exp2_16(_mm512_sub_ps(t0, mm)));
    const __m512 p1 = _mm512_maskz_mov_ps(v1, exp2_16(_mm512_sub_ps(t1, mm)));
    *l = _mm512_fmadd_ps(*l, _mm512_set1_ps(al), _mm512_add_ps(p0, p1));
    _mm512_storeu_ps(p, p0);
    _mm512_storeu_ps(p + B, p1);
    *alpha = al;
}

/* The 16 values (lanes of mask m, the others 0) of a V block of type TV
 * from element i on, as floats. */
AI __m512 vload16(int TV, const void *V, size_t i, __mmask16 m)
{
    if (TV == ENG_TYPE_F32) return _mm512_maskz_loadu_ps(m, (const float *)V + i);
    if (TV == ENG_TYPE_F16) return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t *)V + i));
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, (const int8_t *)V + i)));
}

/* x[t] += sum_j p[t][j] * V[j] for dims d..d+16W-1, keys j < cnt. */
AI void pv_keys(int NT, int TV, int W, __mmask16 m0, __mmask16 mk, int hd, int d, __m512 (*x)[2],
                const float (*p)[2 * B], int j0, int cnt, const void *V)
{
    for (int j = 0; j < cnt; j++) {
        const size_t i = (size_t)j * hd + d;
        const __m512 v0 = vload16(TV, V, i, m0);
        const __m512 v1 = W == 2 ? vload16(TV, V, i + 16, mk) : v0;
        UNROLL for (int t = 0; t < NT; t++) {
            const __m512 pj = _mm512_set1_ps(p[t][j0 + j]);
            x[t][0] = _mm512_fmadd_ps(pj, v0, x[t][0]);
            if (W == 2) x[t][1] = _mm512_fmadd_ps(pj, v1, x[t][1]);
        }
    }
}

/* acc = acc * alpha + sum_j p[j] * V[j] for dims d..d+16W-1 (W = 1 or 2
 * vectors; the last one masked by mk), over the cnt0 keys of block V0 then
 * the cnt1 of V1. */
AI void pv_chunk(int NT, int TV, int W, __mmask16 mk, int hd, int d, float *const *acc, const float (*p)[2 * B],
                 const float *alpha, int cnt0, const void *V0, int cnt1, const void *V1)
{
    __m512 x[TILE][2];
    const __mmask16 m0 = W == 2 ? (__mmask16)0xffff : mk;
    UNROLL for (int t = 0; t < NT; t++) {
        const __m512 a = _mm512_set1_ps(alpha[t]);
        x[t][0] = _mm512_mul_ps(_mm512_maskz_loadu_ps(m0, acc[t] + d), a);
        if (W == 2) x[t][1] = _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, acc[t] + d + 16), a);
    }
    pv_keys(NT, TV, W, m0, mk, hd, d, x, p, 0, cnt0, V0);
    pv_keys(NT, TV, W, m0, mk, hd, d, x, p, B, cnt1, V1);
    UNROLL for (int t = 0; t < NT; t++) {
        _mm512_mask_storeu_ps(acc[t] + d, m0, x[t][0]);
        if (W == 2) _mm512_mask_storeu_ps(acc[t] + d + 16, mk, x[t][1]);
    }
}

/* pv_chunk over dims d0..d1-1 (d0 a multiple of 32). */
AI void pv_range(int NT, int TV, int hd, int d0, int d1, float *const *acc, const float (*p)[2 * B],
                 const float *alpha, int cnt0, const void *V0, int cnt1, const void *V1)
{
    int d = d0;
    for (; d + 32 <= d1; d += 32) pv_chunk(NT, TV, 2, 0xffff, hd, d, acc, p, alpha, cnt0, V0, cnt1, V1);
    for (; d < d1; d += 16) pv_chunk(NT, TV, 1, first(d1 - d), hd, d, acc, p, alpha, cnt0, V0, cnt1, V1);
}

/* Weights times the Q8_0 scales of group g of keys 0..cnt-1 of block V, into
 * pd[t][j0 + j]. */
AI void scale_weights(int NT, int hd, int g, const float (*p)[2 * B], float (*pd)[2 * B], int j0, int cnt,
                      const void *V)
{
    const int ng = ENG_KV_GROUPS(hd);
    const uint16_t *sc = (const uint16_t *)((const int8_t *)V + (size_t)B * hd);
    for (int j = 0; j < cnt; j++) {
        const float dj = _cvtsh_ss(sc[(size_t)j * ng + g]);
        UNROLL for (int t = 0; t < NT; t++) pd[t][j0 + j] = p[t][j0 + j] * dj;
    }
}

AI void pv(int NT, int TV, int hd, float *const *acc, const float (*p)[2 * B], const float *alpha, int cnt,
           const void *V0, const void *V1)
{
    const int cnt0 = cnt < B ? cnt : B, cnt1 = cnt - cnt0;
    if (TV != ENG_TYPE_Q8_0) {
        pv_range(NT, TV, hd, 0, hd, acc, p, alpha, cnt0, V0, cnt1, V1);
        return;
    }
    float pd[TILE][2 * B]; /* for Q8_0 values: one group of dims at a time */
    for (int g = 0; g * ENG_KV_GROUP < hd; g++) {
        scale_weights(NT, hd, g, p, pd, 0, cnt0, V0);
        scale_weights(NT, hd, g, p, pd, B, cnt1, V1);
        const int d1 = hd < (g + 1) * ENG_KV_GROUP ? hd : (g + 1) * ENG_KV_GROUP;
        pv_range(NT, TV, hd, g * ENG_KV_GROUP, d1, acc, (const float(*)[2 * B])pd, alpha, cnt0, V0, cnt1, V1);
    }
}

/* Ask for block b's keys and values (into L2) while the one before is used:
 * the blocks of a sequence are scattered, which the hardware prefetchers do
 * not follow. Only for blocks no earlier tile of the call read (the others
 * are in cache: prefetching them again costs a prefill call ~10 %). */
AI void prefetch_block(const eng__attn_args *a, int32_t b)
{
    const char *k = (const char *)a->k + (size_t)a->blk[b] * a->k_stride;
    const char *v = (const char *)a->v + (size_t)a->blk[b] * a->v_stride;
    const size_t kbytes = eng__kv_head_bytes(a->type_k, a->hd), vbytes = eng__kv_head_bytes(a->type_v, a->hd);
    for (size_t o = 0; o < kbytes; o += 64) _mm_prefetch(k + o, _MM_HINT_T1);
    for (size_t o = 0; o < vbytes; o += 64) _mm_prefetch(v + o, _MM_HINT_T1);
}

/* The hot loops of a step of two blocks, each compiled once per (cache
 * type, tile size): the scores of NT queries (per K type) and their value
 * update (per V type). 48 instances rather than one whole tile per (K type,
 * V type, size): the same code at a call per 32 keys, and a tenth of the
 * compile time (the sanitizer builds took minutes on this file). */
typedef void scores_fn(int hd, const float *const *q, const void *K0, const void *K1, int two, __m512 (*s)[2]);
typedef void pv_fn(int hd, float *const *acc, const float (*p)[2 * B], const float *alpha, int cnt, const void *V0,
                   const void *V1);

AI void step_scores(int NT, int TK, int hd, const float *const *q, const void *K0, const void *K1, int two,
                    __m512 (*s)[2])
{
    if (TK == ENG_TYPE_Q8_0) {
        scores_q8(NT, 0, hd, q, K0, s);
        if (two) scores_q8(NT, 1, hd, q, K1, s);
        else
            UNROLL for (int t = 0; t < NT; t++) s[t][1] = _mm512_setzero_ps();
    } else if (two) {
        scores(NT, 1, TK, hd, q, K0, K1, s);
    } else {
        scores(NT, 0, TK, hd, q, K0, K1, s);
    }
}

#define STEP_FNS(T, NT) \
    static __attribute__((noinline)) void scores_##T##_##NT(int hd, const float *const *q, const void *K0, \
                                                             const void *K1, int two, __m512 (*s)[2]) \
    { \
        step_scores(NT, ENG_TYPE_##T, hd, q, K0, K1, two, s); \
    } \
    static __attribute__((noinline)) void pv_##T##_##NT(int hd, float *const *acc, const float (*p)[2 * B], \
                                                         const float *alpha, int cnt, const void *V0, const void *V1) \
    { \
        pv(NT, ENG_TYPE_##T, hd, acc, p, alpha, cnt, V0, V1); \
    }
#define EACH_NT(X, T) X(T, 1) X(T, 2) X(T, 3) X(T, 4) X(T, 5) X(T, 6) X(T, 7) X(T, 8)
#define NT_TABLE(f, T) {f##_##T##_1, f##_##T##_2, f##_##T##_3, f##_##T##_4, f##_##T##_5, f##_##T##_6, f##_##T##_7, f##_##T##_8}
EACH_NT(STEP_FNS, F32)
EACH_NT(STEP_FNS, F16)
EACH_NT(STEP_FNS, Q8_0)
static scores_fn *const SCORES[3][TILE] = {NT_TABLE(scores, F32), NT_TABLE(scores, F16), NT_TABLE(scores, Q8_0)};
static pv_fn *const PV[3][TILE] = {NT_TABLE(pv, F32), NT_TABLE(pv, F16), NT_TABLE(pv, Q8_0)};

/* The queries q0..q0+NT-1; seen: keys an earlier tile of the call read (in
 * cache now, so not prefetched again). Returns the keys this tile read. */
static int32_t tile(int NT, scores_fn *score, pv_fn *pv_step, const eng__attn_args *a, int32_t q0, int32_t seen)
{
    const int hd = a->hd;
    const float c = a->scale * 1.44269504088896341f; /* scores in base-2 units */
    const float *q[TILE];
    float *acc[TILE], m[TILE], p[TILE][2 * B], alpha[TILE];
    __m512 l[TILE];
    int32_t nk[TILE], nk_max = 0, k0[TILE], k0_min = INT32_MAX;
    for (int t = 0; t < NT; t++) {
        const int32_t i = (q0 + t) / a->n_rep, r = (q0 + t) % a->n_rep;
        q[t] = a->q + (size_t)i * a->q_stride + (size_t)r * hd;
        acc[t] = a->scratch + (size_t)t * hd;
        for (int d = 0; d < hd; d++) acc[t][d] = 0.0f;
        m[t] = -INFINITY;
        l[t] = _mm512_setzero_ps();
        nk[t] = a->last[i] + 1;
        if (nk[t] > nk_max) nk_max = nk[t];
        k0[t] = a->first ? a->first[i] : 0; /* sliding window: its first key */
        if (k0[t] < k0_min) k0_min = k0[t];
    }
    /* steps of two blocks, from an even block whatever the tile holds (a
     * query's steps, hence its arithmetic, never depend on its neighbours) */
    for (int32_t b = (k0_min / B) & ~1; b * B < nk_max; b += 2) {
        const int two = (b + 1) * B < nk_max;
        const void *K0 = (const char *)a->k + (size_t)a->blk[b] * a->k_stride, *K1 = K0;
        const void *V0 = (const char *)a->v + (size_t)a->blk[b] * a->v_stride, *V1 = V0;
        if (two) {
            K1 = (const char *)a->k + (size_t)a->blk[b + 1] * a->k_stride;
            V1 = (const char *)a->v + (size_t)a->blk[b + 1] * a->v_stride;
        }
        for (int32_t n = b + 2; n < b + 4 && n * B < nk_max; n++)
            if (n * B >= seen) prefetch_block(a, n);
        __m512 s[TILE][2];
        score(hd, q, K0, K1, two, s);
        int cnt_max = 0;
        for (int t = 0; t < NT; t++) {
            const int32_t cnt = nk[t] - b * B, lo = k0[t] - b * B;
            if (cnt <= 0 || lo >= 2 * B) { /* this query's keys ended in an earlier step, or start later */
                _mm512_storeu_ps(p[t], _mm512_setzero_ps());
                _mm512_storeu_ps(p[t] + B, _mm512_setzero_ps());
                alpha[t] = 1.0f;
                continue;
            }
            const int cb = cnt < 2 * B ? (int)cnt : 2 * B;
            softmax_step(s[t], lo > 0 ? (int)lo : 0, cb, c, &m[t], &l[t], p[t], &alpha[t]);
            if (cb > cnt_max) cnt_max = cb;
        }
        pv_step(hd, acc, (const float(*)[2 * B])p, alpha, cnt_max, V0, V1);
    }
    for (int t = 0; t < NT; t++) {
        const int32_t i = (q0 + t) / a->n_rep, r = (q0 + t) % a->n_rep;
        float *o = a->out + (size_t)i * a->q_stride + (size_t)r * hd;
        const float inv = 1.0f / _mm512_reduce_add_ps(l[t]);
        for (int d = 0; d < hd; d++) o[d] = acc[t][d] * inv;
    }
    return nk_max;
}

/* Every query of the call, in tiles. */
void eng__attn_avx512(const eng__attn_args *a)
{
    const int kt = eng__kv_index(a->type_k), vt = eng__kv_index(a->type_v);
    const int32_t n = a->nq * a->n_rep;
    int32_t seen = 0;
    for (int32_t q0 = 0; q0 < n; q0 += TILE) {
        const int nt = n - q0 < TILE ? (int)(n - q0) : TILE;
        const int32_t r = tile(nt, SCORES[kt][nt - 1], PV[vt][nt - 1], a, q0, seen);
        if (r > seen) seen = r;
    }
}
