/*
 * gemm_blas.c - the opt-in OpenBLAS path for wide F32/F16/BF16 weight
 * products (prefill): weight rows are converted to F32 a strip at a time and
 * multiplied with OpenBLAS's sgemm.
 *
 * Measured with tools/bench-blas (docs/ARCHITECTURE.md, "OpenBLAS"):
 * sgemm is 1.3-1.9x our kernels from a few hundred activation rows on, and
 * no faster at 64. It is NOT bit-identical to the kernel table's gemm
 * (OpenBLAS sums in its own blocked order), so using it breaks "batch
 * composition never changes a sequence's arithmetic": it is off unless
 * ORTHOSERVE_BLAS_NX=N (N >= 1, activation rows from which products use it)
 * is set when a context is created. The results stay within float rounding
 * of the exact kernels (tests/unit/test_blas.c).
 */
#include "internal.h"

#include <cblas.h>
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

/* Weight rows converted per sgemm call: every call packs the activations
 * again, so strips are wide (at n = 5632: 5.8 MiB of F32 per thread). */
#define STRIP_ROWS 256

int64_t eng__blas_min_nx(void)
{
    const char *env = getenv("ORTHOSERVE_BLAS_NX");
    long v = env ? strtol(env, NULL, 10) : 0;
    return v > 0 ? (int64_t)v : 0;
}

bool eng__blas_type(int type)
{
    return type == ENG_TYPE_F32 || type == ENG_TYPE_F16 || type == ENG_TYPE_BF16;
}

__attribute__((target("avx2,f16c"))) static void half_to_f32_avx2(int type, const uint16_t *s, float *d,
                                                                 int64_t n)
{
    int64_t i = 0;
    if (type == ENG_TYPE_F16)
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(d + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + i))));
    else
        for (; i + 8 <= n; i += 8) {
            const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(s + i)));
            _mm256_storeu_ps(d + i, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
        }
    for (; i < n; i++) d[i] = type == ENG_TYPE_F16 ? eng__fp16_to_fp32(s[i]) : eng__bf16_to_fp32(s[i]);
}

/* n elements of one F16/BF16 row to F32 (exact either way). */
static void half_to_f32(int type, const void *src, float *dst, int64_t n)
{
    const eng__cpu *c = eng__cpu_get();
    if (c->avx2 && c->f16c) half_to_f32_avx2(type, src, dst, n);
    else eng__type(type)->to_float(src, dst, n);
}

/* rows of n in the file layout to F32 at dst (row stride n). */
static void rows_to_f32(int type, int64_t n, const uint8_t *w, size_t ws, int64_t rows, float *dst)
{
    for (int64_t r = 0; r < rows; r++) half_to_f32(type, w + (size_t)r * ws, dst + (size_t)r * n, n);
}

__attribute__((target("avx2,f16c"))) static void packed_to_f32t_avx2(const uint16_t *g, int64_t n, float *bt,
                                                                    int64_t ldb)
{
    for (int64_t e = 0; e < n; e++, g += ENG_PACK_ROWS) {
        _mm256_storeu_ps(bt + e * ldb, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)g)));
        _mm256_storeu_ps(bt + e * ldb + 8, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(g + 8))));
    }
}

/* rows (whole packed F16 groups) to the transposed strip bt[e * rows + row]:
 * a packed group holds element e of its 16 rows at e * 16 (internal.h), so
 * W^T comes out of it by linear conversion. */
static void packed_to_f32t(int64_t n, const uint8_t *w, size_t ws, int64_t rows, float *bt)
{
    const eng__cpu *c = eng__cpu_get();
    for (int64_t g = 0; g < rows; g += ENG_PACK_ROWS) {
        const uint16_t *src = (const uint16_t *)(w + (size_t)g * ws);
        if (c->avx2 && c->f16c) {
            packed_to_f32t_avx2(src, n, bt + g, rows);
            continue;
        }
        for (int64_t e = 0; e < n; e++)
            for (int i = 0; i < ENG_PACK_ROWS; i++) bt[e * rows + g + i] = eng__fp16_to_fp32(src[e * ENG_PACK_ROWS + i]);
    }
}

bool eng__gemm_blas(int type, bool packed, int64_t n, const void *wv, size_t ws, int64_t nr, const void *xv,
                    size_t xs, int64_t nx, float *y, size_t ys)
{
    const uint8_t *w = wv, *x = xv;
    if (!eng__blas_type(type) || nr <= 0 || nx <= 0 || n <= 0 || n > (1 << 30) || nr > (1 << 30) ||
        nx > (1 << 30) || ys > (1u << 30))
        return false;
    const bool xbf16 = eng__type(type)->vec_type == ENG_TYPE_BF16;
    if (!xbf16 && xs % sizeof(float)) return false;
    ENG_ASSERT(!packed || (type == ENG_TYPE_F16 && nr % ENG_PACK_ROWS == 0));
    /* activations as F32: F32 and F16 weights take F32 rows; BF16 rows are widened (exactly) */
    float *xbf = NULL;
    const float *xf = (const float *)x;
    int lda = (int)(xs / sizeof(float));
    if (xbf16) {
        xbf = malloc(sizeof(float) * (size_t)(n * nx));
        if (!xbf) return false;
        for (int64_t j = 0; j < nx; j++) half_to_f32(ENG_TYPE_BF16, x + (size_t)j * xs, xbf + (size_t)j * n, n);
        xf = xbf;
        lda = (int)n;
    }
    if (type == ENG_TYPE_F32 && ws % sizeof(float) == 0) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nx, (int)nr, (int)n, 1.0f, xf, lda,
                    (const float *)w, (int)(ws / sizeof(float)), 0.0f, y, (int)ys);
        free(xbf);
        return true;
    }
    float *strip = malloc(sizeof(float) * (size_t)(STRIP_ROWS * n));
    if (!strip) {
        free(xbf);
        return false;
    }
    for (int64_t r = 0; r < nr; r += STRIP_ROWS) {
        const int64_t m = nr - r < STRIP_ROWS ? nr - r : STRIP_ROWS;
        if (packed) { /* strip = W^T (n x m) */
            packed_to_f32t(n, w + (size_t)r * ws, ws, m, strip);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nx, (int)m, (int)n, 1.0f, xf, lda, strip,
                        (int)m, 0.0f, y + r, (int)ys);
        } else { /* strip = W (m x n) */
            rows_to_f32(type, n, w + (size_t)r * ws, ws, m, strip);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nx, (int)m, (int)n, 1.0f, xf, lda, strip,
                        (int)n, 0.0f, y + r, (int)ys);
        }
    }
    free(strip), free(xbf);
    return true;
}
