/*
 * quant_avx2.c - AVX2 + FMA + F16C kernels (compiled with -mavx2 -mfma -mf16c).
 *
 * Micro-kernels only (the driver that cuts a product into them is gemm.c).
 *
 * F32, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q5_K, and F16 in the file layout: a
 * register-tile routine TILE(MR, NX) over MR weight rows and NX activation
 * rows; MR and NX are compile-time constants in each instantiation. The
 * arithmetic done for one (row, x) pair never depends on MR / NX (each pair
 * has its own accumulator, updated in the same order), so gemm results are
 * bit-identical to vec_dot, which is TILE(1, 1). Q5_K weights are unpacked
 * per superblock into a small scratch (bytes of 0..63 plus int16 scale
 * vectors) shared by all activation rows of the tile.
 *
 * Packed F16 (16-row groups, internal.h): decode reads the groups in place
 * with f16_tile's per-pair recipe; prefill unpacks them back to the tiles.
 *
 * Q8_0, Q4_K, Q6_K: the packed-layout kernels of quant_avx2_pk.h (decode
 * and prefill strips with row lanes), included below without VNNI; the
 * avx2vnni table takes the same body built with AVX-VNNI (quant_avx2vnni.c).
 * Without VNNI, products of 16 or more activation rows run instead on
 * weights expanded once per strip (quant_avx2_wide.h), with the same bits.
 */
#include "gemm.h"

#include <immintrin.h>
#include <string.h>

void eng__quant_avx2_init(eng__kernels *k, bool vnni);
void eng__quant_avx2vnni_install(eng__kernels *k);

#define AI static inline __attribute__((always_inline))
#define UNROLL _Pragma("GCC unroll 8")
#define MRMAX 4
#define NXMAX 2

AI float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

AI float ldh(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

AI __m256i lu(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }
AI __m128i lu128(const void *p) { return _mm_loadu_si128((const __m128i *)p); }

/* NAME's eng__ukernel (gemm.h): the tile routine NAME##_tile(MR, NX, ...)
 * instantiated for every constant MR <= MRMAX, NX <= NXMAX, and the table
 * entries over it. */
#define TILE_CALL(NAME, A, B) NAME##_tile(A, B, n, w, ws, x, xs, y, ys)
#define TILE_DISPATCH(NAME)                                                                  \
    static void NAME##_tiles(int mr, int nj, int64_t n, const uint8_t *w, size_t ws,         \
                             const uint8_t *x, size_t xs, float *y, size_t ys)               \
    {                                                                                        \
        switch (mr * 8 + nj) {                                                               \
        case 9: TILE_CALL(NAME, 1, 1); break;                                                \
        case 10: TILE_CALL(NAME, 1, 2); break;                                               \
        case 17: TILE_CALL(NAME, 2, 1); break;                                               \
        case 18: TILE_CALL(NAME, 2, 2); break;                                               \
        case 25: TILE_CALL(NAME, 3, 1); break;                                               \
        case 26: TILE_CALL(NAME, 3, 2); break;                                               \
        case 33: TILE_CALL(NAME, 4, 1); break;                                               \
        default: TILE_CALL(NAME, 4, 2); break;                                               \
        }                                                                                    \
    }
/* A type done by register tiles alone: its eng__ukernel and table entries. */
#define TILE_KERNELS(NAME, T)                                                                \
    TILE_DISPATCH(NAME)                                                                      \
    static const eng__ukernel NAME##_uk = {                                                  \
        .type = ENG_TYPE_##T, .tile = NAME##_tiles, .tile_mr = MRMAX, .tile_nx = NXMAX};     \
    ENG_GEMM_ENTRIES(NAME, NAME##_uk)

#define TILE_ARGS                                                                            \
    const int MR, const int NX, int64_t n, const uint8_t *w, size_t ws, const uint8_t *x,    \
        size_t xs, float *y, size_t ys

#define ZERO_ACC(acc)                                                                        \
    UNROLL for (int r = 0; r < MR; r++) UNROLL for (int j = 0; j < NX; j++) acc[r][j] =      \
        _mm256_setzero_ps()

/* ------------------------------------------------------------------------ */
/* F32 / F16 / BF16                                                         */
/* ------------------------------------------------------------------------ */

AI void f32_tile(TILE_ARGS)
{
    __m256 acc[MRMAX][NXMAX];
    ZERO_ACC(acc);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 xv[NXMAX];
        UNROLL for (int j = 0; j < NX; j++) xv[j] = _mm256_loadu_ps((const float *)(x + j * xs) + i);
        UNROLL for (int r = 0; r < MR; r++) {
            __m256 wv = _mm256_loadu_ps((const float *)(w + r * ws) + i);
            UNROLL for (int j = 0; j < NX; j++) acc[r][j] = _mm256_fmadd_ps(wv, xv[j], acc[r][j]);
        }
    }
    UNROLL for (int r = 0; r < MR; r++) UNROLL for (int j = 0; j < NX; j++) {
        float s = hsum8(acc[r][j]);
        const float *wr = (const float *)(w + r * ws), *xr = (const float *)(x + j * xs);
        for (int64_t k = i; k < n; k++) s += wr[k] * xr[k];
        y[j * ys + r] = s;
    }
}
TILE_KERNELS(f32, F32)

AI void f16_tile(TILE_ARGS)
{
    __m256 acc[MRMAX][NXMAX];
    ZERO_ACC(acc);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 xv[NXMAX];
        UNROLL for (int j = 0; j < NX; j++) xv[j] = _mm256_loadu_ps((const float *)(x + j * xs) + i);
        UNROLL for (int r = 0; r < MR; r++) {
            __m256 wv = _mm256_cvtph_ps(lu128(w + r * ws + 2 * i));
            UNROLL for (int j = 0; j < NX; j++) acc[r][j] = _mm256_fmadd_ps(wv, xv[j], acc[r][j]);
        }
    }
    UNROLL for (int r = 0; r < MR; r++) UNROLL for (int j = 0; j < NX; j++) {
        float s = hsum8(acc[r][j]);
        const float *xr = (const float *)(x + j * xs);
        for (int64_t k = i; k < n; k++) s += ldh(w + r * ws + 2 * k) * xr[k];
        y[j * ys + r] = s;
    }
}
TILE_DISPATCH(f16)

/* Packed F16 (internal.h: per 16 elements, [element l][row k] halfs).
 * Decode keeps f16_tile's per-pair recipe exactly: lane l of a row's
 * accumulator takes elements 8c + l in order (here a[l], lanes = rows; the
 * 16-element unit brings elements l and l + 8), then hsum8's fixed tree done
 * on 8 vectors at once. 16 accumulators do not fit the 16 registers with
 * their operands, so each row half (8 rows, 16 bytes of every 32-byte unit)
 * runs over a chunk of the group (in L1 for the second half) in turn. */
#define F16_CHUNK 32 /* 16-element units per chunk: 16 KB of the group */
AI void f16_dec_packed(int64_t n, const uint8_t *g, const float *x, float *y)
{
    __m256 A[2][8];
    UNROLL for (int h = 0; h < 2; h++) UNROLL for (int l = 0; l < 8; l++) A[h][l] = _mm256_setzero_ps();
    const int64_t nu = n / 16;
    for (int64_t c0 = 0; c0 < nu; c0 += F16_CHUNK) {
        const int64_t ce = c0 + F16_CHUNK < nu ? c0 + F16_CHUNK : nu;
        UNROLL for (int h = 0; h < 2; h++) {
            __m256 a[8];
            UNROLL for (int l = 0; l < 8; l++) a[l] = A[h][l];
            for (int64_t c = c0; c < ce; c++) {
                const uint8_t *u = g + 512 * c + 16 * h;
                const float *xc = x + 16 * c;
                UNROLL for (int l = 0; l < 8; l++)
                    a[l] = _mm256_fmadd_ps(_mm256_cvtph_ps(lu128(u + 32 * l)), _mm256_set1_ps(xc[l]), a[l]);
                UNROLL for (int l = 0; l < 8; l++)
                    a[l] = _mm256_fmadd_ps(_mm256_cvtph_ps(lu128(u + 32 * (l + 8))), _mm256_set1_ps(xc[l + 8]), a[l]);
            }
            UNROLL for (int l = 0; l < 8; l++) A[h][l] = a[l];
        }
    }
    UNROLL for (int h = 0; h < 2; h++) {
        __m256 *a = A[h];
        UNROLL for (int l = 0; l < 4; l++) a[l] = _mm256_add_ps(a[l], a[l + 4]);
        _mm256_storeu_ps(y + 8 * h, _mm256_add_ps(_mm256_add_ps(a[0], a[2]), _mm256_add_ps(a[1], a[3])));
    }
}

/* One packed F16 group back to 16 rows (row k at dst + k * ds): per 16
 * elements a 16 x 16 transpose of 16-bit values (unpack 16/32/64, lanes). */
void eng__f16_unpack16_avx2(int64_t n, const uint8_t *g, size_t ds, uint8_t *dst)
{
    for (int64_t c = 0; c < n / 16; c++, g += 512) {
        __m256i R[16], A[16], B[4][4], C[2][4][2];
        UNROLL for (int l = 0; l < 16; l++) R[l] = lu(g + 32 * l);
        UNROLL for (int i = 0; i < 8; i++) {
            A[2 * i] = _mm256_unpacklo_epi16(R[2 * i], R[2 * i + 1]);
            A[2 * i + 1] = _mm256_unpackhi_epi16(R[2 * i], R[2 * i + 1]);
        }
        UNROLL for (int j = 0; j < 4; j++) UNROLL for (int h = 0; h < 2; h++) {
            B[j][2 * h] = _mm256_unpacklo_epi32(A[4 * j + h], A[4 * j + 2 + h]);
            B[j][2 * h + 1] = _mm256_unpackhi_epi32(A[4 * j + h], A[4 * j + 2 + h]);
        }
        UNROLL for (int jj = 0; jj < 2; jj++) UNROLL for (int m = 0; m < 4; m++) {
            C[jj][m][0] = _mm256_unpacklo_epi64(B[2 * jj][m], B[2 * jj + 1][m]);
            C[jj][m][1] = _mm256_unpackhi_epi64(B[2 * jj][m], B[2 * jj + 1][m]);
        }
        /* C[jj][m][e]: lane 0 row 2m + e, lane 1 row 8 + 2m + e; elements 8jj.. */
        UNROLL for (int m = 0; m < 4; m++) UNROLL for (int e = 0; e < 2; e++) {
            const int k = 2 * m + e;
            _mm256_storeu_si256((__m256i *)(dst + (size_t)k * ds + 32 * (size_t)c),
                                _mm256_permute2x128_si256(C[0][m][e], C[1][m][e], 0x20));
            _mm256_storeu_si256((__m256i *)(dst + (size_t)(k + 8) * ds + 32 * (size_t)c),
                                _mm256_permute2x128_si256(C[0][m][e], C[1][m][e], 0x31));
        }
    }
}

static void f16_gemv16_packed(int nv, int64_t n, const uint8_t *w, size_t ws, const uint8_t *x,
                              const void *xa, float *y)
{
    (void)nv, (void)ws, (void)xa;
    ENG_ASSERT(n % 16 == 0);
    f16_dec_packed(n, w, (const float *)x, y);
}

/* File layout: the tiles. Packed (n % 16 == 0): decode straight from the
 * groups; prefill unpacks 4 groups at a time (in L2) and runs the tiles. */
static const eng__ukernel f16_uk = {
    .type = ENG_TYPE_F16, .tile = f16_tiles, .tile_mr = MRMAX, .tile_nx = NXMAX,
    .prefill_nx = 4, .strip_groups = 4,
    .gemv16_packed = f16_gemv16_packed, .unpack16 = eng__f16_unpack16_avx2,
};
ENG_GEMM_ENTRIES(f16, f16_uk)

AI __m256 bf16x8(const uint8_t *p)
{
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(lu128(p)), 16));
}

AI float bf16_1(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

AI void bf16_tile(TILE_ARGS)
{
    __m256 acc[MRMAX][NXMAX];
    ZERO_ACC(acc);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 xv[NXMAX];
        UNROLL for (int j = 0; j < NX; j++) xv[j] = bf16x8(x + j * xs + 2 * i);
        UNROLL for (int r = 0; r < MR; r++) {
            __m256 wv = bf16x8(w + r * ws + 2 * i);
            UNROLL for (int j = 0; j < NX; j++) acc[r][j] = _mm256_fmadd_ps(wv, xv[j], acc[r][j]);
        }
    }
    UNROLL for (int r = 0; r < MR; r++) UNROLL for (int j = 0; j < NX; j++) {
        float s = hsum8(acc[r][j]);
        for (int64_t k = i; k < n; k++) s += bf16_1(w + r * ws + 2 * k) * bf16_1(x + j * xs + 2 * k);
        y[j * ys + r] = s;
    }
}
TILE_KERNELS(bf16, BF16)

/* ------------------------------------------------------------------------ */
/* Q4_0, Q5_0 x Q8_0; Q4_1, Q5_1 x Q8_1                                     */
/* ------------------------------------------------------------------------ */

/* The fifth bits of a Q5_0 / Q5_1 block (qh: bit i for element i) as 0x10
 * in byte i, the bytes in the order of the nibbles below (low nibbles are
 * elements 0..15, high ones 16..31). */
AI __m256i fifth_bits(const uint8_t *qh)
{
    uint32_t h;
    memcpy(&h, qh, 4);
    const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, /* qh byte i / 8 */
                                            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x(0x8040201008040201LL); /* bit i % 8 */
    __m256i v = _mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi32((int)h), spread), bit);
    return _mm256_and_si256(_mm256_cmpeq_epi8(v, bit), _mm256_set1_epi8(0x10));
}

/* The legacy 4- and 5-bit quants, one routine: per block the quants as
 * unsigned bytes (nibble, plus 0x10 for a set fifth bit) against the signed
 * activations (vpmaddubsw, then vpmaddwd to int32 lanes: exact), and
 *   Q4_0 / Q5_0: less 8 / 16 times the activations' sum (the quants'
 *                offset), lanes scaled by d_w * d_x into the accumulator;
 *   Q4_1 / Q5_1: no offset; the block's m_w * s_x (s_x: the Q8_1 block's
 *                d_x * its sum) added to a per-pair float.
 * One recipe per (row, x) pair whatever MR / NX. */
AI void legacy_tile(const int T, TILE_ARGS)
{
    const bool five = T == ENG_TYPE_Q5_0 || T == ENG_TYPE_Q5_1, one = T == ENG_TYPE_Q4_1 || T == ENG_TYPE_Q5_1;
    const int wb = T == ENG_TYPE_Q4_0 ? 18 : T == ENG_TYPE_Q4_1 ? 20 : T == ENG_TYPE_Q5_0 ? 22 : 24;
    const int qo = wb - 16, xb = one ? 36 : 34, xo = one ? 4 : 2; /* quants at qo, qh at qo - 4 */
    const __m256i ones = _mm256_set1_epi16(1), m4 = _mm256_set1_epi8(0xf),
                  offset = _mm256_set1_epi8(T == ENG_TYPE_Q4_0 ? 8 : 16);
    __m256 acc[MRMAX][NXMAX];
    float ms[MRMAX][NXMAX];
    ZERO_ACC(acc);
    UNROLL for (int r = 0; r < MR; r++) UNROLL for (int j = 0; j < NX; j++) ms[r][j] = 0.0f;
    for (int64_t b = 0; b < n / 32; b++) {
        __m256i wq[MRMAX], xq[NXMAX], cx[NXMAX];
        __m256 dw[MRMAX], dx[NXMAX];
        float mw[MRMAX], sx[NXMAX];
        UNROLL for (int r = 0; r < MR; r++) {
            const uint8_t *p = w + r * ws + (size_t)wb * b;
            __m128i t = lu128(p + qo);
            wq[r] = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(t, 4), t), m4);
            if (five) wq[r] = _mm256_or_si256(wq[r], fifth_bits(p + qo - 4));
            dw[r] = _mm256_set1_ps(ldh(p));
            if (one) mw[r] = ldh(p + 2);
        }
        UNROLL for (int j = 0; j < NX; j++) {
            const uint8_t *p = x + j * xs + (size_t)xb * b;
            xq[j] = lu(p + xo);
            if (!one) cx[j] = _mm256_maddubs_epi16(offset, xq[j]);
            dx[j] = _mm256_set1_ps(ldh(p));
            if (one) sx[j] = ldh(p + 2);
        }
        UNROLL for (int r = 0; r < MR; r++) UNROLL for (int j = 0; j < NX; j++) {
            __m256i p16 = _mm256_maddubs_epi16(wq[r], xq[j]);
            if (!one) p16 = _mm256_sub_epi16(p16, cx[j]);
            __m256 f = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
            acc[r][j] = _mm256_fmadd_ps(f, _mm256_mul_ps(dw[r], dx[j]), acc[r][j]);
            if (one) ms[r][j] += mw[r] * sx[j];
        }
    }
    UNROLL for (int r = 0; r < MR; r++) UNROLL for (int j = 0; j < NX; j++) y[j * ys + r] =
        one ? hsum8(acc[r][j]) + ms[r][j] : hsum8(acc[r][j]);
}
AI void q4_0_tile(TILE_ARGS) { legacy_tile(ENG_TYPE_Q4_0, MR, NX, n, w, ws, x, xs, y, ys); }
AI void q4_1_tile(TILE_ARGS) { legacy_tile(ENG_TYPE_Q4_1, MR, NX, n, w, ws, x, xs, y, ys); }
AI void q5_0_tile(TILE_ARGS) { legacy_tile(ENG_TYPE_Q5_0, MR, NX, n, w, ws, x, xs, y, ys); }
AI void q5_1_tile(TILE_ARGS) { legacy_tile(ENG_TYPE_Q5_1, MR, NX, n, w, ws, x, xs, y, ys); }
TILE_KERNELS(q4_0, Q4_0)
TILE_KERNELS(q4_1, Q4_1)
TILE_KERNELS(q5_0, Q5_0)
TILE_KERNELS(q5_1, Q5_1)

/* ------------------------------------------------------------------------ */
/* Q5_K x Q8_K                                                              */
/* ------------------------------------------------------------------------ */

/* One unpacked Q5_K superblock. */
typedef struct {
    uint8_t q[256] __attribute__((aligned(32))); /* quants, 0..63 */
    __m256i sc[8];  /* per 32-element chunk: int16 multipliers for madd */
    __m256i mins;   /* int16 x16 multiplying Q8_K bsums */
    float d, dmin;
} kunp;

AI void k4_scales(const uint8_t *s, int *sc, int *m)
{
    for (int j = 0; j < 4; j++) {
        sc[j] = s[j] & 63;
        m[j] = s[j + 4] & 63;
        sc[j + 4] = (s[j + 8] & 0xf) | ((s[j] >> 6) << 4);
        m[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
    }
}

AI void kunp_scales_q45(kunp *u, const uint8_t *a)
{
    int sc[8], m[8];
    k4_scales(a + 4, sc, m);
    for (int s = 0; s < 8; s++) u->sc[s] = _mm256_set1_epi16((short)sc[s]);
    u->mins = _mm256_setr_epi16((short)m[0], (short)m[0], (short)m[1], (short)m[1], (short)m[2],
                                (short)m[2], (short)m[3], (short)m[3], (short)m[4], (short)m[4],
                                (short)m[5], (short)m[5], (short)m[6], (short)m[6], (short)m[7],
                                (short)m[7]);
    u->d = ldh(a);
    u->dmin = ldh(a + 2);
}

AI void unpack_q5_k(kunp *u, const uint8_t *a)
{
    const __m256i m4 = _mm256_set1_epi8(0xf), one = _mm256_set1_epi8(1);
    __m256i qh = lu(a + 16);
    for (int g = 0; g < 4; g++) {
        __m256i v = lu(a + 48 + 32 * g);
        __m256i h0 = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * g), one);
        __m256i h1 = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * g + 1), one);
        __m256i lo = _mm256_or_si256(_mm256_and_si256(v, m4), _mm256_slli_epi16(h0, 4));
        __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v, 4), m4), _mm256_slli_epi16(h1, 4));
        _mm256_store_si256((__m256i *)(u->q + 64 * g), lo);
        _mm256_store_si256((__m256i *)(u->q + 64 * g + 32), hi);
    }
    kunp_scales_q45(u, a);
}

/* Integer part of one superblock for one (row, x) pair: sum over chunks of
 * madd(maddubs(q, x), scale). */
AI __m256i kdot(const kunp *u, const uint8_t *xb)
{
    __m256i isum = _mm256_setzero_si256();
    UNROLL for (int s = 0; s < 8; s++) {
        __m256i p = _mm256_maddubs_epi16(_mm256_load_si256((const __m256i *)(u->q + 32 * s)),
                                         lu(xb + 4 + 32 * s));
        isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p, u->sc[s]));
    }
    return isum;
}

AI void q5_k_tile(TILE_ARGS)
{
    __m256 acc[MRMAX][NXMAX];
    ZERO_ACC(acc);
    kunp u[MRMAX];
    for (int64_t b = 0; b < n / 256; b++) {
        UNROLL for (int r = 0; r < MR; r++) unpack_q5_k(&u[r], w + r * ws + 176 * b);
        UNROLL for (int j = 0; j < NX; j++) {
            const uint8_t *xb = x + j * xs + 292 * b;
            float dxs;
            memcpy(&dxs, xb, 4);
            __m256 dx = _mm256_set1_ps(dxs);
            __m256i bs = lu(xb + 260);
            UNROLL for (int r = 0; r < MR; r++) {
                __m256i isum = kdot(&u[r], xb);
                __m256i ms = _mm256_madd_epi16(bs, u[r].mins);
                acc[r][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(_mm256_set1_ps(u[r].d), dx),
                                            acc[r][j]);
                acc[r][j] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(ms), _mm256_mul_ps(_mm256_set1_ps(u[r].dmin), dx),
                                             acc[r][j]);
            }
        }
    }
    UNROLL for (int r = 0; r < MR; r++) UNROLL for (int j = 0; j < NX; j++) y[j * ys + r] = hsum8(acc[r][j]);
}
TILE_KERNELS(q5_k, Q5_K)

/* ------------------------------------------------------------------------ */
/* Q8_0, Q4_K, Q6_K: the packed-layout kernels (without VNNI)               */
/* ------------------------------------------------------------------------ */

#define PK_VNNI 0
/* their prefill strips on expanded weights (quant_avx2_wide.h) */
#define PK_WIDE(NAME) &NAME##_w_uk
static const eng__ukernel pk_q8_0_w_uk, pk_q4_k_w_uk, pk_q6_k_w_uk;
#include "quant_avx2_pk.h"
#include "quant_avx2_wide.h"

/* ------------------------------------------------------------------------ */
/* Activation quantizers (bit-identical to the scalar from_float)           */
/* ------------------------------------------------------------------------ */

AI float hmax8(__m256 v)
{
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

AI void st_h(uint8_t *p, float f)
{
    uint16_t h = _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
    memcpy(p, &h, 2);
}

/* 32 floats -> 32 int8 (x * id, round half even); returns the int32 sum. */
AI int q8_32(const float *src, float id, uint8_t *dst)
{
    const __m256 mul = _mm256_set1_ps(id);
    __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(src), mul));
    __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(src + 8), mul));
    __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(src + 16), mul));
    __m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(src + 24), mul));
    __m256i s = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
    __m256i p01 = _mm256_packs_epi32(i0, i1), p23 = _mm256_packs_epi32(i2, i3);
    __m256i p = _mm256_packs_epi16(p01, p23);
    p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)dst, p);
    return _mm_cvtsi128_si32(s4);
}

AI float amax32(const float *src)
{
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m = _mm256_andnot_ps(sign, _mm256_loadu_ps(src));
    m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(src + 8)));
    m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(src + 16)));
    m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(src + 24)));
    return hmax8(m);
}

static void q8_0_act(const float *src, void *dst, int64_t n)
{
    uint8_t *b = dst;
    for (int64_t i = 0; i < n / 32; i++, b += 34, src += 32) {
        float amax = amax32(src);
        float d = amax / 127.0f;
        float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        st_h(b, d);
        q8_32(src, id, b + 2);
    }
}

static void q8_1_act(const float *src, void *dst, int64_t n)
{
    uint8_t *b = dst;
    for (int64_t i = 0; i < n / 32; i++, b += 36, src += 32) {
        float amax = amax32(src);
        float d = amax / 127.0f;
        float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        int sum = q8_32(src, id, b + 4);
        st_h(b, d);
        st_h(b + 2, d * (float)sum);
    }
}

static void q8_k_act(const float *src, void *dst, int64_t n)
{
    uint8_t *b = dst;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t i = 0; i < n / 256; i++, b += 292, src += 256) {
        __m256 m = _mm256_setzero_ps();
        for (int k = 0; k < 32; k++) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(src + 8 * k)));
        float amax = hmax8(m);
        if (amax == 0.0f) {
            memset(b, 0, 292);
            continue;
        }
        /* first element whose |x| is the maximum */
        float max = 0.0f;
        __m256 am = _mm256_set1_ps(amax);
        for (int k = 0; k < 32; k++) {
            __m256 v = _mm256_andnot_ps(sign, _mm256_loadu_ps(src + 8 * k));
            int msk = _mm256_movemask_ps(_mm256_cmp_ps(v, am, _CMP_EQ_OQ));
            if (msk) {
                max = src[8 * k + __builtin_ctz((unsigned)msk)];
                break;
            }
        }
        float iscale = -127.0f / max;
        const __m256 mul = _mm256_set1_ps(iscale);
        const __m256i c127 = _mm256_set1_epi32(127);
        for (int k = 0; k < 8; k++) {
            const float *s = src + 32 * k;
            __m256i i0 = _mm256_min_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(s), mul)), c127);
            __m256i i1 = _mm256_min_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(s + 8), mul)), c127);
            __m256i i2 = _mm256_min_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(s + 16), mul)), c127);
            __m256i i3 = _mm256_min_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(s + 24), mul)), c127);
            __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
            p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256((__m256i *)(b + 4 + 32 * k), p);
        }
        const int8_t *qs = (const int8_t *)(b + 4);
        for (int j = 0; j < 16; j++) {
            __m128i v = _mm_cvtepi8_epi16(_mm_loadl_epi64((const __m128i *)(qs + 16 * j)));
            __m128i v2 = _mm_cvtepi8_epi16(_mm_loadl_epi64((const __m128i *)(qs + 16 * j + 8)));
            __m128i s = _mm_madd_epi16(_mm_add_epi16(v, v2), _mm_set1_epi16(1));
            s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
            s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
            int16_t s16 = (int16_t)_mm_cvtsi128_si32(s);
            memcpy(b + 260 + 2 * j, &s16, 2);
        }
        float d = 1.0f / iscale;
        memcpy(b, &d, 4);
    }
}

static void bf16_act(const float *src, void *dst, int64_t n)
{
    uint16_t *o = dst;
    const __m256i absm = _mm256_set1_epi32(0x7fffffff), inf = _mm256_set1_epi32(0x7f800000),
                  r7 = _mm256_set1_epi32(0x7fff), one = _mm256_set1_epi32(1),
                  q = _mm256_set1_epi32(0x40);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i u = _mm256_castps_si256(_mm256_loadu_ps(src + i));
        __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, absm), inf);
        __m256i rnd = _mm256_add_epi32(u, _mm256_add_epi32(r7, _mm256_and_si256(_mm256_srli_epi32(u, 16), one)));
        rnd = _mm256_srli_epi32(rnd, 16);
        __m256i qn = _mm256_or_si256(_mm256_srli_epi32(u, 16), q);
        __m256i v = _mm256_blendv_epi8(rnd, qn, nan);
        __m128i p = _mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        _mm_storeu_si128((__m128i *)(o + i), p);
    }
    for (; i < n; i++) o[i] = eng__fp32_to_bf16(src[i]);
}

/* The avx2 table; vnni: the packed-layout kernels from quant_avx2vnni.c
 * (the CPU has AVX-VNNI), else from the body below. */
void eng__quant_avx2_init(eng__kernels *k, bool vnni)
{
    f32_install(k);
    f16_install(k);
    bf16_install(k);
    q4_0_install(k);
    q4_1_install(k);
    q5_0_install(k);
    q5_1_install(k);
    q5_k_install(k);
    if (vnni) eng__quant_avx2vnni_install(k);
    else pk_install(k);
    for (int t = 0; t < ENG_TYPE_COUNT; t++) {
        const eng__type_info *ti = eng__type(t);
        if (!ti || !k->vec_dot[t]) continue;
        switch (ti->vec_type) {
        case ENG_TYPE_Q8_0: k->quantize_act[t] = q8_0_act; break;
        case ENG_TYPE_Q8_1: k->quantize_act[t] = q8_1_act; break;
        case ENG_TYPE_Q8_K: k->quantize_act[t] = q8_k_act; break;
        case ENG_TYPE_BF16: k->quantize_act[t] = bf16_act; break;
        default: break;
        }
    }
}
