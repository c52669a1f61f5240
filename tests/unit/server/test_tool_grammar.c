/*
 * test_tool_grammar.c - server/tool_grammar.c: the forced-call grammar of
 * each call format, compiled by the engine, accepts a call to an allowed
 * tool whose arguments follow its schema (and toolcall.c parses what it
 * accepts into that call), and refuses other names, bad arguments, text
 * around the call, and a second call when parallel calls are off.
 */
#include "tool_grammar.h"
#include "orthoserve/engine.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#define DS(x) "<\xef\xbd\x9ctool\xe2\x96\x81" x "\xef\xbd\x9c>"

static eng_vocab *V;
static eng_grammar_vocab *GV;
static const schema_limits LIM = {.max_depth = 64, .max_rules = 20000, .max_bytes = 1 << 20, .max_count = 1000};
static json_t *BODY;

static void setup(void)
{
    char err[256];
    cr_assert_eq(eng_vocab_load(ORTHOSERVE_TESTDATA "/vocab/ggml-vocab-llama-spm.gguf", &V, err, sizeof err), ENG_OK);
    cr_assert_eq(eng_grammar_vocab_new(V, &GV), ENG_OK);
    BODY = json_loads("{\"tools\": ["
                      "{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"parameters\": {\"type\": "
                      "\"object\", \"properties\": {\"city\": {\"type\": \"string\"}, \"days\": {\"type\": \"integer\"}},"
                      " \"required\": [\"city\"], \"additionalProperties\": false}}},"
                      "{\"type\": \"function\", \"function\": {\"name\": \"ping\"}}]}", 0, NULL);
    cr_assert_not_null(BODY);
}

static void teardown(void)
{
    json_decref(BODY);
    eng_grammar_vocab_free(GV);
    eng_vocab_free(V);
}

TestSuite(tool_grammar, .init = setup, .fini = teardown);

static eng_grammar *compile(tc_format f, const char *name, bool parallel, bool think_open)
{
    tool_grammar_opts o = {.fmt = f, .name = name, .parallel = parallel, .think_open = think_open};
    char *gbnf = NULL, param[64], msg[512];
    const char *code = NULL;
    cr_assert_eq(tool_grammar(BODY, &o, &LIM, &gbnf, param, sizeof param, &code, msg, sizeof msg), 0, "%s", msg);
    eng_grammar *g = NULL;
    char err[512];
    cr_assert_eq(eng_grammar_new(GV, gbnf, strlen(gbnf), NULL, NULL, &g, err, sizeof err), ENG_OK, "%s\n%s", err, gbnf);
    free(gbnf);
    return g;
}

static bool accepts(eng_grammar *g, const char *text)
{
    eng_matcher *m = NULL;
    cr_assert_eq(eng_matcher_new(g, &m), ENG_OK);
    bool ok = eng_matcher_accept_bytes(m, text, strlen(text)) == ENG_OK && eng_matcher_is_accepting(m);
    eng_matcher_free(m);
    return ok;
}

/* Accepted, and parsed back into n calls, the first to name. */
static void yes(eng_grammar *g, tc_format f, const char *text, size_t n, const char *name)
{
    cr_assert(accepts(g, text), "%s should accept %s", tc_format_name(f), text);
    tc_opts o = {.fmt = f, .think_open = strstr(text, "</think>") != NULL};
    tc_result r;
    cr_assert_eq(tc_parse(&o, text, strlen(text), false, &r), 0);
    cr_assert_eq(r.n_calls, n, "%s: %s -> %zu calls", tc_format_name(f), text, r.n_calls);
    cr_assert_str_eq(r.calls[0].name, name);
    cr_assert_str_eq(r.content, "");
    tc_result_free(&r);
}

#define NO(g, t) cr_assert_not(accepts(g, t), "should refuse %s", t)

Test(tool_grammar, hermes_required_and_named)
{
    eng_grammar *g = compile(TC_HERMES, NULL, true, false);
    yes(g, TC_HERMES, "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 3}}\n</tool_call>", 1,
        "get_weather");
    yes(g, TC_HERMES, "<tool_call>\n{\"name\": \"ping\", \"arguments\": {}}\n</tool_call>\n<tool_call>\n{\"name\": "
        "\"get_weather\", \"arguments\": {\"city\": \"x\"}}\n</tool_call>", 2, "ping");
    NO(g, "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"days\": 3}}\n</tool_call>");
    NO(g, "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": 3}}\n</tool_call>");
    NO(g, "<tool_call>\n{\"name\": \"other\", \"arguments\": {}}\n</tool_call>");
    NO(g, "Sure. <tool_call>\n{\"name\": \"ping\", \"arguments\": {}}\n</tool_call>");
    NO(g, "");
    eng_grammar_release(g);
    g = compile(TC_HERMES, "get_weather", false, false);
    yes(g, TC_HERMES, "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>", 1,
        "get_weather");
    NO(g, "<tool_call>\n{\"name\": \"ping\", \"arguments\": {}}\n</tool_call>");
    NO(g, "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"a\"}}\n</tool_call>\n<tool_call>\n"
          "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"b\"}}\n</tool_call>");
    eng_grammar_release(g);
}

Test(tool_grammar, every_format)
{
    static const struct { tc_format f; const char *text; } C[] = {
        {TC_LLAMA3, "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}"},
        {TC_LLAMA3, "<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}"},
        {TC_MISTRAL, "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}]"},
        {TC_MISTRAL_ARGS, "[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Paris\"}"},
        {TC_GRANITE, "<|tool_call|>[{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}]"},
        {TC_FUNCTIONARY, "get_weather\n{\"city\": \"Paris\"}"},
        {TC_DEEPSEEK, DS("calls\xe2\x96\x81" "begin") DS("call\xe2\x96\x81" "begin") "function" DS("sep")
         "get_weather\n```json\n{\"city\": \"Paris\"}\n```" DS("call\xe2\x96\x81" "end") DS("calls\xe2\x96\x81" "end")},
    };
    for (size_t i = 0; i < sizeof C / sizeof *C; i++) {
        eng_grammar *g = compile(C[i].f, "get_weather", true, false);
        yes(g, C[i].f, C[i].text, 1, "get_weather");
        char bad[512];
        snprintf(bad, sizeof bad, "%s", C[i].text);
        char *p = strstr(bad, "Paris");
        memcpy(p - 1, "12345  ", 7); /* "city": 12345 -- not a string */
        NO(g, bad);
        eng_grammar_release(g);
    }
}

Test(tool_grammar, think_block_the_prompt_opened)
{
    eng_grammar *g = compile(TC_DEEPSEEK, "get_weather", false, true);
    yes(g, TC_DEEPSEEK, "Paris, so: a <b> call.\n</think>\n\n" DS("calls\xe2\x96\x81" "begin") DS("call\xe2\x96\x81" "begin")
        "function" DS("sep") "get_weather\n```json\n{\"city\": \"Paris\"}\n```" DS("call\xe2\x96\x81" "end")
        DS("calls\xe2\x96\x81" "end"), 1, "get_weather");
    NO(g, DS("calls\xe2\x96\x81" "begin"));
    eng_grammar_release(g);
}

Test(tool_grammar, a_bad_parameters_schema_names_its_tool)
{
    json_t *b = json_loads("{\"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\", \"parameters\": "
                           "{\"type\": \"object\"}}}, {\"type\": \"function\", \"function\": {\"name\": \"g\", "
                           "\"parameters\": {\"type\": \"object\", \"patternProperties\": {}}}}]}", 0, NULL);
    tool_grammar_opts o = {.fmt = TC_HERMES};
    char *gbnf = NULL, param[64], msg[512];
    const char *code = NULL;
    cr_assert_eq(tool_grammar(b, &o, &LIM, &gbnf, param, sizeof param, &code, msg, sizeof msg), -1);
    cr_assert_str_eq(param, "tools[1].function.parameters");
    cr_assert_str_eq(code, "invalid_schema");
    o.name = "f"; /* only the named tool's schema is compiled */
    cr_assert_eq(tool_grammar(b, &o, &LIM, &gbnf, param, sizeof param, &code, msg, sizeof msg), 0);
    free(gbnf);
    json_decref(b);
}
