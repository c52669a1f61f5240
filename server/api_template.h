/*
 * api_template.h - POST /apply-template (llama-server's): a chat request's
 * messages rendered with the chat template in use, returned as the prompt.
 */
#ifndef ORTHOSERVE_API_TEMPLATE_H
#define ORTHOSERVE_API_TEMPLATE_H

#include "http.h"

void api_apply_template(hreq *r);

#endif
