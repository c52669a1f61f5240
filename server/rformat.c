/*
 * rformat.c - response_format / json_schema / grammar to GBNF (rformat.h):
 * which field asks for what, its shape, and the schema compile with the
 * server's bounds; a schema error names the JSON pointer inside it.
 */
#include "rformat.h"

#include "schema_gbnf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *param;
    size_t plen;
    const char **code;
    char *msg;
    size_t mlen;
} rferr;

static int rfail(rferr *e, const char *param, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int rfail(rferr *e, const char *param, const char *code, const char *fmt, ...)
{
    snprintf(e->param, e->plen, "%s", param);
    *e->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, e->mlen, fmt, ap);
    va_end(ap);
    return -1;
}

static int from_schema(json_t *schema, const srv_config *cfg, const char *param, rformat *out, rferr *e)
{
    schema_limits lim = {.max_depth = (int)cfg->schema_max_depth, .max_rules = (int)cfg->grammar_max_rules,
                         .max_bytes = (size_t)cfg->grammar_max_bytes, .max_count = cfg->schema_max_count};
    char ptr[256], msg[400];
    if (schema_to_gbnf(schema, &lim, &out->gbnf, ptr, sizeof ptr, msg, sizeof msg)) {
        if (!strcmp(msg, "out of memory")) return rfail(e, param, "server_error", "out of memory");
        return rfail(e, param, "invalid_schema", "%s: at '%s' (JSON pointer in the schema): %s", param,
                     ptr[0] ? ptr : "#", msg);
    }
    out->len = strlen(out->gbnf);
    out->param = param;
    return 0;
}

static int response_format(json_t *rf, const srv_config *cfg, rformat *out, rferr *e)
{
    json_t *t = json_is_object(rf) ? json_object_get(rf, "type") : NULL;
    if (!json_is_string(t))
        return rfail(e, "response_format", "invalid_type", "'response_format' must be an object with a string 'type'");
    const char *ts = json_string_value(t);
    if (!strcmp(ts, "text")) return 0;
    if (!strcmp(ts, "json_object")) {
        json_t *sch = json_object_get(rf, "schema"); /* llama.cpp's extension */
        if (sch && !json_is_null(sch)) return from_schema(sch, cfg, "response_format.schema", out, e);
        out->gbnf = strdup(schema_json_object_gbnf());
        if (!out->gbnf) return rfail(e, "response_format", "server_error", "out of memory");
        out->len = strlen(out->gbnf);
        out->param = "response_format";
        return 0;
    }
    if (strcmp(ts, "json_schema"))
        return rfail(e, "response_format.type", "invalid_value",
                     "'response_format.type' must be 'text', 'json_object' or 'json_schema'");
    json_t *js = json_object_get(rf, "json_schema");
    if (!json_is_object(js))
        return rfail(e, "response_format.json_schema", "invalid_type",
                     "'response_format.json_schema' must be an object {name, schema, strict}");
    json_t *name = json_object_get(js, "name"), *strict = json_object_get(js, "strict");
    if (name && !json_is_string(name))
        return rfail(e, "response_format.json_schema.name", "invalid_type",
                     "'response_format.json_schema.name' must be a string");
    if (strict && !json_is_boolean(strict) && !json_is_null(strict))
        return rfail(e, "response_format.json_schema.strict", "invalid_type",
                     "'response_format.json_schema.strict' must be a boolean");
    json_t *sch = json_object_get(js, "schema");
    if (!sch || json_is_null(sch))
        return rfail(e, "response_format.json_schema.schema", "missing_field",
                     "'response_format.json_schema.schema' is required");
    return from_schema(sch, cfg, "response_format.json_schema", out, e);
}

int rformat_parse(json_t *body, const srv_config *cfg, rformat *out, char *param, size_t plen, const char **code,
                  char *msg, size_t mlen)
{
    memset(out, 0, sizeof *out);
    rferr e = {param, plen, code, msg, mlen};
    json_t *rf = json_object_get(body, "response_format"), *js = json_object_get(body, "json_schema"),
           *gr = json_object_get(body, "grammar");
    if (json_is_null(rf)) rf = NULL;
    if (json_is_null(js)) js = NULL;
    if (json_is_null(gr)) gr = NULL;
    int rc = 0;
    if (rf) rc = response_format(rf, cfg, out, &e);
    if (rc) return rc;
    int n = (out->gbnf != NULL) + (js != NULL) + (gr != NULL);
    if (n > 1) {
        free(out->gbnf);
        out->gbnf = NULL;
        return rfail(&e, js ? "json_schema" : "grammar", "invalid_value",
                     "give at most one of 'response_format' (json_object / json_schema), 'json_schema' and 'grammar'");
    }
    if (js) return from_schema(js, cfg, "json_schema", out, &e);
    if (gr) {
        if (!json_is_string(gr)) return rfail(&e, "grammar", "invalid_type", "'grammar' must be a string (GBNF)");
        if (json_string_length(gr) > (size_t)cfg->grammar_max_bytes)
            return rfail(&e, "grammar", "invalid_value",
                         "'grammar' is %zu bytes, more than grammar_max_bytes (%ld)", json_string_length(gr),
                         cfg->grammar_max_bytes);
        out->len = json_string_length(gr);
        out->gbnf = malloc(out->len + 1);
        if (!out->gbnf) return rfail(&e, "grammar", "server_error", "out of memory");
        memcpy(out->gbnf, json_string_value(gr), out->len + 1);
        out->param = "grammar";
    }
    return 0;
}
