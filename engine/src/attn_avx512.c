/*
 * attn_avx512.c - attention over the block KV cache, AVX-512 (see attn.c for
 * the layout and the scalar reference it is tested against).
 *
 * Queries (row, head) are taken in tiles of up to 4 that share each loaded
 * key block. Per query the recipe is fixed whatever the tile holds: scores
 * for 16 keys in one vector, summed over head dims in 4 interleaved partial
 * chains ((c0 + c1) + (c2 + c3)); masked max; exp by a degree-6 polynomial
 * and scalef; running max/sum; values accumulated dim-vector by dim-vector
 * over the block's keys in order. So a query's result never depends on which
 * other queries share its call.
 */
#include "internal.h"

#include <immintrin.h>
#include <math.h>

#define AI static inline __attribute__((always_inline))
#define TILE 4

/* e^x for x <= 0 (inputs below -87 give e^-87): Cephes' expf reduction and
 * polynomial, 2^n applied with scalef. */
AI __m512 exp512(__m512 x)
{
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

AI float exp1(float x) { return _mm512_cvtss_f32(exp512(_mm512_set1_ps(x))); }

/* Scores of NT queries against one block's 16 keys (K transposed). */
AI void scores(int NT, int hd, const float *const *q, const float *K, __m512 *s)
{
    __m512 c[TILE][4];
    for (int t = 0; t < NT; t++)
        for (int u = 0; u < 4; u++) c[t][u] = _mm512_setzero_ps();
    int d = 0;
    for (; d + 4 <= hd; d += 4) {
        const __m512 k0 = _mm512_loadu_ps(K + (size_t)(d + 0) * ENG_KV_BLOCK);
        const __m512 k1 = _mm512_loadu_ps(K + (size_t)(d + 1) * ENG_KV_BLOCK);
        const __m512 k2 = _mm512_loadu_ps(K + (size_t)(d + 2) * ENG_KV_BLOCK);
        const __m512 k3 = _mm512_loadu_ps(K + (size_t)(d + 3) * ENG_KV_BLOCK);
        for (int t = 0; t < NT; t++) {
            c[t][0] = _mm512_fmadd_ps(_mm512_set1_ps(q[t][d + 0]), k0, c[t][0]);
            c[t][1] = _mm512_fmadd_ps(_mm512_set1_ps(q[t][d + 1]), k1, c[t][1]);
            c[t][2] = _mm512_fmadd_ps(_mm512_set1_ps(q[t][d + 2]), k2, c[t][2]);
            c[t][3] = _mm512_fmadd_ps(_mm512_set1_ps(q[t][d + 3]), k3, c[t][3]);
        }
    }
    for (; d < hd; d++) {
        const __m512 k0 = _mm512_loadu_ps(K + (size_t)d * ENG_KV_BLOCK);
        for (int t = 0; t < NT; t++) c[t][0] = _mm512_fmadd_ps(_mm512_set1_ps(q[t][d]), k0, c[t][0]);
    }
    for (int t = 0; t < NT; t++)
        s[t] = _mm512_add_ps(_mm512_add_ps(c[t][0], c[t][1]), _mm512_add_ps(c[t][2], c[t][3]));
}

/* acc = acc * alpha + sum_j p[j] * V[j] over the block's first cnt keys. */
AI void accumulate(int hd, float *acc, float alpha, const float *p, int cnt, const float *V)
{
    const __m512 al = _mm512_set1_ps(alpha);
    for (int d = 0; d < hd; d += 64) {
        __mmask16 mk[4];
        __m512 x[4];
        for (int u = 0; u < 4; u++) {
            int left = hd - d - 16 * u;
            mk[u] = left >= 16 ? (__mmask16)0xffff : left <= 0 ? 0 : (__mmask16)((1u << left) - 1);
            x[u] = _mm512_mul_ps(_mm512_maskz_loadu_ps(mk[u], acc + d + 16 * u), al);
        }
        for (int j = 0; j < cnt; j++) {
            const __m512 pj = _mm512_set1_ps(p[j]);
            const float *v = V + (size_t)j * hd + d;
            for (int u = 0; u < 4; u++)
                x[u] = _mm512_fmadd_ps(pj, _mm512_maskz_loadu_ps(mk[u], v + 16 * u), x[u]);
        }
        for (int u = 0; u < 4; u++) _mm512_mask_storeu_ps(acc + d + 16 * u, mk[u], x[u]);
    }
}

AI void tile(int NT, const eng__attn_args *a, const int32_t *qi)
{
    const int hd = a->hd, B = ENG_KV_BLOCK;
    const float *q[TILE];
    float *acc[TILE], m[TILE], l[TILE];
    int32_t nk[TILE], nk_max = 0;
    for (int t = 0; t < NT; t++) {
        const int32_t i = qi[t] / a->n_rep, r = qi[t] % a->n_rep;
        q[t] = a->q + (size_t)i * a->q_stride + (size_t)r * hd;
        acc[t] = a->scratch + (size_t)t * hd;
        for (int d = 0; d < hd; d++) acc[t][d] = 0.0f;
        m[t] = -INFINITY;
        l[t] = 0.0f;
        nk[t] = a->last[i] + 1;
        if (nk[t] > nk_max) nk_max = nk[t];
    }
    const __m512 scale = _mm512_set1_ps(a->scale);
    const size_t head_bytes = (size_t)hd * B * sizeof(float);
    for (int32_t b = 0; b * B < nk_max; b++) {
        const float *K = a->k + (size_t)a->blk[b] * a->blk_stride;
        const float *V = a->v + (size_t)a->blk[b] * a->blk_stride;
        if ((b + 1) * B < nk_max) {
            /* blocks are scattered: ask for the next one's keys and values
             * (into L2) while this one is computed */
            const char *nk_ = (const char *)(a->k + (size_t)a->blk[b + 1] * a->blk_stride);
            const char *nv_ = (const char *)(a->v + (size_t)a->blk[b + 1] * a->blk_stride);
            for (size_t o = 0; o < head_bytes; o += 64) {
                _mm_prefetch(nk_ + o, _MM_HINT_T1);
                _mm_prefetch(nv_ + o, _MM_HINT_T1);
            }
        }
        __m512 s[TILE];
        scores(NT, hd, q, K, s);
        for (int t = 0; t < NT; t++) {
            const int cnt = nk[t] - b * B;
            if (cnt <= 0) continue; /* this query's keys ended in an earlier block */
            const __mmask16 valid = cnt >= B ? (__mmask16)0xffff : (__mmask16)((1u << cnt) - 1);
            const __m512 st = _mm512_mul_ps(s[t], scale);
            const float mb = _mm512_mask_reduce_max_ps(valid, st);
            const float mn = mb > m[t] ? mb : m[t];
            const float alpha = m[t] == -INFINITY ? 0.0f : exp1(m[t] - mn);
            const __m512 p = _mm512_maskz_mov_ps(valid, exp512(_mm512_sub_ps(st, _mm512_set1_ps(mn))));
            l[t] = l[t] * alpha + _mm512_reduce_add_ps(p);
            float pa[ENG_KV_BLOCK];
            _mm512_storeu_ps(pa, p);
            accumulate(hd, acc[t], alpha, pa, cnt < B ? cnt : B, V);
            m[t] = mn;
        }
    }
    for (int t = 0; t < NT; t++) {
        const int32_t i = qi[t] / a->n_rep, r = qi[t] % a->n_rep;
        float *o = a->out + (size_t)i * a->q_stride + (size_t)r * hd;
        const __m512 inv = _mm512_set1_ps(1.0f / l[t]);
        for (int d = 0; d < hd; d += 16) {
            const int left = hd - d;
            const __mmask16 mk = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
            _mm512_mask_storeu_ps(o + d, mk, _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, acc[t] + d), inv));
        }
    }
}

void eng__attn_avx512(const eng__attn_args *a)
{
    const int32_t n = a->nq * a->n_rep;
    int32_t qi[TILE];
    for (int32_t q0 = 0; q0 < n; q0 += TILE) {
        const int nt = n - q0 < TILE ? (int)(n - q0) : TILE;
        for (int t = 0; t < nt; t++) qi[t] = q0 + t;
        switch (nt) {
        case 1: tile(1, a, qi); break;
        case 2: tile(2, a, qi); break;
        case 3: tile(3, a, qi); break;
        default: tile(4, a, qi); break;
        }
    }
}
