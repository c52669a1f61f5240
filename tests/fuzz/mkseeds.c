/*
 * mkseeds - write small synthetic GGUF files as fuzzing seeds, with the
 * project's GGUF writer (tools/gguf/gguf_write.c):
 *
 *   OUT/model/  tiny models that load and run: llama and qwen2, every weight
 *               type the engine supports (F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1
 *               Q8_0 Q4_K Q5_K Q6_K), tied output, GQA, rope_freqs, a
 *               non-default alignment; vocabularies: a tiny SentencePiece
 *               or byte-level BPE one built here, or stories260K's
 *   OUT/gguf/   one file with a value of every metadata type, arrays of every
 *               element type (empty ones too) and tensors of unsupported
 *               types and 3-4 dimensions
 *
 * usage: mkseeds OUTDIR TESTDATA
 * Deterministic (fixed PRNG seed); every file is well under 128 KiB.
 */
#include "gguf_write.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static uint64_t rng = 0x9E3779B97F4A7C15ull;

static uint64_t next_u64(void)
{
    uint64_t z = (rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static float gauss(void)
{
    double u1 = ((double)(next_u64() >> 11) + 0.5) / 9007199254740992.0;
    double u2 = (double)(next_u64() >> 11) / 9007199254740992.0;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

/* Buffers handed to the writer live until the file is written. */
static void *bufs[256];
static int n_bufs;

static void *keep(void *p)
{
    if (!p || n_bufs == (int)(sizeof bufs / sizeof bufs[0])) {
        fprintf(stderr, "mkseeds: out of memory\n");
        exit(1);
    }
    bufs[n_bufs++] = p;
    return p;
}

static void release(void)
{
    while (n_bufs) free(bufs[--n_bufs]);
}

static void ok(eng_status st, eng__gguf_writer *w, const char *what)
{
    if (st != ENG_OK) {
        fprintf(stderr, "mkseeds: %s: %s (%s)\n", what, eng_strerror(st),
                w ? eng__gguf_writer_error(w) : "");
        exit(1);
    }
}

enum { K_MAT, K_NORM, K_BIAS };

/* A tensor of n_in x n_out (n_out 0: a vector) of `type`: values from the
 * test-data recipe converted where the engine can convert them, random
 * block bytes with small finite fp16 scales otherwise (a seed needs to load
 * and run, not to mean anything). */
static void tensor(eng__gguf_writer *w, const char *name, uint32_t type, int64_t n_in,
                   int64_t n_out, int kind)
{
    int64_t ne[2] = {n_in, n_out ? n_out : 1};
    uint32_t nd = n_out ? 2 : 1;
    uint64_t nbytes = eng__gguf_tensor_nbytes(type, nd, ne);
    int64_t nel = ne[0] * ne[1];
    uint8_t *dst = keep(malloc(nbytes));
    const eng__type_info *ti = eng__type((int)type);
    if (ti && ti->from_float) {
        float *f = malloc((size_t)nel * sizeof *f);
        if (!f) exit(1);
        for (int64_t i = 0; i < nel; i++) {
            float g = gauss();
            f[i] = kind == K_MAT ? 0.02f * g : kind == K_NORM ? 1.0f + 0.1f * g : 0.1f * g;
        }
        ti->from_float(f, dst, nel);
        free(f);
    } else {
        for (uint64_t i = 0; i < nbytes; i++) dst[i] = (uint8_t)next_u64();
        /* Make the fp16 scales small and finite: K-quant super-blocks keep
         * them at the block start (Q4_K/Q5_K: d, dmin) or end (Q6_K: d),
         * the 32-element formats at the start (Q4_1/Q5_1: d, m). */
        uint32_t blck = 0, bsz = 0;
        uint16_t h = eng__fp32_to_fp16(0.001f);
        if (eng__gguf_type_geom(type, &blck, &bsz) && (blck == 256 || (blck == 32 && bsz >= 18))) {
            for (uint64_t b = 0; b + bsz <= nbytes; b += bsz) {
                if (type == ENG_TYPE_Q6_K) {
                    memcpy(dst + b + bsz - 2, &h, 2);
                } else {
                    memcpy(dst + b, &h, 2);
                    if (blck == 256 || type == ENG_TYPE_Q4_1 || type == ENG_TYPE_Q5_1)
                        memcpy(dst + b + 2, &h, 2);
                }
            }
        }
    }
    ok(eng__gguf_add_tensor(w, name, type, nd, ne, dst, nbytes), w, name);
}

/* ---- vocabularies ---- */

static void vocab_spm(eng__gguf_writer *w, const eng__gguf *src)
{
    for (uint64_t i = 0; i < src->n_kv; i++) {
        const eng__str k = src->kv[i].key;
        if (k.len < 10 || memcmp(k.ptr, "tokenizer.", 10) != 0) continue;
        char key[256];
        snprintf(key, sizeof key, "%.*s", (int)k.len, k.ptr);
        if (!strcmp(key, "tokenizer.chat_template")) continue;
        ok(eng__gguf_copy_kv(w, src, key), w, key);
    }
}

/* A tiny SentencePiece vocabulary: <unk> <s> </s>, the 256 byte tokens and a
 * few pieces with scores. Returns the token count. */
static int vocab_spm_tiny(eng__gguf_writer *w)
{
    static char store[256][8];
    const char *toks[300];
    float scores[300];
    int32_t types[300];
    int n = 0;
    const char *head[] = {"<unk>", "<s>", "</s>"};
    const int32_t htype[] = {2, 3, 3};
    for (int i = 0; i < 3; i++) {
        toks[n] = head[i];
        scores[n] = 0;
        types[n++] = htype[i];
    }
    for (int b = 0; b < 256; b++) {
        snprintf(store[b], sizeof store[b], "<0x%02X>", b);
        toks[n] = store[b];
        scores[n] = 0;
        types[n++] = 6;
    }
    const char *pieces[] = {"\xE2\x96\x81", "e", "t", "h", "a", "he", "\xE2\x96\x81t",
                            "\xE2\x96\x81the", "\xE2\x96\x81\x61", "<unused0>"};
    for (int i = 0; i < 10; i++) {
        toks[n] = pieces[i];
        scores[n] = -(float)i;
        types[n++] = i == 9 ? 5 : 1;
    }
    ok(eng__gguf_set_str(w, "tokenizer.ggml.model", "llama"), w, "model");
    ok(eng__gguf_set_arr_str(w, "tokenizer.ggml.tokens", toks, (uint64_t)n), w, "tokens");
    ok(eng__gguf_set_arr(w, "tokenizer.ggml.scores", GGUF_VT_FLOAT32, scores, (uint64_t)n), w, "scores");
    ok(eng__gguf_set_arr(w, "tokenizer.ggml.token_type", GGUF_VT_INT32, types, (uint64_t)n), w, "types");
    ok(eng__gguf_set_u32(w, "tokenizer.ggml.bos_token_id", 1), w, "bos");
    ok(eng__gguf_set_u32(w, "tokenizer.ggml.eos_token_id", 2), w, "eos");
    ok(eng__gguf_set_u32(w, "tokenizer.ggml.unknown_token_id", 0), w, "unk");
    return n;
}

/* A byte-level BPE vocabulary: the 256 GPT-2 byte characters, three merges
 * ("Ġ t", "h e", "Ġt he") and three control tokens. Returns the token count. */
static int vocab_bpe(eng__gguf_writer *w, bool chatml)
{
    static char store[300][16];
    const char *toks[300];
    int32_t types[300];
    int n = 0, extra = 256;
    for (int b = 0; b < 256; b++) {
        uint32_t cp;
        if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255))
            cp = (uint32_t)b;
        else
            cp = (uint32_t)extra++;
        char *s = store[n];
        if (cp < 0x80) {
            s[0] = (char)cp;
            s[1] = 0;
        } else {
            s[0] = (char)(0xC0 | (cp >> 6));
            s[1] = (char)(0x80 | (cp & 0x3F));
            s[2] = 0;
        }
        toks[n] = s;
        types[n++] = 1;
    }
    const char *more[] = {"\xC4\xA0t", "he", "\xC4\xA0the"};
    for (int i = 0; i < 3; i++) {
        toks[n] = more[i];
        types[n++] = 1;
    }
    const char *ctl[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
    for (int i = 0; i < 3; i++) {
        toks[n] = ctl[i];
        types[n++] = 3;
    }
    const char *merges[] = {"\xC4\xA0 t", "h e", "\xC4\xA0t he"};
    ok(eng__gguf_set_str(w, "tokenizer.ggml.model", "gpt2"), w, "model");
    ok(eng__gguf_set_str(w, "tokenizer.ggml.pre", "qwen2"), w, "pre");
    ok(eng__gguf_set_arr_str(w, "tokenizer.ggml.tokens", toks, (uint64_t)n), w, "tokens");
    ok(eng__gguf_set_arr(w, "tokenizer.ggml.token_type", GGUF_VT_INT32, types, (uint64_t)n), w, "types");
    ok(eng__gguf_set_arr_str(w, "tokenizer.ggml.merges", merges, 3), w, "merges");
    ok(eng__gguf_set_u32(w, "tokenizer.ggml.eos_token_id", 259), w, "eos");
    ok(eng__gguf_set_u32(w, "tokenizer.ggml.bos_token_id", 259), w, "bos");
    ok(eng__gguf_set_bool(w, "tokenizer.ggml.add_bos_token", false), w, "add_bos");
    if (chatml)
        ok(eng__gguf_set_str(w, "tokenizer.chat_template",
                             "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"),
           w, "template");
    return n;
}

/* ---- models ---- */

typedef struct {
    const char *file, *arch;
    int E, L, H, HKV, F;
    uint32_t type, out_type; /* out_type: output.weight (and token_embd) type */
    bool tied, bpe, rope_freqs;
    uint32_t align;
    bool real_vocab; /* SPM: stories260K's 512 tokens instead of the tiny one */
} cfg;

static void model(const char *dir, const cfg *c, const eng__gguf *spm)
{
    eng__gguf_writer *w;
    ok(eng__gguf_writer_new(&w), NULL, "writer");
    char key[128];
    const char *a = c->arch;
    ok(eng__gguf_set_str(w, "general.architecture", a), w, "arch");
    ok(eng__gguf_set_str(w, "general.name", c->file), w, "name");
    if (c->align != 32) ok(eng__gguf_set_u32(w, "general.alignment", c->align), w, "align");
#define SETU(suf, v)                                                    \
    snprintf(key, sizeof key, "%s." suf, a);                            \
    ok(eng__gguf_set_u32(w, key, (uint32_t)(v)), w, key)
    SETU("context_length", 64);
    SETU("embedding_length", c->E);
    SETU("block_count", c->L);
    SETU("feed_forward_length", c->F);
    SETU("attention.head_count", c->H);
    SETU("attention.head_count_kv", c->HKV);
    SETU("rope.dimension_count", c->E / c->H);
#undef SETU
    snprintf(key, sizeof key, "%s.rope.freq_base", a);
    ok(eng__gguf_set_f32(w, key, c->bpe ? 1000000.0f : 10000.0f), w, key);
    snprintf(key, sizeof key, "%s.attention.layer_norm_rms_epsilon", a);
    ok(eng__gguf_set_f32(w, key, 1e-5f), w, key);
    int V;
    if (c->bpe) {
        V = vocab_bpe(w, true);
    } else if (c->real_vocab) {
        vocab_spm(w, spm);
        V = (int)eng__gguf_find(spm, "tokenizer.ggml.tokens")->n;
    } else {
        V = vocab_spm_tiny(w);
    }
    int hd = c->E / c->H, Q = c->H * hd, KV = c->HKV * hd;
    tensor(w, "token_embd.weight", c->out_type, c->E, V, K_MAT);
    tensor(w, "output_norm.weight", ENG_TYPE_F32, c->E, 0, K_NORM);
    if (!c->tied) tensor(w, "output.weight", c->out_type, c->E, V, K_MAT);
    if (c->rope_freqs) tensor(w, "rope_freqs.weight", ENG_TYPE_F32, hd / 2, 0, K_NORM);
    for (int l = 0; l < c->L; l++) {
        char n[64];
#define T(suf, ty, ni, no, k)                       \
    snprintf(n, sizeof n, "blk.%d." suf, l);        \
    tensor(w, n, ty, ni, no, k)
        T("attn_norm.weight", ENG_TYPE_F32, c->E, 0, K_NORM);
        T("attn_q.weight", c->type, c->E, Q, K_MAT);
        T("attn_k.weight", c->type, c->E, KV, K_MAT);
        T("attn_v.weight", c->type, c->E, KV, K_MAT);
        if (!strcmp(a, "qwen2")) {
            T("attn_q.bias", ENG_TYPE_F32, Q, 0, K_BIAS);
            T("attn_k.bias", ENG_TYPE_F32, KV, 0, K_BIAS);
            T("attn_v.bias", ENG_TYPE_F32, KV, 0, K_BIAS);
        }
        T("attn_output.weight", c->type, Q, c->E, K_MAT);
        T("ffn_norm.weight", ENG_TYPE_F32, c->E, 0, K_NORM);
        T("ffn_gate.weight", c->type, c->E, c->F, K_MAT);
        T("ffn_up.weight", c->type, c->E, c->F, K_MAT);
        T("ffn_down.weight", c->type, c->F, c->E, K_MAT);
#undef T
    }
    char path[4096];
    if (snprintf(path, sizeof path, "%s/%s.gguf", dir, c->file) >= (int)sizeof path) exit(1);
    ok(eng__gguf_writer_write_file(w, path), w, path);
    eng__gguf_writer_free(w);
    release();
}

/* ---- every metadata kind ---- */

static void allkinds(const char *dir)
{
    eng__gguf_writer *w;
    ok(eng__gguf_writer_new(&w), NULL, "writer");
    ok(eng__gguf_set_u32(w, "general.alignment", 64), w, "align");
    ok(eng__gguf_set_u8(w, "k.u8", 200), w, "u8");
    ok(eng__gguf_set_i8(w, "k.i8", -100), w, "i8");
    ok(eng__gguf_set_u16(w, "k.u16", 60000), w, "u16");
    ok(eng__gguf_set_i16(w, "k.i16", -30000), w, "i16");
    ok(eng__gguf_set_u32(w, "k.u32", 4000000000u), w, "u32");
    ok(eng__gguf_set_i32(w, "k.i32", -2000000000), w, "i32");
    ok(eng__gguf_set_u64(w, "k.u64", UINT64_MAX), w, "u64");
    ok(eng__gguf_set_i64(w, "k.i64", INT64_MIN), w, "i64");
    ok(eng__gguf_set_f32(w, "k.f32", 1e30f), w, "f32");
    ok(eng__gguf_set_f64(w, "k.f64", -1e300), w, "f64");
    ok(eng__gguf_set_bool(w, "k.bool", true), w, "bool");
    ok(eng__gguf_set_str(w, "k.str", "hello"), w, "str");
    ok(eng__gguf_set_strn(w, "k.str0", "", 0), w, "str0");
    ok(eng__gguf_set_strn(w, "k.strnul", "a\0b", 3), w, "strnul");
    static const uint8_t raw[64] = {1, 2, 3, 0x80, 0xFF, 0x7F, 0, 0x3F, 0xC0, 0x7F, 0x80, 0xFF, 0xFF,
                                    0xFF, 0x7F, 0x7F, 0x00, 0x00, 0xC0, 0x7F};
    static const char *const vt[] = {"u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool",
                                     "", "", "u64", "i64", "f64"};
    for (uint32_t t = 0; t < GGUF_VT_COUNT; t++) {
        if (t == GGUF_VT_STRING || t == GGUF_VT_ARRAY) continue;
        char key[64];
        snprintf(key, sizeof key, "arr.%s", vt[t]);
        ok(eng__gguf_set_arr(w, key, t, raw, 4), w, key);
        snprintf(key, sizeof key, "arr.%s.empty", vt[t]);
        ok(eng__gguf_set_arr(w, key, t, raw, 0), w, key);
    }
    const char *strs[] = {"", "x", "tokenizer", "\xE2\x96\x81"};
    ok(eng__gguf_set_arr_str(w, "arr.str", strs, 4), w, "arr.str");
    ok(eng__gguf_set_arr_str(w, "arr.str.empty", strs, 0), w, "arr.str.empty");
    static const struct { const char *name; uint32_t type; uint32_t nd; int64_t ne[4]; } ts[] = {
        {"t.f32.4d", 0, 4, {2, 3, 2, 2}}, {"t.f16.3d", 1, 3, {4, 2, 2, 1}},
        {"t.q8_0", 8, 2, {32, 2, 1, 1}},  {"t.iq2_xxs", 16, 1, {256, 1, 1, 1}},
        {"t.i32", 26, 1, {3, 1, 1, 1}},   {"t.f64", 28, 2, {1, 1, 1, 1}},
        {"t.q6_k", 14, 1, {256, 1, 1, 1}}, {"t.mxfp4", 39, 1, {32, 1, 1, 1}},
    };
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++)
        ok(eng__gguf_add_tensor(w, ts[i].name, ts[i].type, ts[i].nd, ts[i].ne, NULL,
                                eng__gguf_tensor_nbytes(ts[i].type, ts[i].nd, ts[i].ne)),
           w, ts[i].name);
    char path[4096];
    if (snprintf(path, sizeof path, "%s/allkinds.gguf", dir) >= (int)sizeof path) exit(1);
    ok(eng__gguf_writer_write_file(w, path), w, path);
    eng__gguf_writer_free(w);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: mkseeds OUTDIR TESTDATA\n");
        return 2;
    }
    char d_model[4096], d_gguf[4096], src[4096], err[256];
    snprintf(d_model, sizeof d_model, "%s/model", argv[1]);
    snprintf(d_gguf, sizeof d_gguf, "%s/gguf", argv[1]);
    mkdir(argv[1], 0777);
    mkdir(d_model, 0777);
    mkdir(d_gguf, 0777);
    snprintf(src, sizeof src, "%s/models/stories260K.gguf", argv[2]);
    eng__gguf *spm = NULL;
    if (eng__gguf_open(src, &spm, err, sizeof err) != ENG_OK) {
        fprintf(stderr, "mkseeds: %s\n", err);
        return 1;
    }
    const cfg cfgs[] = {
        {"llama-F32", "llama", 32, 1, 4, 2, 64, ENG_TYPE_F32, ENG_TYPE_F32, false, false, false, 32, false},
        {"llama-F16-tied", "llama", 32, 2, 4, 4, 64, ENG_TYPE_F16, ENG_TYPE_F16, true, false, false, 32, true},
        {"llama-BF16", "llama", 32, 1, 2, 1, 64, ENG_TYPE_BF16, ENG_TYPE_BF16, false, false, false, 32, false},
        {"llama-Q8_0", "llama", 32, 1, 4, 2, 64, ENG_TYPE_Q8_0, ENG_TYPE_Q8_0, false, false, false, 32, true},
        {"llama-Q4_0", "llama", 32, 1, 4, 2, 64, ENG_TYPE_Q4_0, ENG_TYPE_Q8_0, false, false, false, 32, false},
        {"llama-Q4_1", "llama", 32, 1, 4, 2, 64, ENG_TYPE_Q4_1, ENG_TYPE_F16, false, false, false, 32, false},
        {"llama-Q5_0", "llama", 32, 1, 4, 2, 64, ENG_TYPE_Q5_0, ENG_TYPE_Q5_0, true, false, false, 32, false},
        {"llama-Q5_1", "llama", 32, 1, 4, 2, 64, ENG_TYPE_Q5_1, ENG_TYPE_Q5_1, true, false, false, 32, false},
        {"llama-Q4_K", "llama", 256, 1, 4, 1, 256, ENG_TYPE_Q4_K, ENG_TYPE_Q6_K, false, false, false, 32, false},
        {"llama-Q5_K", "llama", 256, 1, 4, 1, 256, ENG_TYPE_Q5_K, ENG_TYPE_Q5_K, true, false, false, 32, false},
        {"llama-Q6_K", "llama", 256, 1, 4, 1, 256, ENG_TYPE_Q6_K, ENG_TYPE_Q6_K, true, false, false, 32, false},
        {"llama-F32-ropefreqs-align8", "llama", 32, 1, 4, 2, 64, ENG_TYPE_F32, ENG_TYPE_F32, false, false, true, 8, false},
        {"llama-Q8_0-align1", "llama", 32, 1, 4, 2, 64, ENG_TYPE_Q8_0, ENG_TYPE_Q8_0, false, false, false, 1, false},
        {"llama-F32-align1", "llama", 8, 1, 2, 1, 16, ENG_TYPE_F32, ENG_TYPE_F32, true, false, false, 1, false},
        {"llama-F16-align2x", "llama", 32, 1, 4, 2, 64, ENG_TYPE_F16, ENG_TYPE_F16, true, false, false, 2, false},
        {"qwen2-F32-bpe", "qwen2", 32, 1, 4, 2, 64, ENG_TYPE_F32, ENG_TYPE_F32, false, true, false, 32, false},
        {"qwen2-Q8_0-bpe-tied", "qwen2", 32, 2, 4, 1, 64, ENG_TYPE_Q8_0, ENG_TYPE_Q8_0, true, true, false, 32, false},
    };
    for (size_t i = 0; i < sizeof cfgs / sizeof cfgs[0]; i++) model(d_model, &cfgs[i], spm);
    eng__gguf_close(spm);
    allkinds(d_gguf);
    return 0;
}
