/*
 * plan.c - OrthoRank layer plans: JSON <-> plan_data, validation, and
 * installation into a model (see plan.h for the file format).
 */
#include "plan.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

void plan_data_init(plan_data *p)
{
    memset(p, 0, sizeof *p);
    p->dense_nll = NAN;
    p->calib_chunks = p->calib_ctx = p->calib_start_chunk = -1;
}

void plan_data_free(plan_data *p)
{
    if (!p) return;
    free(p->model_file);
    free(p->model_sha256);
    free(p->exclude);
    free(p->calib_file);
    free(p->order);
    free(p->order_nll);
    free(p->skip_order);
    free(p->skip_nll);
    free(p->thresholds);
    plan_data_init(p);
}

/* ------------------------------------------------------------------------ */
/* Reading                                                                  */
/* ------------------------------------------------------------------------ */

static int opt_string(const json_t *root, const char *key, char **out, char *err, size_t errlen)
{
    const json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_string(v)) return fail(err, errlen, "\"%s\" must be a string", key);
    *out = strdup(json_string_value(v));
    return *out ? 0 : fail(err, errlen, "out of memory");
}

static int opt_int(const json_t *obj, const char *ctx, const char *key, int32_t lo, int32_t *out,
                   char *err, size_t errlen)
{
    const json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > INT32_MAX)
        return fail(err, errlen, "\"%s%s\" must be an integer >= %d", ctx, key, (int)lo);
    *out = (int32_t)json_integer_value(v);
    return 0;
}

/* A layer list: an array of distinct integers in [0, n_layer). */
static int read_layers(const json_t *root, const char *key, int32_t n_layer, int32_t **out,
                       int32_t *n_out, char *err, size_t errlen)
{
    const json_t *a = json_object_get(root, key);
    if (!a) return fail(err, errlen, "\"%s\" is missing", key);
    if (!json_is_array(a)) return fail(err, errlen, "\"%s\" must be an array of layer indices", key);
    size_t n = json_array_size(a);
    if (n > (size_t)n_layer)
        return fail(err, errlen, "\"%s\" has %zu entries but the model has %d layers", key, n,
                    (int)n_layer);
    int32_t *v = malloc((n ? n : 1) * sizeof *v);
    if (!v) return fail(err, errlen, "out of memory");
    for (size_t i = 0; i < n; i++) {
        const json_t *e = json_array_get(a, i);
        if (!json_is_integer(e)) {
            free(v);
            return fail(err, errlen, "\"%s\"[%zu] must be an integer layer index", key, i);
        }
        json_int_t x = json_integer_value(e);
        if (x < 0 || x >= n_layer) {
            free(v);
            return fail(err, errlen, "\"%s\"[%zu] = %lld is out of range [0, %d)", key, i,
                        (long long)x, (int)n_layer);
        }
        for (size_t j = 0; j < i; j++) {
            if (v[j] == (int32_t)x) {
                free(v);
                return fail(err, errlen, "\"%s\"[%zu] = %lld repeats \"%s\"[%zu]", key, i,
                            (long long)x, key, j);
            }
        }
        v[i] = (int32_t)x;
    }
    *out = v;
    *n_out = (int32_t)n;
    return 0;
}

/* An optional array of n numbers-or-null as doubles (NAN for null). */
static int read_numbers(const json_t *root, const char *key, size_t n, bool allow_null,
                        double **out, char *err, size_t errlen)
{
    const json_t *a = json_object_get(root, key);
    if (!a || json_is_null(a)) return 0;
    if (!json_is_array(a)) return fail(err, errlen, "\"%s\" must be an array", key);
    if (json_array_size(a) != n)
        return fail(err, errlen, "\"%s\" has %zu entries, expected %zu", key, json_array_size(a), n);
    double *v = malloc((n ? n : 1) * sizeof *v);
    if (!v) return fail(err, errlen, "out of memory");
    for (size_t i = 0; i < n; i++) {
        const json_t *e = json_array_get(a, i);
        if (json_is_null(e) && allow_null) {
            v[i] = NAN;
        } else if (json_is_number(e) && isfinite(json_number_value(e))) {
            v[i] = json_number_value(e);
        } else {
            free(v);
            return fail(err, errlen, "\"%s\"[%zu] must be a finite number%s", key, i,
                        allow_null ? " or null" : "");
        }
    }
    *out = v;
    return 0;
}

int plan_from_json(const json_t *root, int32_t n_layer, plan_data *out, char *err, size_t errlen)
{
    plan_data p;
    plan_data_init(&p);
    plan_data_init(out);
    if (!json_is_object(root)) return fail(err, errlen, "a plan must be a JSON object");
    const json_t *schema = json_object_get(root, "schema");
    if (!json_is_string(schema) || strcmp(json_string_value(schema), PLAN_SCHEMA) != 0)
        return fail(err, errlen, "\"schema\" must be \"%s\"", PLAN_SCHEMA);
    const json_t *nl = json_object_get(root, "n_layer");
    if (!json_is_integer(nl) || json_integer_value(nl) < 1 || json_integer_value(nl) > 100000)
        return fail(err, errlen, "\"n_layer\" must be a positive integer");
    p.n_layer = (int32_t)json_integer_value(nl);
    if (n_layer >= 0 && p.n_layer != n_layer)
        return fail(err, errlen, "the plan is for %d layers but the model has %d", (int)p.n_layer,
                    (int)n_layer);
    const json_t *k = json_object_get(root, "token_ratio");
    if (!json_is_number(k) || !(json_number_value(k) > 0) || json_number_value(k) > 1)
        return fail(err, errlen, "\"token_ratio\" must be a number in (0, 1]");
    p.token_ratio = (float)json_number_value(k);

    double *thr = NULL;
    if (opt_string(root, "model_file", &p.model_file, err, errlen) ||
        opt_string(root, "model_sha256", &p.model_sha256, err, errlen) ||
        opt_string(root, "exclude", &p.exclude, err, errlen))
        goto bad;
    if (p.exclude && strcmp(p.exclude, "first,last") && strcmp(p.exclude, "first") &&
        strcmp(p.exclude, "none")) {
        fail(err, errlen, "\"exclude\" must be \"first,last\", \"first\" or \"none\"");
        goto bad;
    }
    const json_t *cal = json_object_get(root, "calibration");
    if (cal && !json_is_null(cal)) {
        if (!json_is_object(cal)) {
            fail(err, errlen, "\"calibration\" must be an object");
            goto bad;
        }
        if (opt_string(cal, "file", &p.calib_file, err, errlen) ||
            opt_int(cal, "calibration.", "chunks", 1, &p.calib_chunks, err, errlen) ||
            opt_int(cal, "calibration.", "ctx", 1, &p.calib_ctx, err, errlen) ||
            opt_int(cal, "calibration.", "start_chunk", 0, &p.calib_start_chunk, err, errlen))
            goto bad;
    }
    if (read_layers(root, "orthorank_order", p.n_layer, &p.order, &p.n_order, err, errlen) ||
        read_layers(root, "layer_skip_order", p.n_layer, &p.skip_order, &p.n_skip_order, err,
                    errlen) ||
        read_numbers(root, "orthorank_nll", (size_t)p.n_order, true, &p.order_nll, err, errlen) ||
        read_numbers(root, "layer_skip_nll", (size_t)p.n_skip_order, true, &p.skip_nll, err,
                     errlen) ||
        read_numbers(root, "thresholds", (size_t)p.n_layer, true, &thr, err, errlen))
        goto bad;
    if (thr) {
        p.thresholds = malloc((size_t)p.n_layer * sizeof *p.thresholds);
        if (!p.thresholds) {
            fail(err, errlen, "out of memory");
            goto bad;
        }
        for (int32_t i = 0; i < p.n_layer; i++) p.thresholds[i] = (float)thr[i];
        free(thr);
        thr = NULL;
    }
    const json_t *d = json_object_get(root, "dense_nll");
    if (d && !json_is_null(d)) {
        if (!json_is_number(d) || !isfinite(json_number_value(d))) {
            fail(err, errlen, "\"dense_nll\" must be a finite number");
            goto bad;
        }
        p.dense_nll = json_number_value(d);
    }
    *out = p;
    return 0;
bad:
    free(thr);
    plan_data_free(&p);
    return -1;
}

int plan_read(const char *path, int32_t n_layer, plan_data *out, char *err, size_t errlen)
{
    json_error_t je;
    plan_data_init(out);
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        if (je.line <= 0) return fail(err, errlen, "%s: %s", path, je.text);
        return fail(err, errlen, "%s:%d:%d: %s", path, je.line, je.column, je.text);
    }
    char msg[384];
    int rc = plan_from_json(root, n_layer, out, msg, sizeof msg);
    json_decref(root);
    if (rc) return fail(err, errlen, "%s: %s", path, msg);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Writing                                                                  */
/* ------------------------------------------------------------------------ */

/* json_real for a finite value, json_null otherwise (JSON has no NaN). */
static json_t *num_or_null(double x)
{
    return isfinite(x) ? json_real(x) : json_null();
}

static int set(json_t *obj, const char *key, json_t *v)
{
    return v ? json_object_set_new(obj, key, v) : -1;
}

static json_t *int_array(const int32_t *v, int32_t n)
{
    json_t *a = json_array();
    for (int32_t i = 0; a && i < n; i++) {
        if (json_array_append_new(a, json_integer(v[i]))) {
            json_decref(a);
            return NULL;
        }
    }
    return a;
}

static json_t *num_array(const double *v, int32_t n)
{
    json_t *a = json_array();
    for (int32_t i = 0; a && i < n; i++) {
        if (json_array_append_new(a, num_or_null(v[i]))) {
            json_decref(a);
            return NULL;
        }
    }
    return a;
}

json_t *plan_to_json(const plan_data *p)
{
    json_t *o = json_object();
    if (!o) return NULL;
    int bad = set(o, "schema", json_string(PLAN_SCHEMA));
    if (p->model_file) bad |= set(o, "model_file", json_string(p->model_file));
    if (p->model_sha256) bad |= set(o, "model_sha256", json_string(p->model_sha256));
    bad |= set(o, "n_layer", json_integer(p->n_layer));
    bad |= set(o, "token_ratio", json_real((double)p->token_ratio));
    if (p->exclude) bad |= set(o, "exclude", json_string(p->exclude));
    json_t *cal = json_object();
    if (cal) {
        if (p->calib_file) bad |= set(cal, "file", json_string(p->calib_file));
        if (p->calib_chunks >= 0) bad |= set(cal, "chunks", json_integer(p->calib_chunks));
        if (p->calib_ctx >= 0) bad |= set(cal, "ctx", json_integer(p->calib_ctx));
        if (p->calib_start_chunk >= 0)
            bad |= set(cal, "start_chunk", json_integer(p->calib_start_chunk));
    }
    bad |= set(o, "calibration", cal);
    bad |= set(o, "orthorank_order", int_array(p->order, p->n_order));
    if (p->order_nll) bad |= set(o, "orthorank_nll", num_array(p->order_nll, p->n_order));
    bad |= set(o, "layer_skip_order", int_array(p->skip_order, p->n_skip_order));
    if (p->skip_nll) bad |= set(o, "layer_skip_nll", num_array(p->skip_nll, p->n_skip_order));
    if (p->thresholds) {
        json_t *t = json_array();
        for (int32_t i = 0; t && i < p->n_layer; i++) {
            if (json_array_append_new(t, num_or_null((double)p->thresholds[i]))) {
                json_decref(t);
                t = NULL;
            }
        }
        bad |= set(o, "thresholds", t);
    }
    if (isfinite(p->dense_nll)) bad |= set(o, "dense_nll", json_real(p->dense_nll));
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

int plan_write(const char *path, const plan_data *p, char *err, size_t errlen)
{
    json_t *o = plan_to_json(p);
    if (!o) return fail(err, errlen, "out of memory");
    /* 9 significant digits round-trip every float exactly. */
    int rc = json_dump_file(o, path, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
    json_decref(o);
    if (rc) return fail(err, errlen, "%s: cannot write: %s", path, strerror(errno));
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Installing                                                               */
/* ------------------------------------------------------------------------ */

int plan_apply(const plan_data *p, eng_model *m, char *err, size_t errlen)
{
    eng_model_info info;
    eng_model_get_info(m, &info);
    if (p->n_layer != info.n_layer)
        return fail(err, errlen, "the plan is for %d layers but the model has %d", (int)p->n_layer,
                    (int)info.n_layer);
    eng_orthorank_plan ep = {
        .order = p->order,
        .n_order = p->n_order,
        .skip_order = p->skip_order,
        .n_skip_order = p->n_skip_order,
        .thresholds = p->thresholds,
        .threshold_ratio = p->token_ratio,
        .source = "calibrated",
    };
    eng_status st = eng_model_set_orthorank_plan(m, &ep);
    if (st != ENG_OK) return fail(err, errlen, "the engine refused the plan: %s", eng_strerror(st));
    return 0;
}

int plan_load(const char *path, eng_model *m, char *err, size_t errlen)
{
    eng_model_info info;
    eng_model_get_info(m, &info);
    plan_data p;
    if (plan_read(path, info.n_layer, &p, err, errlen)) return -1;
    char msg[384];
    int rc = plan_apply(&p, m, msg, sizeof msg);
    plan_data_free(&p);
    if (rc) return fail(err, errlen, "%s: %s", path, msg);
    return 0;
}

int plan_default_path(const char *model_path, int i, char *buf, size_t cap)
{
    size_t n = strlen(model_path);
    const char *base = strrchr(model_path, '/');
    base = base ? base + 1 : model_path;
    if (i == 0) {
        size_t bl = strlen(base);
        if (bl > 5 && !strcmp(base + bl - 5, ".gguf")) n -= 5;
    } else if (i != 1) {
        return -1;
    }
    int w = snprintf(buf, cap, "%.*s.orthorank.json", (int)n, model_path);
    return (w < 0 || (size_t)w >= cap) ? -1 : 0;
}

int plan_load_default(const char *model_path, eng_model *m, char *err, size_t errlen)
{
    char path[4096];
    for (int i = 0; i < 2; i++) {
        if (plan_default_path(model_path, i, path, sizeof path)) continue;
        struct stat sb;
        if (stat(path, &sb) != 0) continue;
        if (plan_load(path, m, err, errlen)) return -1;
        if (err && errlen) snprintf(err, errlen, "%s", path);
        return 1;
    }
    return 0;
}
