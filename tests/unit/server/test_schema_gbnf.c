/* test_schema_gbnf.c - JSON Schema to GBNF (schema_gbnf.c, regex_gbnf.c):
 * the grammars, compiled by the engine, accept what the schema accepts
 * and refuse what it refuses; unsupported keywords name their pointer. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "orthoserve/engine.h"
#include "schema_gbnf.h"

static eng_vocab *V;
static eng_grammar_vocab *GV;
static const schema_limits LIM = {.max_depth = 64, .max_rules = 20000, .max_bytes = 1 << 20, .max_count = 1000};

static void setup(void)
{
    char err[256];
    cr_assert_eq(eng_vocab_load(ORTHOSERVE_TESTDATA "/vocab/ggml-vocab-llama-spm.gguf", &V, err, sizeof err), ENG_OK);
    cr_assert_eq(eng_grammar_vocab_new(V, &GV), ENG_OK);
}

static void teardown(void)
{
    eng_grammar_vocab_free(GV);
    eng_vocab_free(V);
}

TestSuite(schema_gbnf, .init = setup, .fini = teardown);

static eng_grammar *compile(const char *schema_text)
{
    json_error_t je;
    json_t *s = json_loads(schema_text, JSON_DECODE_ANY, &je);
    cr_assert_not_null(s, "%s", je.text);
    char *gbnf = NULL, ptr[256], msg[512];
    cr_assert_eq(schema_to_gbnf(s, &LIM, &gbnf, ptr, sizeof ptr, msg, sizeof msg), 0, "%s: %s at '%s'",
                 schema_text, msg, ptr);
    json_decref(s);
    eng_grammar *g = NULL;
    char err[512];
    cr_assert_eq(eng_grammar_new(GV, gbnf, strlen(gbnf), NULL, NULL, &g, err, sizeof err), ENG_OK, "%s\n%s", err,
                 gbnf);
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

#define YES(g, t) cr_assert(accepts(g, t), "should accept %s", t)
#define NO(g, t) cr_assert_not(accepts(g, t), "should refuse %s", t)

Test(schema_gbnf, object_properties_in_order)
{
    eng_grammar *g = compile("{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\"},"
                             "\"age\":{\"type\":\"integer\"},\"tags\":{\"type\":\"array\",\"items\":{\"type\":"
                             "\"string\"}}},\"required\":[\"name\",\"age\"],\"additionalProperties\":false}");
    YES(g, "{\"name\":\"a\",\"age\":3}");
    YES(g, "{ \"name\" : \"a\" ,\n  \"age\": -3, \"tags\": [\"x\", \"y\"] }");
    NO(g, "{\"age\":3,\"name\":\"a\"}");
    NO(g, "{\"name\":\"a\"}");
    NO(g, "{\"name\":\"a\",\"age\":3.5}");
    NO(g, "{\"name\":\"a\",\"age\":3,\"x\":1}");
    NO(g, "{\"name\":\"a\",      \"age\":3}");
    eng_grammar_release(g);
}

Test(schema_gbnf, additional_properties_exclude_declared_keys)
{
    eng_grammar *g = compile("{\"type\":\"object\",\"properties\":{\"ab\":{\"type\":\"integer\"}},"
                             "\"additionalProperties\":{\"type\":\"boolean\"}}");
    YES(g, "{\"ab\":1,\"a\":true,\"abc\":false,\"x\":true}");
    YES(g, "{\"zz\":true}");
    NO(g, "{\"ab\":1,\"ab\":true}");
    NO(g, "{\"a\":1}");
    eng_grammar_release(g);
}

Test(schema_gbnf, integers_in_range)
{
    eng_grammar *g = compile("{\"type\":\"integer\",\"minimum\":-15,\"exclusiveMaximum\":1234}");
    const char *yes[] = {"-15", "-9", "0", "7", "99", "1233", "1000", "120"};
    const char *no[] = {"-16", "-0", "1234", "2000", "01", "12345", "-100"};
    for (size_t i = 0; i < sizeof yes / sizeof *yes; i++) YES(g, yes[i]);
    for (size_t i = 0; i < sizeof no / sizeof *no; i++) NO(g, no[i]);
    eng_grammar_release(g);
    g = compile("{\"type\":\"integer\",\"minimum\":-1e300,\"maximum\":1e300,\"exclusiveMinimum\":-1e300}");
    YES(g, "-999999999999999");
    YES(g, "999999999999999");
    NO(g, "1000000000000000");
    eng_grammar_release(g);
    g = compile("{\"type\":\"integer\",\"minimum\":100}");
    YES(g, "100");
    YES(g, "99999");
    NO(g, "99");
    NO(g, "-100");
    eng_grammar_release(g);
}

Test(schema_gbnf, strings_formats_patterns)
{
    eng_grammar *g = compile("{\"type\":\"string\",\"minLength\":2,\"maxLength\":3}");
    YES(g, "\"ab\"");
    YES(g, "\"a\\\"b\"");
    YES(g, "\"\xc3\xa9t\xc3\xa9\"");
    NO(g, "\"a\"");
    NO(g, "\"abcd\"");
    eng_grammar_release(g);
    g = compile("{\"type\":\"string\",\"pattern\":\"^[A-Z]{2}-\\\\d{3}(x|yz)?$\"}");
    YES(g, "\"AB-123\"");
    YES(g, "\"AB-123yz\"");
    NO(g, "\"AB-12\"");
    NO(g, "\" AB-123\"");
    eng_grammar_release(g);
    g = compile("{\"type\":\"string\",\"pattern\":\"a\\\"b\"}");
    YES(g, "\"xxa\\\"by\"");
    NO(g, "\"xxaby\"");
    eng_grammar_release(g);
    g = compile("{\"type\":\"string\",\"format\":\"date-time\"}");
    YES(g, "\"2024-02-28T23:59:01.5Z\"");
    YES(g, "\"2024-12-31T00:00:00+05:30\"");
    NO(g, "\"2024-02-30T00:00:00Z\"");
    NO(g, "\"2024-13-01T00:00:00Z\"");
    eng_grammar_release(g);
    g = compile("{\"anyOf\":[{\"format\":\"uuid\",\"type\":\"string\"},{\"type\":\"string\",\"format\":\"ipv4\"},"
                "{\"type\":\"string\",\"format\":\"email\"}]}");
    YES(g, "\"123e4567-e89b-12d3-a456-426614174000\"");
    YES(g, "\"192.168.0.255\"");
    YES(g, "\"a.b@example.com\"");
    NO(g, "\"256.1.1.1\"");
    NO(g, "\"a@b\"");
    eng_grammar_release(g);
}

Test(schema_gbnf, refs_recursion_and_choices)
{
    eng_grammar *g = compile("{\"$defs\":{\"node\":{\"type\":\"object\",\"properties\":{\"v\":{\"enum\":[1,\"x\","
                             "null]},\"kids\":{\"type\":\"array\",\"items\":{\"$ref\":\"#/$defs/node\"},\"maxItems\":2}},"
                             "\"required\":[\"v\"]}},\"$ref\":\"#/$defs/node\"}");
    YES(g, "{\"v\":1,\"kids\":[{\"v\":\"x\"},{\"v\":null,\"kids\":[]}]}");
    NO(g, "{\"v\":2}");
    NO(g, "{\"v\":1,\"kids\":[{\"v\":1},{\"v\":1},{\"v\":1}]}");
    eng_grammar_release(g);
    g = compile("{\"oneOf\":[{\"type\":\"string\"},{\"type\":\"integer\"}],\"nullable\":true}");
    YES(g, "\"s\"");
    YES(g, "5");
    YES(g, "null");
    NO(g, "true");
    eng_grammar_release(g);
    g = compile("{\"allOf\":[{\"type\":\"object\",\"properties\":{\"a\":{\"const\":\"k\"}},\"required\":[\"a\"]},"
                "{\"properties\":{\"b\":{\"type\":\"boolean\"}}}]}");
    YES(g, "{\"a\":\"k\",\"b\":true}");
    YES(g, "{\"a\":\"k\"}");
    NO(g, "{\"b\":true}");
    eng_grammar_release(g);
    g = compile("{\"type\":\"array\",\"prefixItems\":[{\"type\":\"integer\"},{\"type\":\"string\"}],\"minItems\":1}");
    YES(g, "[1]");
    YES(g, "[1,\"a\"]");
    NO(g, "[]");
    NO(g, "[1,\"a\",2]");
    eng_grammar_release(g);
    g = compile("{\"type\":[\"array\",\"null\"],\"items\":{\"type\":\"number\"},\"minItems\":2,\"maxItems\":3}");
    YES(g, "[1.5,-2e3]");
    YES(g, "null");
    NO(g, "[1]");
    NO(g, "[1,2,3,4]");
    eng_grammar_release(g);
}

static void refused(const char *schema_text, const char *want_ptr, const char *needle)
{
    json_t *s = json_loads(schema_text, JSON_DECODE_ANY, NULL);
    cr_assert_not_null(s);
    char *gbnf = NULL, ptr[256] = "", msg[512] = "";
    cr_assert_eq(schema_to_gbnf(s, &LIM, &gbnf, ptr, sizeof ptr, msg, sizeof msg), -1, "%s compiled", schema_text);
    cr_assert_null(gbnf);
    cr_assert_str_eq(ptr, want_ptr, "%s: pointer '%s' (%s)", schema_text, ptr, msg);
    cr_assert(strstr(msg, needle), "%s: '%s' lacks '%s'", schema_text, msg, needle);
    json_decref(s);
}

Test(schema_gbnf, unsupported_keywords_are_named)
{
    refused("{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"string\",\"contentEncoding\":\"base64\"}}}",
            "/properties/a/contentEncoding", "'contentEncoding'");
    refused("{\"type\":\"array\",\"uniqueItems\":true}", "/uniqueItems", "'uniqueItems'");
    refused("{\"type\":\"number\",\"minimum\":0.5}", "/minimum", "integer only");
    refused("{\"type\":\"integer\",\"multipleOf\":3}", "/multipleOf", "'multipleOf'");
    refused("{\"type\":\"string\",\"format\":\"hostname\"}", "/format", "'hostname'");
    refused("{\"type\":\"string\",\"pattern\":\"(a)\\\\1\"}", "/pattern", "back-references");
    refused("{\"oneOf\":[{\"type\":\"string\"},{\"type\":\"string\",\"minLength\":2}]}", "/oneOf", "overlap");
    refused("{\"$ref\":\"https://example.com/s.json\"}", "", "'$ref'");
    refused("{\"type\":\"string\",\"maxLength\":100000}", "/maxLength", "schema_max_count");
    refused("false", "", "false");
    refused("{\"type\":\"integer\",\"minimum\":5,\"maximum\":4}", "", "no integer");
    /* bounds past what a long long holds (the fuzzer's find: the cast was undefined) */
    refused("{\"type\":\"integer\",\"minimum\":1e300}", "", "15 digits");
    refused("{\"type\":\"integer\",\"exclusiveMaximum\":-1e300}", "", "15 digits");
    char deep[4096] = "";
    for (int i = 0; i < 100; i++) strcat(deep, "{\"type\":\"array\",\"items\":");
    strcat(deep, "true");
    for (int i = 0; i < 100; i++) strcat(deep, "}");
    json_t *s = json_loads(deep, 0, NULL);
    char *gbnf = NULL, ptr[2048], msg[512];
    cr_assert_eq(schema_to_gbnf(s, &LIM, &gbnf, ptr, sizeof ptr, msg, sizeof msg), -1);
    cr_assert(strstr(msg, "schema_max_depth"), "%s", msg);
    json_decref(s);
}

Test(schema_gbnf, json_object_mode)
{
    eng_grammar *g = NULL;
    const char *t = schema_json_object_gbnf();
    cr_assert_eq(eng_grammar_new(GV, t, strlen(t), NULL, NULL, &g, NULL, 0), ENG_OK);
    YES(g, "{}");
    YES(g, "{\"a\": [1, {\"b\": null}], \"c\": \"\\u00e9\"}");
    NO(g, "[1]");
    NO(g, "\"s\"");
    eng_grammar_release(g);
}

#include "grammar_cache.h"

Test(schema_gbnf, grammar_cache_hits_and_evicts)
{
    eng_grammar_limits lim = eng_grammar_default_limits();
    grammar_cache *gc = grammar_cache_new(V, &lim, 2);
    cr_assert_not_null(gc);
    const char *a = "root ::= \"a\"", *b = "root ::= \"b\"", *c = "root ::= \"c\"";
    eng_grammar *g1, *g2;
    bool hit;
    char err[256];
    cr_assert_eq(grammar_cache_get(gc, a, strlen(a), &g1, &hit, err, sizeof err), ENG_OK);
    cr_assert_not(hit);
    cr_assert_eq(grammar_cache_get(gc, a, strlen(a), &g2, &hit, err, sizeof err), ENG_OK);
    cr_assert(hit);
    cr_assert_eq(g1, g2, "the same compiled grammar");
    eng_grammar_release(g1);
    eng_grammar_release(g2);
    cr_assert_eq(grammar_cache_get(gc, b, strlen(b), &g1, &hit, err, sizeof err), ENG_OK);
    eng_grammar_release(g1);
    cr_assert_eq(grammar_cache_get(gc, c, strlen(c), &g1, &hit, err, sizeof err), ENG_OK); /* evicts a */
    eng_grammar_release(g1);
    cr_assert_eq(grammar_cache_get(gc, a, strlen(a), &g1, &hit, err, sizeof err), ENG_OK);
    cr_assert_not(hit, "the least recently used entry went");
    eng_grammar_release(g1);
    cr_assert_eq(grammar_cache_get(gc, "root ::= x", 10, &g1, &hit, err, sizeof err), ENG_EINVAL);
    cr_assert(strstr(err, "'x'"), "%s", err);
    grammar_cache_free(gc);
}

/* A nested schema walked token by token with a 102k vocabulary: every mask
 * stays within the work bounds (never -2) and allows something until the
 * object is complete, and what the walk wrote is a sentence prefix. */
Test(schema_gbnf, nested_schema_walk_102k_vocab, .timeout = 600)
{
    eng_vocab *v = NULL;
    eng_grammar_vocab *gv = NULL;
    char err[256];
    cr_assert_eq(eng_vocab_load(ORTHOSERVE_TESTDATA "/vocab/ggml-vocab-deepseek-llm.gguf", &v, err, sizeof err), ENG_OK);
    cr_assert_eq(eng_grammar_vocab_new(v, &gv), ENG_OK);
    const char *schema =
        "{\"type\":\"object\",\"properties\":{\"id\":{\"type\":\"string\",\"pattern\":\"^[A-Z]{3}-[0-9]{4}$\"},"
        "\"status\":{\"enum\":[\"active\",\"inactive\"]},\"owner\":{\"type\":\"object\",\"properties\":{\"name\":"
        "{\"type\":\"string\",\"maxLength\":12},\"email\":{\"type\":\"string\",\"format\":\"email\"}},\"required\":"
        "[\"name\"]},\"items\":{\"type\":\"array\",\"maxItems\":3,\"items\":{\"type\":\"object\",\"properties\":{"
        "\"sku\":{\"type\":\"string\",\"maxLength\":6},\"qty\":{\"type\":\"integer\",\"minimum\":1,\"maximum\":99}},"
        "\"required\":[\"sku\",\"qty\"]}}},\"required\":[\"id\",\"status\",\"owner\",\"items\"]}";
    json_t *s = json_loads(schema, 0, NULL);
    char *text = NULL, ptr[256], msg[512];
    cr_assert_eq(schema_to_gbnf(s, &LIM, &text, ptr, sizeof ptr, msg, sizeof msg), 0, "%s", msg);
    json_decref(s);
    eng_grammar *g = NULL;
    cr_assert_eq(eng_grammar_new(gv, text, strlen(text), NULL, NULL, &g, err, sizeof err), ENG_OK, "%s", err);
    int32_t nv = eng_vocab_n_tokens(v);
    uint32_t *bits = calloc(((size_t)nv + 31) / 32, 4);
    uint64_t rs = 7;
    for (int run = 0; run < 3; run++) {
        eng_matcher *m = NULL;
        cr_assert_eq(eng_matcher_new(g, &m), ENG_OK);
        for (int step = 0; step < 80 && eng_matcher_can_continue(m); step++) {
            int32_t n = eng_matcher_mask(m, bits);
            cr_assert_gt(n, 0, "run %d step %d: mask %d", run, step, n);
            int32_t pick = -1, seen = 0;
            for (int32_t t = 0; t < nv; t++) {
                if (!((bits[t >> 5] >> (t & 31)) & 1u) || eng_vocab_is_eog(v, t)) continue;
                rs = rs * 6364136223846793005ULL + 1442695040888963407ULL;
                if ((rs >> 33) % (uint64_t)(++seen) == 0) pick = t;
            }
            if (pick < 0) break;
            cr_assert_eq(eng_matcher_accept(m, pick), ENG_OK);
        }
        eng_matcher_free(m);
    }
    free(bits);
    free(text);
    eng_grammar_release(g);
    eng_grammar_vocab_free(gv);
    eng_vocab_free(v);
}
