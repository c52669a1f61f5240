/*
 * test_quant.c - block formats, conversions and kernels (quant.c, quant_avx2.c,
 * quant_avx512.c, the gemm.c driver, cpu.c) and the choice of kernel level
 * (isa.c, ORTHOSERVE_ISA) on made-up CPUs.
 *
 * The scalar table is the oracle: SIMD vec_dot / gemm must agree with it
 * within a tight tolerance, integer-exact parts (activation quantizers) must
 * be bit-identical, and within one table gemm must be bit-identical to
 * vec_dot. Dequantization is checked against hand-built blocks and, bit for
 * bit, against the sha256 goldens of every tensor of every test model.
 */
#include <criterion/criterion.h>
#include <immintrin.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "gemm.h"
#include "internal.h"
#include "testutil.h"

static const int k_types[] = {ENG_TYPE_F32,  ENG_TYPE_F16,  ENG_TYPE_BF16, ENG_TYPE_Q4_0,
                              ENG_TYPE_Q4_1, ENG_TYPE_Q5_0, ENG_TYPE_Q5_1, ENG_TYPE_Q8_0,
                              ENG_TYPE_Q8_1, ENG_TYPE_Q4_K, ENG_TYPE_Q5_K, ENG_TYPE_Q6_K};
#define N_TYPES ((int)(sizeof k_types / sizeof k_types[0]))

static const eng__kernel_level k_levels[] = {ENG_KL_SCALAR, ENG_KL_AVX2, ENG_KL_AVX2VNNI, ENG_KL_AVX512};
#define N_LEVELS ((int)(sizeof k_levels / sizeof k_levels[0]))

/* ------------------------------------------------------------------------ */
/* helpers                                                                  */
/* ------------------------------------------------------------------------ */

static void put16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }

/* Finite random fp16 in +-[2^-8, 2) (or its negative when neg). */
static uint16_t rand_h(uint64_t *s, bool allow_neg)
{
    float v = (0.05f + fabsf(td_randf(s))) * 0.5f;
    if (allow_neg && (td_rand(s) & 1)) v = -v;
    return eng__fp32_to_fp16(v);
}

/* Random but valid weight data: n elements of type t. */
static void rand_weights(int t, void *dst, int64_t n, uint64_t *s)
{
    const eng__type_info *ti = eng__type(t);
    uint8_t *p = dst;
    if (t == ENG_TYPE_F32) {
        for (int64_t i = 0; i < n; i++) ((float *)dst)[i] = td_randf(s);
        return;
    }
    if (t == ENG_TYPE_F16) {
        for (int64_t i = 0; i < n; i++) put16(p + 2 * i, eng__fp32_to_fp16(td_randf(s)));
        return;
    }
    if (t == ENG_TYPE_BF16) {
        for (int64_t i = 0; i < n; i++) put16(p + 2 * i, eng__fp32_to_bf16(td_randf(s)));
        return;
    }
    size_t bytes = eng__row_size(t, n);
    for (size_t i = 0; i < bytes; i++) p[i] = (uint8_t)td_rand(s);
    for (int64_t b = 0; b < n / ti->blck; b++) {
        uint8_t *q = p + (size_t)b * ti->type_size;
        switch (t) {
        case ENG_TYPE_Q4_0: case ENG_TYPE_Q5_0: case ENG_TYPE_Q8_0:
            put16(q, rand_h(s, true));
            break;
        case ENG_TYPE_Q4_1: case ENG_TYPE_Q5_1: case ENG_TYPE_Q8_1:
        case ENG_TYPE_Q4_K: case ENG_TYPE_Q5_K:
            put16(q, rand_h(s, true));
            put16(q + 2, rand_h(s, true));
            break;
        case ENG_TYPE_Q6_K:
            put16(q + 208, rand_h(s, true));
            break;
        default: break;
        }
    }
}

static void rand_floats(float *x, int64_t n, uint64_t *s)
{
    for (int64_t i = 0; i < n; i++) x[i] = td_randf(s) * (1.0f + (float)(i % 7));
}

/* Activation row (type vec_type of t) from random floats. */
static void rand_act(int t, void *dst, int64_t n, uint64_t *s)
{
    float *f = malloc((size_t)n * sizeof *f);
    rand_floats(f, n, s);
    eng__type(eng__type(t)->vec_type)->from_float(f, dst, n);
    free(f);
}

/* Sum of |w_i * x_i| over the dequantized rows: the scale for tolerances. */
static double abs_dot(int t, int64_t n, const void *w, const void *x)
{
    float *a = malloc((size_t)n * sizeof *a), *b = malloc((size_t)n * sizeof *b);
    eng__type(t)->to_float(w, a, n);
    eng__type(eng__type(t)->vec_type)->to_float(x, b, n);
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += fabs((double)a[i] * b[i]);
    free(a);
    free(b);
    return s;
}

static double ref_dot(int t, int64_t n, const void *w, const void *x)
{
    if (t == ENG_TYPE_Q4_1 || t == ENG_TYPE_Q5_1) {
        /* Q8_1 stores s = d * sum(q) rounded to fp16: the min term uses it */
        size_t bs = eng__type(t)->type_size, rs = eng__row_size(t, n);
        uint8_t *w0 = malloc(rs);
        memcpy(w0, w, rs);
        double extra = 0;
        for (int64_t b = 0; b < n / 32; b++) {
            uint16_t m, sx;
            memcpy(&m, w0 + (size_t)b * bs + 2, 2);
            memcpy(&sx, (const uint8_t *)x + (size_t)b * 36 + 2, 2);
            extra += (double)eng__fp16_to_fp32(m) * eng__fp16_to_fp32(sx);
            put16(w0 + (size_t)b * bs + 2, 0);
        }
        float *a = malloc((size_t)n * sizeof *a), *c = malloc((size_t)n * sizeof *c);
        eng__type(t)->to_float(w0, a, n);
        eng__type(ENG_TYPE_Q8_1)->to_float(x, c, n);
        double s = extra;
        for (int64_t i = 0; i < n; i++) s += (double)a[i] * c[i];
        free(a);
        free(c);
        free(w0);
        return s;
    }
    float *a = malloc((size_t)n * sizeof *a), *b = malloc((size_t)n * sizeof *b);
    eng__type(t)->to_float(w, a, n);
    eng__type(eng__type(t)->vec_type)->to_float(x, b, n);
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    free(a);
    free(b);
    return s;
}

static int64_t test_n(int t, int k)
{
    int blck = eng__type(t)->blck;
    if (blck == 1) {
        static const int64_t ns[] = {1, 7, 16, 33, 64, 100, 257, 1024, 4096};
        return ns[k % 9];
    }
    if (blck == 32) {
        static const int64_t ns[] = {32, 64, 96, 160, 256, 1024, 4096};
        return ns[k % 7];
    }
    static const int64_t ns[] = {256, 512, 768, 4096};
    return ns[k % 4];
}

static int n_count(int t)
{
    int blck = eng__type(t)->blck;
    return blck == 1 ? 9 : blck == 32 ? 7 : 4;
}

/* ------------------------------------------------------------------------ */
/* type table, cpu, dispatch                                                */
/* ------------------------------------------------------------------------ */

Test(quant, type_table)
{
    struct { int t; int blck; size_t sz; int vt; } e[] = {
        {ENG_TYPE_F32, 1, 4, ENG_TYPE_F32},     {ENG_TYPE_F16, 1, 2, ENG_TYPE_F32},
        {ENG_TYPE_BF16, 1, 2, ENG_TYPE_BF16},   {ENG_TYPE_Q4_0, 32, 18, ENG_TYPE_Q8_0},
        {ENG_TYPE_Q4_1, 32, 20, ENG_TYPE_Q8_1}, {ENG_TYPE_Q5_0, 32, 22, ENG_TYPE_Q8_0},
        {ENG_TYPE_Q5_1, 32, 24, ENG_TYPE_Q8_1}, {ENG_TYPE_Q8_0, 32, 34, ENG_TYPE_Q8_0},
        {ENG_TYPE_Q8_1, 32, 36, ENG_TYPE_Q8_1}, {ENG_TYPE_Q4_K, 256, 144, ENG_TYPE_Q8_K},
        {ENG_TYPE_Q5_K, 256, 176, ENG_TYPE_Q8_K}, {ENG_TYPE_Q6_K, 256, 210, ENG_TYPE_Q8_K},
        {ENG_TYPE_Q8_K, 256, 292, ENG_TYPE_Q8_K},
    };
    for (size_t i = 0; i < sizeof e / sizeof e[0]; i++) {
        const eng__type_info *ti = eng__type(e[i].t);
        cr_assert_not_null(ti, "type %d", e[i].t);
        cr_expect_eq(ti->blck, e[i].blck, "%s", ti->name);
        cr_expect_eq(ti->type_size, e[i].sz, "%s", ti->name);
        cr_expect_eq(ti->vec_type, e[i].vt, "%s", ti->name);
        cr_expect_not_null(ti->to_float);
        cr_expect_str_eq(eng_type_name(e[i].t), ti->name);
        cr_expect_not_null(eng__type(ti->vec_type)->from_float, "%s vec type", ti->name);
    }
    cr_expect_eq(eng__row_size(ENG_TYPE_Q4_K, 4096), 16 * 144);
    cr_expect_eq(eng__row_size(ENG_TYPE_Q8_0, 64), 68);
    cr_expect_eq(eng__row_size(ENG_TYPE_F16, 3), 6);
    cr_expect_null(eng__type(4));
    cr_expect_null(eng__type(-1));
    cr_expect_null(eng__type(ENG_TYPE_COUNT));
    cr_expect_null(eng__type(ENG_TYPE_Q2_K));
    cr_expect_str_eq(eng_type_name(ENG_TYPE_Q2_K), "Q2_K");
    cr_expect_null(eng_type_name(5));
    cr_expect_null(eng_type_name(1000));
    /* the writer's types */
    cr_expect_not_null(eng__type(ENG_TYPE_F16)->from_float);
    cr_expect_not_null(eng__type(ENG_TYPE_BF16)->from_float);
    cr_expect_not_null(eng__type(ENG_TYPE_Q8_0)->from_float);
    cr_expect_not_null(eng__type(ENG_TYPE_Q4_0)->from_float);
}

Test(quant, cpu_and_tables)
{
    const eng__cpu *c = eng__cpu_get();
    cr_assert_not_null(c);
    cr_expect_eq(c, eng__cpu_get());
    if (c->avx512f) cr_expect(c->avx2);
    const eng__kernels *s = eng__kernels_get(ENG_KL_SCALAR);
    cr_assert_not_null(s);
    cr_expect_str_eq(s->name, "scalar");
    cr_expect_eq(N_LEVELS, ENG_KL_COUNT);
    for (int l = 0; l < N_LEVELS; l++) {
        const eng__kernels *k = eng__kernels_get(k_levels[l]);
        cr_expect_eq(k != NULL, eng__isa_has(c, k_levels[l], NULL, 0), "level %d", l);
        if (!k) continue;
        cr_expect_str_eq(k->name, eng__kernel_level_name(k_levels[l]));
        for (int i = 0; i < N_TYPES; i++) {
            int t = k_types[i];
            cr_expect_not_null(k->vec_dot[t], "%s %s", k->name, eng_type_name(t));
            cr_expect_not_null(k->gemm[t], "%s %s", k->name, eng_type_name(t));
            cr_expect_not_null(k->quantize_act[t], "%s %s", k->name, eng_type_name(t));
        }
    }
    const eng__kernels *b = eng__kernels_best();
    cr_assert_not_null(b, "%s", eng__kernels_error());
    cr_expect_null(eng__kernels_error());
    cr_expect_eq(eng_kernels_check(NULL, 0), ENG_OK);
    cr_expect_str_eq(eng_kernel_name(), b->name);
    const char *env = getenv("ORTHOSERVE_ISA");
    if (env && env[0]) {
        cr_expect(!strcasecmp(b->name, env), "ORTHOSERVE_ISA=%s but %s in use", env, b->name);
    } else { /* the best level the CPU has */
        const eng__kernels *want = s;
        for (int l = 0; l < N_LEVELS; l++)
            if (eng__kernels_get(k_levels[l])) want = eng__kernels_get(k_levels[l]);
        cr_expect_eq(b, want, "%s in use, %s is the best", b->name, want->name);
    }
}

/* ------------------------------------------------------------------------ */
/* The kernel level in use: eng__isa_choose on made-up CPUs                 */
/* ------------------------------------------------------------------------ */

static const eng__cpu cpu_none = {0};
static const eng__cpu cpu_avx2 = {.avx2 = true, .fma = true, .f16c = true};
static const eng__cpu cpu_avx2_nofma = {.avx2 = true, .f16c = true};
static const eng__cpu cpu_avx2vnni = {.avx2 = true, .fma = true, .f16c = true, .avxvnni = true};
/* AVX-512 without AVX-VNNI (Ice Lake / Zen 4 style): avx512 but not avx2vnni */
static const eng__cpu cpu_avx512 = {.avx2 = true, .fma = true, .f16c = true, .avx512f = true,
                                    .avx512bw = true, .avx512vl = true, .avx512vnni = true,
                                    .avx512bf16 = true};
static const eng__cpu cpu_full = {.avx2 = true, .fma = true, .f16c = true, .avxvnni = true,
                                  .avx512f = true, .avx512bw = true, .avx512vl = true,
                                  .avx512vnni = true, .avx512bf16 = true};

/* eng__isa_choose's verdict; on success msg must be empty, on failure it
 * must hold every string of want (NULL-terminated). */
static int choose(const char *env, const eng__cpu *c, eng__kernel_level *lvl, const char *const *want)
{
    char msg[320];
    memset(msg, 'x', sizeof msg);
    *lvl = (eng__kernel_level)-1;
    int rc = eng__isa_choose(env, c, lvl, msg, sizeof msg);
    cr_assert(memchr(msg, 0, sizeof msg), "message not terminated");
    if (rc == 0) cr_expect_str_empty(msg, "ORTHOSERVE_ISA=%s: ok with a message: %s", env, msg);
    else cr_expect_eq((int)*lvl, -1, "ORTHOSERVE_ISA=%s: failed but set the level", env);
    for (int i = 0; want && want[i]; i++)
        cr_expect(strstr(msg, want[i]), "ORTHOSERVE_ISA=%s: '%s' not in \"%s\"", env ? env : "(unset)",
                  want[i], msg);
    return rc;
}

Test(quant, isa_default_is_best_level)
{
    const struct { const eng__cpu *c; eng__kernel_level want; } cases[] = {
        {&cpu_none, ENG_KL_SCALAR},     {&cpu_avx2_nofma, ENG_KL_SCALAR}, {&cpu_avx2, ENG_KL_AVX2},
        {&cpu_avx2vnni, ENG_KL_AVX2VNNI}, {&cpu_avx512, ENG_KL_AVX512},   {&cpu_full, ENG_KL_AVX512},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        eng__kernel_level l;
        cr_assert_eq(choose(NULL, cases[i].c, &l, NULL), 0);
        cr_expect_eq(l, cases[i].want, "case %zu (unset): %d", i, l);
        cr_assert_eq(choose("", cases[i].c, &l, NULL), 0, "empty: the default");
        cr_expect_eq(l, cases[i].want, "case %zu (empty): %d", i, l);
    }
}

Test(quant, isa_each_name_on_a_full_cpu)
{
    static const char *const names[] = {"scalar", "avx2", "avx2vnni", "avx512"};
    for (int l = 0; l < ENG_KL_COUNT; l++) {
        eng__kernel_level got;
        cr_expect_str_eq(eng__kernel_level_name((eng__kernel_level)l), names[l]);
        cr_assert_eq(choose(names[l], &cpu_full, &got, NULL), 0, "%s", names[l]);
        cr_expect_eq(got, (eng__kernel_level)l, "%s", names[l]);
        cr_expect(eng__isa_has(&cpu_full, (eng__kernel_level)l, NULL, 0));
    }
    eng__kernel_level got;
    cr_assert_eq(choose("AVX512", &cpu_full, &got, NULL), 0, "names are not case-sensitive");
    cr_expect_eq(got, ENG_KL_AVX512);
    cr_assert_eq(choose("scalar", &cpu_none, &got, NULL), 0, "scalar runs anywhere");
    cr_expect_eq(got, ENG_KL_SCALAR);
}

Test(quant, isa_unknown_name_is_an_error)
{
    eng__kernel_level l;
    const char *const want[] = {"ORTHOSERVE_ISA=bogus", "not a kernel level", "avx2vnni",
                                "levels this CPU has: scalar, avx2, avx2vnni, avx512", NULL};
    cr_expect_eq(choose("bogus", &cpu_full, &l, want), -1);
    const char *const want2[] = {"ORTHOSERVE_ISA=avx", "levels this CPU has: scalar, avx2)", NULL};
    cr_expect_eq(choose("avx", &cpu_avx2, &l, want2), -1, "a prefix is not a level");
    cr_expect_eq(choose("avx2 ", &cpu_avx2, &l, NULL), -1, "trailing space");
    /* a long value is cut in the message, which stays terminated */
    char longv[600];
    memset(longv, 'z', sizeof longv - 1);
    longv[sizeof longv - 1] = 0;
    cr_expect_eq(choose(longv, &cpu_full, &l, NULL), -1);
    cr_expect_eq(eng__isa_choose("bogus", &cpu_full, &l, NULL, 0), -1, "no message buffer");
}

Test(quant, isa_level_the_cpu_lacks_is_an_error)
{
    eng__kernel_level l;
    const char *const w1[] = {"ORTHOSERVE_ISA=avx512", "avx512f", "avx512bw", "avx512vl", "avx512vnni",
                              "avx512bf16", "levels this CPU has: scalar, avx2)", NULL};
    cr_expect_eq(choose("avx512", &cpu_avx2, &l, w1), -1, "avx512 on an AVX2-only CPU");
    const char *const w2[] = {"ORTHOSERVE_ISA=avx2:", "lacks fma,", "levels this CPU has: scalar)", NULL};
    cr_expect_eq(choose("avx2", &cpu_avx2_nofma, &l, w2), -1, "avx2 without FMA");
    const char *const w3[] = {"ORTHOSERVE_ISA=avx2vnni", "lacks avxvnni,", "scalar, avx2, avx512)", NULL};
    cr_expect_eq(choose("avx2vnni", &cpu_avx512, &l, w3), -1, "avx2vnni on AVX-512 without AVX-VNNI");
    const char *const w4[] = {"ORTHOSERVE_ISA=avx2vnni", "avx2, fma, f16c, avxvnni", "has: scalar)", NULL};
    cr_expect_eq(choose("avx2vnni", &cpu_none, &l, w4), -1);
    /* what each level needs, feature by feature */
    char miss[128];
    cr_expect(!eng__isa_has(&cpu_avx2vnni, ENG_KL_AVX512, miss, sizeof miss));
    cr_expect_str_eq(miss, "avx512f, avx512bw, avx512vl, avx512vnni, avx512bf16");
    eng__cpu c = cpu_full;
    c.avx512bf16 = false;
    cr_expect(!eng__isa_has(&c, ENG_KL_AVX512, miss, sizeof miss));
    cr_expect_str_eq(miss, "avx512bf16");
    cr_expect(eng__isa_has(&c, ENG_KL_AVX2VNNI, miss, sizeof miss));
    cr_expect_str_empty(miss);
    c = cpu_full;
    c.f16c = false;
    for (int lv = ENG_KL_AVX2; lv < ENG_KL_COUNT; lv++) {
        cr_expect(!eng__isa_has(&c, (eng__kernel_level)lv, miss, sizeof miss), "level %d without f16c", lv);
        cr_expect_str_eq(miss, "f16c");
    }
    cr_expect(eng__isa_has(&c, ENG_KL_SCALAR, NULL, 0));
    cr_expect(!eng__isa_has(&cpu_full, (eng__kernel_level)ENG_KL_COUNT, NULL, 0), "no such level");
}

/* ------------------------------------------------------------------------ */
/* fp16 / bf16                                                              */
/* ------------------------------------------------------------------------ */

static uint32_t fbits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float bitsf(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

Test(quant, fp16_edge_cases)
{
    cr_expect_eq(eng__fp32_to_fp16(0.0f), 0x0000);
    cr_expect_eq(eng__fp32_to_fp16(-0.0f), 0x8000);
    cr_expect_eq(eng__fp32_to_fp16(1.0f), 0x3c00);
    cr_expect_eq(eng__fp32_to_fp16(-2.0f), 0xc000);
    cr_expect_eq(eng__fp32_to_fp16(65504.0f), 0x7bff);
    cr_expect_eq(eng__fp32_to_fp16(65519.0f), 0x7bff);
    cr_expect_eq(eng__fp32_to_fp16(65520.0f), 0x7c00); /* tie rounds to even -> inf */
    cr_expect_eq(eng__fp32_to_fp16(1e9f), 0x7c00);
    cr_expect_eq(eng__fp32_to_fp16(-INFINITY), 0xfc00);
    uint16_t hn = eng__fp32_to_fp16(NAN);
    cr_expect((hn & 0x7c00) == 0x7c00 && (hn & 0x3ff) != 0, "nan -> %04x", hn);
    cr_expect_eq(eng__fp32_to_fp16(bitsf(0x7f800001u)) & 0x7e00, 0x7e00); /* quieted */
    /* smallest subnormal 2^-24, ties at 2^-25 go to zero, above to 1 */
    cr_expect_eq(eng__fp32_to_fp16(ldexpf(1.0f, -24)), 0x0001);
    cr_expect_eq(eng__fp32_to_fp16(ldexpf(1.0f, -25)), 0x0000);
    cr_expect_eq(eng__fp32_to_fp16(ldexpf(1.5f, -25)), 0x0001);
    cr_expect_eq(eng__fp32_to_fp16(ldexpf(3.0f, -25)), 0x0002); /* 1.5 ulp: tie -> even 2 */
    cr_expect_eq(eng__fp32_to_fp16(ldexpf(5.0f, -25)), 0x0002); /* 2.5 ulp: tie -> even 2 */
    cr_expect_eq(eng__fp32_to_fp16(ldexpf(1.0f, -14)), 0x0400);
    cr_expect_eq(eng__fp32_to_fp16(ldexpf(1023.5f, -24)), 0x0400); /* rounds up to normal */
    /* rounding in the normal range: 1 + 2^-11 is a tie -> 1.0; 1 + 3*2^-11 -> up */
    cr_expect_eq(eng__fp32_to_fp16(1.0f + ldexpf(1.0f, -11)), 0x3c00);
    cr_expect_eq(eng__fp32_to_fp16(1.0f + ldexpf(3.0f, -11)), 0x3c02);
    cr_expect_eq(eng__fp32_to_fp16(1.0f + ldexpf(1.0f, -11) + ldexpf(1.0f, -20)), 0x3c01);

    cr_expect_eq(fbits(eng__fp16_to_fp32(0x8000)), 0x80000000u);
    cr_expect_eq(eng__fp16_to_fp32(0x3c00), 1.0f);
    cr_expect_eq(eng__fp16_to_fp32(0x0001), ldexpf(1.0f, -24));
    cr_expect_eq(eng__fp16_to_fp32(0x03ff), ldexpf(1023.0f, -24));
    cr_expect_eq(eng__fp16_to_fp32(0x7bff), 65504.0f);
    cr_expect(isinf(eng__fp16_to_fp32(0x7c00)) && eng__fp16_to_fp32(0xfc00) < 0);
    cr_expect(isnan(eng__fp16_to_fp32(0x7e00)));
    /* all finite halves round-trip */
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7c00) == 0x7c00) continue;
        cr_assert_eq(eng__fp32_to_fp16(eng__fp16_to_fp32((uint16_t)h)), h, "%04x", h);
    }
}

__attribute__((target("f16c"))) static uint16_t hw_f2h(float f)
{
    return (uint16_t)_cvtss_sh(f, 0);
}
__attribute__((target("f16c"))) static float hw_h2f(uint16_t h) { return _cvtsh_ss(h); }

Test(quant, fp16_matches_f16c)
{
    if (!eng__cpu_get()->f16c) cr_skip_test("no F16C");
    uint64_t s = 42;
    for (int i = 0; i < 2000000; i++) {
        uint32_t u = (uint32_t)td_rand(&s);
        if (i & 1) u = (u & 0x8fffffffu) | 0x30000000u; /* bias towards the fp16 range */
        float f = bitsf(u);
        uint16_t a = eng__fp32_to_fp16(f), b = hw_f2h(f);
        cr_assert_eq(a, b, "%08x: %04x vs f16c %04x", u, a, b);
    }
    for (uint32_t h = 0; h < 0x10000; h++) {
        uint32_t a = fbits(eng__fp16_to_fp32((uint16_t)h)), b = fbits(hw_h2f((uint16_t)h));
        cr_assert_eq(a, b, "%04x", h);
    }
}

Test(quant, bf16_edge_cases)
{
    cr_expect_eq(eng__fp32_to_bf16(1.0f), 0x3f80);
    cr_expect_eq(eng__fp32_to_bf16(-0.0f), 0x8000);
    cr_expect_eq(eng__fp32_to_bf16(bitsf(0x3f808000u)), 0x3f80); /* tie -> even */
    cr_expect_eq(eng__fp32_to_bf16(bitsf(0x3f818000u)), 0x3f82); /* tie -> even (up) */
    cr_expect_eq(eng__fp32_to_bf16(bitsf(0x3f808001u)), 0x3f81);
    cr_expect_eq(eng__fp32_to_bf16(bitsf(0x00018000u)), 0x0002); /* subnormals kept */
    cr_expect_eq(eng__fp32_to_bf16(bitsf(0x7f7fffffu)), 0x7f80); /* max rounds to inf */
    cr_expect_eq(eng__fp32_to_bf16(INFINITY), 0x7f80);
    cr_expect_eq(eng__fp32_to_bf16(bitsf(0x7f800001u)), 0x7fc0); /* sNaN quieted */
    cr_expect_eq(eng__fp32_to_bf16(bitsf(0xffc00000u)), 0xffc0);
    cr_expect_eq(fbits(eng__bf16_to_fp32(0x3f80)), 0x3f800000u);
    cr_expect_eq(fbits(eng__bf16_to_fp32(0x0001)), 0x00010000u);
}

/* ------------------------------------------------------------------------ */
/* known values (hand-built blocks, packed here from element values)        */
/* ------------------------------------------------------------------------ */

static void expect_floats(int t, const void *blk, int64_t n, const float *want)
{
    float *got = malloc((size_t)n * sizeof *got);
    eng__type(t)->to_float(blk, got, n);
    for (int64_t i = 0; i < n; i++)
        cr_expect_eq(fbits(got[i]), fbits(want[i]), "%s el %ld: %g vs %g", eng_type_name(t),
                     (long)i, got[i], want[i]);
    free(got);
}

Test(quant, known_values_32)
{
    uint8_t b[64];
    float want[32];
    int q[32];
    for (int i = 0; i < 32; i++) q[i] = (i * 7 + 3) % 16;
    /* Q4_0: d = 0.5 */
    memset(b, 0, sizeof b);
    put16(b, 0x3800);
    for (int j = 0; j < 16; j++) b[2 + j] = (uint8_t)(q[j] | (q[j + 16] << 4));
    for (int i = 0; i < 32; i++) want[i] = (float)(q[i] - 8) * 0.5f;
    expect_floats(ENG_TYPE_Q4_0, b, 32, want);
    /* Q4_1: d = 0.25, m = -1 */
    put16(b, 0x3400);
    put16(b + 2, 0xbc00);
    for (int j = 0; j < 16; j++) b[4 + j] = (uint8_t)(q[j] | (q[j + 16] << 4));
    for (int i = 0; i < 32; i++) want[i] = (float)q[i] * 0.25f - 1.0f;
    expect_floats(ENG_TYPE_Q4_1, b, 32, want);
    /* Q5_0 / Q5_1: 5-bit values */
    int q5[32];
    for (int i = 0; i < 32; i++) q5[i] = (i * 11 + 5) % 32;
    uint32_t qh = 0;
    for (int i = 0; i < 32; i++) qh |= (uint32_t)(q5[i] >> 4) << i;
    memset(b, 0, sizeof b);
    put16(b, 0x4000); /* 2.0 */
    memcpy(b + 2, &qh, 4);
    for (int j = 0; j < 16; j++) b[6 + j] = (uint8_t)((q5[j] & 15) | ((q5[j + 16] & 15) << 4));
    for (int i = 0; i < 32; i++) want[i] = (float)(q5[i] - 16) * 2.0f;
    expect_floats(ENG_TYPE_Q5_0, b, 32, want);
    memset(b, 0, sizeof b);
    put16(b, 0x3800);      /* 0.5 */
    put16(b + 2, 0x3c00);  /* 1.0 */
    memcpy(b + 4, &qh, 4);
    for (int j = 0; j < 16; j++) b[8 + j] = (uint8_t)((q5[j] & 15) | ((q5[j + 16] & 15) << 4));
    for (int i = 0; i < 32; i++) want[i] = (float)q5[i] * 0.5f + 1.0f;
    expect_floats(ENG_TYPE_Q5_1, b, 32, want);
    /* Q8_0 */
    memset(b, 0, sizeof b);
    put16(b, 0x3c00);
    for (int i = 0; i < 32; i++) b[2 + i] = (uint8_t)(int8_t)(i * 8 - 128);
    for (int i = 0; i < 32; i++) want[i] = (float)(i * 8 - 128);
    expect_floats(ENG_TYPE_Q8_0, b, 32, want);
    /* F16 / BF16 / F32 */
    uint16_t h[3] = {0x3c00, 0xc000, 0x3555};
    float wf[3] = {1.0f, -2.0f, eng__fp16_to_fp32(0x3555)};
    expect_floats(ENG_TYPE_F16, h, 3, wf);
    uint16_t bh[2] = {0x3f80, 0xc040};
    float wb[2] = {1.0f, -3.0f};
    expect_floats(ENG_TYPE_BF16, bh, 2, wb);
    expect_floats(ENG_TYPE_F32, wf, 3, wf);
}

/* Pack 8 6-bit scales and mins the Q4_K / Q5_K way. */
static void pack_k4_scales(uint8_t s[12], const int sc[8], const int m[8])
{
    for (int j = 0; j < 4; j++) {
        s[j] = (uint8_t)((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
        s[j + 4] = (uint8_t)((m[j] & 63) | ((m[j + 4] >> 4) << 6));
        s[j + 8] = (uint8_t)((sc[j + 4] & 15) | ((m[j + 4] & 15) << 4));
    }
}

static const int k_sc[8] = {1, 7, 13, 63, 40, 33, 17, 50};
static const int k_m[8] = {0, 63, 5, 32, 48, 1, 16, 31};

Test(quant, known_values_q4_k_q5_k)
{
    uint8_t b[176];
    float want[256];
    int q[256];
    for (int i = 0; i < 256; i++) q[i] = (i * 13 + 1) % 32;
    float d = 0.5f, dmin = 0.25f;
    /* Q4_K uses the low 4 bits */
    memset(b, 0, sizeof b);
    put16(b, eng__fp32_to_fp16(d));
    put16(b + 2, eng__fp32_to_fp16(dmin));
    pack_k4_scales(b + 4, k_sc, k_m);
    for (int g = 0; g < 4; g++)
        for (int l = 0; l < 32; l++)
            b[16 + 32 * g + l] = (uint8_t)((q[64 * g + l] & 15) | ((q[64 * g + 32 + l] & 15) << 4));
    for (int i = 0; i < 256; i++) {
        int sb = i / 32;
        want[i] = d * (float)k_sc[sb] * (float)(q[i] & 15) - dmin * (float)k_m[sb];
    }
    expect_floats(ENG_TYPE_Q4_K, b, 256, want);
    /* Q5_K: 5 bits */
    memset(b, 0, sizeof b);
    put16(b, eng__fp32_to_fp16(d));
    put16(b + 2, eng__fp32_to_fp16(dmin));
    pack_k4_scales(b + 4, k_sc, k_m);
    for (int i = 0; i < 256; i++) {
        int g = i / 64, half = (i % 64) / 32, l = i % 32;
        if (q[i] & 16) b[16 + l] |= (uint8_t)(1 << (2 * g + half));
        b[48 + 32 * g + l] |= (uint8_t)((q[i] & 15) << (4 * half));
    }
    for (int i = 0; i < 256; i++) {
        int sb = i / 32;
        want[i] = d * (float)k_sc[sb] * (float)q[i] - dmin * (float)k_m[sb];
    }
    expect_floats(ENG_TYPE_Q5_K, b, 256, want);
}

Test(quant, known_values_q6_k_q8_k)
{
    uint8_t b[292];
    float want[256];
    int q[256];
    int8_t sc[16];
    for (int i = 0; i < 256; i++) q[i] = (i * 29 + 7) % 64;
    for (int s = 0; s < 16; s++) sc[s] = (int8_t)(s * 17 - 128);
    memset(b, 0, sizeof b);
    /* element e = 128h + 32*quad + l: low nibble in ql[64h + l (+32 for odd quad)],
     * (quad >= 2 -> high nibble); 2 high bits at qh[32h + l] bits 2*quad. */
    for (int e = 0; e < 256; e++) {
        int h = e / 128, r = e % 128, quad = r / 32, l = r % 32;
        int qi = 64 * h + l + ((quad & 1) ? 32 : 0);
        b[qi] |= (uint8_t)((q[e] & 15) << ((quad & 2) ? 4 : 0));
        b[128 + 32 * h + l] |= (uint8_t)((q[e] >> 4) << (2 * quad));
    }
    memcpy(b + 192, sc, 16);
    float d = 0.125f;
    put16(b + 208, eng__fp32_to_fp16(d));
    for (int e = 0; e < 256; e++) want[e] = d * (float)sc[e / 16] * (float)(q[e] - 32);
    expect_floats(ENG_TYPE_Q6_K, b, 256, want);

    /* Q8_K */
    memset(b, 0, sizeof b);
    float dk = 0.01f;
    memcpy(b, &dk, 4);
    for (int i = 0; i < 256; i++) b[4 + i] = (uint8_t)(int8_t)(i - 128);
    for (int i = 0; i < 256; i++) want[i] = dk * (float)(i - 128);
    expect_floats(ENG_TYPE_Q8_K, b, 256, want);
}

Test(quant, known_quantize)
{
    /* Q8_0 activation: amax 127 -> d 1, q = round-half-even(x) */
    float x[32];
    for (int i = 0; i < 32; i++) x[i] = (float)i - 15.5f;
    x[31] = 127.0f;
    uint8_t b[34];
    eng__type(ENG_TYPE_Q8_0)->from_float(x, b, 32);
    uint16_t dh;
    memcpy(&dh, b, 2);
    cr_expect_eq(dh, 0x3c00);
    for (int i = 0; i < 31; i++) {
        int want = (int)nearbyintf(x[i]);
        cr_expect_eq((int8_t)b[2 + i], want, "el %d: %d vs %d", i, (int8_t)b[2 + i], want);
    }
    cr_expect_eq((int8_t)b[33], 127);
    /* Q8_K: max picks the first largest |x|, scale -127/max */
    float xk[256];
    for (int i = 0; i < 256; i++) xk[i] = (float)(i % 50) * 0.1f - 2.0f;
    xk[10] = -8.0f;
    xk[20] = 8.0f;
    uint8_t bk[292];
    eng__type(ENG_TYPE_Q8_K)->from_float(xk, bk, 256);
    float dk;
    memcpy(&dk, bk, 4);
    cr_expect_eq(dk, 1.0f / (-127.0f / -8.0f));
    cr_expect_eq((int8_t)bk[4 + 10], -127);
    cr_expect_eq((int8_t)bk[4 + 20], 127);
    int16_t bs0;
    memcpy(&bs0, bk + 260, 2);
    int s = 0;
    for (int i = 0; i < 16; i++) s += (int8_t)bk[4 + i];
    cr_expect_eq(bs0, s);
    /* Q4_0 (ggml reference quantizer): the largest-|x| element maps to q=0 */
    float x4[32];
    for (int i = 0; i < 32; i++) x4[i] = (float)(i - 16) * 0.25f;
    uint8_t b4[18];
    eng__type(ENG_TYPE_Q4_0)->from_float(x4, b4, 32);
    float back[32];
    eng__type(ENG_TYPE_Q4_0)->to_float(b4, back, 32);
    cr_expect_eq(back[0], -4.0f);
    for (int i = 0; i < 32; i++) cr_expect(fabsf(back[i] - x4[i]) <= 0.25f + 1e-6f);
    /* zeros */
    float z[256] = {0};
    eng__type(ENG_TYPE_Q8_K)->from_float(z, bk, 256);
    for (int i = 0; i < 292; i++) cr_expect_eq(bk[i], 0);
    eng__type(ENG_TYPE_Q8_0)->from_float(z, b, 32);
    for (int i = 0; i < 34; i++) cr_expect_eq(b[i], 0);
}

/* ------------------------------------------------------------------------ */
/* scalar vec_dot vs dequantized dot (validates the oracle itself)          */
/* ------------------------------------------------------------------------ */

Test(quant, scalar_dot_matches_dequant)
{
    const eng__kernels *k = eng__kernels_get(ENG_KL_SCALAR);
    uint64_t s = 7;
    for (int i = 0; i < N_TYPES; i++) {
        int t = k_types[i], vt = eng__type(t)->vec_type;
        for (int c = 0; c < n_count(t); c++) {
            int64_t n = test_n(t, c);
            void *w = malloc(eng__row_size(t, n)), *x = malloc(eng__row_size(vt, n));
            rand_weights(t, w, n, &s);
            rand_act(t, x, n, &s);
            double want = ref_dot(t, n, w, x), scale = abs_dot(t, n, w, x);
            float got = k->vec_dot[t](n, w, x);
            cr_expect(fabs(got - want) <= 1e-5 * scale + 1e-30, "%s n=%ld: %g vs %g (scale %g)",
                      eng_type_name(t), (long)n, got, want, scale);
            free(w);
            free(x);
        }
    }
}

/* ------------------------------------------------------------------------ */
/* SIMD vs scalar, gemm vs vec_dot                                          */
/* ------------------------------------------------------------------------ */

static void check_level(eng__kernel_level lvl)
{
    const eng__kernels *k = eng__kernels_get(lvl);
    if (!k) cr_skip_test("CPU lacks this kernel level");
    const eng__kernels *sc = eng__kernels_get(ENG_KL_SCALAR);
    uint64_t s = 1234 + (uint64_t)lvl;
    for (int i = 0; i < N_TYPES; i++) {
        int t = k_types[i], vt = eng__type(t)->vec_type;
        for (int c = 0; c < n_count(t); c++) {
            int64_t n = test_n(t, c);
            /* a few shapes, ragged ones included; rows/x padded with strides.
             * The avx512 kernels work in groups of 16 weight rows (decode,
             * nx < 4) and strips of 16/32 rows x 4/6 activation rows
             * (prefill): {16,1} .. {48,13} cover whole groups, whole strips
             * and their remainders; {37, 17} and {2, 70} reach the AVX2
             * strips on expanded weights (from 16 activation rows). */
            static const int shapes[][2] = {{1, 1}, {3, 1}, {4, 4}, {5, 3}, {9, 7}, {2, 70}, {8, 1},
                                            {16, 1}, {33, 2}, {33, 4}, {37, 5}, {48, 13}, {64, 6}, {37, 17}};
            for (size_t sh = 0; sh < sizeof shapes / sizeof shapes[0]; sh++) {
                int nr = shapes[sh][0], nx = shapes[sh][1];
                if (n >= 4096 && nr * nx > 40) continue;
                size_t ws = eng__row_size(t, n) + 64 + 4 * (size_t)(sh & 1); /* F32 rows stay 4-aligned */
                size_t xs = eng__row_size(vt, n) + 32 * (size_t)(sh & 2);
                uint8_t *w = calloc((size_t)nr, ws), *x = calloc((size_t)nx, xs);
                for (int r = 0; r < nr; r++) rand_weights(t, w + (size_t)r * ws, n, &s);
                for (int j = 0; j < nx; j++) rand_act(t, x + (size_t)j * xs, n, &s);
                size_t ys = (size_t)nr + 3;
                float *y = malloc(sizeof(float) * ys * (size_t)nx);
                float *y2 = malloc(sizeof(float) * ys * (size_t)nx);
                for (size_t q = 0; q < ys * (size_t)nx; q++) y[q] = y2[q] = -12345.0f;
                k->gemm[t](n, w, ws, nr, x, xs, nx, y, ys);
                sc->gemm[t](n, w, ws, nr, x, xs, nx, y2, ys);
                for (int j = 0; j < nx; j++) {
                    for (int r = 0; r < nr; r++) {
                        const uint8_t *wr = w + (size_t)r * ws, *xr = x + (size_t)j * xs;
                        float g = y[(size_t)j * ys + (size_t)r];
                        float v = k->vec_dot[t](n, wr, xr);
                        cr_assert_eq(fbits(g), fbits(v),
                                     "%s %s n=%ld nr=%d nx=%d (r=%d j=%d): gemm %.9g != vec_dot %.9g",
                                     k->name, eng_type_name(t), (long)n, nr, nx, r, j, g, v);
                        float ref = sc->vec_dot[t](n, wr, xr);
                        cr_assert_eq(fbits(y2[(size_t)j * ys + (size_t)r]), fbits(ref));
                        double scale = abs_dot(t, n, wr, xr);
                        cr_assert(fabs((double)v - ref) <= 2e-5 * scale + 1e-30,
                                  "%s %s n=%ld: simd %.9g vs scalar %.9g (scale %g)", k->name,
                                  eng_type_name(t), (long)n, v, ref, scale);
                    }
                    /* padding untouched */
                    for (size_t r = (size_t)nr; r < ys; r++)
                        cr_assert_eq(y[(size_t)j * ys + r], -12345.0f);
                }
                free(w);
                free(x);
                free(y);
                free(y2);
            }
        }
    }
}

Test(quant, avx2_vs_scalar) { check_level(ENG_KL_AVX2); }
Test(quant, avx2vnni_vs_scalar) { check_level(ENG_KL_AVX2VNNI); }
Test(quant, avx512_vs_scalar) { check_level(ENG_KL_AVX512); }
Test(quant, scalar_gemm_vs_vec_dot) { check_level(ENG_KL_SCALAR); }

static void check_quantize_act(eng__kernel_level lvl)
{
    const eng__kernels *k = eng__kernels_get(lvl);
    if (!k) cr_skip_test("CPU lacks this kernel level");
    uint64_t s = 99;
    for (int i = 0; i < N_TYPES; i++) {
        int t = k_types[i], vt = eng__type(t)->vec_type;
        for (int c = 0; c < 6; c++) {
            int64_t n = eng__type(t)->blck == 1 ? 1 + 37 * c : 256 * (c + 1);
            float *f = malloc(sizeof(float) * (size_t)n);
            rand_floats(f, n, &s);
            if (c == 1) /* exact ties and repeated maxima of both signs */
                for (int64_t q = 0; q < n; q++) f[q] = (float)((int)(q % 9) - 4) * 0.5f;
            if (c == 2) for (int64_t q = 0; q < n; q++) f[q] = q < n / 2 ? 0.0f : f[q];
            if (c == 3 && n > 3) { f[1] = -3.0f; f[2] = 3.0f; }
            size_t sz = eng__row_size(vt, n);
            uint8_t *a = malloc(sz), *b = malloc(sz);
            memset(a, 0xAA, sz);
            memset(b, 0x55, sz);
            k->quantize_act[t](f, a, n);
            eng__type(vt)->from_float(f, b, n);
            cr_assert(memcmp(a, b, sz) == 0, "%s quantize_act[%s] (-> %s) n=%ld case %d differs",
                      k->name, eng_type_name(t), eng_type_name(vt), (long)n, c);
            free(a);
            free(b);
            free(f);
        }
    }
}

Test(quant, quantize_act_avx2) { check_quantize_act(ENG_KL_AVX2); }
Test(quant, quantize_act_avx2vnni) { check_quantize_act(ENG_KL_AVX2VNNI); }
Test(quant, quantize_act_avx512) { check_quantize_act(ENG_KL_AVX512); }
Test(quant, quantize_act_scalar) { check_quantize_act(ENG_KL_SCALAR); }

/* ------------------------------------------------------------------------ */
/* Golden dequantization: sha256 of every tensor of every model             */
/* ------------------------------------------------------------------------ */

typedef struct {
    uint32_t h[8];
    uint8_t buf[64];
    uint64_t len;
    size_t fill;
} sha256_ctx;

static const uint32_t sha_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

static uint32_t ror(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

static void sha_block(sha256_ctx *c, const uint8_t *p)
{
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = c->h[0], b = c->h[1], cc = c->h[2], d = c->h[3], e = c->h[4], f = c->h[5],
             g = c->h[6], h = c->h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = h + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) + ((e & f) ^ (~e & g)) + sha_k[i] + w[i];
        uint32_t t2 = (ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) + ((a & b) ^ (a & cc) ^ (b & cc));
        h = g; g = f; f = e; e = d + t1; d = cc; cc = b; b = a; a = t1 + t2;
    }
    c->h[0] += a; c->h[1] += b; c->h[2] += cc; c->h[3] += d;
    c->h[4] += e; c->h[5] += f; c->h[6] += g; c->h[7] += h;
}

static void sha_init(sha256_ctx *c)
{
    static const uint32_t h0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(c->h, h0, sizeof h0);
    c->len = 0;
    c->fill = 0;
}

static void sha_update(sha256_ctx *c, const void *data, size_t n)
{
    const uint8_t *p = data;
    c->len += n;
    while (n) {
        size_t k = 64 - c->fill < n ? 64 - c->fill : n;
        memcpy(c->buf + c->fill, p, k);
        c->fill += k;
        p += k;
        n -= k;
        if (c->fill == 64) {
            sha_block(c, c->buf);
            c->fill = 0;
        }
    }
}

static void sha_hex(sha256_ctx *c, char out[65])
{
    uint64_t bits = c->len * 8;
    uint8_t pad = 0x80, z = 0;
    sha_update(c, &pad, 1);
    while (c->fill != 56) sha_update(c, &z, 1);
    uint8_t lb[8];
    for (int i = 0; i < 8; i++) lb[i] = (uint8_t)(bits >> (56 - 8 * i));
    sha_update(c, lb, 8);
    for (int i = 0; i < 8; i++) sprintf(out + 8 * i, "%08x", c->h[i]);
}

Test(quant, sha256_self_test)
{
    sha256_ctx c;
    char hex[65];
    sha_init(&c);
    sha_update(&c, "abc", 3);
    sha_hex(&c, hex);
    cr_expect_str_eq(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

static const char *const k_models[] = {
    "stories260K", "qwen2tiny-F32", "qwen2tiny-Q8_0", "tiny256-BF16", "tiny256-F16",
    "tiny256-F32", "tiny256-Q4_0", "tiny256-Q4_K_M", "tiny256-Q5_K_M", "tiny256-Q6_K",
    "tiny256-Q8_0", "tiny256-tied-F32", "tiny256-tied-Q8_0"};

Test(quant, golden_dequant_sha256, .timeout = 600)
{
    for (size_t mi = 0; mi < sizeof k_models / sizeof k_models[0]; mi++) {
        char rel[256];
        snprintf(rel, sizeof rel, "golden/%s.json", k_models[mi]);
        json_t *gj = td_json(rel);
        json_t *rows = json_object_get(json_object_get(gj, "weights"), "rows");
        cr_assert(json_is_array(rows), "%s: no weights rows", rel);
        snprintf(rel, sizeof rel, "models/%s.gguf", k_models[mi]);
        eng__gguf *g = NULL;
        char err[256] = "";
        eng_status st = eng__gguf_open(td_path(rel), &g, err, sizeof err);
        cr_assert_eq(st, ENG_OK, "%s: %s", rel, err);
        cr_expect_eq((size_t)g->n_tensors, json_array_size(rows), "%s tensor count", rel);
        size_t idx;
        json_t *row;
        json_array_foreach(rows, idx, row) {
            const char *name = json_string_value(json_array_get(row, 0));
            const char *tname = json_string_value(json_array_get(row, 1));
            const char *want = json_string_value(json_array_get(row, 2));
            const eng__gguf_tensor *t = eng__gguf_tensor_find(g, name);
            cr_assert_not_null(t, "%s: tensor %s missing", rel, name);
            const eng__type_info *ti = eng__type((int)t->type);
            cr_assert_not_null(ti, "%s: %s has unsupported type %u", rel, name, t->type);
            cr_expect_str_eq(ti->name, tname, "%s %s type", rel, name);
            int64_t n = 1;
            for (uint32_t d = 0; d < t->n_dims; d++) n *= t->ne[d];
            cr_assert_eq(eng__row_size((int)t->type, n), t->nbytes, "%s %s size", rel, name);
            float *f = malloc(sizeof(float) * (size_t)n);
            ti->to_float(t->data, f, n);
            sha256_ctx c;
            char hex[65];
            sha_init(&c);
            sha_update(&c, f, sizeof(float) * (size_t)n);
            sha_hex(&c, hex);
            cr_expect_str_eq(hex, want, "%s %s (%s): dequant sha256 mismatch", rel, name, tname);
            free(f);
        }
        eng__gguf_close(g);
        json_decref(gj);
    }
}

/* ------------------------------------------------------------------------ */
/* packed weights (internal.h, "Packed weights")                            */
/* ------------------------------------------------------------------------ */

static const int k_packable[] = {ENG_TYPE_F16, ENG_TYPE_Q8_0, ENG_TYPE_Q4_K, ENG_TYPE_Q6_K};

Test(quant, packable_types)
{
    for (int t = 0; t < ENG_TYPE_COUNT; t++) {
        bool want = t == ENG_TYPE_F16 || t == ENG_TYPE_Q8_0 || t == ENG_TYPE_Q4_K || t == ENG_TYPE_Q6_K;
        cr_assert_eq(eng__packable(t, 4096), want, "type %d", t);
        const eng__kernels *k = eng__kernels_get(ENG_KL_AVX512);
        if (k) cr_assert_eq(k->gemm_packed[t] != NULL, want, "avx512 gemm_packed of type %d", t);
        for (int l = 0; l < N_LEVELS; l++) /* a level may pack only what is packable */
            if ((k = eng__kernels_get(k_levels[l])) && k->gemm_packed[t])
                cr_assert(want, "%s gemm_packed of unpackable type %d", k->name, t);
        cr_assert_null(eng__kernels_get(ENG_KL_SCALAR)->gemm_packed[t]);
    }
    /* F16 rows are packed 16 elements at a time */
    cr_assert(!eng__packable(ENG_TYPE_F16, 40));
    cr_assert(eng__packable(ENG_TYPE_F16, 48));
}

/* The layout is the one internal.h documents: a few fields of each type
 * checked where the comment says they are, then unpack(pack(x)) == x. */
Test(quant, pack_layout_and_roundtrip)
{
    uint64_t s = 99;
    for (size_t i = 0; i < sizeof k_packable / sizeof k_packable[0]; i++) {
        const int t = k_packable[i];
        const int64_t n = t == ENG_TYPE_F16 ? 48 : eng__type(t)->blck * 3;
        const size_t ws = eng__row_size(t, n), bs = t == ENG_TYPE_F16 ? 32 : eng__type(t)->type_size,
                     gbs = 16 * bs;
        uint8_t *rows = malloc(16 * ws), *p = malloc(16 * ws), *back = malloc(16 * ws);
        for (size_t q = 0; q < 16 * ws; q++) rows[q] = (uint8_t)(td_rand(&s) >> 56);
        eng__pack16(t, rows, ws, p);
        for (int b = 0; b < 3; b++)
            for (int k = 0; k < 16; k++) {
                const uint8_t *r = rows + (size_t)k * ws + (size_t)b * bs, *g = p + (size_t)b * gbs;
                if (t == ENG_TYPE_F16) {
                    for (int l = 0; l < 16; l++) cr_assert_eq(memcmp(g + 32 * l + 2 * k, r + 2 * l, 2), 0);
                } else if (t == ENG_TYPE_Q8_0) {
                    cr_assert_eq(memcmp(g + 512 + 2 * k, r, 2), 0);
                    for (int j = 0; j < 8; j++)
                        for (int u = 0; u < 4; u++)
                            cr_assert_eq(g[64 * j + 4 * k + u], r[2 + 4 * j + u] ^ 0x80);
                } else if (t == ENG_TYPE_Q4_K) {
                    for (int c = 0; c < 4; c++) cr_assert_eq(memcmp(g + 64 * c + 4 * k, r + 4 * c, 4), 0);
                    for (int grp = 0; grp < 4; grp++)
                        for (int j = 0; j < 8; j++)
                            cr_assert_eq(memcmp(g + 256 + 512 * grp + 64 * j + 4 * k, r + 16 + 32 * grp + 4 * j, 4), 0);
                } else {
                    for (int c = 0; c < 4; c++) cr_assert_eq(memcmp(g + 64 * c + 4 * k, r + 192 + 4 * c, 4), 0);
                    for (int h = 0; h < 2; h++)
                        for (int j = 0; j < 8; j++) {
                            const uint8_t *tr = g + 256 + 1536 * h + 192 * j + 4 * k;
                            cr_assert_eq(memcmp(tr, r + 64 * h + 4 * j, 4), 0);
                            cr_assert_eq(memcmp(tr + 64, r + 64 * h + 32 + 4 * j, 4), 0);
                            cr_assert_eq(memcmp(tr + 128, r + 128 + 32 * h + 4 * j, 4), 0);
                        }
                    cr_assert_eq(memcmp(g + 3328 + 2 * k, r + 208, 2), 0);
                }
            }
        eng__unpack16(t, p, ws, back);
        cr_assert_eq(memcmp(back, rows, 16 * ws), 0, "%s: unpack(pack(x)) != x", eng_type_name(t));
        free(rows);
        free(p);
        free(back);
    }
}

/* gemm_packed (and its scalar reference) on packed rows == gemm / vec_dot on
 * the same rows unpacked, bit for bit: decode (nx < 4) and the prefill tiles
 * (pairs of groups and a lone last group, 1..6 x rows and remainders). */
static void check_packed(eng__kernel_level lvl)
{
    const eng__kernels *k = eng__kernels_get(lvl);
    if (!k) cr_skip_test("CPU lacks this kernel level");
    const eng__kernels *sc = eng__kernels_get(ENG_KL_SCALAR);
    uint64_t s = 4242;
    int n_types = 0;
    for (size_t i = 0; i < sizeof k_packable / sizeof k_packable[0]; i++) {
        const int t = k_packable[i], vt = eng__type(t)->vec_type;
        if (!k->gemm_packed[t]) continue;
        n_types++;
        for (int c = 0; c < n_count(t); c++) {
            const int64_t n = test_n(t, c);
            if (!eng__packable(t, n)) continue; /* F16: n % 16 */
            static const int shapes[][2] = {{16, 1}, {16, 2}, {32, 3}, {16, 4}, {48, 5}, {32, 7}, {64, 13}, {80, 4},
                                            {48, 18}, {80, 23}};
            for (size_t sh = 0; sh < sizeof shapes / sizeof shapes[0]; sh++) {
                const int nr = shapes[sh][0], nx = shapes[sh][1];
                if (n >= 4096 && nr * nx > 100) continue;
                const size_t ws = eng__row_size(t, n), xs = eng__row_size(vt, n) + 32 * (sh & 1);
                uint8_t *w = malloc((size_t)nr * ws), *wp = malloc((size_t)nr * ws), *x = malloc((size_t)nx * xs);
                for (int r = 0; r < nr; r++) rand_weights(t, w + (size_t)r * ws, n, &s);
                for (int j = 0; j < nx; j++) rand_act(t, x + (size_t)j * xs, n, &s);
                for (int g = 0; g < nr / 16; g++) eng__pack16(t, w + (size_t)g * 16 * ws, ws, wp + (size_t)g * 16 * ws);
                const size_t ys = (size_t)nr + 5, ny = ys * (size_t)nx;
                float *y = malloc(sizeof(float) * ny), *yp = malloc(sizeof(float) * ny), *yr = malloc(sizeof(float) * ny);
                for (size_t q = 0; q < ny; q++) y[q] = yp[q] = yr[q] = -12345.0f;
                k->gemm[t](n, w, ws, nr, x, xs, nx, y, ys);
                k->gemm_packed[t](n, wp, ws, nr, x, xs, nx, yp, ys);
                eng__gemm_packed_ref(t, n, wp, ws, nr, x, xs, nx, yr, ys);
                for (int j = 0; j < nx; j++)
                    for (size_t r = 0; r < ys; r++) {
                        size_t q = (size_t)j * ys + r;
                        cr_assert_eq(fbits(yp[q]), fbits(y[q]), "%s %s n=%ld nr=%d nx=%d (r=%zu j=%d): packed %.9g != gemm %.9g",
                                     k->name, eng_type_name(t), (long)n, nr, nx, r, j, yp[q], y[q]);
                        if (r < (size_t)nr)
                            cr_assert_eq(fbits(yr[q]), fbits(sc->vec_dot[t](n, w + r * ws, x + (size_t)j * xs)),
                                         "%s: scalar packed reference != scalar vec_dot", eng_type_name(t));
                        else
                            cr_assert_eq(yr[q], -12345.0f);
                    }
                free(w);
                free(wp);
                free(x);
                free(y);
                free(yp);
                free(yr);
            }
        }
    }
    if (!n_types) cr_skip_test("%s has no packed kernels", k->name);
}

Test(quant, packed_gemm_matches_unpacked_avx2) { check_packed(ENG_KL_AVX2); }
Test(quant, packed_gemm_matches_unpacked_avx2vnni) { check_packed(ENG_KL_AVX2VNNI); }
Test(quant, packed_gemm_matches_unpacked_avx512) { check_packed(ENG_KL_AVX512); }

/* The same with the prefill blocking shrunk (gemm.c: passes of a few
 * activation rows over panels of two strips), so that the small shapes
 * above run several passes over several panels: still bit for bit. */
static void check_blocked(eng__kernel_level lvl)
{
    if (!eng__kernels_get(lvl)) cr_skip_test("CPU lacks this kernel level");
    eng__gemm_blocking(2048, 24576);
    check_level(lvl);
    check_packed(lvl);
    eng__gemm_blocking(0, 0);
}

Test(quant, prefill_blocking_avx2) { check_blocked(ENG_KL_AVX2); }
Test(quant, prefill_blocking_avx2vnni) { check_blocked(ENG_KL_AVX2VNNI); }
Test(quant, prefill_blocking_avx512) { check_blocked(ENG_KL_AVX512); }

/* ------------------------------------------------------------------------ */
/* The gemm driver (gemm.c) with micro-kernels made of the scalar vec_dot    */
/* ------------------------------------------------------------------------ */
/*
 * Every path of the driver (register tiles; 16-row decode; strips of 2 or 3
 * groups, from the file layout or packed groups, in one pass or in passes
 * over panels of strips; packed prefill through the portable unpack) must
 * cover each (row, activation) pair exactly once with
 * the right pointers: results equal the scalar gemm bit for bit, and every
 * kernel checks the activation side data it is given belongs to its row.
 */
#define DT ENG_TYPE_Q8_0

static float drv_dot(int64_t n, const uint8_t *w, const uint8_t *x)
{
    return eng__kernels_get(ENG_KL_SCALAR)->vec_dot[DT](n, w, x);
}

/* xaux: per block, the activation block's fp16 scale bits (as uint32). */
static void drv_xaux(int64_t n, const uint8_t *x, size_t xs, int64_t nx, void *out)
{
    uint32_t *o = out;
    for (int64_t j = 0; j < nx; j++)
        for (int64_t b = 0; b < n / 32; b++) {
            const uint8_t *d = x + (size_t)j * xs + 34 * b;
            o[j * (n / 32) + b] = (uint32_t)d[0] | (uint32_t)d[1] << 8;
        }
}

static void drv_check_xa(int64_t n, const uint8_t *x, const void *xa)
{
    const uint32_t *a = xa;
    for (int64_t b = 0; b < n / 32; b++)
        cr_assert_eq(a[b], (uint32_t)x[34 * b] | (uint32_t)x[34 * b + 1] << 8, "xaux of another row");
}

static void drv_tile(int mr, int nx, int64_t n, const uint8_t *w, size_t ws, const uint8_t *x,
                     size_t xs, float *y, size_t ys)
{
    cr_assert(mr >= 1 && mr <= 3 && nx >= 1 && nx <= 5);
    for (int r = 0; r < mr; r++)
        for (int j = 0; j < nx; j++) y[j * ys + r] = drv_dot(n, w + r * ws, x + j * xs);
}

static void drv_gemv16(int nv, int64_t n, const uint8_t *w, size_t ws, const uint8_t *x,
                       const void *xa, float *y)
{
    cr_assert(nv >= 1 && nv <= 16);
    drv_check_xa(n, x, xa);
    for (int k = 0; k < nv; k++) y[k] = drv_dot(n, w + k * ws, x);
}

/* The strip format: a group's 16 rows in the file layout, unpadded. */
static size_t drv_strip_bytes(int64_t n, bool packed)
{
    (void)packed;
    return 16 * eng__row_size(DT, n);
}

static const uint8_t *drv_strip_pack(int v, int groups, int nv, bool packed, int64_t n,
                                     const uint8_t *w, size_t ws, uint8_t *buf)
{
    cr_assert(v < groups && groups <= 3 && nv >= 1 && nv <= 16);
    size_t rs = eng__row_size(DT, n);
    uint8_t *dst = buf + (size_t)v * drv_strip_bytes(n, packed);
    if (packed) {
        cr_assert_eq(nv, 16);
        eng__unpack16(DT, w, ws, dst);
    } else {
        for (int k = 0; k < nv; k++) memcpy(dst + k * rs, w + k * ws, rs);
    }
    return dst;
}

static void drv_strip_tile(int groups, int nx, int nv_last, int64_t n, const uint8_t *const *g,
                           const uint8_t *x, size_t xs, const void *xa, float *y, size_t ys)
{
    cr_assert(groups >= 1 && groups <= 3 && nx >= 1 && nx <= 3);
    size_t rs = eng__row_size(DT, n);
    for (int j = 0; j < nx; j++) {
        drv_check_xa(n, x + j * xs, (const uint32_t *)xa + j * (n / 32));
        for (int v = 0; v < groups; v++)
            for (int k = 0; k < (v == groups - 1 ? nv_last : 16); k++)
                y[j * ys + 16 * v + k] = drv_dot(n, g[v] + k * rs, x + j * xs);
    }
}

static void drv_gemv16_packed(int nv, int64_t n, const uint8_t *w, size_t ws, const uint8_t *x,
                              const void *xa, float *y)
{
    cr_assert_eq(nv, 16);
    drv_check_xa(n, x, xa);
    uint8_t *rows = malloc(16 * ws);
    eng__unpack16(DT, w, ws, rows);
    for (int k = 0; k < 16; k++) y[k] = drv_dot(n, rows + k * ws, x);
    free(rows);
}

Test(quant, gemm_driver_paths)
{
    const eng__ukernel tiles = {.type = DT, .xaux_block_bytes = 4, .xaux = drv_xaux,
                                .tile = drv_tile, .tile_mr = 3, .tile_nx = 5,
                                .prefill_nx = 4, .strip_groups = 2,
                                .gemv16_packed = drv_gemv16_packed};
    eng__ukernel strips = {.type = DT, .xaux_block_bytes = 4, .xaux = drv_xaux,
                           .gemv16 = drv_gemv16, .prefill_nx = 4, .strip_bytes = drv_strip_bytes,
                           .strip_pack = drv_strip_pack, .strip_tile = drv_strip_tile,
                           .strip_groups = 2, .strip_nx = 3, .gemv16_packed = drv_gemv16_packed,
                           .strip_packed = true};
    eng__ukernel unpacking = strips; /* packed prefill: eng__unpack16, then the strips */
    unpacking.strip_packed = false;
    unpacking.strip_groups = 3;
    const eng__ukernel *uks[] = {&tiles, &strips, &unpacking};
    const eng__kernels *sc = eng__kernels_get(ENG_KL_SCALAR);
    static const int nrs[] = {1, 15, 16, 17, 33, 48, 64, 80}, nxs[] = {1, 3, 4, 7, 70};
    uint64_t s = 99;
    const int64_t n = 96;
    const size_t ws = eng__row_size(DT, n), xs = eng__row_size(DT, n) + 6;
    for (size_t a = 0; a < sizeof nrs / sizeof nrs[0]; a++)
        for (size_t b = 0; b < sizeof nxs / sizeof nxs[0]; b++) {
            const int nr = nrs[a], nx = nxs[b];
            const size_t ys = (size_t)nr + 2, ny = ys * (size_t)nx;
            uint8_t *w = malloc((size_t)nr * ws), *wp = malloc((size_t)nr * ws), *x = malloc((size_t)nx * xs);
            float *want = malloc(ny * sizeof *want), *got = malloc(ny * sizeof *got);
            for (int r = 0; r < nr; r++) rand_weights(DT, w + (size_t)r * ws, n, &s);
            for (int j = 0; j < nx; j++) rand_act(DT, x + (size_t)j * xs, n, &s);
            for (int g = 0; g < nr / 16; g++) eng__pack16(DT, w + (size_t)g * 16 * ws, ws, wp + (size_t)g * 16 * ws);
            sc->gemm[DT](n, w, ws, nr, x, xs, nx, want, ys);
            /* default blocking, then passes of 6 rows over panels of 2 strips */
            for (int bl = 0; bl < 2; bl++) {
                eng__gemm_blocking(bl ? 6 * (xs + 4 * (n / 32)) : 0, bl ? 2 * 32 * eng__row_size(DT, n) : 0);
                for (size_t u = 0; u < 3; u++)
                    for (int packed = 0; packed < 2; packed++) {
                        if (packed && nr % 16) continue;
                        for (size_t i = 0; i < ny; i++) got[i] = NAN;
                        eng__gemm(uks[u], packed, n, packed ? wp : w, ws, nr, x, xs, nx, got, ys);
                        for (int j = 0; j < nx; j++)
                            for (int r = 0; r < nr; r++)
                                cr_assert_eq(memcmp(&got[j * ys + r], &want[j * ys + r], 4), 0,
                                             "kernels %zu packed %d blocked %d nr=%d nx=%d (r=%d j=%d)",
                                             u, packed, bl, nr, nx, r, j);
                    }
            }
            eng__gemm_blocking(0, 0);
            free(w);
            free(wp);
            free(x);
            free(want);
            free(got);
        }
}
