/*
 * tool_request.h - a chat body's tool-calling fields checked: "tools"
 * (function tools), "tool_choice" (none, auto, required, or one named
 * function) and "parallel_tool_calls". Pure: reads the body only.
 */
#ifndef ORTHOSERVE_TOOL_REQUEST_H
#define ORTHOSERVE_TOOL_REQUEST_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

typedef enum { TOOL_CHOICE_NONE, TOOL_CHOICE_AUTO, TOOL_CHOICE_REQUIRED, TOOL_CHOICE_NAMED } tool_choice_mode;

typedef struct {
    size_t n_tools;          /* 0: no tools (choice is then NONE) */
    tool_choice_mode choice; /* default: AUTO with tools, NONE without */
    const char *name;        /* NAMED: the function (a view into the body) */
    bool parallel;           /* parallel_tool_calls (default true) */
} tool_req;

/* 0 with *out filled, or -1 with the field at fault in param, an OpenAI
 * error code in *code and the reason in msg (a 400). */
int tool_request_parse(json_t *body, tool_req *out, char *param, size_t plen, const char **code, char *msg,
                       size_t mlen);

/* The tool named name of a checked body's "tools" (its "function" object), or NULL. */
json_t *tool_request_find(json_t *body, const char *name);

#endif
