/*
 * test_tc_stream.c - server/tc_stream.c: a reply pushed in pieces of every
 * size gives deltas whose concatenation is the whole reply's parse (content,
 * reasoning, the calls in order, each once); parallel_tool_calls false
 * keeps one call; a malformed call is released as content at the end.
 */
#include "tc_stream.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#define DS(x) "<\xef\xbd\x9ctool\xe2\x96\x81" x "\xef\xbd\x9c>"

static const struct {
    tc_opts o;
    const char *reply;
} R[] = {
    {{.fmt = TC_HERMES, .id_seed = 1},
     "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n"
     "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"tz\": \"CET\"}}\n</tool_call>"},
    {{.fmt = TC_HERMES, .thinking = true, .id_seed = 2},
     "<think>\nThe user wants the weather.\nSo I call it.\n</think>\n\n<tool_call>\n{\"name\": \"get_weather\", "
     "\"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"},
    {{.fmt = TC_NONE, .thinking = true, .think_open = true, .id_seed = 3}, "Hmm, 2+2.\n</think>\n\nIt is 4."},
    {{.fmt = TC_LLAMA3, .id_seed = 4}, "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}"},
    {{.fmt = TC_DEEPSEEK, .id_seed = 5},
     "Checking." DS("calls\xe2\x96\x81" "begin") DS("call\xe2\x96\x81" "begin") "function" DS("sep")
     "get_weather\n```json\n{\"city\": \"Paris\"}\n```" DS("call\xe2\x96\x81" "end") DS("calls\xe2\x96\x81" "end")},
    {{.fmt = TC_HERMES, .id_seed = 6}, "Plain answer, no calls at all. <b>bold</b>"},
    {{.fmt = TC_HERMES, .id_seed = 7}, "Oops <tool_call>{\"name\": \"f\", \"arguments\": {\"a\": }}</tool_call>"},
};

/* Push r in pieces of size step; check the deltas add up to the whole parse. */
static void replay(const tc_opts *o, const char *reply, size_t step, bool single)
{
    tc_stream s;
    tc_stream_init(&s, o, single);
    size_t n = strlen(reply);
    char content[1024] = "", reasoning[1024] = "";
    tc_call calls[8];
    size_t n_calls = 0;
    for (size_t at = 0; at <= n; at += step) {
        size_t k = at + step <= n ? step : n - at;
        bool final = at + step > n;
        tc_delta d;
        cr_assert_eq(tc_stream_push(&s, reply + at, k, final, &d), 0);
        strncat(content, d.content ? d.content : "", d.content_n);
        strncat(reasoning, d.reasoning ? d.reasoning : "", d.reasoning_n);
        cr_assert_eq(d.first, n_calls);
        for (size_t c = d.first; c < d.first + d.n; c++) {
            calls[n_calls].name = strdup(d.r.calls[c].name);
            calls[n_calls].arguments = strdup(d.r.calls[c].arguments);
            memcpy(calls[n_calls].id, d.r.calls[c].id, sizeof calls[0].id);
            n_calls++;
        }
        tc_delta_free(&d);
    }
    tc_result w;
    cr_assert_eq(tc_parse_reply(o, single, reply, n, &w), 0);
    cr_assert_str_eq(content, w.content, "step %zu: '%s' vs '%s'", step, content, w.content);
    cr_assert_str_eq(reasoning, w.reasoning ? w.reasoning : "", "step %zu", step);
    cr_assert_eq(n_calls, w.n_calls, "step %zu: %zu calls vs %zu", step, n_calls, w.n_calls);
    for (size_t c = 0; c < n_calls; c++) {
        cr_assert_str_eq(calls[c].name, w.calls[c].name);
        cr_assert_str_eq(calls[c].arguments, w.calls[c].arguments);
        cr_assert_str_eq(calls[c].id, w.calls[c].id);
        free(calls[c].name);
        free(calls[c].arguments);
    }
    tc_result_free(&w);
    tc_stream_free(&s);
}

Test(tc_stream, deltas_add_up_to_the_whole_parse)
{
    for (size_t i = 0; i < sizeof R / sizeof *R; i++)
        for (size_t step = 1; step <= 13; step++) {
            replay(&R[i].o, R[i].reply, step, false);
            replay(&R[i].o, R[i].reply, step, true);
        }
}

/* Cut short anywhere (max_tokens), or a malformed call after good ones:
 * what was streamed is still what the whole reply parses to. */
Test(tc_stream, cut_and_spoiled_replies_add_up_too)
{
    static const struct { tc_opts o; const char *reply; } S[] = {
        {{.fmt = TC_HERMES, .id_seed = 1},
         "Hi.\n<tool_call>\n{\"name\": \"a\", \"arguments\": {}}\n</tool_call>\n<tool_call>\n{\"name\": \"b\", "
         "\"arguments\": {\"x\": }}\n</tool_call>\nBye."},
        {{.fmt = TC_FUNCTIONARY, .id_seed = 2}, "all\nHi.>>>a\n{\"x\": 1}>>>b\n{\"y\": oops}"},
        {{.fmt = TC_MISTRAL_ARGS, .id_seed = 3}, "[TOOL_CALLS]a[ARGS]{\"x\": 1}[TOOL_CALLS]b[ARGS]{\"y\": [1, 2}"},
    };
    for (size_t i = 0; i < sizeof S / sizeof *S; i++) {
        size_t n = strlen(S[i].reply);
        char *cut = malloc(n + 1);
        for (size_t k = 0; k <= n; k++) {
            memcpy(cut, S[i].reply, k);
            cut[k] = 0;
            replay(&S[i].o, cut, 3, false);
            replay(&S[i].o, cut, 1 + k % 5, true);
        }
        free(cut);
    }
    for (size_t i = 0; i < sizeof R / sizeof *R; i++) {
        size_t n = strlen(R[i].reply);
        char *cut = malloc(n + 1);
        for (size_t k = 0; k <= n; k++) {
            memcpy(cut, R[i].reply, k);
            cut[k] = 0;
            replay(&R[i].o, cut, 1 + k % 7, false);
        }
        free(cut);
    }
}

Test(tc_stream, expected_splits)
{
    tc_result w;
    cr_assert_eq(tc_parse_reply(&R[0].o, false, R[0].reply, strlen(R[0].reply), &w), 0);
    cr_assert_eq(w.n_calls, 2);
    cr_assert_str_eq(w.content, "Let me check.");
    cr_assert_str_eq(w.calls[1].arguments, "{\"tz\":\"CET\"}");
    tc_result_free(&w);
    cr_assert_eq(tc_parse_reply(&R[0].o, true, R[0].reply, strlen(R[0].reply), &w), 0);
    cr_assert_eq(w.n_calls, 1);
    cr_assert_str_eq(w.calls[0].name, "get_weather");
    tc_result_free(&w);
    cr_assert_eq(tc_parse_reply(&R[2].o, false, R[2].reply, strlen(R[2].reply), &w), 0);
    cr_assert_str_eq(w.reasoning, "Hmm, 2+2.");
    cr_assert_str_eq(w.content, "It is 4.");
    tc_result_free(&w);
    cr_assert_eq(tc_parse_reply(&R[6].o, false, R[6].reply, strlen(R[6].reply), &w), 0);
    cr_assert_eq(w.n_calls, 0);
    cr_assert_str_eq(w.content, R[6].reply);
    tc_result_free(&w);
}

/* While a call is being written nothing of it is sent; the content before
 * it is, without the whitespace a call would trim. */
Test(tc_stream, a_call_in_progress_is_held)
{
    tc_stream s;
    tc_stream_init(&s, &R[0].o, false);
    tc_delta d;
    cr_assert_eq(tc_stream_push(&s, "Let me check. \n<tool_ca", 23, false, &d), 0);
    cr_assert_eq(d.content_n, 13);
    cr_assert_eq(memcmp(d.content, "Let me check.", 13), 0);
    cr_assert_eq(d.n, 0);
    tc_delta_free(&d);
    const char *rest = "ll>{\"name\": \"f\", \"argum";
    cr_assert_eq(tc_stream_push(&s, rest, strlen(rest), false, &d), 0);
    cr_assert_eq(d.content_n + d.n, 0);
    tc_delta_free(&d);
    rest = "ents\": {}}</tool_call>";
    cr_assert_eq(tc_stream_push(&s, rest, strlen(rest), false, &d), 0);
    cr_assert_eq(d.n, 1);
    cr_assert_str_eq(d.r.calls[0].arguments, "{}");
    tc_delta_free(&d);
    cr_assert_eq(tc_stream_push(&s, "", 0, true, &d), 0);
    cr_assert_eq(d.n + d.content_n, 0);
    tc_delta_free(&d);
    tc_stream_free(&s);
}

/* Generated text may hold NUL bytes (a byte token <0x00>): they are content
 * like any other byte, in the whole parse and in the stream, not its end and
 * not whitespace (the fuzzer's find: the stream lost what followed one). */
Test(tc_stream, nul_bytes_are_content)
{
    static const char reply[] = "a\0b <tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>\0 c\0";
    const size_t n = sizeof reply - 1;
    tc_result w;
    cr_assert_eq(tc_parse_reply(&R[0].o, false, reply, n, &w), 0);
    cr_assert_eq(w.n_calls, 1);
    cr_assert_eq(w.content_n, 7);
    cr_assert_eq(memcmp(w.content, "a\0b\0 c\0", 7), 0);
    for (size_t step = 1; step <= 9; step++) {
        tc_stream s;
        tc_stream_init(&s, &R[0].o, false);
        char got[64];
        size_t got_n = 0, calls = 0;
        for (size_t at = 0; at <= n; at += step) {
            tc_delta d;
            cr_assert_eq(tc_stream_push(&s, reply + at, at + step <= n ? step : n - at, at + step > n, &d), 0);
            cr_assert_leq(got_n + d.content_n, sizeof got);
            if (d.content_n) memcpy(got + got_n, d.content, d.content_n);
            got_n += d.content_n;
            calls += d.n;
            tc_delta_free(&d);
        }
        cr_assert_eq(calls, 1, "step %zu", step);
        cr_assert_eq(got_n, w.content_n, "step %zu: %zu bytes streamed", step, got_n);
        cr_assert_eq(memcmp(got, w.content, got_n), 0, "step %zu", step);
        tc_stream_free(&s);
    }
    tc_result_free(&w);
}
