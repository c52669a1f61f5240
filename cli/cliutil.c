/*
 * cliutil.c - small helpers the orthoserve subcommands share: clocks, the
 * stderr log callback, strict number parsing, tokenizing into an array, and
 * --orthorank specs (parsed by asking the engine's OrthoRank field list).
 */
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

double cli_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void cli_log_stderr(eng_log_level lvl, const char *msg, void *user)
{
    (void)user;
    static const char *names[] = {"error", "warn", "info", "debug"};
    fprintf(stderr, "orthoserve: %s: %s\n", names[lvl], msg);
}

bool cli_parse_long(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return false;
    *out = v;
    return true;
}

bool cli_parse_double(const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || v < lo || v > hi) return false;
    *out = v;
    return true;
}

bool cli_parse_frac(const char *s, size_t len, double lo, double hi, double *out)
{
    char buf[64];
    if (len == 0 || len >= sizeof buf) return false;
    memcpy(buf, s, len);
    buf[len] = 0;
    char *end;
    errno = 0;
    double v = strtod(buf, &end);
    if (errno || end == buf) return false;
    if (*end == '/') {
        char *e2;
        double d = strtod(end + 1, &e2);
        if (e2 == end + 1 || *e2 || !(d != 0)) return false;
        v /= d;
    } else if (*end) {
        return false;
    }
    if (!isfinite(v) || v < lo || v > hi) return false;
    *out = v;
    return true;
}

int32_t *cli_tokenize_text(const eng_vocab *v, const char *text, size_t len, bool add_special, bool parse_special,
                           size_t *n)
{
    size_t cap = len + 16;
    for (int tries = 0; tries < 2; tries++) {
        int32_t *ids = malloc(cap * sizeof *ids);
        if (!ids) return NULL;
        eng_status st = eng_tokenize(v, text, len, add_special, parse_special, ids, cap, n);
        if (st == ENG_OK) return ids;
        free(ids);
        if (st != ENG_ERANGE) return NULL;
        cap = *n; /* the size the engine asked for */
    }
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* --orthorank SPEC                                                         */
/* ------------------------------------------------------------------------ */

/* The layer list "3:1:2" (n values at most ENG_MAX_LAYERS are read; a longer
 * list is counted and left to the engine to refuse). */
static eng_status set_layers(eng_orthorank_params *p, const eng_orthorank_field *f, const char *v, size_t vl,
                             char *why, size_t len)
{
    double l[ENG_MAX_LAYERS];
    size_t n = 0;
    for (const char *q = v, *end = v + vl; q <= end; n++) {
        const char *c = memchr(q, ':', (size_t)(end - q));
        size_t ql = c ? (size_t)(c - q) : (size_t)(end - q);
        if (n < ENG_MAX_LAYERS && !cli_parse_frac(q, ql, -HUGE_VAL, HUGE_VAL, &l[n])) {
            snprintf(why, len, "must be %s", f->expect);
            return ENG_EINVAL;
        }
        q += ql + 1;
    }
    return eng_orthorank_set_layers(p, NULL, l, n, why, len);
}

/* One key=value of a spec. */
static eng_status set_value(eng_orthorank_params *p, const eng_orthorank_field *f, const char *v, size_t vl,
                            char *why, size_t len)
{
    double d;
    switch (f->kind) {
    case ENG_ORTHORANK_FIELD_NAME: return eng_orthorank_set_name(p, f, v, vl, why, len);
    case ENG_ORTHORANK_FIELD_LAYERS: return set_layers(p, f, v, vl, why, len);
    case ENG_ORTHORANK_FIELD_NUMBER:
    case ENG_ORTHORANK_FIELD_INTEGER: break;
    }
    if (!cli_parse_frac(v, vl, -HUGE_VAL, HUGE_VAL, &d)) {
        snprintf(why, len, "must be %s", f->expect);
        return ENG_EINVAL;
    }
    return eng_orthorank_set_number(p, f, d, why, len);
}

bool cli_parse_orthorank(const char *spec, eng_orthorank_params *p, char *err, size_t errlen)
{
    for (const char *s = spec; *s;) {
        const char *comma = strchr(s, ',');
        size_t len = comma ? (size_t)(comma - s) : strlen(s);
        const char *eq = memchr(s, '=', len);
        if (!eq) {
            snprintf(err, errlen, "'%.*s' is not key=value", (int)len, s);
            return false;
        }
        size_t kl = (size_t)(eq - s), vl = len - kl - 1;
        const eng_orthorank_field *f =
            kl == 1 && *s == 'k' ? eng_orthorank_field_find("token_ratio", 11) : eng_orthorank_field_find(s, kl);
        if (!f) {
            size_t n, o = 0;
            const eng_orthorank_field *fs = eng_orthorank_fields(&n);
            char known[160] = "";
            for (size_t i = 0; i < n && o < sizeof known; i++)
                o += (size_t)snprintf(known + o, sizeof known - o, "%s%s", i ? ", " : "", fs[i].name);
            snprintf(err, errlen, "unknown key '%.*s' (%s)", (int)kl, s, known);
            return false;
        }
        char why[160];
        if (vl == 0 || set_value(p, f, eq + 1, vl, why, sizeof why) != ENG_OK) {
            snprintf(err, errlen, "bad value '%.*s' for %.*s%s%s", (int)vl, eq + 1, (int)kl, s, vl ? ": " : "",
                     vl ? why : "");
            return false;
        }
        s += len + (comma ? 1 : 0);
    }
    return true;
}

void cli_print_kv(const eng_model *m, eng_kv_type type_k, eng_kv_type type_v, int64_t tokens)
{
    const size_t per = eng_kv_bytes_per_token(m, type_k, type_v);
    fprintf(stderr, "orthoserve: KV cache: K %s, V %s, %lld tokens x %zu bytes = %.1f MiB\n", eng_kv_type_name(type_k),
            eng_kv_type_name(type_v), (long long)tokens, per, (double)tokens * (double)per / 1048576.0);
}
