/*
 * forward.c - contexts (KV cache + scratch) and the batched forward pass.
 *
 * DESIGN: eng_decode validates the batch, reserves KV blocks, then runs the
 * whole forward pass as ONE job on the compute pool: every thread walks the
 * same phases (norm, Q/K/V products, rope + cache write, attention, ...),
 * each taking its share of rows or (sequence, kv-head) units, with a pool
 * barrier between phases. The calling thread is thread 0, so only the
 * context's owner ever runs the forward pass.
 *
 * The KV cache is a pool of blocks of KV_BLOCK positions shared by all
 * sequences; each sequence has a block table. K and V are F16 by default,
 * or F32 (the configuration of the golden logits) or Q8_0, each chosen
 * apart (kvcache.c converts a token's K and V once, when it is written),
 * laid out per block and kv head for
 * the attention kernel (eng__attn_args), which reads them in place: one
 * thread per (sequence, kv-head) unit. Weight products go through the
 * kernel table (quantized activations for quantized weights, as ggml does).
 * OpenBLAS is used only when ORTHOSERVE_BLAS_NX is set (gemm_blas.c): then
 * F32/F16/BF16 products of that many activation rows and more run as sgemm
 * (faster in wide prefill, but not bit-identical to our kernels). By default
 * every product uses our kernels; attention always does (its SIMD kernels
 * outrun sgemm attention, tools/bench-blas -A).
 * It is set to one thread per pool thread so it never oversubscribes.
 */
#include "context.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

eng_context_params eng_context_default_params(void)
{
    eng_context_params p = {.n_ctx = 0, .n_seq_max = 1, .n_batch_max = 512, .n_kv_tokens = 0,
                            .n_threads = 0, .type_k = ENG_KV_F16, .type_v = ENG_KV_F16};
    return p;
}

int32_t eng_context_n_ctx(const eng_context *c) { return c->n_ctx; }

static size_t max_act_row(const eng_model *m, int64_t n)
{
    /* Bytes for one activation row of n elements in the largest vec type. */
    size_t best = (size_t)n * sizeof(float);
    const int types[] = {ENG_TYPE_Q8_0, ENG_TYPE_Q8_1, ENG_TYPE_Q8_K, ENG_TYPE_BF16};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        const eng__type_info *ti = eng__type(types[i]);
        if (ti && n % ti->blck == 0) {
            size_t s = eng__row_size(types[i], n);
            if (s > best) best = s;
        }
    }
    (void)m;
    return (best + 63) & ~(size_t)63;
}

eng_status eng_context_new(eng_model *m, const eng_context_params *p, eng_context **out)
{
    if (!m || !out) return ENG_EINVAL;
    *out = NULL;
    eng_context_params dp = eng_context_default_params();
    if (!p) p = &dp;
    int32_t n_ctx = p->n_ctx > 0 ? p->n_ctx : m->n_ctx_train;
    int32_t n_threads = p->n_threads > 0 ? p->n_threads : m->n_threads;
    if (n_ctx < 1 || n_ctx > (1 << 20) || p->n_seq_max < 1 || p->n_seq_max > 4096 ||
        p->n_batch_max < 1 || p->n_batch_max > 65536 || p->n_kv_tokens < 0 || n_threads < 1 ||
        n_threads > 512 || !eng_kv_type_name(p->type_k) || !eng_kv_type_name(p->type_v))
        return ENG_EINVAL;
    eng_context *c = eng__calloc(1, sizeof *c);
    if (!c) return ENG_ENOMEM;
    c->m = m;
    c->kern = eng__kernels_best();
    c->blas_nx = eng__blas_min_nx();
    c->n_ctx = n_ctx;
    c->n_seq_max = p->n_seq_max;
    c->n_batch_max = p->n_batch_max;
    c->n_threads = n_threads;
    c->kvd = m->n_head_kv * m->head_dim;
    c->max_bps = (n_ctx + KV_BLOCK - 1) / KV_BLOCK;
    int64_t kv_tokens = p->n_kv_tokens > 0 ? p->n_kv_tokens : (int64_t)c->max_bps * KV_BLOCK * c->n_seq_max;
    c->n_blocks = (int32_t)((kv_tokens + KV_BLOCK - 1) / KV_BLOCK);
    openblas_set_num_threads(1);

    size_t T = (size_t)c->n_batch_max, E = (size_t)m->n_embd, F = (size_t)m->n_ff;
    size_t QD = (size_t)m->n_head * m->head_dim, KVD = (size_t)c->kvd;
    c->type_k = (int)p->type_k;
    c->type_v = (int)p->type_v;
    c->k_head = eng__kv_head_bytes(c->type_k, m->head_dim);
    c->v_head = eng__kv_head_bytes(c->type_v, m->head_dim);
    c->k_blk = c->k_head * (size_t)m->n_head_kv;
    c->v_blk = c->v_head * (size_t)m->n_head_kv;
    const size_t kv_blocks = (size_t)m->n_layer * c->n_blocks;
    c->k_cache = eng__aligned_alloc(64, kv_blocks * c->k_blk);
    c->v_cache = eng__aligned_alloc(64, kv_blocks * c->v_blk);
    c->free_blocks = eng__malloc((size_t)c->n_blocks * sizeof(int32_t));
    c->seq_blocks = eng__malloc((size_t)c->n_seq_max * c->max_bps * sizeof(int32_t));
    c->seq_len = eng__calloc((size_t)c->n_seq_max, sizeof(int32_t));
    c->blk_ref = eng__calloc((size_t)c->n_blocks, sizeof(int32_t));
    c->x = eng__aligned_alloc(64, T * E * sizeof(float));
    c->xn = eng__aligned_alloc(64, T * E * sizeof(float));
    c->q = eng__aligned_alloc(64, T * QD * sizeof(float));
    c->att = eng__aligned_alloc(64, T * QD * sizeof(float));
    c->kn = eng__aligned_alloc(64, T * KVD * sizeof(float));
    c->vn = eng__aligned_alloc(64, T * KVD * sizeof(float));
    c->gate = eng__aligned_alloc(64, T * F * sizeof(float));
    c->up = eng__aligned_alloc(64, T * F * sizeof(float));
    c->yo = eng__aligned_alloc(64, T * E * sizeof(float));
    size_t widest = E > F ? E : F;
    if (QD > widest) widest = QD;
    c->qact_row = max_act_row(m, (int64_t)widest);
    c->qact = eng__aligned_alloc(64, T * c->qact_row);
    /* own mode (steps of at most SMALL_T rows): per-thread copies */
    c->qact_own = eng__aligned_alloc(64, (size_t)n_threads * SMALL_T * c->qact_row);
    c->xn_own = eng__aligned_alloc(64, (size_t)n_threads * SMALL_T * E * sizeof(float));
    c->rope_cs = eng__aligned_alloc(64, T * (size_t)(m->n_rot > 0 ? m->n_rot : 1) * sizeof(float));
    /* Attention scratch per thread: the kernel's, and the last key position
     * of each query row. */
    c->attn_per_thread = (ENG_ATTN_SCRATCH(m->head_dim) + 15) & ~(size_t)15;
    c->attn_last = eng__malloc(T * (size_t)n_threads * sizeof(int32_t));
    c->attn_scratch = eng__aligned_alloc(64, c->attn_per_thread * (size_t)n_threads * sizeof(float));
    /* Family specifics: the sliding-window layers' rope table and window
     * starts; LongRoPE's short factors while the context fits the original
     * one, else the long ones. */
    c->attn_first = eng__malloc(T * (size_t)n_threads * sizeof(int32_t));
    if (m->n_swa_layers > 0)
        c->rope_cs_swa = eng__aligned_alloc(64, T * (size_t)(m->n_rot > 0 ? m->n_rot : 1) * sizeof(float));
    c->rope_freqs = m->rope_freqs;
    if (m->rope_factors_long)
        c->rope_freqs = m->n_ctx_orig > 0 && n_ctx <= m->n_ctx_orig ? m->rope_factors_short : m->rope_factors_long;
    if (!c->attn_first || (m->n_swa_layers > 0 && !c->rope_cs_swa)) goto nomem;
    c->logits = eng__aligned_alloc(64, T * (size_t)m->n_vocab * sizeof(float));
    c->out_row = eng__malloc(T * sizeof(int32_t));
    c->out_src = eng__malloc(T * sizeof(int32_t));
    c->groups = eng__malloc(T * sizeof(seq_group));
    if (!c->k_cache || !c->v_cache || !c->free_blocks || !c->seq_blocks || !c->seq_len || !c->blk_ref || !c->x ||
        !c->xn || !c->q || !c->att || !c->kn || !c->vn || !c->gate || !c->up || !c->qact ||
        !c->attn_scratch || !c->attn_last || !c->qact_own || !c->xn_own || !c->rope_cs || !c->logits || !c->out_row || !c->out_src || !c->groups || !c->yo)
        goto nomem;
    if (eng__orthorank_ctx_init(c) != ENG_OK) goto nomem;
    if (eng__pool_new(n_threads, &c->pool) != ENG_OK) goto nomem;
    /* Free list as a stack handing out low block numbers first. */
    for (int32_t i = 0; i < c->n_blocks; i++) c->free_blocks[i] = c->n_blocks - 1 - i;
    c->n_free = c->n_blocks;
    *out = c;
    return ENG_OK;
nomem:
    eng_context_free(c);
    return ENG_ENOMEM;
}

void eng_context_free(eng_context *c)
{
    if (!c) return;
    eng__pool_free(c->pool);
    eng__aligned_free(c->k_cache);
    eng__aligned_free(c->v_cache);
    free(c->free_blocks);
    free(c->seq_blocks);
    free(c->seq_len);
    free(c->blk_ref);
    eng__aligned_free(c->x);
    eng__aligned_free(c->xn);
    eng__aligned_free(c->q);
    eng__aligned_free(c->att);
    eng__aligned_free(c->kn);
    eng__aligned_free(c->vn);
    eng__aligned_free(c->gate);
    eng__aligned_free(c->up);
    eng__aligned_free(c->yo);
    eng__orthorank_ctx_free(c);
    eng__aligned_free(c->qact);
    eng__aligned_free(c->attn_scratch);
    free(c->attn_last);
    eng__aligned_free(c->qact_own);
    eng__aligned_free(c->xn_own);
    eng__aligned_free(c->rope_cs);
    eng__aligned_free(c->rope_cs_swa);
    free(c->attn_first);
    eng__aligned_free(c->logits);
    free(c->out_row);
    free(c->out_src);
    free(c->groups);
    free(c);
}

/* ------------------------------------------------------------------------ */
/* KV blocks                                                                */
/* ------------------------------------------------------------------------ */

/* Block blk of layer il in a cache of blocks of blk_bytes. */
static inline uint8_t *kv_block(const eng_context *c, uint8_t *base, size_t blk_bytes, int il, int32_t blk)
{
    return base + ((size_t)il * c->n_blocks + blk) * blk_bytes;
}

/* Store kv head kh of position pos of seq (k, v: that head's head_dim
 * values), converted to the cache's types: K transposed, V row-major. */
static void kv_store(eng_context *c, int il, int kh, int32_t seq, int32_t pos, const float *k, const float *v)
{
    const int hd = c->m->head_dim, slot = pos % KV_BLOCK;
    const int32_t blk = c->seq_blocks[(size_t)seq * c->max_bps + pos / KV_BLOCK];
    eng__kv_put_k(c->type_k, kv_block(c, c->k_cache, c->k_blk, il, blk) + (size_t)kh * c->k_head, hd, slot, k);
    eng__kv_put_v(c->type_v, kv_block(c, c->v_cache, c->v_blk, il, blk) + (size_t)kh * c->v_head, hd, slot, v);
}

void eng__kv_get(const eng_context *c, int il, int32_t seq, int32_t pos, float *k, float *v)
{
    const int hd = c->m->head_dim, slot = pos % KV_BLOCK;
    const int32_t blk = c->seq_blocks[(size_t)seq * c->max_bps + pos / KV_BLOCK];
    const uint8_t *kb = kv_block(c, c->k_cache, c->k_blk, il, blk), *vb = kv_block(c, c->v_cache, c->v_blk, il, blk);
    for (int h = 0; h < c->m->n_head_kv; h++) {
        eng__kv_read_k(c->type_k, kb + (size_t)h * c->k_head, hd, slot, k + (size_t)h * hd);
        eng__kv_read_v(c->type_v, vb + (size_t)h * c->v_head, hd, slot, v + (size_t)h * hd);
    }
}

static int32_t blocks_for(int32_t n_pos) { return (n_pos + KV_BLOCK - 1) / KV_BLOCK; }

int32_t eng__kv_blocks_for(int32_t n_pos) { return blocks_for(n_pos); }
int32_t eng__kv_blocks_total(const eng_context *c) { return c->n_blocks; }
int32_t eng__ctx_n_seq(const eng_context *c) { return c->n_seq_max; }
int32_t eng__ctx_n_batch(const eng_context *c) { return c->n_batch_max; }
const eng_model *eng__ctx_model(const eng_context *c) { return c->m; }

int32_t eng_seq_len(const eng_context *c, int32_t seq)
{
    return (seq >= 0 && seq < c->n_seq_max) ? c->seq_len[seq] : 0;
}

void eng_seq_truncate(eng_context *c, int32_t seq, int32_t p0)
{
    if (seq < 0 || seq >= c->n_seq_max || p0 < 0 || p0 >= c->seq_len[seq]) return;
    int32_t keep = blocks_for(p0), have = blocks_for(c->seq_len[seq]);
    for (int32_t b = have - 1; b >= keep; b--) {
        int32_t blk = c->seq_blocks[(size_t)seq * c->max_bps + b];
        if (--c->blk_ref[blk] == 0) c->free_blocks[c->n_free++] = blk;
    }
    c->seq_len[seq] = p0;
}

/* --- Shared-prefix forks (n > 1 choices of one prompt) ---
 * A fork gives dst the first n_pos positions of src without recomputing
 * them: the full blocks are shared (a reference more each; truncation drops
 * a reference and frees a block at the last), and a partial last block is
 * copied at once, since dst's next position writes into it (copy-on-write
 * done at the fork: the only block either sequence could still write). */
eng_status eng__seq_fork(eng_context *c, int32_t src, int32_t dst, int32_t n_pos)
{
    if (src < 0 || src >= c->n_seq_max || dst < 0 || dst >= c->n_seq_max || src == dst || c->seq_len[dst] != 0 ||
        n_pos < 1 || n_pos > c->seq_len[src])
        return ENG_EINVAL;
    const int32_t full = n_pos / KV_BLOCK, part = n_pos % KV_BLOCK;
    if (part && c->n_free < 1) return ENG_ECTXFULL;
    const int32_t *sb = c->seq_blocks + (size_t)src * c->max_bps;
    int32_t *db = c->seq_blocks + (size_t)dst * c->max_bps;
    for (int32_t b = 0; b < full; b++) {
        db[b] = sb[b];
        c->blk_ref[sb[b]]++;
    }
    if (part) {
        int32_t blk = c->free_blocks[--c->n_free];
        c->blk_ref[blk] = 1;
        db[full] = blk;
        for (int il = 0; il < c->m->n_layer; il++) {
            memcpy(kv_block(c, c->k_cache, c->k_blk, il, blk), kv_block(c, c->k_cache, c->k_blk, il, sb[full]), c->k_blk);
            memcpy(kv_block(c, c->v_cache, c->v_blk, il, blk), kv_block(c, c->v_cache, c->v_blk, il, sb[full]), c->v_blk);
        }
    }
    c->seq_len[dst] = n_pos;
    return ENG_OK;
}

/* Blocks in use (held by some sequence), for the KV-sharing tests and tools. */
int32_t eng__kv_blocks_used(const eng_context *c) { return c->n_blocks - c->n_free; }
/* --- end of shared-prefix forks --- */

void eng_kv_usage(const eng_context *c, int32_t *used, int32_t *total)
{
    int32_t u = 0;
    for (int32_t s = 0; s < c->n_seq_max; s++) u += c->seq_len[s];
    if (used) *used = u;
    if (total) *total = c->n_blocks * KV_BLOCK;
}

/* ------------------------------------------------------------------------ */
/* Row kernels                                                              */
/* ------------------------------------------------------------------------ */

/* ggml's RMSNorm: mean of squares in double, scale in float, then the weight. */
static void rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps)
{
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += (double)(x[i] * x[i]);
    const float mean = (float)(sum / (double)n);
    const float scale = 1.0f / sqrtf(mean + eps);
    for (int64_t i = 0; i < n; i++) out[i] = (x[i] * scale) * w[i];
}

/* The cos/sin pairs that rotate position pos: theta for pair i is
 * pos * base^(-2i/n_rot), computed by repeated multiplication in float as
 * ggml does, scaled by scale and divided by freqs[i] when given (llama 3.1,
 * LongRoPE); cos and sin times the model's rope attention factor (LongRoPE). */
static void rope_table(const eng_model *m, float base, float scale, const float *freqs, int32_t pos, float *cs)
{
    const int nr = m->n_rot;
    const float theta_scale = powf(base, -2.0f / (float)nr), mul = m->rope_attn_factor;
    float tb = (float)pos;
    for (int i = 0; i < nr / 2; i++) {
        float th = scale * (freqs ? tb / freqs[i] : tb);
        cs[2 * i] = cosf(th) * mul;
        cs[2 * i + 1] = sinf(th) * mul;
        tb *= theta_scale;
    }
}

/* qwen3 / gemma3: RMSNorm of each of n_heads heads at x, in place, with the
 * per-head weight w (head_dim). */
static void head_norm(const eng_model *m, float *x, int n_heads, const float *w)
{
    for (int h = 0; h < n_heads; h++) rmsnorm(x + (size_t)h * m->head_dim, x + (size_t)h * m->head_dim, w,
                                              m->head_dim, m->rms_eps);
}

/* Rotate n_heads heads of head_dim at x by the table of their position. */
static void rope(const eng_model *m, float *x, int n_heads, const float *cs)
{
    const int hd = m->head_dim, nr = m->n_rot;
    for (int h = 0; h < n_heads; h++) {
        float *v = x + (size_t)h * hd;
        for (int i = 0; i < nr / 2; i++) {
            const float c = cs[2 * i], s = cs[2 * i + 1];
            int i0 = m->rope == ENG_ROPE_NEOX ? i : 2 * i;
            int i1 = m->rope == ENG_ROPE_NEOX ? i + nr / 2 : 2 * i + 1;
            const float x0 = v[i0], x1 = v[i1];
            v[i0] = x0 * c - x1 * s;
            v[i1] = x0 * s + x1 * c;
        }
    }
}

/* ------------------------------------------------------------------------ */
/* The forward job                                                          */
/* ------------------------------------------------------------------------ */

/*
 * Two ways to share a step between threads, with the same arithmetic:
 * - split (many rows): each small per-row phase (norms, activation
 *   conversion) is divided among the threads, with a barrier before its
 *   result is used;
 * - own (at most SMALL_T rows, i.e. decoding): every thread computes the
 *   normalized and converted activations itself, into its own buffers, so a
 *   layer needs only the five barriers that its data dependencies force
 *   (after Q/K/V, attention, the output projection, gate/up, down).
 * Either way products are divided by weight rows, and the element-wise
 * work that follows a product (residual add, SiLU gating) is done by the
 * thread that owns those output rows, right after its product.
 */
/* Which activation rows a qact buffer holds (each thread keeps its own
 * copy: all threads make the same decisions, so no state is shared). */
typedef struct {
    const float *src;
    const int32_t *rows;
    int type;
    int64_t n, nr;
} act_cache;

/* One thread's view of the step. */
typedef struct {
    bool own;        /* this step runs in "own" mode */
    uint8_t *qact;   /* converted activations: c->qact, or this thread's */
    float *xn;       /* normalized rows: c->xn, or this thread's */
    act_cache ac;
} thread_state;

/*
 * Y[j][r] = W_r . X[rows[j]] for j < nx (rows NULL: X[j]); this thread
 * computes output rows [*r0, *r1). The activation rows are converted once
 * into ts->qact (split mode: shared, with barriers; own mode: all rows, by
 * this thread) and reused by consecutive products over the same input.
 * Rows are gathered while converting, so a layer that updates only some
 * tokens runs its products on a compact matrix of just those rows.
 */
_Static_assert(ROW_ALIGN % ENG_PACK_ROWS == 0, "thread chunks must start on a packed group");

static void matmul(eng_context *c, int ith, int nth, thread_state *ts, const eng__mat *W, const float *X,
                   const int32_t *rows, int64_t nx, float *Y, int64_t *r0, int64_t *r1)
{
    *r0 = *r1 = 0;
    if (nx <= 0) return;
    const eng__type_info *ti = eng__type(W->type);
    const int vt = ti->vec_type;
    act_cache *ac = &ts->ac;
    const void *xa;
    size_t xs;
    if (vt == ENG_TYPE_F32 && !rows) {
        xa = X;
        xs = (size_t)W->n_in * sizeof(float);
    } else {
        if (ac->src != X || ac->rows != rows || ac->type != vt || ac->n != W->n_in || ac->nr != nx) {
            /* shared qact may still feed a product other threads are running
             * (the Q product over selected rows before K/V over all rows) */
            if (ac->src && !ts->own) eng__pool_barrier(c->pool);
            eng__quant_fn qf = c->kern->quantize_act[W->type]; /* converts into vt */
            int64_t j0 = 0, j1 = nx;
            if (!ts->own) eng__split(nx, ith, nth, 1, &j0, &j1);
            for (int64_t j = j0; j < j1; j++) {
                const float *src = X + (size_t)(rows ? rows[j] : j) * W->n_in;
                uint8_t *dst = ts->qact + (size_t)j * c->qact_row;
                if (vt == ENG_TYPE_F32) memcpy(dst, src, (size_t)W->n_in * sizeof(float));
                else qf(src, dst, W->n_in);
            }
            if (!ts->own) eng__pool_barrier(c->pool);
            ac->src = X;
            ac->rows = rows;
            ac->type = vt;
            ac->n = W->n_in;
            ac->nr = nx;
        }
        xa = ts->qact;
        xs = c->qact_row;
    }
    eng__split(W->n_out, ith, nth, ROW_ALIGN, r0, r1);
    /* rows below n_packed are packed groups (ROW_ALIGN keeps r0 on one) */
    int64_t pe = *r1 < W->n_packed ? *r1 : W->n_packed, r = *r0;
    const bool blas = c->blas_nx > 0 && nx >= c->blas_nx && eng__blas_type(W->type);
    if (pe > r) {
        const uint8_t *w = W->data + (size_t)r * W->row_bytes;
        if (!blas || !eng__gemm_blas(W->type, true, W->n_in, w, W->row_bytes, pe - r, xa, xs, nx, Y + r,
                                     (size_t)W->n_out))
            c->kern->gemm_packed[W->type](W->n_in, w, W->row_bytes, pe - r, xa, xs, nx, Y + r, (size_t)W->n_out);
        r = pe;
    }
    if (*r1 > r) {
        const uint8_t *w = W->data + (size_t)r * W->row_bytes;
        if (!blas || !eng__gemm_blas(W->type, false, W->n_in, w, W->row_bytes, *r1 - r, xa, xs, nx, Y + r,
                                     (size_t)W->n_out))
            c->kern->gemm[W->type](W->n_in, w, W->row_bytes, *r1 - r, xa, xs, nx, Y + r, (size_t)W->n_out);
    }
}

/* x[rows[j]][r] += y[j][r] for this thread's output rows r in [r0, r1). */
static void residual(float *x, const int32_t *rows, const float *y, int64_t n, int64_t E, int64_t r0,
                     int64_t r1)
{
    for (int64_t j = 0; j < n; j++) {
        float *xr = x + (rows ? rows[j] : j) * E;
        const float *yr = y + j * E;
        for (int64_t i = r0; i < r1; i++) xr[i] += yr[i];
    }
}

/* The rows of group g in the current layer's K/V row list (sorted). */
static void group_kv_rows(const eng_context *c, const seq_group *g, int32_t *j0, int32_t *j1)
{
    if (c->kvr_all) {
        *j0 = g->row0;
        *j1 = g->row0 + g->n;
        return;
    }
    int32_t lo = 0, hi = c->n_kvr;
    while (lo < hi) {
        int32_t mid = (lo + hi) / 2;
        if (c->kvr[mid] < g->row0) lo = mid + 1;
        else hi = mid;
    }
    *j0 = lo;
    while (lo < c->n_kvr && c->kvr[lo] < g->row0 + g->n) lo++;
    *j1 = lo;
}

/* One (sequence group, kv head) unit of layer il: biases and rope for this
 * kv head's query heads and its key, the new K/V into the cache, then
 * attention of the group's updated rows against every key of the sequence
 * up to each row's own position (causal), read in place by the kernel. */
static void attention_unit(eng_context *c, int ith, int il, const seq_group *g, int kh)
{
    const eng_model *m = c->m;
    const eng__layer *L = &m->layers[il];
    const eng_batch *b = c->batch;
    const int hd = m->head_dim, n_rep = m->n_head / m->n_head_kv, nr = m->n_rot;
    const int64_t QD = (int64_t)m->n_head * hd, KVD = c->kvd;
    const int32_t *act = c->act_all ? NULL : c->act;
    int32_t *last = c->attn_last + (size_t)ith * c->n_batch_max;
    int32_t *first = L->swa ? c->attn_first + (size_t)ith * c->n_batch_max : NULL;
    const float *cs = L->swa ? c->rope_cs_swa : c->rope_cs;

    for (int32_t i = 0; i < g->act_n; i++) {
        const int32_t t = act ? act[g->act0 + i] : g->act0 + i;
        float *q = c->q + (size_t)(g->act0 + i) * QD + (size_t)kh * n_rep * hd;
        if (L->bq)
            for (int64_t e = 0; e < (int64_t)n_rep * hd; e++) q[e] += L->bq[(int64_t)kh * n_rep * hd + e];
        if (L->q_norm) head_norm(m, q, n_rep, L->q_norm);
        rope(m, q, n_rep, cs + (size_t)t * nr);
        last[i] = b->pos[t];
        if (first) first[i] = b->pos[t] >= m->n_swa ? b->pos[t] - m->n_swa + 1 : 0; /* sliding window */
    }
    int32_t j0, j1;
    group_kv_rows(c, g, &j0, &j1);
    for (int32_t j = j0; j < j1; j++) {
        const int32_t t = c->kvr_all ? j : c->kvr[j];
        float *k = c->kn + (size_t)j * KVD + (size_t)kh * hd, *v = c->vn + (size_t)j * KVD + (size_t)kh * hd;
        if (L->bk)
            for (int e = 0; e < hd; e++) {
                k[e] += L->bk[kh * hd + e];
                v[e] += L->bv[kh * hd + e];
            }
        if (L->k_norm) head_norm(m, k, 1, L->k_norm);
        rope(m, k, 1, cs + (size_t)t * nr);
        kv_store(c, il, kh, g->seq, b->pos[t], k, v);
    }
    if (g->act_n == 0) return;
    eng__attn_args a = {
        .hd = hd,
        .n_rep = n_rep,
        .nq = g->act_n,
        .q = c->q + (size_t)g->act0 * QD + (size_t)kh * n_rep * hd,
        .out = c->att + (size_t)g->act0 * QD + (size_t)kh * n_rep * hd,
        .q_stride = (size_t)QD,
        .last = last,
        .first = first,
        .k = kv_block(c, c->k_cache, c->k_blk, il, 0) + (size_t)kh * c->k_head,
        .v = kv_block(c, c->v_cache, c->v_blk, il, 0) + (size_t)kh * c->v_head,
        .type_k = c->type_k,
        .type_v = c->type_v,
        .blk = c->seq_blocks + (size_t)g->seq * c->max_bps,
        .k_stride = c->k_blk,
        .v_stride = c->v_blk,
        .scale = m->attn_scale,
        .scratch = c->attn_scratch + (size_t)ith * c->attn_per_thread,
    };
    c->kern->attn(&a);
}

/* gemma3's post-norms: x[rows[j]] += rmsnorm(y[j]) * w for j < n (rows NULL:
 * j), once every thread's columns of y are written; rows shared among the
 * threads (the caller's barrier follows). */
static void post_norm_residual(eng_context *c, int ith, int nth, float *y, const int32_t *rows, int64_t n,
                               const float *w)
{
    const int64_t E = c->m->n_embd;
    int64_t j0, j1;
    eng__pool_barrier(c->pool);
    eng__split(n, ith, nth, 1, &j0, &j1);
    for (int64_t j = j0; j < j1; j++) {
        float *yr = y + j * E, *xr = c->x + (rows ? rows[j] : j) * E;
        rmsnorm(yr, yr, w, E, c->m->rms_eps);
        for (int64_t i = 0; i < E; i++) xr[i] += yr[i];
    }
}

/* The FFN gate: g = act(g) * u over columns [r0, r1) of n rows. SiLU, or
 * gemma3's GELU with the tanh approximation (exact, not ggml's fp16 table). */
static void gate_rows(const eng_model *m, float *gate, const float *up, int64_t n, int64_t r0, int64_t r1)
{
    const int64_t F = m->n_ff;
    for (int64_t j = 0; j < n; j++) {
        float *g = gate + j * F;
        const float *u = up + j * F;
        if (m->act == ENG_ACT_GELU_TANH)
            for (int64_t i = r0; i < r1; i++) {
                const float x = g[i];
                g[i] = 0.5f * x * (1.0f + tanhf(0.7978845608f * x * (1.0f + 0.044715f * x * x))) * u[i];
            }
        else
            for (int64_t i = r0; i < r1; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    }
}

/* Normalize rows of x (rows NULL: 0..n-1) with weight w into out[j]: split
 * mode shares the rows and waits for the others; own mode does them all. */
static void norm_rows(eng_context *c, int ith, int nth, const thread_state *ts, float *out, const int32_t *rows,
                      int64_t n, const float *w)
{
    const int64_t E = c->m->n_embd;
    int64_t j0 = 0, j1 = n;
    if (!ts->own) eng__split(n, ith, nth, 1, &j0, &j1);
    for (int64_t j = j0; j < j1; j++) rmsnorm(out + j * E, c->x + (rows ? rows[j] : j) * E, w, E, c->m->rms_eps);
    if (!ts->own) eng__pool_barrier(c->pool);
}

static void forward_job(int ith, int nth, void *arg)
{
    eng_context *c = arg;
    const eng_model *m = c->m;
    const eng_batch *b = c->batch;
    const int64_t T = c->n_tokens, E = m->n_embd;
    int64_t r0, r1;
    thread_state ts = {.own = c->own_mode};
    ts.qact = ts.own ? c->qact_own + (size_t)ith * SMALL_T * c->qact_row : c->qact;
    ts.xn = ts.own ? c->xn_own + (size_t)ith * SMALL_T * E : c->xn;

    /* Embeddings and rope tables, then the first layer's attention norm. */
    eng__split(T, ith, nth, 1, &r0, &r1);
    for (int64_t t = r0; t < r1; t++) {
        eng__mat_row(&m->tok_embd, b->token[t], c->x + t * E);
        if (m->embd_scale != 1.0f)
            for (int64_t i = 0; i < E; i++) c->x[t * E + i] *= m->embd_scale;
        rope_table(m, m->rope_base, m->rope_scale, c->rope_freqs, b->pos[t], c->rope_cs + t * m->n_rot);
        if (c->rope_cs_swa)
            rope_table(m, m->rope_base_swa, m->rope_scale_swa, c->rope_freqs, b->pos[t], c->rope_cs_swa + t * m->n_rot);
    }
    eng__pool_barrier(c->pool);
    norm_rows(c, ith, nth, &ts, ts.xn, NULL, T, m->layers[0].attn_norm);

    for (int il = 0; il < m->n_layer; il++) {
        const eng__layer *L = &m->layers[il];
        eng__orthorank_layer(c, ith, nth, il, ts.xn);
        const int32_t *act = c->act_all ? NULL : c->act, *kvr = c->kvr_all ? NULL : c->kvr;
        const int64_t A = c->n_act, K = c->n_kvr;

        ts.ac.src = NULL; /* xn was rewritten since any earlier conversion */
        matmul(c, ith, nth, &ts, &L->wq, ts.xn, act, A, c->q, &r0, &r1);
        matmul(c, ith, nth, &ts, &L->wk, ts.xn, kvr, K, c->kn, &r0, &r1);
        matmul(c, ith, nth, &ts, &L->wv, ts.xn, kvr, K, c->vn, &r0, &r1);
        eng__pool_barrier(c->pool);

        const int64_t units = (int64_t)c->n_groups * m->n_head_kv;
        eng__split(units, ith, nth, 1, &r0, &r1);
        for (int64_t u = r0; u < r1; u++)
            attention_unit(c, ith, il, &c->groups[u / m->n_head_kv], (int)(u % m->n_head_kv));
        eng__pool_barrier(c->pool);

        /* Output projection and FFN on the updated rows only; the others keep
         * their residual unchanged. */
        matmul(c, ith, nth, &ts, &L->wo, c->att, NULL, A, c->yo, &r0, &r1);
        if (L->post_attn_norm) post_norm_residual(c, ith, nth, c->yo, act, A, L->post_attn_norm);
        else residual(c->x, act, c->yo, A, E, r0, r1);
        eng__pool_barrier(c->pool);
        norm_rows(c, ith, nth, &ts, ts.own ? ts.xn : c->yo, act, A, L->ffn_norm);

        ts.ac.src = NULL;
        const float *fin = ts.own ? ts.xn : c->yo;
        matmul(c, ith, nth, &ts, &L->w_gate, fin, NULL, A, c->gate, &r0, &r1);
        matmul(c, ith, nth, &ts, &L->w_up, fin, NULL, A, c->up, &r0, &r1);
        gate_rows(m, c->gate, c->up, A, r0, r1);
        eng__pool_barrier(c->pool);
        matmul(c, ith, nth, &ts, &L->w_down, c->gate, NULL, A, c->yo, &r0, &r1);
        if (L->post_ffn_norm) post_norm_residual(c, ith, nth, c->yo, act, A, L->post_ffn_norm);
        else residual(c->x, act, c->yo, A, E, r0, r1);
        eng__pool_barrier(c->pool);

        /* The next layer's attention norm over every row. */
        if (il + 1 < m->n_layer) norm_rows(c, ith, nth, &ts, ts.xn, NULL, T, m->layers[il + 1].attn_norm);
    }

    /* The output norm into compact rows for the tokens that want logits. */
    norm_rows(c, ith, nth, &ts, ts.xn, c->out_src, c->n_out, m->output_norm);
    ts.ac.src = NULL;
    if (c->n_out > 0) matmul(c, ith, nth, &ts, &m->output, ts.xn, NULL, c->n_out, c->logits, &r0, &r1);
    if (c->n_out > 0 && m->logit_softcap > 0) /* gemma3: cap * tanh(logit / cap), this thread's columns */
        for (int64_t j = 0; j < c->n_out; j++) {
            float *l = c->logits + j * m->n_vocab;
            for (int64_t i = r0; i < r1; i++) l[i] = m->logit_softcap * tanhf(l[i] / m->logit_softcap);
        }
}

eng_status eng_decode(eng_context *c, const eng_batch *b)
{
    if (!c || !b || b->n_tokens < 1 || b->n_tokens > c->n_batch_max || !b->token || !b->pos ||
        !b->seq)
        return ENG_EINVAL;
    const eng_model *m = c->m;
    const int32_t T = b->n_tokens;
    /* Group rows by sequence; a sequence's rows must be contiguous and
     * continue its cache position by position. */
    c->n_groups = 0;
    for (int32_t t = 0; t < T; t++) {
        if (b->token[t] < 0 || b->token[t] >= m->n_vocab) return ENG_EINVAL;
        int32_t s = b->seq[t];
        if (s < 0 || s >= c->n_seq_max) return ENG_EINVAL;
        seq_group *g = c->n_groups ? &c->groups[c->n_groups - 1] : NULL;
        if (g && g->seq == s) {
            if (b->pos[t] != g->pos0 + g->n) return ENG_EINVAL;
            g->n++;
            continue;
        }
        for (int32_t i = 0; i < c->n_groups; i++)
            if (c->groups[i].seq == s) return ENG_EINVAL; /* not contiguous */
        if (b->pos[t] != c->seq_len[s]) return ENG_EINVAL;
        c->groups[c->n_groups++] = (seq_group){.seq = s, .row0 = t, .n = 1, .pos0 = b->pos[t]};
    }
    int32_t need = 0;
    for (int32_t i = 0; i < c->n_groups; i++) {
        const seq_group *g = &c->groups[i];
        if (g->pos0 + g->n > c->n_ctx) return ENG_ECTXFULL;
        need += blocks_for(g->pos0 + g->n) - blocks_for(g->pos0);
    }
    if (need > c->n_free) return ENG_ECTXFULL;
    for (int32_t i = 0; i < c->n_groups; i++) {
        const seq_group *g = &c->groups[i];
        for (int32_t bi = blocks_for(g->pos0); bi < blocks_for(g->pos0 + g->n); bi++) {
            int32_t blk = c->free_blocks[--c->n_free];
            c->blk_ref[blk] = 1;
            c->seq_blocks[(size_t)g->seq * c->max_bps + bi] = blk;
        }
        c->seq_len[g->seq] = g->pos0 + g->n;
    }
    c->n_out = 0;
    for (int32_t t = 0; t < T; t++) {
        c->out_row[t] = (b->logits && b->logits[t]) ? c->n_out : -1;
        if (c->out_row[t] >= 0) c->out_src[c->n_out++] = t;
    }
    c->batch = b;
    c->n_tokens = T;
    eng__orthorank_step(c);
    /* A step whose weight products are tiny (a small model decoding one
     * token) costs less than the wake-ups and barriers of sharing it. */
    double work = (double)m->n_params * (double)T;
    c->own_mode = T <= SMALL_T;
    eng__pool_run_n(c->pool, work < 2e6 ? 1 : c->n_threads, forward_job, c);
    c->batch = NULL;
    return ENG_OK;
}

const float *eng_get_logits(const eng_context *c, int32_t i)
{
    if (!c || i < 0 || i >= c->n_tokens || c->out_row[i] < 0) return NULL;
    return c->logits + (size_t)c->out_row[i] * c->m->n_vocab;
}
