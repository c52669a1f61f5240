/*
 * api_openai.h - the OpenAI endpoints (route handlers: routes.c) and the
 * engine-event handler that answers them (api_openai.c). Loop thread.
 */
#ifndef ORTHOSERVE_API_OPENAI_H
#define ORTHOSERVE_API_OPENAI_H

#include "http.h"
#include "job.h"
#include "request.h"
#include "orthoserve/engine.h"

/* POST /v1/chat/completions, /v1/completions: validate r->json
 * (request.c), then submit a job or reply with the error. */
void api_chat(hreq *r);
void api_completions(hreq *r);
/* GET /v1/models (the list) and /v1/models/{id} (r->path_rest). */
void api_models(hreq *r);
void api_model(hreq *r);
/* For other endpoints that generate (api_responses.c): whether r may be
 * submitted now (else it is answered 503); the facts a request is
 * validated against; and the submission of a validated request (takes req's
 * echo text; out / out_ctx: job_output, or NULL for a completion; out_ctx
 * is released on every path). */
bool api_server_ready(hreq *r);
api_limits api_limits_of(srv *s);
void api_submit(hreq *r, api_request *req, const job_output *out, void *out_ctx);
/* Bridge handler: one engine event for a job (ev->user). Loop thread. */
void api_on_event(const eng_event *ev, void *user);

#endif
