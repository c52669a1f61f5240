/*
 * tool_grammar.h - the GBNF text that forces a tool call (tool_choice
 * "required", or a named function) in a chat template's call format: the
 * call's name is one of the allowed tools and its arguments follow that
 * tool's "parameters" schema (schema_gbnf.h compiles each one; their rules
 * are renamed per tool and composed here). Pure: the text is compiled by
 * the grammar cache like any structured-output grammar.
 */
#ifndef ORTHOSERVE_TOOL_GRAMMAR_H
#define ORTHOSERVE_TOOL_GRAMMAR_H

#include "schema_gbnf.h"
#include "toolcall.h"

#include <jansson.h>
#include <stdbool.h>

typedef struct {
    tc_format fmt;      /* the template's call format (not TC_NONE) */
    bool think_open;    /* the prompt opened a think block: its text and </think> come first */
    const char *name;   /* the one function allowed, or NULL: any of body's tools */
    bool parallel;      /* several calls allowed (formats that can hold several) */
} tool_grammar_opts;

/* GBNF for body's "tools" (checked by tool_request.c). 0 with *gbnf
 * (malloc'd, NUL-terminated), or -1 with the field at fault in param
 * ("tools[i].function.parameters"), an OpenAI error code in *code
 * ("invalid_schema", or "server_error" when memory ran out) and msg. */
int tool_grammar(json_t *body, const tool_grammar_opts *o, const schema_limits *lim, char **gbnf, char *param,
                 size_t plen, const char **code, char *msg, size_t mlen);

#endif
