/*
 * orthorank_json.h - the "orthorank" object of every completion response
 * and GET /v1/orthorank (orthorank_json.c). The request settings
 * (orank_req, orthorank_parse, orthorank_params) are in request.h.
 */
#ifndef ORTHOSERVE_ORTHORANK_JSON_H
#define ORTHOSERVE_ORTHORANK_JSON_H

#include "http.h"
#include "request.h"
#include "orthoserve/engine.h"

#include <jansson.h>
#include <stdint.h>

/* The response's "orthorank" object from what the engine reports; st NULL
 * (the request never ran) reports the settings with zero counts. */
json_t *orthorank_json(const orank_req *req, const eng_orthorank_stats *st, int32_t n_prompt, int32_t n_gen,
                       int32_t n_layer);
/* GET /v1/orthorank: the loaded plan and the defaults (a route handler). */
void api_orthorank(hreq *r);

#endif
