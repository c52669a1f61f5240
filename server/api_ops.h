/*
 * api_ops.h - the operational endpoints (route handlers: routes.c):
 * /health, /ready, /metrics, and llama-server's /tokenize and /detokenize
 * (POST: the body is r->json). Loop thread.
 */
#ifndef ORTHOSERVE_API_OPS_H
#define ORTHOSERVE_API_OPS_H

#include "http.h"

void api_health(hreq *r);
void api_ready(hreq *r);
void api_metrics(hreq *r);
void api_tokenize(hreq *r);
void api_detokenize(hreq *r);

#endif
