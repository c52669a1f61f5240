/*
 * quant.c - weight block formats (ggml-compatible layouts), fp16/bf16
 * conversion, scalar reference kernels and kernel-table dispatch.
 *
 * Block layouts (little-endian, packed, as stored in GGUF files):
 *   Q4_0  32 el, 18 B: fp16 d | qs[16]             x = (q - 8) * d
 *   Q4_1  32 el, 20 B: fp16 d, fp16 m | qs[16]     x = q * d + m
 *   Q5_0  32 el, 22 B: fp16 d | qh[4] | qs[16]     x = (q - 16) * d, q = nibble | bit << 4
 *   Q5_1  32 el, 24 B: fp16 d, fp16 m | qh[4] | qs[16]   x = q * d + m
 *   Q8_0  32 el, 34 B: fp16 d | int8 qs[32]        x = q * d
 *   Q8_1  32 el, 36 B: fp16 d, fp16 s | int8 qs[32] (s = d * sum q)
 *   (4-bit types: byte j holds element j in its low nibble, j + 16 in its high;
 *    5-bit types: bit j of the little-endian 32-bit qh is element j's 5th bit.)
 *   Q4_K 256 el, 144 B: fp16 d, fp16 dmin | scales[12] | qs[128]
 *        8 sub-blocks of 32 with 6-bit scale sc and min m packed in scales[12];
 *        x = d*sc*q - dmin*m. qs[32g + l]: low nibble = el 64g + l, high = 64g + 32 + l.
 *   Q5_K 256 el, 176 B: fp16 d, fp16 dmin | scales[12] | qh[32] | qs[128]
 *        like Q4_K plus 5th bits: bit 2g of qh[l] for el 64g + l, bit 2g+1 for 64g+32+l.
 *   Q6_K 256 el, 210 B: ql[128] | qh[64] | int8 scales[16] | fp16 d
 *        x = d * sc[el / 16] * (q - 32), q 6 bits (see q6k_get).
 *   Q8_K 256 el, 292 B: float d | int8 qs[256] | int16 bsums[16] (sums of 16 qs).
 */
#include "internal.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* SIMD table initialisers (quant_avx2.c, quant_avx512.c): they overwrite the
 * entries they implement in a table that starts as a copy of the scalar one. */
void eng__quant_avx2_init(eng__kernels *k, bool vnni);
void eng__quant_avx512_init(eng__kernels *k);

/* ------------------------------------------------------------------------ */
/* fp16 / bf16                                                              */
/* ------------------------------------------------------------------------ */

static inline uint32_t f2u(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float u2f(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float eng__fp16_to_fp32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    if (exp == 0x1f) /* inf, or nan made quiet with its payload kept (like F16C) */
        return u2f(sign | 0x7f800000u | (man << 13) | (man ? 0x400000u : 0));
    if (exp == 0) {
        if (man == 0) return u2f(sign);
        /* subnormal: man * 2^-24, exact in float */
        float v = (float)man * u2f(0x33800000u); /* 2^-24 */
        return u2f(sign | f2u(v));
    }
    return u2f(sign | ((exp + 112) << 23) | (man << 13));
}

uint16_t eng__fp32_to_fp16(float f)
{
    uint32_t u = f2u(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) /* nan: quiet, keep top payload bits (F16C behaviour) */
        return (uint16_t)(sign | 0x7e00 | ((a >> 13) & 0x3ff));
    if (a >= 0x477ff000u) /* rounds to >= 65536: inf */
        return (uint16_t)(sign | 0x7c00);
    if (a >= 0x38800000u) { /* normal fp16 range (>= 2^-14) */
        uint32_t r = a + 0xfffu + ((a >> 13) & 1); /* round to nearest even */
        return (uint16_t)(sign | ((r - 0x38000000u) >> 13));
    }
    if (a < 0x33000000u) /* < 2^-25: rounds to zero (2^-25 itself is a tie to 0) */
        return sign;
    /* subnormal result: value = m * 2^-24, m = round(a / 2^-24) */
    uint32_t e = a >> 23;                 /* biased exponent, 102..112 */
    uint32_t m = (a & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - e;             /* 14..24: m * 2^(e-150) / 2^-24 */
    uint32_t q = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1))) q++;
    return (uint16_t)(sign | q);
}

float eng__bf16_to_fp32(uint16_t h)
{
    return u2f((uint32_t)h << 16);
}

uint16_t eng__fp32_to_bf16(float f)
{
    uint32_t u = f2u(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}

/* ------------------------------------------------------------------------ */
/* Block helpers                                                            */
/* ------------------------------------------------------------------------ */

static inline float ld_f16(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return eng__fp16_to_fp32(h);
}

static inline void st_f16(uint8_t *p, float f)
{
    uint16_t h = eng__fp32_to_fp16(f);
    memcpy(p, &h, 2);
}

static inline uint32_t ld_u32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* Q4_K / Q5_K: 6-bit scale and min of sub-block j (0..7). */
static inline void k4_scale_min(int j, const uint8_t *s, int *sc, int *m)
{
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0xf) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* Q6_K quant (0..63) of element e (0..255) of a block. */
static inline int q6k_get(const uint8_t *b, int e)
{
    const uint8_t *ql = b, *qh = b + 128;
    int h = e / 128, r = e % 128, quad = r / 32, l = r % 32;
    int lo = (quad & 1) ? ql[64 * h + 32 + l] : ql[64 * h + l];
    lo = (quad & 2) ? lo >> 4 : lo & 0xf;
    int hi = (qh[32 * h + l] >> (2 * quad)) & 3;
    return lo | (hi << 4);
}

/* ------------------------------------------------------------------------ */
/* to_float (bit-exact with ggml's dequantizers)                            */
/* ------------------------------------------------------------------------ */

static void f32_to_float(const void *src, float *dst, int64_t n)
{
    memcpy(dst, src, (size_t)n * 4);
}

static void f16_to_float(const void *src, float *dst, int64_t n)
{
    const uint8_t *s = src;
    for (int64_t i = 0; i < n; i++) dst[i] = ld_f16(s + 2 * i);
}

static void bf16_to_float(const void *src, float *dst, int64_t n)
{
    const uint8_t *s = src;
    for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, s + 2 * i, 2);
        dst[i] = eng__bf16_to_fp32(h);
    }
}

static void q4_0_to_float(const void *src, float *dst, int64_t n)
{
    const uint8_t *b = src;
    for (int64_t i = 0; i < n / 32; i++, b += 18, dst += 32) {
        float d = ld_f16(b);
        for (int j = 0; j < 16; j++) {
            dst[j] = (float)((b[2 + j] & 0xf) - 8) * d;
            dst[j + 16] = (float)((b[2 + j] >> 4) - 8) * d;
        }
    }
}

static void q4_1_to_float(const void *src, float *dst, int64_t n)
{
    const uint8_t *b = src;
    for (int64_t i = 0; i < n / 32; i++, b += 20, dst += 32) {
        float d = ld_f16(b), m = ld_f16(b + 2);
        for (int j = 0; j < 16; j++) {
            dst[j] = (float)(b[4 + j] & 0xf) * d + m;
            dst[j + 16] = (float)(b[4 + j] >> 4) * d + m;
        }
    }
}

static void q5_0_to_float(const void *src, float *dst, int64_t n)
{
    const uint8_t *b = src;
    for (int64_t i = 0; i < n / 32; i++, b += 22, dst += 32) {
        float d = ld_f16(b);
        uint32_t qh = ld_u32(b + 2);
        for (int j = 0; j < 16; j++) {
            int q0 = (b[6 + j] & 0xf) | (int)(((qh >> j) & 1) << 4);
            int q1 = (b[6 + j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
            dst[j] = (float)(q0 - 16) * d;
            dst[j + 16] = (float)(q1 - 16) * d;
        }
    }
}

static void q5_1_to_float(const void *src, float *dst, int64_t n)
{
    const uint8_t *b = src;
    for (int64_t i = 0; i < n / 32; i++, b += 24, dst += 32) {
        float d = ld_f16(b), m = ld_f16(b + 2);
        uint32_t qh = ld_u32(b + 4);
        for (int j = 0; j < 16; j++) {
            int q0 = (b[8 + j] & 0xf) | (int)(((qh >> j) & 1) << 4);
            int q1 = (b[8 + j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
            dst[j] = (float)q0 * d + m;
            dst[j + 16] = (float)q1 * d + m;
        }
    }
}

static void q8_0_to_float(const void *src, float *dst, int64_t n)
{
    const uint8_t *b = src;
    for (int64_t i = 0; i < n / 32; i++, b += 34, dst += 32) {
        float d = ld_f16(b);
        for (int j = 0; j < 32; j++) dst[j] = (float)(int8_t)b[2 + j] * d;
    }
}

static void q8_1_to_float(const void *src, float *dst, int64_t n)
{
    const uint8_t *b = src;
    for (int64_t i = 0; i < n / 32; i++, b += 36, dst += 32) {
        float d = ld_f16(b);
        for (int j = 0; j < 32; j++) dst[j] = (float)(int8_t)b[4 + j] * d;
    }
}

static void q4_k_to_float(const void *src, float *dst, int64_t n)
{
    const uint8_t *b = src;
    for (int64_t i = 0; i < n / 256; i++, b += 144) {
        float d = ld_f16(b), dmin = ld_f16(b + 2);
        const uint8_t *sc = b + 4, *q = b + 16;
        for (int g = 0; g < 4; g++, q += 32) {
            int s0, m0, s1, m1;
            k4_scale_min(2 * g, sc, &s0, &m0);
            k4_scale_min(2 * g + 1, sc, &s1, &m1);
            float d0 = d * (float)s0, n0 = dmin * (float)m0;
            float d1 = d * (float)s1, n1 = dmin * (float)m1;
            for (int l = 0; l < 32; l++) *dst++ = d0 * (float)(q[l] & 0xf) - n0;
            for (int l = 0; l < 32; l++) *dst++ = d1 * (float)(q[l] >> 4) - n1;
        }
    }
}

static void q5_k_to_float(const void *src, float *dst, int64_t n)
{
    const uint8_t *b = src;
    for (int64_t i = 0; i < n / 256; i++, b += 176) {
        float d = ld_f16(b), dmin = ld_f16(b + 2);
        const uint8_t *sc = b + 4, *qh = b + 16, *q = b + 48;
        for (int g = 0; g < 4; g++, q += 32) {
            int s0, m0, s1, m1;
            k4_scale_min(2 * g, sc, &s0, &m0);
            k4_scale_min(2 * g + 1, sc, &s1, &m1);
            float d0 = d * (float)s0, n0 = dmin * (float)m0;
            float d1 = d * (float)s1, n1 = dmin * (float)m1;
            for (int l = 0; l < 32; l++)
                *dst++ = d0 * (float)((q[l] & 0xf) + (((qh[l] >> (2 * g)) & 1) << 4)) - n0;
            for (int l = 0; l < 32; l++)
                *dst++ = d1 * (float)((q[l] >> 4) + (((qh[l] >> (2 * g + 1)) & 1) << 4)) - n1;
        }
    }
}

static void q6_k_to_float(const void *src, float *dst, int64_t n)
{
    const uint8_t *b = src;
    for (int64_t i = 0; i < n / 256; i++, b += 210, dst += 256) {
        float d = ld_f16(b + 208);
        const int8_t *sc = (const int8_t *)(b + 192);
        for (int e = 0; e < 256; e++)
            dst[e] = d * (float)sc[e / 16] * (float)(q6k_get(b, e) - 32);
    }
}

static void q8_k_to_float(const void *src, float *dst, int64_t n)
{
    const uint8_t *b = src;
    for (int64_t i = 0; i < n / 256; i++, b += 292, dst += 256) {
        float d;
        memcpy(&d, b, 4);
        for (int j = 0; j < 256; j++) dst[j] = d * (float)(int8_t)b[4 + j];
    }
}

/* ------------------------------------------------------------------------ */
/* from_float                                                               */
/* ------------------------------------------------------------------------ */

static void f32_from_float(const float *src, void *dst, int64_t n)
{
    memcpy(dst, src, (size_t)n * 4);
}

static void f16_from_float(const float *src, void *dst, int64_t n)
{
    uint8_t *d = dst;
    for (int64_t i = 0; i < n; i++) st_f16(d + 2 * i, src[i]);
}

static void bf16_from_float(const float *src, void *dst, int64_t n)
{
    uint8_t *d = dst;
    for (int64_t i = 0; i < n; i++) {
        uint16_t h = eng__fp32_to_bf16(src[i]);
        memcpy(d + 2 * i, &h, 2);
    }
}

/* Round half to even, as the x86 rounding mode does (cvtps2dq / roundps). */
static inline int round_even(float v)
{
    /* |v| <= 127 for every finite input; clamping first keeps NaN/inf
     * activations (a broken model) defined, giving -128 like cvtps2dq +
     * saturating packs do in the SIMD versions. */
    v = fminf(fmaxf(v, -128.0f), 127.0f);
    return (int)nearbyintf(v);
}

/*
 * Q8_0 / Q8_1 activations follow what llama.cpp runs on x86 (its AVX2
 * quantize_row_q8_0/q8_1): d = amax / 127, q = round_half_even(x * (127 / amax)).
 */
static void q8_0_from_float(const float *src, void *dst, int64_t n)
{
    uint8_t *b = dst;
    for (int64_t i = 0; i < n / 32; i++, b += 34, src += 32) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(src[j]));
        float d = amax / 127.0f;
        float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        st_f16(b, d);
        for (int j = 0; j < 32; j++) b[2 + j] = (uint8_t)(int8_t)round_even(src[j] * id);
    }
}

static void q8_1_from_float(const float *src, void *dst, int64_t n)
{
    uint8_t *b = dst;
    for (int64_t i = 0; i < n / 32; i++, b += 36, src += 32) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(src[j]));
        float d = amax / 127.0f;
        float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        int sum = 0;
        for (int j = 0; j < 32; j++) {
            int q = round_even(src[j] * id);
            b[4 + j] = (uint8_t)(int8_t)q;
            sum += q;
        }
        st_f16(b, d);
        st_f16(b + 2, d * (float)sum);
    }
}

/* ggml's nearest_int: round half to even for |v| < 2^22. */
static inline int nearest_int(float v)
{
    float t = v + 12582912.0f;
    return (int)(f2u(t) & 0x7fffff) - 0x400000;
}

static void q8_k_from_float(const float *src, void *dst, int64_t n)
{
    uint8_t *b = dst;
    for (int64_t i = 0; i < n / 256; i++, b += 292, src += 256) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < 256; j++) {
            float a = fabsf(src[j]);
            if (a > amax) {
                amax = a;
                max = src[j];
            }
        }
        if (amax == 0.0f) {
            memset(b, 0, 292);
            continue;
        }
        float iscale = -127.0f / max;
        int8_t *qs = (int8_t *)(b + 4);
        for (int j = 0; j < 256; j++) {
            int v = nearest_int(iscale * src[j]);
            qs[j] = (int8_t)(v < 127 ? v : 127);
        }
        for (int j = 0; j < 16; j++) {
            int s = 0;
            for (int k = 0; k < 16; k++) s += qs[16 * j + k];
            int16_t s16 = (int16_t)s;
            memcpy(b + 260 + 2 * j, &s16, 2);
        }
        float d = 1.0f / iscale;
        memcpy(b, &d, 4);
    }
}

/* ggml's reference Q4_0 quantizer (what llama-quantize writes). */
static void q4_0_from_float(const float *src, void *dst, int64_t n)
{
    uint8_t *b = dst;
    for (int64_t i = 0; i < n / 32; i++, b += 18, src += 32) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < 32; j++) {
            if (amax < fabsf(src[j])) {
                amax = fabsf(src[j]);
                max = src[j];
            }
        }
        float d = max / -8.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        st_f16(b, d);
        for (int j = 0; j < 16; j++) {
            int8_t a = (int8_t)(src[j] * id + 8.5f);
            int8_t c = (int8_t)(src[j + 16] * id + 8.5f);
            int q0 = a < 15 ? a : 15, q1 = c < 15 ? c : 15;
            b[2 + j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Type table                                                               */
/* ------------------------------------------------------------------------ */

static const eng__type_info type_tab[ENG_TYPE_COUNT] = {
    [ENG_TYPE_F32] = {"F32", 1, 4, ENG_TYPE_F32, f32_to_float, f32_from_float},
    [ENG_TYPE_F16] = {"F16", 1, 2, ENG_TYPE_F32, f16_to_float, f16_from_float},
    [ENG_TYPE_BF16] = {"BF16", 1, 2, ENG_TYPE_BF16, bf16_to_float, bf16_from_float},
    [ENG_TYPE_Q4_0] = {"Q4_0", 32, 18, ENG_TYPE_Q8_0, q4_0_to_float, q4_0_from_float},
    [ENG_TYPE_Q4_1] = {"Q4_1", 32, 20, ENG_TYPE_Q8_1, q4_1_to_float, NULL},
    [ENG_TYPE_Q5_0] = {"Q5_0", 32, 22, ENG_TYPE_Q8_0, q5_0_to_float, NULL},
    [ENG_TYPE_Q5_1] = {"Q5_1", 32, 24, ENG_TYPE_Q8_1, q5_1_to_float, NULL},
    [ENG_TYPE_Q8_0] = {"Q8_0", 32, 34, ENG_TYPE_Q8_0, q8_0_to_float, q8_0_from_float},
    [ENG_TYPE_Q8_1] = {"Q8_1", 32, 36, ENG_TYPE_Q8_1, q8_1_to_float, q8_1_from_float},
    [ENG_TYPE_Q4_K] = {"Q4_K", 256, 144, ENG_TYPE_Q8_K, q4_k_to_float, NULL},
    [ENG_TYPE_Q5_K] = {"Q5_K", 256, 176, ENG_TYPE_Q8_K, q5_k_to_float, NULL},
    [ENG_TYPE_Q6_K] = {"Q6_K", 256, 210, ENG_TYPE_Q8_K, q6_k_to_float, NULL},
    [ENG_TYPE_Q8_K] = {"Q8_K", 256, 292, ENG_TYPE_Q8_K, q8_k_to_float, q8_k_from_float},
};

const eng__type_info *eng__type(int type)
{
    if (type < 0 || type >= ENG_TYPE_COUNT || !type_tab[type].name) return NULL;
    return &type_tab[type];
}

size_t eng__row_size(int type, int64_t n)
{
    const eng__type_info *t = eng__type(type);
    if (!t || n < 0) return 0;
    return (size_t)(n / t->blck) * t->type_size;
}

const char *eng_type_name(int type)
{
    static const char *const other[] = {[ENG_TYPE_Q2_K] = "Q2_K", [ENG_TYPE_Q3_K] = "Q3_K"};
    const eng__type_info *t = eng__type(type);
    if (t) return t->name;
    if (type == ENG_TYPE_Q2_K || type == ENG_TYPE_Q3_K) return other[type];
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Scalar vec_dot (the oracle the SIMD kernels are tested against)          */
/* ------------------------------------------------------------------------ */

static float dot_f32(int64_t n, const void *w, const void *x)
{
    const float *a = w, *b = x;
    float s = 0.0f;
    for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static float dot_f16(int64_t n, const void *w, const void *x)
{
    const uint8_t *a = w;
    const float *b = x;
    float s = 0.0f;
    for (int64_t i = 0; i < n; i++) s += ld_f16(a + 2 * i) * b[i];
    return s;
}

static float dot_bf16(int64_t n, const void *w, const void *x)
{
    const uint8_t *a = w, *b = x;
    float s = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        uint16_t p, q;
        memcpy(&p, a + 2 * i, 2);
        memcpy(&q, b + 2 * i, 2);
        s += eng__bf16_to_fp32(p) * eng__bf16_to_fp32(q);
    }
    return s;
}

static float dot_q4_0(int64_t n, const void *w, const void *x)
{
    const uint8_t *a = w, *b = x;
    float s = 0.0f;
    for (int64_t i = 0; i < n / 32; i++, a += 18, b += 34) {
        const int8_t *xq = (const int8_t *)(b + 2);
        int sum = 0;
        for (int j = 0; j < 16; j++)
            sum += ((a[2 + j] & 0xf) - 8) * xq[j] + ((a[2 + j] >> 4) - 8) * xq[j + 16];
        s += (float)sum * (ld_f16(a) * ld_f16(b));
    }
    return s;
}

static float dot_q4_1(int64_t n, const void *w, const void *x)
{
    const uint8_t *a = w, *b = x;
    float s = 0.0f;
    for (int64_t i = 0; i < n / 32; i++, a += 20, b += 36) {
        const int8_t *xq = (const int8_t *)(b + 4);
        int sum = 0;
        for (int j = 0; j < 16; j++)
            sum += (a[4 + j] & 0xf) * xq[j] + (a[4 + j] >> 4) * xq[j + 16];
        s += (float)sum * (ld_f16(a) * ld_f16(b)) + ld_f16(a + 2) * ld_f16(b + 2);
    }
    return s;
}

static float dot_q5_0(int64_t n, const void *w, const void *x)
{
    const uint8_t *a = w, *b = x;
    float s = 0.0f;
    for (int64_t i = 0; i < n / 32; i++, a += 22, b += 34) {
        const int8_t *xq = (const int8_t *)(b + 2);
        uint32_t qh = ld_u32(a + 2);
        int sum = 0;
        for (int j = 0; j < 16; j++) {
            int q0 = (a[6 + j] & 0xf) | (int)(((qh >> j) & 1) << 4);
            int q1 = (a[6 + j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
            sum += (q0 - 16) * xq[j] + (q1 - 16) * xq[j + 16];
        }
        s += (float)sum * (ld_f16(a) * ld_f16(b));
    }
    return s;
}

static float dot_q5_1(int64_t n, const void *w, const void *x)
{
    const uint8_t *a = w, *b = x;
    float s = 0.0f;
    for (int64_t i = 0; i < n / 32; i++, a += 24, b += 36) {
        const int8_t *xq = (const int8_t *)(b + 4);
        uint32_t qh = ld_u32(a + 4);
        int sum = 0;
        for (int j = 0; j < 16; j++) {
            int q0 = (a[8 + j] & 0xf) | (int)(((qh >> j) & 1) << 4);
            int q1 = (a[8 + j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
            sum += q0 * xq[j] + q1 * xq[j + 16];
        }
        s += (float)sum * (ld_f16(a) * ld_f16(b)) + ld_f16(a + 2) * ld_f16(b + 2);
    }
    return s;
}

static float dot_q8_0(int64_t n, const void *w, const void *x)
{
    const uint8_t *a = w, *b = x;
    float s = 0.0f;
    for (int64_t i = 0; i < n / 32; i++, a += 34, b += 34) {
        const int8_t *wq = (const int8_t *)(a + 2), *xq = (const int8_t *)(b + 2);
        int sum = 0;
        for (int j = 0; j < 32; j++) sum += wq[j] * xq[j];
        s += (float)sum * (ld_f16(a) * ld_f16(b));
    }
    return s;
}

static float dot_q8_1(int64_t n, const void *w, const void *x)
{
    const uint8_t *a = w, *b = x;
    float s = 0.0f;
    for (int64_t i = 0; i < n / 32; i++, a += 36, b += 36) {
        const int8_t *wq = (const int8_t *)(a + 4), *xq = (const int8_t *)(b + 4);
        int sum = 0;
        for (int j = 0; j < 32; j++) sum += wq[j] * xq[j];
        s += (float)sum * (ld_f16(a) * ld_f16(b));
    }
    return s;
}

static inline float q8k_d(const uint8_t *b)
{
    float d;
    memcpy(&d, b, 4);
    return d;
}

static inline int q8k_bsum(const uint8_t *b, int j)
{
    int16_t v;
    memcpy(&v, b + 260 + 2 * j, 2);
    return v;
}

static float dot_q4_k(int64_t n, const void *w, const void *x)
{
    const uint8_t *a = w, *b = x;
    float s = 0.0f;
    for (int64_t i = 0; i < n / 256; i++, a += 144, b += 292) {
        const int8_t *xq = (const int8_t *)(b + 4);
        const uint8_t *q = a + 16;
        int isum = 0, msum = 0;
        for (int sb = 0; sb < 8; sb++) {
            int sc, m;
            k4_scale_min(sb, a + 4, &sc, &m);
            int g = sb / 2, hi = sb & 1, dot = 0;
            for (int l = 0; l < 32; l++) {
                int v = hi ? q[32 * g + l] >> 4 : q[32 * g + l] & 0xf;
                dot += v * xq[32 * sb + l];
            }
            isum += sc * dot;
            msum += m * (q8k_bsum(b, 2 * sb) + q8k_bsum(b, 2 * sb + 1));
        }
        float dx = q8k_d(b);
        s += dx * ld_f16(a) * (float)isum - dx * ld_f16(a + 2) * (float)msum;
    }
    return s;
}

static float dot_q5_k(int64_t n, const void *w, const void *x)
{
    const uint8_t *a = w, *b = x;
    float s = 0.0f;
    for (int64_t i = 0; i < n / 256; i++, a += 176, b += 292) {
        const int8_t *xq = (const int8_t *)(b + 4);
        const uint8_t *qh = a + 16, *q = a + 48;
        int isum = 0, msum = 0;
        for (int sb = 0; sb < 8; sb++) {
            int sc, m;
            k4_scale_min(sb, a + 4, &sc, &m);
            int g = sb / 2, hi = sb & 1, dot = 0;
            for (int l = 0; l < 32; l++) {
                int v = hi ? q[32 * g + l] >> 4 : q[32 * g + l] & 0xf;
                v |= ((qh[l] >> sb) & 1) << 4;
                dot += v * xq[32 * sb + l];
            }
            isum += sc * dot;
            msum += m * (q8k_bsum(b, 2 * sb) + q8k_bsum(b, 2 * sb + 1));
        }
        float dx = q8k_d(b);
        s += dx * ld_f16(a) * (float)isum - dx * ld_f16(a + 2) * (float)msum;
    }
    return s;
}

static float dot_q6_k(int64_t n, const void *w, const void *x)
{
    const uint8_t *a = w, *b = x;
    float s = 0.0f;
    for (int64_t i = 0; i < n / 256; i++, a += 210, b += 292) {
        const int8_t *xq = (const int8_t *)(b + 4);
        const int8_t *sc = (const int8_t *)(a + 192);
        int isum = 0;
        for (int sb = 0; sb < 16; sb++) {
            int dot = 0;
            for (int l = 0; l < 16; l++) dot += (q6k_get(a, 16 * sb + l) - 32) * xq[16 * sb + l];
            isum += sc[sb] * dot;
        }
        s += q8k_d(b) * ld_f16(a + 208) * (float)isum;
    }
    return s;
}

/* Generic gemm over vec_dot: trivially bit-identical to it. */
#define SCALAR_GEMM(T)                                                                   \
    static void gemm_##T(int64_t n, const void *w, size_t ws, int64_t nr, const void *x, \
                         size_t xs, int64_t nx, float *y, size_t ys)                     \
    {                                                                                    \
        for (int64_t j = 0; j < nx; j++)                                                 \
            for (int64_t r = 0; r < nr; r++)                                             \
                y[(size_t)j * ys + (size_t)r] =                                          \
                    dot_##T(n, (const uint8_t *)w + (size_t)r * ws,                      \
                            (const uint8_t *)x + (size_t)j * xs);                        \
    }
SCALAR_GEMM(f32)
SCALAR_GEMM(f16)
SCALAR_GEMM(bf16)
SCALAR_GEMM(q4_0)
SCALAR_GEMM(q4_1)
SCALAR_GEMM(q5_0)
SCALAR_GEMM(q5_1)
SCALAR_GEMM(q8_0)
SCALAR_GEMM(q8_1)
SCALAR_GEMM(q4_k)
SCALAR_GEMM(q5_k)
SCALAR_GEMM(q6_k)

/* ------------------------------------------------------------------------ */
/* Packed weights (layouts: internal.h)                                     */
/* ------------------------------------------------------------------------ */

bool eng__packable(int type, int64_t n)
{
    return (type == ENG_TYPE_F16 && n > 0 && n % 16 == 0) || type == ENG_TYPE_Q8_0 ||
           type == ENG_TYPE_Q4_K || type == ENG_TYPE_Q6_K;
}

/* Copy one unit of len bytes between the file layout (f) and the packed
 * group (g), in the direction asked; Q8_0 quants flip their sign bit. */
static void unit(bool pack, uint8_t *f, uint8_t *g, size_t len, bool flip)
{
    uint8_t t[4];
    if (pack) memcpy(t, f, len);
    else memcpy(t, g, len);
    if (flip)
        for (size_t i = 0; i < len; i++) t[i] ^= 0x80;
    memcpy(pack ? g : f, t, len);
}

/* The [x][row] run of one 16-row group: n units of len bytes of each row,
 * from offset fo of the row's block (file) to offset go of the group's
 * block, unit u of the 16 rows at go + u * ustride. */
static void runs_len(bool pack, uint8_t *f, size_t row_bytes, uint8_t *g, size_t fo, size_t go, int n,
                     size_t len, size_t ustride, bool flip)
{
    for (int k = 0; k < ENG_PACK_ROWS; k++)
        for (int u = 0; u < n; u++)
            unit(pack, f + (size_t)k * row_bytes + fo + len * (size_t)u,
                 g + go + ustride * (size_t)u + len * (size_t)k, len, flip);
}

static void runs(bool pack, uint8_t *f, size_t row_bytes, uint8_t *g, size_t fo, size_t go, int n,
                 size_t ustride, bool flip)
{
    runs_len(pack, f, row_bytes, g, fo, go, n, 4, ustride, flip);
}

/* One 16-row group, either way: f = the rows in the file layout (row k at
 * f + k * row_bytes), g = the packed group (16 * row_bytes bytes). */
static void group_xfer(bool pack, int type, uint8_t *f, size_t row_bytes, uint8_t *g)
{
    const size_t bs = type == ENG_TYPE_F16 ? 32 : eng__type(type)->type_size, nb = row_bytes / bs;
    for (size_t b = 0; b < nb; b++) {
        uint8_t *fb = f + b * bs, *gb = g + b * bs * ENG_PACK_ROWS;
        switch (type) {
        case ENG_TYPE_F16: /* 16 elements */
            runs_len(pack, fb, row_bytes, gb, 0, 0, 16, 2, 32, false);
            break;
        case ENG_TYPE_Q8_0: /* d(2) qs(32) */
            runs(pack, fb, row_bytes, gb, 2, 0, 8, 64, true);
            runs_len(pack, fb, row_bytes, gb, 0, 512, 1, 2, 0, false); /* d */
            break;
        case ENG_TYPE_Q4_K: /* d(2) dmin(2) scales(12) qs(128) */
            runs(pack, fb, row_bytes, gb, 0, 0, 4, 64, false);
            for (int grp = 0; grp < 4; grp++) runs(pack, fb, row_bytes, gb, 16 + 32 * grp, 256 + 512 * grp, 8, 64, false);
            break;
        case ENG_TYPE_Q6_K: /* ql(128) qh(64) scales(16) d(2) */
            runs(pack, fb, row_bytes, gb, 192, 0, 4, 64, false);
            for (int h = 0; h < 2; h++) { /* (ql, ql + 32, qh) dword triplets */
                runs(pack, fb, row_bytes, gb, 64 * h, 256 + 1536 * h, 8, 192, false);
                runs(pack, fb, row_bytes, gb, 64 * h + 32, 256 + 1536 * h + 64, 8, 192, false);
                runs(pack, fb, row_bytes, gb, 128 + 32 * h, 256 + 1536 * h + 128, 8, 192, false);
            }
            runs_len(pack, fb, row_bytes, gb, 208, 3328, 1, 2, 0, false); /* d */
            break;
        default: ENG_ASSERT(!"type has no packed layout");
        }
    }
}

void eng__pack16(int type, const uint8_t *src, size_t row_bytes, uint8_t *dst)
{
    group_xfer(true, type, (uint8_t *)(uintptr_t)src, row_bytes, dst);
}

void eng__unpack16(int type, const uint8_t *src, size_t row_bytes, uint8_t *dst)
{
    group_xfer(false, type, dst, row_bytes, (uint8_t *)(uintptr_t)src);
}

void eng__gemm_packed_ref(int type, int64_t n, const void *w, size_t ws, int64_t nr, const void *x,
                          size_t xs, int64_t nx, float *y, size_t ys)
{
    ENG_ASSERT(nr % ENG_PACK_ROWS == 0);
    const eng__vec_dot_fn dot = eng__kernels_get(ENG_KL_SCALAR)->vec_dot[type];
    uint8_t *rows = malloc(ws * ENG_PACK_ROWS);
    ENG_ASSERT(rows);
    for (int64_t g = 0; g < nr / ENG_PACK_ROWS; g++) {
        eng__unpack16(type, (const uint8_t *)w + (size_t)g * ENG_PACK_ROWS * ws, ws, rows);
        for (int k = 0; k < ENG_PACK_ROWS; k++)
            for (int64_t j = 0; j < nx; j++)
                y[(size_t)j * ys + (size_t)(g * ENG_PACK_ROWS + k)] =
                    dot(n, rows + (size_t)k * ws, (const uint8_t *)x + (size_t)j * xs);
    }
    free(rows);
}

/* ------------------------------------------------------------------------ */
/* Kernel tables                                                            */
/* ------------------------------------------------------------------------ */

static eng__kernels tab_scalar, tab_avx2, tab_avx2vnni, tab_avx512;
static bool have_avx2, have_avx2vnni, have_avx512;
static const eng__kernels *tab_best;
static pthread_once_t tab_once = PTHREAD_ONCE_INIT;

#define SET(k, T, t)                                                                     \
    do {                                                                                 \
        (k)->vec_dot[ENG_TYPE_##T] = dot_##t;                                            \
        (k)->gemm[ENG_TYPE_##T] = gemm_##t;                                              \
        (k)->quantize_act[ENG_TYPE_##T] = type_tab[type_tab[ENG_TYPE_##T].vec_type].from_float; \
    } while (0)

static void tables_init(void)
{
    eng__kernels *k = &tab_scalar;
    k->name = "scalar";
    k->attn = eng__attn_scalar;
    SET(k, F32, f32);
    SET(k, F16, f16);
    SET(k, BF16, bf16);
    SET(k, Q4_0, q4_0);
    SET(k, Q4_1, q4_1);
    SET(k, Q5_0, q5_0);
    SET(k, Q5_1, q5_1);
    SET(k, Q8_0, q8_0);
    SET(k, Q8_1, q8_1);
    SET(k, Q4_K, q4_k);
    SET(k, Q5_K, q5_k);
    SET(k, Q6_K, q6_k);

    const eng__cpu *c = eng__cpu_get();
    have_avx2 = c->avx2 && c->fma && c->f16c;
    have_avx512 = have_avx2 && c->avx512f && c->avx512bw && c->avx512vl && c->avx512vnni &&
                  c->avx512bf16;
    if (have_avx2) {
        tab_avx2 = tab_scalar;
        tab_avx2.name = "avx2";
        eng__quant_avx2_init(&tab_avx2, false);
    }
    have_avx2vnni = have_avx2 && c->avxvnni;
    if (have_avx2vnni) {
        tab_avx2vnni = tab_scalar;
        tab_avx2vnni.name = "avx2vnni";
        eng__quant_avx2_init(&tab_avx2vnni, true);
    }
    if (have_avx512) {
        tab_avx512 = tab_avx2;
        tab_avx512.name = "avx512";
        eng__quant_avx512_init(&tab_avx512);
    }

    tab_best = have_avx512      ? &tab_avx512
               : have_avx2vnni ? &tab_avx2vnni
               : have_avx2     ? &tab_avx2
                               : &tab_scalar;
    const char *env = getenv("ORTHOSERVE_KERNELS");
    if (env) {
        if (!strcmp(env, "scalar")) tab_best = &tab_scalar;
        else if (!strcmp(env, "avx2") && have_avx2) tab_best = &tab_avx2;
        else if (!strcmp(env, "avx2vnni") && have_avx2vnni) tab_best = &tab_avx2vnni;
        else if (!strcmp(env, "avx512") && have_avx512) tab_best = &tab_avx512;
        else eng__log(ENG_LOG_WARN, "ORTHOSERVE_KERNELS=%s not available; using %s", env,
                      tab_best->name);
    }
}

const eng__kernels *eng__kernels_get(eng__kernel_level lvl)
{
    pthread_once(&tab_once, tables_init);
    switch (lvl) {
    case ENG_KL_SCALAR: return &tab_scalar;
    case ENG_KL_AVX2: return have_avx2 ? &tab_avx2 : NULL;
    case ENG_KL_AVX2VNNI: return have_avx2vnni ? &tab_avx2vnni : NULL;
    case ENG_KL_AVX512: return have_avx512 ? &tab_avx512 : NULL;
    }
    return NULL;
}

const eng__kernels *eng__kernels_best(void)
{
    pthread_once(&tab_once, tables_init);
    return tab_best;
}

const char *eng_kernel_name(void)
{
    return eng__kernels_best()->name;
}
