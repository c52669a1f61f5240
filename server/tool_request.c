/*
 * tool_request.c - "tools", "tool_choice" and "parallel_tool_calls" of a
 * chat body, checked as OpenAI documents them: function tools with a name
 * (letters, digits, '_', '-', '.', at most 64) and an object "parameters";
 * a named tool_choice must name one of them.
 */
#include "tool_request.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static int fail(char *param, size_t plen, const char **code, char *msg, size_t mlen, const char *p, const char *c,
                const char *fmt, ...) __attribute__((format(printf, 8, 9)));
static int fail(char *param, size_t plen, const char **code, char *msg, size_t mlen, const char *p, const char *c,
                const char *fmt, ...)
{
    snprintf(param, plen, "%s", p);
    *code = c;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, mlen, fmt, ap);
    va_end(ap);
    return -1;
}

#define FAIL(p, c, ...) fail(param, plen, code, msg, mlen, p, c, __VA_ARGS__)

static bool name_ok(const char *s, size_t n)
{
    if (!n || n > 64) return false;
    for (size_t i = 0; i < n; i++)
        if (!(s[i] == '_' || s[i] == '-' || s[i] == '.' || (s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'z') ||
              (s[i] >= 'A' && s[i] <= 'Z')))
            return false;
    return true;
}

json_t *tool_request_find(json_t *body, const char *name)
{
    size_t i;
    json_t *t;
    json_array_foreach(json_object_get(body, "tools"), i, t) {
        json_t *fn = json_object_get(t, "function");
        const char *n = json_string_value(json_object_get(fn, "name"));
        if (n && !strcmp(n, name)) return fn;
    }
    return NULL;
}

static int check_tools(json_t *tools, char *param, size_t plen, const char **code, char *msg, size_t mlen)
{
    size_t i;
    json_t *t;
    char p[64];
    json_array_foreach(tools, i, t) {
        json_t *type = json_object_get(t, "type"), *fn = json_object_get(t, "function");
        snprintf(p, sizeof p, "tools[%zu]", i);
        if (!json_is_object(t)) return FAIL(p, "invalid_type", "'%s' must be an object", p);
        if (!json_is_string(type) || strcmp(json_string_value(type), "function"))
            return FAIL(p, "not_supported", "'%s.type' must be 'function' (the only tool type this server calls)", p);
        snprintf(p, sizeof p, "tools[%zu].function", i);
        if (!json_is_object(fn)) return FAIL(p, "invalid_type", "'%s' must be an object", p);
        json_t *name = json_object_get(fn, "name"), *params = json_object_get(fn, "parameters");
        snprintf(p, sizeof p, "tools[%zu].function.name", i);
        if (!json_is_string(name) || !name_ok(json_string_value(name), json_string_length(name)))
            return FAIL(p, "invalid_value", "'%s' must be 1 to 64 letters, digits, '_', '-' or '.'", p);
        for (size_t k = 0; k < i; k++) {
            const char *o = json_string_value(json_object_get(json_object_get(json_array_get(tools, k), "function"), "name"));
            if (!strcmp(o, json_string_value(name)))
                return FAIL(p, "invalid_value", "'%s': two tools are named '%s'", p, o);
        }
        snprintf(p, sizeof p, "tools[%zu].function.parameters", i);
        if (params && !json_is_null(params) && !json_is_object(params))
            return FAIL(p, "invalid_type", "'%s' must be a JSON Schema object", p);
    }
    return 0;
}

static int check_choice(json_t *body, json_t *tc, tool_req *out, char *param, size_t plen, const char **code,
                        char *msg, size_t mlen)
{
    if (json_is_string(tc)) {
        const char *s = json_string_value(tc);
        if (!strcmp(s, "none")) out->choice = TOOL_CHOICE_NONE;
        else if (!strcmp(s, "auto")) out->choice = TOOL_CHOICE_AUTO;
        else if (!strcmp(s, "required")) out->choice = TOOL_CHOICE_REQUIRED;
        else
            return FAIL("tool_choice", "invalid_value",
                        "'tool_choice' must be 'none', 'auto', 'required' or {\"type\": \"function\", \"function\": "
                        "{\"name\": ...}}, got '%.60s'", s);
    } else {
        json_t *type = json_object_get(tc, "type"), *fn = json_object_get(tc, "function");
        json_t *name = json_object_get(fn, "name");
        if (!json_is_object(tc) || !json_is_string(type) || strcmp(json_string_value(type), "function") ||
            !json_is_string(name))
            return FAIL("tool_choice", "invalid_type",
                        "'tool_choice' must be 'none', 'auto', 'required' or {\"type\": \"function\", \"function\": "
                        "{\"name\": ...}}");
        out->choice = TOOL_CHOICE_NAMED;
        out->name = json_string_value(name);
        if (!tool_request_find(body, out->name))
            return FAIL("tool_choice.function.name", "invalid_value",
                        "'tool_choice' names the function '%.64s', which is not in 'tools'", out->name);
    }
    if (out->choice >= TOOL_CHOICE_REQUIRED && !out->n_tools)
        return FAIL("tool_choice", "invalid_value", "'tool_choice' '%s' needs 'tools'",
                    out->choice == TOOL_CHOICE_REQUIRED ? "required" : "function");
    return 0;
}

int tool_request_parse(json_t *body, tool_req *out, char *param, size_t plen, const char **code, char *msg,
                       size_t mlen)
{
    memset(out, 0, sizeof *out);
    out->parallel = true;
    json_t *tools = json_object_get(body, "tools"), *tc = json_object_get(body, "tool_choice");
    json_t *par = json_object_get(body, "parallel_tool_calls");
    if (tools && !json_is_null(tools)) {
        if (!json_is_array(tools)) return FAIL("tools", "invalid_type", "'tools' must be an array");
        if (check_tools(tools, param, plen, code, msg, mlen)) return -1;
        out->n_tools = json_array_size(tools);
    }
    out->choice = out->n_tools ? TOOL_CHOICE_AUTO : TOOL_CHOICE_NONE;
    if (tc && !json_is_null(tc) && check_choice(body, tc, out, param, plen, code, msg, mlen)) return -1;
    if (par && !json_is_null(par)) {
        if (!json_is_boolean(par))
            return FAIL("parallel_tool_calls", "invalid_type", "'parallel_tool_calls' must be a boolean");
        out->parallel = json_is_true(par);
    }
    return 0;
}
