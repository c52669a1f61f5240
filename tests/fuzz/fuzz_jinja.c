/*
 * fuzz_jinja - libFuzzer harness for the Jinja chat-template interpreter
 * (engine/src/jinja_*.c): templates are untrusted input (they come inside
 * downloaded model files).
 *
 * Input layout:
 *
 *   byte 0   bit 0: add_generation_prompt; bit 1: tools is a list (else
 *            None); bit 2: enable_thinking is passed (as bit 3)
 *   rest     the template source
 *
 * The variables are a fixed chat (system, user with Unicode, an assistant
 * tool call with object arguments, a tool result) and one tool schema.
 * Checked:
 *
 * - parsing succeeds or fails with ENG_EFORMAT and a message;
 * - rendering succeeds with NUL-terminated text no longer than max_output,
 *   or fails with ENG_EINVAL, a message and no text (never a crash, a hang
 *   past the time limit, or unbounded memory);
 * - rendering the parsed template again gives the same result (the clock of
 *   strftime_now is fixed): a parsed template is immutable.
 */
#include "fuzz.h"
#include "orthoserve/engine.h"

#include <string.h>

#define S(v, s) eng_jinja_str(v, s, strlen(s))

static eng_jinja_val *message(eng_jinja_vars *v, const char *role, const char *content)
{
    eng_jinja_val *m = eng_jinja_dict(v);
    eng_jinja_dict_set(v, m, "role", 4, S(v, role));
    eng_jinja_dict_set(v, m, "content", 7, content ? S(v, content) : eng_jinja_none(v));
    return m;
}

static eng_jinja_vars *make_vars(uint8_t flags)
{
    eng_jinja_vars *v = eng_jinja_vars_new();
    CHECK(v);
    eng_jinja_val *msgs = eng_jinja_list(v);
    eng_jinja_list_push(v, msgs, message(v, "system", "Be brief."));
    eng_jinja_list_push(v, msgs, message(v, "user", "Weather in Z\xc3\xbcrich? \xe6\x9d\xb1\xe4\xba\xac"));
    eng_jinja_val *a = message(v, "assistant", NULL), *calls = eng_jinja_list(v), *call = eng_jinja_dict(v);
    eng_jinja_val *fn = eng_jinja_dict(v), *args = eng_jinja_dict(v);
    eng_jinja_dict_set(v, args, "city", 4, S(v, "Z\xc3\xbcrich"));
    eng_jinja_dict_set(v, args, "days", 4, eng_jinja_int(v, 3));
    eng_jinja_dict_set(v, fn, "name", 4, S(v, "get_weather"));
    eng_jinja_dict_set(v, fn, "arguments", 9, args);
    eng_jinja_dict_set(v, call, "id", 2, S(v, "call_1"));
    eng_jinja_dict_set(v, call, "type", 4, S(v, "function"));
    eng_jinja_dict_set(v, call, "function", 8, fn);
    eng_jinja_list_push(v, calls, call);
    eng_jinja_dict_set(v, a, "tool_calls", 10, calls);
    eng_jinja_list_push(v, msgs, a);
    eng_jinja_val *t = message(v, "tool", "{\"temp\": 21.5}");
    eng_jinja_dict_set(v, t, "tool_call_id", 12, S(v, "call_1"));
    eng_jinja_list_push(v, msgs, t);
    eng_jinja_vars_set(v, "messages", msgs);
    eng_jinja_val *tools = eng_jinja_none(v);
    if (flags & 2) {
        eng_jinja_val *tool = eng_jinja_dict(v), *tf = eng_jinja_dict(v), *params = eng_jinja_dict(v);
        eng_jinja_val *props = eng_jinja_dict(v), *city = eng_jinja_dict(v), *req = eng_jinja_list(v);
        eng_jinja_dict_set(v, city, "type", 4, S(v, "string"));
        eng_jinja_dict_set(v, props, "city", 4, city);
        eng_jinja_list_push(v, req, S(v, "city"));
        eng_jinja_dict_set(v, params, "type", 4, S(v, "object"));
        eng_jinja_dict_set(v, params, "properties", 10, props);
        eng_jinja_dict_set(v, params, "required", 8, req);
        eng_jinja_dict_set(v, tf, "name", 4, S(v, "get_weather"));
        eng_jinja_dict_set(v, tf, "description", 11, S(v, "Weather of a city"));
        eng_jinja_dict_set(v, tf, "parameters", 10, params);
        eng_jinja_dict_set(v, tool, "type", 4, S(v, "function"));
        eng_jinja_dict_set(v, tool, "function", 8, tf);
        tools = eng_jinja_list(v);
        eng_jinja_list_push(v, tools, tool);
    }
    eng_jinja_vars_set(v, "tools", tools);
    eng_jinja_vars_set(v, "documents", eng_jinja_none(v));
    eng_jinja_vars_set(v, "add_generation_prompt", eng_jinja_bool(v, flags & 1));
    eng_jinja_vars_set(v, "bos_token", S(v, "<s>"));
    eng_jinja_vars_set(v, "eos_token", S(v, "</s>"));
    if (flags & 4) CHECK(eng_jinja_vars_set(v, "enable_thinking", eng_jinja_bool(v, flags & 8)) == ENG_OK);
    return v;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 65536) return 0;
    eng_jinja *t = NULL;
    eng_jinja_error err;
    eng_status st = eng_jinja_parse((const char *)data + 1, size - 1, &t, &err);
    if (st != ENG_OK) {
        CHECK(st == ENG_EFORMAT || st == ENG_ENOMEM);
        CHECK(!t);
        CHECK(st == ENG_ENOMEM || err.msg[0]);
        return 0;
    }
    eng_jinja_vars *v = make_vars(data[0]);
    eng_jinja_limits lim = eng_jinja_default_limits();
    lim.max_output = 256 << 10;
    lim.max_memory = 32 << 20;
    lim.max_steps = 200000;
    lim.max_ms = 1000;
    lim.now = "2026-01-15 10:30:00";
    char *out[2] = {NULL, NULL};
    size_t len[2] = {0, 0};
    eng_status rs[2];
    for (int k = 0; k < 2; k++) {
        rs[k] = eng_jinja_render(t, v, &lim, &out[k], &len[k], &err);
        if (rs[k] == ENG_OK) {
            CHECK(out[k] && out[k][len[k]] == 0 && len[k] <= lim.max_output);
        } else {
            CHECK(rs[k] == ENG_EINVAL || rs[k] == ENG_ENOMEM);
            CHECK(!out[k]);
            CHECK(rs[k] == ENG_ENOMEM || err.msg[0] || err.raised);
        }
    }
    /* the same result, unless the second run met the wall-clock limit */
    if (!(rs[0] != rs[1] && strstr(err.msg, "time limit"))) {
        CHECK(rs[0] == rs[1]);
        if (rs[0] == ENG_OK) CHECK(len[0] == len[1] && !memcmp(out[0], out[1], len[0]));
    }
    eng_free(out[0]);
    eng_free(out[1]);
    eng_jinja_vars_free(v);
    eng_jinja_free(t);
    return 0;
}
