/*
 * fuzz_model - libFuzzer harness for model loading and one forward step.
 *
 * Invariant: a file that eng_model_load accepts must also tokenize, detokenize
 * and run one forward step without any out-of-bounds access. Bytes are
 * written to a memfd (there is no in-memory eng_model_load) and loaded through
 * /proc/self/fd/N, which the reader maps like any file. A model that loads
 * gets a context (n_ctx 16, n_batch 4, one thread), a 2-token batch with
 * logits for both tokens, and every logit is read.
 *
 * To keep executions fast, models whose weight products would be large are
 * loaded and checked but not run (see MAX_PARAMS).
 */
#include "fuzz.h"
#include "internal.h"
#include "known_bugs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>


/* Weight elements the forward step may multiply (2 tokens: ~2x this many MACs). */
#define MAX_PARAMS (8u << 20)
#define MAX_VOCAB (1 << 17)
#define MAX_WIDTH (1 << 14)

static volatile float fsink;
static int g_fd = -1;
static char g_path[64];

static void open_memfd(void)
{
    if (g_fd >= 0) return;
    g_fd = memfd_create("fuzz_model.gguf", MFD_CLOEXEC);
    CHECK(g_fd >= 0);
    snprintf(g_path, sizeof g_path, "/proc/self/fd/%d", g_fd);
}

static bool write_all(const uint8_t *p, size_t n)
{
    if (ftruncate(g_fd, 0) != 0) return false;
    size_t off = 0;
    while (off < n) {
        ssize_t w = pwrite(g_fd, p + off, n - off, (off_t)off);
        if (w <= 0) return false;
        off += (size_t)w;
    }
    return true;
}

/* Tokenizer round over a vocabulary that came out of a hostile file. */
static void exercise_vocab(const eng_vocab *v, int32_t n_vocab)
{
    static const char text[] = "Hello <s> world! \xe6\x9d\xb1\xe4\xba\xac \xff\x80 <|im_end|>\n\n 12345";
    int32_t ids[256];
    size_t n = 0;
    CHECK(eng_vocab_n_tokens(v) >= 1 && eng_vocab_n_tokens(v) <= n_vocab);
    for (int ps = 0; ps < 2; ps++) {
        eng_status st = eng_tokenize(v, text, sizeof text - 1, true, ps, ids, 256, &n);
        CHECK(st == ENG_OK || st == ENG_ERANGE);
        if (st != ENG_OK) continue;
        for (size_t i = 0; i < n; i++) CHECK(ids[i] >= 0 && ids[i] < eng_vocab_n_tokens(v));
        size_t need = 0;
        st = eng_detokenize(v, ids, n, false, ps, NULL, 0, &need);
        CHECK(st == ENG_OK || st == ENG_ERANGE);
        if (need) {
            char *buf = malloc(need);
            size_t got = 0;
            CHECK(buf);
            CHECK(eng_detokenize(v, ids, n, false, ps, buf, need, &got) == ENG_OK && got == need);
            free(buf);
        }
    }
    /* Every piece of the first and last tokens, and of the special ids. */
    int32_t nt = eng_vocab_n_tokens(v);
    int32_t probe[] = {0, 1, 2, nt - 1, nt / 2, eng_vocab_bos(v), eng_vocab_eos(v), eng_vocab_eot(v)};
    for (size_t i = 0; i < sizeof probe / sizeof probe[0]; i++) {
        int32_t id = probe[i];
        if (id < 0 || id >= nt) continue;
        char buf[64];
        size_t got = 0;
        eng_status st = eng_token_to_piece(v, id, true, buf, sizeof buf, &got);
        CHECK(st == ENG_OK || st == ENG_ERANGE);
        if (st == ENG_ERANGE) CHECK(got > sizeof buf);
        fsink += (float)eng_vocab_attr(v, id) + (float)eng_vocab_is_eog(v, id);
        const char *t = eng_vocab_text(v, id);
        CHECK(t != NULL);
        fsink += (float)strlen(t);
    }
}

static void run_forward(eng_model *m, const eng_model_info *mi)
{
    eng_context_params cp = eng_context_default_params();
    cp.n_ctx = 16;
    cp.n_batch_max = 4;
    cp.n_seq_max = 1;
    cp.n_threads = 1;
    eng_context *c = NULL;
    eng_status st = eng_context_new(m, &cp, &c);
    if (st == ENG_ENOMEM) return;
    CHECK(st == ENG_OK && c);
    int32_t tok[2] = {0, mi->n_vocab > 1 ? mi->n_vocab - 1 : 0};
    int32_t bos = eng_vocab_bos(eng_model_vocab(m));
    if (bos >= 0 && bos < mi->n_vocab) tok[0] = bos;
    int32_t pos[2] = {0, 1}, seq[2] = {0, 0};
    int8_t lg[2] = {1, 1};
    eng_batch b = {.n_tokens = 2, .token = tok, .pos = pos, .seq = seq, .logits = lg};
    st = eng_decode(c, &b);
    CHECK(st == ENG_OK);
    for (int i = 0; i < 2; i++) {
        const float *l = eng_get_logits(c, i);
        CHECK(l != NULL);
        float acc = 0;
        for (int32_t j = 0; j < mi->n_vocab; j++) acc += l[j];
        fsink += acc;
    }
    CHECK(eng_seq_len(c, 0) == 2);
    /* Bad input is refused, not run: an id past the vocabulary. */
    int32_t bad = mi->n_vocab, p2 = 2;
    int8_t one = 1;
    eng_batch bb = {.n_tokens = 1, .token = &bad, .pos = &p2, .seq = seq, .logits = &one};
    CHECK(eng_decode(c, &bb) == ENG_EINVAL);
    eng_context_free(c);
}

/* True when the input would only reproduce a reported, unfixed bug. */
static bool known_bug(const uint8_t *data, size_t size)
{
    bool hit = false;
#if KNOWN_BUG_ARR_I64_FLOAT_CAST
    eng__gguf *g = NULL;
    char err[64];
    if (eng__gguf_open_mem(data, size, &g, err, sizeof err) != ENG_OK) return false;
    const eng__gguf_kv *kv = eng__gguf_find(g, "tokenizer.ggml.token_type");
    if (kv && kv->type == GGUF_VT_ARRAY &&
        (kv->arr_type == GGUF_VT_FLOAT32 || kv->arr_type == GGUF_VT_FLOAT64))
        for (uint64_t i = 0; i < kv->n && !hit; i++) {
            double d = eng__gguf_arr_f64(kv, i);
            hit = !(d > -9.2e18 && d < 9.2e18);
        }
    eng__gguf_close(g);
#endif
#if KNOWN_BUG_F32_MAT_MISALIGNED
    {
        eng__gguf *h = NULL;
        char e2[64];
        if (eng__gguf_open_mem(data, size, &h, e2, sizeof e2) == ENG_OK) {
            for (uint64_t i = 0; i < h->n_tensors && !hit; i++)
                hit = h->tensors[i].type == ENG_TYPE_F32 && h->tensors[i].n_dims >= 2 &&
                      (h->data_offset + h->tensors[i].offset) % 4 != 0;
            eng__gguf_close(h);
        }
    }
#endif
    (void)data;
    (void)size;
    return hit;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (known_bug(data, size)) return 0;
    open_memfd();
    if (!write_all(data, size)) return 0;
    eng_model_params mp = eng_model_default_params();
    mp.n_threads = 1;
    eng_model *m = NULL;
    char err[256];
    err[0] = 0;
    eng_status st = eng_model_load(g_path, &mp, &m, err, sizeof err);
    static int verbose = -1;
    if (verbose < 0) verbose = getenv("FUZZ_VERBOSE") != NULL;
    if (verbose) fprintf(stderr, "fuzz_model: load: %s %s\n", eng_strerror(st), st ? err : "");
    if (st != ENG_OK) {
        CHECK(m == NULL);
        CHECK(st == ENG_EFORMAT || st == ENG_EUNSUPPORTED || st == ENG_ENOMEM || st == ENG_EIO);
        CHECK(memchr(err, 0, sizeof err) != NULL);
        return 0;
    }
    CHECK(m);
    eng_model_info mi;
    eng_model_get_info(m, &mi);
    CHECK(mi.n_vocab >= 1 && mi.n_embd >= 1 && mi.n_layer >= 1 && mi.n_head >= 1);
    CHECK(mi.n_head_kv >= 1 && mi.n_head % mi.n_head_kv == 0 && mi.n_embd % mi.n_head == 0);
    CHECK(mi.arch && mi.name && mi.file_type);
    const eng_vocab *v = eng_model_vocab(m);
    CHECK(v);
    if (mi.n_vocab <= MAX_VOCAB) exercise_vocab(v, mi.n_vocab);
    bool run = mi.n_params <= MAX_PARAMS && mi.n_vocab <= MAX_VOCAB && mi.n_embd <= MAX_WIDTH &&
               mi.n_ff <= MAX_WIDTH;
#if KNOWN_BUG_SCALAR_Q8_NAN
    if (strcmp(eng_kernel_name(), "scalar") == 0 && strcmp(mi.file_type, "F32") != 0 &&
        strcmp(mi.file_type, "F16") != 0)
        run = false;
#endif
    if (run) {
        run_forward(m, &mi);
        if (verbose) fprintf(stderr, "fuzz_model: ran %s %s\n", mi.arch, mi.file_type);
    }
    eng_model_free(m);
    return 0;
}
