/*
 * test_arch.c - what the loader makes of the qwen3, gemma3 and phi3 files
 * (their numbers are checked against the goldens in test_forward.c): the
 * family specifics it reports (head size, sliding-window layers, soft-cap,
 * traits), and the errors it gives for broken variants of the test files,
 * rewritten here with one tensor missing or misshapen or one key gone.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gguf_write.h"
#include "model.h"
#include "orthoserve/engine.h"
#include "testutil.h"

typedef struct {
    const char *drop_tensor;   /* left out */
    const char *reshape;       /* written as [n0, n1] (zeros) */
    int64_t n0, n1;
    const char *drop_key;      /* left out */
    const char *arch;          /* general.architecture replaced */
    struct { const char *name; float value; } add[2];          /* F32 vectors of n_rot/2 = 16 values added */
    struct { const char *key, *s; uint32_t u; float f; } set[4]; /* keys set (string s, else u, else f) */
} edit;

static bool is_set(const edit *e, const char *key)
{
    for (int i = 0; i < 4; i++)
        if (e->set[i].key && !strcmp(e->set[i].key, key)) return true;
    return false;
}

/* models/NAME.gguf with the edit applied, written to a temporary file. */
static void rewrite(const char *name, const edit *e, char *path, size_t cap)
{
    char rel[128], err[256] = "";
    snprintf(rel, sizeof rel, "models/%s.gguf", name);
    eng__gguf *g = NULL;
    cr_assert_eq(eng__gguf_open(td_path(rel), &g, err, sizeof err), ENG_OK, "%s", err);
    eng__gguf_writer *w = NULL;
    cr_assert_eq(eng__gguf_writer_new(&w), ENG_OK);
    for (uint64_t i = 0; i < g->n_kv; i++) {
        char key[256];
        snprintf(key, sizeof key, "%.*s", (int)g->kv[i].key.len, g->kv[i].key.ptr);
        if ((e->drop_key && !strcmp(key, e->drop_key)) || is_set(e, key)) continue;
        if (e->arch && !strcmp(key, "general.architecture")) cr_assert_eq(eng__gguf_set_str(w, key, e->arch), ENG_OK);
        else cr_assert_eq(eng__gguf_copy_kv(w, g, key), ENG_OK, "%s", eng__gguf_writer_error(w));
    }
    for (int i = 0; i < 4 && e->set[i].key; i++) {
        const char *k = e->set[i].key;
        eng_status st = e->set[i].s ? eng__gguf_set_str(w, k, e->set[i].s)
                        : e->set[i].u ? eng__gguf_set_u32(w, k, e->set[i].u) : eng__gguf_set_f32(w, k, e->set[i].f);
        cr_assert_eq(st, ENG_OK, "%s", eng__gguf_writer_error(w));
    }
    static float vals[2][16];
    for (int i = 0; i < 2 && e->add[i].name; i++) {
        for (int j = 0; j < 16; j++) vals[i][j] = e->add[i].value;
        int64_t ne[1] = {16};
        cr_assert_eq(eng__gguf_add_tensor(w, e->add[i].name, ENG_TYPE_F32, 1, ne, vals[i], sizeof vals[i]), ENG_OK);
    }
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const eng__gguf_tensor *t = &g->tensors[i];
        char tn[128];
        snprintf(tn, sizeof tn, "%.*s", (int)t->name.len, t->name.ptr);
        if (e->drop_tensor && !strcmp(tn, e->drop_tensor)) continue;
        if (e->reshape && !strcmp(tn, e->reshape)) {
            int64_t ne[2] = {e->n0, e->n1};
            uint32_t nd = e->n1 ? 2 : 1;
            cr_assert_eq(eng__gguf_add_tensor(w, tn, t->type, nd, ne, NULL, eng__gguf_tensor_nbytes(t->type, nd, ne)),
                         ENG_OK, "%s", eng__gguf_writer_error(w));
            continue;
        }
        cr_assert_eq(eng__gguf_add_tensor(w, tn, t->type, t->n_dims, t->ne, t->data, t->nbytes), ENG_OK, "%s",
                     eng__gguf_writer_error(w));
    }
    snprintf(path, cap, "/tmp/orthoserve-test-arch-%d-XXXXXX", (int)getpid());
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    close(fd);
    cr_assert_eq(eng__gguf_writer_write_file(w, path), ENG_OK, "%s", eng__gguf_writer_error(w));
    eng__gguf_writer_free(w);
    eng__gguf_close(g);
}

/* Loading the edited file fails with want and a message holding every word. */
static void expect_error(const char *name, edit e, eng_status want, const char *const *words)
{
    char path[128], err[512] = "";
    rewrite(name, &e, path, sizeof path);
    eng_model *m = NULL;
    eng_status st = eng_model_load(path, NULL, &m, err, sizeof err);
    unlink(path);
    cr_log_info("%s: %s: %s", name, eng_strerror(st), err);
    cr_assert_eq(st, want, "%s: status %s (%s)", name, eng_strerror(st), err);
    cr_assert_null(m);
    for (int i = 0; words[i]; i++) cr_assert(strstr(err, words[i]), "message '%s' does not mention '%s'", err, words[i]);
}

#define WORDS(...) ((const char *const[]){__VA_ARGS__, NULL})

Test(arch, unsupported_lists_supported, .timeout = 60)
{
    expect_error("gemma3tiny-Q8_0", (edit){.arch = "gemma2"}, ENG_EUNSUPPORTED,
                 WORDS("'gemma2'", "supported: llama, qwen2, qwen3, gemma3, phi3"));
}

Test(arch, qwen3_errors, .timeout = 60)
{
    expect_error("qwen3tiny-Q8_0", (edit){.drop_tensor = "blk.1.attn_k_norm.weight"}, ENG_EFORMAT,
                 WORDS("missing", "blk.1.attn_k_norm.weight"));
    expect_error("qwen3tiny-F32", (edit){.reshape = "blk.0.attn_q_norm.weight", .n0 = 32}, ENG_EFORMAT,
                 WORDS("blk.0.attn_q_norm.weight", "64"));
    /* Q as if head size were n_embd / n_head = 32 */
    expect_error("qwen3tiny-F32", (edit){.reshape = "blk.2.attn_q.weight", .n0 = 256, .n1 = 256}, ENG_EFORMAT,
                 WORDS("blk.2.attn_q.weight", "shape", "512"));
    /* without key_length the head size falls back to n_embd / n_head = 32 */
    expect_error("qwen3tiny-F32", (edit){.drop_key = "qwen3.attention.key_length"}, ENG_EUNSUPPORTED,
                 WORDS("value length 64", "key length 32"));
}

Test(arch, gemma3_errors, .timeout = 60)
{
    expect_error("gemma3tiny-Q8_0", (edit){.drop_tensor = "blk.2.post_ffw_norm.weight"}, ENG_EFORMAT,
                 WORDS("missing", "blk.2.post_ffw_norm.weight"));
    expect_error("gemma3tiny-Q8_0", (edit){.drop_tensor = "blk.5.post_attention_norm.weight"}, ENG_EFORMAT,
                 WORDS("missing", "blk.5.post_attention_norm.weight"));
    expect_error("gemma3tiny-Q8_0", (edit){.drop_key = "gemma3.attention.sliding_window"}, ENG_EFORMAT,
                 WORDS("gemma3.attention.sliding_window"));
}

Test(arch, phi3_errors, .timeout = 60)
{
    expect_error("phi3tiny-F32", (edit){.reshape = "blk.0.attn_qkv.weight", .n0 = 256, .n1 = 256}, ENG_EFORMAT,
                 WORDS("blk.0.attn_qkv.weight", "shape", "384"));
    /* an ffn_up holding only the up rows: phi3's holds gate and up */
    expect_error("phi3tiny-F32", (edit){.reshape = "blk.3.ffn_up.weight", .n0 = 256, .n1 = 512}, ENG_EFORMAT,
                 WORDS("blk.3.ffn_up.weight", "1024"));
    expect_error("phi3tiny-Q8_0", (edit){.drop_tensor = "blk.1.attn_qkv.weight"}, ENG_EFORMAT,
                 WORDS("missing", "blk.1.attn_q.weight"));
}

static eng_model *load(const char *name)
{
    char rel[128], err[512] = "";
    snprintf(rel, sizeof rel, "models/%s.gguf", name);
    eng_model *m = NULL;
    cr_assert_eq(eng_model_load(td_path(rel), NULL, &m, err, sizeof err), ENG_OK, "%s: %s", name, err);
    return m;
}

Test(arch, family_specifics, .timeout = 60)
{
    eng_model_info i;
    eng_model *m = load("qwen3tiny-Q8_0");
    eng_model_get_info(m, &i);
    cr_assert_str_eq(i.arch, "qwen3");
    cr_assert_eq(i.head_dim, 64, "head size from key_length, not n_embd / n_head");
    cr_assert(i.rope_neox && i.tied_output && i.n_swa == 0 && i.logit_softcap == 0);
    cr_assert(strstr(i.traits, "q/k RMSNorm") && !strstr(i.traits, "biases"), "%s", i.traits);
    eng_model_free(m);

    m = load("gemma3tiny-F32");
    eng_model_get_info(m, &i);
    cr_assert_str_eq(i.arch, "gemma3");
    cr_assert_eq(i.head_dim, 32);
    cr_assert_eq(i.n_swa, 32);
    cr_assert_eq(i.n_swa_layers, 5);
    cr_assert_float_eq(i.rope_freq_base_swa, 10000.0f, 1e-3);
    cr_assert_float_eq(i.rope_freq_base, 1e6f, 1.0);
    cr_assert_float_eq(i.logit_softcap, 5.0f, 1e-6);
    for (int il = 0; il < 6; il++) cr_assert_eq(m->layers[il].swa, il != 5, "layer %d", il); /* il % 6 < 5 */
    cr_assert_float_eq(m->embd_scale, 16.0f, 0);
    cr_assert(strstr(i.traits, "post-attention/FFN norms") && strstr(i.traits, "GELU-tanh"), "%s", i.traits);
    eng_model_free(m);

    m = load("phi3tiny-Q8_0");
    eng_model_get_info(m, &i);
    cr_assert_str_eq(i.arch, "phi3");
    cr_assert(i.head_dim == 32 && i.n_swa == 0 && !i.tied_output, "phi3 sliding_window 2047 is not used");
    cr_assert(strstr(i.traits, "fused attn_qkv") && strstr(i.traits, "fused ffn_up"), "%s", i.traits);
    /* the fused tensors' row ranges: Q 256, K 64, V 64; gate 512, up 512 */
    const eng__layer *L = &m->layers[0];
    cr_assert(L->wq.n_out == 256 && L->wk.n_out == 64 && L->wv.n_out == 64 && L->w_gate.n_out == 512 &&
              L->w_up.n_out == 512);
    eng_model_free(m);
}

/* The last logits of 40 tokens through the edited phi3tiny-F32 at context n_ctx. */
static void phi3_logits(edit e, int32_t n_ctx, float *out, char traits[160])
{
    char path[128], err[512] = "";
    rewrite("phi3tiny-F32", &e, path, sizeof path);
    eng_model *m = NULL;
    eng_status st = eng_model_load(path, NULL, &m, err, sizeof err);
    unlink(path);
    cr_assert_eq(st, ENG_OK, "%s", err);
    eng_context_params cp = eng_context_default_params();
    cp.n_ctx = n_ctx;
    cp.n_batch_max = 64;
    eng_context *c = NULL;
    cr_assert_eq(eng_context_new(m, &cp, &c), ENG_OK);
    int32_t tok[40], pos[40], seq[40] = {0};
    int8_t want[40] = {0};
    for (int i = 0; i < 40; i++) tok[i] = 1 + (i * 37) % 500, pos[i] = i;
    want[39] = 1;
    eng_batch b = {40, tok, pos, seq, want};
    cr_assert_eq(eng_decode(c, &b), ENG_OK);
    eng_model_info info;
    eng_model_get_info(m, &info);
    cr_assert_eq(info.n_vocab, 512);
    memcpy(out, eng_get_logits(c, 39), 512 * sizeof(float));
    snprintf(traits, 160, "%s", info.traits); /* the model's, freed below */
    eng_context_free(c);
    eng_model_free(m);
}

/* phi3's LongRoPE: the short factors while the context fits the original
 * one, the long ones past it, both dividing the rope frequencies (so factors
 * of f everywhere give linear scaling by 1/f, bit for bit), and cos/sin times
 * the attention factor: the file's, else sqrt(1 + ln(ctx/orig) / ln(orig)). */
Test(arch, phi3_longrope, .timeout = 60)
{
    float a[512], b[512];
    char ia[160], ib[160];
#define LONGROPE(orig, af) \
    .add = {{"rope_factors_short.weight", 2.0f}, {"rope_factors_long.weight", 4.0f}}, \
    .set = {{"phi3.rope.scaling.type", "longrope", 0, 0}, {"phi3.rope.scaling.original_context_length", NULL, orig, 0}, \
            {af ? "phi3.rope.scaling.attn_factor" : NULL, NULL, 0, 1.0f}}
#define LINEAR(factor) \
    .set = {{"phi3.rope.scaling.type", "linear", 0, 0}, {"phi3.rope.scaling.factor", NULL, 0, factor}}
    phi3_logits((edit){LONGROPE(512, 0)}, 256, a, ia); /* short factors */
    phi3_logits((edit){LINEAR(2.0f)}, 256, b, ib);
    cr_assert(memcmp(a, b, sizeof a) == 0, "short factors 2 = linear scaling 1/2");
    cr_assert(strstr(ia, "LongRoPE (orig ctx 512, attn factor 1)"), "%s", ia);
    phi3_logits((edit){LONGROPE(256, 1)}, 512, a, ia); /* long factors, attn factor given as 1 */
    phi3_logits((edit){LINEAR(4.0f)}, 512, b, ib);
    cr_assert(memcmp(a, b, sizeof a) == 0, "long factors 4 = linear scaling 1/4");
    phi3_logits((edit){LONGROPE(256, 0)}, 512, b, ib); /* attn factor sqrt(1 + ln 2 / ln 256) */
    cr_assert(strstr(ib, "attn factor 1.06066"), "%s", ib);
    double d = 0;
    for (int i = 0; i < 512; i++) d = fmax(d, fabs((double)a[i] - b[i]));
    cr_assert(d > 1e-3, "the attention factor changes the logits (max |d| %g)", d);
    expect_error("phi3tiny-F32", (edit){.add = {{"rope_factors_long.weight", 1.0f}}}, ENG_EFORMAT,
                 WORDS("rope_factors_short.weight"));
#undef LONGROPE
#undef LINEAR
}
