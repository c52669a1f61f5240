/*
 * config.h - orthoserve serve settings: one table, one precedence.
 *
 * Every setting has a JSON key (config file), an ORTHOSERVE_<KEY> environment
 * variable and a command-line flag. Precedence: built-in defaults < config
 * file (--config FILE or ORTHOSERVE_CONFIG) < environment < command line.
 * Unknown keys and bad values are errors that name the key.
 */
#ifndef ORTHOSERVE_CONFIG_H
#define ORTHOSERVE_CONFIG_H

#include "orthoserve/engine.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

typedef struct {
    char **v; /* n malloc'd strings */
    size_t n;
} srv_strlist;

typedef struct {
    char *model;          /* GGUF file (required) */
    char *host;           /* listen address */
    long port;
    long threads;         /* compute threads */
    bool mmap;            /* map the model (default); false: read it into memory */
    bool repack;          /* repack weight matrices for the kernels at load (default) */
    long ctx_size;        /* positions per sequence; 0: the model's */
    long parallel;        /* sequences decoded together */
    long batch_size;      /* token budget of one scheduler step */
    long kv_tokens;       /* KV budget over all sequences; 0: ctx_size * parallel */
    char *cache_type_k, *cache_type_v; /* KV cache element types: "f16" | "f32" | "q8_0" */
    char *alias;          /* model id; "" = the file name */
    char *chat_template;  /* "" = detect from the model */
    char *chat_template_file; /* Jinja template file overriding the model's; "" = none */
    srv_strlist api_keys; /* empty: no authentication (api_keys_file's keys are appended) */
    char *api_keys_file;  /* one key per line ('#' comments, blank lines skipped); "" = none */
    srv_strlist public_paths;  /* paths served without a key */
    srv_strlist cors_origins;  /* allowed origins; "*" any; empty: no CORS */
    long max_body_bytes;
    long max_connections;
    long max_connections_per_ip; /* concurrent connections from one address */
    long max_body_buffer;    /* request body bytes buffered over all connections */
    long max_queue;
    long max_tokens;      /* per request (also the default when a request omits it) */
    double request_timeout;  /* seconds from arrival to the end of generation */
    double idle_timeout;     /* seconds a connection may sit idle */
    double body_timeout;     /* seconds a request body may take after its headers */
    double drain_timeout;    /* seconds in-flight requests get on SIGINT/SIGTERM */
    long retry_after;        /* seconds, in 429 and 503 responses */
    bool log_requests;       /* one line per request on stderr */
    bool verbose;            /* engine log messages (the same as log_level "debug") */
    char *log_format;        /* "text" | "json" (one JSON object per line) */
    char *log_level;         /* "error" | "warn" | "info" | "debug" */
    bool store_responses;    /* /v1/responses may store responses (resp_store.h) */
    char *state_dir;         /* the directory of the stored responses' database */
    long max_stored_responses;
    double stored_response_ttl; /* seconds */
    eng_orthorank_params orthorank; /* every request's OrthoRank settings before its own (keys
                                     * orthorank_<field>: sparsity, token_ratio, decode, method,
                                     * min_tokens), checked without a model */
    char *orthorank_plan;    /* plan file; "": MODEL.orthorank.json beside the model if present */
    /* embeddings and several choices (api_embeddings.c, api_choices.c) */
    char *pooling;           /* "mean" | "cls" | "last"; "": the model's pooling_type, else mean */
    long max_embedding_inputs; /* inputs of one /v1/embeddings request */
    long max_n;              /* a request's "n" (choices per prompt) */
    long max_prompts;        /* prompts of one /v1/completions request */
    /* structured output bounds (grammar_*: eng_grammar_limits; schema_*: schema_limits) */
    long grammar_max_bytes, grammar_max_rules, grammar_max_elements, grammar_max_stacks, grammar_max_depth;
    double grammar_max_compile_ms;
    long grammar_cache;      /* compiled grammars kept */
    long schema_max_depth, schema_max_count;
    char *config_file;       /* the file that was read, or NULL */
} srv_config;

/* Fill cfg from defaults, file, environment and argv (argv[0] is "serve").
 * Returns 0 ok, 1 when --help was printed (exit 0), -1 on an error already
 * printed to stderr (exit 2). Free with srv_config_free() in every case. */
int srv_config_load(srv_config *cfg, int argc, char **argv);
void srv_config_free(srv_config *cfg);
/* The --help text (every flag, its key and default). */
void srv_config_usage(FILE *f);

#endif
