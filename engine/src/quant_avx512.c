/*
 * quant_avx512.c - AVX-512 (F/BW/VL/DQ) + VNNI + BF16 micro-kernels: tiles,
 * 16-row decode, strip packing, filled into gemm.h tables; gemm.c decides
 * how a product is cut into them.
 *
 * Contract: gemm == vec_dot bit for bit for every (row, x) pair, whatever nr,
 * nx and the row's position (vec_dot is gemm with nr = nx = 1). Each type
 * fixes one per-pair float recipe; only integer work (exact) is rearranged
 * between the code paths.
 *
 * F32 / F16 / BF16: a register tile TILE(MR, NX) in which each pair owns a
 *   16-lane accumulator updated in a fixed order, then a fixed horizontal sum.
 *
 * Q8_0, Q4_0, Q4_K, Q5_K, Q6_K: float lanes are weight rows. Per pair the
 *   recipe is a scalar chain over blocks (superblocks):
 *   s = fma((float)isum_b, dw_b * dx_b, s) (K-quants: plus the mins term),
 *   with isum_b the exact integer block dot. Two paths compute it:
 *   - decode (nx < 4): 16 rows at a time straight from the weights; each
 *     row's integer lanes are reduced in registers (shuffle/add tree) so row k
 *     lands in lane k; one cvt + fma per 16 rows and block;
 *   - prefill: a strip of 16/32 rows is transposed once per call into
 *     [block][dword][16 rows] (unsigned quants, scales as lane vectors), and
 *     a microkernel broadcasts 4 activation bytes against 16 rows:
 *     vpdpbusd on 2 x 16 rows x 6 (Q8_0/Q4_0) or 4 (K-quants) x rows.
 *   Signs: the unsigned vpdpbusd operand is w ^ 0x80 (Q8_0, minus
 *   128 * sum(x_b)) or the quant itself (Q4_0 minus 8 * sum(x_b); K-quants,
 *   Q6_K minus 32 * sum(sc * bsum)); x stays signed.
 *
 * gemm_packed (F16, Q8_0, Q4_K, Q6_K; weights repacked at load, layouts in
 *   internal.h): the same per-pair recipes. Decode broadcasts a dword of x
 *   against the same dword of 16 rows, so the integer sums (F16: the 16
 *   per-element-class accumulators) are already in row lanes; prefill feeds
 *   the packed groups to the tiles above (Q8_0 reads them as they are).
 */
#include "gemm.h"

#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

void eng__quant_avx512_init(eng__kernels *k);

#define AI static inline __attribute__((always_inline))
#define UNROLL _Pragma("GCC unroll 8")
#define MRMAX 4
#define NXMAX 4

AI float ldh(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

AI __m256i lu(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }
AI __m128i lu128(const void *p) { return _mm_loadu_si128((const __m128i *)p); }

/* Fixed-order horizontal sum (same sequence for every caller). */
AI float hsum16(__m512 v)
{
    __m256 a = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* NAME##_tiles: the register-tile routine NAME##_tile(MR, NX, ...)
 * instantiated for every constant MR <= MRMAX, NX <= NXMAX (gemm.h, a). */
#define TC(NAME, A, B) NAME##_tile(A, B, n, w, ws, x, xs, y, ys)
#define TILE_DISPATCH(NAME)                                                                  \
    static void NAME##_tiles(int mr, int nj, int64_t n, const uint8_t *w, size_t ws,         \
                             const uint8_t *x, size_t xs, float *y, size_t ys)               \
    {                                                                                        \
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
        default: TC(NAME, 4, 4); break;                                                      \
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
        _mm512_setzero_ps()

#define STORE_ACC(acc)                                                                       \
    UNROLL for (int r = 0; r < MR; r++) UNROLL for (int j = 0; j < NX; j++) y[j * ys + r] =  \
        hsum16(acc[r][j])

/* ------------------------------------------------------------------------ */
/* F32 / F16 / BF16                                                         */
/* ------------------------------------------------------------------------ */

AI void f32_step(const int MR, const int NX, __m512 acc[MRMAX][NXMAX], const uint8_t *w, size_t ws,
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
    __m512 acc[MRMAX][NXMAX];
    ZERO_ACC(acc);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) f32_step(MR, NX, acc, w, ws, x, xs, i, 0xffff);
    if (i < n) f32_step(MR, NX, acc, w, ws, x, xs, i, (__mmask16)((1u << (n - i)) - 1));
    STORE_ACC(acc);
}
TILE_KERNELS(f32, F32)

AI void f16_step(const int MR, const int NX, __m512 acc[MRMAX][NXMAX], const uint8_t *w, size_t ws,
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
    __m512 acc[MRMAX][NXMAX];
    ZERO_ACC(acc);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) f16_step(MR, NX, acc, w, ws, x, xs, i, 0xffff);
    if (i < n) f16_step(MR, NX, acc, w, ws, x, xs, i, (__mmask16)((1u << (n - i)) - 1));
    STORE_ACC(acc);
}
TILE_DISPATCH(f16)

/* Packed F16 (internal.h): per 16 elements, [element l][row k] halfs.
 * Decode keeps f16_tile's per-pair recipe exactly: for each row, lane l of
 * its accumulator takes elements 16c + l in order (here A[l], lanes = rows),
 * then the same fixed tree as hsum16, done on the 16 vectors at once. */
AI void f16_dec_packed(int64_t n, const uint8_t *g, const float *x, float *y)
{
    __m512 A[16];
    UNROLL for (int l = 0; l < 16; l++) A[l] = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16, g += 512)
        UNROLL for (int l = 0; l < 16; l++)
            A[l] = _mm512_fmadd_ps(_mm512_cvtph_ps(lu(g + 32 * l)), _mm512_set1_ps(x[i + l]), A[l]);
    UNROLL for (int l = 0; l < 8; l++) A[l] = _mm512_add_ps(A[l], A[l + 8]);
    UNROLL for (int l = 0; l < 4; l++) A[l] = _mm512_add_ps(A[l], A[l + 4]);
    UNROLL for (int l = 0; l < 2; l++) A[l] = _mm512_add_ps(A[l], A[l + 2]);
    _mm512_storeu_ps(y, _mm512_add_ps(A[0], A[1]));
}

static void f16_gemv16_packed(int nv, int64_t n, const uint8_t *w, size_t ws, const uint8_t *x,
                              const void *xa, float *y)
{
    (void)nv, (void)ws, (void)xa;
    ENG_ASSERT(n % 16 == 0);
    f16_dec_packed(n, w, (const float *)x, y);
}

/* Packed F16 (n % 16 == 0, ws = 2n): decode straight from the groups;
 * prefill (nx >= 4) unpacks 4 groups at a time into a buffer the L2 holds
 * and runs the file-layout tiles on it (fewer groups per pass would stream
 * the activations once more each). */
static const eng__ukernel f16_uk = {
    .type = ENG_TYPE_F16, .tile = f16_tiles, .tile_mr = MRMAX, .tile_nx = NXMAX,
    .prefill_nx = 4, .strip_groups = 4,
    .gemv16_packed = f16_gemv16_packed, .unpack16 = eng__f16_unpack16_avx2,
};
ENG_GEMM_ENTRIES(f16, f16_uk)

AI void bf16_step(const int MR, const int NX, __m512 acc[MRMAX][NXMAX], const uint8_t *w, size_t ws,
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
    __m512 acc[MRMAX][NXMAX];
    ZERO_ACC(acc);
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) bf16_step(MR, NX, acc, w, ws, x, xs, i, 0xffffffffu);
    if (i < n) bf16_step(MR, NX, acc, w, ws, x, xs, i, (__mmask32)((1ull << (n - i)) - 1));
    STORE_ACC(acc);
}
TILE_KERNELS(bf16, BF16)

/* ------------------------------------------------------------------------ */
/* Q8_0 x Q8_0, Q4_0 x Q8_0                                                 */
/* ------------------------------------------------------------------------ */
/*
 * Per-pair arithmetic (the same in every path, so gemm == vec_dot bit for bit):
 *   s = 0; for each block b: s = fma((float)isum_b, dw_b * dx_b, s); y = s
 * where isum_b is the exact integer block dot. The integer part is computed
 * as vpdpbusd(u, x) - C * sum(x_b) with u the unsigned weight operand
 * (Q8_0: w ^ 0x80, C = 128; Q4_0: the nibble, C = 8) and x the signed Q8_0
 * activation quants; C * sum(x_b) and dx_b come from a small per-call table.
 *
 * Lanes of the float accumulators are weight rows (16 per zmm):
 *  - decode (few x rows): each row's 8 vpdpbusd lanes are reduced in
 *    registers to one lane per row (shuffle/add tree), then one cvt + fma per
 *    16 rows and block;
 *  - prefill: the weight rows of a 16/32-row strip are transposed once per
 *    call into the packed Q8_0 group layout ([block][dword g][row], then
 *    the 16 fp16 scales), and the microkernel broadcasts 4 activation bytes
 *    against 16 rows at a time: 2 x 16 rows x 6 x rows of int32
 *    accumulators, one cvt + fma per (16 rows, x row, block). Repacked
 *    Q8_0 weights are already in that layout.
 */

typedef struct {
    int32_t corr; /* -C * sum of the block's x quants */
    float dx;
} xblk;

enum { Q_Q8_0 = 0, Q_Q4_0 = 1 };

AI int qbsz(const int T) { return T == Q_Q8_0 ? 34 : 18; }

static void fill_xblk(const int T, int64_t nb, const uint8_t *x, size_t xs, int64_t nx, xblk *o)
{
    const __m256i ones = _mm256_set1_epi8(1);
    const int c = T == Q_Q8_0 ? 128 : 8;
    for (int64_t j = 0; j < nx; j++) {
        const uint8_t *xr = x + (size_t)j * xs;
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *p = xr + 34 * b;
            /* sum of signed bytes: dpbusd(1, x) then a horizontal add (exact) */
            __m256i s = _mm256_dpbusd_epi32(_mm256_setzero_si256(), ones, lu(p + 2));
            __m128i t = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
            t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4e));
            t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xb1));
            o[j * nb + b].corr = -c * _mm_cvtsi128_si32(t);
            o[j * nb + b].dx = ldh(p);
        }
    }
}

/* Unsigned weight operand of one row's block at p (32 bytes). */
AI __m256i wq1(const int T, const uint8_t *p)
{
    if (T == Q_Q8_0) return _mm256_xor_si256(lu(p + 2), _mm256_set1_epi8((char)0x80));
    __m256i t = _mm256_broadcastsi128_si256(lu128(p + 2));
    return _mm256_and_si256(_mm256_srlv_epi64(t, _mm256_setr_epi64x(0, 0, 4, 4)),
                            _mm256_set1_epi8(0xf));
}

/* Pairwise add inside 128-bit lanes (ymm). */
AI __m256i padd8(__m256i a, __m256i b)
{
    __m256 fa = _mm256_castsi256_ps(a), fb = _mm256_castsi256_ps(b);
    return _mm256_add_epi32(_mm256_castps_si256(_mm256_shuffle_ps(fa, fb, 0x88)),
                            _mm256_castps_si256(_mm256_shuffle_ps(fa, fb, 0xdd)));
}

/* Exact block dots of 16 rows (row k at p + off(k)) with one x block, row k in lane k. */
AI __m512i q_dot16(const int T, const uint8_t *p, const size_t *off, size_t ws, const int full,
                   __m256i xv)
{
#define ROWP(k) (p + (full ? (size_t)(k) * ws : off[k]))
    __m256i R[4];
    UNROLL for (int i = 0; i < 4; i++) {
        __m256i P0 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), wq1(T, ROWP(4 * i)), xv);
        __m256i P1 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), wq1(T, ROWP(4 * i + 1)), xv);
        __m256i P2 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), wq1(T, ROWP(4 * i + 2)), xv);
        __m256i P3 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), wq1(T, ROWP(4 * i + 3)), xv);
        R[i] = padd8(padd8(P0, P1), padd8(P2, P3)); /* rows 4i..4i+3: [half 0 | half 1] */
    }
#undef ROWP
    __m256i S0 = _mm256_add_epi32(_mm256_permute2x128_si256(R[0], R[1], 0x20),
                                  _mm256_permute2x128_si256(R[0], R[1], 0x31));
    __m256i S1 = _mm256_add_epi32(_mm256_permute2x128_si256(R[2], R[3], 0x20),
                                  _mm256_permute2x128_si256(R[2], R[3], 0x31));
    return _mm512_inserti64x4(_mm512_castsi256_si512(S0), S1, 1);
}

/* fp16 scales of 16 rows (at p + off(k)) as floats, packed through GPRs. */
AI __m512 q_scales16(const uint8_t *p, const size_t *off, size_t ws, const int full)
{
    uint64_t q[4];
    UNROLL for (int i = 0; i < 4; i++) {
        uint64_t v = 0;
        UNROLL for (int t = 0; t < 4; t++) {
            uint16_t h;
            memcpy(&h, p + (full ? (size_t)(4 * i + t) * ws : off[4 * i + t]), 2);
            v |= (uint64_t)h << (16 * t);
        }
        q[i] = v;
    }
    __m128i a = _mm_insert_epi64(_mm_cvtsi64_si128((long long)q[0]), (long long)q[1], 1);
    __m128i b = _mm_insert_epi64(_mm_cvtsi64_si128((long long)q[2]), (long long)q[3], 1);
    return _mm512_cvtph_ps(_mm256_set_m128i(b, a));
}

/* Decode streams 16 rows at once, which the hardware prefetchers follow
 * badly (16 interleaved streams). K-quants / Q4_0: while one 16-row group
 * (16 * ws contiguous bytes) is processed, prefetch the next group linearly,
 * chunk by chunk (Q8_0 does better with an in-row prefetch, see q_dec16).
 * Into L2, not L1: the L1 has too few miss buffers for a burst of a group's
 * lines, and prefetches to it were dropped; L2 prefetches doubled the
 * single-core streaming rate of Q4_K / Q6_K decode (bench-kernels -t 1 -D).
 * Prefetches never fault, so running past the matrix is harmless. */
AI void pf_chunk(const uint8_t *next, size_t chunk, int64_t b)
{
    const uint8_t *q = next + chunk * (size_t)b;
    for (size_t o = 0; o < chunk; o += 64) _mm_prefetch((const char *)(q + o), _MM_HINT_T1);
}

/* Decode: 16 rows (nv valid; the others recompute row 0 and are not stored)
 * x one x row, all blocks. */
AI void q_dec16(const int T, const int full, int nv, int64_t nb, const uint8_t *w, size_t ws,
                const uint8_t *x, const xblk *xb, float *y)
{
    const int bs = qbsz(T);
    size_t off[16];
    for (int k = 0; k < 16; k++) off[k] = k < nv ? (size_t)k * ws : 0;
    const __mmask16 vm = (__mmask16)((1u << nv) - 1);
    __m512 acc = _mm512_setzero_ps();
    const uint8_t *next = w + 16 * ws;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *p = w + (size_t)bs * (size_t)b;
        if (T == Q_Q8_0) {
            /* in-row prefetch into L2, every other block: a line of each row
             * 16 blocks ahead */
            if (!(b & 1))
                UNROLL for (int k = 0; k < 16; k++)
                    _mm_prefetch((const char *)(p + (full ? (size_t)k * ws : off[k]) + 16 * bs), _MM_HINT_T1);
        } else
            pf_chunk(next, 16 * (size_t)bs, b);
        __m512i F = q_dot16(T, p, off, ws, full, lu(x + 34 * b + 2));
        F = _mm512_add_epi32(F, _mm512_set1_epi32(xb[b].corr));
        __m512 dw = q_scales16(p, off, ws, full);
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(F), _mm512_mul_ps(dw, _mm512_set1_ps(xb[b].dx)),
                              acc);
    }
    _mm512_mask_storeu_ps(y, vm, acc);
}

/* Prefill: pack 16 rows (nv valid) of all blocks: per block 8 zmm of
 * transposed unsigned quants (dword g of each row) + 1 zmm of float scales. */
/* The 32 bytes at p + off[k] of 16 rows, transposed: out[g] lane k = dword g
 * of row k (gathers are slow here: ~18 cycles each). */
AI void tr16x8(const uint8_t *p, const size_t *off, __m512i out[8])
{
    __m512i v[8], t[8], u[8];
    UNROLL for (int i = 0; i < 8; i++) {
        int ra = i < 4 ? i : i + 4, rb = ra + 4;
        v[i] = _mm512_inserti64x4(_mm512_castsi256_si512(lu(p + off[ra])), lu(p + off[rb]), 1);
    }
    UNROLL for (int h = 0; h < 2; h++) {
        __m512i *vv = v + 4 * h, *tt = t + 4 * h, *uu = u + 4 * h;
        tt[0] = _mm512_unpacklo_epi32(vv[0], vv[1]);
        tt[1] = _mm512_unpackhi_epi32(vv[0], vv[1]);
        tt[2] = _mm512_unpacklo_epi32(vv[2], vv[3]);
        tt[3] = _mm512_unpackhi_epi32(vv[2], vv[3]);
        uu[0] = _mm512_unpacklo_epi64(tt[0], tt[2]); /* dwords 0 | 4 */
        uu[1] = _mm512_unpackhi_epi64(tt[0], tt[2]); /* 1 | 5 */
        uu[2] = _mm512_unpacklo_epi64(tt[1], tt[3]); /* 2 | 6 */
        uu[3] = _mm512_unpackhi_epi64(tt[1], tt[3]); /* 3 | 7 */
    }
    UNROLL for (int g = 0; g < 4; g++) {
        out[g] = _mm512_shuffle_i32x4(u[g], u[g + 4], 0x88);
        out[g + 4] = _mm512_shuffle_i32x4(u[g], u[g + 4], 0xdd);
    }
}

/* Prefill: pack 16 rows (nv valid; the others repeat row 0 and are never
 * stored) of all blocks into the packed Q8_0 group layout (internal.h: per
 * block 8 x 64 bytes of unsigned quants [dword][row], then 16 fp16 scales),
 * which is what the prefill tile reads; Q4_0's nibbles are unpacked to bytes
 * on the way, so both types share the tile. */
AI void q_pack16(const int T, int nv, int64_t nb, const uint8_t *w, size_t ws, uint8_t *dst)
{
    const int bs = qbsz(T);
    size_t off[16];
    for (int k = 0; k < 16; k++) off[k] = k < nv ? (size_t)k * ws : 0;
    const __m512i idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10,
                                                             11, 12, 13, 14, 15),
                                           _mm512_set1_epi32((int)ws));
    const __mmask16 vm = (__mmask16)((1u << nv) - 1);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *p = w + (size_t)bs * (size_t)b;
        uint8_t *d = dst + 544 * (size_t)b;
        if (T == Q_Q8_0) {
            __m512i o[8];
            tr16x8(p + 2, off, o);
            UNROLL for (int g = 0; g < 8; g++)
                _mm512_storeu_si512(d + 64 * g, _mm512_xor_si512(o[g], _mm512_set1_epi8((char)0x80)));
        } else {
            UNROLL for (int g = 0; g < 4; g++) {
                __m512i v = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), vm, idx,
                                                        p + 2 + 4 * g, 1);
                _mm512_storeu_si512(d + 64 * g, _mm512_and_si512(v, _mm512_set1_epi8(0xf)));
                _mm512_storeu_si512(d + 64 * (g + 4), _mm512_and_si512(_mm512_srli_epi16(v, 4),
                                                                      _mm512_set1_epi8(0xf)));
            }
        }
        for (int k = 0; k < 16; k++) memcpy(d + 512 + 2 * k, p + off[k], 2);
    }
}

/* MRV groups of 16 packed rows (gp[v], Q8_0 group layout) times NXJ x rows. */
AI void q_pre_tile(const int MRV, const int NXJ, int64_t nb, const uint8_t *const *gp,
                   const uint8_t *x, size_t xs, const xblk *xb, int64_t xbs, float *y,
                   size_t ys, __mmask16 m_last)
{
    __m512 acc[2][6];
    UNROLL for (int v = 0; v < MRV; v++) UNROLL for (int j = 0; j < NXJ; j++) acc[v][j] =
        _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *pb[2];
        UNROLL for (int v = 0; v < MRV; v++) pb[v] = gp[v] + 544 * (size_t)b;
        __m512i ia[2][6];
        UNROLL for (int j = 0; j < NXJ; j++) {
            __m512i c = _mm512_set1_epi32(xb[j * xbs + b].corr);
            UNROLL for (int v = 0; v < MRV; v++) ia[v][j] = c;
        }
        const uint8_t *xq = x + 34 * b + 2;
        UNROLL for (int g = 0; g < 8; g++) {
            __m512i wv[2];
            UNROLL for (int v = 0; v < MRV; v++) wv[v] = _mm512_loadu_si512(pb[v] + 64 * g);
            UNROLL for (int j = 0; j < NXJ; j++) {
                int32_t xd;
                memcpy(&xd, xq + j * xs + 4 * g, 4);
                __m512i xv = _mm512_set1_epi32(xd);
                UNROLL for (int v = 0; v < MRV; v++) ia[v][j] =
                    _mm512_dpbusd_epi32(ia[v][j], wv[v], xv);
            }
        }
        __m512 dw[2];
        UNROLL for (int v = 0; v < MRV; v++) dw[v] = _mm512_cvtph_ps(lu(pb[v] + 512));
        UNROLL for (int j = 0; j < NXJ; j++) {
            __m512 dx = _mm512_set1_ps(xb[j * xbs + b].dx);
            UNROLL for (int v = 0; v < MRV; v++)
                acc[v][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia[v][j]), _mm512_mul_ps(dw[v], dx),
                                            acc[v][j]);
        }
    }
    UNROLL for (int j = 0; j < NXJ; j++) UNROLL for (int v = 0; v < MRV; v++) {
        if (v == MRV - 1) _mm512_mask_storeu_ps(y + j * ys + 16 * v, m_last, acc[v][j]);
        else _mm512_storeu_ps(y + j * ys + 16 * v, acc[v][j]);
    }
}

/* gemm.h strip_tile of Q8_0 and Q4_0 (their strips share the packed Q8_0
 * group layout): 1 or 2 groups x 1..6 activation rows. */
static void q_strip_tile(int groups, int nx, int nv_last, int64_t n, const uint8_t *const *g,
                         const uint8_t *x, size_t xs, const void *xa, float *y, size_t ys)
{
    const int64_t nb = n / 32;
    const __mmask16 m = (__mmask16)((1u << nv_last) - 1);
#define QT(V, J) q_pre_tile(V, J, nb, g, x, xs, xa, nb, y, ys, m)
    switch (groups * 8 + nx) {
    case 9: QT(1, 1); break;
    case 10: QT(1, 2); break;
    case 11: QT(1, 3); break;
    case 12: QT(1, 4); break;
    case 13: QT(1, 5); break;
    case 14: QT(1, 6); break;
    case 17: QT(2, 1); break;
    case 18: QT(2, 2); break;
    case 19: QT(2, 3); break;
    case 20: QT(2, 4); break;
    case 21: QT(2, 5); break;
    default: QT(2, 6); break;
    }
#undef QT
}

/* Decode from a packed Q8_0 group: 16 rows x one x row; the group is one
 * linear stream, each block 8 vpdpbusd (dword g of x broadcast against dword
 * g of the 16 rows) straight into row lanes: no shuffles, no gathers. */
AI void q_dec_packed(int64_t nb, const uint8_t *g, const uint8_t *x, const xblk *xb, float *y)
{
    __m512 acc = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++, g += 544) {
        const uint8_t *xq = x + 34 * b + 2;
        __m512i a0 = _mm512_set1_epi32(xb[b].corr), a1 = _mm512_setzero_si512();
        UNROLL for (int k = 0; k < 8; k += 2) {
            int32_t d0, d1;
            memcpy(&d0, xq + 4 * k, 4);
            memcpy(&d1, xq + 4 * k + 4, 4);
            a0 = _mm512_dpbusd_epi32(a0, _mm512_loadu_si512(g + 64 * k), _mm512_set1_epi32(d0));
            a1 = _mm512_dpbusd_epi32(a1, _mm512_loadu_si512(g + 64 * k + 64), _mm512_set1_epi32(d1));
        }
        __m512 dw = _mm512_cvtph_ps(lu(g + 512));
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(a0, a1)),
                              _mm512_mul_ps(dw, _mm512_set1_ps(xb[b].dx)), acc);
    }
    _mm512_storeu_ps(y, acc);
}

/* gemm.h micro-kernels of Q8_0 (T = Q_Q8_0) and Q4_0: the x side (xblk per
 * row and block), decode of 16 file-layout rows, the prefill strip pack.
 * Prefill runs the tile on pairs of 16-row groups (then one); packed Q8_0
 * groups are read as they are, file-layout rows are packed into a two-group
 * buffer first. */
AI void q_xaux(const int T, int64_t n, const uint8_t *x, size_t xs, int64_t nx, void *out)
{
    fill_xblk(T, n / 32, x, xs, nx, out);
}

static size_t q_strip_bytes(int64_t n, bool packed) { return packed ? 0 : (size_t)(n / 32) * 544; }

AI const uint8_t *q_strip_pack(const int T, int v, int nv, bool packed, int64_t n,
                               const uint8_t *w, size_t ws, uint8_t *buf)
{
    if (packed) return w;
    uint8_t *dst = buf + (size_t)v * q_strip_bytes(n, false);
    q_pack16(T, nv, n / 32, w, ws, dst);
    return dst;
}

#define Q_KERNELS(NAME, T)                                                                   \
    static void NAME##_xaux(int64_t n, const uint8_t *x, size_t xs, int64_t nx, void *out)   \
    {                                                                                        \
        q_xaux(T, n, x, xs, nx, out);                                                        \
    }                                                                                        \
    static void NAME##_gemv16(int nv, int64_t n, const uint8_t *w, size_t ws,                \
                              const uint8_t *x, const void *xa, float *y)                    \
    {                                                                                        \
        if (nv == 16) q_dec16(T, 1, 16, n / 32, w, ws, x, xa, y);                            \
        else q_dec16(T, 0, nv, n / 32, w, ws, x, xa, y);                                     \
    }                                                                                        \
    static const uint8_t *NAME##_strip_pack(int v, int groups, int nv, bool packed,          \
                                            int64_t n, const uint8_t *w, size_t ws,          \
                                            uint8_t *buf)                                    \
    {                                                                                        \
        (void)groups;                                                                        \
        return q_strip_pack(T, v, nv, packed, n, w, ws, buf);                                \
    }
Q_KERNELS(q8_0, Q_Q8_0)
Q_KERNELS(q4_0, Q_Q4_0)

static void q8_0_gemv16_packed(int nv, int64_t n, const uint8_t *w, size_t ws, const uint8_t *x,
                               const void *xa, float *y)
{
    (void)nv, (void)ws;
    q_dec_packed(n / 32, w, x, xa, y);
}

static const eng__ukernel q8_0_uk = {
    .type = ENG_TYPE_Q8_0, .xaux_block_bytes = sizeof(xblk), .xaux = q8_0_xaux,
    .gemv16 = q8_0_gemv16, .prefill_nx = 4, .strip_bytes = q_strip_bytes,
    .strip_pack = q8_0_strip_pack, .strip_tile = q_strip_tile, .strip_groups = 2, .strip_nx = 6,
    .gemv16_packed = q8_0_gemv16_packed, .strip_packed = true,
};
ENG_GEMM_ENTRIES(q8_0, q8_0_uk)

static const eng__ukernel q4_0_uk = {
    .type = ENG_TYPE_Q4_0, .xaux_block_bytes = sizeof(xblk), .xaux = q4_0_xaux,
    .gemv16 = q4_0_gemv16, .prefill_nx = 4, .strip_bytes = q_strip_bytes,
    .strip_pack = q4_0_strip_pack, .strip_tile = q_strip_tile, .strip_groups = 2, .strip_nx = 6,
};
ENG_GEMM_ENTRIES(q4_0, q4_0_uk)

/* ------------------------------------------------------------------------ */
/* K-quants x Q8_K                                                          */
/* ------------------------------------------------------------------------ */
/*
 * Per-pair arithmetic (every path): for each superblock, with exact integers
 *   Q4_K/Q5_K: isum = sum_s sc_s * dot_s, msum = sum_s m_s * (bsum_2s + bsum_2s+1)
 *              s = fma(isum, d*dx, s); s = fnmadd(msum, dmin*dx, s)
 *   Q6_K:      isum = sum_s sc_s * dot_s(q - 32)
 *              s = fma(isum, d*dx, s)
 * and y = s. As for Q8_0, float lanes are weight rows: decode reduces each
 * row's integer lanes in registers (16 rows at a time), prefill transposes a
 * strip of rows once per call and broadcasts activation bytes.
 */

enum { K_Q4 = 0, K_Q5 = 1, K_Q6 = 2 };

/* acc += vpdpwssd(a, broadcast of the dword at p), with the broadcast
 * embedded in the instruction's memory operand: a plain load, where the
 * compiler would otherwise spend a shuffle per broadcast. */
AI __m256i dpwssd_bc(__m256i acc, __m256i a, const int32_t *p)
{
    __asm__("vpdpwssd %2%{1to8%}, %1, %0" : "+v"(acc) : "v"(a), "m"(*p));
    return acc;
}

AI int kbsz(const int T) { return T == K_Q4 ? 144 : T == K_Q5 ? 176 : 210; }

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

/* One row's superblock: integer partial lanes of isum (8 x int32) and, for
 * Q4_K/Q5_K, of msum (4 x int32). xq = Q8_K quants, bs = Q8_K bsums
 * (Q4/Q5: the 8 sums of 32 as int16). */
AI void k_row(const int T, const uint8_t *a, const uint8_t *xq, const __m256i *xr,
              const int32_t *tb, __m256i *isum)
{
    const __m256i m4 = _mm256_set1_epi8(0xf);
    __m256i acc = _mm256_setzero_si256();
    if (T != K_Q6) {
        /* tb[16 * s] = (sc_s, sc_s) as an int16 pair, for this row */
        __m256i qh = T == K_Q5 ? lu(a + 16) : _mm256_setzero_si256();
        const uint8_t *qs = a + (T == K_Q5 ? 48 : 16);
        __m256i pa[4];
        UNROLL for (int g = 0; g < 4; g++) {
            __m256i v = lu(qs + 32 * g);
            __m256i lo = _mm256_and_si256(v, m4);
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
            if (T == K_Q5) {
                const __m256i c16 = _mm256_set1_epi8(16);
                lo = _mm256_mask_add_epi8(lo, _mm256_test_epi8_mask(qh, _mm256_set1_epi8((char)(1 << (2 * g)))), lo, c16);
                hi = _mm256_mask_add_epi8(hi, _mm256_test_epi8_mask(qh, _mm256_set1_epi8((char)(1 << (2 * g + 1)))), hi, c16);
            }
            /* independent chains: vpdpwssd latency, not throughput, would bound a row */
            pa[g] = dpwssd_bc(_mm256_setzero_si256(), _mm256_maddubs_epi16(lo, xr[2 * g]),
                              &tb[16 * (2 * g)]);
            pa[g] = dpwssd_bc(pa[g], _mm256_maddubs_epi16(hi, xr[2 * g + 1]),
                              &tb[16 * (2 * g + 1)]);
        }
        acc = _mm256_add_epi32(_mm256_add_epi32(pa[0], pa[1]), _mm256_add_epi32(pa[2], pa[3]));
    } else {
        const __m256i m3 = _mm256_set1_epi8(3);
        __m256i sc16 = _mm256_cvtepi8_epi16(lu128(a + 192));
        __m256i pa[4];
        UNROLL for (int h = 0; h < 2; h++) {
            __m256i L0 = lu(a + 64 * h), L1 = lu(a + 64 * h + 32), H = lu(a + 128 + 32 * h);
            __m256i q[4];
            /* c0f ? nibble : high bits (vpternlog bit select) */
            const __m256i c30 = _mm256_set1_epi8(0x30);
            q[0] = _mm256_ternarylogic_epi32(m4, L0, _mm256_and_si256(_mm256_slli_epi16(H, 4), c30), 0xca);
            q[1] = _mm256_ternarylogic_epi32(m4, L1, _mm256_and_si256(_mm256_slli_epi16(H, 2), c30), 0xca);
            q[2] = _mm256_ternarylogic_epi32(m4, _mm256_srli_epi16(L0, 4), _mm256_and_si256(H, c30), 0xca);
            q[3] = _mm256_ternarylogic_epi32(m4, _mm256_srli_epi16(L1, 4), _mm256_and_si256(_mm256_srli_epi16(H, 2), c30), 0xca);
            (void)m3;
            UNROLL for (int qd = 0; qd < 4; qd++) {
                int s0 = 8 * h + 2 * qd;
                __m256i sv = _mm256_permutexvar_epi16(
                    _mm256_setr_m128i(_mm_set1_epi16((short)s0), _mm_set1_epi16((short)(s0 + 1))), sc16);
                __m256i pr = _mm256_maddubs_epi16(q[qd], xr[4 * h + qd]);
                pa[qd] = h == 0 ? _mm256_madd_epi16(pr, sv) : _mm256_dpwssd_epi32(pa[qd], pr, sv);
            }
        }
        acc = _mm256_add_epi32(_mm256_add_epi32(pa[0], pa[1]), _mm256_add_epi32(pa[2], pa[3]));
        /* - 32 * sum_s sc_s * bsum_s */
        __m256i corr = _mm256_madd_epi16(sc16, lu(xq + 256));
        acc = _mm256_sub_epi32(acc, _mm256_slli_epi32(corr, 5));
        (void)tb;
    }
    *isum = acc;
}

/* Q8_K bsums as the 8 sums of 32 (int16). */
AI __m128i k_bs32(const uint8_t *xb)
{
    __m256i s = _mm256_madd_epi16(lu(xb + 260), _mm256_set1_epi16(1));
    return _mm_packs_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
}

/* vpshufb controls: + 4i to every byte of dword i of each 128-bit lane
 * (0x80 bytes stay >= 0x80, i.e. zero) */
AI __m512i k_lane4(void)
{
    return _mm512_setr_epi32(0, 0x04040404, 0x08080808, 0x0c0c0c0c, 0, 0x04040404, 0x08080808,
                             0x0c0c0c0c, 0, 0x04040404, 0x08080808, 0x0c0c0c0c, 0, 0x04040404,
                             0x08080808, 0x0c0c0c0c);
}

/* Q4_K / Q5_K headers of 16 rows, lanes = rows (H[c] = dword c of each row's
 * 16-byte header d|dmin, scales[12]): the 6-bit scales as bytes of each
 * lane's dword (sl: sub-blocks 0..3, sh: 4..7) and the mins (ml, mh). */
AI void k4_hdr(const __m512i H[4], __m512i *sl, __m512i *sh, __m512i *ml, __m512i *mh)
{
    const __m512i c3f = _mm512_set1_epi8(0x3f), c0f = _mm512_set1_epi8(0xf), c30 = _mm512_set1_epi8(0x30);
    *sl = _mm512_and_si512(H[1], c3f);
    *ml = _mm512_and_si512(H[2], c3f);
    /* (a & 0x0f) | (b & 0x30): vpternlog bit select (c0f ? a : b) */
    *sh = _mm512_ternarylogic_epi32(c0f, H[3], _mm512_and_si512(_mm512_srli_epi32(H[1], 2), c30), 0xca);
    *mh = _mm512_ternarylogic_epi32(c0f, _mm512_srli_epi32(H[3], 4),
                                    _mm512_and_si512(_mm512_srli_epi32(H[2], 2), c30), 0xca);
}

/* msum = sum_s m_s * (sum of sub-block s's 32 x quants) of 16 rows, in lanes:
 * mins as int16 pairs (m_0, m_1), (m_2, m_3) of each half times the matching
 * pairs of Q8_K block sums. */
AI __m512i k4_msum(__m512i ml, __m512i mh, const uint8_t *xb)
{
    const __m512i lane = k_lane4();
    const __m512i p01 = _mm512_add_epi8(_mm512_set1_epi32((int)0x80018000u), lane),
                  p23 = _mm512_add_epi8(_mm512_set1_epi32((int)0x80038002u), lane);
    int32_t bp[4] __attribute__((aligned(16)));
    _mm_store_si128((__m128i *)bp, k_bs32(xb));
    __m512i Mv = _mm512_dpwssd_epi32(_mm512_setzero_si512(), _mm512_shuffle_epi8(ml, p01), _mm512_set1_epi32(bp[0]));
    Mv = _mm512_dpwssd_epi32(Mv, _mm512_shuffle_epi8(ml, p23), _mm512_set1_epi32(bp[1]));
    Mv = _mm512_dpwssd_epi32(Mv, _mm512_shuffle_epi8(mh, p01), _mm512_set1_epi32(bp[2]));
    return _mm512_dpwssd_epi32(Mv, _mm512_shuffle_epi8(mh, p23), _mm512_set1_epi32(bp[3]));
}

/* fp16 pair (d, dmin) of 16 rows -> floats; Q6_K: d only (from the dword at 206). */
AI void k_scales16(const int T, const uint8_t *p, __m512i idx, __mmask16 vm, __m512 *d,
                   __m512 *dmin)
{
    if (T == K_Q6) {
        __m512i g = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), vm, idx, p + 206, 1);
        *d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(g, 16)));
        *dmin = _mm512_setzero_ps();
    } else {
        __m512i g = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), vm, idx, p, 1);
        *d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(g));
        *dmin = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(g, 16)));
    }
}

AI __m512i idx16(size_t ws)
{
    return _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                              _mm512_set1_epi32((int)ws));
}

/* Decode: 16 rows (nv valid; others recompute row 0, not stored) x one x row. */
AI void k_dec16(const int T, const int full, int nv, int64_t nb, const uint8_t *w, size_t ws,
                const uint8_t *x, float *y)
{
    const int bsz = kbsz(T);
    size_t off[16];
    for (int k = 0; k < 16; k++) off[k] = k < nv ? (size_t)k * ws : 0;
    const __mmask16 vm = (__mmask16)((1u << nv) - 1);
    const __m512i idx = idx16(ws);
    __m512 acc = _mm512_setzero_ps();
    const uint8_t *next = w + 16 * ws;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *p = w + (size_t)bsz * (size_t)b, *xb = x + 292 * b;
        pf_chunk(next, 16 * (size_t)bsz, b);
        /* Q4/Q5: the 16-byte headers (d, dmin, scales[12]) of the 16 rows,
         * transposed so lanes = rows: H[0] = d | dmin << 16, H[1..3] = scale
         * bytes; the 6-bit scales / mins are then decoded for all rows at once,
         * and msum = sum_s m_s * bs32_s is done right here, in lanes. */
        int32_t tbl[8][16] __attribute__((aligned(64)));
        __m512i Mv = _mm512_setzero_si512(), H[4];
        if (T != K_Q6) {
            __m512i A[4];
            UNROLL for (int c = 0; c < 4; c++) {
#define HROW(k) lu128(p + (full ? (size_t)(k) * ws : off[k]))
                __m512i v = _mm512_castsi128_si512(HROW(c));
                v = _mm512_inserti32x4(v, HROW(c + 4), 1);
                v = _mm512_inserti32x4(v, HROW(c + 8), 2);
                A[c] = _mm512_inserti32x4(v, HROW(c + 12), 3);
#undef HROW
            }
            __m512i t0 = _mm512_unpacklo_epi32(A[0], A[1]), t1 = _mm512_unpackhi_epi32(A[0], A[1]);
            __m512i t2 = _mm512_unpacklo_epi32(A[2], A[3]), t3 = _mm512_unpackhi_epi32(A[2], A[3]);
            H[0] = _mm512_unpacklo_epi64(t0, t2);
            H[1] = _mm512_unpackhi_epi64(t0, t2);
            H[2] = _mm512_unpacklo_epi64(t1, t3);
            H[3] = _mm512_unpackhi_epi64(t1, t3);
            __m512i sl, sh, ml, mh;
            k4_hdr(H, &sl, &sh, &ml, &mh);
            const __m512i lane = k_lane4();
            /* byte t of each dword -> int16 pair (b_t, b_t) */
            UNROLL for (int t = 0; t < 4; t++) {
                const __m512i ctl = _mm512_add_epi8(
                    _mm512_set1_epi32((int)(0x80008000u | (uint32_t)t | ((uint32_t)t << 16))), lane);
                _mm512_store_si512(tbl[t], _mm512_shuffle_epi8(sl, ctl));
                _mm512_store_si512(tbl[t + 4], _mm512_shuffle_epi8(sh, ctl));
            }
            Mv = k4_msum(ml, mh, xb);
        }
        __m256i R[4], xr[8];
        UNROLL for (int g = 0; g < 8; g++) xr[g] = lu(xb + 4 + 32 * g);
        UNROLL for (int i = 0; i < 4; i++) {
            __m256i P[4];
            UNROLL for (int t = 0; t < 4; t++)
                k_row(T, p + (full ? (size_t)(4 * i + t) * ws : off[4 * i + t]), xb + 4, xr, &tbl[0][4 * i + t], &P[t]);
            R[i] = padd8(padd8(P[0], P[1]), padd8(P[2], P[3]));
        }
        __m256i S0 = _mm256_add_epi32(_mm256_permute2x128_si256(R[0], R[1], 0x20),
                                      _mm256_permute2x128_si256(R[0], R[1], 0x31));
        __m256i S1 = _mm256_add_epi32(_mm256_permute2x128_si256(R[2], R[3], 0x20),
                                      _mm256_permute2x128_si256(R[2], R[3], 0x31));
        __m512i I = _mm512_inserti64x4(_mm512_castsi256_si512(S0), S1, 1);
        float dxs;
        memcpy(&dxs, xb, 4);
        __m512 dx = _mm512_set1_ps(dxs), d, dmin;
        if (T == K_Q6) k_scales16(T, p, idx, vm, &d, &dmin);
        else {
            d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(H[0]));
            dmin = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(H[0], 16)));
        }
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(I), _mm512_mul_ps(d, dx), acc);
        if (T != K_Q6) acc = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(Mv), _mm512_mul_ps(dmin, dx), acc);
    }
    _mm512_mask_storeu_ps(y, vm, acc);
}

/* Sub-block scale byte t (0..3) of each lane's dword, as int32 lanes:
 * unsigned (Q4_K's 6-bit scales) or sign-extended (Q6_K's int8). */
AI __m512i byte_u32(__m512i v, int t)
{
    return _mm512_and_si512(_mm512_srli_epi32(v, 8 * t), _mm512_set1_epi32(0xff));
}
AI __m512i byte_s32(__m512i v, int t) { return _mm512_srai_epi32(_mm512_slli_epi32(v, 24 - 8 * t), 24); }

AI __m512i bcx(const uint8_t *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

/* Decode from a packed Q4_K / Q6_K group (layouts: internal.h): 16 rows x
 * one x row. Dword g of x is broadcast against dword g of the 16 rows, so the
 * integer sums land in row lanes directly; the group is one linear stream. */
AI void k_dec_packed(const int T, int64_t nb, const uint8_t *g, const uint8_t *x, float *y)
{
    const __m512i m4 = _mm512_set1_epi8(0xf);
    const size_t gbs = T == K_Q4 ? 2304 : 3360;
    __m512 acc = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++, g += gbs) {
        const uint8_t *xb = x + 292 * (size_t)b, *xq = xb + 4;
        float dxs;
        memcpy(&dxs, xb, 4);
        const __m512 dx = _mm512_set1_ps(dxs);
        __m512i isum = _mm512_setzero_si512();
        if (T == K_Q4) {
            __m512i H[4], sl, sh, ml, mh;
            UNROLL for (int c = 0; c < 4; c++) H[c] = _mm512_loadu_si512(g + 64 * c);
            k4_hdr(H, &sl, &sh, &ml, &mh);
            UNROLL for (int grp = 0; grp < 4; grp++) {
                __m512i lo = _mm512_setzero_si512(), hi = _mm512_setzero_si512();
                const uint8_t *q = g + 256 + 512 * grp, *xg = xq + 64 * grp;
                UNROLL for (int j = 0; j < 8; j++) {
                    __m512i v = _mm512_loadu_si512(q + 64 * j);
                    lo = _mm512_dpbusd_epi32(lo, _mm512_and_si512(v, m4), bcx(xg + 4 * j));
                    hi = _mm512_dpbusd_epi32(hi, _mm512_and_si512(_mm512_srli_epi16(v, 4), m4),
                                             bcx(xg + 32 + 4 * j));
                }
                const int s0 = 2 * grp, s1 = 2 * grp + 1;
                isum = _mm512_add_epi32(isum, _mm512_mullo_epi32(lo, byte_u32(s0 < 4 ? sl : sh, s0 & 3)));
                isum = _mm512_add_epi32(isum, _mm512_mullo_epi32(hi, byte_u32(s1 < 4 ? sl : sh, s1 & 3)));
            }
            __m512 d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(H[0]));
            __m512 dmin = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(H[0], 16)));
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(d, dx), acc);
            acc = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(k4_msum(ml, mh, xb)), _mm512_mul_ps(dmin, dx), acc);
        } else {
            const __m512i c30 = _mm512_set1_epi8(0x30);
            __m512i S[4];
            UNROLL for (int c = 0; c < 4; c++) S[c] = _mm512_loadu_si512(g + 64 * c);
            UNROLL for (int h = 0; h < 2; h++) {
                /* ia[qd][e]: sub-block 8h + 2qd + e */
                __m512i ia[4][2];
                UNROLL for (int qd = 0; qd < 4; qd++) ia[qd][0] = ia[qd][1] = _mm512_setzero_si512();
                UNROLL for (int t = 0; t < 8; t++) {
                    const uint8_t *q3 = g + 256 + 1536 * h + 192 * t;
                    __m512i L0 = _mm512_loadu_si512(q3), L1 = _mm512_loadu_si512(q3 + 64);
                    __m512i Hh = _mm512_loadu_si512(q3 + 128);
                    __m512i q[4];
                    /* m4 ? nibble : high bits (vpternlog bit select) */
                    q[0] = _mm512_ternarylogic_epi32(m4, L0, _mm512_and_si512(_mm512_slli_epi16(Hh, 4), c30), 0xca);
                    q[1] = _mm512_ternarylogic_epi32(m4, L1, _mm512_and_si512(_mm512_slli_epi16(Hh, 2), c30), 0xca);
                    q[2] = _mm512_ternarylogic_epi32(m4, _mm512_srli_epi16(L0, 4), _mm512_and_si512(Hh, c30), 0xca);
                    q[3] = _mm512_ternarylogic_epi32(m4, _mm512_srli_epi16(L1, 4),
                                                     _mm512_and_si512(_mm512_srli_epi16(Hh, 2), c30), 0xca);
                    UNROLL for (int qd = 0; qd < 4; qd++) ia[qd][t >= 4] = _mm512_dpbusd_epi32(
                        ia[qd][t >= 4], q[qd], bcx(xq + 128 * h + 32 * qd + 4 * t));
                }
                UNROLL for (int qd = 0; qd < 4; qd++) UNROLL for (int e = 0; e < 2; e++) {
                    const int sb = 8 * h + 2 * qd + e;
                    isum = _mm512_add_epi32(isum, _mm512_mullo_epi32(ia[qd][e], byte_s32(S[sb / 4], sb & 3)));
                }
            }
            /* - 32 * sum_s sc_s * bsum_s: int16 pairs (sc_4c, sc_4c+2) and
             * (sc_4c+1, sc_4c+3) of each dword against the matching bsums */
            int16_t bs[16];
            memcpy(bs, xb + 260, 32);
            __m512i C = _mm512_setzero_si512();
            UNROLL for (int c = 0; c < 4; c++) {
                __m512i ev = _mm512_srai_epi16(_mm512_slli_epi16(S[c], 8), 8), od = _mm512_srai_epi16(S[c], 8);
                int32_t pe = (int32_t)((uint32_t)(uint16_t)bs[4 * c] | ((uint32_t)(uint16_t)bs[4 * c + 2] << 16));
                int32_t po = (int32_t)((uint32_t)(uint16_t)bs[4 * c + 1] | ((uint32_t)(uint16_t)bs[4 * c + 3] << 16));
                C = _mm512_dpwssd_epi32(C, ev, _mm512_set1_epi32(pe));
                C = _mm512_dpwssd_epi32(C, od, _mm512_set1_epi32(po));
            }
            isum = _mm512_sub_epi32(isum, _mm512_slli_epi32(C, 5));
            __m512 d = _mm512_cvtph_ps(lu(g + 3328));
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(d, dx), acc);
        }
    }
    _mm512_storeu_ps(y, acc);
}

/*
 * Prefill pack of 16 rows, per superblock (KP zmm):
 *   Q[64]: dword g (elements 4g..4g+3, unsigned quants) of the 16 rows
 *   SC[NSB]: int32 sub-block scales (NSB = 8, Q6_K 16)
 *   MN[8]: int16 pairs for a vpdpwssd with the Q8_K bsum pairs:
 *          Q4/Q5 (m_s, m_s) -> msum; Q6 (-32 sc_2k, -32 sc_2k+1) -> added to isum
 *   D, DMIN: floats
 */
AI int k_nsb(const int T) { return T == K_Q6 ? 16 : 8; }
AI int k_kp(const int T) { return 64 + k_nsb(T) + 8 + 2; }

/* P: w is a packed group (internal.h) instead of rows in the file layout. */
AI void k_pack16(const int T, const int P, int nv, int64_t nb, const uint8_t *w, size_t ws,
                 __m512i *dst, size_t dstride)
{
    const int bsz = kbsz(T), nsb = k_nsb(T);
    const __m512i idx = idx16(ws);
    const __mmask16 vm = (__mmask16)((1u << nv) - 1);
    const __m512i m4 = _mm512_set1_epi8(0xf), m3 = _mm512_set1_epi8(3);
    size_t off[16];
    for (int k = 0; k < 16; k++) off[k] = k < nv ? (size_t)k * ws : 0;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *p = w + (size_t)bsz * (size_t)b * (P ? 16 : 1);
        __m512i *Q = dst + (size_t)b * dstride, *SC = Q + 64, *MN = SC + nsb;
        __m512 *D = (__m512 *)(MN + 8);
        if (T != K_Q6) {
            const uint8_t *qs = p + (T == K_Q5 ? 48 : 16);
            __m512i hb[8];
            if (T == K_Q5) tr16x8(p + 16, off, hb);
            UNROLL for (int grp = 0; grp < 4; grp++) {
                __m512i o[8];
                if (P) UNROLL for (int l = 0; l < 8; l++) o[l] = _mm512_loadu_si512(p + 256 + 512 * grp + 64 * l);
                else tr16x8(qs + 32 * grp, off, o);
                UNROLL for (int l = 0; l < 8; l++) {
                    __m512i lo = _mm512_and_si512(o[l], m4), hi = _mm512_and_si512(_mm512_srli_epi16(o[l], 4), m4);
                    if (T == K_Q5) {
                        const __m512i one = _mm512_set1_epi8(1);
                        lo = _mm512_or_si512(lo, _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(hb[l], 2 * grp), one), 4));
                        hi = _mm512_or_si512(hi, _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(hb[l], 2 * grp + 1), one), 4));
                    }
                    _mm512_store_si512(Q + 16 * grp + l, lo);
                    _mm512_store_si512(Q + 16 * grp + 8 + l, hi);
                }
            }
            int32_t sc[8][16], mn[8][16];
            for (int k = 0; k < 16; k++) {
                uint64_t s8, m8;
                uint8_t hdr[16];
                if (P) for (int c = 0; c < 4; c++) memcpy(hdr + 4 * c, p + 64 * c + 4 * k, 4);
                k4_scales(P ? hdr + 4 : p + (size_t)(k < nv ? k : 0) * ws + 4, &s8, &m8);
                for (int s = 0; s < 8; s++) {
                    sc[s][k] = (int32_t)((s8 >> (8 * s)) & 0xff);
                    mn[s][k] = (int32_t)((m8 >> (8 * s)) & 0xff) * 0x10001;
                }
            }
            for (int s = 0; s < 8; s++) {
                _mm512_store_si512(SC + s, _mm512_loadu_si512(sc[s]));
                _mm512_store_si512(MN + s, _mm512_loadu_si512(mn[s]));
            }
        } else {
            UNROLL for (int h = 0; h < 2; h++) {
                __m512i L0[8], L1[8], Hh[8];
                if (P) UNROLL for (int t = 0; t < 8; t++) {
                    L0[t] = _mm512_loadu_si512(p + 256 + 1536 * h + 192 * t);
                    L1[t] = _mm512_loadu_si512(p + 256 + 1536 * h + 192 * t + 64);
                    Hh[t] = _mm512_loadu_si512(p + 256 + 1536 * h + 192 * t + 128);
                } else {
                    tr16x8(p + 64 * h, off, L0);
                    tr16x8(p + 64 * h + 32, off, L1);
                    tr16x8(p + 128 + 32 * h, off, Hh);
                }
                UNROLL for (int t = 0; t < 8; t++) {
                    __m512i H = Hh[t];
                    Q[32 * h + t] = _mm512_or_si512(_mm512_and_si512(L0[t], m4), _mm512_slli_epi16(_mm512_and_si512(H, m3), 4));
                    Q[32 * h + 8 + t] = _mm512_or_si512(_mm512_and_si512(L1[t], m4), _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(H, 2), m3), 4));
                    Q[32 * h + 16 + t] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(L0[t], 4), m4), _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(H, 4), m3), 4));
                    Q[32 * h + 24 + t] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(L1[t], 4), m4), _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(H, 6), m3), 4));
                }
            }
            int32_t sc[16][16], mn[8][16];
            for (int k = 0; k < 16; k++) {
                int8_t s8[16];
                if (P) for (int c = 0; c < 4; c++) memcpy(s8 + 4 * c, p + 64 * c + 4 * k, 4);
                else memcpy(s8, p + (size_t)(k < nv ? k : 0) * ws + 192, 16);
                for (int s = 0; s < 16; s++) sc[s][k] = s8[s];
                for (int s = 0; s < 8; s++)
                    mn[s][k] = (int32_t)(((uint32_t)(uint16_t)(int16_t)(-32 * s8[2 * s])) |
                                         ((uint32_t)(uint16_t)(int16_t)(-32 * s8[2 * s + 1]) << 16));
            }
            for (int s = 0; s < 16; s++) _mm512_store_si512(SC + s, _mm512_loadu_si512(sc[s]));
            for (int s = 0; s < 8; s++) _mm512_store_si512(MN + s, _mm512_loadu_si512(mn[s]));
        }
        __m512 d, dmin;
        if (!P) k_scales16(T, p, idx, vm, &d, &dmin);
        else if (T == K_Q6) {
            d = _mm512_cvtph_ps(lu(p + 3328));
            dmin = _mm512_setzero_ps();
        } else {
            __m512i H0 = _mm512_loadu_si512(p);
            d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(H0));
            dmin = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(H0, 16)));
        }
        _mm512_store_ps((float *)D, d);
        _mm512_store_ps((float *)(D + 1), dmin);
    }
}

AI __m512i bc4(const uint8_t *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

/* MRV groups of 16 packed rows (group v at gp[v], block stride KP * MRV zmm:
 * the groups of a strip are interleaved block by block) x NXJ x rows. */
AI void k_pre_tile(const int T, const int MRV, const int NXJ, int64_t nb, const uint8_t *const *gp,
                   const uint8_t *x, size_t xs, float *y, size_t ys, __mmask16 m_last)
{
    const int nsb = k_nsb(T), dps = 64 / nsb, kp = k_kp(T);
    __m512 acc[2][4];
    UNROLL for (int v = 0; v < MRV; v++) UNROLL for (int j = 0; j < NXJ; j++) acc[v][j] =
        _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const __m512i *pb[2];
        UNROLL for (int v = 0; v < MRV; v++) pb[v] = (const __m512i *)gp[v] + (size_t)b * kp * MRV;
        const uint8_t *xb = x + 292 * b;
        __m512i is[2][4], ia[2][4];
        UNROLL for (int v = 0; v < MRV; v++) UNROLL for (int j = 0; j < NXJ; j++) is[v][j] =
            _mm512_setzero_si512();
        for (int s = 0; s < nsb; s++) {
            UNROLL for (int v = 0; v < MRV; v++) UNROLL for (int j = 0; j < NXJ; j++) ia[v][j] =
                _mm512_setzero_si512();
            UNROLL for (int g = 0; g < dps; g++) {
                __m512i wv[2];
                UNROLL for (int v = 0; v < MRV; v++) wv[v] = _mm512_load_si512(pb[v] + dps * s + g);
                UNROLL for (int j = 0; j < NXJ; j++) {
                    __m512i xv = bc4(xb + j * xs + 4 + 4 * (dps * s + g));
                    UNROLL for (int v = 0; v < MRV; v++) ia[v][j] = _mm512_dpbusd_epi32(ia[v][j], wv[v], xv);
                }
            }
            UNROLL for (int v = 0; v < MRV; v++) {
                __m512i sc = _mm512_load_si512(pb[v] + 64 + s);
                UNROLL for (int j = 0; j < NXJ; j++) is[v][j] =
                    _mm512_add_epi32(is[v][j], _mm512_mullo_epi32(ia[v][j], sc));
            }
        }
        UNROLL for (int v = 0; v < MRV; v++) UNROLL for (int j = 0; j < NXJ; j++) ia[v][j] =
            _mm512_setzero_si512();
        UNROLL for (int k = 0; k < 8; k++) UNROLL for (int j = 0; j < NXJ; j++) {
            __m512i bv = bc4(xb + j * xs + 260 + 4 * k);
            UNROLL for (int v = 0; v < MRV; v++) ia[v][j] =
                _mm512_dpwssd_epi32(ia[v][j], _mm512_load_si512(pb[v] + 64 + nsb + k), bv);
        }
        UNROLL for (int j = 0; j < NXJ; j++) {
            float dxs;
            memcpy(&dxs, xb + j * xs, 4);
            __m512 dx = _mm512_set1_ps(dxs);
            UNROLL for (int v = 0; v < MRV; v++) {
                const __m512 *D = (const __m512 *)(pb[v] + 64 + nsb + 8);
                if (T == K_Q6) {
                    acc[v][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(is[v][j], ia[v][j])),
                                                _mm512_mul_ps(D[0], dx), acc[v][j]);
                } else {
                    acc[v][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is[v][j]), _mm512_mul_ps(D[0], dx), acc[v][j]);
                    acc[v][j] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(ia[v][j]), _mm512_mul_ps(D[1], dx), acc[v][j]);
                }
            }
        }
    }
    UNROLL for (int j = 0; j < NXJ; j++) UNROLL for (int v = 0; v < MRV; v++) {
        if (v == MRV - 1) _mm512_mask_storeu_ps(y + j * ys + 16 * v, m_last, acc[v][j]);
        else _mm512_storeu_ps(y + j * ys + 16 * v, acc[v][j]);
    }
}

/* gemm.h micro-kernels of the K-quants (T = K_Q4, K_Q5, K_Q6): decode of 16
 * file-layout rows (or a packed Q4_K / Q6_K group) and the prefill strips:
 * each group of a strip is transposed into KP zmm per superblock, the
 * strip's groups interleaved block by block, whether it comes from the file
 * layout or from a packed group. */
AI const uint8_t *k_strip_pack(const int T, int v, int groups, int nv, bool packed, int64_t n,
                               const uint8_t *w, size_t ws, uint8_t *buf)
{
    __m512i *dst = (__m512i *)buf + (size_t)k_kp(T) * v;
    if (packed) k_pack16(T, 1, nv, n / 256, w, ws, dst, (size_t)k_kp(T) * groups);
    else k_pack16(T, 0, nv, n / 256, w, ws, dst, (size_t)k_kp(T) * groups);
    return (const uint8_t *)dst;
}

AI void k_strip_tile(const int T, int groups, int nx, int nv_last, int64_t n,
                     const uint8_t *const *g, const uint8_t *x, size_t xs, float *y, size_t ys)
{
    const int64_t nb = n / 256;
    const __mmask16 m = (__mmask16)((1u << nv_last) - 1);
#define KT(V, J) k_pre_tile(T, V, J, nb, g, x, xs, y, ys, m)
    switch (groups * 8 + nx) {
    case 9: KT(1, 1); break;
    case 10: KT(1, 2); break;
    case 11: KT(1, 3); break;
    case 12: KT(1, 4); break;
    case 17: KT(2, 1); break;
    case 18: KT(2, 2); break;
    case 19: KT(2, 3); break;
    default: KT(2, 4); break;
    }
#undef KT
}

#define K_KERNELS(NAME, T)                                                                   \
    static size_t NAME##_strip_bytes(int64_t n, bool packed)                                 \
    {                                                                                        \
        (void)packed;                                                                        \
        return (size_t)(n / 256) * (size_t)k_kp(T) * 64;                                     \
    }                                                                                        \
    static void NAME##_gemv16(int nv, int64_t n, const uint8_t *w, size_t ws,                \
                              const uint8_t *x, const void *xa, float *y)                    \
    {                                                                                        \
        (void)xa;                                                                            \
        if (nv == 16) k_dec16(T, 1, 16, n / 256, w, ws, x, y);                               \
        else k_dec16(T, 0, nv, n / 256, w, ws, x, y);                                        \
    }                                                                                        \
    static const uint8_t *NAME##_strip_pack(int v, int groups, int nv, bool packed,          \
                                            int64_t n, const uint8_t *w, size_t ws,          \
                                            uint8_t *buf)                                    \
    {                                                                                        \
        return k_strip_pack(T, v, groups, nv, packed, n, w, ws, buf);                        \
    }                                                                                        \
    static void NAME##_strip_tile(int groups, int nx, int nv_last, int64_t n,                \
                                  const uint8_t *const *g, const uint8_t *x, size_t xs,      \
                                  const void *xa, float *y, size_t ys)                       \
    {                                                                                        \
        (void)xa;                                                                            \
        k_strip_tile(T, groups, nx, nv_last, n, g, x, xs, y, ys);                            \
    }
K_KERNELS(q4_k, K_Q4)
K_KERNELS(q5_k, K_Q5)
K_KERNELS(q6_k, K_Q6)

static void q4_k_gemv16_packed(int nv, int64_t n, const uint8_t *w, size_t ws, const uint8_t *x,
                               const void *xa, float *y)
{
    (void)nv, (void)ws, (void)xa;
    k_dec_packed(K_Q4, n / 256, w, x, y);
}

static void q6_k_gemv16_packed(int nv, int64_t n, const uint8_t *w, size_t ws, const uint8_t *x,
                               const void *xa, float *y)
{
    (void)nv, (void)ws, (void)xa;
    k_dec_packed(K_Q6, n / 256, w, x, y);
}

/* PACKED: the type's gemv16_packed, or NULL (no packed layout). */
#define K_UKERNEL(NAME, TYPE, PACKED)                                                        \
    static const eng__ukernel NAME##_uk = {                                                  \
        .type = ENG_TYPE_##TYPE, .gemv16 = NAME##_gemv16, .prefill_nx = 4,                   \
        .strip_bytes = NAME##_strip_bytes, .strip_pack = NAME##_strip_pack,                  \
        .strip_tile = NAME##_strip_tile, .strip_groups = 2, .strip_nx = 4,                   \
        .gemv16_packed = PACKED, .strip_packed = true /* k_pack16 reads both */,            \
    };                                                                                       \
    ENG_GEMM_ENTRIES(NAME, NAME##_uk)
K_UKERNEL(q4_k, Q4_K, q4_k_gemv16_packed)
K_UKERNEL(q5_k, Q5_K, NULL)
K_UKERNEL(q6_k, Q6_K, q6_k_gemv16_packed)

void eng__quant_avx512_init(eng__kernels *k)
{
    f32_install(k);
    f16_install(k);
    bf16_install(k);
    q8_0_install(k);
    q4_0_install(k);
    q4_k_install(k);
    q5_k_install(k);
    q6_k_install(k);
    k->attn = eng__attn_avx512;
}
