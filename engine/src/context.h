/*
 * context.h - the context as forward.c (compute) and orthorank.c (selection,
 * plans, stats) share it. Engine-internal.
 */
#ifndef ORTHOSERVE_CONTEXT_H
#define ORTHOSERVE_CONTEXT_H

#include "model.h"

#define KV_BLOCK ENG_KV_BLOCK
#define SMALL_T 8    /* steps of at most this many rows run in "own" mode (forward.c) */
#define ROW_ALIGN 16 /* weight rows per thread chunk: multiple of the gemm tiles and of ENG_PACK_ROWS */

typedef struct {
    int32_t seq, row0, n, pos0; /* batch rows [row0, row0+n) of seq, first position pos0 */
    int32_t act0, act_n;        /* this layer: its updated rows are act[act0 .. act0+act_n) */
    int8_t grouped;             /* this layer: its decode row's decision taken with its cohort
                                 * (0 skip, 1 update; -1: it decides alone) */
} seq_group;

/* The running rule of one sequence at one OrthoRank layer (orthorank.c,
 * rate_decide): the rows it decides one by one (decode rows, rows of short
 * prompt chunks) are updated at rate k. Decode and prompt rows keep apart
 * counts, so decoding depends on the prompt only through its K/V and its
 * last token (what a reused prefix reproduces). */
#define RATE_WIN 128 /* recent selection keys a row is ranked against */
typedef struct {
    float win[RATE_WIN];    /* ring of the phase's recent keys (score, or -score for inverse) */
    int32_t n_win, head;
    bool decode;            /* the phase counted: decode rows (else prompt rows) */
    int64_t seen, updated;  /* rows decided in this phase, and how many were updated */
    float last_prompt_key;  /* the last prompt token's key (NAN until seen): decoding starts from it */
} rate_ctl;

/* OrthoRank state of one sequence (orthorank.c; see eng_seq_set_orthorank). */
typedef struct {
    bool on;                   /* some layer is sparsified */
    bool record;               /* record sink scores of every layer (calibration) */
    int32_t min_tokens, n_prompt;
    uint64_t seed, rng;
    bool decoding;             /* a decode row was seen (rng restarted from the seed) */
    eng_orthorank_stats stats; /* the settings in force (method, decode, sparsity, token ratio,
                                * layers) and what was counted */
    uint8_t *layer_on;         /* (n_layer) */
    rate_ctl *rate;            /* (n_layer) the running rule per layer */
    float *sink;               /* (n_layer, n_embd) the sink's normalized input per layer */
} seq_orthorank;

struct eng_context {
    eng_model *m;
    eng__pool *pool;
    const eng__kernels *kern;
    int64_t blas_nx; /* products of at least this many rows use OpenBLAS (F32/F16/BF16); 0: never */
    int32_t n_ctx, n_seq_max, n_batch_max, n_threads;
    /* KV: (n_layer, n_blocks) blocks of k_blk (v_blk) bytes; within a block,
     * per kv head, K transposed and V row-major in type_k / type_v (see
     * eng__attn_args; kvcache.c converts) */
    int32_t kvd, n_blocks, max_bps;
    int type_k, type_v;           /* ENG_TYPE_F32, ENG_TYPE_F16 or ENG_TYPE_Q8_0 */
    size_t k_head, v_head;        /* bytes of one kv head in one block */
    size_t k_blk, v_blk;          /* bytes of one block (every kv head) */
    uint8_t *k_cache, *v_cache;
    int32_t *free_blocks, n_free;
    int32_t *seq_blocks; /* (n_seq_max, max_bps) */
    int32_t *seq_len;    /* (n_seq_max) */
    int32_t *blk_ref;    /* (n_blocks) sequences whose table holds the block (forks share full blocks) */
    /* scratch, sized for n_batch_max rows; q/kn/vn/att/yo/gate/up hold
     * compact rows (the rows a layer updates or writes K/V for) */
    float *x, *xn, *q, *kn, *vn, *att, *yo, *gate, *up;
    uint8_t *qact;                                  /* activations converted for the kernels */
    uint8_t *qact_own;                              /* per thread, SMALL_T rows (own mode) */
    float *xn_own;                                  /* per thread, SMALL_T normalized rows */
    float *rope_cs;                                 /* (T, n_rot) rope cos/sin of each row */
    bool own_mode;                                  /* this step: see forward_job */
    size_t qact_row;                                /* bytes per row reserved in qact */
    float *attn_scratch;                            /* per thread: the attention kernel's */
    size_t attn_per_thread;                         /* floats */
    int32_t *attn_last;                             /* per thread: (n_batch_max) key limits */
    /* qwen3 / gemma3 / phi3 (forward.c) */
    float *rope_cs_swa;                             /* (T, n_rot) rope of sliding-window layers, or NULL */
    const float *rope_freqs;                        /* rope divisors in use (llama 3.1, LongRoPE), or NULL */
    int32_t *attn_first;                            /* per thread: (n_batch_max) window starts */
    float *logits;       /* (n_out, n_vocab) */
    int32_t *out_row;    /* batch index -> logits row or -1 */
    int32_t *out_src;    /* logits row -> batch index */
    int32_t n_out;
    seq_group *groups;
    int32_t n_groups;
    const eng_batch *batch; /* during a decode */
    int32_t n_tokens;
    /* OrthoRank (orthorank.c) */
    seq_orthorank *orthorank;  /* (n_seq_max) */
    bool orthorank_active;     /* this step: some group is sparsified or recorded */
    float *scores;             /* (T) sink scores of the current layer, NAN if unscored */
    float *rec_scores;         /* (T, n_layer) recorded scores */
    rate_ctl *cohort;          /* (n_layer) batch grouping: the recent cohort keys per layer (win only) */
    int32_t *sel_tmp;          /* (3T) selection scratch */
    double flops_layer, flops_kv; /* weight-product FLOPs of one token-layer, and of its K/V part */
    /* The current layer's selection (with the groups' act0/act_n), which forward.c follows */
    int32_t *act, n_act;       /* rows updated */
    int32_t *kvr, n_kvr;       /* rows whose K/V the layer writes */
    bool act_all, kvr_all;     /* the lists are 0..T-1 */
};

/* forward.c: position pos of seq at layer il, as K and V rows of kvd floats
 * (converted from the cache's types; for tests). */
void eng__kv_get(const eng_context *c, int il, int32_t seq, int32_t pos, float *k, float *v);

/* orthorank.c */
eng_status eng__orthorank_ctx_init(eng_context *c);
void eng__orthorank_ctx_free(eng_context *c);
/* eng_decode, once the batch's groups are known: every row of every layer
 * unless some sequence is sparsified or recorded (then the layers choose);
 * counts the stats of a dense step. */
void eng__orthorank_step(eng_context *c);
/* The forward job, every thread, at layer il before its Q/K/V products
 * (xn: the layer's normalized rows, the same in every thread's copy): sink
 * scores, then the selection for the layer (act/kvr lists, the groups' act
 * ranges) and its stats. Nothing unless the step is active. */
void eng__orthorank_layer(eng_context *c, int ith, int nth, int il, const float *xn);
/* The selection part of it (thread 0, scores in place); for tests. */
void eng__orthorank_select(eng_context *c, int il);

#endif
