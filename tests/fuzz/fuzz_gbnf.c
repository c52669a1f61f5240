/*
 * fuzz_gbnf - libFuzzer harness for the GBNF parser and the grammar engine
 * (engine/src/grammar*.c) over the stories260K vocabulary. The input is
 * GBNF text, optionally followed by a NUL byte and text to feed.
 *
 * Bounds are tight (4 KiB of text, 500 rules, 5000 elements, 64 stacks,
 * depth 32, 200 ms) so that every input is quick; past one the compile
 * must fail with a message naming it. Checked: a compile either succeeds
 * or fails with ENG_EINVAL and a non-empty message; on success a matcher
 * feeds the text byte by byte (a refused byte leaves the state as it was:
 * the next byte is tried from there), its mask counts what it sets (or
 * says the grammar is too ambiguous for the lowered work bound), every
 * allowed token (up to 16 of them, not end-of-generation) is accepted by a
 * copy of the matcher that has seen the same bytes, and nothing leaks.
 */
#include "fuzz.h"

#include "grammar.h"

#include <string.h>

static eng_vocab *vocab;
static eng_grammar_vocab *gv;
static int32_t n_vocab;
static uint32_t *bits;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *dir = getenv("ORTHOSERVE_TESTDATA");
    if (!dir || !*dir) dir = ORTHOSERVE_TESTDATA;
    char path[4096], err[256];
    snprintf(path, sizeof path, "%s/models/stories260K.gguf", dir);
    if (eng_vocab_load(path, &vocab, err, sizeof err) != ENG_OK || eng_grammar_vocab_new(vocab, &gv) != ENG_OK) {
        fprintf(stderr, "fuzz_gbnf: cannot load %s: %s (set ORTHOSERVE_TESTDATA)\n", path, err);
        exit(2);
    }
    n_vocab = eng_vocab_n_tokens(vocab);
    eng__grammar_mask_work_max = 200000; /* quick inputs: an ambiguous grammar fails its mask (-2) sooner */
    bits = calloc(((size_t)n_vocab + 31) / 32, sizeof *bits);
    return 0;
}

static void check_mask(eng_grammar *g, const uint8_t *fed, size_t n_fed, eng_matcher *m)
{
    int32_t n = eng_matcher_mask(m, bits);
    CHECK(n >= 0 || n == -2);
    if (n < 0) return;
    int32_t cnt = 0, tried = 0;
    for (int32_t t = 0; t < n_vocab; t++) {
        if (!((bits[t >> 5] >> (t & 31)) & 1u)) continue;
        cnt++;
        if (eng_vocab_is_eog(vocab, t)) {
            CHECK(eng_matcher_is_accepting(m));
            continue;
        }
        if (tried++ >= 16) continue;
        eng_matcher *c = NULL;
        CHECK(eng_matcher_new(g, &c) == ENG_OK);
        for (size_t i = 0; i < n_fed; i++) (void)eng_matcher_accept_bytes(c, (const char *)fed + i, 1);
        CHECK(eng_matcher_accept(c, t) == ENG_OK);
        eng_matcher_free(c);
    }
    CHECK(cnt == n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nul = memchr(data, 0, size);
    size_t glen = nul ? (size_t)(nul - data) : size;
    const uint8_t *text = nul ? nul + 1 : NULL;
    size_t tlen = nul ? size - glen - 1 : 0;
    eng_grammar_limits lim = {.max_bytes = 4096, .max_rules = 500, .max_elements = 5000, .max_stacks = 64,
                              .max_depth = 32, .max_compile_ms = 200};
    eng_grammar *g = NULL;
    char err[512] = "";
    eng_status st = eng_grammar_new(gv, (const char *)data, glen, NULL, &lim, &g, err, sizeof err);
    if (st != ENG_OK) {
        CHECK(st == ENG_EINVAL && err[0] && !g);
        return 0;
    }
    eng_matcher *m = NULL;
    CHECK(eng_matcher_new(g, &m) == ENG_OK);
    uint8_t fed[64];
    size_t n_fed = 0;
    for (size_t i = 0; i < tlen && n_fed < sizeof fed; i++) {
        if (eng_matcher_accept_bytes(m, (const char *)text + i, 1) == ENG_OK) fed[n_fed++] = text[i];
    }
    check_mask(g, fed, n_fed, m);
    eng_matcher_free(m);
    eng_grammar_release(g);
    return 0;
}
