/*
 * test_tool_request.c - server/tool_request.c: tools, tool_choice and
 * parallel_tool_calls of a chat body, accepted and refused (each refusal
 * names its field).
 */
#include "tool_request.h"

#include <criterion/criterion.h>
#include <string.h>

#define TOOLS "\"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"parameters\": " \
              "{\"type\": \"object\"}}}, {\"type\": \"function\", \"function\": {\"name\": \"a.b-c_1\"}}]"

static int parse(const char *body, tool_req *tr, char *param, const char **code)
{
    json_t *b = json_loads(body, 0, NULL);
    cr_assert(b, "%s", body);
    char msg[300];
    int rc = tool_request_parse(b, tr, param, 64, code, msg, sizeof msg);
    if (rc) cr_assert(strlen(msg) > 10);
    json_decref(b);
    return rc;
}

Test(tool_request, accepted_forms)
{
    tool_req tr;
    char param[64];
    const char *code;
    cr_assert_eq(parse("{}", &tr, param, &code), 0);
    cr_assert_eq(tr.n_tools, 0);
    cr_assert_eq(tr.choice, TOOL_CHOICE_NONE);
    cr_assert(tr.parallel);
    cr_assert_eq(parse("{" TOOLS "}", &tr, param, &code), 0);
    cr_assert_eq(tr.n_tools, 2);
    cr_assert_eq(tr.choice, TOOL_CHOICE_AUTO);
    cr_assert_eq(parse("{" TOOLS ", \"tool_choice\": \"none\", \"parallel_tool_calls\": false}", &tr, param, &code), 0);
    cr_assert_eq(tr.choice, TOOL_CHOICE_NONE);
    cr_assert_not(tr.parallel);
    cr_assert_eq(parse("{" TOOLS ", \"tool_choice\": \"required\"}", &tr, param, &code), 0);
    cr_assert_eq(tr.choice, TOOL_CHOICE_REQUIRED);
    json_t *b = json_loads("{" TOOLS ", \"tool_choice\": {\"type\": \"function\", \"function\": {\"name\": \"a.b-c_1\"}}}", 0, NULL);
    char msg[300];
    cr_assert_eq(tool_request_parse(b, &tr, param, sizeof param, &code, msg, sizeof msg), 0);
    cr_assert_eq(tr.choice, TOOL_CHOICE_NAMED);
    cr_assert_str_eq(tr.name, "a.b-c_1");
    cr_assert_not_null(tool_request_find(b, "get_weather"));
    cr_assert_null(tool_request_find(b, "nope"));
    json_decref(b);
    cr_assert_eq(parse("{\"tools\": null, \"tool_choice\": \"none\"}", &tr, param, &code), 0);
}

Test(tool_request, refusals_name_their_field)
{
    static const struct { const char *body, *param, *code; } C[] = {
        {"{\"tools\": {}}", "tools", "invalid_type"},
        {"{\"tools\": [1]}", "tools[0]", "invalid_type"},
        {"{\"tools\": [{\"type\": \"code_interpreter\"}]}", "tools[0]", "not_supported"},
        {"{\"tools\": [{\"type\": \"function\"}]}", "tools[0].function", "invalid_type"},
        {"{\"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"a b\"}}]}", "tools[0].function.name", "invalid_value"},
        {"{\"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\", \"parameters\": 3}}]}",
         "tools[0].function.parameters", "invalid_type"},
        {"{\"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\"}}, {\"type\": \"function\", \"function\": "
         "{\"name\": \"f\"}}]}", "tools[1].function.name", "invalid_value"},
        {"{" TOOLS ", \"tool_choice\": \"always\"}", "tool_choice", "invalid_value"},
        {"{" TOOLS ", \"tool_choice\": 1}", "tool_choice", "invalid_type"},
        {"{" TOOLS ", \"tool_choice\": {\"type\": \"function\", \"function\": {\"name\": \"nope\"}}}",
         "tool_choice.function.name", "invalid_value"},
        {"{\"tool_choice\": \"required\"}", "tool_choice", "invalid_value"},
        {"{" TOOLS ", \"parallel_tool_calls\": 1}", "parallel_tool_calls", "invalid_type"},
    };
    for (size_t i = 0; i < sizeof C / sizeof *C; i++) {
        tool_req tr;
        char param[64];
        const char *code;
        cr_assert_eq(parse(C[i].body, &tr, param, &code), -1, "%s", C[i].body);
        cr_assert_str_eq(param, C[i].param, "%s", C[i].body);
        cr_assert_str_eq(code, C[i].code, "%s", C[i].body);
    }
}
