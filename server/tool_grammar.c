/*
 * tool_grammar.c - a forced tool call as GBNF: per allowed tool, its
 * parameters schema compiled by schema_gbnf.c with every rule of its own
 * renamed "tK-..." (the shared JSON rules -- ws, string, object, ... --
 * kept once); then one rule per call format, e.g. Hermes / Qwen
 *   call ::= "<tool_call>\n{\"name\": \"f\", \"arguments\": " tK-root "}\n</tool_call>"
 * and the root: an optional think block, then one call or (parallel) more.
 */
#include "tool_grammar.h"
#include "sbuf.h"
#include "tool_request.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DS_M(x) "<\xef\xbd\x9ctool\xe2\x96\x81" x "\xef\xbd\x9c>"

static bool ident_char(char c)
{
    return c == '-' || c == '_' || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* A rule schema_gbnf writes for one schema ("root", "r<digits>"), as
 * opposed to the shared ones. */
static bool own_rule(const char *s, size_t n)
{
    if (n == 4 && !memcmp(s, "root", 4)) return true;
    if (n < 2 || s[0] != 'r') return false;
    for (size_t i = 1; i < n; i++)
        if (s[i] < '0' || s[i] > '9') return false;
    return true;
}

/* s[0..n) with its own rules renamed "t<k>-<name>"; literals and classes
 * are copied as they are. */
static void add_renamed(sbuf *o, const char *s, size_t n, size_t k)
{
    size_t i = 0;
    while (i < n) {
        char c = s[i];
        if (c == '"' || c == '[') {
            char close = c == '"' ? '"' : ']';
            size_t j = i + 1;
            while (j < n && s[j] != close) j += s[j] == '\\' ? 2 : 1;
            j = j < n ? j + 1 : n;
            sbuf_add(o, s + i, j - i);
            i = j;
        } else if (ident_char(c) && !(c >= '0' && c <= '9')) {
            size_t j = i;
            while (j < n && ident_char(s[j])) j++;
            if (own_rule(s + i, j - i)) sbuf_addf(o, "t%zu-", k);
            sbuf_add(o, s + i, j - i);
            i = j;
        } else if (c >= '0' && c <= '9') { /* a repetition count: {0,20} */
            size_t j = i;
            while (j < n && s[j] >= '0' && s[j] <= '9') j++;
            sbuf_add(o, s + i, j - i);
            i = j;
        } else {
            sbuf_add(o, s + i, 1);
            i++;
        }
    }
}

/* The rules of one schema (before its "root ::=" line's end); the shared
 * rules after it are the same for every schema. */
static size_t own_part(const char *g)
{
    const char *r = strncmp(g, "root ::=", 8) ? strstr(g, "\nroot ::=") : g - 1;
    if (!r) return strlen(g);
    const char *e = strchr(r + 1, '\n');
    return e ? (size_t)(e + 1 - g) : strlen(g);
}

/* One call of tool fn (its rules are t<k>-...) in the format: a GBNF
 * sequence. The name is safe in a literal (tool_request.c allows only
 * letters, digits, '_', '-', '.'). */
static void add_call(sbuf *o, tc_format f, const char *name, size_t k)
{
    switch (f) {
    case TC_LLAMA3:
        sbuf_addf(o, "\"{\\\"name\\\": \\\"%s\\\", \\\"parameters\\\": \" t%zu-root \"}\"", name, k);
        break;
    case TC_MISTRAL: case TC_GRANITE:
        sbuf_addf(o, "\"{\\\"name\\\": \\\"%s\\\", \\\"arguments\\\": \" t%zu-root \"}\"", name, k);
        break;
    case TC_MISTRAL_ARGS: sbuf_addf(o, "\"[TOOL_CALLS]%s[ARGS]\" t%zu-root", name, k); break;
    case TC_FUNCTIONARY: sbuf_addf(o, "\"%s\\n\" t%zu-root", name, k); break;
    case TC_DEEPSEEK:
        sbuf_addf(o, "\"" DS_M("call\xe2\x96\x81" "begin") "function" DS_M("sep") "%s\\n```json\\n\" t%zu-root \"\\n```"
                  DS_M("call\xe2\x96\x81" "end") "\"", name, k);
        break;
    case TC_HERMES: default:
        sbuf_addf(o, "\"<tool_call>\\n{\\\"name\\\": \\\"%s\\\", \\\"arguments\\\": \" t%zu-root \"}\\n</tool_call>\"",
                  name, k);
        break;
    }
}

/* root: the calls in the format's framing, after the think block when the
 * prompt opened one (a thinking model is not let into a new one: the call
 * comes first, so that it always comes within max_tokens). */
static void add_root(sbuf *o, const tool_grammar_opts *op)
{
    const char *think = op->think_open ? "think-text \"</think>\" [ \\t\\n]* " : "";
    bool many = op->parallel && op->fmt != TC_LLAMA3 && op->fmt != TC_FUNCTIONARY;
    sbuf_addf(o, "root ::= %s", think);
    switch (op->fmt) {
    case TC_MISTRAL: sbuf_addf(o, "\"[TOOL_CALLS][\" call%s \"]\"\n", many ? " (\", \" call)*" : ""); break;
    case TC_GRANITE: sbuf_addf(o, "\"<|tool_call|>[\" call%s \"]\"\n", many ? " (\", \" call)*" : ""); break;
    case TC_DEEPSEEK:
        sbuf_addf(o, "\"" DS_M("calls\xe2\x96\x81" "begin") "\" call%s \"" DS_M("calls\xe2\x96\x81" "end") "\"\n",
                  many ? " (\"\\n\" call)*" : "");
        break;
    case TC_LLAMA3: sbuf_addf(o, "\"<|python_tag|>\"? call\n"); break;
    default: sbuf_addf(o, "call%s\n", many ? " (\"\\n\" call)*" : ""); break;
    }
    if (op->think_open) sbuf_addf(o, "think-text ::= ([^<] | \"<\" [^/])*\n");
}

int tool_grammar(json_t *body, const tool_grammar_opts *o, const schema_limits *lim, char **gbnf, char *param,
                 size_t plen, const char **code, char *msg, size_t mlen)
{
    *gbnf = NULL;
    sbuf out = {0}, calls = {0};
    json_t *tools = json_object_get(body, "tools"), *t;
    size_t k, n_calls = 0;
    json_array_foreach(tools, k, t) {
        json_t *fn = json_object_get(t, "function"), *ps = json_object_get(fn, "parameters");
        const char *name = json_string_value(json_object_get(fn, "name"));
        if (o->name && strcmp(o->name, name)) continue;
        char *g = NULL, ptr[256], why[400];
        if (ps && !json_is_null(ps)) {
            if (schema_to_gbnf(ps, lim, &g, ptr, sizeof ptr, why, sizeof why)) {
                snprintf(param, plen, "tools[%zu].function.parameters", k);
                bool oom = !strcmp(why, "out of memory");
                *code = oom ? "server_error" : "invalid_schema";
                snprintf(msg, mlen, "'%s': at '%s' (JSON pointer in the schema): %s", param, ptr[0] ? ptr : "#", why);
                free(out.p);
                free(calls.p);
                return -1;
            }
            add_renamed(&out, g, own_part(g), k);
            free(g);
        } else {
            sbuf_addf(&out, "t%zu-root ::= object\n", k); /* no schema: any object */
        }
        if (n_calls++) sbuf_add(&calls, " | ", 3);
        else sbuf_add(&calls, "call ::= ", 9);
        add_call(&calls, o->fmt, name, k);
    }
    sbuf_add(&calls, "\n", 1);
    add_root(&out, o);
    sbuf_add(&out, calls.p, calls.n);
    const char *common = schema_json_object_gbnf(); /* "root ::= object\n" then the shared rules */
    common = strchr(common, '\n') + 1;
    bool ok = sbuf_add(&out, common, strlen(common)) && n_calls;
    free(calls.p);
    if (!ok) {
        free(out.p);
        snprintf(param, plen, "tool_choice");
        *code = "server_error";
        snprintf(msg, mlen, "out of memory");
        return -1;
    }
    *gbnf = out.p;
    return 0;
}
