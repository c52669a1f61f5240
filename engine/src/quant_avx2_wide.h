/*
 * quant_avx2_wide.h - the AVX2 (no VNNI) prefill strips on expanded weights
 * for Q8_0, Q4_K and Q6_K: the "wide" eng__ukernel (gemm.h) of each, used
 * for products with many activation rows. Included by quant_avx2.c after
 * quant_avx2_pk.h (PK_VNNI 0), whose helpers, side data and decode kernels
 * it reuses. quant_avx2.c defines PK_WIDE so that the narrow kernels'
 * eng__ukernel points at the wide one (NAME##_w_uk, defined here).
 *
 * Without vpdpbusd an int8 dot product costs vpmaddubsw + vpmaddwd + vpaddd
 * per 32 multiply-adds, and the packed layouts add their unpacking on top:
 * Q8_0 (signed x signed) a vpsignb per product, Q4_K nibble masks and
 * shifts, Q6_K the 6-bit assembly and per-16 scale shuffles. Strips are
 * read once per 4 activation rows for the whole prompt, so each strip is
 * expanded once per call instead (strip_pack) into the form the multiplier
 * takes directly:
 *   Q8_0: int16 weights, [pair p][row] per block (vpmaddwd against an int16
 *         pair of x, from the side data): 2 vpmaddwd + 2 vpaddd per 32
 *         multiply-adds and no sign work (1024 B, then the 16 f32 scales);
 *   Q4_K: one byte per quant [dword][row], the sub-block scales as vpmaddwd
 *         operands, the mins terms and d / dmin precomputed;
 *   Q6_K: the same for the 6-bit quants (0..63), sign-extended scales, the
 *         -32 correction's operands and d.
 * The integer block sums are exact and the float recipe is quant_avx2_pk.h's
 * (per-pair recipe there), so the results are the narrow kernels' bits. The
 * expansion costs about as much as 2-3 activation rows of products, so the
 * wide set takes over from PKW_NX activation rows.
 */
#if PK_VNNI
#error "quant_avx2_wide.h is the non-VNNI AVX2 path"
#endif

/* Activation rows from which the wide kernels are used. */
#define PKW_NX 16
/* Activation rows per wide strip tile (12 of the 16 ymm in the loops). */
#define PKW_TILE_NX 4

/* Each running sum stays in its register as it goes: left free, the
 * compiler reassociates a block's adds into a tree and spills the products. */
#define PKW_KEEP(v) __asm__("" : "+x"(v))

/* Bytes of one expanded group per block / superblock. */
#define PKW_Q8_0 1088
#define PKW_Q4_K 4992
#define PKW_Q6_K 5696

/* ---- Q8_0 ---- */

/* Side data of one activation row: the narrow pk_xq8 entries (the decode
 * fallback reads them), then per block its 32 quants as int16. */
#define PKW_Q8_XB ((size_t)(sizeof(pk_xq8) + 64))

static void pkw_q8_0_xaux(int64_t n, const uint8_t *x, size_t xs, int64_t nx, void *out)
{
    const int64_t nb = n / 32;
    for (int64_t j = 0; j < nx; j++) {
        uint8_t *o = (uint8_t *)out + (size_t)j * (size_t)nb * PKW_Q8_XB, *q = o + (size_t)nb * sizeof(pk_xq8);
        pk_q8_0_xaux(n, x + (size_t)j * xs, xs, 1, o);
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *p = x + (size_t)j * xs + 34 * (size_t)b + 2;
            _mm256_storeu_si256((__m256i *)(q + 64 * b), _mm256_cvtepi8_epi16(pk_l128(p)));
            _mm256_storeu_si256((__m256i *)(q + 64 * b + 32), _mm256_cvtepi8_epi16(pk_l128(p + 16)));
        }
    }
}

/* nb packed Q8_0 blocks of one group (src) to the expanded form (dst). */
static void pkw_q8_0_expand(int64_t nb, const uint8_t *src, uint8_t *dst)
{
    const __m256i flip = _mm256_set1_epi8((char)0x80), ev = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    for (int64_t b = 0; b < nb; b++, src += 544, dst += PKW_Q8_0) {
        for (int t = 0; t < 8; t++)
            for (int h = 0; h < 2; h++) {
                __m256i v = _mm256_xor_si256(pk_l(src + 64 * t + 32 * h), flip);
                /* rows 0-3 / 4-7 of the half: [r p0 | r p1] dword pairs to [p0 of rows | p1 of rows] */
                __m256i lo = _mm256_permutevar8x32_epi32(_mm256_cvtepi8_epi16(_mm256_castsi256_si128(v)), ev);
                __m256i hi = _mm256_permutevar8x32_epi32(_mm256_cvtepi8_epi16(_mm256_extracti128_si256(v, 1)), ev);
                _mm256_storeu_si256((__m256i *)(dst + 128 * t + 32 * h), _mm256_permute2x128_si256(lo, hi, 0x20));
                _mm256_storeu_si256((__m256i *)(dst + 128 * t + 64 + 32 * h), _mm256_permute2x128_si256(lo, hi, 0x31));
            }
        for (int h = 0; h < 2; h++) _mm256_storeu_ps((float *)(dst + 1024 + 32 * h), _mm256_cvtph_ps(pk_l128(src + 512 + 16 * h)));
    }
}

/* nb expanded blocks of one group g times NX activation rows (xa: row 0's
 * side data, xar bytes per row); acc carried. */
PKAI void pkw_q8_0_run(const int NX, int64_t nb, const uint8_t *g, const uint8_t *x, size_t xs,
                       const uint8_t *xa, size_t xar, pk_acc *ac)
{
    (void)x, (void)xs;
    const uint8_t *xq = xa + (size_t)nb * sizeof(pk_xq8);
    for (int64_t b = 0; b < nb; b++, g += PKW_Q8_0) {
        __m256i ia[2][PKW_TILE_NX];
        PKU for (int j = 0; j < NX; j++) ia[0][j] = ia[1][j] = _mm256_setzero_si256();
        _Pragma("GCC unroll 16") for (int p = 0; p < 16; p++) {
            __m256i w0 = pk_l(g + 64 * p), w1 = pk_l(g + 64 * p + 32);
            PKU for (int j = 0; j < NX; j++) {
                __m256i xv = pk_bcv(xq + j * xar + 64 * b + 4 * p);
                ia[0][j] = _mm256_add_epi32(ia[0][j], _mm256_madd_epi16(w0, xv));
                ia[1][j] = _mm256_add_epi32(ia[1][j], _mm256_madd_epi16(w1, xv));
                PKW_KEEP(ia[0][j]);
                PKW_KEEP(ia[1][j]);
            }
        }
        PKU for (int h = 0; h < 2; h++) {
            __m256 dw = _mm256_load_ps((const float *)(g + 1024 + 32 * h));
            PKU for (int j = 0; j < NX; j++) {
                const pk_xq8 *e = (const pk_xq8 *)(xa + j * xar) + b;
                pk_fma(ACC(h, j), _mm256_cvtepi32_ps(ia[h][j]), _mm256_mul_ps(dw, _mm256_set1_ps(e->dx)));
            }
        }
    }
}

/* ---- Q4_K ---- */

/* Expanded superblock: quants [sub-block s][dword t][row] bytes at 512 s +
 * 64 t (halves 32 B apart), then scales (int16 pairs) at 4096 + 32 (8 h + s),
 * the mins operands (pk_q4_k_run's mle, mlo, mhe, mho) at 4608 + 128 h + 32 k,
 * d and dmin (f32) at 4864 + 64 h and + 32. */
static void pkw_q4_k_expand(int64_t nb, const uint8_t *g, uint8_t *dst)
{
    const __m256i m4 = _mm256_set1_epi8(0xf), m6 = _mm256_set1_epi8(0x3f), m30 = _mm256_set1_epi8(0x30),
                  lo16 = _mm256_set1_epi32(0x00ff00ff);
    for (int64_t b = 0; b < nb; b++, g += 2304, dst += PKW_Q4_K) {
        for (int s = 0; s < 8; s++)
            for (int t = 0; t < 8; t++) {
                __m256i v = pk_l(g + 256 + 512 * (s / 2) + 64 * t);
                v = _mm256_and_si256(s & 1 ? _mm256_srli_epi16(v, 4) : v, m4);
                _mm256_storeu_si256((__m256i *)(dst + 512 * s + 64 * t), v);
                v = pk_l(g + 256 + 512 * (s / 2) + 64 * t + 32);
                v = _mm256_and_si256(s & 1 ? _mm256_srli_epi16(v, 4) : v, m4);
                _mm256_storeu_si256((__m256i *)(dst + 512 * s + 64 * t + 32), v);
            }
        for (int h = 0; h < 2; h++) {
            const uint8_t *hd = g + 32 * h;
            __m256i w0 = pk_l(hd + 64), w1 = pk_l(hd + 128), w2 = pk_l(hd + 192);
            __m256i sl = _mm256_and_si256(w0, m6);
            __m256i sh = _mm256_or_si256(_mm256_and_si256(w2, m4), _mm256_and_si256(_mm256_srli_epi16(w0, 2), m30));
            for (int s = 0; s < 8; s++)
                _mm256_storeu_si256((__m256i *)(dst + 4096 + 32 * (8 * h + s)), pk_scale(s < 4 ? sl : sh, s & 3, 0));
            __m256i ml = _mm256_and_si256(w1, m6);
            __m256i mh = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(w2, 4), m4),
                                         _mm256_and_si256(_mm256_srli_epi16(w1, 2), m30));
            __m256i mm[4] = {_mm256_and_si256(ml, lo16), _mm256_and_si256(_mm256_srli_epi16(ml, 8), lo16),
                             _mm256_and_si256(mh, lo16), _mm256_and_si256(_mm256_srli_epi16(mh, 8), lo16)};
            for (int k = 0; k < 4; k++) _mm256_storeu_si256((__m256i *)(dst + 4608 + 128 * h + 32 * k), mm[k]);
            __m256i dd = _mm256_shuffle_epi8(pk_l(hd), _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15,
                                                                        0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15));
            dd = _mm256_permute4x64_epi64(dd, 0xd8);
            _mm256_storeu_ps((float *)(dst + 4864 + 64 * h), _mm256_cvtph_ps(_mm256_castsi256_si128(dd)));
            _mm256_storeu_ps((float *)(dst + 4864 + 64 * h + 32), _mm256_cvtph_ps(_mm256_extracti128_si256(dd, 1)));
        }
    }
}

PKAI void pkw_q4_k_run(const int NX, int64_t nb, const uint8_t *g, const uint8_t *x, size_t xs,
                       const uint8_t *xa, size_t xar, pk_acc *ac)
{
    for (int64_t b = 0; b < nb; b++, g += PKW_Q4_K) {
        PKU for (int h = 0; h < 2; h++) {
            __m256i is[PKW_TILE_NX];
            PKU for (int j = 0; j < NX; j++) is[j] = _mm256_setzero_si256();
            /* one sub-block at a time, not unrolled: unrolled, the compiler
             * computes every broadcast's address ahead and spills them */
            _Pragma("GCC unroll 1") for (int s = 0; s < 8; s++) {
                const uint8_t *xq = x + 292 * b + 4 + 32 * s;
                __m256i a[PKW_TILE_NX];
                PKU for (int j = 0; j < NX; j++) a[j] = _mm256_setzero_si256();
                PKU for (int t = 0; t < 8; t++) {
                    __m256i q = pk_l(g + 512 * s + 64 * t + 32 * h);
                    PKU for (int j = 0; j < NX; j++) {
                        a[j] = _mm256_add_epi16(a[j], _mm256_maddubs_epi16(q, pk_bcv(xq + j * xs + 4 * t)));
                        PKW_KEEP(a[j]);
                    }
                }
                __m256i sc = pk_l(g + 4096 + 32 * (8 * h + s));
                PKU for (int j = 0; j < NX; j++) is[j] = _mm256_add_epi32(is[j], _mm256_madd_epi16(a[j], sc));
            }
            const uint8_t *mp = g + 4608 + 128 * h;
            __m256 d = _mm256_load_ps((const float *)(g + 4864 + 64 * h));
            __m256 dmin = _mm256_load_ps((const float *)(g + 4864 + 64 * h + 32));
            PKU for (int j = 0; j < NX; j++) {
                const pk_xk *e = (const pk_xk *)(xa + j * xar) + b;
                __m256i ms = _mm256_add_epi32(_mm256_madd_epi16(pk_l(mp), _mm256_set1_epi32(e->m[0])),
                                              _mm256_madd_epi16(pk_l(mp + 32), _mm256_set1_epi32(e->m[1])));
                ms = _mm256_add_epi32(ms, _mm256_add_epi32(_mm256_madd_epi16(pk_l(mp + 64), _mm256_set1_epi32(e->m[2])),
                                                           _mm256_madd_epi16(pk_l(mp + 96), _mm256_set1_epi32(e->m[3]))));
                __m256 dx = _mm256_set1_ps(e->dx);
                pk_fma(ACC(h, j), _mm256_cvtepi32_ps(is[j]), _mm256_mul_ps(d, dx));
                pk_fnma(ACC(h, j), _mm256_cvtepi32_ps(ms), _mm256_mul_ps(dmin, dx));
            }
        }
    }
}

/* ---- Q6_K ---- */

/* Expanded superblock: quants 0..63, element dword E (elements 4E..) of
 * each row at 64 E (halves 32 B apart); sub-block sb (16 elements) is
 * dwords 4 sb..; then the scales (sign-extended int16 pairs) at 4096 +
 * 32 (16 rh + sb), the correction operands (pk_q6_k_run's ev[c], od[c]) at
 * 5120 + 256 rh + 64 c and + 32, d (f32) at 5632 + 32 rh. */
static void pkw_q6_k_expand(int64_t nb, const uint8_t *g, uint8_t *dst)
{
    for (int64_t b = 0; b < nb; b++, g += 3360, dst += PKW_Q6_K) {
        for (int h = 0; h < 2; h++)
            for (int qd = 0; qd < 4; qd++)
                for (int t = 0; t < 8; t++)
                    for (int rh = 0; rh < 2; rh++)
                        _mm256_storeu_si256((__m256i *)(dst + 64 * (32 * h + 8 * qd + t) + 32 * rh),
                                            pk_q6(g + 256 + 1536 * h + 192 * t + 32 * rh, qd));
        for (int rh = 0; rh < 2; rh++) {
            for (int sb = 0; sb < 16; sb++)
                _mm256_storeu_si256((__m256i *)(dst + 4096 + 32 * (16 * rh + sb)),
                                    pk_scale(pk_l(g + 64 * (sb / 4) + 32 * rh), sb & 3, 1));
            for (int c = 0; c < 4; c++) {
                __m256i S = pk_l(g + 64 * c + 32 * rh);
                _mm256_storeu_si256((__m256i *)(dst + 5120 + 256 * rh + 64 * c), _mm256_srai_epi16(_mm256_slli_epi16(S, 8), 8));
                _mm256_storeu_si256((__m256i *)(dst + 5120 + 256 * rh + 64 * c + 32), _mm256_srai_epi16(S, 8));
            }
            _mm256_storeu_ps((float *)(dst + 5632 + 32 * rh), _mm256_cvtph_ps(pk_l128(g + 3328 + 16 * rh)));
        }
    }
}

PKAI void pkw_q6_k_run(const int NX, int64_t nb, const uint8_t *g, const uint8_t *x, size_t xs,
                       const uint8_t *xa, size_t xar, pk_acc *ac)
{
    for (int64_t b = 0; b < nb; b++, g += PKW_Q6_K) {
        PKU for (int rh = 0; rh < 2; rh++) {
            __m256i is[PKW_TILE_NX];
            PKU for (int j = 0; j < NX; j++) is[j] = _mm256_setzero_si256();
            _Pragma("GCC unroll 1") for (int sb = 0; sb < 16; sb++) {
                const uint8_t *xq = x + 292 * b + 4 + 16 * sb;
                __m256i sc = pk_l(g + 4096 + 32 * (16 * rh + sb));
                PKU for (int t0 = 0; t0 < 4; t0 += 2) {
                    __m256i a[PKW_TILE_NX];
                    PKU for (int j = 0; j < NX; j++) a[j] = _mm256_setzero_si256();
                    PKU for (int t = t0; t < t0 + 2; t++) {
                        __m256i q = pk_l(g + 64 * (4 * sb + t) + 32 * rh);
                        PKU for (int j = 0; j < NX; j++) {
                            a[j] = _mm256_add_epi16(a[j], _mm256_maddubs_epi16(q, pk_bcv(xq + j * xs + 4 * t)));
                            PKW_KEEP(a[j]);
                        }
                    }
                    PKU for (int j = 0; j < NX; j++) is[j] = _mm256_add_epi32(is[j], _mm256_madd_epi16(a[j], sc));
                }
            }
            const uint8_t *cp = g + 5120 + 256 * rh;
            __m256 d = _mm256_load_ps((const float *)(g + 5632 + 32 * rh));
            PKU for (int j = 0; j < NX; j++) {
                const pk_xk *ex = (const pk_xk *)(xa + j * xar) + b;
                __m256i C = _mm256_setzero_si256();
                PKU for (int c = 0; c < 4; c++) {
                    C = _mm256_add_epi32(C, _mm256_madd_epi16(pk_l(cp + 64 * c), _mm256_set1_epi32(ex->m[2 * c])));
                    C = _mm256_add_epi32(C, _mm256_madd_epi16(pk_l(cp + 64 * c + 32), _mm256_set1_epi32(ex->m[2 * c + 1])));
                }
                __m256i isum = _mm256_sub_epi32(is[j], _mm256_slli_epi32(C, 5));
                pk_fma(ACC(rh, j), _mm256_cvtepi32_ps(isum), _mm256_mul_ps(d, _mm256_set1_ps(ex->dx)));
            }
        }
    }
}

/* ---- gemm.h entries ---- */

/* NAME##_w_uk, the wide eng__ukernel of the narrow set NAME
 * (quant_avx2_pk.h), over W##_expand and W##_run: file block BS, packed group block GBS, expanded group block WB, side data
 * XB bytes per block (XAUX its filler), PER blocks per gathered chunk. */
#define PKW_KERNELS(NAME, W, T, BS, GBS, WB, XB, XAUX, PER)                                                \
    static size_t W##_strip_bytes(int64_t n, bool packed)                                         \
    {                                                                                                  \
        (void)packed;                                                                                  \
        return (size_t)(n / (BS == 34 ? 32 : 256)) * WB;                                               \
    }                                                                                                  \
    static const uint8_t *W##_strip_pack(int v, int groups, int nv, bool packed, int64_t n,      \
                                              const uint8_t *w, size_t ws, uint8_t *buf)              \
    {                                                                                                  \
        (void)groups;                                                                                  \
        const int64_t nb = n / (BS == 34 ? 32 : 256);                                                  \
        uint8_t *dst = buf + (size_t)v * W##_strip_bytes(n, packed);                              \
        _Alignas(64) uint8_t gb[PER * GBS];                                                            \
        for (int64_t b0 = 0; b0 < nb; b0 += PER) {                                                     \
            const int64_t m = nb - b0 < PER ? nb - b0 : PER;                                           \
            const uint8_t *src = w + (size_t)b0 * GBS;                                                 \
            if (!packed) {                                                                             \
                pk_gather(ENG_TYPE_##T, BS, nv, w, ws, b0, m, gb);                                     \
                src = gb;                                                                              \
            }                                                                                          \
            W##_expand(m, src, dst + (size_t)b0 * WB);                                              \
        }                                                                                              \
        return dst;                                                                                    \
    }                                                                                                  \
    static void W##_strip_tile(int groups, int nx, int nv_last, int64_t n,                        \
                                    const uint8_t *const *g, const uint8_t *x, size_t xs,             \
                                    const void *xa, float *y, size_t ys)                               \
    {                                                                                                  \
        const int64_t nb = n / (BS == 34 ? 32 : 256);                                                  \
        const size_t xar = (size_t)nb * (XB);                                                          \
        for (int v = 0; v < groups; v++) {                                                             \
            const int nv = v == groups - 1 ? nv_last : 16;                                             \
            pk_acc acc;                                                                                \
            memset(&acc, 0, sizeof acc);                                                               \
            switch (nx < PKW_TILE_NX ? nx : PKW_TILE_NX) {                                             \
            case 1: W##_run(1, nb, g[v], x, xs, xa, xar, &acc); break;                              \
            case 2: W##_run(2, nb, g[v], x, xs, xa, xar, &acc); break;                              \
            case 3: W##_run(3, nb, g[v], x, xs, xa, xar, &acc); break;                              \
            default: W##_run(4, nb, g[v], x, xs, xa, xar, &acc); break;                             \
            }                                                                                          \
            pk_store(nx < PKW_TILE_NX ? nx : PKW_TILE_NX, nv, &acc, y + 16 * v, ys);                   \
        }                                                                                              \
    }                                                                                                  \
    static const eng__ukernel NAME##_w_uk = {                                                          \
        .type = ENG_TYPE_##T, .xaux_block_bytes = (XB), .xaux = XAUX,                                  \
        .gemv16 = NAME##_gemv16, .prefill_nx = PKW_NX, .strip_bytes = W##_strip_bytes,       \
        .strip_pack = W##_strip_pack, .strip_tile = W##_strip_tile,                          \
        .strip_groups = PK_GROUPS, .strip_nx = PKW_TILE_NX,                                            \
        .gemv16_packed = NAME##_gemv16_packed, .strip_packed = true};

PKW_KERNELS(pk_q8_0, pkw_q8_0, Q8_0, 34, 544, PKW_Q8_0, PKW_Q8_XB, pkw_q8_0_xaux, 8)
PKW_KERNELS(pk_q4_k, pkw_q4_k, Q4_K, 144, 2304, PKW_Q4_K, sizeof(pk_xk), pk_q4_k_xaux, 2)
PKW_KERNELS(pk_q6_k, pkw_q6_k, Q6_K, 210, 3360, PKW_Q6_K, sizeof(pk_xk), pk_q6_k_xaux, 2)
