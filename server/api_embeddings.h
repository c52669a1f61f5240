/*
 * api_embeddings.h - POST /v1/embeddings (api_embeddings.c has the design).
 * Loop thread.
 */
#ifndef ORTHOSERVE_API_EMBEDDINGS_H
#define ORTHOSERVE_API_EMBEDDINGS_H

#include "http.h"

void api_embeddings(hreq *r);

#endif
