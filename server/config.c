/*
 * config.c - the serve settings table and its one precedence:
 * defaults < config file < ORTHOSERVE_* environment < command-line flags.
 * The same table drives --help, the JSON keys, the environment names and
 * getopt, so a setting cannot exist in one place and not the others.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

extern char **environ;

/* CT_ORTHORANK: a field of the OrthoRank defaults, named by the key after
 * "orthorank_"; the engine's field list gives its kind and range. */
typedef enum { CT_STR, CT_INT, CT_DBL, CT_BOOL, CT_LIST, CT_ORTHORANK } ctype;

typedef struct {
    const char *key;  /* JSON key; env ORTHOSERVE_<KEY> */
    ctype type;
    size_t off;
    const char *lopt; /* long flag */
    char sopt;        /* short flag or 0 */
    double lo, hi;    /* range for numbers */
    const char *def;  /* default, as text */
    const char *help;
} copt;

#define OFF(f) offsetof(srv_config, f)
static const copt OPTS[] = {
    {"model", CT_STR, OFF(model), "model", 'm', 0, 0, "", "GGUF model file (required)"},
    {"host", CT_STR, OFF(host), "host", 0, 0, 0, "127.0.0.1", "address to listen on"},
    {"port", CT_INT, OFF(port), "port", 0, 0, 65535, "8080", "TCP port (0: any free port, printed at start)"},
    {"threads", CT_INT, OFF(threads), "threads", 't', 1, 512, "2", "compute threads"},
    {"mmap", CT_BOOL, OFF(mmap), "mmap", 0, 0, 0, "true",
     "memory-map the model file; false: read it into memory (a file truncated or rewritten while "
     "serving cannot then crash the server)"},
    {"repack", CT_BOOL, OFF(repack), "repack", 0, 0, 0, "true",
     "reorder F16/Q8_0/Q4_K/Q6_K weight matrices at load into the layout the AVX-512 kernels stream "
     "fastest (same results; with mmap those matrices are copied into memory)"},
    {"ctx_size", CT_INT, OFF(ctx_size), "ctx-size", 'c', 0, 1 << 22, "0",
     "context positions per sequence; 0 = the model's training context"},
    {"parallel", CT_INT, OFF(parallel), "parallel", 0, 1, 256, "4", "sequences decoded together (slots)"},
    {"batch_size", CT_INT, OFF(batch_size), "batch-size", 'b', 1, 1 << 20, "512",
     "token budget of one scheduler step"},
    {"kv_tokens", CT_INT, OFF(kv_tokens), "kv-tokens", 0, 0, 1 << 30, "0",
     "KV cache budget in tokens over all sequences; 0 = ctx_size * parallel"},
    {"cache_type_k", CT_STR, OFF(cache_type_k), "cache-type-k", 0, 0, 0, "f16",
     "KV cache element type of K: f16, f32 (the golden logits' own) or q8_0 (half of f16's memory)"},
    {"cache_type_v", CT_STR, OFF(cache_type_v), "cache-type-v", 0, 0, 0, "f16",
     "KV cache element type of V: f16, f32 or q8_0"},
    {"alias", CT_STR, OFF(alias), "alias", 'a', 0, 0, "", "model id in the API; default: the file name"},
    {"chat_template", CT_STR, OFF(chat_template), "chat-template", 0, 0, 0, "",
     "built-in chat template (chatml, llama2, llama3, mistral, zephyr, phi3, gemma, plain); default: the "
     "model's own Jinja template, else detect"},
    {"chat_template_file", CT_STR, OFF(chat_template_file), "chat-template-file", 0, 0, 0, "",
     "Jinja chat template file rendering messages (overrides the model's tokenizer.chat_template)"},
    {"api_keys", CT_LIST, OFF(api_keys), "api-key", 0, 0, 0, "",
     "accepted API key (repeat or comma-separate for several); not set = no authentication (an empty "
     "list is an error)"},
    {"api_keys_file", CT_STR, OFF(api_keys_file), "api-keys-file", 0, 0, 0, "",
     "file of accepted API keys, one per line ('#' comments); added to api_keys"},
    {"public_paths", CT_LIST, OFF(public_paths), "public-path", 0, 0, 0, "/health,/ready,/metrics",
     "paths served without an API key (the probes and the scrape by default)"},
    {"cors_origins", CT_LIST, OFF(cors_origins), "cors-origin", 0, 0, 0, "",
     "allowed CORS origin ('*' = any; repeat or comma-separate); none = no CORS headers"},
    {"max_body_bytes", CT_INT, OFF(max_body_bytes), "max-body-bytes", 0, 1024, 1 << 30, "4194304",
     "largest request body accepted (413 beyond)"},
    {"max_connections", CT_INT, OFF(max_connections), "max-connections", 0, 1, 100000, "256",
     "concurrent HTTP connections"},
    {"max_connections_per_ip", CT_INT, OFF(max_connections_per_ip), "max-connections-per-ip", 0, 1, 100000, "64",
     "concurrent HTTP connections from one client address (loopback included)"},
    {"max_body_buffer", CT_INT, OFF(max_body_buffer), "max-body-buffer", 0, 1024, 1L << 40, "67108864",
     "request body bytes buffered over all connections at once (503 beyond)"},
    {"max_queue", CT_INT, OFF(max_queue), "max-queue", 0, 0, 1000000, "64",
     "requests waiting for a slot beyond which new ones get 429"},
    {"max_tokens", CT_INT, OFF(max_tokens), "max-tokens", 0, 1, 1 << 22, "4096",
     "most tokens one request may generate (and the default when it says nothing)"},
    {"request_timeout", CT_DBL, OFF(request_timeout), "timeout", 0, 0.001, 1e7, "600",
     "seconds a request may take from arrival to its last token"},
    {"idle_timeout", CT_DBL, OFF(idle_timeout), "idle-timeout", 0, 1, 1e7, "60",
     "seconds an idle connection is kept open"},
    {"body_timeout", CT_DBL, OFF(body_timeout), "body-timeout", 0, 0.1, 1e7, "10",
     "seconds a request body may take to arrive after its headers"},
    {"drain_timeout", CT_DBL, OFF(drain_timeout), "drain-timeout", 0, 0, 1e7, "30",
     "seconds in-flight requests may finish after SIGINT/SIGTERM"},
    {"retry_after", CT_INT, OFF(retry_after), "retry-after", 0, 0, 86400, "1",
     "Retry-After seconds in 429 and 503 responses"},
    {"log_requests", CT_BOOL, OFF(log_requests), "log-requests", 0, 0, 0, "true",
     "one line per request on stderr"},
    {"verbose", CT_BOOL, OFF(verbose), "verbose", 'v', 0, 0, "false",
     "engine debug messages on stderr (the same as --log-level debug)"},
    {"log_format", CT_STR, OFF(log_format), "log-format", 0, 0, 0, "text",
     "log line format on stderr: text or json (one JSON object per line)"},
    {"log_level", CT_STR, OFF(log_level), "log-level", 0, 0, 0, "info",
     "least severe log messages shown: error, warn, info or debug"},
    {"store_responses", CT_BOOL, OFF(store_responses), "store-responses", 0, 0, 0, "true",
     "keep /v1/responses results (request 'store', default true) in STATE_DIR/responses.sqlite3; false: "
     "never store, and previous_response_id is refused"},
    {"state_dir", CT_STR, OFF(state_dir), "state-dir", 0, 0, 0, "orthoserve-state",
     "directory of the server's database (relative: to the working directory; created on first use)"},
    {"max_stored_responses", CT_INT, OFF(max_stored_responses), "max-stored-responses", 0, 1, 1000000000, "10000",
     "stored responses kept at most (the oldest are deleted first)"},
    {"stored_response_ttl", CT_DBL, OFF(stored_response_ttl), "stored-response-ttl", 0, 1, 1e10, "2592000",
     "seconds a stored response is kept (default 30 days)"},
    {"orthorank_sparsity", CT_ORTHORANK, OFF(orthorank), "orthorank-sparsity", 0, 0, 0, "0",
     "OrthoRank sparsity of requests that set none (0: dense)"},
    {"orthorank_token_ratio", CT_ORTHORANK, OFF(orthorank), "orthorank-token-ratio", 0, 0, 0, "0.3333333333",
     "OrthoRank token ratio k of requests that set none"},
    {"orthorank_decode", CT_ORTHORANK, OFF(orthorank), "orthorank-decode", 0, 0, 0, "threshold",
     "OrthoRank decode policy default: threshold, full or off"},
    {"orthorank_method", CT_ORTHORANK, OFF(orthorank), "orthorank-method", 0, 0, 0, "orthorank",
     "OrthoRank method default: orthorank, layer_skip, random or inverse"},
    {"orthorank_min_tokens", CT_ORTHORANK, OFF(orthorank), "orthorank-min-tokens", 0, 0, 0, "16",
     "prompt chunks shorter than this are selected token by token, like decoding"},
    {"orthorank_decode_grouping", CT_ORTHORANK, OFF(orthorank), "orthorank-decode-grouping", 0, 0, 0, "none",
     "OrthoRank batched decode grouping default: none or batch (batch: a sequence's output depends on its batch)"},
    {"orthorank_plan", CT_STR, OFF(orthorank_plan), "orthorank-plan", 0, 0, 0, "",
     "layer plan from 'orthoserve calibrate'; default: MODEL.orthorank.json beside the model if present"},
    {"pooling", CT_STR, OFF(pooling), "pooling", 0, 0, 0, "",
     "embeddings: mean, cls or last pooling; default: the model's pooling_type, else mean"},
    {"max_embedding_inputs", CT_INT, OFF(max_embedding_inputs), "max-embedding-inputs", 0, 1, 100000, "64",
     "inputs one /v1/embeddings request may carry (each is a queued request while it waits)"},
    {"max_n", CT_INT, OFF(max_n), "max-n", 0, 1, 256, "8",
     "choices per prompt a request may ask for (\"n\"); they share the prompt's KV"},
    {"max_prompts", CT_INT, OFF(max_prompts), "max-prompts", 0, 1, 100000, "64",
     "prompts one /v1/completions request may carry (\"prompt\" as a list)"},
    /* structured output: the bounds of every grammar and JSON Schema (docs/API.md) */
    {"grammar_max_bytes", CT_INT, OFF(grammar_max_bytes), "grammar-max-bytes", 0, 64, 1 << 26, "1048576",
     "largest GBNF text, given or compiled from a JSON Schema (bytes)"},
    {"grammar_max_rules", CT_INT, OFF(grammar_max_rules), "grammar-max-rules", 0, 1, 1 << 24, "20000",
     "most grammar rules (groups, repetitions and schema nodes count)"},
    {"grammar_max_elements", CT_INT, OFF(grammar_max_elements), "grammar-max-elements", 0, 1, 1 << 26, "200000",
     "most grammar elements after expanding repetitions"},
    {"grammar_max_stacks", CT_INT, OFF(grammar_max_stacks), "grammar-max-stacks", 0, 1, 1 << 20, "1024",
     "most parse stacks a sequence's matcher holds (ambiguity)"},
    {"grammar_max_depth", CT_INT, OFF(grammar_max_depth), "grammar-max-depth", 0, 1, 1 << 20, "256",
     "deepest nesting of a parse stack (nested JSON values)"},
    {"grammar_max_compile_ms", CT_DBL, OFF(grammar_max_compile_ms), "grammar-max-compile-ms", 0, 1, 1e6, "2000",
     "longest time a grammar may take to compile (milliseconds)"},
    {"grammar_cache", CT_INT, OFF(grammar_cache), "grammar-cache", 0, 0, 1 << 20, "64",
     "compiled grammars kept for reuse (by the hash of their text)"},
    {"schema_max_depth", CT_INT, OFF(schema_max_depth), "schema-max-depth", 0, 1, 4096, "64",
     "deepest nesting of JSON Schema subschemas followed"},
    {"schema_max_count", CT_INT, OFF(schema_max_count), "schema-max-count", 0, 1, 1 << 20, "1000",
     "largest minItems / maxItems / minLength / maxLength a schema may ask to enforce"},
};
#define N_OPTS (sizeof OPTS / sizeof OPTS[0])

static void list_clear(srv_strlist *l)
{
    for (size_t i = 0; i < l->n; i++) free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

static int list_add(srv_strlist *l, const char *s, size_t len)
{
    char **nv = realloc(l->v, (l->n + 1) * sizeof *nv);
    if (!nv) return -1;
    l->v = nv;
    if (!(l->v[l->n] = strndup(s, len))) return -1;
    l->n++;
    return 0;
}

/* One item with its surrounding blanks trimmed; an empty item is skipped. */
static int list_add_trimmed(srv_strlist *l, const char *s, size_t n)
{
    while (n && isspace((unsigned char)*s)) s++, n--;
    while (n && isspace((unsigned char)s[n - 1])) n--;
    return n ? list_add(l, s, n) : 0;
}

/* Comma-separated list; empty items are skipped. */
static int list_add_csv(srv_strlist *l, const char *s)
{
    while (*s) {
        const char *e = strchr(s, ',');
        size_t n = e ? (size_t)(e - s) : strlen(s);
        if (list_add_trimmed(l, s, n)) return -1;
        if (!e) break;
        s = e + 1;
    }
    return 0;
}

/* A source that sets api_keys must give a key: an empty list (an empty
 * flag or variable, a secret that rendered empty) would otherwise turn
 * authentication off without a word. Not setting it at all is the way to
 * serve without keys. before: the list's length before this source added. */
static int check_keys_given(const srv_config *c, const copt *o, size_t before, char *err, size_t errlen)
{
    if (o->off != OFF(api_keys) || c->api_keys.n > before) return 0;
    snprintf(err, errlen, "no key given: an empty key list would turn authentication off (leave the setting "
                          "out to serve without keys)");
    return -1;
}

static bool parse_bool(const char *s, bool *out)
{
    if (!strcasecmp(s, "1") || !strcasecmp(s, "true") || !strcasecmp(s, "yes") || !strcasecmp(s, "on")) {
        *out = true;
        return true;
    }
    if (!strcasecmp(s, "0") || !strcasecmp(s, "false") || !strcasecmp(s, "no") || !strcasecmp(s, "off")) {
        *out = false;
        return true;
    }
    return false;
}

/* The engine's field of a CT_ORTHORANK row. */
static const eng_orthorank_field *orthorank_field(const copt *o)
{
    static const char prefix[] = "orthorank_";
    size_t n = strlen(o->key);
    if (n < sizeof prefix || strncmp(o->key, prefix, sizeof prefix - 1)) return NULL;
    return eng_orthorank_field_find(o->key + (sizeof prefix - 1), n - (sizeof prefix - 1));
}

static void range_msg(const copt *o, char *err, size_t errlen, const char *what)
{
    if (o->type == CT_ORTHORANK)
        snprintf(err, errlen, "expected %s%s%s", orthorank_field(o)->expect, what ? ", got " : "", what ? what : "");
    else if (o->type == CT_INT)
        snprintf(err, errlen, "expected an integer in [%.0f, %.0f]%s%s", o->lo, o->hi, what ? ", got " : "",
                 what ? what : "");
    else if (o->type == CT_DBL)
        snprintf(err, errlen, "expected a number in [%g, %g]%s%s", o->lo, o->hi, what ? ", got " : "",
                 what ? what : "");
    else if (o->type == CT_BOOL)
        snprintf(err, errlen, "expected true or false%s%s", what ? ", got " : "", what ? what : "");
    else if (o->type == CT_LIST)
        snprintf(err, errlen, "expected an array of strings (or a comma-separated string)");
    else
        snprintf(err, errlen, "expected a string");
}

/* A CT_ORTHORANK field from text (numbers parsed as strictly as the other
 * rows' numbers), or from a JSON number (v), through the engine's setters. */
static int set_orthorank(srv_config *c, const copt *o, const char *s, const double *v, char *err, size_t errlen)
{
    const eng_orthorank_field *f = orthorank_field(o);
    char why[160], num[64];
    eng_status st;
    if (f->kind == ENG_ORTHORANK_FIELD_NAME) {
        st = eng_orthorank_set_name(&c->orthorank, f, s, strlen(s), why, sizeof why);
    } else if (v) {
        snprintf(num, sizeof num, "%g", *v);
        s = num;
        st = eng_orthorank_set_number(&c->orthorank, f, *v, why, sizeof why);
    } else {
        char *end;
        errno = 0;
        double x = f->kind == ENG_ORTHORANK_FIELD_INTEGER ? (double)strtol(s, &end, 10) : strtod(s, &end);
        if (errno || end == s || *end || !isfinite(x)) {
            range_msg(o, err, errlen, s);
            return -1;
        }
        st = eng_orthorank_set_number(&c->orthorank, f, x, why, sizeof why);
    }
    if (st == ENG_OK) return 0;
    snprintf(err, errlen, "%s, got %s", why, s);
    return -1;
}

/* Set from text (environment, command line, defaults). append: for lists,
 * add to what this source already set instead of replacing. */
static int set_text(srv_config *c, const copt *o, const char *s, bool append, char *err, size_t errlen)
{
    void *p = (char *)c + o->off;
    switch (o->type) {
    case CT_STR: {
        char *d = strdup(s);
        if (!d) return -1;
        free(*(char **)p);
        *(char **)p = d;
        return 0;
    }
    case CT_INT: {
        char *end;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (errno || end == s || *end || v < o->lo || v > o->hi) {
            range_msg(o, err, errlen, s);
            return -1;
        }
        *(long *)p = v;
        return 0;
    }
    case CT_DBL: {
        char *end;
        errno = 0;
        double v = strtod(s, &end);
        if (errno || end == s || *end || !isfinite(v) || v < o->lo || v > o->hi) {
            range_msg(o, err, errlen, s);
            return -1;
        }
        *(double *)p = v;
        return 0;
    }
    case CT_BOOL:
        if (!parse_bool(s, (bool *)p)) {
            range_msg(o, err, errlen, s);
            return -1;
        }
        return 0;
    case CT_LIST: {
        srv_strlist *l = p;
        if (!append) list_clear(l);
        size_t before = l->n;
        if (list_add_csv(l, s)) return -1;
        return check_keys_given(c, o, before, err, errlen);
    }
    case CT_ORTHORANK:
        return set_orthorank(c, o, s, NULL, err, errlen);
    }
    return -1;
}

static int set_json(srv_config *c, const copt *o, json_t *v, char *err, size_t errlen)
{
    void *p = (char *)c + o->off;
    char buf[64];
    switch (o->type) {
    case CT_STR:
        if (!json_is_string(v)) break;
        return set_text(c, o, json_string_value(v), false, err, errlen);
    case CT_INT:
        if (!json_is_integer(v)) break;
        if ((double)json_integer_value(v) < o->lo || (double)json_integer_value(v) > o->hi) break;
        *(long *)p = (long)json_integer_value(v);
        return 0;
    case CT_DBL:
        if (!json_is_number(v)) break;
        if (json_number_value(v) < o->lo || json_number_value(v) > o->hi) break;
        *(double *)p = json_number_value(v);
        return 0;
    case CT_BOOL:
        if (!json_is_boolean(v)) break;
        *(bool *)p = json_is_true(v);
        return 0;
    case CT_LIST: {
        srv_strlist *l = p;
        if (json_is_null(v)) return 0; /* not set here: what came before stays */
        if (json_is_string(v)) return set_text(c, o, json_string_value(v), false, err, errlen);
        if (!json_is_array(v)) break;
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e) if (!json_is_string(e)) goto bad;
        list_clear(l);
        json_array_foreach(v, i, e) if (list_add_trimmed(l, json_string_value(e), json_string_length(e))) return -1;
        /* A blank item is skipped, but for api_keys it is an error too. */
        return check_keys_given(c, o, l->n < json_array_size(v) ? l->n : 0, err, errlen);
    }
    case CT_ORTHORANK: {
        eng_orthorank_field_kind k = orthorank_field(o)->kind;
        if (k == ENG_ORTHORANK_FIELD_NAME) {
            if (!json_is_string(v)) break;
            return set_orthorank(c, o, json_string_value(v), NULL, err, errlen);
        }
        if (k == ENG_ORTHORANK_FIELD_INTEGER ? !json_is_integer(v) : !json_is_number(v)) break;
        double x = json_number_value(v);
        return set_orthorank(c, o, NULL, &x, err, errlen);
    }
    }
bad:
    if (json_is_integer(v)) snprintf(buf, sizeof buf, "%lld", (long long)json_integer_value(v));
    else if (json_is_real(v)) snprintf(buf, sizeof buf, "%g", json_real_value(v));
    else snprintf(buf, sizeof buf, "a JSON %s",
                  json_is_string(v) ? "string" : json_is_array(v) ? "array" : json_is_object(v) ? "object"
                  : json_is_boolean(v) ? "boolean" : "null");
    range_msg(o, err, errlen, buf);
    return -1;
}

static const copt *find_key(const char *key)
{
    for (size_t i = 0; i < N_OPTS; i++)
        if (!strcmp(OPTS[i].key, key)) return &OPTS[i];
    return NULL;
}

static void env_name(const copt *o, char *buf, size_t n)
{
    size_t k = (size_t)snprintf(buf, n, "ORTHOSERVE_");
    for (const char *s = o->key; *s && k + 1 < n; s++) buf[k++] = (char)toupper((unsigned char)*s);
    buf[k] = 0;
}

void srv_config_usage(FILE *f)
{
    fprintf(f,
            "usage: orthoserve serve -m MODEL [options]\n"
            "\n"
            "OpenAI-compatible HTTP server. Every option is also a config-file key and an\n"
            "ORTHOSERVE_<KEY> environment variable; precedence: defaults < --config file <\n"
            "environment < flags. See config/README.md.\n"
            "\n"
            "      --config FILE              JSON config file (env ORTHOSERVE_CONFIG)\n");
    for (size_t i = 0; i < N_OPTS; i++) {
        const copt *o = &OPTS[i];
        char flag[64];
        ctype t = o->type;
        if (t == CT_ORTHORANK) {
            eng_orthorank_field_kind k = orthorank_field(o)->kind;
            t = k == ENG_ORTHORANK_FIELD_NUMBER ? CT_DBL : k == ENG_ORTHORANK_FIELD_INTEGER ? CT_INT : CT_STR;
        }
        const char *arg = t == CT_BOOL  ? "[BOOL]"
                          : t == CT_INT ? "N"
                          : t == CT_DBL ? (strstr(o->key, "timeout") ? "SEC" : "X")
                          : t == CT_LIST ? "VALUE"
                                         : "TEXT";
        if (!strcmp(o->key, "model")) arg = "FILE";
        if (!strcmp(o->key, "alias")) arg = "NAME";
        if (!strcmp(o->key, "api_keys")) arg = "KEY";
        if (!strcmp(o->key, "api_keys_file") || !strcmp(o->key, "orthorank_plan")) arg = "FILE";
        if (!strcmp(o->key, "log_format")) arg = "FORMAT";
        if (!strcmp(o->key, "log_level")) arg = "LEVEL";
        if (!strncmp(o->key, "cache_type_", 11)) arg = "TYPE";
        if (o->sopt) snprintf(flag, sizeof flag, "-%c, --%s %s", o->sopt, o->lopt, arg);
        else snprintf(flag, sizeof flag, "    --%s %s", o->lopt, arg);
        fprintf(f, "  %-30s %s", flag, o->help);
        if (o->def[0]) fprintf(f, " (default %s)", o->def);
        else if (!strstr(o->help, "required") && !strstr(o->help, "default")) fprintf(f, " (default none)");
        fprintf(f, " [%s]\n", o->key);
    }
    fprintf(f, "  -h, --help                     this text\n");
}

void srv_config_free(srv_config *c)
{
    for (size_t i = 0; i < N_OPTS; i++) {
        void *p = (char *)c + OPTS[i].off;
        if (OPTS[i].type == CT_STR) {
            free(*(char **)p);
            *(char **)p = NULL;
        } else if (OPTS[i].type == CT_LIST) {
            list_clear(p);
        }
    }
    free(c->config_file);
    c->config_file = NULL;
}

static int load_file(srv_config *c, const char *path)
{
    json_error_t je;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        fprintf(stderr, "orthoserve: config file %s: line %d: %s\n", path, je.line, je.text);
        return -1;
    }
    int rc = 0;
    if (!json_is_object(root)) {
        fprintf(stderr, "orthoserve: config file %s: expected a JSON object\n", path);
        rc = -1;
        goto out;
    }
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        const copt *o = find_key(key);
        char err[256];
        if (!o) {
            fprintf(stderr, "orthoserve: config file %s: unknown key '%s'\n", path, key);
            rc = -1;
            goto out;
        }
        if (set_json(c, o, v, err, sizeof err)) {
            fprintf(stderr, "orthoserve: config file %s: key '%s': %s\n", path, key, err);
            rc = -1;
            goto out;
        }
    }
out:
    json_decref(root);
    return rc;
}

static bool one_of(const char *v, ...)
{
    va_list ap;
    va_start(ap, v);
    const char *x;
    bool ok = false;
    while (!ok && (x = va_arg(ap, const char *))) ok = !strcmp(v, x);
    va_end(ap);
    return ok;
}

/* api_keys_file: one key per line, surrounding blanks trimmed, blank lines
 * and '#' comments skipped. A file without a key is an error: it would
 * silently turn authentication off. */
static int load_keys_file(srv_config *c)
{
    FILE *f = fopen(c->api_keys_file, "r");
    if (!f) {
        fprintf(stderr, "orthoserve: key 'api_keys_file': cannot read %s: %s\n", c->api_keys_file, strerror(errno));
        return -1;
    }
    char line[4096];
    size_t before = c->api_keys.n;
    int rc = 0;
    while (fgets(line, sizeof line, f)) {
        size_t n = strlen(line);
        if (n == sizeof line - 1 && line[n - 1] != '\n') {
            fprintf(stderr, "orthoserve: key 'api_keys_file': %s: a line is longer than %zu bytes\n",
                    c->api_keys_file, sizeof line - 2);
            rc = -1;
            break;
        }
        char *p = line;
        while (*p && isspace((unsigned char)*p)) p++;
        n = strlen(p);
        while (n && isspace((unsigned char)p[n - 1])) n--;
        if (!n || *p == '#') continue;
        if (list_add(&c->api_keys, p, n)) {
            rc = -1;
            break;
        }
    }
    if (!rc && ferror(f)) {
        fprintf(stderr, "orthoserve: key 'api_keys_file': cannot read %s\n", c->api_keys_file);
        rc = -1;
    }
    fclose(f);
    if (!rc && c->api_keys.n == before) {
        fprintf(stderr, "orthoserve: key 'api_keys_file': %s holds no key\n", c->api_keys_file);
        rc = -1;
    }
    return rc;
}

static int set_defaults(srv_config *c)
{
    char err[256];
    memset(c, 0, sizeof *c);
    c->orthorank = eng_orthorank_default_params(); /* the fields no key sets */
    for (size_t i = 0; i < N_OPTS; i++) /* an empty list is already there (and "" is no key) */
        if (!(OPTS[i].type == CT_LIST && !OPTS[i].def[0]) && set_text(c, &OPTS[i], OPTS[i].def, false, err, sizeof err))
            return -1;
    return 0;
}

enum { O_CONFIG = 1000, O_HELP = 'h' };

/* getopt_long's tables from OPTS: option i returns 2000 + i (or its short
 * letter), plus --config and --help. */
static void getopt_tables(struct option lopts[N_OPTS + 3], char sopts[2 * N_OPTS + 4])
{
    size_t ns = 0;
    for (size_t i = 0; i < N_OPTS; i++) {
        bool flag = OPTS[i].type == CT_BOOL;
        lopts[i] = (struct option){OPTS[i].lopt, flag ? optional_argument : required_argument, NULL, 2000 + (int)i};
        if (OPTS[i].sopt) {
            sopts[ns++] = OPTS[i].sopt;
            if (!flag) sopts[ns++] = ':';
        }
    }
    lopts[N_OPTS] = (struct option){"config", required_argument, NULL, O_CONFIG};
    lopts[N_OPTS + 1] = (struct option){"help", no_argument, NULL, O_HELP};
    lopts[N_OPTS + 2] = (struct option){0, 0, 0, 0};
    sopts[ns++] = 'h';
    sopts[ns] = 0;
}

int srv_config_load(srv_config *c, int argc, char **argv)
{
    char err[256];
    if (set_defaults(c)) return -1;

    /* Pass 1: collect the flags (applied last) and find --config. */
    struct option lopts[N_OPTS + 3];
    char sopts[2 * N_OPTS + 4];
    getopt_tables(lopts, sopts);

    int *which = calloc((size_t)argc + 1, sizeof *which);
    char **vals = calloc((size_t)argc + 1, sizeof *vals);
    size_t nflags = 0;
    const char *config_path = getenv("ORTHOSERVE_CONFIG");
    int rc = -1, ch;
    if (!which || !vals) goto out;
    optind = 1;
    opterr = 1;
    while ((ch = getopt_long(argc, argv, sopts, lopts, NULL)) != -1) {
        if (ch == O_HELP) {
            srv_config_usage(stdout);
            rc = 1;
            goto out;
        }
        if (ch == O_CONFIG) {
            config_path = optarg;
            continue;
        }
        int idx = -1;
        if (ch >= 2000 && ch < 2000 + (int)N_OPTS) idx = ch - 2000;
        else
            for (size_t i = 0; i < N_OPTS; i++)
                if (OPTS[i].sopt && OPTS[i].sopt == ch) idx = (int)i;
        if (idx < 0) {
            fprintf(stderr, "Run 'orthoserve serve --help' for the options.\n");
            goto out;
        }
        which[nflags] = idx;
        vals[nflags++] = optarg;
    }
    if (optind != argc) {
        fprintf(stderr, "orthoserve serve: unexpected argument '%s'\n", argv[optind]);
        goto out;
    }

    if (config_path && config_path[0]) {
        if (load_file(c, config_path)) goto out;
        c->config_file = strdup(config_path);
    }

    /* Environment. Unknown ORTHOSERVE_* names are reported but not fatal:
     * other tools of the project share the prefix. ORTHOSERVE_ISA and
     * ORTHOSERVE_BLAS_NX are the engine's (its kernel level, checked by
     * cli_serve; the opt-in OpenBLAS product path). */
    for (char **e = environ; *e; e++) {
        if (strncmp(*e, "ORTHOSERVE_", 11)) continue;
        const char *eq = strchr(*e, '=');
        if (!eq) continue;
        size_t nlen = (size_t)(eq - *e);
        bool known = (nlen == 17 && !strncmp(*e, "ORTHOSERVE_CONFIG", 17)) ||
                     (nlen == 14 && !strncmp(*e, "ORTHOSERVE_ISA", 14)) ||
                     (nlen == 18 && !strncmp(*e, "ORTHOSERVE_BLAS_NX", 18));
        for (size_t i = 0; i < N_OPTS && !known; i++) {
            char name[64];
            env_name(&OPTS[i], name, sizeof name);
            if (strlen(name) == nlen && !strncmp(name, *e, nlen)) {
                known = true;
                if (set_text(c, &OPTS[i], eq + 1, false, err, sizeof err)) {
                    fprintf(stderr, "orthoserve: environment %s (key '%s'): %s\n", name, OPTS[i].key, err);
                    goto out;
                }
            }
        }
        if (!known) fprintf(stderr, "orthoserve: warning: ignoring unknown environment variable %.*s\n", (int)nlen, *e);
    }

    /* Command line, last. A list flag given several times accumulates. */
    bool list_seen[N_OPTS];
    memset(list_seen, 0, sizeof list_seen);
    for (size_t k = 0; k < nflags; k++) {
        const copt *o = &OPTS[which[k]];
        const char *v = vals[k];
        if (o->type == CT_BOOL && !v) v = "true";
        bool append = o->type == CT_LIST && list_seen[which[k]];
        if (o->type == CT_LIST) list_seen[which[k]] = true;
        if (set_text(c, o, v, append, err, sizeof err)) {
            fprintf(stderr, "orthoserve: --%s (key '%s'): %s\n", o->lopt, o->key, err);
            goto out;
        }
    }

    if (!c->model || !c->model[0]) {
        fprintf(stderr, "orthoserve serve: a model is required (-m FILE, key 'model')\n");
        goto out;
    }
    if (!one_of(c->log_format, "text", "json", NULL)) {
        fprintf(stderr, "orthoserve: key 'log_format': '%s' is not one of text, json\n", c->log_format);
        goto out;
    }
    if (!one_of(c->log_level, "error", "warn", "info", "debug", NULL)) {
        fprintf(stderr, "orthoserve: key 'log_level': '%s' is not one of error, warn, info, debug\n", c->log_level);
        goto out;
    }
    const char *kv_keys[] = {"cache_type_k", c->cache_type_k, "cache_type_v", c->cache_type_v};
    for (int i = 0; i < 4; i += 2)
        if (eng_kv_type_parse(kv_keys[i + 1], NULL) != ENG_OK) {
            fprintf(stderr, "orthoserve: key '%s': '%s' is not one of f16, f32, q8_0\n", kv_keys[i], kv_keys[i + 1]);
            goto out;
        }
    if (c->api_keys_file[0] && load_keys_file(c)) goto out;
    const char *field;
    if (eng_orthorank_check(NULL, &c->orthorank, &field, err, sizeof err) != ENG_OK) {
        fprintf(stderr, "orthoserve: key 'orthorank_%s': %s\n", field, err);
        goto out;
    }
    rc = 0;
out:
    free(which);
    free(vals);
    return rc;
}
