/*
 * quant_avx2_pk.h - the AVX2 micro-kernels of the packed 16-row layout
 * (internal.h, "Packed weights") for Q8_0, Q4_K and Q6_K: one body compiled
 * twice, by quant_avx2.c (PK_VNNI 0: int8 dots with vpmaddubsw + vpmaddwd)
 * and by quant_avx2vnni.c (PK_VNNI 1, built with -mavxvnni: vpdpbusd on ymm).
 * It defines static kernels and pk_install(k), which puts them in table k.
 *
 * Float lanes are weight rows: a 16-row group is two ymm halves (rows 0..7,
 * 8..15). One routine per type, RUN(NX) over NX activation rows, is decode
 * (NX = 1, gemv16) and the prefill strip tile (NX up to PK_NX) alike; it
 * broadcasts a dword of an activation row against the same dword of 8 rows,
 * so the integer sums land in row lanes with no shuffles.
 *
 * Per-pair recipe (the same in every path and both builds, so gemm ==
 * vec_dot and packed == file layout bit for bit; only exact integer work
 * differs between the builds), with exact integer block / superblock sums:
 *   Q8_0:       s = fma((float)isum_b, dw_b * dx_b, s)
 *   Q4_K:       s = fma((float)isum, d * dx, s); s = fnmadd((float)msum, dmin * dx, s)
 *               isum = sum_s sc_s * dot_s, msum = sum_s m_s * (bsum_2s + bsum_2s+1)
 *   Q6_K:       s = fma((float)isum, d * dx, s), isum = sum_s sc_s * dot_s(q - 32)
 * Signs: packed Q8_0 quants are unsigned (q ^ 0x80). Without VNNI they are
 * flipped back and multiplied as |q| * sign(x, q) (vpmaddubsw cannot take
 * 255 * 127 twice in 16 bits); with VNNI vpdpbusd takes them as they are and
 * the block starts at -128 * sum(x_b). K-quant quants are unsigned already
 * (Q6_K: minus 32 * sum_s sc_s * bsum_s); without VNNI up to 8 (Q4_K) or 2
 * (Q6_K) vpmaddubsw results are summed in 16 bits (no overflow: 8 * 2 * 15 *
 * 128, 2 * 2 * 63 * 128 < 32768) before one vpmaddwd by the scales.
 *
 * File-layout rows (a partial last group, vec_dot, models loaded without
 * repacking) are packed on the fly (8 x 8 dword transposes, the same bytes as
 * eng__pack16): decode a chunk of blocks at a time into a buffer in L1,
 * prefill the whole strip once per call; then the same routine runs.
 */
#ifndef PK_VNNI
#error "define PK_VNNI (0 or 1) before including quant_avx2_pk.h"
#endif

/* The .wide eng__ukernel of the narrow set NAME (gemm.h), or NULL. */
#ifndef PK_WIDE
#define PK_WIDE(NAME) NULL
#endif

#define PKAI static inline __attribute__((always_inline))
#define PKU _Pragma("GCC unroll 8")
/* Most activation rows per strip tile (register budget of 16 ymm). */
#define PK_NX 4
/* Activation rows per strip tile of each type, from llvm-mca -mcpu=znver3
 * (Zen 3; multiply-adds per cycle of the tile loop; more rows spill):
 * Q8_0 4 (18.8, VNNI 54), Q4_K 2 (24.5; VNNI 3: 31), Q6_K 3 (19.4, VNNI 22.6). */
#define PK_Q8_NX 4
#define PK_Q4K_NX (PK_VNNI ? 3 : 2)
#define PK_Q6K_NX 3
/* 16-row groups per prefill strip: the strip stays in L2 while activation
 * rows pass in chunks of PK_NX that stay in L1. */
#define PK_GROUPS 4

PKAI __m256i pk_bc(const uint8_t *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

/* The same, as its own load each time (K-quants): left to itself
 * the compiler keeps the broadcasts of one x dword for both row halves and
 * spills them (32 stores + loads a block, the tiles' bottleneck per
 * llvm-mca -mcpu=znver3); a broadcast load is as cheap as a reload. */
PKAI __m256i pk_bcv(const uint8_t *p)
{
    __m256i r;
    __asm__ volatile("vpbroadcastd %1, %0" : "=x"(r) : "m"(*(const int32_t *)p));
    return r;
}
PKAI __m256i pk_l(const uint8_t *p) { return _mm256_loadu_si256((const __m256i *)p); }
PKAI __m128i pk_l128(const uint8_t *p) { return _mm_loadu_si128((const __m128i *)p); }
PKAI float pk_h(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

/* Q8_0 decode streams each packed group once, from memory: while a block
 * is worked on, the bytes PK_PF ahead of it are prefetched into L2, a line
 * at a time, so the stream's misses overlap however long the block's
 * arithmetic takes (the groups of a product are contiguous, so this runs on
 * into the next group; prefetches never fault, so running past the matrix
 * is harmless). Q4_K / Q6_K decode did no better with it (small-Q4_K_M,
 * bench), so their prefetch distance PK_KPF is 0 (none) unless defined;
 * measuring it again on the TinyLlama shape (4096) was drowned in the noise
 * of a loaded machine. File-layout rows, 16 streams at once, prefetch each
 * row PK_PF_ROW ahead (pk_gather). */
#ifndef PK_PF
#define PK_PF 4096
#endif
#define PK_PF_ROW 576
#ifndef PK_KPF
#define PK_KPF 0
#endif
PKAI void pk_pf(const uint8_t *p, const size_t pf, const size_t bytes)
{
    PKU for (size_t o = 0; o < bytes; o += 64) _mm_prefetch((const char *)(p + pf + o), _MM_HINT_T1);
}

/* Horizontal sum of the int32 lanes. */
PKAI int32_t pk_hsum_i32(__m256i v)
{
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

/* The float accumulators of a tile live in memory (L1), ACC(h, j) = rows
 * 8h..8h+7 against activation row j: they are touched once per block or
 * superblock, and keeping them out of the 16 registers leaves those to the
 * integer sums (the compiler spilled the hot ones otherwise). */
typedef struct {
    _Alignas(32) float v[2][PK_NX][8];
} pk_acc;
#define ACC(h, j) (ac->v[h][j])

PKAI void pk_fma(float *p, __m256 m, __m256 s) { _mm256_store_ps(p, _mm256_fmadd_ps(m, s, _mm256_load_ps(p))); }
PKAI void pk_fnma(float *p, __m256 m, __m256 s) { _mm256_store_ps(p, _mm256_fnmadd_ps(m, s, _mm256_load_ps(p))); }

/* y[j * ys + 0 .. nv) = the two halves of ACC(., j). */
PKAI void pk_store(const int NX, int nv, const pk_acc *ac, float *y, size_t ys)
{
    PKU for (int j = 0; j < NX; j++) {
        if (nv == 16) {
            memcpy(y + j * ys, ACC(0, j), 32);
            memcpy(y + j * ys + 8, ACC(1, j), 32);
        } else {
            float t[16];
            memcpy(t, ACC(0, j), 32);
            memcpy(t + 8, ACC(1, j), 32);
            memcpy(y + j * ys, t, sizeof(float) * (size_t)nv);
        }
    }
}

/* 8 x 8 transpose of dwords: out[t] lane i = dword t of r[i]. */
PKAI void pk_tr8(const __m256i r[8], __m256i out[8])
{
    __m256i t[8], u[8];
    PKU for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    PKU for (int i = 0; i < 2; i++) {
        u[4 * i] = _mm256_unpacklo_epi64(t[4 * i], t[4 * i + 2]);     /* dwords 0 | 4 */
        u[4 * i + 1] = _mm256_unpackhi_epi64(t[4 * i], t[4 * i + 2]); /* 1 | 5 */
        u[4 * i + 2] = _mm256_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]); /* 2 | 6 */
        u[4 * i + 3] = _mm256_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]); /* 3 | 7 */
    }
    PKU for (int i = 0; i < 4; i++) {
        out[i] = _mm256_permute2x128_si256(u[i], u[i + 4], 0x20);
        out[i + 4] = _mm256_permute2x128_si256(u[i], u[i + 4], 0x31);
    }
}

/* The nd dwords (8 or 4) at offset fo of 16 rows (row k's block at rp[k])
 * into the packed [dword t][row] run at dst + us * t, each byte ^ flip. */
PKAI void pk_run(const uint8_t *const *rp, size_t fo, const int nd, uint8_t *dst, size_t us, __m256i flip)
{
    PKU for (int h = 0; h < 2; h++) {
        __m256i r[8], o[8];
        PKU for (int i = 0; i < 8; i++)
            r[i] = nd == 8 ? pk_l(rp[8 * h + i] + fo) : _mm256_zextsi128_si256(pk_l128(rp[8 * h + i] + fo));
        pk_tr8(r, o);
        PKU for (int t = 0; t < nd; t++) _mm256_storeu_si256((__m256i *)(dst + us * t + 32 * h), _mm256_xor_si256(o[t], flip));
    }
}

/* Blocks b0 .. b0 + nbc of 16 file-layout rows (nv valid; the others repeat
 * row 0 and are never stored) of type T (block size bs) into the packed
 * layout at dst: the SIMD twin of eng__pack16, the same bytes. */
static void pk_gather(int type, size_t bs, int nv, const uint8_t *w, size_t ws, int64_t b0,
                      int64_t nbc, uint8_t *dst)
{
    const __m256i z = _mm256_setzero_si256();
    const size_t gbs = 16 * bs;
    for (int64_t b = b0; b < b0 + nbc; b++, dst += gbs) {
        const uint8_t *rp[16];
        for (int k = 0; k < 16; k++) rp[k] = w + (size_t)(k < nv ? k : 0) * ws + (size_t)b * bs;
        /* decode streams 16 rows at once, which the hardware prefetchers
         * follow badly: each row's bytes PK_PF_ROW ahead into L2 (a line
         * covers two Q8_0 blocks: every other block) */
        if (bs >= 64 || !(b & 1))
            for (int k = 0; k < nv; k++) pk_pf(rp[k], PK_PF_ROW, bs);
        if (type == ENG_TYPE_Q8_0) {
            pk_run(rp, 2, 8, dst, 64, _mm256_set1_epi8((char)0x80));
            for (int k = 0; k < 16; k++) memcpy(dst + 512 + 2 * k, rp[k], 2);
        } else if (type == ENG_TYPE_Q4_K) {
            pk_run(rp, 0, 4, dst, 64, z);
            for (int grp = 0; grp < 4; grp++) pk_run(rp, 16 + 32 * (size_t)grp, 8, dst + 256 + 512 * grp, 64, z);
        } else {
            pk_run(rp, 192, 4, dst, 64, z);
            for (int h = 0; h < 2; h++) {
                uint8_t *d = dst + 256 + 1536 * h;
                pk_run(rp, 64 * (size_t)h, 8, d, 192, z);
                pk_run(rp, 64 * (size_t)h + 32, 8, d + 64, 192, z);
                pk_run(rp, 128 + 32 * (size_t)h, 8, d + 128, 192, z);
            }
            for (int k = 0; k < 16; k++) memcpy(dst + 3328 + 2 * k, rp[k] + 208, 2);
        }
    }
}

/* Side data of one activation row and block: dx, and the x-side integer
 * terms (Q8_0 with VNNI: -128 * sum(x_b); K-quants: bsum pairs, see below). */
typedef struct {
    float dx;
    int32_t corr;
} pk_xq8;
typedef struct {
    float dx;
    int32_t m[8];
} pk_xk;

/* ------------------------------------------------------------------------ */
/* Q8_0                                                                     */
/* ------------------------------------------------------------------------ */

static void pk_q8_0_xaux(int64_t n, const uint8_t *x, size_t xs, int64_t nx, void *out)
{
    pk_xq8 *o = out;
    const int64_t nb = n / 32;
    for (int64_t j = 0; j < nx; j++)
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *p = x + (size_t)j * xs + 34 * (size_t)b;
            pk_xq8 *e = o + j * nb + b;
            e->dx = pk_h(p);
#if PK_VNNI
            __m256i s = _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), _mm256_set1_epi8(1), pk_l(p + 2));
            e->corr = -128 * pk_hsum_i32(s);
#else
            e->corr = 0;
#endif
        }
}

/* nb blocks of one packed group g times NX activation rows (x at block 0,
 * row stride xs; xa at block 0, xas entries per row); acc carried. */
PKAI void pk_q8_0_run(const int NX, int64_t nb, const uint8_t *g, const uint8_t *x, size_t xs,
                      const pk_xq8 *xa, int64_t xas, pk_acc *ac)
{
#if !PK_VNNI
    const __m256i flip = _mm256_set1_epi8((char)0x80), ones = _mm256_set1_epi16(1);
#endif
    for (int64_t b = 0; b < nb; b++, g += 544) {
        const uint8_t *xq = x + 34 * b + 2;
        __m256i ia[2][PK_NX];
        PKU for (int j = 0; j < NX; j++) ia[0][j] = ia[1][j] = _mm256_set1_epi32(xa[j * xas + b].corr);
        /* both row halves per x dword: one broadcast feeds 16 rows */
        PKU for (int t = 0; t < 8; t++) {
            __m256i u0 = pk_l(g + 64 * t), u1 = pk_l(g + 64 * t + 32);
#if PK_VNNI
            PKU for (int j = 0; j < NX; j++) {
                __m256i xv = pk_bc(xq + j * xs + 4 * t);
                ia[0][j] = _mm256_dpbusd_avx_epi32(ia[0][j], u0, xv);
                ia[1][j] = _mm256_dpbusd_avx_epi32(ia[1][j], u1, xv);
            }
#else
            __m256i q0 = _mm256_xor_si256(u0, flip), a0 = _mm256_abs_epi8(q0);
            __m256i q1 = _mm256_xor_si256(u1, flip), a1 = _mm256_abs_epi8(q1);
            PKU for (int j = 0; j < NX; j++) {
                __m256i xv = pk_bc(xq + j * xs + 4 * t);
                __m256i p0 = _mm256_maddubs_epi16(a0, _mm256_sign_epi8(xv, q0));
                __m256i p1 = _mm256_maddubs_epi16(a1, _mm256_sign_epi8(xv, q1));
                ia[0][j] = _mm256_add_epi32(ia[0][j], _mm256_madd_epi16(p0, ones));
                ia[1][j] = _mm256_add_epi32(ia[1][j], _mm256_madd_epi16(p1, ones));
            }
#endif
        }
        PKU for (int h = 0; h < 2; h++) {
            __m256 dw = _mm256_cvtph_ps(pk_l128(g + 512 + 16 * h));
            PKU for (int j = 0; j < NX; j++)
                pk_fma(ACC(h, j), _mm256_cvtepi32_ps(ia[h][j]), _mm256_mul_ps(dw, _mm256_set1_ps(xa[j * xas + b].dx)));
        }
    }
}

/* Decode of one packed group (NX = 1, pk_q8_0_run's sums and recipe): the
 * float accumulators stay in two registers, the integer sums of a block in
 * two pairs (even / odd dwords: shorter chains; exact, so any order); the
 * packed stream is prefetched PK_PF ahead (PK_PF 0: none). */
PKAI void pk_q8_0_dec(int64_t nb, const uint8_t *g, const uint8_t *x, const pk_xq8 *xa, float *y)
{
#if !PK_VNNI
    const __m256i flip = _mm256_set1_epi8((char)0x80), ones = _mm256_set1_epi16(1);
#endif
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++, g += 544) {
        const uint8_t *xq = x + 34 * b + 2;
        if (PK_PF) pk_pf(g, PK_PF, 544);
        __m256i a0 = _mm256_set1_epi32(xa[b].corr), a1 = a0, c0 = _mm256_setzero_si256(), c1 = c0;
        PKU for (int t = 0; t < 8; t++) {
            __m256i xv = pk_bc(xq + 4 * t), *e0 = t & 1 ? &c0 : &a0, *e1 = t & 1 ? &c1 : &a1;
#if PK_VNNI
            *e0 = _mm256_dpbusd_avx_epi32(*e0, pk_l(g + 64 * t), xv);
            *e1 = _mm256_dpbusd_avx_epi32(*e1, pk_l(g + 64 * t + 32), xv);
#else
            __m256i q0 = _mm256_xor_si256(pk_l(g + 64 * t), flip), q1 = _mm256_xor_si256(pk_l(g + 64 * t + 32), flip);
            __m256i p0 = _mm256_maddubs_epi16(_mm256_abs_epi8(q0), _mm256_sign_epi8(xv, q0));
            __m256i p1 = _mm256_maddubs_epi16(_mm256_abs_epi8(q1), _mm256_sign_epi8(xv, q1));
            *e0 = _mm256_add_epi32(*e0, _mm256_madd_epi16(p0, ones));
            *e1 = _mm256_add_epi32(*e1, _mm256_madd_epi16(p1, ones));
#endif
            /* each sum in its register as it goes: left free, the compiler
             * reassociates the adds into a tree and spills the products */
            __asm__("" : "+x"(*e0), "+x"(*e1));
        }
        __m256 dx = _mm256_set1_ps(xa[b].dx);
        __m256 d0 = _mm256_mul_ps(_mm256_cvtph_ps(pk_l128(g + 512)), dx);
        __m256 d1 = _mm256_mul_ps(_mm256_cvtph_ps(pk_l128(g + 528)), dx);
        s0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(a0, c0)), d0, s0);
        s1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(a1, c1)), d1, s1);
    }
    _mm256_storeu_ps(y, s0);
    _mm256_storeu_ps(y + 8, s1);
}

/* ------------------------------------------------------------------------ */
/* Q4_K, Q6_K                                                               */
/* ------------------------------------------------------------------------ */

/* K-quant side data: m[] holds int16 pairs of Q8_K bsums for vpmaddwd.
 * Q4_K: with p_s = bsum_2s + bsum_2s+1: m[0] = (p0, p2), m[1] = (p1, p3),
 * m[2] = (p4, p6), m[3] = (p5, p7). Q6_K: m[2c] = (bsum_4c, bsum_4c+2),
 * m[2c+1] = (bsum_4c+1, bsum_4c+3). */
PKAI int32_t pk_pair(int a, int b) { return (int32_t)((uint32_t)(uint16_t)a | ((uint32_t)(uint16_t)b << 16)); }

PKAI void pk_k_xaux(const int Q6, int64_t n, const uint8_t *x, size_t xs, int64_t nx, void *out)
{
    pk_xk *o = out;
    const int64_t nb = n / 256;
    for (int64_t j = 0; j < nx; j++)
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *p = x + (size_t)j * xs + 292 * (size_t)b;
            pk_xk *e = o + j * nb + b;
            int16_t bs[16];
            memcpy(&e->dx, p, 4);
            memcpy(bs, p + 260, 32);
            if (Q6) {
                for (int c = 0; c < 4; c++) {
                    e->m[2 * c] = pk_pair(bs[4 * c], bs[4 * c + 2]);
                    e->m[2 * c + 1] = pk_pair(bs[4 * c + 1], bs[4 * c + 3]);
                }
            } else {
                int ps[8];
                for (int s = 0; s < 8; s++) ps[s] = bs[2 * s] + bs[2 * s + 1];
                for (int c = 0; c < 2; c++) {
                    e->m[2 * c] = pk_pair(ps[4 * c], ps[4 * c + 2]);
                    e->m[2 * c + 1] = pk_pair(ps[4 * c + 1], ps[4 * c + 3]);
                }
                for (int c = 4; c < 8; c++) e->m[c] = 0;
            }
        }
}

/* Byte t of each dword as a scale operand: int16 pairs (VNNI: int32),
 * zero-extended (Q4_K) or sign-extended (Q6_K). */
PKAI __m256i pk_scale(__m256i v, int t, const int sgn)
{
    const char z = (char)0x80;
#if PK_VNNI
    __m256i s = _mm256_shuffle_epi8(v, _mm256_setr_epi8(z, z, z, t, z, z, z, 4 + t, z, z, z, 8 + t, z, z, z, 12 + t,
                                                        z, z, z, t, z, z, z, 4 + t, z, z, z, 8 + t, z, z, z, 12 + t));
    return sgn ? _mm256_srai_epi32(s, 24) : _mm256_srli_epi32(s, 24);
#else
    __m256i s = _mm256_shuffle_epi8(v, _mm256_setr_epi8(z, t, z, t, z, 4 + t, z, 4 + t, z, 8 + t, z, 8 + t, z, 12 + t,
                                                        z, 12 + t, z, t, z, t, z, 4 + t, z, 4 + t, z, 8 + t, z,
                                                        8 + t, z, 12 + t, z, 12 + t));
    return sgn ? _mm256_srai_epi16(s, 8) : _mm256_srli_epi16(s, 8);
#endif
}

/* The integer dot of one sub-block: a running sum of unsigned quants q
 * times signed activation bytes, then scaled into isum. */
#if PK_VNNI
#define PK_DOT(a, q, xv) ((a) = _mm256_dpbusd_avx_epi32((a), (q), (xv)))
#define PK_SCALE(isum, a, sc) ((isum) = _mm256_add_epi32((isum), _mm256_mullo_epi32((a), (sc))))
#else
#define PK_DOT(a, q, xv) ((a) = _mm256_add_epi16((a), _mm256_maddubs_epi16((q), (xv))))
#define PK_SCALE(isum, a, sc) ((isum) = _mm256_add_epi32((isum), _mm256_madd_epi16((a), (sc))))
#endif

PKAI void pk_q4_k_run(const int NX, int64_t nb, const uint8_t *g, const uint8_t *x, size_t xs,
                      const pk_xk *xa, int64_t xas, pk_acc *ac)
{
    const __m256i m4 = _mm256_set1_epi8(0xf), m6 = _mm256_set1_epi8(0x3f), m30 = _mm256_set1_epi8(0x30),
                  lo16 = _mm256_set1_epi32(0x00ff00ff);
    for (int64_t b = 0; b < nb; b++, g += 2304) {
        if (NX == 1 && PK_KPF) pk_pf(g, PK_KPF, 2304);
        const uint8_t *xq = x + 292 * b + 4;
        PKU for (int h = 0; h < 2; h++) {
            const uint8_t *hd = g + 32 * h;
            __m256i w0 = pk_l(hd + 64), w1 = pk_l(hd + 128), w2 = pk_l(hd + 192);
            __m256i sl = _mm256_and_si256(w0, m6);
            __m256i sh = _mm256_or_si256(_mm256_and_si256(w2, m4), _mm256_and_si256(_mm256_srli_epi16(w0, 2), m30));
            __m256i is[PK_NX];
            PKU for (int j = 0; j < NX; j++) is[j] = _mm256_setzero_si256();
            PKU for (int s = 0; s < 8; s++) {
                const uint8_t *qp = g + 256 + 512 * (s / 2) + 32 * h;
                __m256i a[PK_NX];
                PKU for (int j = 0; j < NX; j++) a[j] = _mm256_setzero_si256();
                PKU for (int t = 0; t < 8; t++) {
                    __m256i v = pk_l(qp + 64 * t);
                    __m256i q = _mm256_and_si256(s & 1 ? _mm256_srli_epi16(v, 4) : v, m4);
                    PKU for (int j = 0; j < NX; j++) PK_DOT(a[j], q, pk_bcv(xq + j * xs + 32 * s + 4 * t));
                }
                __m256i sc = pk_scale(s < 4 ? sl : sh, s & 3, 0);
                PKU for (int j = 0; j < NX; j++) PK_SCALE(is[j], a[j], sc);
            }
            /* mins: bytes (m0..m3) of ml, (m4..m7) of mh as even / odd int16 */
            w0 = pk_l(hd + 64), w1 = pk_l(hd + 128), w2 = pk_l(hd + 192);
            __m256i ml = _mm256_and_si256(w1, m6);
            __m256i mh = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(w2, 4), m4),
                                         _mm256_and_si256(_mm256_srli_epi16(w1, 2), m30));
            __m256i mle = _mm256_and_si256(ml, lo16), mlo = _mm256_and_si256(_mm256_srli_epi16(ml, 8), lo16);
            __m256i mhe = _mm256_and_si256(mh, lo16), mho = _mm256_and_si256(_mm256_srli_epi16(mh, 8), lo16);
            __m256i H0 = pk_l(hd);
            __m256i dd = _mm256_shuffle_epi8(H0, _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15,
                                                                  0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15));
            dd = _mm256_permute4x64_epi64(dd, 0xd8);
            __m256 d = _mm256_cvtph_ps(_mm256_castsi256_si128(dd)), dmin = _mm256_cvtph_ps(_mm256_extracti128_si256(dd, 1));
            PKU for (int j = 0; j < NX; j++) {
                const pk_xk *e = xa + j * xas + b;
                __m256i ms = _mm256_add_epi32(_mm256_madd_epi16(mle, _mm256_set1_epi32(e->m[0])),
                                              _mm256_madd_epi16(mlo, _mm256_set1_epi32(e->m[1])));
                ms = _mm256_add_epi32(ms, _mm256_add_epi32(_mm256_madd_epi16(mhe, _mm256_set1_epi32(e->m[2])),
                                                           _mm256_madd_epi16(mho, _mm256_set1_epi32(e->m[3]))));
                __m256 dx = _mm256_set1_ps(e->dx);
                pk_fma(ACC(h, j), _mm256_cvtepi32_ps(is[j]), _mm256_mul_ps(d, dx));
                pk_fnma(ACC(h, j), _mm256_cvtepi32_ps(ms), _mm256_mul_ps(dmin, dx));
            }
        }
    }
}

/* Decode of one packed Q4_K group (NX = 1, pk_q4_k_run's sums and recipe):
 * both row halves per activation dword and both nibbles of a loaded quant
 * vector at once (one broadcast feeds 2 products, one load 2), the float
 * accumulators in registers, and the packed stream prefetched PK_KPF ahead
 * as in pk_q8_0_dec. */
PKAI void pk_q4_k_dec(int64_t nb, const uint8_t *g, const uint8_t *x, const pk_xk *xa, float *y)
{
    const __m256i m4 = _mm256_set1_epi8(0xf), m6 = _mm256_set1_epi8(0x3f), m30 = _mm256_set1_epi8(0x30),
                  lo16 = _mm256_set1_epi32(0x00ff00ff);
    __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t b = 0; b < nb; b++, g += 2304) {
        if (PK_KPF) pk_pf(g, PK_KPF, 2304);
        const uint8_t *xq = x + 292 * b + 4;
        __m256i is[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
        PKU for (int k = 0; k < 4; k++) {
            __m256i a[2][2];
            PKU for (int h = 0; h < 2; h++) a[h][0] = a[h][1] = _mm256_setzero_si256();
            PKU for (int t = 0; t < 8; t++) {
                __m256i xl = pk_bcv(xq + 64 * k + 4 * t), xh = pk_bcv(xq + 64 * k + 32 + 4 * t);
                PKU for (int h = 0; h < 2; h++) {
                    __m256i v = pk_l(g + 256 + 512 * k + 64 * t + 32 * h);
                    PK_DOT(a[h][0], _mm256_and_si256(v, m4), xl);
                    PK_DOT(a[h][1], _mm256_and_si256(_mm256_srli_epi16(v, 4), m4), xh);
                    __asm__("" : "+x"(a[h][0]), "+x"(a[h][1]));
                }
            }
            PKU for (int h = 0; h < 2; h++) {
                const uint8_t *hd = g + 32 * h;
                __m256i w0 = pk_l(hd + 64), w2 = pk_l(hd + 192);
                __m256i sv = k < 2 ? _mm256_and_si256(w0, m6)
                                   : _mm256_or_si256(_mm256_and_si256(w2, m4), _mm256_and_si256(_mm256_srli_epi16(w0, 2), m30));
                PK_SCALE(is[h], a[h][0], pk_scale(sv, (2 * k) & 3, 0));
                PK_SCALE(is[h], a[h][1], pk_scale(sv, (2 * k + 1) & 3, 0));
            }
        }
        PKU for (int h = 0; h < 2; h++) {
            const uint8_t *hd = g + 32 * h;
            __m256i w1 = pk_l(hd + 128), w2 = pk_l(hd + 192);
            __m256i ml = _mm256_and_si256(w1, m6);
            __m256i mh = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(w2, 4), m4),
                                         _mm256_and_si256(_mm256_srli_epi16(w1, 2), m30));
            __m256i mle = _mm256_and_si256(ml, lo16), mlo = _mm256_and_si256(_mm256_srli_epi16(ml, 8), lo16);
            __m256i mhe = _mm256_and_si256(mh, lo16), mho = _mm256_and_si256(_mm256_srli_epi16(mh, 8), lo16);
            __m256i dd = _mm256_shuffle_epi8(pk_l(hd), _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15,
                                                                        0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15));
            dd = _mm256_permute4x64_epi64(dd, 0xd8);
            __m256 d = _mm256_cvtph_ps(_mm256_castsi256_si128(dd)), dmin = _mm256_cvtph_ps(_mm256_extracti128_si256(dd, 1));
            const pk_xk *e = xa + b;
            __m256i ms = _mm256_add_epi32(_mm256_madd_epi16(mle, _mm256_set1_epi32(e->m[0])),
                                          _mm256_madd_epi16(mlo, _mm256_set1_epi32(e->m[1])));
            ms = _mm256_add_epi32(ms, _mm256_add_epi32(_mm256_madd_epi16(mhe, _mm256_set1_epi32(e->m[2])),
                                                       _mm256_madd_epi16(mho, _mm256_set1_epi32(e->m[3]))));
            __m256 dx = _mm256_set1_ps(e->dx);
            acc[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is[h]), _mm256_mul_ps(d, dx), acc[h]);
            acc[h] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(ms), _mm256_mul_ps(dmin, dx), acc[h]);
        }
    }
    _mm256_storeu_ps(y, acc[0]);
    _mm256_storeu_ps(y + 8, acc[1]);
}

/* Quant quarter qd (elements 32 qd.. of a 128-element half) of Q6_K dword
 * t at base (the packed [ql][ql + 32][qh] triplet), 8 rows, values 0..63. */
PKAI __m256i pk_q6(const uint8_t *base, int qd)
{
    const __m256i m4 = _mm256_set1_epi8(0xf), m30 = _mm256_set1_epi8(0x30);
    __m256i L = pk_l(base + 64 * (qd & 1)), H = pk_l(base + 128);
    __m256i lo = _mm256_and_si256(qd < 2 ? L : _mm256_srli_epi16(L, 4), m4);
    __m256i hb = qd == 0 ? _mm256_slli_epi16(H, 4) : qd == 1 ? _mm256_slli_epi16(H, 2) : qd == 2 ? H : _mm256_srli_epi16(H, 2);
    return _mm256_or_si256(lo, _mm256_and_si256(hb, m30));
}

PKAI void pk_q6_k_run(const int NX, int64_t nb, const uint8_t *g, const uint8_t *x, size_t xs,
                      const pk_xk *xa, int64_t xas, pk_acc *ac)
{
    for (int64_t b = 0; b < nb; b++, g += 3360) {
        if (NX == 1 && PK_KPF) pk_pf(g, PK_KPF, 3360);
        const uint8_t *xq = x + 292 * b + 4;
        PKU for (int rh = 0; rh < 2; rh++) {
            __m256i is[PK_NX];
            PKU for (int j = 0; j < NX; j++) is[j] = _mm256_setzero_si256();
            _Pragma("GCC unroll 16") for (int sb = 0; sb < 16; sb++) {
                const int h = sb / 8, qd = (sb / 2) & 3, e = sb & 1;
                __m256i sc = pk_scale(pk_l(g + 64 * (sb / 4) + 32 * rh), sb & 3, 1);
#if PK_VNNI
                __m256i a[PK_NX];
                PKU for (int j = 0; j < NX; j++) a[j] = _mm256_setzero_si256();
                PKU for (int t = 4 * e; t < 4 * e + 4; t++) {
                    __m256i q = pk_q6(g + 256 + 1536 * h + 192 * t + 32 * rh, qd);
                    PKU for (int j = 0; j < NX; j++) PK_DOT(a[j], q, pk_bcv(xq + j * xs + 128 * h + 32 * qd + 4 * t));
                }
                PKU for (int j = 0; j < NX; j++) PK_SCALE(is[j], a[j], sc);
#else
                PKU for (int t0 = 4 * e; t0 < 4 * e + 4; t0 += 2) {
                    __m256i a[PK_NX];
                    PKU for (int j = 0; j < NX; j++) a[j] = _mm256_setzero_si256();
                    PKU for (int t = t0; t < t0 + 2; t++) {
                        __m256i q = pk_q6(g + 256 + 1536 * h + 192 * t + 32 * rh, qd);
                        PKU for (int j = 0; j < NX; j++) PK_DOT(a[j], q, pk_bcv(xq + j * xs + 128 * h + 32 * qd + 4 * t));
                    }
                    PKU for (int j = 0; j < NX; j++) PK_SCALE(is[j], a[j], sc);
                }
#endif
            }
            /* - 32 * sum_s sc_s * bsum_s: int16 scale pairs (sc_4c, sc_4c+2), (sc_4c+1, sc_4c+3) */
            __m256i ev[4], od[4];
            PKU for (int c = 0; c < 4; c++) {
                __m256i S = pk_l(g + 64 * c + 32 * rh);
                ev[c] = _mm256_srai_epi16(_mm256_slli_epi16(S, 8), 8);
                od[c] = _mm256_srai_epi16(S, 8);
            }
            __m256 d = _mm256_cvtph_ps(pk_l128(g + 3328 + 16 * rh));
            PKU for (int j = 0; j < NX; j++) {
                const pk_xk *ex = xa + j * xas + b;
                __m256i C = _mm256_setzero_si256();
                PKU for (int c = 0; c < 4; c++) {
                    C = _mm256_add_epi32(C, _mm256_madd_epi16(ev[c], _mm256_set1_epi32(ex->m[2 * c])));
                    C = _mm256_add_epi32(C, _mm256_madd_epi16(od[c], _mm256_set1_epi32(ex->m[2 * c + 1])));
                }
                __m256i isum = _mm256_sub_epi32(is[j], _mm256_slli_epi32(C, 5));
                pk_fma(ACC(rh, j), _mm256_cvtepi32_ps(isum), _mm256_mul_ps(d, _mm256_set1_ps(ex->dx)));
            }
        }
    }
}

static void pk_q4_k_xaux(int64_t n, const uint8_t *x, size_t xs, int64_t nx, void *out)
{
    pk_k_xaux(0, n, x, xs, nx, out);
}
static void pk_q6_k_xaux(int64_t n, const uint8_t *x, size_t xs, int64_t nx, void *out)
{
    pk_k_xaux(1, n, x, xs, nx, out);
}

/* ------------------------------------------------------------------------ */
/* gemm.h entries, one set per type                                         */
/* ------------------------------------------------------------------------ */

/* NAME's micro-kernels over NAME##_run: block size BS (file), GBS (packed
 * group), activation block XBS, side data XT, PER blocks per packing chunk,
 * NXM (<= PK_NX) activation rows per strip tile. */
#define PK_KERNELS(NAME, T, BS, GBS, XBS, XT, PER, NXM)                                                     \
    PKAI void NAME##_tile(const int NX, int nv, int64_t nb, const uint8_t *g, const uint8_t *x,       \
                          size_t xs, const void *xa, float *y, size_t ys)                              \
    {                                                                                                  \
        pk_acc acc;                                                                                    \
        memset(&acc, 0, sizeof acc);                                                                   \
        NAME##_run(NX, nb, g, x, xs, xa, nb, &acc);                                                    \
        pk_store(NX, nv, &acc, y, ys);                                                                 \
    }                                                                                                  \
    static void NAME##_gemv16_packed(int nv, int64_t n, const uint8_t *w, size_t ws,                  \
                                     const uint8_t *x, const void *xa, float *y)                      \
    {                                                                                                  \
        (void)ws;                                                                                      \
        if (BS == 34) pk_q8_0_dec(n / 32, w, x, xa, y);                                                \
        else if (BS == 144) pk_q4_k_dec(n / 256, w, x, xa, y);                                         \
        else NAME##_tile(1, nv, n / (BS == 34 ? 32 : 256), w, x, 0, xa, y, 0);                          \
    }                                                                                                  \
    static void NAME##_gemv16(int nv, int64_t n, const uint8_t *w, size_t ws, const uint8_t *x,        \
                              const void *xa, float *y)                                                \
    {                                                                                                  \
        const int64_t nb = n / (BS == 34 ? 32 : 256);                                                  \
        _Alignas(64) uint8_t gb[PER * GBS];                                                            \
        pk_acc acc;                                                                                    \
        memset(&acc, 0, sizeof acc);                                                                   \
        for (int64_t b0 = 0; b0 < nb; b0 += PER) {                                                     \
            int64_t m = nb - b0 < PER ? nb - b0 : PER;                                                 \
            pk_gather(ENG_TYPE_##T, BS, nv, w, ws, b0, m, gb);                                         \
            NAME##_run(1, m, gb, x + XBS * (size_t)b0, 0, (const XT *)xa + b0, 0, &acc);               \
        }                                                                                              \
        pk_store(1, nv, &acc, y, 0);                                                                   \
    }                                                                                                  \
    static size_t NAME##_strip_bytes(int64_t n, bool packed)                                           \
    {                                                                                                  \
        return packed ? 0 : (size_t)(n / (BS == 34 ? 32 : 256)) * GBS;                                 \
    }                                                                                                  \
    static const uint8_t *NAME##_strip_pack(int v, int groups, int nv, bool packed, int64_t n,        \
                                            const uint8_t *w, size_t ws, uint8_t *buf)                \
    {                                                                                                  \
        (void)groups;                                                                                  \
        if (packed) return w;                                                                          \
        const int64_t nb = n / (BS == 34 ? 32 : 256);                                                  \
        uint8_t *dst = buf + (size_t)v * NAME##_strip_bytes(n, false);                                 \
        for (int64_t b0 = 0; b0 < nb; b0 += PER)                                                       \
            pk_gather(ENG_TYPE_##T, BS, nv, w, ws, b0, nb - b0 < PER ? nb - b0 : PER,                  \
                      dst + (size_t)b0 * GBS);                                                         \
        return dst;                                                                                    \
    }                                                                                                  \
    /* each group of the strip over the same PK_NX activation rows (in L1) */                         \
    static void NAME##_strip_tile(int groups, int nx, int nv_last, int64_t n,                          \
                                  const uint8_t *const *g, const uint8_t *x, size_t xs,               \
                                  const void *xa, float *y, size_t ys)                                 \
    {                                                                                                  \
        const int64_t nb = n / (BS == 34 ? 32 : 256);                                                  \
        for (int v = 0; v < groups; v++) {                                                             \
            const int nv = v == groups - 1 ? nv_last : 16;                                             \
            float *yv = y + 16 * v;                                                                    \
            switch (nx < NXM ? nx : NXM) {                                                             \
            case 1: NAME##_tile(1, nv, nb, g[v], x, xs, xa, yv, ys); break;                            \
            case 2: NAME##_tile(2, nv, nb, g[v], x, xs, xa, yv, ys); break;                            \
            case 3: NAME##_tile(3, nv, nb, g[v], x, xs, xa, yv, ys); break;                            \
            default: NAME##_tile(4, nv, nb, g[v], x, xs, xa, yv, ys); break;                           \
            }                                                                                          \
        }                                                                                              \
    }                                                                                                  \
    static const eng__ukernel NAME##_uk = {                                                            \
        .type = ENG_TYPE_##T, .xaux_block_bytes = sizeof(XT), .xaux = NAME##_xaux,                    \
        .gemv16 = NAME##_gemv16, .prefill_nx = 2, .strip_bytes = NAME##_strip_bytes,                   \
        .strip_pack = NAME##_strip_pack, .strip_tile = NAME##_strip_tile,                              \
        .strip_groups = PK_GROUPS, .strip_nx = NXM,                                                  \
        .gemv16_packed = NAME##_gemv16_packed, .strip_packed = true, .wide = PK_WIDE(NAME)};          \
    ENG_GEMM_ENTRIES(NAME, NAME##_uk)

PK_KERNELS(pk_q8_0, Q8_0, 34, 544, 34, pk_xq8, 8, PK_Q8_NX)
PK_KERNELS(pk_q4_k, Q4_K, 144, 2304, 292, pk_xk, 2, PK_Q4K_NX)
PK_KERNELS(pk_q6_k, Q6_K, 210, 3360, 292, pk_xk, 2, PK_Q6K_NX)

static void pk_install(eng__kernels *k)
{
    pk_q8_0_install(k);
    pk_q4_k_install(k);
    pk_q6_k_install(k);
}
