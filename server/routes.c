/*
 * routes.c - the route table. http.c matches a request's path and method
 * against these rows (a GET row serves HEAD too; other methods on a known
 * path get 405 with the path's methods in Allow), parses a POST row's JSON
 * body, and calls the handler. The label is the endpoint label of
 * orthoserve_http_requests_total (docs/METRICS.md).
 */
#include "routes.h"
#include "api_embeddings.h"
#include "api_openai.h"
#include "api_ops.h"
#include "api_responses.h"
#include "api_template.h"
#include "orthorank_json.h"

#include <stdbool.h>

const http_route server_routes[] = {
    /* method, path, prefix, handler, label */
    {"GET", "/health", false, api_health, "health"},
    {"GET", "/ready", false, api_ready, "ready"},
    {"GET", "/metrics", false, api_metrics, "metrics"},
    {"GET", "/v1/models", false, api_models, "models"},
    {"GET", "/models", false, api_models, "models"},
    {"GET", "/v1/models/", true, api_model, "models"}, /* /v1/models/{id} */
    {"POST", "/v1/chat/completions", false, api_chat, "chat_completions"},
    {"POST", "/chat/completions", false, api_chat, "chat_completions"},
    {"POST", "/v1/completions", false, api_completions, "completions"},
    {"POST", "/completions", false, api_completions, "completions"},
    {"POST", "/tokenize", false, api_tokenize, "tokenize"},
    {"POST", "/detokenize", false, api_detokenize, "detokenize"},
    {"POST", "/apply-template", false, api_apply_template, "apply_template"},
    {"GET", "/v1/orthorank", false, api_orthorank, "orthorank"},
    {"POST", "/v1/responses", false, api_responses_create, "responses"},
    {"POST", "/responses", false, api_responses_create, "responses"},
    {"GET", "/v1/responses/", true, api_responses_get, "responses"}, /* /v1/responses/{id} */
    {"DELETE", "/v1/responses/", true, api_responses_delete, "responses"},
    {"GET", "/responses/", true, api_responses_get, "responses"},
    {"DELETE", "/responses/", true, api_responses_delete, "responses"},
    {"POST", "/v1/embeddings", false, api_embeddings, "embeddings"},
    {"POST", "/embeddings", false, api_embeddings, "embeddings"},
};

const size_t server_n_routes = sizeof server_routes / sizeof server_routes[0];
