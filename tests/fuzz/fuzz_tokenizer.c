/*
 * fuzz_tokenizer - libFuzzer harness for the tokenizer (engine/src/vocab.c, pretok.c, tokenizer.c).
 *
 * Four vocabularies are loaded once (SentencePiece: stories260K, llama-spm;
 * byte-level BPE: gpt-2, deepseek-llm) from $ORTHOSERVE_TESTDATA or the
 * compiled-in test data path. Input layout:
 *
 *   byte 0: bits 0-1 vocabulary, bit 2 add_special, bit 3 parse_special,
 *           bits 4-5 mode (0/1 text, 2 ids clamped into range, 3 raw ids),
 *           bit 6 remove_special, bit 7 unparse_special (detokenize)
 *   rest:   text to tokenize, or little-endian int32 token ids
 *
 * Checked: tokenize ids are in range; the ERANGE protocol of eng_tokenize,
 * eng_detokenize and eng_token_to_piece is consistent (the count reported
 * with too small a buffer equals the count written with enough room, and
 * exact-size buffers suffice); out-of-range ids are refused with ENG_EINVAL;
 * SentencePiece vocabularies with byte fallback give back valid UTF-8 input
 * bytes (detokenize(tokenize(text)) == text, no special parsing/rendering).
 */
#include "fuzz.h"
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>


static const char *const vocab_files[4] = {
    "models/stories260K.gguf",
    "vocab/ggml-vocab-llama-spm.gguf",
    "vocab/ggml-vocab-gpt-2.gguf",
    "vocab/ggml-vocab-deepseek-llm.gguf",
};
static eng_vocab *vocabs[4];
static volatile size_t sink;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *dir = getenv("ORTHOSERVE_TESTDATA");
    if (!dir || !*dir) dir = ORTHOSERVE_TESTDATA;
    for (int i = 0; i < 4; i++) {
        char path[4096], err[256];
        snprintf(path, sizeof path, "%s/%s", dir, vocab_files[i]);
        if (eng_vocab_load(path, &vocabs[i], err, sizeof err) != ENG_OK) {
            fprintf(stderr, "fuzz_tokenizer: cannot load %s: %s (set ORTHOSERVE_TESTDATA)\n", path, err);
            exit(2);
        }
    }
    return 0;
}

/* Strict UTF-8: no overlong forms, surrogates or code points past U+10FFFF. */
static bool valid_utf8(const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        uint8_t c = s[i];
        size_t l;
        uint32_t cp, min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            l = 2, cp = c & 0x1F, min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            l = 3, cp = c & 0x0F, min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            l = 4, cp = c & 0x07, min = 0x10000;
        } else {
            return false;
        }
        if (l > n - i) return false;
        for (size_t k = 1; k < l; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return false;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
        i += l;
    }
    return true;
}

/* eng_detokenize with the ERANGE protocol checked; returns the malloc'd text
 * (exact size, *n bytes) or NULL when the call refused the ids. */
static char *detok(const eng_vocab *v, const int32_t *ids, size_t n, bool rs, bool us, size_t *len,
                   eng_status *out_st)
{
    size_t need = (size_t)-1;
    eng_status st = eng_detokenize(v, ids, n, rs, us, NULL, 0, &need);
    *out_st = st;
    if (st == ENG_EINVAL || st == ENG_ENOMEM) return NULL;
    CHECK(st == ENG_OK || st == ENG_ERANGE);
    CHECK(need != (size_t)-1);
    CHECK((st == ENG_OK) == (need == 0));
    char *buf = malloc(need ? need : 1);
    CHECK(buf);
    size_t got = (size_t)-1;
    st = eng_detokenize(v, ids, n, rs, us, buf, need, &got);
    CHECK(st == ENG_OK && got == need);
    if (need > 0) {
        size_t again = 0;
        CHECK(eng_detokenize(v, ids, n, rs, us, buf, need - 1, &again) == ENG_ERANGE);
        CHECK(again == need);
    }
    *len = need;
    return buf;
}

static void piece_check(const eng_vocab *v, int32_t id, bool special)
{
    size_t need = (size_t)-1;
    eng_status st = eng_token_to_piece(v, id, special, NULL, 0, &need);
    if (id < 0 || id >= eng_vocab_n_tokens(v)) {
        CHECK(st == ENG_EINVAL);
        return;
    }
    if (st == ENG_ENOMEM) return;
    CHECK(st == ENG_OK || st == ENG_ERANGE);
    CHECK((st == ENG_OK) == (need == 0));
    char *buf = malloc(need ? need : 1);
    CHECK(buf);
    size_t got = (size_t)-1;
    CHECK(eng_token_to_piece(v, id, special, buf, need, &got) == ENG_OK && got == need);
    sink += need ? (unsigned char)buf[need - 1] : 0;
    free(buf);
}

static void text_mode(const eng_vocab *v, int vi, uint8_t fl, const char *text, size_t len)
{
    bool add = fl & 4, ps = fl & 8, rs = fl & 64, us = fl & 128;
    int32_t nt = eng_vocab_n_tokens(v);
    size_t need = (size_t)-1;
    eng_status st = eng_tokenize(v, text, len, add, ps, NULL, 0, &need);
    if (st == ENG_ENOMEM) return;
    CHECK(st == ENG_OK || st == ENG_ERANGE);
    CHECK(need != (size_t)-1 && (st == ENG_OK) == (need == 0));
    int32_t *ids = malloc((need ? need : 1) * sizeof *ids);
    CHECK(ids);
    size_t got = (size_t)-1;
    CHECK(eng_tokenize(v, text, len, add, ps, ids, need, &got) == ENG_OK && got == need);
    if (need > 0) {
        size_t again = 0;
        CHECK(eng_tokenize(v, text, len, add, ps, ids, need - 1, &again) == ENG_ERANGE);
        CHECK(again == need);
    }
    for (size_t i = 0; i < need; i++) CHECK(ids[i] >= 0 && ids[i] < nt);
    /* At most one token per byte plus BOS/EOS, or three when a space escaped
     * to U+2581 falls back to bytes (plus the SPM space prefix). */
    CHECK(need <= 3 * (len + 1) + 2);

    size_t tl = 0;
    eng_status dst;
    char *back = detok(v, ids, need, rs, us, &tl, &dst);
    CHECK(dst != ENG_EINVAL);
    if (back) {
        /* SentencePiece with byte fallback is lossless for plain, valid
         * UTF-8 text. (Not for invalid UTF-8: like llama.cpp, a truncated
         * sequence's symbol swallows the next bytes, which may split an
         * escaped space U+2581 into byte tokens that render as its bytes.
         * Nor for text holding U+2581 itself: it is the escaped space, so
         * it comes back as ' '.) */
        if (vi <= 1 && !ps && !us && !add && valid_utf8((const uint8_t *)text, len) &&
            !memmem(text, len, "\xE2\x96\x81", 3)) {
            if (tl != len || memcmp(back, text, len) != 0) {
                fprintf(stderr, "fuzz_tokenizer: round trip changed %zu bytes into %zu bytes\n", len, tl);
                CHECK(!"detokenize(tokenize(text)) == text");
            }
        }
        free(back);
    }
    for (size_t i = 0; i < need; i++) {
        piece_check(v, ids[i], false);
        piece_check(v, ids[i], true);
    }
    free(ids);
}

static void ids_mode(const eng_vocab *v, uint8_t fl, const uint8_t *p, size_t len, bool clamp)
{
    bool rs = fl & 64, us = fl & 128;
    int32_t nt = eng_vocab_n_tokens(v);
    size_t n = len / 4;
    int32_t *ids = malloc((n ? n : 1) * sizeof *ids);
    CHECK(ids);
    bool all_in = true;
    for (size_t i = 0; i < n; i++) {
        uint32_t raw;
        memcpy(&raw, p + 4 * i, 4);
        ids[i] = clamp ? (int32_t)(raw % (uint32_t)nt) : (int32_t)raw;
        if (ids[i] < 0 || ids[i] >= nt) all_in = false;
    }
    size_t tl = 0;
    eng_status st;
    char *text = detok(v, ids, n, rs, us, &tl, &st);
    if (all_in) CHECK(st != ENG_EINVAL);
    else CHECK(st == ENG_EINVAL && text == NULL);
    free(text);
    for (size_t i = 0; i < n && i < 64; i++) {
        piece_check(v, ids[i], us);
        bool in = ids[i] >= 0 && ids[i] < nt;
        CHECK((eng_vocab_text(v, ids[i]) != NULL) == in);
        if (!in) CHECK(eng_vocab_attr(v, ids[i]) == 0 && !eng_vocab_is_eog(v, ids[i]));
    }
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    if (!vocabs[0]) LLVMFuzzerInitialize(NULL, NULL);
    uint8_t fl = data[0];
    int vi = fl & 3;
    const eng_vocab *v = vocabs[vi];
    int mode = (fl >> 4) & 3;
    /* An exact-size copy so that ASan sees reads past the end of the text. */
    size_t len = size - 1;
    char *text = malloc(len ? len : 1);
    CHECK(text);
    memcpy(text, data + 1, len);
    if (mode <= 1) text_mode(v, vi, fl, text, len);
    else ids_mode(v, fl, (const uint8_t *)text, len, mode == 2);
    free(text);
    return 0;
}
