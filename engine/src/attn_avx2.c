/*
 * attn_avx2.c - attention over the block KV cache, AVX2 + FMA (see attn.c for
 * the layout and the scalar reference it is tested against).
 *
 * Queries (row, head) are taken in tiles of up to TILE = 6 consecutive ones
 * (the n_rep heads of a row, then the next rows), which share every loaded
 * key and value vector: per key block the scores of all the tile's queries
 * are computed in 12 accumulators (two vectors of 8 keys per query), and the
 * values are accumulated 16 head dims at a time for all of them (12
 * accumulators again), so each K or V load feeds 6 or 12 FMAs.
 *
 * Per query the recipe is fixed whatever the tile holds, so a query's result
 * never depends on the other queries of the call:
 *  - scores: one FMA chain per 8 keys, over head dims in order;
 *  - softmax in base 2: t = score * scale * log2(e), per block the running
 *    maximum m, p = 2^(t - m) (exp2_8 below), the running sum kept as 8
 *    lane partials, and the accumulator rescaled by 2^(m_old - m) only when
 *    the maximum grows (otherwise the factor is exactly 1);
 *  - values: acc = acc * alpha, then one FMA per key in order, per dim.
 * Keys past a query's last position (or before its first, in a sliding
 * window) but inside the tile's range get p = 0 exactly (0 * a finite value adds nothing, bar turning a sum of exactly -0
 * into +0), and a query whose keys ended in an earlier block takes p = 0,
 * alpha = 1 (no change).
 *
 * K and V are read in their cache type (internal.h), converted in registers
 * as they are loaded: F16 by vcvtph2ps, Q8_0 quants by sign extension and
 * vcvtdq2ps. A Q8_0 key's score is the sum over its groups of 32 dims of
 * scale * (the group's FMA chain on the quants); a Q8_0 value's scale is
 * folded into the weight (p * scale, per key and group) that multiplies its
 * quants.
 */
#include "internal.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

#define AI static inline __attribute__((always_inline))
#define UNROLL _Pragma("GCC unroll 8")
#define TILE 6
#define B ENG_KV_BLOCK

/*
 * 2^x for x <= 0. Inputs below -64 give 2^-64 (a softmax term that small
 * against the maximum's 1 changes nothing, and the clamp keeps every result
 * and product normal: no denormal assists). x = n + f with n = round(x),
 * |f| <= 1/2 (exact); 2^f by a degree-6 polynomial interpolating 2^f at the
 * Chebyshev nodes of [-1/2, 1/2] (c0 = 1, so 2^0 = 1 exactly), evaluated by
 * Horner in float; 2^n added to the exponent bits. Max relative error over
 * [-64, 0], measured against exp2 in double on every float of [-1/2, 1/2]:
 * 8.2e-8 (1.4 units of 2^-24); expf is within 1 ulp.
 */
AI __m256 exp2_8(__m256 x)
{
    x = _mm256_max_ps(x, _mm256_set1_ps(-64.0f));
    const __m256 n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256 f = _mm256_sub_ps(x, n);
    static const float c[] = {ENG_EXP2_POLY};
    __m256 p = _mm256_set1_ps(c[0]);
    UNROLL for (int i = 1; i < 7; i++) p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(c[i]));
    const __m256i e = _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23);
    return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e));
}

/* The maximum of the 8 lanes, in every lane. */
AI __m256 hmax8(__m256 x)
{
    x = _mm256_max_ps(x, _mm256_permute2f128_ps(x, x, 1));
    x = _mm256_max_ps(x, _mm256_permute_ps(x, _MM_SHUFFLE(1, 0, 3, 2)));
    return _mm256_max_ps(x, _mm256_permute_ps(x, _MM_SHUFFLE(2, 3, 0, 1)));
}

AI float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* 8 keys (off 0 or 8) of dim d of a K block of type TK, as floats. */
AI __m256 kload8(int TK, const void *K, int d, int off)
{
    const size_t i = (size_t)d * B + (size_t)off;
    if (TK == ENG_TYPE_F32) return _mm256_loadu_ps((const float *)K + i);
    if (TK == ENG_TYPE_F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)K + i)));
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)((const int8_t *)K + i))));
}

/* Scores of NT queries against one block's 16 keys (K transposed):
 * s[t][0] keys 0..7, s[t][1] keys 8..15. */
AI void scores(int NT, int TK, int hd, const float *const *q, const void *K, __m256 (*s)[2])
{
    __m256 c[TILE][2];
    UNROLL for (int t = 0; t < NT; t++) c[t][0] = c[t][1] = _mm256_setzero_ps();
    for (int d = 0; d < hd; d++) {
        const __m256 k0 = kload8(TK, K, d, 0), k1 = kload8(TK, K, d, 8);
        UNROLL for (int t = 0; t < NT; t++) {
            const __m256 x = _mm256_broadcast_ss(q[t] + d);
            c[t][0] = _mm256_fmadd_ps(x, k0, c[t][0]);
            c[t][1] = _mm256_fmadd_ps(x, k1, c[t][1]);
        }
    }
    UNROLL for (int t = 0; t < NT; t++) s[t][0] = c[t][0], s[t][1] = c[t][1];
}

/* The same for Q8_0 keys, 8 keys (half h) at a time: per group of dims an
 * FMA chain on the quants, times the keys' scales, summed over groups. */
AI void scores_q8(int NT, int hd, const float *const *q, const void *K, __m256 (*s)[2])
{
    const uint16_t *sc = (const uint16_t *)((const int8_t *)K + (size_t)B * hd);
    for (int h = 0; h < 2; h++) {
        __m256 tot[TILE];
        UNROLL for (int t = 0; t < NT; t++) tot[t] = _mm256_setzero_ps();
        for (int g = 0; g * ENG_KV_GROUP < hd; g++) {
            const int d1 = hd < (g + 1) * ENG_KV_GROUP ? hd : (g + 1) * ENG_KV_GROUP;
            __m256 c[TILE];
            UNROLL for (int t = 0; t < NT; t++) c[t] = _mm256_setzero_ps();
            for (int d = g * ENG_KV_GROUP; d < d1; d++) {
                const __m256 k = kload8(ENG_TYPE_Q8_0, K, d, 8 * h);
                UNROLL for (int t = 0; t < NT; t++) c[t] = _mm256_fmadd_ps(_mm256_broadcast_ss(q[t] + d), k, c[t]);
            }
            const __m256 scale = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sc + (size_t)g * B + 8 * h)));
            UNROLL for (int t = 0; t < NT; t++) tot[t] = _mm256_fmadd_ps(scale, c[t], tot[t]);
        }
        UNROLL for (int t = 0; t < NT; t++) s[t][h] = tot[t];
    }
}

/* One block's online-softmax step for one query with keys lo..cnt-1
 * (0 <= lo < cnt <= 16) of the block: updates its maximum *m (in base-2
 * units) and lane sums *l, writes its 16 weights to p (0 outside) and the
 * accumulator's factor. */
AI void softmax_step(const __m256 *s, int lo, int cnt, float c, float *m, __m256 *l, float *p, float *alpha)
{
    __m256 t0 = _mm256_mul_ps(s[0], _mm256_set1_ps(c)), t1 = _mm256_mul_ps(s[1], _mm256_set1_ps(c));
    __m256 v0 = _mm256_castsi256_ps(_mm256_set1_epi32(-1)), v1 = v0;
    if (cnt < B || lo > 0) {
        const __m256 n = _mm256_set1_ps((float)cnt), ninf = _mm256_set1_ps(-INFINITY), f = _mm256_set1_ps((float)lo);
        const __m256 i0 = _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7), i1 = _mm256_setr_ps(8, 9, 10, 11, 12, 13, 14, 15);
        v0 = _mm256_and_ps(_mm256_cmp_ps(i0, n, _CMP_LT_OQ), _mm256_cmp_ps(i0, f, _CMP_GE_OQ));
        v1 = _mm256_and_ps(_mm256_cmp_ps(i1, n, _CMP_LT_OQ), _mm256_cmp_ps(i1, f, _CMP_GE_OQ));
        t0 = _mm256_blendv_ps(ninf, t0, v0);
        t1 = _mm256_blendv_ps(ninf, t1, v1);
    }
    const __m256 mn = _mm256_max_ps(hmax8(_mm256_max_ps(t0, t1)), _mm256_set1_ps(*m));
    const float mnew = _mm256_cvtss_f32(mn);
    float al = 1.0f;
    if (mnew > *m) {
        al = *m == -INFINITY ? 0.0f : _mm256_cvtss_f32(exp2_8(_mm256_set1_ps(*m - mnew)));
        *m = mnew;
    }
    const __m256 p0 = _mm256_and_ps(exp2_8(_mm256_sub_ps(t0, mn)), v0);
    const __m256 p1 = _mm256_and_ps(exp2_8(_mm256_sub_ps(t1, mn)), v1);
    *l = _mm256_fmadd_ps(*l, _mm256_set1_ps(al), _mm256_add_ps(p0, p1));
    _mm256_storeu_ps(p, p0);
    _mm256_storeu_ps(p + 8, p1);
    *alpha = al;
}

/* 8 values of a V block of type TV from element i on (the first n < 8 of
 * them when masked, the rest 0; mk: the float mask of those n). */
AI __m256 vload8(int TV, const void *V, size_t i, int masked, __m256i mk, int n)
{
    if (TV == ENG_TYPE_F32)
        return masked ? _mm256_maskload_ps((const float *)V + i, mk) : _mm256_loadu_ps((const float *)V + i);
    if (TV == ENG_TYPE_F16) {
        const uint16_t *v = (const uint16_t *)V + i;
        if (!masked) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)v));
        uint16_t tmp[8] = {0};
        memcpy(tmp, v, (size_t)n * sizeof *v);
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)tmp));
    }
    const int8_t *v = (const int8_t *)V + i;
    if (!masked) return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)v)));
    int8_t tmp[16] = {0};
    memcpy(tmp, v, (size_t)n);
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)tmp)));
}

/* acc = acc * alpha + sum_j p[j] * V[j] for dims d..d+8W-1 (W = 1 or 2
 * vectors; the last vector masked by mk, n dims, when masked), keys j < cnt. */
AI void pv_chunk(int NT, int TV, int W, int masked, __m256i mk, int n, int hd, int d, float *const *acc,
                 const float (*p)[B], const float *alpha, int cnt, const void *V)
{
    __m256 x[TILE][2];
    UNROLL for (int t = 0; t < NT; t++) {
        const __m256 a = _mm256_broadcast_ss(alpha + t);
        x[t][0] = _mm256_mul_ps(masked ? _mm256_maskload_ps(acc[t] + d, mk) : _mm256_loadu_ps(acc[t] + d), a);
        if (W == 2) x[t][1] = _mm256_mul_ps(_mm256_loadu_ps(acc[t] + d + 8), a);
    }
    for (int j = 0; j < cnt; j++) {
        const size_t i = (size_t)j * hd + d;
        const __m256 v0 = vload8(TV, V, i, masked, mk, n);
        const __m256 v1 = W == 2 ? vload8(TV, V, i + 8, 0, mk, 8) : v0;
        UNROLL for (int t = 0; t < NT; t++) {
            const __m256 pj = _mm256_broadcast_ss(&p[t][j]);
            x[t][0] = _mm256_fmadd_ps(pj, v0, x[t][0]);
            if (W == 2) x[t][1] = _mm256_fmadd_ps(pj, v1, x[t][1]);
        }
    }
    UNROLL for (int t = 0; t < NT; t++) {
        if (masked) _mm256_maskstore_ps(acc[t] + d, mk, x[t][0]);
        else _mm256_storeu_ps(acc[t] + d, x[t][0]);
        if (W == 2) _mm256_storeu_ps(acc[t] + d + 8, x[t][1]);
    }
}

/* pv_chunk over dims d0..d1-1 (d0 a multiple of 16). */
AI void pv_range(int NT, int TV, int hd, int d0, int d1, float *const *acc, const float (*p)[B],
                 const float *alpha, int cnt, const void *V)
{
    const __m256i none = _mm256_setzero_si256();
    int d = d0;
    for (; d + 16 <= d1; d += 16) pv_chunk(NT, TV, 2, 0, none, 8, hd, d, acc, p, alpha, cnt, V);
    if (d + 8 <= d1) {
        pv_chunk(NT, TV, 1, 0, none, 8, hd, d, acc, p, alpha, cnt, V);
        d += 8;
    }
    if (d < d1) {
        const __m256i mk = _mm256_cmpgt_epi32(_mm256_set1_epi32(d1 - d), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        pv_chunk(NT, TV, 1, 1, mk, d1 - d, hd, d, acc, p, alpha, cnt, V);
    }
}

/* The values' step; for Q8_0 values one group of dims at a time, with the
 * weights times the keys' scales of that group. */
AI void pv(int NT, int TV, int hd, float *const *acc, const float (*p)[B], const float *alpha, int cnt,
           const void *V)
{
    if (TV != ENG_TYPE_Q8_0) {
        pv_range(NT, TV, hd, 0, hd, acc, p, alpha, cnt, V);
        return;
    }
    const int ng = ENG_KV_GROUPS(hd);
    const uint16_t *sc = (const uint16_t *)((const int8_t *)V + (size_t)B * hd);
    float pd[TILE][B];
    for (int g = 0; g < ng; g++) {
        for (int j = 0; j < cnt; j++) {
            const float dj = _cvtsh_ss(sc[(size_t)j * ng + g]);
            UNROLL for (int t = 0; t < NT; t++) pd[t][j] = p[t][j] * dj;
        }
        const int d1 = hd < (g + 1) * ENG_KV_GROUP ? hd : (g + 1) * ENG_KV_GROUP;
        pv_range(NT, TV, hd, g * ENG_KV_GROUP, d1, acc, (const float(*)[B])pd, alpha, cnt, V);
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

/* The hot loops of a block step, each compiled once per (cache type, tile
 * size): the scores of NT queries (per K type) and their value update (per
 * V type). 36 instances rather than one whole tile per (K type, V type,
 * size): the same code at a call per 16 keys, and a tenth of the compile
 * time (the sanitizer builds took minutes on this file). */
typedef void scores_fn(int hd, const float *const *q, const void *K, __m256 (*s)[2]);
typedef void pv_fn(int hd, float *const *acc, const float (*p)[B], const float *alpha, int cnt, const void *V);

#define STEP_FNS(T, NT) \
    static __attribute__((noinline)) void scores_##T##_##NT(int hd, const float *const *q, const void *K, \
                                                             __m256 (*s)[2]) \
    { \
        if (ENG_TYPE_##T == ENG_TYPE_Q8_0) scores_q8(NT, hd, q, K, s); \
        else scores(NT, ENG_TYPE_##T, hd, q, K, s); \
    } \
    static __attribute__((noinline)) void pv_##T##_##NT(int hd, float *const *acc, const float (*p)[B], \
                                                         const float *alpha, int cnt, const void *V) \
    { \
        pv(NT, ENG_TYPE_##T, hd, acc, p, alpha, cnt, V); \
    }
#define EACH_NT(X, T) X(T, 1) X(T, 2) X(T, 3) X(T, 4) X(T, 5) X(T, 6)
#define NT_TABLE(f, T) {f##_##T##_1, f##_##T##_2, f##_##T##_3, f##_##T##_4, f##_##T##_5, f##_##T##_6}
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
    float *acc[TILE], m[TILE], p[TILE][B], alpha[TILE];
    __m256 l[TILE];
    int32_t nk[TILE], nk_max = 0, k0[TILE], k0_min = INT32_MAX;
    for (int t = 0; t < NT; t++) {
        const int32_t i = (q0 + t) / a->n_rep, r = (q0 + t) % a->n_rep;
        q[t] = a->q + (size_t)i * a->q_stride + (size_t)r * hd;
        acc[t] = a->scratch + (size_t)t * hd;
        for (int d = 0; d < hd; d++) acc[t][d] = 0.0f;
        m[t] = -INFINITY;
        l[t] = _mm256_setzero_ps();
        nk[t] = a->last[i] + 1;
        if (nk[t] > nk_max) nk_max = nk[t];
        k0[t] = a->first ? a->first[i] : 0; /* sliding window: its first key */
        if (k0[t] < k0_min) k0_min = k0[t];
    }
    for (int32_t b = k0_min / B; b * B < nk_max; b++) {
        const void *K = (const char *)a->k + (size_t)a->blk[b] * a->k_stride;
        const void *V = (const char *)a->v + (size_t)a->blk[b] * a->v_stride;
        if ((b + 1) * B < nk_max && (b + 1) * B >= seen) prefetch_block(a, b + 1);
        __m256 s[TILE][2];
        score(hd, q, K, s);
        int cnt_max = 0;
        for (int t = 0; t < NT; t++) {
            const int32_t cnt = nk[t] - b * B, lo = k0[t] - b * B;
            if (cnt <= 0 || lo >= B) { /* this query's keys ended in an earlier block, or start later */
                for (int j = 0; j < B; j++) p[t][j] = 0.0f;
                alpha[t] = 1.0f;
                continue;
            }
            const int cb = cnt < B ? (int)cnt : B;
            softmax_step(s[t], lo > 0 ? (int)lo : 0, cb, c, &m[t], &l[t], p[t], &alpha[t]);
            if (cb > cnt_max) cnt_max = cb;
        }
        pv_step(hd, acc, (const float(*)[B])p, alpha, cnt_max, V);
    }
    for (int t = 0; t < NT; t++) {
        const int32_t i = (q0 + t) / a->n_rep, r = (q0 + t) % a->n_rep;
        float *o = a->out + (size_t)i * a->q_stride + (size_t)r * hd;
        const float inv = 1.0f / hsum8(l[t]);
        for (int d = 0; d < hd; d++) o[d] = acc[t][d] * inv;
    }
    return nk_max;
}

/* Every query of the call, in tiles. */
void eng__attn_avx2(const eng__attn_args *a)
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
