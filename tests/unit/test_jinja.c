/*
 * test_jinja.c - the Jinja chat-template interpreter (engine/src/jinja_*.c):
 * the conformance suite of ../shared/testdata/templates (14 real templates x
 * 22 conversations against Python jinja2 in transformers' environment: every
 * string byte for byte, every error an error, raise_exception's text exact),
 * snippets of the semantics the templates rely on (expected text rendered by
 * that same reference), the limits, and the sandbox.
 */
#include "jinja_json.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SUITE ORTHOSERVE_TESTDATA "/templates"
#define FIXED_NOW "2026-01-15 10:30:00"

typedef struct {
    eng_status st;
    char *out;
    size_t len;
    eng_jinja_error err;
} result;

static result render_with(const char *src, size_t len, eng_jinja_vars *v, const eng_jinja_limits *lim)
{
    result r = {0};
    eng_jinja *t = NULL;
    r.st = eng_jinja_parse(src, len, &t, &r.err);
    if (r.st == ENG_OK) r.st = eng_jinja_render(t, v, lim, &r.out, &r.len, &r.err);
    eng_jinja_free(t);
    return r;
}

/* ---- the conformance suite --------------------------------------------------------- */

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    cr_assert(f, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    cr_assert(buf && fread(buf, 1, (size_t)n, f) == (size_t)n);
    fclose(f);
    buf[n] = 0;
    *len = (size_t)n;
    return buf;
}

static void set_all(eng_jinja_vars *v, json_t *obj)
{
    if (json_is_object(obj)) cr_assert_eq(jinja_vars_from_object(v, obj), ENG_OK);
}

/* The render call of the suite's README, in transformers' argument order. */
static eng_jinja_vars *case_vars(json_t *c, json_t *exp)
{
    eng_jinja_vars *v = eng_jinja_vars_new();
    cr_assert(v);
    static const char *const first[] = {"messages", "tools", "documents", "add_generation_prompt"};
    for (size_t i = 0; i < 4; i++)
        cr_assert_eq(eng_jinja_vars_set(v, first[i], jinja_from_json(v, json_object_get(c, first[i]))), ENG_OK);
    set_all(v, json_object_get(exp, "context"));
    set_all(v, json_object_get(c, "kwargs"));
    set_all(v, json_object_get(json_object_get(exp, "case_context"), json_string_value(json_object_get(c, "id"))));
    return v;
}

/* Every case of one template; returns the number that match. */
static int run_template(const char *stem)
{
    char path[512];
    json_error_t je;
    json_t *cases = json_load_file(SUITE "/cases.json", 0, &je);
    cr_assert(cases, "cases.json: %s", je.text);
    snprintf(path, sizeof path, SUITE "/expected/%s.json", stem);
    json_t *exp = json_load_file(path, 0, &je);
    cr_assert(exp, "%s: %s", path, je.text);
    snprintf(path, sizeof path, SUITE "/%s", json_string_value(json_object_get(exp, "template")));
    size_t len;
    char *src = slurp(path, &len);
    eng_jinja *t = NULL;
    eng_jinja_error err;
    cr_assert_eq(eng_jinja_parse(src, len, &t, &err), ENG_OK, "%s: %s", stem, err.msg);
    eng_jinja_limits lim = eng_jinja_default_limits();
    lim.now = FIXED_NOW;
    int ok = 0, n = 0;
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(cases, "cases"), i, c) {
        const char *id = json_string_value(json_object_get(c, "id"));
        json_t *want = json_object_get(json_object_get(exp, "cases"), id);
        eng_jinja_vars *v = case_vars(c, exp);
        char *out = NULL;
        size_t out_len = 0;
        eng_status st = eng_jinja_render(t, v, &lim, &out, &out_len, &err);
        bool match;
        if (json_is_string(want)) {
            match = st == ENG_OK && out_len == json_string_length(want) && !memcmp(out, json_string_value(want), out_len);
        } else {
            bool raised = json_is_true(json_object_get(want, "raised_by_template"));
            match = st == ENG_EINVAL && !out && err.raised == raised &&
                    (!raised || !strcmp(err.msg, json_string_value(json_object_get(want, "error"))));
        }
        if (!match)
            cr_log_error("%s / %s: %s", stem, id, st == ENG_OK ? "the text differs" : err.msg);
        ok += match;
        n++;
        eng_free(out);
        eng_jinja_vars_free(v);
    }
    cr_assert_eq(n, 22);
    eng_jinja_free(t);
    free(src);
    json_decref(exp);
    json_decref(cases);
    return ok;
}

#define CONFORMANCE(name, stem) \
    Test(jinja_conformance, name, .timeout = 60) { cr_assert_eq(run_template(stem), 22, "%s", stem); }

CONFORMANCE(qwen25, "Qwen-Qwen2.5-7B-Instruct")
CONFORMANCE(qwen3, "Qwen-Qwen3-0.6B")
CONFORMANCE(llama31, "meta-llama-Llama-3.1-8B-Instruct")
CONFORMANCE(llama32, "meta-llama-Llama-3.2-3B-Instruct")
CONFORMANCE(mistral_nemo, "mistralai-Mistral-Nemo-Instruct-2407")
CONFORMANCE(mistral_small32, "Mistral-Small-3.2-24B-Instruct-2506")
CONFORMANCE(gemma2, "google-gemma-2-2b-it")
CONFORMANCE(phi35, "microsoft-Phi-3.5-mini-instruct")
CONFORMANCE(smollm3, "HuggingFaceTB-SmolLM3-3B")
CONFORMANCE(hermes3, "NousResearch-Hermes-3-Llama-3.1-8B-tool_use")
CONFORMANCE(granite33, "ibm-granite-granite-3.3-2B-Instruct")
CONFORMANCE(deepseek_r1, "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B")
CONFORMANCE(qwen3_coder, "Qwen3-Coder")
CONFORMANCE(functionary32, "meetkai-functionary-medium-v3.2")

/* ---- semantics: snippets with the reference's rendering ---------------------------- */

/* want NULL: the reference fails; then raised, when not NULL, is the text of
 * the template's raise_exception. Generated by rendering each src with
 * Python jinja2 3.1 in the suite's environment over SNIPPET_VARS. */
static const struct {
    const char *name, *src, *want, *raised;
} SNIPPETS[] = {
    {"trim_blocks_lstrip", "a\n  {# comment #}\nb\n    {%- if true %} c {% endif -%}\n  d  {% if true %}e{% endif %}  \n\t{% if true %}tab{% endif %}\n{%+ if true %}plus{% endif %}\n{{- \"x\" -}}\n   y", "a\nb c d  e  \ntabplusxy", NULL},
    {"block_newlines", "{%- for i in [1,2] %}\n  item {{ i }}\n{%- endfor %}\n\ndone", "  item 1  item 2\ndone", NULL},
    {"trailing_newline_dropped", "{{ \"a\" }}\n{{ \"b\" }}", "a\nb", NULL},
    {"python_str", "{{ [none, t, 1.0, \"it's\", 'say \"hi\"', \"\303\251\\n\"] }}{{ d }}{{ (1,) }}{{ (1, 2) }}{{ none }}{{ t }}", "[None, True, 1.0, \"it's\", 'say \"hi\"', '\303\251\\n']{'b': 1, 'a': [1, 'x'], 'c': None}(1,)(1, 2)NoneTrue", NULL},
    {"python_float_repr", "{{ f }}{{ 1/3 }}{{ 10/2 }}{{ 1e20 }}{{ 0.0001 }}{{ 0.00001 }}{{ 1e16 }}{{ 1e15 }}{{ 0.1 + 0.2 }}{{ -0.0 }}", "2.50.33333333333333335.01e+200.00011e-051e+161000000000000000.00.30000000000000004-0.0", NULL},
    {"integer_arithmetic", "{{ 7//2 }} {{ -7//2 }} {{ -7%3 }} {{ 2**10 }} {{ 1 + true }} {{ \"ab\" * 3 }} {{ [1] * 2 }} {{ l + [9] }}", "3 -4 2 1024 2 ababab [1, 1] [3, 1, 2, 9]", NULL},
    {"tojson_plain_and_indent", "{{ d|tojson }}|{{ u|tojson }}|{{ {\"a\": {\"b\": {}}, \"c\": [], \"d\": [1, 2.50]}|tojson(indent=2) }}|{{ \"</x>&'\"|tojson }}", "{\"b\": 1, \"a\": [1, \"x\"], \"c\": null}|\"Z\303\274rich \346\235\261\344\272\254 ' \\\"\"|{\n  \"a\": {\n    \"b\": {}\n  },\n  \"c\": [],\n  \"d\": [\n    1,\n    2.5\n  ]\n}|\"</x>&'\"", NULL},
    {"tojson_sort_separators", "{{ d|tojson(sort_keys=true) }}{{ [1, 2]|tojson(separators=(\",\", \":\")) }}", "{\"a\": [1, \"x\"], \"b\": 1, \"c\": null}[1,2]", NULL},
    {"slices_and_indices", "{{ l[::-1] }}{{ l[1:] }}{{ l[-1] }}{{ l[5] is defined }}{{ s[1:4] }}{{ u[0:3] }}{{ u[-2:] }}{{ u[::-1] }}{{ l[:-1] }}", "[2, 1, 3][1, 2]2FalseellZ\303\274r \"\" ' \344\272\254\346\235\261 hcir\303\274Z[3, 1]", NULL},
    {"loop_variables", "{% for x in l %}{{ loop.index }}{{ loop.index0 }}{{ loop.first }}{{ loop.last }}{{ loop.previtem }}{{ loop.nextitem }}{{ loop.revindex }}{{ loop.length }};{% endfor %}", "10TrueFalse133;21FalseFalse3223;32FalseTrue113;", NULL},
    {"loop_scoping", "{% set x = 1 %}{% for i in l %}{% set x = i %}{{ x }}{% endfor %}{{ x }}{% if true %}{% set y = 2 %}{% endif %}{{ y }}", "31212", NULL},
    {"namespace_accumulates", "{% set ns = namespace(a=0, seen=false) %}{% for i in l %}{% set ns.a = ns.a + i %}{% endfor %}{{ ns.a }}{{ ns.seen }}", "6False", NULL},
    {"loop_filter_else_break_continue", "{% for x in l if x > 1 %}{{ x }}{{ loop.index }}{{ loop.length }}{% else %}none{% endfor %}{% for x in [] %}a{% else %}empty{% endfor %}{% for i in l %}{% if i == 1 %}{% continue %}{% endif %}{% if i == 2 %}{% break %}{% endif %}{{ i }}{% endfor %}", "312222empty3", NULL},
    {"macros", "{% macro m(a, b=2) %}[{{ a }}{{ b }}]{% endmacro %}{{ m(1) }}{{ m(1, 3) }}{{ m(b=5, a=0) }}{% set z = m(\"q\") %}{{ z|length }}{%- macro rec(n) -%}{%- if n > 0 -%}{{ n }}{{ rec(n - 1) }}{%- endif -%}{%- endmacro -%}{{ rec(3) }}", "[12][13][05]4321", NULL},
    {"macro_resolved_at_call_time", "{% macro later() %}{{ below() }}{% endmacro %}{% macro below() %}ok{% endmacro %}{{ later() }}", "ok", NULL},
    {"undefined_semantics", "{{ nothing }}|{{ nothing is defined }}|{{ d.zz is defined }}|{{ d.zz }}|{{ none.attr }}|{{ l.attr }}|{{ nothing|length }}|{% for x in nothing %}x{% endfor %}|{{ \"a\" ~ nothing }}|{{ nothing is iterable }}", "|False|False||||0||a|True", NULL},
    {"tests", "{{ d.b is number }}{{ d is mapping }}{{ s is iterable }}{{ 1 is iterable }}{{ s is sequence }}{{ d is sequence }}{{ none is none }}{{ t is true }}{{ 1 is true }}{{ 1 is boolean }}{{ 5 is odd }}{{ 6 is divisibleby 3 }}{{ s is string }}{{ n is not string }}{{ none is false }}", "TrueTrueTrueFalseTrueTrueTrueTrueFalseFalseTrueTrueTrueTrueFalse", NULL},
    {"operators_in_and_or", "{{ \"b\" in d }}{{ 1 in l }}{{ \"ell\" in s }}{{ \"q\" not in s }}{{ n and s }}{{ e or \"dflt\" }}{{ none or 0 }}{{ not n }}{{ 1 == 1.0 }}{{ (1, 2) == [1, 2] }}{{ 1 < 2 < 3 }}{{ 3 > 2 > 2 }}", "TrueTrueTrueTrueHello, Worlddflt0FalseTrueFalseTrueFalse", NULL},
    {"precedence", "{{ -2 ** 2 }} {{ 2 * 3 + 1 }} {{ \"a\" ~ 1 + 2 }} {{ 10 - 2 - 3 }} {{ \"x\" + \"y\"|upper }} {{ -l|length }} {{ \"x\" if n > 3 else \"y\" }}", NULL, NULL}, /* TypeError */
    {"string_methods", "{{ s.split(\",\") }}{{ \"  a  b \".split() }}{{ \"a,b,,c\".split(\",\") }}{{ \"  x y  \".split(none, 1) }}{{ s.lower() }}{{ s.upper() }}{{ \"hello world\".title() }}{{ \"xxhixx\".strip(\"x\") }}{{ \"abc\".lstrip(\"a\") }}{{ \"abc\".rstrip(\"c\") }}{{ \"a-b-c\".replace(\"-\", \"+\") }}{{ \"abc\".startswith(\"ab\") }}{{ \"abc\".endswith((\"x\", \"c\")) }}{{ s.find(\"o\") }}{{ s.count(\"l\") }}", "['Hello', ' World']['a', 'b']['a', 'b', '', 'c']['x', 'y  ']hello, worldHELLO, WORLDHello Worldhibcaba+b+cTrueTrue43", NULL},
    {"dict_methods", "{{ d.get(\"b\") }}{{ d.get(\"zz\", \"dflt\") }}{{ d.keys()|list }}{{ d.values()|list }}{{ d.items()|list }}{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}", "1dflt['b', 'a', 'c'][1, [1, 'x'], None][('b', 1), ('a', [1, 'x']), ('c', None)]b=1;a=[1, 'x'];c=None;", NULL},
    {"filters_sequences", "{{ msgs|selectattr(\"role\", \"equalto\", \"user\")|list }}{{ msgs|map(attribute=\"role\")|join(\",\") }}{{ msgs|rejectattr(\"tool_calls\", \"defined\")|list|length }}{{ [\"a\", \"A\", \"b\"]|unique|list }}{{ msgs|map(attribute=\"content\")|map(\"upper\")|list }}{{ l|sort }}{{ l|reverse|list }}{{ l|first }}{{ l|last }}{{ l|sum }}{{ l|min }}{{ l|max }}{{ d|dictsort }}{{ d|items|list }}", "[{'role': 'user', 'content': 'hi'}]user,assistant1['a', 'b']['HI', 'YO'][1, 2, 3][2, 1, 3]32613[('a', [1, 'x']), ('b', 1), ('c', None)][('b', 1), ('a', [1, 'x']), ('c', None)]", NULL},
    {"filters_text", "{{ \"  x\\n \"|trim }}{{ \"a-b-c\"|replace(\"-\", \"\", 1) }}{{ u|length }}{{ \"3\"|int + 1 }}{{ \"x\"|int }}{{ \"2.5\"|float }}{{ e|default(\"D\") }}{{ zz|default(\"D\") }}{{ e|default(\"D\", true) }}{{ \"<a&b>\"|e }}{{ \"l1\\nl2\\n\\nl3\"|indent(2) }}{{ n|string }}{{ d|string }}{{ s|wordcount }}", "xab-c13402.5DD&lt;a&amp;b&gt;l1\n  l2\n\n  l35{'b': 1, 'a': [1, 'x'], 'c': None}2", NULL},
    {"string_escapes", "{{ \"\\n\\t\\\\ \\x41 \\u00e9 \\101\" }}{{ 'it\\'s' }}{{ \"a\" \"b\" }}", "\n\t\\ A \303\251 Ait'sab", NULL},
    {"block_set_and_filter_block", "{% set x %}inner {{ n }}{% endset %}[{{ x }}]{% filter upper %}abc{{ s }}{% endfilter %}{% raw %}{{ kept }}{% endraw %}", "[inner 5]ABCHELLO, WORLD{{ kept }}", NULL},
    {"strftime_now_fixed", "{{ strftime_now(\"%d %b %Y\") }} {{ strftime_now(\"%B %d, %Y %A %H:%M\") }}", "15 Jan 2026 January 15, 2026 Thursday 10:30", NULL},
    {"raise_exception", "{% if n > 1 %}{{ raise_exception(\"n is \" ~ n) }}{% endif %}", NULL, "n is 5"},
    {"error_str_plus_int", "{{ \"a\" + 1 }}", NULL, NULL}, /* TypeError */
    {"error_attr_of_undefined", "{{ nothing.attr }}", NULL, NULL}, /* UndefinedError */
    {"error_iterate_none", "{% for x in none %}{% endfor %}", NULL, NULL}, /* TypeError */
    {"error_call_undefined", "{{ nothing() }}", NULL, NULL}, /* UndefinedError */
    {"percent_format", "{{ \"%s-%s\"|format(1, 2) }}{{ \"%5.1f|%-4d|%03d|%x|%r|%%\"|format(3.14159, 7, 5, 255, \"a\") }}{{ \"%s: %d\" % (\"n\", 3) }}{{ \"%10s|\" % \"hi\" }}", "1-2  3.1|7   |005|ff|'a'|%n: 3        hi|", NULL},
    {"raw_with_whitespace_control", "{%- raw -%}\n  {{ x }}\n{%- endraw -%}\n  y", "{{ x }}y", NULL},
    {"unicode_case", "{{ \"Z\303\274rich \303\211COLE \303\277 \305\270\"|upper }}|{{ \"\303\200\303\211\303\216\303\225\303\234 \316\251\316\274\316\255\316\263\316\261 \320\237\320\240\320\230\320\222\320\225\320\242 \320\201\320\266\"|lower }}|{{ \"\303\251lan vital-\303\274ber (\303\261u) it's\"|title }}|{{ \"hello wORLD it's\"|title }}|{{ \"it's o'neil\".title() }}\n", "Z\303\234RICH \303\211COLE \305\270 \305\270|\303\240\303\251\303\256\303\265\303\274 \317\211\316\274\316\255\316\263\316\261 \320\277\321\200\320\270\320\262\320\265\321\202 \321\221\320\266|\303\211lan Vital-\303\234ber (\303\221u) It's|Hello World It's|It'S O'Neil", NULL},
};

static const char SNIPPET_VARS[] = "{\"s\": \"Hello, World\", \"n\": 5, \"f\": 2.5, \"l\": [3, 1, 2], \"d\": {\"b\": 1, \"a\": [1, \"x\"], \"c\": null}, \"u\": \"Zürich 東京 ' \\\"\", \"e\": \"\", \"none\": null, \"t\": true,  \"msgs\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\", \"tool_calls\": [{\"function\": {\"name\": \"f\", \"arguments\": {\"x\": 1}}}]}]}";

Test(jinja, snippets_match_reference)
{
    json_error_t je;
    json_t *vars = json_loads(SNIPPET_VARS, 0, &je);
    cr_assert(vars, "%s", je.text);
    eng_jinja_limits lim = eng_jinja_default_limits();
    lim.now = FIXED_NOW;
    int bad = 0;
    for (size_t i = 0; i < sizeof SNIPPETS / sizeof *SNIPPETS; i++) {
        eng_jinja_vars *v = eng_jinja_vars_new();
        cr_assert_eq(jinja_vars_from_object(v, vars), ENG_OK);
        result r = render_with(SNIPPETS[i].src, strlen(SNIPPETS[i].src), v, &lim);
        bool ok;
        if (SNIPPETS[i].want)
            ok = r.st == ENG_OK && r.len == strlen(SNIPPETS[i].want) && !memcmp(r.out, SNIPPETS[i].want, r.len);
        else
            ok = r.st != ENG_OK && (!SNIPPETS[i].raised || (r.err.raised && !strcmp(r.err.msg, SNIPPETS[i].raised)));
        if (!ok) {
            cr_log_error("%s: got %s%s", SNIPPETS[i].name, r.out ? r.out : "error: ", r.out ? "" : r.err.msg);
            bad++;
        }
        eng_free(r.out);
        eng_jinja_vars_free(v);
    }
    json_decref(vars);
    cr_assert_eq(bad, 0);
}

/* ---- untrusted templates: limits, syntax errors, the sandbox ----------------------- */

static result render_src(const char *src, const eng_jinja_limits *lim)
{
    return render_with(src, strlen(src), NULL, lim);
}

static void expect_error(const char *src, const eng_jinja_limits *lim, const char *needle)
{
    result r = render_src(src, lim);
    cr_assert_neq(r.st, ENG_OK, "%s rendered", src);
    cr_assert_null(r.out);
    cr_assert(strstr(r.err.msg, needle), "%s: '%s' lacks '%s'", src, r.err.msg, needle);
    cr_assert_not(r.err.raised);
}

Test(jinja, recursion_is_bounded, .timeout = 30)
{
    expect_error("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", NULL, "recursion limit");
}

Test(jinja, steps_are_bounded, .timeout = 30)
{
    eng_jinja_limits lim = eng_jinja_default_limits();
    lim.max_steps = 10000;
    expect_error("{% for i in range(1000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}", &lim, "step limit");
}

Test(jinja, time_is_bounded, .timeout = 30)
{
    eng_jinja_limits lim = eng_jinja_default_limits();
    lim.max_steps = UINT64_MAX;
    lim.max_memory = (size_t)1 << 30; /* the time limit, not memory, must stop it on any machine */
    lim.max_ms = 50;
    /* one list walked 10^10 times: next to nothing allocated per iteration */
    expect_error("{% set r = range(100000) %}{% for i in r %}{% for j in r %}{% endfor %}{% endfor %}", &lim,
                 "time limit");
}

Test(jinja, output_is_bounded, .timeout = 30)
{
    eng_jinja_limits lim = eng_jinja_default_limits();
    lim.max_output = 1 << 20;
    expect_error("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}", &lim, "output limit");
    /* the same through macro output captured as strings */
    expect_error("{% macro m() %}{% for i in range(100000) %}0123456789{% endfor %}{% endmacro %}"
                 "{% for i in range(100) %}{% set s = m() %}{% endfor %}", &lim, "limit");
}

Test(jinja, memory_is_bounded, .timeout = 30)
{
    eng_jinja_limits lim = eng_jinja_default_limits();
    lim.max_memory = 8 << 20;
    expect_error("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
                 &lim, "memory limit");
}

Test(jinja, syntax_errors_are_refused)
{
    static const char *const bad[] = {
        "{{ a ", "{% if x %}", "{% for %}", "{% endif %}", "{{ 'abc }}", "{# open", "{{ a + }}",
        "{% include 'x.jinja' %}", "{% extends 'base' %}", "{% import 'm' as m %}", "{{ (((((a }}",
        "{% raw %}never closed", "{{ 99999999999999999999 }}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        eng_jinja *t = NULL;
        eng_jinja_error err;
        cr_assert_eq(eng_jinja_parse(bad[i], strlen(bad[i]), &t, &err), ENG_EFORMAT, "%s parsed", bad[i]);
        cr_assert_null(t);
        cr_assert(strstr(err.msg, "TemplateSyntaxError"), "%s: %s", bad[i], err.msg);
    }
}

Test(jinja, deep_nesting_is_refused_not_overflowed)
{
    size_t n = 100000;
    char *src = malloc(2 * n + 16);
    cr_assert(src);
    strcpy(src, "{{ ");
    memset(src + 3, '(', n);
    src[3 + n] = '1';
    memset(src + 4 + n, ')', n);
    strcpy(src + 4 + 2 * n, " }}");
    eng_jinja *t = NULL;
    eng_jinja_error err;
    cr_assert_eq(eng_jinja_parse(src, strlen(src), &t, &err), ENG_EFORMAT);
    cr_assert(strstr(err.msg, "nested too deeply"), "%s", err.msg);
    free(src);
}

Test(jinja, sandbox_reaches_nothing_outside)
{
    /* Python internals are not attributes of our values; there is no file,
     * environment or module access to name. */
    result r = render_src("{{ ''.__class__ }}{{ cycler }}{{ lipsum }}{{ self }}{{ config }}{{ request }}|"
                          "{{ range.__globals__ is defined }}{{ namespace.__init__ is defined }}",
                          NULL);
    cr_assert_eq(r.st, ENG_OK, "%s", r.err.msg);
    cr_assert_str_eq(r.out, "|FalseFalse");
    eng_free(r.out);
    /* the modifying methods of the immutable sandbox are not there */
    expect_error("{% set l = [1] %}{{ l.append(2) }}", NULL, "UndefinedError");
    expect_error("{% set d = {} %}{{ d.update({'a': 1}) }}", NULL, "UndefinedError");
}

Test(jinja, raise_exception_text_is_exact)
{
    result r = render_src("before{{ raise_exception('Conversation roles must alternate ' ~ 1) }}after", NULL);
    cr_assert_eq(r.st, ENG_EINVAL);
    cr_assert(r.err.raised);
    cr_assert_str_eq(r.err.msg, "Conversation roles must alternate 1");
    cr_assert_null(r.out);
}

Test(jinja, bad_fixed_time_is_refused)
{
    eng_jinja_limits lim = eng_jinja_default_limits();
    lim.now = "15 Jan 2026";
    result r = render_src("x", &lim);
    cr_assert_eq(r.st, ENG_EINVAL);
}

Test(jinja, parsed_template_renders_again_identically)
{
    static const char src[] = "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}"
                              "{{ m.role }}:{{ m.content }};{% endfor %}{{ ns.n }}";
    eng_jinja *t = NULL;
    cr_assert_eq(eng_jinja_parse(src, strlen(src), &t, NULL), ENG_OK);
    eng_jinja_vars *v = eng_jinja_vars_new();
    eng_jinja_val *msgs = eng_jinja_list(v), *m = eng_jinja_dict(v);
    cr_assert_eq(eng_jinja_dict_set(v, m, "role", 4, eng_jinja_str(v, "user", 4)), ENG_OK);
    cr_assert_eq(eng_jinja_dict_set(v, m, "content", 7, eng_jinja_str(v, "hi", 2)), ENG_OK);
    cr_assert_eq(eng_jinja_list_push(v, msgs, m), ENG_OK);
    cr_assert_eq(eng_jinja_list_push(v, msgs, m), ENG_OK);
    cr_assert_eq(eng_jinja_vars_set(v, "messages", msgs), ENG_OK);
    for (int k = 0; k < 3; k++) {
        char *out = NULL;
        size_t n = 0;
        cr_assert_eq(eng_jinja_render(t, v, NULL, &out, &n, NULL), ENG_OK);
        cr_assert_str_eq(out, "user:hi;user:hi;2");
        eng_free(out);
    }
    cr_assert_eq(eng_jinja_list_push(v, NULL, m), ENG_ENOMEM);
    eng_jinja_vars_free(v);
    eng_jinja_free(t);
}
