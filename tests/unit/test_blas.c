/*
 * test_blas.c - the opt-in OpenBLAS product path (gemm_blas.c).
 *
 * It is not bit-identical to the kernel table, so it is checked against the
 * scalar gemm within float rounding (a bound from sum |w| |x|), from the file
 * layout and from packed F16 groups (read as W^T), the
 * ORTHOSERVE_BLAS_NX switch, and whole models: the F32, F16 and BF16 test models
 * logits with the path on stay within the golden tolerance of the path off.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "orthoserve/engine.h"
#include "testutil.h"

/* Random rows of a type: nr x n weights, nx activations in the vec type. */
typedef struct {
    int type;
    int64_t n, nr, nx;
    size_t ws, xs;
    uint8_t *w, *x;
    float *wf, *xf; /* what they hold, as F32 */
} prod;

static void prod_new(prod *p, int type, int64_t n, int64_t nr, int64_t nx, uint64_t *seed)
{
    const eng__type_info *ti = eng__type(type), *vi = eng__type(ti->vec_type);
    *p = (prod){.type = type, .n = n, .nr = nr, .nx = nx};
    p->ws = eng__row_size(type, n);
    p->xs = eng__row_size(ti->vec_type, n);
    p->w = malloc(p->ws * (size_t)nr);
    p->x = malloc(p->xs * (size_t)nx);
    p->wf = malloc(sizeof(float) * (size_t)(n * nr));
    p->xf = malloc(sizeof(float) * (size_t)(n * nx));
    for (int64_t i = 0; i < n * nr; i++) p->wf[i] = td_randf(seed);
    for (int64_t i = 0; i < n * nx; i++) p->xf[i] = td_randf(seed);
    for (int64_t r = 0; r < nr; r++) {
        ti->from_float(p->wf + r * n, p->w + (size_t)r * p->ws, n);
        ti->to_float(p->w + (size_t)r * p->ws, p->wf + r * n, n);
    }
    for (int64_t j = 0; j < nx; j++) {
        vi->from_float(p->xf + j * n, p->x + (size_t)j * p->xs, n);
        vi->to_float(p->x + (size_t)j * p->xs, p->xf + j * n, n);
    }
}

static void prod_free(prod *p)
{
    free(p->w), free(p->x), free(p->wf), free(p->xf);
}

/* packed: the weights in packed groups (F16, nr % 16 == 0) for the blas path. */
static void check_vs_scalar(int type, bool packed, int64_t n, int64_t nr, int64_t nx)
{
    uint64_t seed = 77 + (uint64_t)type;
    prod p;
    prod_new(&p, type, n, nr, nx, &seed);
    float *yb = malloc(sizeof(float) * (size_t)(nr * nx)), *yr = malloc(sizeof(float) * (size_t)(nr * nx));
    uint8_t *pk = malloc(p.ws * (size_t)nr);
    if (packed)
        for (int64_t g = 0; g < nr; g += ENG_PACK_ROWS)
            eng__pack16(type, p.w + (size_t)g * p.ws, p.ws, pk + (size_t)g * p.ws);
    cr_assert(eng__gemm_blas(type, packed, n, packed ? pk : p.w, p.ws, nr, p.x, p.xs, nx, yb, (size_t)nr));
    free(pk);
    eng__kernels_get(ENG_KL_SCALAR)->gemm[type](n, p.w, p.ws, nr, p.x, p.xs, nx, yr, (size_t)nr);
    for (int64_t j = 0; j < nx; j++)
        for (int64_t r = 0; r < nr; r++) {
            double mag = 0;
            for (int64_t i = 0; i < n; i++) mag += fabs((double)p.wf[r * n + i] * p.xf[j * n + i]);
            const double d = fabs((double)yb[j * nr + r] - yr[j * nr + r]);
            cr_assert_leq(d, 4e-6 * mag + 1e-30, "%s%s n=%lld row %lld act %lld: blas %.9g scalar %.9g",
                          eng__type(type)->name, packed ? " packed" : "", (long long)n, (long long)r, (long long)j, yb[j * nr + r],
                          yr[j * nr + r]);
        }
    free(yb), free(yr);
    prod_free(&p);
}

Test(blas, f32_vs_scalar)
{
    check_vs_scalar(ENG_TYPE_F32, false, 96, 53, 70);
    check_vs_scalar(ENG_TYPE_F32, false, 1000, 300, 1);
}

Test(blas, f16_vs_scalar)
{
    check_vs_scalar(ENG_TYPE_F16, false, 96, 53, 70);
    check_vs_scalar(ENG_TYPE_F16, false, 1001, 300, 3); /* strips of 256 rows and a row tail */
}

Test(blas, f16_packed_vs_scalar)
{
    check_vs_scalar(ENG_TYPE_F16, true, 96, 48, 70);
    check_vs_scalar(ENG_TYPE_F16, true, 64, 288, 9); /* two strips, the second of 2 groups */
}

Test(blas, bf16_vs_scalar)
{
    check_vs_scalar(ENG_TYPE_BF16, false, 96, 53, 70);
    check_vs_scalar(ENG_TYPE_BF16, false, 1001, 300, 3);
}

Test(blas, switch_and_types)
{
    unsetenv("ORTHOSERVE_BLAS_NX");
    cr_assert_eq(eng__blas_min_nx(), 0);
    setenv("ORTHOSERVE_BLAS_NX", "300", 1);
    cr_assert_eq(eng__blas_min_nx(), 300);
    setenv("ORTHOSERVE_BLAS_NX", "no", 1);
    cr_assert_eq(eng__blas_min_nx(), 0);
    setenv("ORTHOSERVE_BLAS_NX", "-4", 1);
    cr_assert_eq(eng__blas_min_nx(), 0);
    unsetenv("ORTHOSERVE_BLAS_NX");
    cr_assert(eng__blas_type(ENG_TYPE_F16) && eng__blas_type(ENG_TYPE_BF16) && eng__blas_type(ENG_TYPE_F32));
    cr_assert(!eng__blas_type(ENG_TYPE_Q8_0));
    float y = 0;
    uint8_t w[64] = {0}, x[64] = {0};
    cr_assert(!eng__gemm_blas(ENG_TYPE_Q8_0, false, 32, w, 34, 1, x, 34, 1, &y, 1));
}

/* Logits of the first 64 positions of a fixed id sequence, with the
 * OpenBLAS path from nx_env rows (NULL: off). */
static float *model_logits(const char *name, const char *nx_env, int32_t *n_vocab)
{
    char rel[256], err[512] = "";
    snprintf(rel, sizeof rel, "models/%s.gguf", name);
    if (nx_env) setenv("ORTHOSERVE_BLAS_NX", nx_env, 1);
    else unsetenv("ORTHOSERVE_BLAS_NX");
    eng_model_params mp = eng_model_default_params();
    mp.n_threads = 2;
    eng_model *m;
    cr_assert_eq(eng_model_load(td_path(rel), &mp, &m, err, sizeof err), ENG_OK, "%s", err);
    eng_context_params cp = eng_context_default_params();
    cp.n_ctx = 128;
    cp.type_k = cp.type_v = ENG_KV_F32; /* the goldens' KV */
    eng_context *c;
    cr_assert_eq(eng_context_new(m, &cp, &c), ENG_OK);
    unsetenv("ORTHOSERVE_BLAS_NX");
    eng_model_info info;
    eng_model_get_info(m, &info);
    *n_vocab = info.n_vocab;
    enum { T = 64 };
    int32_t ids[T], pos[T], sq[T];
    int8_t want[T];
    for (int i = 0; i < T; i++) ids[i] = 1 + (i * 37) % (info.n_vocab - 1), pos[i] = i, sq[i] = 0, want[i] = 1;
    eng_batch b = {T, ids, pos, sq, want};
    cr_assert_eq(eng_decode(c, &b), ENG_OK);
    float *out = malloc(sizeof(float) * (size_t)T * (size_t)info.n_vocab);
    for (int i = 0; i < T; i++)
        memcpy(out + (size_t)i * info.n_vocab, eng_get_logits(c, i), sizeof(float) * (size_t)info.n_vocab);
    eng_context_free(c);
    eng_model_free(m);
    return out;
}

static void check_model(const char *name)
{
    int32_t nv;
    float *ref = model_logits(name, NULL, &nv), *bl = model_logits(name, "16", &nv);
    char rel[256];
    snprintf(rel, sizeof rel, "golden/%s.json", name);
    json_t *g = td_json(rel);
    const double atol =
        json_real_value(json_object_get(json_object_get(g, "tolerances"), "logits_atol_vs_llamacpp"));
    cr_assert(atol > 0);
    double dmax = 0;
    for (size_t i = 0; i < (size_t)64 * nv; i++) dmax = fmax(dmax, fabs((double)bl[i] - ref[i]));
    cr_assert_leq(dmax, atol, "%s: OpenBLAS path logits differ by %g (tolerance %g)", name, dmax, atol);
    json_decref(g);
    free(ref), free(bl);
}

Test(blas, model_f16_logits) { check_model("tiny256-F16"); }
Test(blas, model_bf16_logits) { check_model("tiny256-BF16"); }
Test(blas, model_f32_logits) { check_model("tiny256-F32"); }
