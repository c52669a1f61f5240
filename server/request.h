/*
 * request.h - validation of the completion endpoints' request bodies
 * (/v1/chat/completions, /v1/completions) into what the scheduler needs.
 *
 * Pure functions of the body and a few server facts (api_limits): no HTTP,
 * no scheduler, no randomness. On success the api_request holds engine
 * parameters the scheduler accepts (eng_sched_validate) once the submitter
 * has filled in what only it knows: the callback, the OrthoRank settings
 * (p.orthorank = &req->orthorank) and a random seed when the body gave
 * none. On failure the api_error holds the HTTP status, OpenAI error type
 * and code, the field at fault and the message. http.c replies with
 * it, the fuzz harness tests/fuzz/fuzz_request.c checks it. Loop thread or
 * any thread: nothing here keeps state.
 */
#ifndef ORTHOSERVE_REQUEST_H
#define ORTHOSERVE_REQUEST_H

#include "chat_tmpl.h"
#include "config.h"
#include "grammar_cache.h"
#include "orthoserve/engine.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A request's "orthorank" value (NULL/absent: nothing) set on top of *p,
 * which holds the server's defaults, and checked against the model
 * (the engine's field list). On error: returns -1 with param naming the field
 * ("orthorank.layers") and msg the reason (400). */
int orthorank_parse(json_t *v, const eng_model *m, eng_orthorank_params *p, char *param, size_t param_len,
                    char *msg, size_t len);

/* What a request is validated against: the served model and the limits. */
typedef struct {
    const srv_config *cfg;      /* max_tokens, OrthoRank defaults */
    const eng_model *model;     /* OrthoRank settings are checked against it */
    const eng_vocab *vocab;     /* token ids, tokenization */
    eng_chat_format chat_fmt;   /* renders "messages" when tmpl is NULL */
    const chat_tmpl *tmpl;      /* the model's Jinja chat template, or NULL */
    int32_t n_ctx;              /* positions per sequence */
    const char *model_id;       /* names "model" may give */
    const char *model_file;
    grammar_cache *gcache;      /* compiles a structured-output request's GBNF into p.grammar; NULL: left as
                                 * grammar_text (the fuzzer, unit tests) */
} api_limits;

/* A validated request. Owns prompt, bias, stops (the array; the strings are
 * views into the body, which must outlive the request) and echo_text. */
typedef struct {
    bool chat;
    /* The engine parameters: prompt, max_tokens, min_tokens, ignore_eos,
     * sampling (logit_bias points at bias), n_logprobs, prompt_logprobs.
     * on_event, user and orthorank are left NULL for the submitter. */
    eng_request_params p;
    bool seeded;                /* the body gave "seed"; else sampling.seed is 0 */
    int32_t *prompt;            /* n_prompt >= 1 token ids in [0, n_vocab) */
    eng_logit_bias *bias;
    const char **stops;         /* at most 16, for textbuf_new */
    size_t n_stops;
    bool stream, include_usage;
    bool echo;                  /* completions: the prompt goes first */
    char *echo_text;            /* its text (valid UTF-8) when echo, else NULL */
    size_t echo_len;
    eng_orthorank_params orthorank; /* the server's defaults with the body's "orthorank" on top */
    const char *prompt_param;   /* "messages" or "prompt": names the prompt in later errors */
    const char *cache_salt;     /* "cache_salt" (a view into the body), or NULL */
    size_t cache_salt_len;
    int32_t n_choices;          /* "n": choices of this prompt, 1..max_n (api_choices.c) */
    /* Tool calling and reasoning (a Jinja template's reply, toolcall.h):
     * parse_reply when the reply is split into content, reasoning_content
     * and tool_calls; tc.fmt is TC_NONE when no calls are looked for
     * (no tools, or tool_choice none); single_call: parallel_tool_calls
     * false. forced_tool: tool_choice required ("") or named (the name, a
     * view into the body), else NULL. */
    bool parse_reply;
    tc_opts tc;
    bool single_call;
    const char *forced_tool;
    /* Structured output (rformat.h): the GBNF text to enforce, or NULL; the
     * submitter compiles it into p.grammar (a reference this request owns). */
    char *grammar_text;
    size_t grammar_len;
    const char *grammar_param;  /* the field that asked for it ("response_format.json_schema", "grammar", ...) */
} api_request;

/* Why a request was refused: an OpenAI error object and the HTTP status. */
typedef struct {
    unsigned status;            /* 400, 404; 500/503 when memory ran out */
    const char *type;           /* "invalid_request_error", "not_found_error", "server_error", ... */
    const char *code;           /* "invalid_value", "missing_field", ...; NULL: none */
    char param[64];             /* the field at fault ("messages[2].content"); "": none */
    char message[512];
} api_error;

/* Fill *e (param NULL: none; the message from fmt) and return -1: the one
 * way every handler and parser writes an api_error. */
int api_error_set(api_error *e, unsigned status, const char *type, const char *code, const char *param,
                  const char *fmt, ...) __attribute__((format(printf, 6, 7)));
int api_error_vset(api_error *e, unsigned status, const char *type, const char *code, const char *param,
                   const char *fmt, va_list ap);

/* Validate a body (a JSON object) of either endpoint. 0 with *out filled
 * (free with api_request_free), or -1 with *err filled (*out needs no free). */
int api_parse_chat(const api_limits *lim, json_t *body, api_request *out, api_error *err);
int api_parse_completions(const api_limits *lim, json_t *body, api_request *out, api_error *err);
void api_request_free(api_request *req);
/* The longest "cache_salt" accepted (bytes). */
#define API_CACHE_SALT_MAX 256

/* The prefix-cache scope of a request (eng_request_params.cache_scope):
 * SipHash-2-4 under the server's random secret of the API key that
 * authenticated it (key: 1 + its index; 0: none, one scope for every
 * request without a key) and its cache_salt (NULL: none). Requests share
 * cached prompt prefixes only within one scope, so one key cannot learn
 * another's prompt from usage.prompt_tokens_details.cached_tokens. */
uint64_t api_cache_scope(const uint64_t secret[2], int key, const char *salt, size_t salt_len);

/* Whether name (a body's "model", a /v1/models/{id}) names the served model:
 * its id or its file name. */
bool api_model_name_ok(const api_limits *lim, const char *name);

#endif
