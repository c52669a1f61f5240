/*
 * attn_sgemm.c - prefill attention through OpenBLAS, for tools/bench-blas to
 * measure against the engine's kernels (the engine does not use it): one
 * eng__attn_args call (the query heads of one kv head, nq query rows of one
 * sequence; layout in internal.h) as two sgemm per query head and tile of
 * query rows over keys and values gathered out of the block cache.
 *
 * Per tile of QT query rows with last key position L (the largest of its
 * rows): S = scale * Q K^T over keys 0..L (sgemm), each row's keys past its
 * own last position set to 0 after a softmax over its own keys, O = S V
 * (sgemm), each row divided by its sum. It was an opt-in engine path while
 * the AVX2 level's attention was the scalar loop; the SIMD kernels
 * (attn_avx2.c, attn_avx512.c) now run 1.3-1.9x its speed (bench-blas -A),
 * so it stays a measurement only.
 */
#include "common/attn_sgemm.h"

#include <cblas.h>
#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define QT 128 /* query rows per sgemm tile */

/* e^x for x <= 0, 8 lanes (Cephes' expf range reduction and polynomial). */
__attribute__((target("avx2,fma"))) static __m256 exp8(__m256 x)
{
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/* s[0..last] = exp(s - max) (finite: max over those), s[last+1..nk) = 0;
 * returns the sum. */
__attribute__((target("avx2,fma"))) static float softmax_avx2(float *s, int32_t nk, int32_t last)
{
    float mx = -INFINITY;
    for (int32_t j = 0; j <= last; j++) mx = s[j] > mx ? s[j] : mx;
    const __m256 vm = _mm256_set1_ps(mx);
    __m256 acc = _mm256_setzero_ps();
    int32_t j = 0;
    for (; j + 8 <= last + 1; j += 8) {
        const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j), vm));
        _mm256_storeu_ps(s + j, e);
        acc = _mm256_add_ps(acc, e);
    }
    float t[8], sum = 0.0f;
    _mm256_storeu_ps(t, acc);
    for (int i = 0; i < 8; i++) sum += t[i];
    if (j <= last) { /* the tail, masked into one vector */
        float tail[8];
        const int cnt = last + 1 - j;
        for (int i = 0; i < 8; i++) tail[i] = i < cnt ? s[j + i] - mx : -87.0f;
        _mm256_storeu_ps(tail, exp8(_mm256_loadu_ps(tail)));
        for (int i = 0; i < cnt; i++) sum += (s[j + i] = tail[i]);
        j = last + 1;
    }
    for (; j < nk; j++) s[j] = 0.0f;
    return sum;
}

static float softmax_scalar(float *s, int32_t nk, int32_t last)
{
    float mx = -INFINITY, sum = 0.0f;
    for (int32_t j = 0; j <= last; j++) mx = s[j] > mx ? s[j] : mx;
    for (int32_t j = 0; j <= last; j++) sum += (s[j] = expf(s[j] - mx));
    for (int32_t j = last + 1; j < nk; j++) s[j] = 0.0f;
    return sum;
}

/* Keys [pos][hd] and values [pos][hd] of positions 0..nb*B-1, as floats. */
static void gather(const eng__attn_args *a, int32_t nb, float *kg, float *vg)
{
    const int hd = a->hd, B = ENG_KV_BLOCK;
    for (int32_t b = 0; b < nb; b++) {
        const char *K = (const char *)a->k + (size_t)a->blk[b] * a->k_stride;
        const char *V = (const char *)a->v + (size_t)a->blk[b] * a->v_stride;
        for (int j = 0; j < B; j++) {
            eng__kv_read_k(a->type_k, K, hd, j, kg + ((size_t)b * B + j) * hd);
            eng__kv_read_v(a->type_v, V, hd, j, vg + ((size_t)b * B + j) * hd);
        }
    }
}

bool bench_attn_sgemm(const eng__attn_args *a)
{
    const int hd = a->hd, B = ENG_KV_BLOCK;
    if (a->nq <= 0) return true;
    int32_t lmax = 0;
    for (int32_t i = 0; i < a->nq; i++) lmax = a->last[i] > lmax ? a->last[i] : lmax;
    const int32_t nb = lmax / B + 1;
    const size_t cache = (size_t)nb * B * hd;
    float *kg = malloc(sizeof(float) * (2 * cache + (size_t)QT * nb * B));
    if (!kg) return false;
    float *vg = kg + cache, *S = vg + cache;
    gather(a, nb, kg, vg);
    const eng__cpu *cpu = eng__cpu_get();
    const bool avx2 = cpu->avx2 && cpu->fma;
    const int qs = (int)a->q_stride;
    for (int r = 0; r < a->n_rep; r++)
        for (int32_t i0 = 0; i0 < a->nq; i0 += QT) {
            const int32_t m = a->nq - i0 < QT ? a->nq - i0 : QT;
            int32_t nk = 0;
            for (int32_t i = i0; i < i0 + m; i++) nk = a->last[i] + 1 > nk ? a->last[i] + 1 : nk;
            const float *q = a->q + (size_t)i0 * a->q_stride + (size_t)r * hd;
            float *o = a->out + (size_t)i0 * a->q_stride + (size_t)r * hd;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, nk, hd, a->scale, q, qs, kg, hd, 0.0f, S, nk);
            float inv[QT];
            for (int32_t i = 0; i < m; i++) {
                float *s = S + (size_t)i * nk;
                const int32_t last = a->last[i0 + i];
                inv[i] = 1.0f / (avx2 ? softmax_avx2(s, nk, last) : softmax_scalar(s, nk, last));
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, hd, nk, 1.0f, S, nk, vg, hd, 0.0f, o, qs);
            for (int32_t i = 0; i < m; i++)
                for (int d = 0; d < hd; d++) o[(size_t)i * a->q_stride + d] *= inv[i];
        }
    free(kg);
    return true;
}
