/*
 * fuzz_schema - libFuzzer harness for the JSON Schema compiler
 * (server/schema_gbnf.c, regex_gbnf.c) and the structured-output fields
 * (server/rformat.c). The input is a JSON Schema (any bytes; JSON that
 * does not parse is skipped).
 *
 * Checked: the compiler either refuses with a pointer and a message, or
 * writes GBNF that the engine compiles (the compiler's output is always
 * valid GBNF: only a bound of eng_grammar_limits may stop it, and the
 * message then names it, or a $ref / anyOf cycle that recurses before
 * matching anything, which the engine refuses as left recursion); a matcher of that grammar starts with something
 * allowed (a schema that matches no value is refused, not compiled); the
 * same schema as response_format.json_schema gives the same answer; and
 * nothing leaks.
 */
#include "fuzz.h"

#include "config.h"
#include "orthoserve/engine.h"
#include "rformat.h"
#include "schema_gbnf.h"

#include <jansson.h>
#include <string.h>

static eng_vocab *vocab;
static eng_grammar_vocab *gv;
static uint32_t *bits;
static srv_config cfg;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *dir = getenv("ORTHOSERVE_TESTDATA");
    if (!dir || !*dir) dir = ORTHOSERVE_TESTDATA;
    char path[4096], err[256];
    snprintf(path, sizeof path, "%s/models/stories260K.gguf", dir);
    if (eng_vocab_load(path, &vocab, err, sizeof err) != ENG_OK || eng_grammar_vocab_new(vocab, &gv) != ENG_OK) {
        fprintf(stderr, "fuzz_schema: cannot load %s: %s (set ORTHOSERVE_TESTDATA)\n", path, err);
        exit(2);
    }
    bits = calloc(((size_t)eng_vocab_n_tokens(vocab) + 31) / 32, sizeof *bits);
    cfg.schema_max_depth = 16;
    cfg.grammar_max_rules = 2000;
    cfg.grammar_max_bytes = 65536;
    cfg.schema_max_count = 50;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_t *s = json_loadb((const char *)data, size, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, NULL);
    if (!s) return 0;
    schema_limits lim = {.max_depth = 16, .max_rules = 2000, .max_bytes = 65536, .max_count = 50};
    char *text = NULL, ptr[256] = "", msg[512] = "";
    int rc = schema_to_gbnf(s, &lim, &text, ptr, sizeof ptr, msg, sizeof msg);
    if (rc) {
        CHECK(!text && msg[0]);
    } else {
        eng_grammar_limits gl = {.max_bytes = 65536, .max_rules = 20000, .max_elements = 20000, .max_stacks = 64,
                                 .max_depth = 32, .max_compile_ms = 500};
        eng_grammar *g = NULL;
        char err[512] = "";
        eng_status st = eng_grammar_new(gv, text, strlen(text), NULL, &gl, &g, err, sizeof err);
        if (st != ENG_OK && !strstr(err, "max_") && !strstr(err, "left-recursive"))
            fprintf(stderr, "schema compiled to GBNF the engine refused: %s\n%s\n", err, text);
        /* a bound, or a $ref cycle that matches nothing before recursing (left recursion) */
        CHECK(st == ENG_OK || (st == ENG_EINVAL && (strstr(err, "max_") || strstr(err, "left-recursive"))));
        if (g) {
            eng_matcher *m = NULL;
            CHECK(eng_matcher_new(g, &m) == ENG_OK);
            CHECK(eng_matcher_mask(m, bits) > 0 || eng_matcher_can_continue(m));
            eng_matcher_free(m);
            eng_grammar_release(g);
        }
    }
    /* the same schema through response_format */
    json_t *body = json_pack("{s:{s:s,s:{s:s,s:O}}}", "response_format", "type", "json_schema", "json_schema",
                             "name", "f", "schema", s);
    rformat rf;
    char param[64];
    const char *code = NULL;
    int rc2 = rformat_parse(body, &cfg, &rf, param, sizeof param, &code, msg, sizeof msg);
    CHECK(rc2 == rc || (code && !strcmp(code, "server_error")));
    if (!rc2) CHECK(rf.gbnf && !strcmp(rf.gbnf, text) && !strcmp(rf.param, "response_format.json_schema"));
    else CHECK(!strcmp(param, "response_format.json_schema") || strstr(param, "response_format"));
    free(rf.gbnf);
    free(text);
    json_decref(body);
    json_decref(s);
    return 0;
}
