/*
 * mkmodel - write a random-weight Llama-family GGUF model (the project's
 * synthetic model writer): llama or qwen2 architecture, any shape, weights in
 * F32/F16/BF16/Q8_0/Q4_0, a vocabulary copied from another GGUF or a small
 * built-in SentencePiece-style one. Tensor names, order and metadata keys are
 * the ones llama.cpp's converters write, so llama.cpp loads the files too.
 *
 * Weights follow the test data recipe: matrices N(0, 0.02), norm weights
 * 1 + 0.1 N(0,1), biases 0.1 N(0,1), from splitmix64 + Box-Muller. Each row
 * has its own PRNG stream seeded from (seed, tensor, row), so the output is
 * the same for any number of threads. Tensors are generated and converted one
 * at a time straight into the writer's buffer, so a 1.1B-parameter model
 * needs about one tensor's worth of memory.
 */
#include "gguf_write.h"

#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* Options                                                                  */
/* ------------------------------------------------------------------------ */

typedef struct {
    const char *out, *arch, *vocab_from, *name;
    const char *chat_template; /* file whose text becomes tokenizer.chat_template */
    int64_t n_embd, n_layer, n_head, n_head_kv, n_ff, n_ctx, n_vocab;
    int type;
    uint64_t seed;
    bool tied, quiet;
    double rope_base, rms_eps;
    int threads;
} opts;

static void usage(FILE *f)
{
    fprintf(f,
        "usage: mkmodel -o OUT.gguf [options]\n"
        "\n"
        "Write a random-weight Llama-family GGUF model (for tests, demos and benchmarks).\n"
        "The weights are random, so the model's text is noise: it exercises every code\n"
        "path of an engine, nothing more.\n"
        "\n"
        "  -o, --output FILE      output path (written atomically: temp file + rename)\n"
        "      --arch A           llama (default) or qwen2 (q/k/v biases, NEOX rope)\n"
        "      --n-embd N         embedding size (default 256)\n"
        "      --n-layer N        layers (default 4)\n"
        "      --n-head N         attention heads (default 8)\n"
        "      --n-head-kv N      KV heads (default = n-head)\n"
        "      --n-ff N           FFN size (default 8/3 n-embd rounded up to 256)\n"
        "      --n-ctx N          context_length (default 512)\n"
        "      --vocab-from FILE  copy the tokenizer.* keys (vocabulary) from FILE.gguf\n"
        "      --chat-template F  store the Jinja file F as tokenizer.chat_template\n"
        "                         (replacing one --vocab-from copied)\n"
        "      --n-vocab N        embedding rows; without --vocab-from the built-in\n"
        "                         vocabulary is padded with <unusedN> tokens to N\n"
        "      --type T           matrix type: F32 (default), F16, BF16, Q8_0, Q4_0\n"
        "                         (1-D tensors always stay F32)\n"
        "      --seed S           PRNG seed (default 1)\n"
        "      --tied             no output.weight: the output uses token_embd.weight\n"
        "      --rope-base B      rope.freq_base (default 10000; qwen2: 1000000)\n"
        "      --rms-eps E        RMS norm epsilon (default 1e-5; qwen2: 1e-6)\n"
        "      --name NAME        general.name\n"
        "      --threads N        generator threads (default 2)\n"
        "  -q, --quiet            no progress on stderr\n"
        "  -h, --help             this text\n"
        "\n"
        "Without --vocab-from the model gets a self-contained SentencePiece-style\n"
        "vocabulary: <unk> <s> </s>, the 256 byte tokens <0x00>..<0xFF>, printable\n"
        "ASCII characters, and ~200 common English words with their prefixes.\n"
        "\n"
        "Example (TinyLlama-1.1B shape, 32000-token Llama vocabulary):\n"
        "  mkmodel -o tl.gguf --n-embd 2048 --n-layer 22 --n-head 32 --n-head-kv 4 \\\n"
        "          --n-ff 5632 --n-ctx 2048 --type Q8_0 --vocab-from small-Q4_K_M.gguf\n");
}

static bool parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *v, const char *what)
{
    char *end;
    long long x = strtoll(s, &end, 10);
    if (!*s || *end || x < lo || x > hi) {
        fprintf(stderr, "mkmodel: %s must be an integer in [%lld, %lld], got '%s'\n", what,
                (long long)lo, (long long)hi, s);
        return false;
    }
    *v = x;
    return true;
}

static bool parse_f64(const char *s, double *v, const char *what)
{
    char *end;
    double x = strtod(s, &end);
    if (!*s || *end || !isfinite(x) || x <= 0) {
        fprintf(stderr, "mkmodel: %s must be a positive number, got '%s'\n", what, s);
        return false;
    }
    *v = x;
    return true;
}

/* ------------------------------------------------------------------------ */
/* Random numbers                                                           */
/* ------------------------------------------------------------------------ */

static inline uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint64_t splitmix64(uint64_t *s) { return mix64(*s += 0x9e3779b97f4a7c15ull); }

/* n standard normals into out (Box-Muller, two per 64-bit draw). */
static void normals(uint64_t *state, float *out, int64_t n)
{
    const float two_pi = 6.28318530717958647692f;
    for (int64_t i = 0; i < n; i += 2) {
        uint64_t z = splitmix64(state);
        float u1 = (float)((z >> 40) + 1) * (1.0f / 16777216.0f); /* (0, 1] */
        float u2 = (float)((z >> 8) & 0xffffff) * (1.0f / 16777216.0f);
        float r = sqrtf(-2.0f * logf(u1));
        float a = two_pi * u2;
        out[i] = r * cosf(a);
        if (i + 1 < n) out[i + 1] = r * sinf(a);
    }
}

/* ------------------------------------------------------------------------ */
/* Tensor generation                                                        */
/* ------------------------------------------------------------------------ */

typedef enum { K_MATRIX, K_NORM, K_BIAS } tkind;

typedef struct gen gen;

typedef struct {
    char name[64];
    tkind kind;
    int type;
    int64_t n_in, n_rows;
    uint64_t index; /* position in the file: part of every row's seed */
    gen *g;
} tspec;

struct gen {
    uint64_t seed;
    eng__pool *pool;
    float **row;    /* one scratch row per thread */
    tspec *specs;
    int n_specs, done;
    uint64_t bytes_total, bytes_done;
    double t0;
    bool quiet, tty;
    int last_decile;
    /* current job */
    const tspec *cur;
    uint8_t *dst;
};

static void gen_rows(int ith, int nth, void *arg)
{
    gen *g = arg;
    const tspec *t = g->cur;
    const eng__type_info *ti = eng__type(t->type);
    size_t rb = eng__row_size(t->type, t->n_in);
    float *row = g->row[ith];
    int64_t r0, r1;
    eng__split(t->n_rows, ith, nth, 1, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        uint64_t st = mix64(g->seed ^ mix64((t->index << 32) + (uint64_t)r + 0x5eed));
        normals(&st, row, t->n_in);
        if (t->kind == K_MATRIX) {
            for (int64_t i = 0; i < t->n_in; i++) row[i] *= 0.02f;
        } else if (t->kind == K_NORM) {
            for (int64_t i = 0; i < t->n_in; i++) row[i] = 1.0f + 0.1f * row[i];
        } else {
            for (int64_t i = 0; i < t->n_in; i++) row[i] *= 0.1f;
        }
        ti->from_float(row, g->dst + (size_t)r * rb, t->n_in);
    }
}

static void progress(gen *g, const tspec *t, uint64_t nbytes)
{
    g->done++;
    g->bytes_done += nbytes;
    if (g->quiet) return;
    double pct = g->bytes_total ? 100.0 * (double)g->bytes_done / (double)g->bytes_total : 100.0;
    double el = eng__now() - g->t0;
    if (g->tty) {
        fprintf(stderr, "\r[%4d/%d] %5.1f%% %6.1fs  %-32s", g->done, g->n_specs, pct, el, t->name);
        if (g->done == g->n_specs) fputc('\n', stderr);
    } else {
        int dec = (int)(pct / 10.0);
        if (dec != g->last_decile || g->done == g->n_specs) {
            fprintf(stderr, "mkmodel: [%d/%d] %.0f%% %.1fs %s\n", g->done, g->n_specs, pct, el, t->name);
            g->last_decile = dec;
        }
    }
    fflush(stderr);
}

static eng_status fill(void *user, const char *name, void *dst, uint64_t nbytes)
{
    tspec *t = user;
    gen *g = t->g;
    (void)name;
    ENG_ASSERT(nbytes == (uint64_t)t->n_rows * eng__row_size(t->type, t->n_in));
    g->cur = t;
    g->dst = dst;
    eng__pool_run_n(g->pool, t->n_rows >= 4 ? 2 : 1, gen_rows, g);
    progress(g, t, nbytes);
    return ENG_OK;
}

/* ------------------------------------------------------------------------ */
/* Built-in vocabulary                                                      */
/* ------------------------------------------------------------------------ */

static const char *const words[] = {
    "the", "of", "and", "to", "a", "in", "is", "it", "you", "that", "he", "was", "for", "on",
    "are", "with", "as", "his", "they", "be", "at", "one", "have", "this", "from", "or", "had",
    "by", "not", "word", "but", "what", "some", "we", "can", "out", "other", "were", "all",
    "there", "when", "up", "use", "your", "how", "said", "an", "each", "she", "which", "do",
    "their", "time", "if", "will", "way", "about", "many", "then", "them", "write", "would",
    "like", "so", "these", "her", "long", "make", "thing", "see", "him", "two", "has", "look",
    "more", "day", "could", "go", "come", "did", "number", "sound", "no", "most", "people", "my",
    "over", "know", "water", "than", "call", "first", "who", "may", "down", "side", "been", "now",
    "find", "any", "new", "work", "part", "take", "get", "place", "made", "live", "where",
    "after", "back", "little", "only", "round", "man", "year", "came", "show", "every", "good",
    "me", "give", "our", "under", "name", "very", "through", "just", "form", "sentence", "great",
    "think", "say", "help", "low", "line", "differ", "turn", "cause", "much", "mean", "before",
    "move", "right", "boy", "old", "too", "same", "tell", "does", "set", "three", "want", "air",
    "well", "also", "play", "small", "end", "put", "home", "read", "hand", "port", "large",
    "spell", "add", "even", "land", "here", "must", "big", "high", "such", "follow", "act", "why",
    "ask", "men", "change", "went", "light", "kind", "off", "need", "house", "picture", "try",
    "us", "again", "animal", "point", "mother", "world", "near", "build", "self", "earth",
    "father", "once", "upon", "girl", "dog", "cat", "happy", "friend", "tree", "sun", "Once",
    "The", "One", "Lily", "Tim", "He", "She", "They", "It", "I",
};

typedef struct {
    char **s;
    float *score;
    int32_t *type;
    int n, cap;
} vocab;

static bool vocab_has(const vocab *v, const char *s)
{
    for (int i = 0; i < v->n; i++)
        if (strcmp(v->s[i], s) == 0) return true;
    return false;
}

static bool vocab_add(vocab *v, const char *s, float score, int32_t type)
{
    if (v->n == v->cap) {
        int cap = v->cap ? v->cap * 2 : 1024;
        char **ns = realloc(v->s, (size_t)cap * sizeof *ns);
        if (ns) v->s = ns;
        float *nsc = realloc(v->score, (size_t)cap * sizeof *nsc);
        if (nsc) v->score = nsc;
        int32_t *nt = realloc(v->type, (size_t)cap * sizeof *nt);
        if (nt) v->type = nt;
        if (!ns || !nsc || !nt) return false;
        v->cap = cap;
    }
    if (!(v->s[v->n] = strdup(s))) return false;
    v->score[v->n] = score;
    v->type[v->n] = type;
    v->n++;
    return true;
}

static void vocab_free(vocab *v)
{
    for (int i = 0; i < v->n; i++) free(v->s[i]);
    free(v->s);
    free(v->score);
    free(v->type);
}

/* Build the built-in vocabulary with exactly n_target tokens (0: its natural
 * size). Token types as llama.cpp: 1 normal, 2 unknown, 3 control, 5 unused,
 * 6 byte. A word's pieces are added with all their prefixes ("▁t", "▁th",
 * "▁the") because SentencePiece merges one adjacent pair at a time and only
 * into pieces that exist. */
static bool build_vocab(vocab *v, int64_t n_target)
{
    const int32_t NORMAL = 1, UNKNOWN = 2, CONTROL = 3, UNUSED = 5, BYTE = 6;
    bool ok = vocab_add(v, "<unk>", 0, UNKNOWN) && vocab_add(v, "<s>", 0, CONTROL) &&
              vocab_add(v, "</s>", 0, CONTROL);
    char buf[64];
    for (int b = 0; ok && b < 256; b++) {
        snprintf(buf, sizeof buf, "<0x%02X>", b);
        ok = vocab_add(v, buf, 0, BYTE);
    }
    if (n_target && n_target < v->n) {
        fprintf(stderr, "mkmodel: --n-vocab %lld is too small for the built-in vocabulary (at least %d)\n",
                (long long)n_target, v->n);
        return false;
    }
    int64_t limit = n_target ? n_target : INT32_MAX;
    float score = 0;
    if (ok && v->n < limit) ok = vocab_add(v, "\xe2\x96\x81", score--, NORMAL); /* ▁ */
    for (int c = 0x21; ok && c < 0x7f && v->n < limit; c++) {
        buf[0] = (char)c;
        buf[1] = 0;
        ok = vocab_add(v, buf, score--, NORMAL);
    }
    for (size_t w = 0; ok && w < sizeof words / sizeof words[0]; w++) {
        size_t wl = strlen(words[w]);
        /* pieces "▁" + the first k letters, k = 1..len; all or nothing */
        int missing = 0;
        for (size_t k = 1; k <= wl; k++) {
            snprintf(buf, sizeof buf, "\xe2\x96\x81%.*s", (int)k, words[w]);
            if (!vocab_has(v, buf)) missing++;
        }
        if (v->n + missing > limit) break;
        for (size_t k = 1; ok && k <= wl; k++) {
            snprintf(buf, sizeof buf, "\xe2\x96\x81%.*s", (int)k, words[w]);
            if (!vocab_has(v, buf)) ok = vocab_add(v, buf, score--, NORMAL);
        }
    }
    for (int i = 0; ok && v->n < limit && n_target; i++) {
        snprintf(buf, sizeof buf, "<unused%d>", i);
        ok = vocab_add(v, buf, 0, UNUSED);
    }
    if (!ok) fprintf(stderr, "mkmodel: out of memory building the vocabulary\n");
    return ok;
}

static bool set_builtin_vocab(eng__gguf_writer *w, int64_t n_target, int64_t *n_vocab)
{
    vocab v = {0};
    bool ok = build_vocab(&v, n_target);
    if (ok) {
        ok = eng__gguf_set_str(w, "tokenizer.ggml.model", "llama") == ENG_OK &&
             eng__gguf_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)v.s, (uint64_t)v.n) == ENG_OK &&
             eng__gguf_set_arr(w, "tokenizer.ggml.scores", GGUF_VT_FLOAT32, v.score, (uint64_t)v.n) == ENG_OK &&
             eng__gguf_set_arr(w, "tokenizer.ggml.token_type", GGUF_VT_INT32, v.type, (uint64_t)v.n) == ENG_OK &&
             eng__gguf_set_u32(w, "tokenizer.ggml.bos_token_id", 1) == ENG_OK &&
             eng__gguf_set_u32(w, "tokenizer.ggml.eos_token_id", 2) == ENG_OK &&
             eng__gguf_set_u32(w, "tokenizer.ggml.unknown_token_id", 0) == ENG_OK &&
             eng__gguf_set_bool(w, "tokenizer.ggml.add_bos_token", true) == ENG_OK &&
             eng__gguf_set_bool(w, "tokenizer.ggml.add_eos_token", false) == ENG_OK;
        if (!ok) fprintf(stderr, "mkmodel: %s\n", eng__gguf_writer_error(w));
        *n_vocab = v.n;
    }
    vocab_free(&v);
    return ok;
}

static bool copy_vocab(eng__gguf_writer *w, const char *path, int64_t *n_tokens, bool skip_template)
{
    eng__gguf *g;
    char err[512] = "";
    if (eng__gguf_open(path, &g, err, sizeof err) != ENG_OK) {
        fprintf(stderr, "mkmodel: --vocab-from %s: %s\n", path, err);
        return false;
    }
    const eng__gguf_kv *tok = eng__gguf_find(g, "tokenizer.ggml.tokens");
    if (!tok || tok->type != GGUF_VT_ARRAY || tok->arr_type != GGUF_VT_STRING || tok->n == 0 ||
        tok->n > (1u << 24)) {
        fprintf(stderr, "mkmodel: --vocab-from %s: no usable tokenizer.ggml.tokens array\n", path);
        eng__gguf_close(g);
        return false;
    }
    *n_tokens = (int64_t)tok->n;
    bool ok = true;
    for (uint64_t i = 0; ok && i < g->n_kv; i++) {
        const eng__str k = g->kv[i].key;
        if (k.len < 10 || memcmp(k.ptr, "tokenizer.", 10) != 0) continue;
        if (skip_template && k.len == 23 && memcmp(k.ptr, "tokenizer.chat_template", 23) == 0) continue;
        char key[256];
        if (k.len >= sizeof key || memchr(k.ptr, 0, k.len)) continue;
        memcpy(key, k.ptr, k.len);
        key[k.len] = 0;
        if (eng__gguf_copy_kv(w, g, key) != ENG_OK) {
            fprintf(stderr, "mkmodel: copying %s: %s\n", key, eng__gguf_writer_error(w));
            ok = false;
        }
    }
    eng__gguf_close(g);
    return ok;
}

/* The text of path as tokenizer.chat_template. */
static bool set_chat_template(eng__gguf_writer *w, const char *path)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t n = 0, cap = 0;
    bool ok = f != NULL;
    while (ok) {
        if (n + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 65536;
            char *nb = realloc(buf, cap);
            if (!nb) { ok = false; break; }
            buf = nb;
        }
        size_t k = fread(buf + n, 1, cap - n - 1, f);
        n += k;
        if (k == 0) { ok = !ferror(f); break; }
    }
    if (f) fclose(f);
    if (ok) {
        buf[n] = 0;
        ok = strlen(buf) == n && eng__gguf_set_str(w, "tokenizer.chat_template", buf) == ENG_OK;
    }
    if (!ok) fprintf(stderr, "mkmodel: --chat-template %s: cannot read it (or it holds a NUL byte)\n", path);
    free(buf);
    return ok;
}

/* ------------------------------------------------------------------------ */
/* Main                                                                     */
/* ------------------------------------------------------------------------ */

static int type_from_name(const char *s)
{
    static const struct { const char *n; int t; } tab[] = {
        {"F32", ENG_TYPE_F32}, {"F16", ENG_TYPE_F16}, {"BF16", ENG_TYPE_BF16},
        {"Q8_0", ENG_TYPE_Q8_0}, {"Q4_0", ENG_TYPE_Q4_0},
    };
    for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++)
        if (strcasecmp(s, tab[i].n) == 0) return tab[i].t;
    return -1;
}

/* llama.cpp's llama_ftype for a file whose matrices are all of type t. */
static uint32_t file_type_of(int t)
{
    switch (t) {
    case ENG_TYPE_F16: return 1;
    case ENG_TYPE_Q4_0: return 2;
    case ENG_TYPE_Q8_0: return 7;
    case ENG_TYPE_BF16: return 32;
    default: return 0;
    }
}

static bool parse_args(int argc, char **argv, opts *o)
{
    enum { O_ARCH = 256, O_EMBD, O_LAYER, O_HEAD, O_HEADKV, O_FF, O_CTX, O_VFROM, O_NVOCAB,
           O_TYPE, O_SEED, O_TIED, O_ROPE, O_EPS, O_NAME, O_THREADS, O_TMPL };
    static const struct option lo[] = {
        {"output", required_argument, 0, 'o'}, {"arch", required_argument, 0, O_ARCH},
        {"n-embd", required_argument, 0, O_EMBD}, {"n-layer", required_argument, 0, O_LAYER},
        {"n-head", required_argument, 0, O_HEAD}, {"n-head-kv", required_argument, 0, O_HEADKV},
        {"n-ff", required_argument, 0, O_FF}, {"n-ctx", required_argument, 0, O_CTX},
        {"vocab-from", required_argument, 0, O_VFROM}, {"n-vocab", required_argument, 0, O_NVOCAB},
        {"type", required_argument, 0, O_TYPE}, {"seed", required_argument, 0, O_SEED},
        {"tied", no_argument, 0, O_TIED}, {"rope-base", required_argument, 0, O_ROPE},
        {"rms-eps", required_argument, 0, O_EPS}, {"name", required_argument, 0, O_NAME},
        {"threads", required_argument, 0, O_THREADS}, {"quiet", no_argument, 0, 'q'},
        {"chat-template", required_argument, 0, O_TMPL},
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0},
    };
    *o = (opts){.arch = "llama", .n_embd = 256, .n_layer = 4, .n_head = 8, .n_head_kv = -1,
                .n_ff = -1, .n_ctx = 512, .type = ENG_TYPE_F32, .seed = 1, .rope_base = -1,
                .rms_eps = -1, .threads = 2};
    int c;
    int64_t v;
    const int64_t BIG = 1 << 20;
    while ((c = getopt_long(argc, argv, "o:qh", lo, NULL)) != -1) {
        switch (c) {
        case 'o': o->out = optarg; break;
        case 'q': o->quiet = true; break;
        case 'h': usage(stdout); exit(0);
        case O_ARCH:
            if (strcmp(optarg, "llama") && strcmp(optarg, "qwen2")) {
                fprintf(stderr, "mkmodel: --arch must be llama or qwen2, got '%s'\n", optarg);
                return false;
            }
            o->arch = optarg;
            break;
        case O_EMBD: if (!parse_i64(optarg, 1, BIG, &o->n_embd, "--n-embd")) return false; break;
        case O_LAYER: if (!parse_i64(optarg, 1, 1024, &o->n_layer, "--n-layer")) return false; break;
        case O_HEAD: if (!parse_i64(optarg, 1, 4096, &o->n_head, "--n-head")) return false; break;
        case O_HEADKV: if (!parse_i64(optarg, 1, 4096, &o->n_head_kv, "--n-head-kv")) return false; break;
        case O_FF: if (!parse_i64(optarg, 1, 4 * BIG, &o->n_ff, "--n-ff")) return false; break;
        case O_CTX: if (!parse_i64(optarg, 1, 1 << 30, &o->n_ctx, "--n-ctx")) return false; break;
        case O_VFROM: o->vocab_from = optarg; break;
        case O_TMPL: o->chat_template = optarg; break;
        case O_NVOCAB: if (!parse_i64(optarg, 1, 1 << 24, &o->n_vocab, "--n-vocab")) return false; break;
        case O_TYPE:
            if ((o->type = type_from_name(optarg)) < 0) {
                fprintf(stderr, "mkmodel: --type must be F32, F16, BF16, Q8_0 or Q4_0, got '%s'\n", optarg);
                return false;
            }
            break;
        case O_SEED:
            if (!parse_i64(optarg, 0, INT64_MAX, &v, "--seed")) return false;
            o->seed = (uint64_t)v;
            break;
        case O_TIED: o->tied = true; break;
        case O_ROPE: if (!parse_f64(optarg, &o->rope_base, "--rope-base")) return false; break;
        case O_EPS: if (!parse_f64(optarg, &o->rms_eps, "--rms-eps")) return false; break;
        case O_NAME: o->name = optarg; break;
        case O_THREADS:
            if (!parse_i64(optarg, 1, 64, &v, "--threads")) return false;
            o->threads = (int)v;
            break;
        default: usage(stderr); return false;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "mkmodel: unexpected argument '%s'\n", argv[optind]);
        return false;
    }
    if (!o->out) {
        fprintf(stderr, "mkmodel: -o OUT.gguf is required (see --help)\n");
        return false;
    }
    bool qwen = strcmp(o->arch, "qwen2") == 0;
    if (o->n_head_kv < 0) o->n_head_kv = o->n_head;
    if (o->n_ff < 0) o->n_ff = (8 * o->n_embd / 3 + 255) / 256 * 256;
    if (o->rope_base < 0) o->rope_base = qwen ? 1000000.0 : 10000.0;
    if (o->rms_eps < 0) o->rms_eps = qwen ? 1e-6 : 1e-5;
    if (o->n_embd % o->n_head || o->n_head % o->n_head_kv || (o->n_embd / o->n_head) % 2) {
        fprintf(stderr, "mkmodel: n-embd (%lld) must be a multiple of n-head (%lld), n-head of "
                        "n-head-kv (%lld), and the head size even\n",
                (long long)o->n_embd, (long long)o->n_head, (long long)o->n_head_kv);
        return false;
    }
    int blck = eng__type(o->type)->blck;
    if (o->n_embd % blck || o->n_ff % blck) {
        fprintf(stderr, "mkmodel: %s needs n-embd (%lld) and n-ff (%lld) to be multiples of %d\n",
                eng__type(o->type)->name, (long long)o->n_embd, (long long)o->n_ff, blck);
        return false;
    }
    if (!eng__type(o->type)->from_float) {
        fprintf(stderr, "mkmodel: this build cannot write %s\n", eng__type(o->type)->name);
        return false;
    }
    return true;
}

static bool add_spec(eng__gguf_writer *w, tspec *specs, int *n, gen *g, const char *name,
                     tkind kind, int type, int64_t n_in, int64_t n_rows)
{
    tspec *t = &specs[*n];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->kind = kind;
    t->type = kind == K_MATRIX ? type : ENG_TYPE_F32;
    t->n_in = n_in;
    t->n_rows = n_rows;
    t->index = (uint64_t)*n;
    t->g = g;
    int64_t ne[2] = {n_in, n_rows};
    if (eng__gguf_add_tensor_fill(w, t->name, (uint32_t)t->type, kind == K_MATRIX ? 2 : 1, ne,
                                  fill, t) != ENG_OK) {
        fprintf(stderr, "mkmodel: %s\n", eng__gguf_writer_error(w));
        return false;
    }
    g->bytes_total += (uint64_t)n_rows * eng__row_size(t->type, n_in);
    (*n)++;
    return true;
}

int main(int argc, char **argv)
{
    opts o;
    if (!parse_args(argc, argv, &o)) return 2;
    bool qwen = strcmp(o.arch, "qwen2") == 0;
    const char *a = o.arch;
    eng__gguf_writer *w = NULL;
    gen g = {.seed = o.seed, .quiet = o.quiet, .tty = isatty(2), .last_decile = -1};
    tspec *specs = NULL;
    int rc = 1;
    if (eng__gguf_writer_new(&w) != ENG_OK) {
        fprintf(stderr, "mkmodel: out of memory\n");
        return 1;
    }

    /* Metadata, in the order llama.cpp's converters write it. */
    char key[128], name[128], desc[256];
    snprintf(name, sizeof name, "%s", o.name ? o.name : "mkmodel");
    snprintf(desc, sizeof desc,
             "synthetic random-weight model (orthoserve mkmodel, seed %llu); not trained, its text is noise",
             (unsigned long long)o.seed);
    int64_t head_dim = o.n_embd / o.n_head;
    bool ok = eng__gguf_set_str(w, "general.architecture", a) == ENG_OK &&
              eng__gguf_set_str(w, "general.name", name) == ENG_OK &&
              eng__gguf_set_str(w, "general.type", "model") == ENG_OK &&
              eng__gguf_set_str(w, "general.description", desc) == ENG_OK;
#define SETU(suffix, val) \
    (snprintf(key, sizeof key, "%s." suffix, a), eng__gguf_set_u32(w, key, (uint32_t)(val)) == ENG_OK)
#define SETF(suffix, val) \
    (snprintf(key, sizeof key, "%s." suffix, a), eng__gguf_set_f32(w, key, (float)(val)) == ENG_OK)
    ok = ok && SETU("context_length", o.n_ctx) && SETU("embedding_length", o.n_embd) &&
         SETU("block_count", o.n_layer) && SETU("feed_forward_length", o.n_ff) &&
         SETU("attention.head_count", o.n_head) && SETU("attention.head_count_kv", o.n_head_kv) &&
         SETF("rope.freq_base", o.rope_base) && SETF("attention.layer_norm_rms_epsilon", o.rms_eps);
    /* Converted Qwen2 files carry no rope.dimension_count / vocab_size.
     * vocab_size is set again (in place) once the vocabulary is known. */
    if (ok && !qwen) ok = SETU("rope.dimension_count", head_dim) && SETU("vocab_size", 0);
    ok = ok && eng__gguf_set_u32(w, "general.file_type", file_type_of(o.type)) == ENG_OK;
    if (ok && o.type != ENG_TYPE_F32 && o.type != ENG_TYPE_F16 && o.type != ENG_TYPE_BF16)
        ok = eng__gguf_set_u32(w, "general.quantization_version", 2) == ENG_OK;
    if (!ok) {
        fprintf(stderr, "mkmodel: %s\n", eng__gguf_writer_error(w));
        goto done;
    }
    int64_t n_tokens = 0;
    if (o.vocab_from) {
        if (!copy_vocab(w, o.vocab_from, &n_tokens, o.chat_template != NULL)) goto done;
        if (o.n_vocab && o.n_vocab < n_tokens) {
            fprintf(stderr, "mkmodel: --n-vocab %lld is smaller than the %lld tokens of %s\n",
                    (long long)o.n_vocab, (long long)n_tokens, o.vocab_from);
            goto done;
        }
    } else if (!set_builtin_vocab(w, o.n_vocab, &n_tokens)) {
        goto done;
    }
    if (o.chat_template && !set_chat_template(w, o.chat_template)) goto done;
    int64_t V = o.n_vocab ? o.n_vocab : n_tokens;
    if (!qwen && !SETU("vocab_size", V)) goto done;
#undef SETU
#undef SETF

    /* Tensors, in gguf-py's order. */
    int64_t E = o.n_embd, F = o.n_ff, Q = o.n_head * head_dim, KV = o.n_head_kv * head_dim;
    int n_max = 3 + (int)o.n_layer * 12;
    specs = calloc((size_t)n_max, sizeof *specs);
    if (!specs) goto oom;
    g.specs = specs;
    int n = 0;
    char tn[64];
    ok = add_spec(w, specs, &n, &g, "token_embd.weight", K_MATRIX, o.type, E, V) &&
         add_spec(w, specs, &n, &g, "output_norm.weight", K_NORM, o.type, E, 1);
    if (ok && !o.tied) ok = add_spec(w, specs, &n, &g, "output.weight", K_MATRIX, o.type, E, V);
    for (int64_t il = 0; ok && il < o.n_layer; il++) {
#define T(suffix, kind, n_in, n_rows) \
    (snprintf(tn, sizeof tn, "blk.%lld." suffix, (long long)il), \
     add_spec(w, specs, &n, &g, tn, kind, o.type, n_in, n_rows))
        ok = T("attn_norm.weight", K_NORM, E, 1) && T("attn_q.weight", K_MATRIX, E, Q) &&
             T("attn_k.weight", K_MATRIX, E, KV) && T("attn_v.weight", K_MATRIX, E, KV);
        if (ok && qwen)
            ok = T("attn_q.bias", K_BIAS, Q, 1) && T("attn_k.bias", K_BIAS, KV, 1) &&
                 T("attn_v.bias", K_BIAS, KV, 1);
        ok = ok && T("attn_output.weight", K_MATRIX, Q, E) && T("ffn_norm.weight", K_NORM, E, 1) &&
             T("ffn_gate.weight", K_MATRIX, E, F) && T("ffn_up.weight", K_MATRIX, E, F) &&
             T("ffn_down.weight", K_MATRIX, F, E);
#undef T
    }
    if (!ok) goto done;
    g.n_specs = n;

    int nth = o.threads;
    if (eng__pool_new(nth, &g.pool) != ENG_OK) goto oom;
    g.row = calloc((size_t)nth, sizeof *g.row);
    if (!g.row) goto oom;
    int64_t maxrow = E > F ? E : F;
    for (int i = 0; i < nth; i++)
        if (!(g.row[i] = malloc((size_t)(maxrow + 1) * sizeof(float)))) goto oom;

    uint64_t n_params = 0;
    for (int i = 0; i < n; i++) n_params += (uint64_t)(specs[i].n_in * specs[i].n_rows);
    uint64_t fsize = 0;
    eng__gguf_writer_size(w, &fsize);
    if (!o.quiet)
        fprintf(stderr,
                "mkmodel: %s %s, n_embd %lld, %lld layers, %lld/%lld heads, n_ff %lld, vocab %lld%s: "
                "%.3fM params, %.1f MiB -> %s\n",
                a, eng__type(o.type)->name, (long long)E, (long long)o.n_layer, (long long)o.n_head,
                (long long)o.n_head_kv, (long long)F, (long long)V, o.tied ? ", tied" : "",
                (double)n_params / 1e6, (double)fsize / (1024.0 * 1024.0), o.out);
    g.t0 = eng__now();
    eng_status st = eng__gguf_writer_write_file(w, o.out);
    if (st != ENG_OK) {
        if (g.tty && !o.quiet) fputc('\n', stderr);
        fprintf(stderr, "mkmodel: writing %s: %s\n", o.out, eng__gguf_writer_error(w));
        goto done;
    }
    if (!o.quiet)
        fprintf(stderr, "mkmodel: wrote %s (%llu bytes) in %.1fs\n", o.out,
                (unsigned long long)fsize, eng__now() - g.t0);
    rc = 0;
    goto done;
oom:
    fprintf(stderr, "mkmodel: out of memory\n");
done:
    if (g.row)
        for (int i = 0; i < o.threads; i++) free(g.row[i]);
    free(g.row);
    eng__pool_free(g.pool);
    free(specs);
    eng__gguf_writer_free(w);
    return rc;
}
