/*
 * fuzz_toolcall - libFuzzer harness for the tool-call parsers
 * (server/toolcall.c) and their streaming diff (server/tc_stream.c): model
 * output is arbitrary bytes, and a stream must never send what the whole
 * reply does not hold.
 *
 * Input layout:
 *
 *   byte 0   bits 0-3: call format (tc_format, taken modulo its count);
 *            bit 4: thinking; bit 5: the prompt opened a think block;
 *            bit 6: parallel_tool_calls false
 *   byte 1   push size (1-64; the text is pushed in pieces of that size)
 *   rest     the reply text
 *
 * Checked: parsing never fails (no memory failures here); every call has a
 * name and arguments that are a JSON object; the deltas of the stream add up
 * exactly to the whole reply's parse (content, reasoning, the calls with
 * their ids, in order); at most one call when parallel calls are off.
 */
#include "fuzz.h"
#include "sbuf.h"
#include "tc_stream.h"

#include <jansson.h>
#include <string.h>

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    return 0;
}

static void check_calls(const tc_result *r, bool single)
{
    CHECK(!single || r->n_calls <= 1);
    for (size_t k = 0; k < r->n_calls; k++) {
        CHECK(r->calls[k].name[0]);
        json_t *a = json_loads(r->calls[k].arguments, JSON_ALLOW_NUL, NULL); /* "\u0000" is JSON */
        CHECK(json_is_object(a));
        json_decref(a);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2) return 0;
    tc_opts o = {.fmt = (tc_format)((data[0] & 15) % 9), .thinking = data[0] & 16, .think_open = data[0] & 32,
                 .id_seed = 99};
    bool single = data[0] & 64;
    size_t step = (size_t)(data[1] & 63) + 1;
    const char *text = (const char *)data + 2;
    size_t n = size - 2;

    tc_result whole;
    CHECK(tc_parse_reply(&o, single, text, n, &whole) == 0);
    check_calls(&whole, single);

    tc_stream s;
    tc_stream_init(&s, &o, single);
    sbuf content = {0}, reasoning = {0};
    size_t n_calls = 0;
    for (size_t at = 0; at <= n; at += step) {
        size_t k = at + step <= n ? step : n - at;
        tc_delta d;
        CHECK(tc_stream_push(&s, text + at, k, at + step > n, &d) == 0);
        check_calls(&d.r, single);
        sbuf_add(&content, d.content ? d.content : "", d.content_n);
        sbuf_add(&reasoning, d.reasoning ? d.reasoning : "", d.reasoning_n);
        CHECK(d.first == n_calls);
        for (size_t c = d.first; c < d.first + d.n; c++, n_calls++) {
            CHECK(n_calls < whole.n_calls);
            CHECK(!strcmp(d.r.calls[c].name, whole.calls[n_calls].name));
            CHECK(!strcmp(d.r.calls[c].arguments, whole.calls[n_calls].arguments));
            CHECK(!strcmp(d.r.calls[c].id, whole.calls[n_calls].id));
        }
        tc_delta_free(&d);
    }
    CHECK(n_calls == whole.n_calls);
    CHECK(whole.content[whole.content_n] == 0 && (!whole.reasoning || whole.reasoning[whole.reasoning_n] == 0));
    CHECK(content.n == whole.content_n && !memcmp(content.p ? content.p : "", whole.content, content.n));
    const char *wr = whole.reasoning ? whole.reasoning : "";
    CHECK(reasoning.n == whole.reasoning_n && !memcmp(reasoning.p ? reasoning.p : "", wr, reasoning.n));
    free(content.p);
    free(reasoning.p);
    tc_stream_free(&s);
    tc_result_free(&whole);
    return 0;
}
