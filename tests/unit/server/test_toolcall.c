/*
 * test_toolcall.c - server/toolcall.c: each family's call format parsed
 * complete, while streaming (every prefix of a reply), and malformed (plain
 * content, never an error); think blocks; detection from the suite's real
 * templates.
 */
#include "toolcall.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DS(x) "<\xef\xbd\x9ctool\xe2\x96\x81" x "\xef\xbd\x9c>"

static tc_result parse(tc_format f, const char *text, bool partial)
{
    tc_opts o = {.fmt = f, .id_seed = 42};
    tc_result r;
    cr_assert_eq(tc_parse(&o, text, strlen(text), partial, &r), 0);
    return r;
}

static void expect_calls(tc_format f, const char *text, const char *content, size_t n, const char *const *names,
                         const char *const *args)
{
    tc_result r = parse(f, text, false);
    cr_assert_str_eq(r.content, content, "%s: content '%s'", tc_format_name(f), r.content);
    cr_assert_eq(r.n_calls, n, "%s: %zu calls", tc_format_name(f), r.n_calls);
    for (size_t k = 0; k < n; k++) {
        cr_assert_str_eq(r.calls[k].name, names[k]);
        cr_assert_str_eq(r.calls[k].arguments, args[k], "%s: %s", tc_format_name(f), r.calls[k].arguments);
        cr_assert_eq(strlen(r.calls[k].id), 29);
        cr_assert(!strncmp(r.calls[k].id, "call_", 5));
        if (k) cr_assert_str_neq(r.calls[k].id, r.calls[k - 1].id);
    }
    cr_assert_not(r.pending);
    tc_result_free(&r);
}

static const char *const W[] = {"get_weather", "search_files"};
static const char *const A[] = {"{\"city\":\"Paris\",\"unit\":\"celsius\"}", "{\"query\":\"trip\",\"max\":3}"};

/* Per format: a reply with text and two calls, its content, and a broken one. */
static const struct {
    tc_format f;
    const char *reply, *content, *broken;
} REPLIES[] = {
    {TC_HERMES,
     "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"celsius\"}}\n</tool_call>\n"
     "<tool_call>\n{\"name\": \"search_files\", \"arguments\": \"{\\\"query\\\": \\\"trip\\\", \\\"max\\\": 3}\"}\n</tool_call>",
     "Let me check.", "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": }\n</tool_call>"},
    {TC_QWEN3_CODER,
     "Let me check.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=unit>\ncelsius\n"
     "</parameter>\n</function>\n</tool_call>\n<tool_call>\n<function=search_files>\n<parameter=query>\ntrip\n</parameter>\n"
     "<parameter=max>\n3\n</parameter>\n</function>\n</tool_call>",
     "Let me check.", "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</tool_call>"},
    {TC_MISTRAL,
     "Let me check.[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"celsius\"}, \"id\": \"a1b2c3d4e\"}, "
     "{\"name\": \"search_files\", \"arguments\": {\"query\": \"trip\", \"max\": 3}}]",
     "Let me check.", "[TOOL_CALLS][{\"name\": 5, \"arguments\": {}}]"},
    {TC_MISTRAL_ARGS,
     "Let me check.[TOOL_CALLS]get_weather[CALL_ID]a1b2c3d4e[ARGS]{\"city\": \"Paris\", \"unit\": \"celsius\"}"
     "[TOOL_CALLS]search_files[ARGS]{\"query\": \"trip\", \"max\": 3}",
     "Let me check.", "[TOOL_CALLS]get_weather[ARGS][1, 2]"},
    {TC_GRANITE,
     "Let me check.<|tool_call|>[{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"celsius\"}}, "
     "{\"name\": \"search_files\", \"arguments\": {\"query\": \"trip\", \"max\": 3}}]",
     "Let me check.", "<|tool_call|>[{\"arguments\": {}}]"},
    {TC_DEEPSEEK,
     "Let me check." DS("calls\xe2\x96\x81" "begin") DS("call\xe2\x96\x81" "begin") "function" DS("sep")
     "get_weather\n```json\n{\"city\": \"Paris\", \"unit\": \"celsius\"}\n```" DS("call\xe2\x96\x81" "end") "\n"
     DS("call\xe2\x96\x81" "begin") "function" DS("sep") "search_files\n```json\n{\"query\": \"trip\", \"max\": 3}\n```"
     DS("call\xe2\x96\x81" "end") DS("calls\xe2\x96\x81" "end"),
     "Let me check.", DS("calls\xe2\x96\x81" "begin") DS("call\xe2\x96\x81" "begin") "function" DS("sep") "f\n```json\n{oops}\n```"
     DS("call\xe2\x96\x81" "end") DS("calls\xe2\x96\x81" "end")},
    {TC_FUNCTIONARY,
     "all\nLet me check.>>>get_weather\n{\"city\": \"Paris\", \"unit\": \"celsius\"}>>>search_files\n{\"query\": \"trip\", \"max\": 3}",
     "Let me check.", "get_weather\n{\"city\": Paris}"},
};

Test(toolcall, complete_replies_of_every_format)
{
    for (size_t i = 0; i < sizeof REPLIES / sizeof *REPLIES; i++)
        expect_calls(REPLIES[i].f, REPLIES[i].reply, REPLIES[i].content, 2, W, A);
}

Test(toolcall, llama3_json_reply_and_python_tag)
{
    expect_calls(TC_LLAMA3, " {\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\", \"unit\": \"celsius\"}}", "", 1, W, A);
    expect_calls(TC_LLAMA3, "<|python_tag|>{\"type\": \"function\", \"name\": \"get_weather\", \"parameters\": "
                 "{\"city\": \"Paris\", \"unit\": \"celsius\"}}", "", 1, W, A);
    expect_calls(TC_LLAMA3, "{\"answer\": 42}", "{\"answer\": 42}", 0, NULL, NULL);
    expect_calls(TC_LLAMA3, "Plain text.", "Plain text.", 0, NULL, NULL);
}

Test(toolcall, malformed_calls_are_plain_content)
{
    for (size_t i = 0; i < sizeof REPLIES / sizeof *REPLIES; i++) {
        tc_result r = parse(REPLIES[i].f, REPLIES[i].broken, false);
        cr_assert_eq(r.n_calls, 0, "%s", tc_format_name(REPLIES[i].f));
        cr_assert_str_eq(r.content, REPLIES[i].broken, "%s: %s", tc_format_name(REPLIES[i].f), r.content);
        tc_result_free(&r);
        /* cut short at the end of generation inside the second call: that
         * call is plain content; the first stays a call where calls are
         * framed one by one (a stream has sent it), not in one JSON list */
        tc_format f = REPLIES[i].f;
        const char *text = REPLIES[i].reply;
        size_t n = strlen(text) - 3;
        tc_opts o = {.fmt = f};
        cr_assert_eq(tc_parse(&o, text, n, false, &r), 0);
        bool keeps = f != TC_MISTRAL && f != TC_GRANITE;
        /* DeepSeek: cut inside the closing marker, both calls are complete */
        cr_assert_eq(r.n_calls, f == TC_DEEPSEEK ? 2 : keeps ? 1 : 0, "%s: %zu calls", tc_format_name(f), r.n_calls);
        if (keeps) {
            cr_assert_str_eq(r.calls[0].name, W[0]);
            cr_assert_str_eq(r.calls[0].arguments, A[0]);
            size_t cl = strlen(r.content);
            cr_assert(!strncmp(r.content, "Let me check.", 13) && cl < n && !memcmp(r.content + cl - 8, text + n - 8, 8),
                      "%s: '%s'", tc_format_name(f), r.content);
        } else {
            cr_assert_eq(strlen(r.content), n);
        }
        tc_result_free(&r);
    }
}

/* Streaming: at every prefix, the content released is a prefix of the final
 * content (up to whitespace the final trims), calls only appear complete and
 * equal to the final ones, and nothing is pending at the end. */
Test(toolcall, every_prefix_while_streaming)
{
    for (size_t i = 0; i < sizeof REPLIES / sizeof *REPLIES; i++) {
        tc_opts o = {.fmt = REPLIES[i].f, .id_seed = 7};
        tc_result fin;
        const char *text = REPLIES[i].reply;
        size_t n = strlen(text);
        cr_assert_eq(tc_parse(&o, text, n, false, &fin), 0);
        size_t max_calls = 0;
        for (size_t k = 0; k <= n; k++) {
            tc_result r;
            cr_assert_eq(tc_parse(&o, text, k, true, &r), 0);
            size_t cl = strlen(r.content);
            while (cl && strchr(" \n", r.content[cl - 1])) cl--;
            cr_assert(cl <= strlen(fin.content) && !memcmp(r.content, fin.content, cl),
                      "%s prefix %zu: content '%s' vs final '%s'", tc_format_name(o.fmt), k, r.content, fin.content);
            cr_assert_leq(r.n_calls, fin.n_calls);
            cr_assert_geq(r.n_calls, max_calls, "%s prefix %zu: calls went back", tc_format_name(o.fmt), k);
            max_calls = r.n_calls;
            for (size_t c = 0; c < r.n_calls; c++) {
                cr_assert_str_eq(r.calls[c].name, fin.calls[c].name);
                cr_assert_str_eq(r.calls[c].arguments, fin.calls[c].arguments);
                cr_assert_str_eq(r.calls[c].id, fin.calls[c].id);
            }
            if (k == n) cr_assert_not(r.pending, "%s", tc_format_name(o.fmt));
            tc_result_free(&r);
        }
        tc_result_free(&fin);
    }
}

Test(toolcall, marker_prefix_is_held_back)
{
    tc_result r = parse(TC_HERMES, "Sure <tool_", true);
    cr_assert_str_eq(r.content, "Sure ");
    cr_assert(r.pending);
    tc_result_free(&r);
    r = parse(TC_HERMES, "Sure <tool_", false);
    cr_assert_str_eq(r.content, "Sure <tool_");
    cr_assert_not(r.pending);
    tc_result_free(&r);
    r = parse(TC_HERMES, "Done.\n<tool_call>\n{\"name\": \"get_we", true);
    cr_assert_str_eq(r.content, "Done.\n");
    cr_assert(r.pending);
    cr_assert_eq(r.n_calls, 0);
    tc_result_free(&r);
}

Test(toolcall, think_blocks_are_reasoning)
{
    tc_opts o = {.fmt = TC_HERMES, .thinking = true};
    tc_result r;
    const char *t = "<think>\nThe user wants weather.\n</think>\n\nChecking.<tool_call>{\"name\": \"get_weather\", "
                    "\"arguments\": {\"city\": \"Paris\"}}</tool_call>";
    cr_assert_eq(tc_parse(&o, t, strlen(t), false, &r), 0);
    cr_assert_str_eq(r.reasoning, "The user wants weather.");
    cr_assert_str_eq(r.content, "Checking.");
    cr_assert_eq(r.n_calls, 1);
    tc_result_free(&r);
    /* still thinking */
    cr_assert_eq(tc_parse(&o, t, 20, true, &r), 0);
    cr_assert_str_eq(r.reasoning, "The user wan");
    cr_assert_str_eq(r.content, "");
    cr_assert(r.pending);
    tc_result_free(&r);
    /* DeepSeek-R1: the prompt opened the block */
    tc_opts ds = {.fmt = TC_DEEPSEEK, .thinking = true, .think_open = true};
    t = "Hmm, easy.\n</think>\n\nThe answer is 4.";
    cr_assert_eq(tc_parse(&ds, t, strlen(t), false, &r), 0);
    cr_assert_str_eq(r.reasoning, "Hmm, easy.");
    cr_assert_str_eq(r.content, "The answer is 4.");
    tc_result_free(&r);
    /* no think block at all */
    cr_assert_eq(tc_parse(&o, "Just text.", 10, false, &r), 0);
    cr_assert_null(r.reasoning);
    cr_assert_str_eq(r.content, "Just text.");
    tc_result_free(&r);
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    cr_assert(f, "%s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    cr_assert(b && fread(b, 1, (size_t)n, f) == (size_t)n);
    b[n] = 0;
    fclose(f);
    return b;
}

Test(toolcall, detected_from_the_suites_templates)
{
    static const struct { const char *stem; tc_format f; bool think; } T[] = {
        {"Qwen-Qwen2.5-7B-Instruct", TC_HERMES, false},
        {"Qwen-Qwen3-0.6B", TC_HERMES, true},
        {"Qwen3-Coder", TC_QWEN3_CODER, false},
        {"NousResearch-Hermes-3-Llama-3.1-8B-tool_use", TC_HERMES, false},
        {"meta-llama-Llama-3.1-8B-Instruct", TC_LLAMA3, false},
        {"meta-llama-Llama-3.2-3B-Instruct", TC_LLAMA3, false},
        {"mistralai-Mistral-Nemo-Instruct-2407", TC_MISTRAL, false},
        {"Mistral-Small-3.2-24B-Instruct-2506", TC_MISTRAL_ARGS, false},
        {"ibm-granite-granite-3.3-2B-Instruct", TC_GRANITE, true},
        {"meetkai-functionary-medium-v3.2", TC_FUNCTIONARY, false},
        {"deepseek-ai-DeepSeek-R1-Distill-Qwen-32B", TC_DEEPSEEK, true},
        {"google-gemma-2-2b-it", TC_NONE, false},
        {"microsoft-Phi-3.5-mini-instruct", TC_NONE, false},
    };
    for (size_t i = 0; i < sizeof T / sizeof *T; i++) {
        char path[512];
        snprintf(path, sizeof path, ORTHOSERVE_TESTDATA "/templates/%s.jinja", T[i].stem);
        char *src = slurp(path);
        cr_assert_eq(tc_detect(src), T[i].f, "%s: %s", T[i].stem, tc_format_name(tc_detect(src)));
        cr_assert_eq(tc_detect_thinking(src), T[i].think, "%s", T[i].stem);
        free(src);
    }
    cr_assert_eq(tc_detect(NULL), TC_NONE);
}

Test(toolcall, no_format_is_all_content)
{
    tc_result r = parse(TC_NONE, "<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>", false);
    cr_assert_eq(r.n_calls, 0);
    cr_assert_str_eq(r.content, "<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>");
    tc_result_free(&r);
}
