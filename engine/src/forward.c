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
 * sequences; each sequence has a block table. K and V are float32 (the
 * configuration of the golden logits). Weight products go through the
 * kernel table (quantized activations for quantized weights, as ggml does);
 * attention products over a sequence go through OpenBLAS sgemm, one thread
 * per (sequence, kv-head) unit, with OpenBLAS itself kept single-threaded
 * so the two never oversubscribe the cores.
 */
#include "context.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

eng_context_params eng_context_default_params(void)
{
    eng_context_params p = {.n_ctx = 0, .n_seq_max = 1, .n_batch_max = 512, .n_kv_tokens = 0,
                            .n_threads = 0};
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
        n_threads > 512)
        return ENG_EINVAL;
    eng_context *c = eng__calloc(1, sizeof *c);
    if (!c) return ENG_ENOMEM;
    c->m = m;
    c->kern = eng__kernels_best();
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
    size_t kv_elems = (size_t)m->n_layer * c->n_blocks * KV_BLOCK * KVD;
    c->k_cache = eng__aligned_alloc(64, kv_elems * sizeof(float));
    c->v_cache = eng__aligned_alloc(64, kv_elems * sizeof(float));
    c->free_blocks = eng__malloc((size_t)c->n_blocks * sizeof(int32_t));
    c->seq_blocks = eng__malloc((size_t)c->n_seq_max * c->max_bps * sizeof(int32_t));
    c->seq_len = eng__calloc((size_t)c->n_seq_max, sizeof(int32_t));
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
    /* Attention scratch per thread: gathered K and V of one kv head (n_ctx x
     * head_dim each) and the score matrix of its query rows (n_rep heads of
     * up to n_batch_max rows each against n_ctx keys). */
    size_t n_rep = (size_t)(m->n_head / m->n_head_kv);
    size_t score_rows = T > n_rep ? T : n_rep;
    c->attn_per_thread = ((size_t)n_ctx * m->head_dim * 2 + score_rows * (size_t)n_ctx + 16) & ~(size_t)15;
    c->attn_scratch = eng__aligned_alloc(64, c->attn_per_thread * (size_t)n_threads * sizeof(float));
    c->logits = eng__aligned_alloc(64, T * (size_t)m->n_vocab * sizeof(float));
    c->out_row = eng__malloc(T * sizeof(int32_t));
    c->out_src = eng__malloc(T * sizeof(int32_t));
    c->groups = eng__malloc(T * sizeof(seq_group));
    if (!c->k_cache || !c->v_cache || !c->free_blocks || !c->seq_blocks || !c->seq_len || !c->x ||
        !c->xn || !c->q || !c->att || !c->kn || !c->vn || !c->gate || !c->up || !c->qact ||
        !c->attn_scratch || !c->logits || !c->out_row || !c->out_src || !c->groups || !c->yo)
        goto nomem;
    if (eng__or_ctx_init(c) != ENG_OK) goto nomem;
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
    eng__aligned_free(c->x);
    eng__aligned_free(c->xn);
    eng__aligned_free(c->q);
    eng__aligned_free(c->att);
    eng__aligned_free(c->kn);
    eng__aligned_free(c->vn);
    eng__aligned_free(c->gate);
    eng__aligned_free(c->up);
    eng__aligned_free(c->yo);
    eng__or_ctx_free(c);
    eng__aligned_free(c->qact);
    eng__aligned_free(c->attn_scratch);
    eng__aligned_free(c->logits);
    free(c->out_row);
    free(c->out_src);
    free(c->groups);
    free(c);
}

/* ------------------------------------------------------------------------ */
/* KV blocks                                                                */
/* ------------------------------------------------------------------------ */

static inline float *kv_at(const eng_context *c, float *base, int il, int32_t seq, int32_t pos)
{
    int32_t blk = c->seq_blocks[(size_t)seq * c->max_bps + pos / KV_BLOCK];
    return base + (((size_t)il * c->n_blocks + blk) * KV_BLOCK + pos % KV_BLOCK) * c->kvd;
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
    for (int32_t b = have - 1; b >= keep; b--)
        c->free_blocks[c->n_free++] = c->seq_blocks[(size_t)seq * c->max_bps + b];
    c->seq_len[seq] = p0;
}

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

/* Rotate n_heads heads of head_dim at x for position pos. theta for pair i is
 * pos * base^(-2i/n_rot), computed by repeated multiplication in float as
 * ggml does, scaled by freq_scale and divided by rope_freqs[i] when given. */
static void rope(const eng_model *m, float *x, int n_heads, int32_t pos)
{
    const int hd = m->head_dim, nr = m->n_rot;
    const float theta_scale = powf(m->rope_base, -2.0f / (float)nr);
    float cs[2 * 512];
    float tb = (float)pos;
    for (int i = 0; i < nr / 2; i++) {
        float th = m->rope_scale * (m->rope_freqs ? tb / m->rope_freqs[i] : tb);
        cs[2 * i] = cosf(th);
        cs[2 * i + 1] = sinf(th);
        tb *= theta_scale;
    }
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

/* Which activation rows qact holds, per thread (all threads make the same
 * decisions, so each keeps its own copy and no state is shared). */
typedef struct {
    const float *src;
    const int32_t *rows;
    int type;
    int64_t n, nr;
} act_cache;

/*
 * Y[j][r] = W_r . X[rows[j]] for j < nx (rows NULL: X[j]), output rows split
 * across threads. The activation rows are converted once into c->qact (with
 * a barrier) and reused by consecutive products over the same input. Rows
 * are gathered while converting, so a layer that updates only some tokens
 * runs its products on a compact matrix of just those rows.
 */
static void matmul(eng_context *c, int ith, int nth, const eng__mat *W, const float *X,
                   const int32_t *rows, int64_t nx, float *Y, act_cache *ac)
{
    if (nx <= 0) return;
    const eng__type_info *ti = eng__type(W->type);
    const int vt = ti->vec_type;
    const void *xa;
    size_t xs;
    if (vt == ENG_TYPE_F32 && !rows) {
        xa = X;
        xs = (size_t)W->n_in * sizeof(float);
    } else {
        if (ac->src != X || ac->rows != rows || ac->type != vt || ac->n != W->n_in || ac->nr != nx) {
            /* qact may still feed a product other threads are running (the
             * Q product over selected rows before K/V over all rows). */
            if (ac->src) eng__pool_barrier(c->pool);
            eng__quant_fn qf = c->kern->quantize_act[W->type]; /* converts into vt */
            int64_t r0, r1;
            eng__split(nx, ith, nth, 1, &r0, &r1);
            for (int64_t j = r0; j < r1; j++) {
                const float *src = X + (size_t)(rows ? rows[j] : j) * W->n_in;
                uint8_t *dst = c->qact + (size_t)j * c->qact_row;
                if (vt == ENG_TYPE_F32) memcpy(dst, src, (size_t)W->n_in * sizeof(float));
                else qf(src, dst, W->n_in);
            }
            eng__pool_barrier(c->pool);
            ac->src = X;
            ac->rows = rows;
            ac->type = vt;
            ac->n = W->n_in;
            ac->nr = nx;
        }
        xa = c->qact;
        xs = c->qact_row;
    }
    int64_t r0, r1;
    eng__split(W->n_out, ith, nth, ROW_ALIGN, &r0, &r1);
    if (r1 > r0)
        c->kern->gemm[W->type](W->n_in, W->data + (size_t)r0 * W->row_bytes, W->row_bytes,
                               r1 - r0, xa, xs, nx, Y + r0, (size_t)W->n_out);
}

/* Attention of group g's updated rows (compact rows act0.. of c->q) for one
 * kv head, against every key of the sequence up to the group's last
 * position, causal by each row's own position. */
static void attention_unit(eng_context *c, int ith, int il, const seq_group *g, int kh)
{
    const eng_model *m = c->m;
    const eng_batch *b = c->batch;
    const int hd = m->head_dim, n_rep = m->n_head / m->n_head_kv;
    const int64_t QD = (int64_t)m->n_head * hd;
    const int32_t n_kv = g->pos0 + g->n, nq = g->act_n;
    if (nq == 0) return;
    float *scr = c->attn_scratch + (size_t)ith * c->attn_per_thread;
    float *Kc = scr, *Vc = scr + (size_t)c->n_ctx * hd, *S = Vc + (size_t)c->n_ctx * hd;
    /* Gather this head's keys and values for positions [0, n_kv). */
    for (int32_t p = 0; p < n_kv; p += KV_BLOCK) {
        int32_t cnt = n_kv - p < KV_BLOCK ? n_kv - p : KV_BLOCK;
        const float *kb = kv_at(c, c->k_cache, il, g->seq, p);
        const float *vb = kv_at(c, c->v_cache, il, g->seq, p);
        for (int32_t j = 0; j < cnt; j++) {
            memcpy(Kc + (size_t)(p + j) * hd, kb + (size_t)j * c->kvd + (size_t)kh * hd, hd * sizeof(float));
            memcpy(Vc + (size_t)(p + j) * hd, vb + (size_t)j * c->kvd + (size_t)kh * hd, hd * sizeof(float));
        }
    }
    const float scale = 1.0f / sqrtf((float)hd);
    const int32_t *act = c->act_all ? NULL : c->act;
    for (int r = 0; r < n_rep; r++) {
        const int h = kh * n_rep + r;
        const float *Q = c->q + (size_t)g->act0 * QD + (size_t)h * hd;
        float *O = c->att + (size_t)g->act0 * QD + (size_t)h * hd;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, n_kv, hd, 1.0f, Q, (int)QD, Kc,
                    hd, 0.0f, S, n_kv);
        for (int32_t i = 0; i < nq; i++) {
            float *s = S + (size_t)i * n_kv;
            int32_t row = act ? act[g->act0 + i] : g->act0 + i;
            const int32_t last = b->pos[row]; /* causal: keys 0..last */
            float mx = -INFINITY;
            for (int32_t j = 0; j <= last; j++) {
                s[j] *= scale;
                if (s[j] > mx) mx = s[j];
            }
            double sum = 0.0;
            for (int32_t j = 0; j <= last; j++) {
                float e = expf(s[j] - mx);
                s[j] = e;
                sum += (double)e;
            }
            const float inv = (float)(1.0 / sum);
            for (int32_t j = 0; j <= last; j++) s[j] *= inv;
            for (int32_t j = last + 1; j < n_kv; j++) s[j] = 0.0f;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, hd, n_kv, 1.0f, S, n_kv, Vc,
                    hd, 0.0f, O, (int)QD);
    }
}

/* |cos| between row t's normalized input and its sequence's sink. */
static float sink_score(const eng_context *c, const float *xn, const float *sink)
{
    const int64_t E = c->m->n_embd;
    double d = 0, a = 0, s = 0;
    for (int64_t i = 0; i < E; i++) {
        d += (double)xn[i] * sink[i];
        a += (double)xn[i] * xn[i];
        s += (double)sink[i] * sink[i];
    }
    if (a == 0 || s == 0) return 0.0f;
    return (float)(fabs(d) / sqrt(a * s));
}

/* OrthoRank phase of layer il: cache sinks, score rows, select (thread 0). */
static void orthorank_phase(eng_context *c, int ith, int nth, int il)
{
    const eng_batch *b = c->batch;
    const int64_t E = c->m->n_embd;
    int64_t r0, r1;
    /* sinks first: a chunk that holds position 0 scores against it */
    for (int32_t gi = ith; gi < c->n_groups; gi += nth) {
        const seq_group *g = &c->groups[gi];
        if (g->pos0 == 0 && eng__or_scored(c, g, il))
            memcpy(c->sor[g->seq].sink + (size_t)il * E, c->xn + (size_t)g->row0 * E, E * sizeof(float));
    }
    eng__pool_barrier(c->pool);
    eng__split(c->n_tokens, ith, nth, 1, &r0, &r1);
    int32_t gi = 0;
    for (int64_t t = r0; t < r1; t++) {
        while (c->groups[gi].row0 + c->groups[gi].n <= t) gi++;
        const seq_group *g = &c->groups[gi];
        float sc = NAN;
        if (eng__or_scored(c, g, il) && b->pos[t] > 0)
            sc = sink_score(c, c->xn + t * E, c->sor[g->seq].sink + (size_t)il * E);
        c->scores[t] = sc;
        if (c->sor[g->seq].record) c->rec_scores[t * c->m->n_layer + il] = sc;
    }
    eng__pool_barrier(c->pool);
    if (ith == 0) eng__or_select(c, il);
    eng__pool_barrier(c->pool);
}

static void forward_job(int ith, int nth, void *arg)
{
    eng_context *c = arg;
    const eng_model *m = c->m;
    const eng_batch *b = c->batch;
    const int64_t T = c->n_tokens, E = m->n_embd, F = m->n_ff, hd = m->head_dim;
    const int64_t QD = (int64_t)m->n_head * hd, KVD = c->kvd;
    act_cache ac = {0};
    int64_t r0, r1;

    /* Embeddings, then the first layer's attention norm. */
    eng__split(T, ith, nth, 1, &r0, &r1);
    for (int64_t t = r0; t < r1; t++) {
        eng__mat_row(&m->tok_embd, b->token[t], c->x + t * E);
        rmsnorm(c->xn + t * E, c->x + t * E, m->layers[0].attn_norm, E, m->rms_eps);
    }
    eng__pool_barrier(c->pool);

    for (int il = 0; il < m->n_layer; il++) {
        const eng__layer *L = &m->layers[il];
        if (c->any_or) orthorank_phase(c, ith, nth, il);
        const int32_t *act = c->act_all ? NULL : c->act, *kvr = c->kvr_all ? NULL : c->kvr;
        const int64_t A = c->n_act, K = c->n_kvr;

        ac.src = NULL; /* xn was rewritten since any earlier conversion */
        matmul(c, ith, nth, &L->wq, c->xn, act, A, c->q, &ac);
        matmul(c, ith, nth, &L->wk, c->xn, kvr, K, c->kn, &ac);
        matmul(c, ith, nth, &L->wv, c->xn, kvr, K, c->vn, &ac);
        eng__pool_barrier(c->pool);

        eng__split(A, ith, nth, 1, &r0, &r1);
        for (int64_t j = r0; j < r1; j++) {
            float *q = c->q + j * QD;
            if (L->bq)
                for (int64_t i = 0; i < QD; i++) q[i] += L->bq[i];
            rope(m, q, m->n_head, b->pos[act ? act[j] : j]);
        }
        eng__split(K, ith, nth, 1, &r0, &r1);
        for (int64_t j = r0; j < r1; j++) {
            int64_t t = kvr ? kvr[j] : j;
            float *k = c->kn + j * KVD, *v = c->vn + j * KVD;
            if (L->bk) {
                for (int64_t i = 0; i < KVD; i++) k[i] += L->bk[i];
                for (int64_t i = 0; i < KVD; i++) v[i] += L->bv[i];
            }
            rope(m, k, m->n_head_kv, b->pos[t]);
            memcpy(kv_at(c, c->k_cache, il, b->seq[t], b->pos[t]), k, KVD * sizeof(float));
            memcpy(kv_at(c, c->v_cache, il, b->seq[t], b->pos[t]), v, KVD * sizeof(float));
        }
        eng__pool_barrier(c->pool);

        const int64_t units = (int64_t)c->n_groups * m->n_head_kv;
        eng__split(units, ith, nth, 1, &r0, &r1);
        for (int64_t u = r0; u < r1; u++)
            attention_unit(c, ith, il, &c->groups[u / m->n_head_kv], (int)(u % m->n_head_kv));
        eng__pool_barrier(c->pool);

        /* Output projection and FFN on the updated rows only; the others keep
         * their residual unchanged. */
        matmul(c, ith, nth, &L->wo, c->att, NULL, A, c->yo, &ac);
        eng__pool_barrier(c->pool);
        eng__split(A, ith, nth, 1, &r0, &r1);
        for (int64_t j = r0; j < r1; j++) {
            float *x = c->x + (act ? act[j] : j) * E, *y = c->yo + j * E;
            for (int64_t i = 0; i < E; i++) x[i] += y[i];
            rmsnorm(y, x, L->ffn_norm, E, m->rms_eps);
        }
        eng__pool_barrier(c->pool);

        ac.src = NULL;
        matmul(c, ith, nth, &L->w_gate, c->yo, NULL, A, c->gate, &ac);
        matmul(c, ith, nth, &L->w_up, c->yo, NULL, A, c->up, &ac);
        eng__pool_barrier(c->pool);
        eng__split(A, ith, nth, 1, &r0, &r1);
        for (int64_t j = r0; j < r1; j++) {
            float *g = c->gate + j * F, *u = c->up + j * F;
            for (int64_t i = 0; i < F; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
        }
        eng__pool_barrier(c->pool);
        matmul(c, ith, nth, &L->w_down, c->gate, NULL, A, c->yo, &ac);
        eng__pool_barrier(c->pool);
        eng__split(A, ith, nth, 1, &r0, &r1);
        for (int64_t j = r0; j < r1; j++) {
            float *x = c->x + (act ? act[j] : j) * E, *y = c->yo + j * E;
            for (int64_t i = 0; i < E; i++) x[i] += y[i];
        }
        eng__pool_barrier(c->pool);

        /* The next layer's attention norm over every row (or the output
         * norm into compact rows for the tokens that want logits). */
        if (il + 1 < m->n_layer) {
            const float *nw = m->layers[il + 1].attn_norm;
            eng__split(T, ith, nth, 1, &r0, &r1);
            for (int64_t t = r0; t < r1; t++) rmsnorm(c->xn + t * E, c->x + t * E, nw, E, m->rms_eps);
            eng__pool_barrier(c->pool);
        }
    }

    eng__split(c->n_out, ith, nth, 1, &r0, &r1);
    for (int64_t o = r0; o < r1; o++) {
        int32_t t = c->out_src[o];
        rmsnorm(c->xn + o * E, c->x + (int64_t)t * E, m->output_norm, E, m->rms_eps);
    }
    eng__pool_barrier(c->pool);
    ac.src = NULL;
    if (c->n_out > 0) matmul(c, ith, nth, &m->output, c->xn, NULL, c->n_out, c->logits, &ac);
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
        for (int32_t bi = blocks_for(g->pos0); bi < blocks_for(g->pos0 + g->n); bi++)
            c->seq_blocks[(size_t)g->seq * c->max_bps + bi] = c->free_blocks[--c->n_free];
        c->seq_len[g->seq] = g->pos0 + g->n;
    }
    c->n_out = 0;
    for (int32_t t = 0; t < T; t++) {
        c->out_row[t] = (b->logits && b->logits[t]) ? c->n_out : -1;
        if (c->out_row[t] >= 0) c->out_src[c->n_out++] = t;
    }
    c->batch = b;
    c->n_tokens = T;
    /* Dense unless some sequence in the batch is sparsified or recorded. */
    c->any_or = false;
    for (int32_t i = 0; i < c->n_groups; i++) {
        seq_or *so = &c->sor[c->groups[i].seq];
        if (so->on || so->record) c->any_or = true;
        c->groups[i].act0 = c->groups[i].row0;
        c->groups[i].act_n = c->groups[i].n;
    }
    c->act_all = c->kvr_all = true;
    c->n_act = c->n_kvr = T;
    if (!c->any_or) {
        /* token counts for the stats of dense sequences */
        for (int32_t i = 0; i < c->n_groups; i++) {
            const seq_group *g = &c->groups[i];
            seq_or *so = &c->sor[g->seq];
            int32_t np = g->pos0 < so->n_prompt ? (so->n_prompt - g->pos0 < g->n ? so->n_prompt - g->pos0 : g->n) : 0;
            so->pf_tok += (uint64_t)np;
            so->dc_tok += (uint64_t)(g->n - np);
            so->pf_tot += (uint64_t)np * (uint64_t)m->n_layer;
            so->dc_tot += (uint64_t)(g->n - np) * (uint64_t)m->n_layer;
            so->fl_tot += (double)g->n * m->n_layer * c->fl_layer;
        }
    }
    /* A step whose weight products are tiny (a small model decoding one
     * token) costs less than the wake-ups and barriers of sharing it. */
    double work = (double)m->n_params * (double)T;
    eng__pool_run_n(c->pool, work < 2e6 ? 1 : c->n_threads, forward_job, c);
    c->batch = NULL;
    return ENG_OK;
}

const float *eng_get_logits(const eng_context *c, int32_t i)
{
    if (!c || i < 0 || i >= c->n_tokens || c->out_row[i] < 0) return NULL;
    return c->logits + (size_t)c->out_row[i] * c->m->n_vocab;
}
