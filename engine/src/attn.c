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
 */
#include "internal.h"

#include <math.h>

void eng__attn_scalar(const eng__attn_args *a)
{
    const int hd = a->hd, B = ENG_KV_BLOCK;
    float *acc = a->scratch;
    for (int32_t i = 0; i < a->nq; i++) {
        const int32_t nk = a->last[i] + 1, k0 = a->first ? a->first[i] : 0;
        for (int r = 0; r < a->n_rep; r++) {
            const float *q = a->q + (size_t)i * a->q_stride + (size_t)r * hd;
            float *o = a->out + (size_t)i * a->q_stride + (size_t)r * hd;
            float m = -INFINITY, l = 0.0f;
            for (int d = 0; d < hd; d++) acc[d] = 0.0f;
            for (int32_t b = k0 / B; b * B < nk; b++) {
                const float *K = a->k + (size_t)a->blk[b] * a->blk_stride;
                const float *V = a->v + (size_t)a->blk[b] * a->blk_stride;
                const int cnt = nk - b * B < B ? nk - b * B : B;
                const int lo = k0 > b * B ? k0 - b * B : 0; /* keys before it: out of the window */
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
