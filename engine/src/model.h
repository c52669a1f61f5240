/*
 * model.h - the loaded model as the forward pass sees it (engine-internal).
 */
#ifndef ORTHOSERVE_MODEL_H
#define ORTHOSERVE_MODEL_H

#include "internal.h"

/* A weight matrix: n_out rows of n_in elements of one ggml type, row-major
 * (GGUF ne[0] = n_in, ne[1] = n_out); rows [0, n_packed) are in packed
 * groups of 16 (internal.h), the rest in the file layout. */
typedef struct {
    const uint8_t *data;
    int type;
    int64_t n_in, n_out, n_packed;
    size_t row_bytes;
} eng__mat;

typedef struct {
    const float *attn_norm; /* (n_embd) */
    const float *ffn_norm;  /* (n_embd) */
    eng__mat wq, wk, wv, wo; /* q: n_embd -> n_head*head_dim, k/v: -> n_head_kv*head_dim */
    const float *bq, *bk, *bv; /* qwen2 biases, or NULL */
    eng__mat w_gate, w_up, w_down;
    /* qwen3 / gemma3 / phi3 (phi3's fused attn_qkv and ffn_up are bound as
     * row ranges: wq/wk/wv and w_gate/w_up are views of one tensor) */
    const float *q_norm, *k_norm;                /* (head_dim) per-head RMSNorm before rope, or NULL */
    const float *post_attn_norm, *post_ffn_norm; /* gemma3: RMSNorm of each block's output, or NULL */
    bool swa;                                    /* a sliding-window layer (gemma3) */
} eng__layer;

typedef enum { ENG_ROPE_NORM = 0, ENG_ROPE_NEOX = 1 } eng__rope_kind;
typedef enum { ENG_ARCH_LLAMA, ENG_ARCH_QWEN2, ENG_ARCH_QWEN3, ENG_ARCH_GEMMA3, ENG_ARCH_PHI3 } eng__arch;
typedef enum { ENG_ACT_SILU, ENG_ACT_GELU_TANH } eng__act; /* the FFN gate's activation */

/* A model's OrthoRank layer plan (eng_orthorank_plan, held in place). */
typedef struct {
    int32_t order[ENG_MAX_LAYERS], n_order;           /* OrthoRank layer order */
    int32_t skip_order[ENG_MAX_LAYERS], n_skip_order; /* layer-skipping order */
    float thresholds[ENG_MAX_LAYERS];                 /* (n_layer), NAN where unknown */
    bool has_thresholds;
    float threshold_ratio;
    char source[16];                                  /* "calibrated" or "fallback" */
} eng__orthorank_plan;
/* Install the fallback plan (orthorank.c): deepest layers first, layer 0 excluded. */
void eng__orthorank_plan_fallback(eng_model *m);

struct eng_model {
    eng__gguf *gguf;
    eng_vocab *vocab;
    char arch[16];
    char name[128];
    char file_type[16];
    char *chat_template; /* copy, or NULL */
    int32_t n_vocab, n_ctx_train, n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff, n_rot;
    float rope_base, rope_scale, rms_eps;
    eng__rope_kind rope;
    bool tied;
    eng__mat tok_embd, output;
    const float *output_norm;
    const float *rope_freqs; /* (n_rot/2) divisors of theta (llama 3.1), or NULL */
    eng__layer *layers;
    /* Family specifics (model.c sets them from the metadata, forward.c follows) */
    eng__arch kind;
    eng__act act;
    float embd_scale;      /* token embeddings times this (gemma3: sqrt(n_embd)), else 1 */
    float attn_scale;      /* attention score scale (1/sqrt(head_dim) unless the family differs) */
    float logit_softcap;   /* > 0: logits = cap * tanh(logits / cap) (gemma3) */
    int32_t n_swa;         /* window of the sliding-window layers (0: none) */
    int32_t n_swa_layers, swa_period; /* how many layers slide; the layer pattern's period */
    float rope_base_swa, rope_scale_swa; /* rope of the sliding-window layers */
    const float *rope_factors_short, *rope_factors_long; /* phi3 LongRoPE divisors (n_rot/2), or NULL */
    float rope_attn_factor; /* cos/sin multiplier (LongRoPE), else 1 */
    int32_t n_ctx_orig;    /* rope.scaling.original_context_length (0: absent) */
    char traits[160];      /* what `orthoserve info` prints about the family */
    int32_t n_threads;
    bool unsupported; /* a binding failed on an unsupported type (load-time only) */
    uint64_t n_params, n_bytes;
    uint8_t *pack_buf; /* repacked matrices (mmap models), or NULL */
    size_t pack_size;
    int64_t n_packed_mats;
    eng__orthorank_plan orthorank; /* orthorank.c */
};

/* Dequantize row `row` of m into out (m->n_in floats); m not repacked. */
void eng__mat_row(const eng__mat *m, int64_t row, float *out);

#endif
