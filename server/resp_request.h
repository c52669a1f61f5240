/*
 * resp_request.h - a /v1/responses request body turned into the chat
 * completions body that request.c validates (api_parse_chat), so both
 * endpoints share one road to the engine: the conversation (the stored one
 * of previous_response_id, then "input") becomes "messages", "instructions"
 * a first system message, "max_output_tokens" "max_tokens", "text.format"
 * "response_format", "tools" / "tool_choice" chat's function-tool shapes.
 * What chat refuses (today: tools, json_schema formats, tool messages) is
 * refused here with the same error, its field renamed to the Responses one
 * (resp_request_map_error).
 *
 * Pure functions of their arguments (no HTTP, no store): any thread.
 */
#ifndef ORTHOSERVE_RESP_REQUEST_H
#define ORTHOSERVE_RESP_REQUEST_H

#include "request.h"

#include <jansson.h>
#include <stdbool.h>

/* The longest "previous_response_id" accepted (bytes). */
#define RESP_ID_MAX 64

typedef struct {
    bool stream;
    bool store;                 /* "store" (default true) */
    char previous_id[RESP_ID_MAX + 1]; /* "previous_response_id", or "" */
    json_t *input;              /* this request's items (an array; a string input as one user message) */
    json_t *echo;               /* the fields the response object repeats (instructions, metadata, ...) */
    json_t *items;              /* resp_request_build: the whole conversation, previous items first */
    json_t *chat;               /* resp_request_build: the chat completions body */
    json_t *params;             /* resp_request_build: per chat message, the field it came from */
} resp_request;

/* Check body's own fields (their types; what this server cannot do).
 * 0 with *out filled (free with resp_request_free), or -1 with *err set
 * (a 400 naming the field; *out needs no free). */
int resp_request_parse(json_t *body, resp_request *out, api_error *err);

/* The conversation and the chat body: prev_items (the previous response's
 * stored conversation, an array; NULL: none) and prev_output (its output
 * items; NULL: none), then rq->input. body is the request's body (its
 * sampling fields and extensions are copied). 0, or -1 with *err set. */
int resp_request_build(resp_request *rq, json_t *body, json_t *prev_items, json_t *prev_output, api_error *err);

/* An error of api_parse_chat on rq->chat, told in the Responses body's
 * terms: "messages[3].content" -> "input[1].content", "max_tokens" ->
 * "max_output_tokens", "response_format" -> "text.format" (param and
 * message). */
void resp_request_map_error(const resp_request *rq, api_error *err);

void resp_request_free(resp_request *rq);

#endif
