/*
 * rformat.h - a completion body's structured-output fields to GBNF text:
 * "response_format" (text, json_object, json_schema {name, schema,
 * strict}) and the llama.cpp server's "json_schema" (a schema) and
 * "grammar" (GBNF). Pure: the text is compiled later (grammar_cache.h).
 */
#ifndef ORTHOSERVE_RFORMAT_H
#define ORTHOSERVE_RFORMAT_H

#include "config.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct {
    char *gbnf;        /* GBNF text to enforce (free()), or NULL: free text */
    size_t len;
    const char *param; /* the field it came from, which later errors name */
} rformat;

/* Read the fields of body (a JSON object). 0 with *out filled, or -1 with
 * the field at fault in param, an OpenAI error code in *code and the
 * reason in msg (a 400). At most one of the three may ask for a grammar. */
int rformat_parse(json_t *body, const srv_config *cfg, rformat *out, char *param, size_t plen, const char **code,
                  char *msg, size_t mlen);

#endif
