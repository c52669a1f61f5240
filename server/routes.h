/*
 * routes.h - the server's route table: every endpoint as one row
 * {method, path, handler, metrics label} (routes.c), handed to the HTTP
 * layer at start. Adding an endpoint is one row there and one handler.
 */
#ifndef ORTHOSERVE_ROUTES_H
#define ORTHOSERVE_ROUTES_H

#include "http.h"

#include <stddef.h>

extern const http_route server_routes[];
extern const size_t server_n_routes;

#endif
