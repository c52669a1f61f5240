/*
 * attn.c - attention over the block KV cache, scalar reference.
 *
 * One call computes softmax(q . K^T * scale) . V for the query heads that
 * share one kv head, for every query row of one sequence, reading keys and
 * values straight from the sequence's cache blocks (no gather). Each query
 * walks its keys block by block with a running maximum and sum (the online
 * softmax of FlashAttention), so its arithmetic depends only on its own
 * position and the cache: not on how many other rows or heads the call
 * holds. That keeps "batch composition never changes a sequence's
 * arithmetic" true by construction.
 *
 * Block layout (ENG_KV_BLOCK positions, per kv head, see internal.h):
 *   K: [head_dim][ENG_KV_BLOCK]  (transposed: one vector of 16 keys per dim)
 *   V: [ENG_KV_BLOCK][head_dim]
 * in F32, F16 or Q8_0. This reference converts each block it reads to floats
 * (F32 blocks are read as they are) and then does the same float arithmetic
 * for every type.
 */
#include "internal.h"

#include <math.h>

/* Block b's keys ([hd][B]) and values ([B][hd]) as floats: in place for
 * F32, else converted into kf / vf. */
static void block_floats(const eng__attn_args *a, int32_t b, int cnt, float *kf, float *vf, const float **K,
                         const float **V)
{
    const int hd = a->hd;
    const char *kb = (const char *)a->k + (size_t)a->blk[b] * a->k_stride;
    const char *vb = (const char *)a->v + (size_t)a->blk[b] * a->v_stride;
    *K = (const float *)kb;
    *V = (const float *)vb;
    if (a->type_k != ENG_TYPE_F32) {
        for (int j = 0; j < cnt; j++) {
            eng__kv_read_k(a->type_k, kb, hd, j, vf); /* vf as a temporary row */
            for (int d = 0; d < hd; d++) kf[d * ENG_KV_BLOCK + j] = vf[d];
        }
        *K = kf;
    }
    if (a->type_v != ENG_TYPE_F32) {
        for (int j = 0; j < cnt; j++) eng__kv_read_v(a->type_v, vb, hd, j, vf + (size_t)j * hd);
        *V = vf;
    }
}

void eng__attn_scalar(const eng__attn_args *a)
{
    const int hd = a->hd, B = ENG_KV_BLOCK;
    float *acc = a->scratch, *kf = acc + 8 * (size_t)hd, *vf = kf + (size_t)B * hd;
    for (int32_t i = 0; i < a->nq; i++) {
        const int32_t nk = a->last[i] + 1, k0 = a->first ? a->first[i] : 0;
        for (int r = 0; r < a->n_rep; r++) {
            const float *q = a->q + (size_t)i * a->q_stride + (size_t)r * hd;
            float *o = a->out + (size_t)i * a->q_stride + (size_t)r * hd;
            float m = -INFINITY, l = 0.0f;
            for (int d = 0; d < hd; d++) acc[d] = 0.0f;
            for (int32_t b = k0 / B; b * B < nk; b++) {
                const int cnt = nk - b * B < B ? nk - b * B : B;
                const int lo = k0 > b * B ? k0 - b * B : 0; /* keys before it: out of the window */
                const float *K, *V;
                block_floats(a, b, cnt, kf, vf, &K, &V);
                float s[ENG_KV_BLOCK], mb = -INFINITY;
                for (int j = 0; j < cnt; j++) s[j] = 0.0f;
                for (int d = 0; d < hd; d++)
                    for (int j = 0; j < cnt; j++) s[j] += q[d] * K[d * B + j];
                for (int j = 0; j < cnt; j++) {
                    s[j] = j < lo ? -INFINITY : s[j] * a->scale;
                    if (s[j] > mb) mb = s[j];
                }
                const float mn = mb > m ? mb : m;
                const float alpha = expf(m - mn); /* 0 for the first block */
                float sum = 0.0f;
                for (int j = 0; j < cnt; j++) {
                    s[j] = expf(s[j] - mn);
                    sum += s[j];
                }
                l = l * alpha + sum;
                for (int d = 0; d < hd; d++) {
                    float x = acc[d] * alpha;
                    for (int j = 0; j < cnt; j++) x += s[j] * V[j * hd + d];
                    acc[d] = x;
                }
                m = mn;
            }
            const float inv = 1.0f / l;
            for (int d = 0; d < hd; d++) o[d] = acc[d] * inv;
        }
    }
}
