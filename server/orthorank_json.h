/*
 * orthorank_json.h - the "orthorank" object of every completion response
 * and GET /v1/orthorank (orthorank_json.c). A request's
 * "orthorank" settings are parsed by request.c (orthorank_parse).
 */
#ifndef ORTHOSERVE_ORTHORANK_JSON_H
#define ORTHOSERVE_ORTHORANK_JSON_H

#include "http.h"
#include "request.h"
#include "orthoserve/engine.h"

#include <jansson.h>
#include <stdint.h>

/* The response's "orthorank" object from what the engine reported. */
json_t *orthorank_json(const eng_orthorank_stats *st);
/* GET /v1/orthorank: the loaded plan and the defaults (a route handler). */
void api_orthorank(hreq *r);

#endif
