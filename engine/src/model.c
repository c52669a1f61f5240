/*
 * model.c - load a GGUF model: hyper-parameters from metadata, tensor binding
 * with shape and type checks, and the tokenizer. Supported architectures:
 *   llama   Llama 2/3.x, TinyLlama, Mistral, SmolLM: rope NORM;
 *   qwen2   rope NEOX, q/k/v biases;
 *   qwen3   rope NEOX, no biases, per-head RMSNorm of Q and K before rope,
 *           head size from attention.key_length (may differ from n_embd/n_head);
 *   gemma3  embeddings x sqrt(n_embd), q/k norms, RMSNorm after attention and
 *           after the FFN too, GELU-tanh gate, sliding-window layers (window
 *           attention.sliding_window, rope base rope.freq_base_swa; layer il
 *           slides unless il % 6 == 5), final_logit_softcapping; its norm
 *           weights are used as stored (GGUF files hold Gemma's 1 + w);
 *   phi3    fused attn_qkv and ffn_up (gate rows, then up rows) bound as row
 *           ranges of one tensor, rope NEOX, LongRoPE factor tensors.
 * Anything else is refused with a message that lists them.
 */
#include "model.h"
#include "tokenizer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SUPPORTED_ARCHS "llama, qwen2, qwen3, gemma3, phi3"
#define SUPPORTED_TYPES "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K"

eng_model_params eng_model_default_params(void)
{
    eng_model_params p = {.n_threads = 2, .use_mmap = true, .repack = true};
    return p;
}

static bool get_u32(const eng__gguf *g, const char *arch, const char *suffix, int32_t *v,
                    bool required, char *err, size_t errlen)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    uint64_t u;
    if (!eng__gguf_find(g, key)) {
        if (required) eng__errf(err, errlen, "missing metadata key '%s'", key);
        return !required;
    }
    if (!eng__gguf_get_u64(g, key, &u) || u > (1u << 30)) {
        eng__errf(err, errlen, "metadata key '%s' must be an integer in [0, 2^30]", key);
        return false;
    }
    *v = (int32_t)u;
    return true;
}

static bool get_f(const eng__gguf *g, const char *arch, const char *suffix, float *v,
                  char *err, size_t errlen)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    if (!eng__gguf_find(g, key)) return true; /* keep the default */
    if (!eng__gguf_get_f32(g, key, v) || !isfinite(*v)) {
        eng__errf(err, errlen, "metadata key '%s' must be a finite number", key);
        return false;
    }
    return true;
}

/* Bind a matrix: ne[0] = n_in, ne[1] = n_out, supported type. */
static bool bind_mat(eng_model *m, const char *name, int64_t n_in, int64_t n_out, eng__mat *out,
                     bool required, char *err, size_t errlen)
{
    const eng__gguf_tensor *t = eng__gguf_tensor_find(m->gguf, name);
    if (!t) {
        if (required) eng__errf(err, errlen, "missing tensor '%s'", name);
        return !required;
    }
    if (t->n_dims > 2 || t->ne[0] != n_in || t->ne[1] != n_out) {
        eng__errf(err, errlen, "tensor '%s' has shape [%lld, %lld], expected [%lld, %lld]",
                  name, (long long)t->ne[0], (long long)t->ne[1], (long long)n_in,
                  (long long)n_out);
        return false;
    }
    const eng__type_info *ti = eng__type((int)t->type);
    if (!ti || t->type == ENG_TYPE_Q8_1 || t->type == ENG_TYPE_Q8_K) {
        const char *tn = eng__ggml_type_name(t->type);
        eng__errf(err, errlen, "tensor '%s' has weight type %s, which is not supported (supported: %s)",
                  name, tn ? tn : "?", SUPPORTED_TYPES);
        m->unsupported = true;
        return false;
    }
    /* Kernels read F32/F16/BF16 elements in place: they must be naturally
     * aligned (a file with general.alignment 1 or 2 can misplace them). */
    size_t esz = t->type == ENG_TYPE_F32 ? 4 : (t->type == ENG_TYPE_F16 || t->type == ENG_TYPE_BF16) ? 2 : 1;
    if (((uintptr_t)t->data & (esz - 1)) != 0) {
        eng__errf(err, errlen, "tensor '%s' is not %zu-byte aligned in the file", name, esz);
        return false;
    }
    const eng__kernels *k = eng__kernels_best();
    if (!k->gemm[t->type] || (ti->vec_type != ENG_TYPE_F32 && !k->quantize_act[t->type])) {
        eng__errf(err, errlen, "tensor '%s': no %s kernel for weight type %s", name, k->name, ti->name);
        m->unsupported = true;
        return false;
    }
    out->data = t->data;
    out->type = (int)t->type;
    out->n_in = n_in;
    out->n_out = n_out;
    out->row_bytes = eng__row_size((int)t->type, n_in);
    m->n_params += (uint64_t)n_in * (uint64_t)n_out;
    m->n_bytes += t->nbytes;
    return true;
}

static bool bind_vec(eng_model *m, const char *name, int64_t n, const float **out, bool required,
                     char *err, size_t errlen)
{
    const eng__gguf_tensor *t = eng__gguf_tensor_find(m->gguf, name);
    if (!t) {
        *out = NULL;
        if (required) eng__errf(err, errlen, "missing tensor '%s'", name);
        return !required;
    }
    if (t->ne[0] != n || t->ne[1] != 1 || t->ne[2] != 1 || t->ne[3] != 1) {
        eng__errf(err, errlen, "tensor '%s' has shape [%lld, %lld, %lld, %lld], expected a vector of %lld",
                  name, (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2], (long long)t->ne[3],
                  (long long)n);
        return false;
    }
    if (t->type != ENG_TYPE_F32) {
        const char *tn = eng__ggml_type_name(t->type);
        eng__errf(err, errlen, "tensor '%s' is %s; 1-D tensors must be F32", name, tn ? tn : "?");
        return false;
    }
    if (((uintptr_t)t->data & 3) != 0) {
        eng__errf(err, errlen, "tensor '%s' is not 4-byte aligned", name);
        return false;
    }
    *out = t->data;
    m->n_params += (uint64_t)n;
    m->n_bytes += t->nbytes;
    return true;
}

static const struct {
    const char *name;
    eng__arch kind;
} archs[] = {{"llama", ENG_ARCH_LLAMA}, {"qwen2", ENG_ARCH_QWEN2}, {"qwen3", ENG_ARCH_QWEN3},
             {"gemma3", ENG_ARCH_GEMMA3}, {"phi3", ENG_ARCH_PHI3}};

/* general.architecture: one of archs[], else refused naming the supported ones. */
static eng_status load_arch(eng_model *m, char *err, size_t errlen)
{
    eng__str arch;
    if (!eng__gguf_get_str(m->gguf, "general.architecture", &arch)) {
        eng__errf(err, errlen, "missing metadata key 'general.architecture'");
        return ENG_EFORMAT;
    }
    for (size_t i = 0; i < sizeof archs / sizeof archs[0]; i++)
        if (arch.len == strlen(archs[i].name) && memcmp(arch.ptr, archs[i].name, arch.len) == 0) {
            memcpy(m->arch, arch.ptr, arch.len);
            m->arch[arch.len] = 0;
            m->kind = archs[i].kind;
            return ENG_OK;
        }
    eng__errf(err, errlen, "architecture '%.*s' is not supported (supported: %s)",
              (int)(arch.len > 64 ? 64 : arch.len), arch.ptr, SUPPORTED_ARCHS);
    return ENG_EUNSUPPORTED;
}

/* rope.scaling.type / factor: none or linear (every family), longrope (phi3,
 * with its factor tensors, bound later). */
static eng_status load_rope_scaling(eng_model *m, char *err, size_t errlen)
{
    const eng__gguf *g = m->gguf;
    const char *a = m->arch;
    float factor = 1.0f, attn_factor = NAN;
    if (!get_f(g, a, "rope.scaling.factor", &factor, err, errlen) ||
        !get_u32(g, a, "rope.scaling.original_context_length", &m->n_ctx_orig, false, err, errlen) ||
        !get_f(g, a, "rope.scaling.attn_factor", &attn_factor, err, errlen))
        return ENG_EFORMAT;
    if (!isnan(attn_factor)) m->rope_attn_factor = attn_factor;
    else if (m->kind == ENG_ARCH_PHI3 && eng__gguf_tensor_find(g, "rope_factors_long.weight") && m->n_ctx_orig > 1 &&
             m->n_ctx_train > m->n_ctx_orig)
        /* LongRoPE's attention factor when the file does not give it:
         * sqrt(1 + ln(ctx / original ctx) / ln(original ctx)) */
        m->rope_attn_factor = sqrtf(1.0f + logf((float)m->n_ctx_train / (float)m->n_ctx_orig) /
                                           logf((float)m->n_ctx_orig));
    char key[128];
    snprintf(key, sizeof key, "%s.rope.scaling.type", a);
    eng__str stype;
    if (eng__gguf_get_str(g, key, &stype) && !(stype.len == 4 && !memcmp(stype.ptr, "none", 4))) {
        if (stype.len == 6 && !memcmp(stype.ptr, "linear", 6)) {
            if (factor > 0) m->rope_scale = 1.0f / factor;
        } else if (!(m->kind == ENG_ARCH_PHI3 && stype.len == 8 && !memcmp(stype.ptr, "longrope", 8))) {
            eng__errf(err, errlen, "rope scaling type '%.*s' is not supported (supported: none, linear; "
                      "longrope for phi3)", (int)(stype.len > 32 ? 32 : stype.len), stype.ptr);
            return ENG_EUNSUPPORTED;
        }
    }
    return ENG_OK;
}

/* Keys of one family (after the common ones): gemma3's sliding-window
 * layers, their rope base and the logit soft-capping; the score scale. */
static eng_status load_family(eng_model *m, char *err, size_t errlen)
{
    const eng__gguf *g = m->gguf;
    const char *a = m->arch;
    m->attn_scale = 1.0f / sqrtf((float)m->head_dim);
    m->rope_base_swa = m->rope_base;
    m->rope_scale_swa = m->rope_scale;
    if (m->kind != ENG_ARCH_GEMMA3) return ENG_OK; /* phi3's sliding_window key is not used (llama.cpp
                                                   * disables it for phi3 too) */
    m->act = ENG_ACT_GELU_TANH;
    m->embd_scale = sqrtf((float)m->n_embd);
    /* Gemma 3 27B (62 layers) scales scores by 1/sqrt(n_embd / n_head) */
    if (m->n_layer == 62) m->attn_scale = 1.0f / sqrtf((float)(m->n_embd / m->n_head));
    m->rope_base_swa = 10000.0f;
    m->rope_scale_swa = 1.0f; /* linear rope scaling applies to the global layers only */
    m->swa_period = 6; /* five sliding layers, then a global one (no key in Gemma 3 files) */
    if (!get_u32(g, a, "attention.sliding_window", &m->n_swa, true, err, errlen) ||
        !get_u32(g, a, "attention.sliding_window_pattern", &m->swa_period, false, err, errlen) ||
        !get_f(g, a, "rope.freq_base_swa", &m->rope_base_swa, err, errlen) ||
        !get_f(g, a, "final_logit_softcapping", &m->logit_softcap, err, errlen))
        return ENG_EFORMAT;
    if (m->n_swa < 1 || m->swa_period < 1 || !(m->rope_base_swa > 0) || m->logit_softcap < 0) {
        eng__errf(err, errlen, "gemma3: sliding window %d, pattern %d, swa rope base %g or soft-cap %g out of range",
                  m->n_swa, m->swa_period, m->rope_base_swa, m->logit_softcap);
        return ENG_EFORMAT;
    }
    return ENG_OK;
}

static eng_status load_hparams(eng_model *m, char *err, size_t errlen)
{
    const eng__gguf *g = m->gguf;
    eng_status st = load_arch(m, err, errlen);
    if (st != ENG_OK) return st;
    eng__str name;
    if (eng__gguf_get_str(g, "general.name", &name)) {
        size_t n = name.len < sizeof m->name - 1 ? (size_t)name.len : sizeof m->name - 1;
        memcpy(m->name, name.ptr, n);
    }
    const char *a = m->arch;
    m->n_head_kv = -1;
    m->n_rot = -1;
    m->rope_base = 10000.0f;
    m->rope_scale = 1.0f;
    m->rope_attn_factor = 1.0f;
    m->embd_scale = 1.0f;
    m->rms_eps = 1e-5f;
    int32_t key_len = -1, val_len = -1;
    if (!get_u32(g, a, "context_length", &m->n_ctx_train, true, err, errlen) ||
        !get_u32(g, a, "embedding_length", &m->n_embd, true, err, errlen) ||
        !get_u32(g, a, "block_count", &m->n_layer, true, err, errlen) ||
        !get_u32(g, a, "feed_forward_length", &m->n_ff, true, err, errlen) ||
        !get_u32(g, a, "attention.head_count", &m->n_head, true, err, errlen) ||
        !get_u32(g, a, "attention.head_count_kv", &m->n_head_kv, false, err, errlen) ||
        !get_u32(g, a, "rope.dimension_count", &m->n_rot, false, err, errlen) ||
        !get_u32(g, a, "attention.key_length", &key_len, false, err, errlen) ||
        !get_u32(g, a, "attention.value_length", &val_len, false, err, errlen) ||
        !get_f(g, a, "rope.freq_base", &m->rope_base, err, errlen) ||
        !get_f(g, a, "attention.layer_norm_rms_epsilon", &m->rms_eps, err, errlen))
        return ENG_EFORMAT;
    if ((st = load_rope_scaling(m, err, errlen)) != ENG_OK) return st;
    if (m->n_head_kv < 0) m->n_head_kv = m->n_head;
    if (m->n_embd <= 0 || m->n_layer <= 0 || m->n_layer > ENG_MAX_LAYERS || m->n_ff <= 0 ||
        m->n_head <= 0 || m->n_head_kv <= 0 || (key_len < 0 && m->n_embd % m->n_head != 0) ||
        m->n_head % m->n_head_kv != 0 || key_len == 0) {
        eng__errf(err, errlen,
                  "inconsistent hyper-parameters: n_embd %d, n_layer %d, n_ff %d, n_head %d, n_head_kv %d",
                  m->n_embd, m->n_layer, m->n_ff, m->n_head, m->n_head_kv);
        return ENG_EFORMAT;
    }
    /* The head size: attention.key_length when given (qwen3 and gemma3 set
     * it apart from n_embd / n_head), else n_embd / n_head. */
    m->head_dim = key_len > 0 ? key_len : m->n_embd / m->n_head;
    if (val_len >= 0 && val_len != m->head_dim) {
        eng__errf(err, errlen, "attention value length %d different from key length %d is not supported",
                  val_len, m->head_dim);
        return ENG_EUNSUPPORTED;
    }
    if (m->n_rot < 0) m->n_rot = m->head_dim;
    if (m->n_rot > m->head_dim || m->n_rot % 2 != 0) {
        eng__errf(err, errlen, "rope dimension count %d is invalid for head size %d", m->n_rot, m->head_dim);
        return ENG_EFORMAT;
    }
    if (!(m->rms_eps > 0 && m->rms_eps < 1) || !(m->rope_base > 0) || !(m->rope_attn_factor > 0)) {
        eng__errf(err, errlen, "rms epsilon %g, rope base %g or rope attention factor %g out of range", m->rms_eps,
                  m->rope_base, m->rope_attn_factor);
        return ENG_EFORMAT;
    }
    if (m->n_ctx_train <= 0) m->n_ctx_train = 2048;
    m->rope = m->kind == ENG_ARCH_LLAMA ? ENG_ROPE_NORM : ENG_ROPE_NEOX;
    return load_family(m, err, errlen);
}

/* Rows [r0, r0 + n) of w as a matrix of their own (before repacking). */
static eng__mat mat_rows(const eng__mat *w, int64_t r0, int64_t n)
{
    eng__mat v = *w;
    v.data = w->data + (size_t)r0 * w->row_bytes;
    v.n_out = n;
    return v;
}

/* The attention matrices: attn_q/k/v, or phi3's fused attn_qkv (rows: Q,
 * then K, then V). */
static bool bind_attn(eng_model *m, eng__layer *L, const char *pre, char *err, size_t errlen)
{
    const int64_t E = m->n_embd, Q = (int64_t)m->n_head * m->head_dim, KV = (int64_t)m->n_head_kv * m->head_dim;
    char n[4][64];
    const char *suf[] = {"attn_qkv.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight"};
    for (int i = 0; i < 4; i++) snprintf(n[i], sizeof n[i], "%s%s", pre, suf[i]);
    if (m->kind == ENG_ARCH_PHI3 && eng__gguf_tensor_find(m->gguf, n[0])) {
        eng__mat qkv = {0};
        if (!bind_mat(m, n[0], E, Q + 2 * KV, &qkv, true, err, errlen)) return false;
        L->wq = mat_rows(&qkv, 0, Q);
        L->wk = mat_rows(&qkv, Q, KV);
        L->wv = mat_rows(&qkv, Q + KV, KV);
        return true;
    }
    return bind_mat(m, n[1], E, Q, &L->wq, true, err, errlen) && bind_mat(m, n[2], E, KV, &L->wk, true, err, errlen) &&
           bind_mat(m, n[3], E, KV, &L->wv, true, err, errlen);
}

/* Layer il's tensors, as its family has them. */
static bool bind_layer(eng_model *m, int il, char *err, size_t errlen)
{
    eng__layer *L = &m->layers[il];
    const int64_t E = m->n_embd, F = m->n_ff, Q = (int64_t)m->n_head * m->head_dim,
                  KV = (int64_t)m->n_head_kv * m->head_dim, HD = m->head_dim;
    const bool bias = m->kind == ENG_ARCH_QWEN2, qk_norm = m->kind == ENG_ARCH_QWEN3 || m->kind == ENG_ARCH_GEMMA3,
               post = m->kind == ENG_ARCH_GEMMA3, fused_up = m->kind == ENG_ARCH_PHI3;
    char pre[24], n[13][64];
    snprintf(pre, sizeof pre, "blk.%d.", il);
    const char *suf[] = {"attn_norm.weight", "ffn_norm.weight", "attn_output.weight", "ffn_gate.weight",
                         "ffn_up.weight", "ffn_down.weight", "attn_q.bias", "attn_k.bias", "attn_v.bias",
                         "attn_q_norm.weight", "attn_k_norm.weight", "post_attention_norm.weight",
                         "post_ffw_norm.weight"};
    for (int i = 0; i < 13; i++) snprintf(n[i], sizeof n[i], "%s%s", pre, suf[i]);
    if (!bind_vec(m, n[0], E, &L->attn_norm, true, err, errlen) || !bind_vec(m, n[1], E, &L->ffn_norm, true, err, errlen) ||
        !bind_attn(m, L, pre, err, errlen) || !bind_mat(m, n[2], Q, E, &L->wo, true, err, errlen) ||
        !bind_mat(m, n[5], F, E, &L->w_down, true, err, errlen) ||
        !bind_vec(m, n[6], Q, &L->bq, bias, err, errlen) || !bind_vec(m, n[7], KV, &L->bk, bias, err, errlen) ||
        !bind_vec(m, n[8], KV, &L->bv, bias, err, errlen) || !bind_vec(m, n[9], HD, &L->q_norm, qk_norm, err, errlen) ||
        !bind_vec(m, n[10], HD, &L->k_norm, qk_norm, err, errlen) ||
        !bind_vec(m, n[11], E, &L->post_attn_norm, post, err, errlen) ||
        !bind_vec(m, n[12], E, &L->post_ffn_norm, post, err, errlen))
        return false;
    if (L->bq && !(L->bk && L->bv)) {
        eng__errf(err, errlen, "%s: a q bias without k and v biases is not supported", pre);
        return false;
    }
    if (fused_up) { /* phi3: ffn_up holds the gate rows, then the up rows */
        eng__mat gu = {0};
        if (!bind_mat(m, n[4], E, 2 * F, &gu, true, err, errlen)) return false;
        L->w_gate = mat_rows(&gu, 0, F);
        L->w_up = mat_rows(&gu, F, F);
    } else if (!bind_mat(m, n[3], E, F, &L->w_gate, true, err, errlen) ||
               !bind_mat(m, n[4], E, F, &L->w_up, true, err, errlen)) {
        return false;
    }
    L->swa = m->n_swa > 0 && il % m->swa_period < m->swa_period - 1;
    m->n_swa_layers += L->swa;
    return true;
}

/* The family's traits in words, for `orthoserve info`. */
static void set_traits(eng_model *m)
{
    const eng__layer *L = &m->layers[0];
    size_t n = 0;
    m->traits[0] = 0;
#define TRAIT(...) n += (size_t)snprintf(m->traits + n, n < sizeof m->traits ? sizeof m->traits - n : 0, __VA_ARGS__)
    if (L->bq) TRAIT("q/k/v biases, ");
    if (L->q_norm) TRAIT("q/k RMSNorm, ");
    if (L->post_attn_norm) TRAIT("post-attention/FFN norms, ");
    if (m->embd_scale != 1.0f) TRAIT("embeddings x%g, ", (double)m->embd_scale);
    if (m->kind == ENG_ARCH_PHI3 && L->wk.data == L->wq.data + (size_t)L->wq.n_out * L->wq.row_bytes)
        TRAIT("fused attn_qkv, ");
    if (m->kind == ENG_ARCH_PHI3) TRAIT("fused ffn_up (gate|up), ");
    if (m->rope_factors_long) TRAIT("LongRoPE (orig ctx %d, attn factor %g), ", m->n_ctx_orig, (double)m->rope_attn_factor);
    TRAIT("%s FFN", m->act == ENG_ACT_GELU_TANH ? "GELU-tanh" : "SiLU");
    if (m->logit_softcap > 0) TRAIT(", logit soft-cap %g", (double)m->logit_softcap);
#undef TRAIT
}

static eng_status bind_tensors(eng_model *m, char *err, size_t errlen)
{
    const eng__gguf_tensor *te = eng__gguf_tensor_find(m->gguf, "token_embd.weight");
    if (!te) {
        eng__errf(err, errlen, "missing tensor 'token_embd.weight'");
        return m->unsupported ? ENG_EUNSUPPORTED : ENG_EFORMAT;
    }
    if (te->ne[1] <= 0 || te->ne[1] > (1 << 24)) {
        eng__errf(err, errlen, "token_embd.weight has an invalid vocabulary size %lld", (long long)te->ne[1]);
        return m->unsupported ? ENG_EUNSUPPORTED : ENG_EFORMAT;
    }
    m->n_vocab = (int32_t)te->ne[1];
    int64_t E = m->n_embd, V = m->n_vocab;
    if (!bind_mat(m, "token_embd.weight", E, V, &m->tok_embd, true, err, errlen) ||
        !bind_vec(m, "output_norm.weight", E, &m->output_norm, true, err, errlen) ||
        !bind_mat(m, "output.weight", E, V, &m->output, false, err, errlen))
        return m->unsupported ? ENG_EUNSUPPORTED : ENG_EFORMAT;
    if (!m->output.data) {
        m->output = m->tok_embd;
        m->tied = true;
    }
    if (eng__gguf_tensor_find(m->gguf, "rope_freqs.weight") &&
        !bind_vec(m, "rope_freqs.weight", m->n_rot / 2, &m->rope_freqs, true, err, errlen))
        return m->unsupported ? ENG_EUNSUPPORTED : ENG_EFORMAT;
    if (m->kind == ENG_ARCH_PHI3 &&
        (!bind_vec(m, "rope_factors_short.weight", m->n_rot / 2, &m->rope_factors_short, false, err, errlen) ||
         !bind_vec(m, "rope_factors_long.weight", m->n_rot / 2, &m->rope_factors_long, false, err, errlen)))
        return m->unsupported ? ENG_EUNSUPPORTED : ENG_EFORMAT;
    if (!m->rope_factors_short != !m->rope_factors_long) {
        eng__errf(err, errlen, "LongRoPE needs both rope_factors_short.weight and rope_factors_long.weight");
        return ENG_EFORMAT;
    }
    m->layers = eng__calloc((size_t)m->n_layer, sizeof *m->layers);
    if (!m->layers) return ENG_ENOMEM;
    for (int il = 0; il < m->n_layer; il++)
        if (!bind_layer(m, il, err, errlen)) return m->unsupported ? ENG_EUNSUPPORTED : ENG_EFORMAT;
    set_traits(m);
    /* The dominant type names the file ("Q4_K" for a Q4_K_M file). */
    int count[ENG_TYPE_COUNT] = {0};
    for (int il = 0; il < m->n_layer; il++) {
        const eng__layer *L = &m->layers[il];
        const eng__mat *ms[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        for (int i = 0; i < 7; i++) count[ms[i]->type]++;
    }
    int best = 0;
    for (int t = 0; t < ENG_TYPE_COUNT; t++)
        if (count[t] > count[best]) best = t;
    snprintf(m->file_type, sizeof m->file_type, "%s", eng_type_name(best) ? eng_type_name(best) : "?");
    return ENG_OK;
}

/*
 * Reorder the matrices the kernels can stream in packed groups (internal.h,
 * "Packed weights"). A model read into memory is packed in place; a mapped
 * one into one anonymous buffer (huge pages where granted), after which the
 * mapping's pages of those tensors are dropped from this process (they stay
 * in the page cache). The token embedding is never packed (rows are read one
 * at a time), nor therefore a tied output matrix. Best effort: without the
 * memory for it the model keeps the file layout (same results, slower).
 */
static void repack(eng_model *m)
{
    const eng__kernels *k = eng__kernels_best();
    const int64_t nm = 1 + 7 * (int64_t)m->n_layer;
    eng__mat **mats = eng__calloc((size_t)nm, sizeof *mats);
    if (!mats) {
        eng__log(ENG_LOG_WARN, "out of memory: weights kept in the file layout (slower decoding)");
        return;
    }
    int64_t n = 0;
    if (!m->tied) mats[n++] = &m->output;
    for (int32_t il = 0; il < m->n_layer; il++) {
        eng__layer *L = &m->layers[il];
        eng__mat *lm[7] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        for (int i = 0; i < 7; i++) mats[n++] = lm[i];
    }
    const bool in_place = m->gguf->owned;
    size_t total = 0, max_group = 0;
    int64_t np = 0;
    for (int64_t i = 0; i < n; i++) {
        eng__mat *w = mats[i];
        if (!eng__packable(w->type, w->n_in) || !k->gemm_packed[w->type] || w->n_out < ENG_PACK_ROWS) {
            mats[i] = NULL;
            continue;
        }
        size_t gb = ENG_PACK_ROWS * w->row_bytes;
        if (gb > max_group) max_group = gb;
        total += ((size_t)w->n_out * w->row_bytes + 63) & ~(size_t)63;
        np++;
    }
    uint8_t *tmp = np && in_place ? eng__malloc(max_group) : NULL; /* a group's rows, in place */
    uint8_t *buf = np && !in_place ? eng__huge_alloc(total) : NULL;
    if (np && (in_place ? !tmp : !buf)) {
        eng__log(ENG_LOG_WARN, "out of memory repacking %.1f MiB of weights: kept in the file layout "
                 "(slower decoding)", (double)total / (1024.0 * 1024.0));
        goto done;
    }
    size_t off = 0;
    for (int64_t i = 0; i < n; i++) {
        eng__mat *w = mats[i];
        if (!w) continue;
        const size_t gb = ENG_PACK_ROWS * w->row_bytes, bytes = (size_t)w->n_out * w->row_bytes;
        const int64_t ng = w->n_out / ENG_PACK_ROWS;
        uint8_t *dst = in_place ? (uint8_t *)(uintptr_t)w->data : buf + off;
        for (int64_t g = 0; g < ng; g++) {
            const uint8_t *src = w->data + (size_t)g * gb;
            if (in_place) src = memcpy(tmp, src, gb);
            eng__pack16(w->type, src, w->row_bytes, dst + (size_t)g * gb);
        }
        if (!in_place) {
            memcpy(dst + (size_t)ng * gb, w->data + (size_t)ng * gb, bytes - (size_t)ng * gb);
            eng__drop_pages(w->data, bytes);
            off += (bytes + 63) & ~(size_t)63;
        }
        w->data = dst;
        w->n_packed = ng * ENG_PACK_ROWS;
    }
    m->pack_buf = buf;
    m->pack_size = total;
    m->n_packed_mats = np;
    buf = NULL;
    if (np)
        eng__log(ENG_LOG_INFO, "repacked %lld weight matrices for the %s kernels (%s)", (long long)np,
                 k->name, in_place ? "in place" : "copied from the mapping");
done:
    if (buf) eng__huge_free(buf, total);
    free(tmp);
    free(mats);
}

eng_status eng_model_load(const char *path, const eng_model_params *p, eng_model **out,
                          char *err, size_t errlen)
{
    if (!path || !out) return ENG_EINVAL;
    *out = NULL;
    eng_model_params dp = eng_model_default_params();
    if (!p) p = &dp;
    if (p->n_threads < 1 || p->n_threads > 512) {
        eng__errf(err, errlen, "n_threads must be in [1, 512]");
        return ENG_EINVAL;
    }
    if (eng_kernels_check(err, errlen) != ENG_OK) return ENG_EUNSUPPORTED; /* ORTHOSERVE_ISA */
    eng_model *m = eng__calloc(1, sizeof *m);
    if (!m) return ENG_ENOMEM;
    m->n_threads = p->n_threads;
    eng_status st = p->use_mmap ? eng__gguf_open(path, &m->gguf, err, errlen)
                                 : eng__gguf_open_read(path, &m->gguf, err, errlen);
    if (st != ENG_OK) goto fail;
    if ((st = load_hparams(m, err, errlen)) != ENG_OK) goto fail;
    if ((st = bind_tensors(m, err, errlen)) != ENG_OK) goto fail;
    if (p->repack) repack(m);
    eng__orthorank_plan_fallback(m);
    if ((st = eng__vocab_from_gguf(m->gguf, &m->vocab, err, errlen)) != ENG_OK) goto fail;
    if (eng_vocab_n_tokens(m->vocab) > m->n_vocab) {
        eng__errf(err, errlen, "the tokenizer has %d tokens but the embedding only %d rows",
                  eng_vocab_n_tokens(m->vocab), m->n_vocab);
        st = ENG_EFORMAT;
        goto fail;
    }
    eng__str tmpl;
    if (eng__gguf_get_str(m->gguf, "tokenizer.chat_template", &tmpl)) {
        m->chat_template = eng__strndup(tmpl.ptr, (size_t)tmpl.len);
        if (!m->chat_template) { st = ENG_ENOMEM; goto fail; }
    }
    eng__log(ENG_LOG_INFO, "loaded %s: %s, %d layers, n_embd %d, %s, %.1f MiB", path, m->arch,
             m->n_layer, m->n_embd, m->file_type, (double)m->n_bytes / (1024.0 * 1024.0));
    *out = m;
    return ENG_OK;
fail:
    if (st == ENG_ENOMEM && err && !err[0]) eng__errf(err, errlen, "out of memory");
    eng_model_free(m);
    return st;
}

void eng_model_free(eng_model *m)
{
    if (!m) return;
    eng_vocab_free(m->vocab);
    free(m->layers);
    free(m->chat_template);
    eng__gguf_close(m->gguf);
    if (m->pack_buf) eng__huge_free(m->pack_buf, m->pack_size);
    free(m);
}

void eng_model_get_info(const eng_model *m, eng_model_info *o)
{
    memset(o, 0, sizeof *o);
    o->arch = m->arch;
    o->name = m->name;
    o->file_type = m->file_type;
    o->chat_template = m->chat_template;
    o->n_vocab = m->n_vocab;
    o->n_ctx_train = m->n_ctx_train;
    o->n_embd = m->n_embd;
    o->n_layer = m->n_layer;
    o->n_head = m->n_head;
    o->n_head_kv = m->n_head_kv;
    o->n_ff = m->n_ff;
    o->n_rot = m->n_rot;
    o->rope_freq_base = m->rope_base;
    o->rope_freq_scale = m->rope_scale;
    o->rms_eps = m->rms_eps;
    o->rope_neox = m->rope == ENG_ROPE_NEOX;
    o->tied_output = m->tied;
    o->n_params = m->n_params;
    o->n_bytes = m->n_bytes;
    o->head_dim = m->head_dim;
    o->n_swa = m->n_swa;
    o->n_swa_layers = m->n_swa_layers;
    o->rope_freq_base_swa = m->rope_base_swa;
    o->logit_softcap = m->logit_softcap;
    o->traits = m->traits;
}

const eng_vocab *eng_model_vocab(const eng_model *m) { return m->vocab; }

void eng__mat_row(const eng__mat *m, int64_t row, float *out)
{
    ENG_ASSERT(row >= m->n_packed); /* the embedding is never repacked (repack above) */
    eng__type(m->type)->to_float(m->data + (size_t)row * m->row_bytes, out, m->n_in);
}
