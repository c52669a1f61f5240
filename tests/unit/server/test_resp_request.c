/* Criterion tests for server/resp_request.c: /v1/responses bodies into
 * chat completions bodies (instructions, items of every kind, a stored
 * conversation first, text.format, tools, tool_choice), the Responses
 * fields' own checks, and request.c's errors told in the Responses body's
 * terms. */
#include "resp_request.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef ORTHOSERVE_TESTDATA
#define ORTHOSERVE_TESTDATA "../shared/testdata"
#endif

static json_t *load(const char *text)
{
    json_error_t je;
    json_t *j = json_loads(text, JSON_DECODE_ANY, &je);
    cr_assert(j, "bad test JSON: %s (%s)", je.text, text);
    return j;
}

/* a equals the JSON text b. */
static void expect_json(json_t *a, const char *b)
{
    json_t *w = load(b);
    char *got = json_dumps(a, JSON_SORT_KEYS | JSON_COMPACT), *want = json_dumps(w, JSON_SORT_KEYS | JSON_COMPACT);
    cr_assert(json_equal(a, w), "got  %s\nwant %s", got, want);
    free(got);
    free(want);
    json_decref(w);
}

/* Parse and build body (previous conversation: prev items / output, or NULL). */
static int build(const char *body_text, const char *prev_items, const char *prev_output, resp_request *rq,
                 api_error *e, json_t **body)
{
    *body = load(body_text);
    if (resp_request_parse(*body, rq, e)) return -1;
    json_t *pi = prev_items ? load(prev_items) : NULL, *po = prev_output ? load(prev_output) : NULL;
    int rc = resp_request_build(rq, *body, pi, po, e);
    json_decref(pi);
    json_decref(po);
    return rc;
}

Test(resp_request, string_input_and_instructions)
{
    resp_request rq;
    api_error e;
    json_t *body;
    cr_assert_eq(build("{\"input\": \"hi\", \"instructions\": \"be brief\", \"max_output_tokens\": 7, "
                       "\"temperature\": 0.5, \"seed\": 3, \"stream\": true, \"store\": false}",
                       NULL, NULL, &rq, &e, &body),
                 0, "%s", e.message);
    cr_assert(rq.stream);
    cr_assert_not(rq.store);
    expect_json(rq.chat, "{\"messages\": [{\"role\": \"system\", \"content\": \"be brief\"}, {\"role\": \"user\", "
                         "\"content\": \"hi\"}], \"max_tokens\": 7, \"temperature\": 0.5, \"seed\": 3, \"stream\": true}");
    expect_json(rq.items, "[{\"type\": \"message\", \"role\": \"user\", \"content\": \"hi\"}]");
    cr_assert_str_eq(json_string_value(json_object_get(rq.echo, "instructions")), "be brief");
    cr_assert(json_is_false(json_object_get(rq.echo, "store")));
    expect_json(json_object_get(rq.echo, "metadata"), "{}");
    resp_request_free(&rq);
    json_decref(body);
}

Test(resp_request, items_of_every_kind_with_a_stored_conversation_first)
{
    resp_request rq;
    api_error e;
    json_t *body;
    const char *prev_items = "[{\"type\": \"message\", \"role\": \"user\", \"content\": \"q0\"}]";
    const char *prev_out = "[{\"id\": \"msg_1\", \"type\": \"message\", \"status\": \"completed\", \"role\": "
                           "\"assistant\", \"content\": [{\"type\": \"output_text\", \"text\": \"a0\", "
                           "\"annotations\": [], \"logprobs\": []}]}]";
    cr_assert_eq(build("{\"input\": [{\"role\": \"developer\", \"content\": [{\"type\": \"input_text\", \"text\": "
                       "\"d\"}]}, {\"type\": \"message\", \"role\": \"assistant\", \"content\": \"calling\"}, "
                       "{\"type\": \"function_call\", \"call_id\": \"c1\", \"name\": \"f\", \"arguments\": \"{}\"}, "
                       "{\"type\": \"function_call\", \"call_id\": \"c2\", \"name\": \"g\", \"arguments\": \"[]\"}, "
                       "{\"type\": \"function_call_output\", \"call_id\": \"c1\", \"output\": \"42\"}, "
                       "{\"type\": \"reasoning\", \"summary\": []}]}",
                       prev_items, prev_out, &rq, &e, &body),
                 0, "%s", e.message);
    expect_json(json_object_get(rq.chat, "messages"),
                "[{\"role\": \"user\", \"content\": \"q0\"},"
                " {\"role\": \"assistant\", \"content\": [{\"type\": \"text\", \"text\": \"a0\"}]},"
                " {\"role\": \"developer\", \"content\": [{\"type\": \"text\", \"text\": \"d\"}]},"
                " {\"role\": \"assistant\", \"content\": \"calling\", \"tool_calls\": ["
                "   {\"id\": \"c1\", \"type\": \"function\", \"function\": {\"name\": \"f\", \"arguments\": \"{}\"}},"
                "   {\"id\": \"c2\", \"type\": \"function\", \"function\": {\"name\": \"g\", \"arguments\": \"[]\"}}]},"
                " {\"role\": \"tool\", \"tool_call_id\": \"c1\", \"content\": \"42\"}]");
    cr_assert_eq(json_array_size(rq.items), 8, "previous items, previous output, then the 6 input items");
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(rq.items, 1), "id")), "msg_1");
    resp_request_free(&rq);
    json_decref(body);
}

Test(resp_request, text_format_and_tools_take_chat_shapes)
{
    resp_request rq;
    api_error e;
    json_t *body;
    cr_assert_eq(build("{\"input\": \"x\", \"text\": {\"format\": {\"type\": \"json_schema\", \"name\": \"n\", "
                       "\"schema\": {\"type\": \"object\"}, \"strict\": true}}, \"tools\": [{\"type\": \"function\", "
                       "\"name\": \"f\", \"description\": \"d\", \"parameters\": {\"type\": \"object\"}}], "
                       "\"tool_choice\": {\"type\": \"function\", \"name\": \"f\"}, \"parallel_tool_calls\": false}",
                       NULL, NULL, &rq, &e, &body),
                 0, "%s", e.message);
    expect_json(json_object_get(rq.chat, "response_format"),
                "{\"type\": \"json_schema\", \"json_schema\": {\"name\": \"n\", \"schema\": {\"type\": \"object\"}, "
                "\"strict\": true}}");
    expect_json(json_object_get(rq.chat, "tools"),
                "[{\"type\": \"function\", \"function\": {\"name\": \"f\", \"description\": \"d\", "
                "\"parameters\": {\"type\": \"object\"}}}]");
    expect_json(json_object_get(rq.chat, "tool_choice"), "{\"type\": \"function\", \"function\": {\"name\": \"f\"}}");
    cr_assert(json_is_false(json_object_get(rq.chat, "parallel_tool_calls")));
    resp_request_free(&rq);
    json_decref(body);
    cr_assert_eq(build("{\"input\": \"x\", \"text\": {\"format\": {\"type\": \"json_object\"}}, \"tool_choice\": "
                       "\"required\"}", NULL, NULL, &rq, &e, &body), 0);
    expect_json(json_object_get(rq.chat, "response_format"), "{\"type\": \"json_object\"}");
    expect_json(json_object_get(rq.chat, "tool_choice"), "\"required\"");
    resp_request_free(&rq);
    json_decref(body);
}

/* body is refused by the Responses checks with param and code. */
static void expect_refused(const char *text, const char *param, const char *code)
{
    resp_request rq;
    api_error e;
    json_t *body;
    cr_assert_eq(build(text, NULL, NULL, &rq, &e, &body), -1, "%s accepted", text);
    cr_assert_eq(e.status, 400);
    cr_assert_str_eq(e.param, param, "%s: %s", text, e.message);
    cr_assert_str_eq(e.code, code, "%s: %s", text, e.message);
    resp_request_free(&rq);
    json_decref(body);
}

Test(resp_request, own_checks)
{
    expect_refused("{}", "input", "missing_field");
    expect_refused("{\"input\": 3}", "input", "invalid_type");
    expect_refused("{\"input\": []}", "input", "invalid_value");
    expect_refused("{\"input\": \"x\", \"stream\": 1}", "stream", "invalid_type");
    expect_refused("{\"input\": \"x\", \"store\": \"yes\"}", "store", "invalid_type");
    expect_refused("{\"input\": \"x\", \"metadata\": {\"k\": 1}}", "metadata", "invalid_value");
    expect_refused("{\"input\": \"x\", \"previous_response_id\": \"\"}", "previous_response_id", "invalid_value");
    expect_refused("{\"input\": \"x\", \"background\": true}", "background", "not_supported");
    expect_refused("{\"input\": \"x\", \"truncation\": \"auto\"}", "truncation", "not_supported");
    expect_refused("{\"input\": \"x\", \"instructions\": 5}", "instructions", "invalid_type");
    expect_refused("{\"input\": [{\"type\": \"item_reference\", \"id\": \"msg_1\"}]}", "input[0]", "not_supported");
    expect_refused("{\"input\": [\"x\"]}", "input[0]", "invalid_type");
    expect_refused("{\"input\": [{\"type\": \"function_call\", \"name\": \"f\"}]}", "input[0]", "invalid_value");
    expect_refused("{\"input\": \"x\", \"tools\": [{\"type\": \"web_search\"}]}", "tools[0].type", "not_supported");
    expect_refused("{\"input\": \"x\", \"text\": {\"format\": 1}}", "text.format", "invalid_type");
}

/* request.c's verdict on the built chat body, renamed. */
static srv_config cfg;
static eng_model *model;
static api_limits lim;

static void setup(void)
{
    char *argv[] = {"serve", "-m", "stories260K.gguf", "--max-tokens", "100"};
    char **env = environ, *no_env[] = {NULL};
    environ = no_env;
    cr_assert_eq(srv_config_load(&cfg, 5, argv), 0);
    environ = env;
    char err[256] = "";
    cr_assert_eq(eng_model_load(ORTHOSERVE_TESTDATA "/models/stories260K.gguf", NULL, &model, err, sizeof err), ENG_OK,
                 "%s", err);
    lim = (api_limits){.cfg = &cfg, .vocab = eng_model_vocab(model), .chat_fmt = ENG_CHAT_PLAIN, .n_ctx = 512,
                       .model = model, .model_id = "stories260K.gguf", .model_file = "stories260K.gguf"};
}

static void teardown(void)
{
    eng_model_free(model);
    srv_config_free(&cfg);
}

static void expect_chat_error(const char *text, unsigned status, const char *param, const char *in_message)
{
    resp_request rq;
    api_error e;
    api_request q;
    json_t *body;
    cr_assert_eq(build(text, NULL, NULL, &rq, &e, &body), 0, "%s", e.message);
    cr_assert_eq(api_parse_chat(&lim, rq.chat, &q, &e), -1, "%s accepted", text);
    resp_request_map_error(&rq, &e);
    cr_assert_eq(e.status, status, "%s: %s", text, e.message);
    cr_assert_str_eq(e.param, param, "%s: %s", text, e.message);
    cr_assert(strstr(e.message, in_message), "%s: '%s' not in '%s'", text, in_message, e.message);
    resp_request_free(&rq);
    json_decref(body);
}

Test(resp_request, chat_errors_in_responses_terms, .init = setup, .fini = teardown)
{
    expect_chat_error("{\"input\": \"x\", \"max_output_tokens\": 1000}", 400, "max_output_tokens",
                      "'max_output_tokens' must be at most 100");
    expect_chat_error("{\"instructions\": \"s\", \"input\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": "
                      "\"user\", \"content\": [{\"type\": \"input_image\", \"image_url\": \"u\"}]}]}",
                      400, "input[1].content", "'input_image'");
    expect_chat_error("{\"input\": [{\"role\": \"wizard\", \"content\": \"a\"}]}", 400, "input[0].role",
                      "'input[0].role' must be");
    expect_chat_error("{\"input\": \"x\", \"text\": {\"format\": {\"type\": \"yaml\"}}}", 400, "text.format.type",
                      "'text.format.type' must be");
    expect_chat_error("{\"input\": \"x\", \"temperature\": 9}", 400, "temperature", "'temperature'");
    expect_chat_error("{\"input\": \"x\", \"model\": \"other\"}", 404, "model", "does not exist");
    /* A body that passes: the chat request's prompt is the rendered conversation. */
    resp_request rq;
    api_error e;
    api_request q;
    json_t *body;
    cr_assert_eq(build("{\"input\": \"Once\", \"max_output_tokens\": 9}", NULL, NULL, &rq, &e, &body), 0);
    cr_assert_eq(api_parse_chat(&lim, rq.chat, &q, &e), 0, "%s", e.message);
    cr_assert_eq(q.p.max_tokens, 9);
    cr_assert_gt(q.p.n_prompt, 1);
    api_request_free(&q);
    resp_request_free(&rq);
    json_decref(body);
}
