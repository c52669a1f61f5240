/*
 * api_responses.h - the Responses API (route handlers: routes.c):
 * POST /v1/responses generates through the chat completions road
 * (resp_request.c builds the chat body, api_openai.c submits the job) and
 * answers as a response object or its event stream; stored responses
 * (resp_store.h) are read and deleted by id. Loop thread.
 */
#ifndef ORTHOSERVE_API_RESPONSES_H
#define ORTHOSERVE_API_RESPONSES_H

#include "http.h"

/* POST /v1/responses: validate r->json, then submit or reply with the error. */
void api_responses_create(hreq *r);
/* GET and DELETE /v1/responses/{id} (r->path_rest). */
void api_responses_get(hreq *r);
void api_responses_delete(hreq *r);

#endif
