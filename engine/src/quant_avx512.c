/*
 * quant_avx512.c - AVX-512 (F/BW/VL/DQ) + VNNI + BF16 kernels.
 *
 * Same structure as quant_avx2.c: a register tile TILE(MR, NX) in which each
 * (row, x) pair owns one accumulator updated in a fixed order, so gemm is
 * bit-identical to vec_dot (= TILE(1, 1)).
 *
 * Integer dot products use vpdpbusd (u8 x s8). Signs:
 *   Q8_0 x Q8_0: x + 128 (xor 0x80) is the unsigned operand; the excess
 *     128 * sum(w) per 4-byte lane is precomputed per weight block (one
 *     vpdpbusd with 0x80 bytes) and is the starting value of each pair's dot.
 *   Q4_0 x Q8_0: the nibble q (0..15) is the unsigned operand; (q - 8) is
 *     handled by starting from -8 * sum(x) per lane, computed once per x block.
 *   K-quants: q is unsigned (0..63); vpmaddubsw gives int16 pairs, vpdpwssd
 *     applies the per-sub-block scales; mins / the Q6_K -32 offset use Q8_K bsums.
 */
#include "internal.h"

#include <immintrin.h>
#include <string.h>

void eng__quant_avx512_init(eng__kernels *k);

#define AI static inline __attribute__((always_inline))
#define UNROLL _Pragma("GCC unroll 8")
#define MRMAX 4
#define XCHUNK 64

AI float ldh(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

AI __m256i lu(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }
AI __m128i lu128(const void *p) { return _mm_loadu_si128((const __m128i *)p); }
AI __m512i lu512(const void *p) { return _mm512_loadu_si512(p); }

/* Fixed-order horizontal sum (same sequence for every caller). */
AI float hsum16(__m512 v)
{
    __m256 a = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

#define TC(NAME, A, B)                                                                       \
    do {                                                                                     \
        if ((B) <= nxm) NAME##_tile(A, B, n, w, ws, x, xs, y, ys);                           \
    } while (0)
#define DEFINE_GEMM(NAME, NXM)                                                               \
    static void NAME##_disp(int mr, int nj, int64_t n, const uint8_t *w, size_t ws,          \
                            const uint8_t *x, size_t xs, float *y, size_t ys)                \
    {                                                                                        \
        enum { nxm = NXM };                                                                  \
        switch (mr * 8 + nj) {                                                               \
        case 9: TC(NAME, 1, 1); break;                                                       \
        case 10: TC(NAME, 1, 2); break;                                                      \
        case 11: TC(NAME, 1, 3); break;                                                      \
        case 12: TC(NAME, 1, 4); break;                                                      \
        case 17: TC(NAME, 2, 1); break;                                                      \
        case 18: TC(NAME, 2, 2); break;                                                      \
        case 19: TC(NAME, 2, 3); break;                                                      \
        case 20: TC(NAME, 2, 4); break;                                                      \
        case 25: TC(NAME, 3, 1); break;                                                      \
        case 26: TC(NAME, 3, 2); break;                                                      \
        case 27: TC(NAME, 3, 3); break;                                                      \
        case 28: TC(NAME, 3, 4); break;                                                      \
        case 33: TC(NAME, 4, 1); break;                                                      \
        case 34: TC(NAME, 4, 2); break;                                                      \
        case 35: TC(NAME, 4, 3); break;                                                      \
        default: TC(NAME, 4, 4); break;                                                     \
        }                                                                                    \
    }                                                                                        \
    static void NAME##_gemm(int64_t n, const void *w, size_t ws, int64_t nr, const void *x,  \
                            size_t xs, int64_t nx, float *y, size_t ys)                      \
    {                                                                                        \
        for (int64_t jc = 0; jc < nx; jc += XCHUNK) {                                        \
            int64_t je = jc + XCHUNK < nx ? jc + XCHUNK : nx;                                \
            for (int64_t r = 0; r < nr; r += MRMAX) {                                        \
                int mr = nr - r < MRMAX ? (int)(nr - r) : MRMAX;                             \
                for (int64_t j = jc; j < je; j += NXM) {                                     \
                    int nj = je - j < NXM ? (int)(je - j) : NXM;                             \
                    NAME##_disp(mr, nj, n, (const uint8_t *)w + (size_t)r * ws, ws,          \
                                (const uint8_t *)x + (size_t)j * xs, xs,                     \
                                y + (size_t)j * ys + (size_t)r, ys);                         \
                }                                                                            \
            }                                                                                \
        }                                                                                    \
    }                                                                                        \
    static float NAME##_dot(int64_t n, const void *w, const void *x)                         \
    {                                                                                        \
        float r;                                                                             \
        NAME##_tile(1, 1, n, w, 0, x, 0, &r, 1);                                             \
        return r;                                                                            \
    }

#define TILE_ARGS                                                                            \
    const int MR, const int NX, int64_t n, const uint8_t *w, size_t ws, const uint8_t *x,    \
        size_t xs, float *y, size_t ys

#define ZERO_ACC(acc)                                                                        \
    UNROLL for (int r = 0; r < MR; r++) UNROLL for (int j = 0; j < NX; j++) acc[r][j] =      \
        _mm512_setzero_ps()

#define STORE_ACC(acc)                                                                       \
    UNROLL for (int r = 0; r < MR; r++) UNROLL for (int j = 0; j < NX; j++) y[j * ys + r] =  \
        hsum16(acc[r][j])

/* ------------------------------------------------------------------------ */
/* F32 / F16 / BF16                                                         */
/* ------------------------------------------------------------------------ */

AI void f32_step(const int MR, const int NX, __m512 acc[MRMAX][4], const uint8_t *w, size_t ws,
                 const uint8_t *x, size_t xs, int64_t i, __mmask16 m)
{
    __m512 xv[4];
    UNROLL for (int j = 0; j < NX; j++) xv[j] = _mm512_maskz_loadu_ps(m, (const float *)(x + j * xs) + i);
    UNROLL for (int r = 0; r < MR; r++) {
        __m512 wv = _mm512_maskz_loadu_ps(m, (const float *)(w + r * ws) + i);
        UNROLL for (int j = 0; j < NX; j++) acc[r][j] = _mm512_fmadd_ps(wv, xv[j], acc[r][j]);
    }
}

AI void f32_tile(TILE_ARGS)
{
    __m512 acc[MRMAX][4];
    ZERO_ACC(acc);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) f32_step(MR, NX, acc, w, ws, x, xs, i, 0xffff);
    if (i < n) f32_step(MR, NX, acc, w, ws, x, xs, i, (__mmask16)((1u << (n - i)) - 1));
    STORE_ACC(acc);
}
DEFINE_GEMM(f32, 4)

AI void f16_step(const int MR, const int NX, __m512 acc[MRMAX][4], const uint8_t *w, size_t ws,
                 const uint8_t *x, size_t xs, int64_t i, __mmask16 m)
{
    __m512 xv[4];
    UNROLL for (int j = 0; j < NX; j++) xv[j] = _mm512_maskz_loadu_ps(m, (const float *)(x + j * xs) + i);
    UNROLL for (int r = 0; r < MR; r++) {
        __m512 wv = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, w + r * ws + 2 * i));
        UNROLL for (int j = 0; j < NX; j++) acc[r][j] = _mm512_fmadd_ps(wv, xv[j], acc[r][j]);
    }
}

AI void f16_tile(TILE_ARGS)
{
    __m512 acc[MRMAX][4];
    ZERO_ACC(acc);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) f16_step(MR, NX, acc, w, ws, x, xs, i, 0xffff);
    if (i < n) f16_step(MR, NX, acc, w, ws, x, xs, i, (__mmask16)((1u << (n - i)) - 1));
    STORE_ACC(acc);
}
DEFINE_GEMM(f16, 4)

AI void bf16_step(const int MR, const int NX, __m512 acc[MRMAX][4], const uint8_t *w, size_t ws,
                  const uint8_t *x, size_t xs, int64_t i, __mmask32 m)
{
    __m512i xv[4];
    UNROLL for (int j = 0; j < NX; j++) xv[j] = _mm512_maskz_loadu_epi16(m, x + j * xs + 2 * i);
    UNROLL for (int r = 0; r < MR; r++) {
        __m512i wv = _mm512_maskz_loadu_epi16(m, w + r * ws + 2 * i);
        UNROLL for (int j = 0; j < NX; j++) acc[r][j] =
            _mm512_dpbf16_ps(acc[r][j], (__m512bh)wv, (__m512bh)xv[j]);
    }
}

AI void bf16_tile(TILE_ARGS)
{
    __m512 acc[MRMAX][4];
    ZERO_ACC(acc);
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) bf16_step(MR, NX, acc, w, ws, x, xs, i, 0xffffffffu);
    if (i < n) bf16_step(MR, NX, acc, w, ws, x, xs, i, (__mmask32)((1ull << (n - i)) - 1));
    STORE_ACC(acc);
}
DEFINE_GEMM(bf16, 4)

/* ------------------------------------------------------------------------ */
/* Q8_0 x Q8_0, Q4_0 x Q8_0: two 32-element blocks per 512-bit register     */
/* ------------------------------------------------------------------------ */

/* Two blocks' 32 quant bytes (the second zero when !two). */
AI __m512i ld2(const uint8_t *p0, const uint8_t *p1, int two)
{
    __m512i v = _mm512_zextsi256_si512(lu(p0));
    return two ? _mm512_inserti64x4(v, lu(p1), 1) : v;
}

AI __m512 sc2(float a, float b, int two)
{
    __m512 v = _mm512_zextps256_ps512(_mm256_set1_ps(a));
    return two ? _mm512_insertf32x8(v, _mm256_set1_ps(b), 1) : v;
}

AI void q8_0_step(const int MR, const int NX, __m512 acc[MRMAX][4], const uint8_t *w, size_t ws,
                  const uint8_t *x, size_t xs, int64_t b, int two)
{
    const __m512i c80 = _mm512_set1_epi8((char)0x80);
    __m512i wq[MRMAX], nc[MRMAX], xu[4];
    __m512 dw[MRMAX], dx[4];
    UNROLL for (int r = 0; r < MR; r++) {
        const uint8_t *p = w + r * ws + 34 * b;
        wq[r] = ld2(p + 2, p + 36, two);
        nc[r] = _mm512_sub_epi32(_mm512_setzero_si512(),
                                 _mm512_dpbusd_epi32(_mm512_setzero_si512(), c80, wq[r]));
        dw[r] = sc2(ldh(p), two ? ldh(p + 34) : 0.0f, two);
    }
    UNROLL for (int j = 0; j < NX; j++) {
        const uint8_t *p = x + j * xs + 34 * b;
        xu[j] = _mm512_xor_si512(ld2(p + 2, p + 36, two), c80);
        dx[j] = sc2(ldh(p), two ? ldh(p + 34) : 0.0f, two);
    }
    UNROLL for (int r = 0; r < MR; r++) UNROLL for (int j = 0; j < NX; j++) {
        __m512i d = _mm512_dpbusd_epi32(nc[r], xu[j], wq[r]);
        acc[r][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_mul_ps(dw[r], dx[j]), acc[r][j]);
    }
}

AI void q8_0_tile(TILE_ARGS)
{
    __m512 acc[MRMAX][4];
    ZERO_ACC(acc);
    int64_t nb = n / 32, b = 0;
    for (; b + 2 <= nb; b += 2) q8_0_step(MR, NX, acc, w, ws, x, xs, b, 1);
    if (b < nb) q8_0_step(MR, NX, acc, w, ws, x, xs, b, 0);
    STORE_ACC(acc);
}
DEFINE_GEMM(q8_0, 4)

AI __m512i q4_unpack2(const uint8_t *p0, const uint8_t *p1, int two)
{
    __m512i v = _mm512_zextsi256_si512(_mm256_broadcastsi128_si256(lu128(p0)));
    if (two) v = _mm512_inserti64x4(v, _mm256_broadcastsi128_si256(lu128(p1)), 1);
    v = _mm512_srlv_epi64(v, _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4));
    return _mm512_and_si512(v, _mm512_set1_epi8(0xf));
}

AI void q4_0_step(const int MR, const int NX, __m512 acc[MRMAX][4], const uint8_t *w, size_t ws,
                  const uint8_t *x, size_t xs, int64_t b, int two)
{
    const __m512i c8 = _mm512_set1_epi8(8);
    __m512i wq[MRMAX], nc[4], xq[4];
    __m512 dw[MRMAX], dx[4];
    UNROLL for (int r = 0; r < MR; r++) {
        const uint8_t *p = w + r * ws + 18 * b;
        wq[r] = q4_unpack2(p + 2, p + 20, two);
        dw[r] = sc2(ldh(p), two ? ldh(p + 18) : 0.0f, two);
    }
    UNROLL for (int j = 0; j < NX; j++) {
        const uint8_t *p = x + j * xs + 34 * b;
        xq[j] = ld2(p + 2, p + 36, two);
        nc[j] = _mm512_sub_epi32(_mm512_setzero_si512(),
                                 _mm512_dpbusd_epi32(_mm512_setzero_si512(), c8, xq[j]));
        dx[j] = sc2(ldh(p), two ? ldh(p + 34) : 0.0f, two);
    }
    UNROLL for (int r = 0; r < MR; r++) UNROLL for (int j = 0; j < NX; j++) {
        __m512i d = _mm512_dpbusd_epi32(nc[j], wq[r], xq[j]);
        acc[r][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_mul_ps(dw[r], dx[j]), acc[r][j]);
    }
}

AI void q4_0_tile(TILE_ARGS)
{
    __m512 acc[MRMAX][4];
    ZERO_ACC(acc);
    int64_t nb = n / 32, b = 0;
    for (; b + 2 <= nb; b += 2) q4_0_step(MR, NX, acc, w, ws, x, xs, b, 1);
    if (b < nb) q4_0_step(MR, NX, acc, w, ws, x, xs, b, 0);
    STORE_ACC(acc);
}
DEFINE_GEMM(q4_0, 4)

/* ------------------------------------------------------------------------ */
/* K-quants x Q8_K                                                          */
/* ------------------------------------------------------------------------ */

/* One unpacked superblock: q[g] = elements 64g..64g+63 (unsigned), sc[g] =
 * int16 multipliers for the 32 vpmaddubsw lanes of group g, mins = int16
 * multipliers of the 16 Q8_K bsums. */
typedef struct {
    __m512i q[4];
    __m512i sc[4];
    __m256i mins;
    __m512 d, dmin;
} kunp;

/* 6-bit scales and mins of Q4_K / Q5_K as 8 bytes each. */
AI void k4_scales(const uint8_t *s, uint64_t *sc, uint64_t *m)
{
    uint32_t w0, w1, w2;
    memcpy(&w0, s, 4);
    memcpy(&w1, s + 4, 4);
    memcpy(&w2, s + 8, 4);
    uint32_t sl = w0 & 0x3f3f3f3fu, sh = (w2 & 0x0f0f0f0fu) | ((w0 >> 2) & 0x30303030u);
    uint32_t ml = w1 & 0x3f3f3f3fu, mh = ((w2 >> 4) & 0x0f0f0f0fu) | ((w1 >> 2) & 0x30303030u);
    *sc = sl | ((uint64_t)sh << 32);
    *m = ml | ((uint64_t)mh << 32);
}

AI void kunp_scales_q45(kunp *u, const uint8_t *a)
{
    uint64_t sc, m;
    k4_scales(a + 4, &sc, &m);
    __m512i s16 = _mm512_castsi128_si512(_mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)sc)));
    UNROLL for (int g = 0; g < 4; g++) {
        __m512i idx = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi16((short)(2 * g))),
                                         _mm256_set1_epi16((short)(2 * g + 1)), 1);
        u->sc[g] = _mm512_permutexvar_epi16(idx, s16);
    }
    __m256i m16 = _mm256_castsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)m)));
    u->mins = _mm256_permutexvar_epi16(
        _mm256_setr_epi16(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7), m16);
    u->d = _mm512_set1_ps(ldh(a));
    u->dmin = _mm512_set1_ps(ldh(a + 2));
}

AI void unpack_q4_k(kunp *u, const uint8_t *a)
{
    const __m512i m4 = _mm512_set1_epi8(0xf);
    UNROLL for (int g = 0; g < 4; g++) {
        __m512i v = _mm512_broadcast_i64x4(lu(a + 16 + 32 * g));
        v = _mm512_srlv_epi64(v, _mm512_setr_epi64(0, 0, 0, 0, 4, 4, 4, 4));
        u->q[g] = _mm512_and_si512(v, m4);
    }
    kunp_scales_q45(u, a);
}

AI void unpack_q5_k(kunp *u, const uint8_t *a)
{
    const __m512i m4 = _mm512_set1_epi8(0xf), c16 = _mm512_set1_epi8(16);
    __m512i qh = _mm512_broadcast_i64x4(lu(a + 16));
    UNROLL for (int g = 0; g < 4; g++) {
        __m512i v = _mm512_broadcast_i64x4(lu(a + 48 + 32 * g));
        v = _mm512_and_si512(_mm512_srlv_epi64(v, _mm512_setr_epi64(0, 0, 0, 0, 4, 4, 4, 4)), m4);
        __m512i bit = _mm512_inserti64x4(_mm512_set1_epi8((char)(1 << (2 * g))),
                                         _mm256_set1_epi8((char)(1 << (2 * g + 1))), 1);
        __mmask64 hm = _mm512_test_epi8_mask(qh, bit);
        u->q[g] = _mm512_mask_add_epi8(v, hm, v, c16);
    }
    kunp_scales_q45(u, a);
}

AI void unpack_q6_k(kunp *u, const uint8_t *a)
{
    const __m512i m4 = _mm512_set1_epi8(0xf), m3 = _mm512_set1_epi8(3);
    UNROLL for (int h = 0; h < 2; h++) {
        __m512i ql = lu512(a + 64 * h); /* [ql[0..31] | ql[32..63]] of this half */
        __m512i qh = _mm512_broadcast_i64x4(lu(a + 128 + 32 * h));
        /* group 2h: low nibbles, qh bits 0-1 (first 32) and 2-3 (next 32) */
        __m512i h0 = _mm512_and_si512(_mm512_srlv_epi64(qh, _mm512_setr_epi64(0, 0, 0, 0, 2, 2, 2, 2)), m3);
        __m512i h1 = _mm512_and_si512(_mm512_srlv_epi64(qh, _mm512_setr_epi64(4, 4, 4, 4, 6, 6, 6, 6)), m3);
        u->q[2 * h] = _mm512_or_si512(_mm512_and_si512(ql, m4), _mm512_slli_epi16(h0, 4));
        u->q[2 * h + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m4),
                                          _mm512_slli_epi16(h1, 4));
    }
    __m256i s16 = _mm256_cvtepi8_epi16(lu128(a + 192));
    __m512i s512 = _mm512_castsi256_si512(s16);
    UNROLL for (int g = 0; g < 4; g++) {
        __m512i idx = _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm256_setr_m128i(_mm_set1_epi16((short)(4 * g)), _mm_set1_epi16((short)(4 * g + 1)))),
            _mm256_setr_m128i(_mm_set1_epi16((short)(4 * g + 2)), _mm_set1_epi16((short)(4 * g + 3))), 1);
        u->sc[g] = _mm512_permutexvar_epi16(idx, s512);
    }
    /* -32 offset: isum -= 32 * sum(sc * bsum) */
    u->mins = _mm256_slli_epi16(s16, 5);
    u->d = _mm512_set1_ps(ldh(a + 208));
    u->dmin = _mm512_setzero_ps();
}

#define KQ_NX 2
#define KQ_TILE(NAME, BSZ, UNPACK, IS_Q6)                                                    \
    AI void NAME##_tile(TILE_ARGS)                                                           \
    {                                                                                        \
        __m512 acc[MRMAX][4];                                                                \
        ZERO_ACC(acc);                                                                       \
        for (int64_t b = 0; b < n / 256; b++) {                                              \
            kunp u[MRMAX];                                                                   \
            UNROLL for (int r = 0; r < MR; r++) UNPACK(&u[r], w + r * ws + BSZ * b);         \
            __m512i isum[MRMAX][KQ_NX];                                                      \
            UNROLL for (int r = 0; r < MR; r++) UNROLL for (int j = 0; j < NX; j++)          \
                isum[r][j] = _mm512_setzero_si512();                                         \
            UNROLL for (int g = 0; g < 4; g++) {                                             \
                __m512i xv[KQ_NX];                                                           \
                UNROLL for (int j = 0; j < NX; j++) xv[j] = lu512(x + j * xs + 292 * b + 4 + 64 * g); \
                UNROLL for (int r = 0; r < MR; r++) UNROLL for (int j = 0; j < NX; j++)      \
                    isum[r][j] = _mm512_dpwssd_epi32(isum[r][j],                             \
                                                     _mm512_maddubs_epi16(u[r].q[g], xv[j]), \
                                                     u[r].sc[g]);                            \
            }                                                                                \
            UNROLL for (int j = 0; j < NX; j++) {                                            \
                const uint8_t *xb = x + j * xs + 292 * b;                                    \
                float dxs;                                                                   \
                memcpy(&dxs, xb, 4);                                                         \
                __m512 dx = _mm512_set1_ps(dxs);                                             \
                __m256i bs = lu(xb + 260);                                                   \
                UNROLL for (int r = 0; r < MR; r++) {                                        \
                    __m256i ms = _mm256_madd_epi16(bs, u[r].mins);                           \
                    if (IS_Q6) {                                                             \
                        __m512i is = _mm512_sub_epi32(isum[r][j], _mm512_zextsi256_si512(ms)); \
                        acc[r][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is),                  \
                                                    _mm512_mul_ps(u[r].d, dx), acc[r][j]);   \
                    } else {                                                                 \
                        acc[r][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[r][j]),          \
                                                    _mm512_mul_ps(u[r].d, dx), acc[r][j]);   \
                        acc[r][j] = _mm512_fnmadd_ps(                                        \
                            _mm512_cvtepi32_ps(_mm512_zextsi256_si512(ms)),                  \
                            _mm512_mul_ps(u[r].dmin, dx), acc[r][j]);                        \
                    }                                                                        \
                }                                                                            \
            }                                                                                \
        }                                                                                    \
        STORE_ACC(acc);                                                                      \
    }                                                                                        \
    DEFINE_GEMM(NAME, KQ_NX)

KQ_TILE(q4_k, 144, unpack_q4_k, 0)
KQ_TILE(q5_k, 176, unpack_q5_k, 0)
KQ_TILE(q6_k, 210, unpack_q6_k, 1)

void eng__quant_avx512_init(eng__kernels *k)
{
#define SETK(T, t)                                                                           \
    do {                                                                                     \
        k->vec_dot[ENG_TYPE_##T] = t##_dot;                                                  \
        k->gemm[ENG_TYPE_##T] = t##_gemm;                                                    \
    } while (0)
    SETK(F32, f32);
    SETK(F16, f16);
    SETK(BF16, bf16);
    SETK(Q8_0, q8_0);
    SETK(Q4_0, q4_0);
    SETK(Q4_K, q4_k);
    SETK(Q5_K, q5_k);
    SETK(Q6_K, q6_k);
#undef SETK
}
