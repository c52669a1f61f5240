/*
 * model.c - load a GGUF model: hyper-parameters from metadata, tensor binding
 * with shape and type checks, and the tokenizer. Supported architectures are
 * "llama" (Llama 2/3.x, TinyLlama, Mistral, SmolLM: rope NORM) and "qwen2"
 * (rope NEOX, q/k/v biases); anything else is refused with a message that
 * lists them.
 */
#include "model.h"
#include "tokenizer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SUPPORTED_ARCHS "llama, qwen2"
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

static eng_status load_hparams(eng_model *m, char *err, size_t errlen)
{
    const eng__gguf *g = m->gguf;
    eng__str arch;
    if (!eng__gguf_get_str(g, "general.architecture", &arch)) {
        eng__errf(err, errlen, "missing metadata key 'general.architecture'");
        return ENG_EFORMAT;
    }
    if (arch.len >= sizeof m->arch || !((arch.len == 5 && memcmp(arch.ptr, "llama", 5) == 0) ||
                                        (arch.len == 5 && memcmp(arch.ptr, "qwen2", 5) == 0))) {
        eng__errf(err, errlen, "architecture '%.*s' is not supported (supported: %s)",
                  (int)(arch.len > 64 ? 64 : arch.len), arch.ptr, SUPPORTED_ARCHS);
        return ENG_EUNSUPPORTED;
    }
    memcpy(m->arch, arch.ptr, arch.len);
    m->arch[arch.len] = 0;
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
    float factor = 1.0f;
    if (!get_f(g, a, "rope.scaling.factor", &factor, err, errlen)) return ENG_EFORMAT;
    char key[128];
    snprintf(key, sizeof key, "%s.rope.scaling.type", a);
    eng__str stype;
    if (eng__gguf_get_str(g, key, &stype) && !(stype.len == 4 && !memcmp(stype.ptr, "none", 4))) {
        if (stype.len == 6 && !memcmp(stype.ptr, "linear", 6)) {
            if (factor > 0) m->rope_scale = 1.0f / factor;
        } else {
            eng__errf(err, errlen, "rope scaling type '%.*s' is not supported (supported: none, linear)",
                      (int)(stype.len > 32 ? 32 : stype.len), stype.ptr);
            return ENG_EUNSUPPORTED;
        }
    }
    if (m->n_head_kv < 0) m->n_head_kv = m->n_head;
    if (m->n_embd <= 0 || m->n_layer <= 0 || m->n_layer > ENG_MAX_LAYERS || m->n_ff <= 0 ||
        m->n_head <= 0 || m->n_head_kv <= 0 || m->n_embd % m->n_head != 0 ||
        m->n_head % m->n_head_kv != 0) {
        eng__errf(err, errlen,
                  "inconsistent hyper-parameters: n_embd %d, n_layer %d, n_ff %d, n_head %d, n_head_kv %d",
                  m->n_embd, m->n_layer, m->n_ff, m->n_head, m->n_head_kv);
        return ENG_EFORMAT;
    }
    m->head_dim = m->n_embd / m->n_head;
    if ((key_len >= 0 && key_len != m->head_dim) || (val_len >= 0 && val_len != m->head_dim)) {
        eng__errf(err, errlen, "attention key/value length different from n_embd/n_head is not supported");
        return ENG_EUNSUPPORTED;
    }
    if (m->n_rot < 0) m->n_rot = m->head_dim;
    if (m->n_rot > m->head_dim || m->n_rot % 2 != 0) {
        eng__errf(err, errlen, "rope dimension count %d is invalid for head size %d", m->n_rot, m->head_dim);
        return ENG_EFORMAT;
    }
    if (!(m->rms_eps > 0 && m->rms_eps < 1) || !(m->rope_base > 0)) {
        eng__errf(err, errlen, "rms epsilon %g or rope base %g out of range", m->rms_eps, m->rope_base);
        return ENG_EFORMAT;
    }
    if (m->n_ctx_train <= 0) m->n_ctx_train = 2048;
    m->rope = strcmp(a, "qwen2") == 0 ? ENG_ROPE_NEOX : ENG_ROPE_NORM;
    return ENG_OK;
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
    int64_t E = m->n_embd, F = m->n_ff, Q = (int64_t)m->n_head * m->head_dim,
            KV = (int64_t)m->n_head_kv * m->head_dim, V = m->n_vocab;
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
    m->layers = eng__calloc((size_t)m->n_layer, sizeof *m->layers);
    if (!m->layers) return ENG_ENOMEM;
    bool bias = strcmp(m->arch, "qwen2") == 0;
    for (int il = 0; il < m->n_layer; il++) {
        eng__layer *L = &m->layers[il];
        char n[13][64];
        const char *suf[] = {"attn_norm.weight", "ffn_norm.weight", "attn_q.weight",
                             "attn_k.weight", "attn_v.weight", "attn_output.weight",
                             "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight",
                             "attn_q.bias", "attn_k.bias", "attn_v.bias", ""};
        for (int i = 0; i < 12; i++) snprintf(n[i], sizeof n[i], "blk.%d.%s", il, suf[i]);
        if (!bind_vec(m, n[0], E, &L->attn_norm, true, err, errlen) ||
            !bind_vec(m, n[1], E, &L->ffn_norm, true, err, errlen) ||
            !bind_mat(m, n[2], E, Q, &L->wq, true, err, errlen) ||
            !bind_mat(m, n[3], E, KV, &L->wk, true, err, errlen) ||
            !bind_mat(m, n[4], E, KV, &L->wv, true, err, errlen) ||
            !bind_mat(m, n[5], Q, E, &L->wo, true, err, errlen) ||
            !bind_mat(m, n[6], E, F, &L->w_gate, true, err, errlen) ||
            !bind_mat(m, n[7], E, F, &L->w_up, true, err, errlen) ||
            !bind_mat(m, n[8], F, E, &L->w_down, true, err, errlen) ||
            !bind_vec(m, n[9], Q, &L->bq, bias, err, errlen) ||
            !bind_vec(m, n[10], KV, &L->bk, bias, err, errlen) ||
            !bind_vec(m, n[11], KV, &L->bv, bias, err, errlen))
            return m->unsupported ? ENG_EUNSUPPORTED : ENG_EFORMAT;
    }
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
}

const eng_vocab *eng_model_vocab(const eng_model *m) { return m->vocab; }

void eng__mat_row(const eng__mat *m, int64_t row, float *out)
{
    ENG_ASSERT(row >= m->n_packed); /* the embedding is never repacked (repack above) */
    eng__type(m->type)->to_float(m->data + (size_t)row * m->row_bytes, out, m->n_in);
}
