/*
 * schema_gbnf.c - JSON Schema to GBNF (schema_gbnf.h lists what is
 * enforced). Each subschema becomes one rule "rN"; a $ref target is
 * compiled once and referenced by name, so recursive schemas give
 * recursive rules. The shared rules (ws, value, string, ...) and the
 * format rules are appended once at the end.
 */
#include "schema_gbnf.h"

#include "regex_gbnf.h"
#include "sbuf.h"

#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *ptr;  /* the $ref target's pointer */
    int rule;
} refmemo;

typedef struct {
    json_t *root;
    const schema_limits *lim;
    sbuf out;
    int n_rules;
    refmemo *refs;
    size_t n_refs, cap_refs;
    char *eptr, *emsg;
    size_t eplen, emlen;
    bool failed;
} sc;

enum { T_NULL = 1, T_BOOL = 2, T_INT = 4, T_FRAC = 8, T_STR = 16, T_ARR = 32, T_OBJ = 64, T_ALL = 127 };

static const char *const ANNOTATIONS[] = {"title", "description", "default", "examples", "$schema", "$id",
                                          "$comment", "deprecated", "readOnly", "writeOnly", "$defs",
                                          "definitions", NULL};

static void fail(sc *c, const char *ptr, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void fail(sc *c, const char *ptr, const char *fmt, ...)
{
    if (c->failed) return;
    c->failed = true;
    snprintf(c->eptr, c->eplen, "%s", ptr);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->emsg, c->emlen, fmt, ap);
    va_end(ap);
}

static bool in_list(const char *k, const char *const *list)
{
    for (size_t i = 0; list[i]; i++)
        if (!strcmp(k, list[i])) return true;
    return false;
}

/* ptr + "/" + key (JSON-pointer escaped) into buf. */
static void subptr(char *buf, size_t n, const char *ptr, const char *key)
{
    size_t k = (size_t)snprintf(buf, n, "%s/", ptr);
    for (const char *q = key; *q && k + 3 < n; q++) {
        if (*q == '~' || *q == '/') {
            buf[k++] = '~';
            buf[k++] = *q == '~' ? '0' : '1';
        } else {
            buf[k++] = *q;
        }
    }
    buf[k < n ? k : n - 1] = 0;
}

/* A GBNF string literal of n bytes. */
static void lit(sbuf *b, const char *s, size_t n)
{
    sbuf_add(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        char e[8];
        if (ch == '"' || ch == '\\') {
            e[0] = '\\';
            e[1] = (char)ch;
            sbuf_add(b, e, 2);
        } else if (ch < 0x20 || ch == 0x7F) {
            snprintf(e, sizeof e, "\\x%02X", ch);
            sbuf_add(b, e, 4);
        } else {
            sbuf_add(b, (const char *)&ch, 1);
        }
    }
    sbuf_add(b, "\"", 1);
}

/* The compact JSON text of v as a GBNF literal. */
static void json_lit(sc *c, sbuf *b, json_t *v)
{
    char *t = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
    if (!t) {
        fail(c, "", "out of memory");
        return;
    }
    lit(b, t, strlen(t));
    free(t);
}

static int new_rule_id(sc *c, const char *ptr)
{
    if (c->n_rules >= c->lim->max_rules) {
        fail(c, ptr, "schema too large: it needs more than %d grammar rules (grammar_max_rules)", c->lim->max_rules);
        return -1;
    }
    return c->n_rules++;
}

/* "rN ::= body\n" */
static void put_rule(sc *c, int id, sbuf *body)
{
    char h[32];
    int n = snprintf(h, sizeof h, "r%d ::= ", id);
    bool ok = sbuf_add(&c->out, h, (size_t)n) && sbuf_add(&c->out, body->n ? body->p : "\"\"", body->n ? body->n : 2) &&
              sbuf_add(&c->out, "\n", 1);
    if (!ok) fail(c, "", "out of memory");
    if (c->out.n > c->lim->max_bytes)
        fail(c, "", "schema too large: its grammar exceeds %zu bytes (grammar_max_bytes)", c->lim->max_bytes);
}

static int gen(sc *c, json_t *s, const char *ptr, int depth);

/* ------------------------------------------------------------------------ */
/* Type sets (for oneOf) and $ref                                           */
/* ------------------------------------------------------------------------ */

static int type_bit(const char *t)
{
    if (!strcmp(t, "null")) return T_NULL;
    if (!strcmp(t, "boolean")) return T_BOOL;
    if (!strcmp(t, "integer")) return T_INT;
    if (!strcmp(t, "number")) return T_INT | T_FRAC;
    if (!strcmp(t, "string")) return T_STR;
    if (!strcmp(t, "array")) return T_ARR;
    if (!strcmp(t, "object")) return T_OBJ;
    return 0;
}

static int value_bits(json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_NULL: return T_NULL;
    case JSON_TRUE: case JSON_FALSE: return T_BOOL;
    case JSON_INTEGER: return T_INT;
    case JSON_REAL: return floor(json_real_value(v)) == json_real_value(v) ? T_INT : T_FRAC;
    case JSON_STRING: return T_STR;
    case JSON_ARRAY: return T_ARR;
    default: return T_OBJ;
    }
}

/* The target of a local $ref ("#" or "#/a/b"), or NULL. */
static json_t *resolve(sc *c, const char *ref)
{
    if (ref[0] != '#') return NULL;
    json_t *cur = c->root;
    const char *p = ref + 1;
    while (*p == '/' && cur) {
        p++;
        char key[256];
        size_t k = 0;
        while (*p && *p != '/' && k + 1 < sizeof key) {
            if (p[0] == '~' && (p[1] == '0' || p[1] == '1')) {
                key[k++] = p[1] == '0' ? '~' : '/';
                p += 2;
            } else {
                key[k++] = *p++;
            }
        }
        key[k] = 0;
        if (json_is_array(cur)) {
            char *e;
            long i = strtol(key, &e, 10);
            cur = (*e || i < 0) ? NULL : json_array_get(cur, (size_t)i);
        } else {
            cur = json_object_get(cur, key);
        }
    }
    return *p ? NULL : cur;
}

/* The types a schema's values can have (T_ALL when unknown). */
static int schema_bits(sc *c, json_t *s, int depth)
{
    if (!json_is_object(s) || depth > 16) return T_ALL;
    json_t *x;
    if ((x = json_object_get(s, "$ref")) && json_is_string(x)) {
        json_t *t = resolve(c, json_string_value(x));
        return t ? schema_bits(c, t, depth + 1) : T_ALL;
    }
    if ((x = json_object_get(s, "const"))) return value_bits(x);
    int bits = 0;
    if ((x = json_object_get(s, "enum")) && json_is_array(x)) {
        size_t i;
        json_t *v;
        json_array_foreach(x, i, v) bits |= value_bits(v);
        return bits;
    }
    if ((x = json_object_get(s, "anyOf")) || (x = json_object_get(s, "oneOf"))) {
        size_t i;
        json_t *v;
        json_array_foreach(x, i, v) bits |= schema_bits(c, v, depth + 1);
        return bits ? bits : T_ALL;
    }
    x = json_object_get(s, "type");
    if (json_is_string(x)) bits = type_bit(json_string_value(x));
    else if (json_is_array(x)) {
        size_t i;
        json_t *v;
        json_array_foreach(x, i, v) if (json_is_string(v)) bits |= type_bit(json_string_value(v));
    } else if (json_object_get(s, "properties")) bits = T_OBJ;
    else return T_ALL;
    if (json_is_true(json_object_get(s, "nullable"))) bits |= T_NULL;
    return bits;
}

/* The constant of a required property `key` of an object branch, or NULL. */
static json_t *discriminator(sc *c, json_t *s, const char *key)
{
    json_t *r;
    if (json_is_object(s) && (r = json_object_get(s, "$ref")) && json_is_string(r))
        s = resolve(c, json_string_value(r));
    json_t *p = json_object_get(json_object_get(json_object_get(s, "properties"), key), "const");
    if (!p) {
        json_t *e = json_object_get(json_object_get(json_object_get(s, "properties"), key), "enum");
        if (json_is_array(e) && json_array_size(e) == 1) p = json_array_get(e, 0);
    }
    json_t *req = json_object_get(s, "required");
    size_t i;
    json_t *v;
    bool required = false;
    json_array_foreach(req, i, v) required |= json_is_string(v) && !strcmp(json_string_value(v), key);
    return required ? p : NULL;
}

/* Whether no value can match two branches of a oneOf. */
static bool branches_disjoint(sc *c, json_t *arr)
{
    size_t n = json_array_size(arr);
    bool ok = true;
    for (size_t i = 0; i < n && ok; i++)
        for (size_t j = i + 1; j < n && ok; j++)
            ok = !(schema_bits(c, json_array_get(arr, i), 0) & schema_bits(c, json_array_get(arr, j), 0));
    if (ok) return true;
    /* objects told apart by a required property with distinct constants */
    json_t *first = json_array_get(arr, 0), *props, *r;
    if (json_is_object(first) && (r = json_object_get(first, "$ref")) && json_is_string(r))
        first = resolve(c, json_string_value(r));
    props = json_object_get(first, "properties");
    const char *key;
    json_t *pv;
    json_object_foreach(props, key, pv) {
        bool good = true;
        for (size_t i = 0; i < n && good; i++) {
            json_t *a = discriminator(c, json_array_get(arr, i), key);
            good = a != NULL;
            for (size_t j = 0; j < i && good; j++) good = !json_equal(a, discriminator(c, json_array_get(arr, j), key));
        }
        if (good) return true;
    }
    return false;
}

static int gen_ref(sc *c, const char *ref, const char *ptr, int depth)
{
    for (size_t i = 0; i < c->n_refs; i++)
        if (!strcmp(c->refs[i].ptr, ref)) return c->refs[i].rule;
    json_t *t = resolve(c, ref);
    if (!t) {
        fail(c, ptr, "'$ref' '%s' is not supported: only local references ('#', '#/$defs/...', a JSON pointer) "
                     "that resolve", ref);
        return -1;
    }
    if (c->n_refs == c->cap_refs) {
        size_t nc = c->cap_refs ? 2 * c->cap_refs : 8;
        refmemo *m = realloc(c->refs, nc * sizeof *m);
        if (!m) {
            fail(c, ptr, "out of memory");
            return -1;
        }
        c->refs = m;
        c->cap_refs = nc;
    }
    /* reserve the rule first so that recursion finds it */
    int id = new_rule_id(c, ptr);
    if (id < 0) return -1;
    refmemo *m = &c->refs[c->n_refs++];
    m->ptr = strdup(ref);
    m->rule = id;
    if (!m->ptr) {
        fail(c, ptr, "out of memory");
        return -1;
    }
    int inner = gen(c, t, ref + 1, depth + 1);
    if (inner < 0) return -1;
    sbuf b = {0};
    char nm[32];
    snprintf(nm, sizeof nm, "r%d", inner);
    sbuf_add(&b, nm, strlen(nm));
    put_rule(c, id, &b);
    free(b.p);
    return id;
}

/* ------------------------------------------------------------------------ */
/* Strings and integers                                                     */
/* ------------------------------------------------------------------------ */

static const char *format_rule(const char *f)
{
    static const char *const names[][2] = {{"date", "fmt-date"},   {"time", "fmt-time"}, {"date-time", "fmt-date-time"},
                                           {"uuid", "fmt-uuid"},   {"email", "fmt-email"}, {"ipv4", "fmt-ipv4"}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcmp(f, names[i][0])) return names[i][1];
    return NULL;
}

static bool get_count(sc *c, json_t *s, const char *key, const char *ptr, long *out)
{
    json_t *x = json_object_get(s, key);
    if (!x) return true;
    char p[512];
    subptr(p, sizeof p, ptr, key);
    if (!json_is_integer(x) && !(json_is_real(x) && floor(json_real_value(x)) == json_real_value(x))) {
        fail(c, p, "'%s' must be a non-negative integer", key);
        return false;
    }
    double v = json_number_value(x);
    if (v < 0 || v > (double)c->lim->max_count) {
        fail(c, p, "'%s' %.0f is outside what is enforced: 0 to %ld (schema_max_count)", key, v, c->lim->max_count);
        return false;
    }
    *out = (long)v;
    return true;
}

static void gen_string(sc *c, json_t *s, const char *ptr, sbuf *b)
{
    long lo = 0, hi = -1;
    if (!get_count(c, s, "minLength", ptr, &lo) || !get_count(c, s, "maxLength", ptr, &hi)) return;
    bool has_len = json_object_get(s, "minLength") || json_object_get(s, "maxLength");
    json_t *fmt = json_object_get(s, "format"), *pat = json_object_get(s, "pattern");
    char p[512];
    if (fmt) {
        subptr(p, sizeof p, ptr, "format");
        const char *r = json_is_string(fmt) ? format_rule(json_string_value(fmt)) : NULL;
        if (!r) {
            fail(c, p, "'format' '%s' is not supported (supported: date, time, date-time, uuid, email, ipv4)",
                 json_is_string(fmt) ? json_string_value(fmt) : "?");
            return;
        }
        if (has_len || pat) {
            fail(c, p, "'format' together with 'pattern', 'minLength' or 'maxLength' is not supported");
            return;
        }
        sbuf_addf(b, "\"\\\"\" %s \"\\\"\"", r);
        return;
    }
    if (pat) {
        subptr(p, sizeof p, ptr, "pattern");
        if (!json_is_string(pat)) {
            fail(c, p, "'pattern' must be a string");
            return;
        }
        if (has_len) {
            fail(c, p, "'pattern' together with 'minLength' or 'maxLength' is not supported");
            return;
        }
        char msg[300];
        sbuf_add(b, "\"\\\"\" ", 5);
        if (regex_to_gbnf(json_string_value(pat), json_string_length(pat), b, msg, sizeof msg)) {
            fail(c, p, "%s", msg);
            return;
        }
        sbuf_add(b, " \"\\\"\"", 5);
        return;
    }
    if (hi >= 0 && hi < lo) {
        fail(c, ptr, "'maxLength' is below 'minLength': no string matches");
        return;
    }
    if (hi < 0) sbuf_addf(b, "\"\\\"\" char{%ld,} \"\\\"\"", lo);
    else sbuf_addf(b, "\"\\\"\" char{%ld,%ld} \"\\\"\"", lo, hi);
}

#define INT_LIMIT 999999999999999LL /* unbounded sides stop at 15 digits */

/* Alternatives for the same-length decimal strings between lo and hi. */
static void digits_range(sbuf *b, const char *lo, const char *hi, size_t n)
{
    if (n == 0) return;
    if (n == 1) {
        sbuf_addf(b, "[%c-%c]", lo[0], hi[0]);
        return;
    }
    if (strspn(lo, "0") >= n && strspn(hi, "9") >= n) {
        sbuf_addf(b, "[0-9]{%zu}", n);
        return;
    }
    if (lo[0] == hi[0]) {
        sbuf_addf(b, "\"%c\" (", lo[0]);
        digits_range(b, lo + 1, hi + 1, n - 1);
        sbuf_add(b, ")", 1);
        return;
    }
    char nines[24], zeros[24];
    memset(nines, '9', n - 1);
    memset(zeros, '0', n - 1);
    nines[n - 1] = zeros[n - 1] = 0;
    sbuf_addf(b, "(\"%c\" (", lo[0]);
    digits_range(b, lo + 1, nines, n - 1);
    sbuf_add(b, ")", 1);
    if (lo[0] + 1 <= hi[0] - 1) sbuf_addf(b, " | [%c-%c] [0-9]{%zu}", lo[0] + 1, hi[0] - 1, n - 1);
    sbuf_addf(b, " | \"%c\" (", hi[0]);
    digits_range(b, zeros, hi + 1, n - 1);
    sbuf_add(b, "))", 2);
}

/* Alternatives for the integers in [a, b], 0 <= a <= b. */
static void nonneg_range(sbuf *b, long long a, long long hi, bool *first)
{
    long long p = 1;
    for (int d = 1; d <= 18 && a <= hi; d++, p *= 10) {
        long long lo_d = d == 1 ? 0 : p, hi_d = p * 10 - 1;
        long long x = a > lo_d ? a : lo_d, y = hi < hi_d ? hi : hi_d;
        if (x > y) continue;
        char ls[24], hs[24];
        snprintf(ls, sizeof ls, "%lld", x);
        snprintf(hs, sizeof hs, "%lld", y);
        if (!*first) sbuf_add(b, " | ", 3);
        *first = false;
        digits_range(b, ls, hs, strlen(ls));
    }
}

static bool bound(sc *c, json_t *s, const char *key, const char *ptr, double *v)
{
    json_t *x = json_object_get(s, key);
    if (!x || json_is_boolean(x)) return false;
    if (!json_is_number(x)) {
        char p[512];
        subptr(p, sizeof p, ptr, key);
        fail(c, p, "'%s' must be a number", key);
        return false;
    }
    *v = json_number_value(x);
    return true;
}

/* A bound as an integer, clamped one past the 15-digit range (the cast of a
 * double beyond long long would be undefined). */
static long long int_bound(double v, bool up)
{
    double r = up ? ceil(v) : floor(v);
    if (r > (double)INT_LIMIT) return INT_LIMIT + 1;
    if (r < -(double)INT_LIMIT) return -INT_LIMIT - 1;
    return (long long)r;
}

static void gen_integer(sc *c, json_t *s, const char *ptr, sbuf *b)
{
    double v;
    long long lo = -INT_LIMIT, hi = INT_LIMIT, x;
    bool ex_lo = json_is_true(json_object_get(s, "exclusiveMinimum")); /* draft 4 */
    bool ex_hi = json_is_true(json_object_get(s, "exclusiveMaximum"));
    if (bound(c, s, "minimum", ptr, &v)) {
        x = ex_lo ? int_bound(v, false) + 1 : int_bound(v, true);
        if (x > lo) lo = x;
    }
    if (bound(c, s, "maximum", ptr, &v)) {
        x = ex_hi ? int_bound(v, true) - 1 : int_bound(v, false);
        if (x < hi) hi = x;
    }
    if (bound(c, s, "exclusiveMinimum", ptr, &v) && (x = int_bound(v, false) + 1) > lo) lo = x;
    if (bound(c, s, "exclusiveMaximum", ptr, &v) && (x = int_bound(v, true) - 1) < hi) hi = x;
    if (c->failed) return;
    if (lo > INT_LIMIT || hi < -INT_LIMIT) {
        fail(c, ptr, "integer bounds beyond 15 digits are not supported");
        return;
    }
    if (lo > hi) {
        fail(c, ptr, "no integer lies within 'minimum' / 'maximum' (and their exclusive forms)");
        return;
    }
    bool first = true;
    sbuf_add(b, "(", 1);
    if (lo < 0) {
        sbuf_add(b, "\"-\" (", 5);
        bool f2 = true;
        nonneg_range(b, hi < 0 ? -hi : 1, -lo, &f2);
        sbuf_add(b, ")", 1);
        first = false;
    }
    if (hi >= 0) nonneg_range(b, lo > 0 ? lo : 0, hi, &first);
    sbuf_add(b, ")", 1);
}

/* ------------------------------------------------------------------------ */
/* Objects                                                                  */
/* ------------------------------------------------------------------------ */

/* Rules for a key that is none of names[0..n): a trie of the names where
 * each node either ends the key (unless a name ends there), or leaves the
 * trie with another character. Returns the rule of the whole key. */
static int key_excluding(sc *c, const char **names, size_t n, const char *ptr, size_t at, const char *prefix,
                         size_t plen)
{
    int id = new_rule_id(c, ptr);
    if (id < 0) return -1;
    sbuf b = {0};
    bool ends = false;
    char kids[128];
    size_t nk = 0;
    for (size_t i = 0; i < n; i++) {
        if (strlen(names[i]) < plen || memcmp(names[i], prefix, plen)) continue;
        if (strlen(names[i]) == plen) {
            ends = true;
            continue;
        }
        unsigned char ch = (unsigned char)names[i][plen];
        if (!memchr(kids, ch, nk)) kids[nk++] = (char)ch;
    }
    bool first = true;
    if (!ends) {
        sbuf_add(&b, "\"\\\"\"", 4);
        first = false;
    }
    /* another character, then anything */
    sbuf_addf(&b, "%s([^\"\\\\\\x00-\\x1F", first ? "" : " | ");
    for (size_t k = 0; k < nk; k++) sbuf_addf(&b, "\\x%02X", (unsigned char)kids[k]);
    sbuf_add(&b, "] | \"\\\\\" [\"\\\\/bfnrt]) char* \"\\\"\"", 32);
    for (size_t k = 0; k < nk && !c->failed; k++) {
        char np[300];
        if (plen + 1 >= sizeof np) break;
        memcpy(np, prefix, plen);
        np[plen] = kids[k];
        int sub = key_excluding(c, names, n, ptr, at + 1, np, plen + 1);
        char one[2] = {kids[k], 0};
        sbuf_add(&b, " | ", 3);
        lit(&b, one, 1);
        sbuf_addf(&b, " r%d", sub);
    }
    if (!c->failed) put_rule(c, id, &b);
    free(b.p);
    return id;
}

/* Declared names usable by key_excluding: printable ASCII, no '"' or '\\'. */
static bool plain_names(const char **names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        for (const char *q = names[i]; *q; q++)
            if (*q < 0x20 || *q > 0x7E || *q == '"' || *q == '\\') return false;
    return true;
}

/* The "key: value" rule of additional properties, or -1 (none / failure). */
static int extra_pair(sc *c, json_t *s, const char *ptr, const char **names, size_t n, int depth)
{
    json_t *ap = json_object_get(s, "additionalProperties");
    if (!ap || json_is_false(ap)) return -1;
    char p[512];
    subptr(p, sizeof p, ptr, "additionalProperties");
    int val = json_is_true(ap) ? -2 : gen(c, ap, p, depth + 1);
    if (c->failed) return -1;
    int key = -2;
    if (n > 0) {
        if (!plain_names(names, n)) {
            fail(c, p, "'additionalProperties' beside property names outside printable ASCII (or with '\"' or "
                       "'\\\\') is not supported");
            return -1;
        }
        int k = key_excluding(c, names, n, p, 0, "", 0);
        if (k < 0) return -1;
        key = new_rule_id(c, p);
        if (key < 0) return -1;
        sbuf kb = {0};
        sbuf_addf(&kb, "\"\\\"\" r%d", k);
        put_rule(c, key, &kb);
        free(kb.p);
    }
    int id = new_rule_id(c, p);
    if (id < 0) return -1;
    sbuf b = {0};
    char kn[32], vn[32];
    snprintf(kn, sizeof kn, key == -2 ? "string" : "r%d", key);
    snprintf(vn, sizeof vn, val == -2 ? "value" : "r%d", val);
    sbuf_addf(&b, "%s ws \":\" ws %s ws", kn, vn);
    put_rule(c, id, &b);
    free(b.p);
    return id;
}

static bool is_required(json_t *req, const char *k)
{
    size_t i;
    json_t *v;
    json_array_foreach(req, i, v) if (json_is_string(v) && !strcmp(json_string_value(v), k)) return true;
    return false;
}

/* The chain rules: F_i (nothing written yet) and C_i (something written)
 * for properties i.., required ones never skipped. */
static void object_chain(sc *c, const int *pair, const bool *req, size_t n, int extra, const char *ptr, sbuf *b)
{
    int base = c->n_rules;
    for (size_t i = 0; i <= n; i++)
        if (new_rule_id(c, ptr) < 0 || new_rule_id(c, ptr) < 0) return;
    /* F_i = base + 2i, C_i = base + 2i + 1 */
    for (size_t i = 0; i <= n && !c->failed; i++) {
        sbuf f = {0}, k = {0};
        if (i == n) {
            if (extra >= 0) {
                sbuf_addf(&f, "(r%d (\",\" ws r%d)*)?", extra, extra);
                sbuf_addf(&k, "(\",\" ws r%d)*", extra);
            }
        } else {
            sbuf_addf(&f, "r%d r%d", pair[i], base + 2 * (int)i + 3);
            sbuf_addf(&k, "\",\" ws r%d r%d", pair[i], base + 2 * (int)i + 3);
            if (!req[i]) {
                sbuf_addf(&f, " | r%d", base + 2 * (int)i + 2);
                sbuf_addf(&k, " | r%d", base + 2 * (int)i + 3);
            }
        }
        put_rule(c, base + 2 * (int)i, &f);
        put_rule(c, base + 2 * (int)i + 1, &k);
        free(f.p);
        free(k.p);
    }
    sbuf_addf(b, "\"{\" ws r%d \"}\"", base);
}

static void gen_object(sc *c, json_t *s, const char *ptr, int depth, sbuf *b)
{
    static const char *const unsupported[] = {"minProperties", "maxProperties", "patternProperties",
                                              "propertyNames", "dependentRequired", "dependentSchemas",
                                              "unevaluatedProperties", NULL};
    char p[512];
    for (size_t i = 0; unsupported[i]; i++)
        if (json_object_get(s, unsupported[i])) {
            subptr(p, sizeof p, ptr, unsupported[i]);
            fail(c, p, "the keyword '%s' is not supported", unsupported[i]);
            return;
        }
    json_t *props = json_object_get(s, "properties"), *req = json_object_get(s, "required");
    size_t n = json_object_size(props);
    const char **names = calloc(n + 1, sizeof *names);
    int *pair = calloc(n + 1, sizeof *pair);
    bool *rq = calloc(n + 1, sizeof *rq);
    if (!names || !pair || !rq) {
        fail(c, ptr, "out of memory");
        goto out;
    }
    const char *key;
    json_t *ps;
    size_t i = 0;
    char pp[512];
    subptr(pp, sizeof pp, ptr, "properties");
    json_object_foreach(props, key, ps) { /* jansson keeps insertion order */
        subptr(p, sizeof p, pp, key);
        int v = gen(c, ps, p, depth + 1);
        int id = new_rule_id(c, p);
        if (v < 0 || id < 0) goto out;
        sbuf kb = {0};
        json_t *ks = json_string(key);
        json_lit(c, &kb, ks);
        json_decref(ks);
        sbuf_addf(&kb, " ws \":\" ws r%d ws", v);
        put_rule(c, id, &kb);
        free(kb.p);
        names[i] = key;
        rq[i] = is_required(req, key);
        pair[i++] = id;
    }
    size_t nreq = 0;
    json_t *rv;
    json_array_foreach(req, i, rv) nreq += json_is_string(rv) && json_object_get(props, json_string_value(rv));
    if (nreq != json_array_size(req)) {
        subptr(p, sizeof p, ptr, "required");
        fail(c, p, "'required' names a property that 'properties' does not define");
        goto out;
    }
    int extra = extra_pair(c, s, ptr, names, n, depth);
    if (!c->failed) object_chain(c, pair, rq, n, extra, ptr, b);
out:
    free(names);
    free(pair);
    free(rq);
}

/* allOf over objects: one object with every branch's properties. */
static void gen_all_of(sc *c, json_t *s, const char *ptr, int depth, sbuf *b)
{
    json_t *merged = json_object(), *props = json_object(), *req = json_array();
    json_object_set_new(merged, "type", json_string("object"));
    json_object_set(merged, "properties", props);
    json_object_set(merged, "required", req);
    json_t *arr = json_object_get(s, "allOf");
    size_t n = json_array_size(arr) + 1;
    char p[512];
    for (size_t i = 0; i < n && !c->failed; i++) {
        json_t *br = i + 1 < n ? json_array_get(arr, i) : s, *r;
        snprintf(p, sizeof p, "%s/allOf/%zu", ptr, i);
        if (i + 1 == n) snprintf(p, sizeof p, "%s", ptr);
        if (i + 1 < n && json_is_object(br) && (r = json_object_get(br, "$ref")))
            br = json_is_string(r) ? resolve(c, json_string_value(r)) : NULL;
        if (!json_is_object(br)) {
            fail(c, p, "'allOf' is supported over object schemas only");
            break;
        }
        const char *k;
        json_t *v;
        json_object_foreach(br, k, v) {
            if (!strcmp(k, "allOf") && i + 1 == n) continue;
            if (!strcmp(k, "properties")) {
                const char *pk;
                json_t *pv;
                json_object_foreach(v, pk, pv) {
                    if (json_object_get(props, pk)) {
                        fail(c, p, "'allOf': the property '%s' is defined by two branches (not supported)", pk);
                        break;
                    }
                    json_object_set(props, pk, pv);
                }
            } else if (!strcmp(k, "required")) {
                json_array_extend(req, v);
            } else if (!strcmp(k, "type") && json_is_string(v) && !strcmp(json_string_value(v), "object")) {
            } else if (!strcmp(k, "additionalProperties") && json_is_false(v)) {
            } else if (!in_list(k, ANNOTATIONS)) {
                char kp[600];
                subptr(kp, sizeof kp, p, k);
                fail(c, kp, "'allOf': the keyword '%s' in a branch is not supported (only object properties)", k);
                break;
            }
        }
    }
    if (!c->failed) gen_object(c, merged, ptr, depth, b);
    json_decref(props);
    json_decref(req);
    json_decref(merged);
}

/* ------------------------------------------------------------------------ */
/* Arrays                                                                   */
/* ------------------------------------------------------------------------ */

static void gen_array(sc *c, json_t *s, const char *ptr, int depth, sbuf *b)
{
    char p[512];
    if (json_is_true(json_object_get(s, "uniqueItems")) || json_object_get(s, "contains") ||
        json_object_get(s, "unevaluatedItems")) {
        const char *k = json_object_get(s, "contains") ? "contains"
                        : json_object_get(s, "uniqueItems") ? "uniqueItems" : "unevaluatedItems";
        subptr(p, sizeof p, ptr, k);
        fail(c, p, "the keyword '%s' is not supported", k);
        return;
    }
    long lo = 0, hi = -1;
    if (!get_count(c, s, "minItems", ptr, &lo) || !get_count(c, s, "maxItems", ptr, &hi)) return;
    if (hi >= 0 && hi < lo) {
        fail(c, ptr, "'maxItems' is below 'minItems': no array matches");
        return;
    }
    json_t *items = json_object_get(s, "items"), *pre = json_object_get(s, "prefixItems");
    size_t k = json_array_size(pre);
    int *pr = calloc(k + 1, sizeof *pr);
    int item = -2; /* -2: any value; -1: none */
    if (!pr) {
        fail(c, ptr, "out of memory");
        return;
    }
    for (size_t i = 0; i < k && !c->failed; i++) {
        snprintf(p, sizeof p, "%s/prefixItems/%zu", ptr, i);
        pr[i] = gen(c, json_array_get(pre, i), p, depth + 1);
    }
    subptr(p, sizeof p, ptr, "items");
    if (json_is_false(items) || (!items && k > 0)) item = -1;
    else if (items && !json_is_true(items)) item = gen(c, items, p, depth + 1);
    if (c->failed) goto out;
    if (item == -1 && (long)k < lo) {
        fail(c, ptr, "'minItems' exceeds the 'prefixItems' allowed: no array matches");
        goto out;
    }
    /* element i is pr[i] (i < k) or item; elements after the first take a comma */
    sbuf_add(b, "\"[\" ws ", 7);
    char in[32];
    snprintf(in, sizeof in, item == -2 ? "value" : "r%d", item);
    size_t opened = 0;
    for (size_t i = 0; i < k && (hi < 0 || (long)i < hi); i++) {
        bool opt = (long)i >= lo;
        sbuf_addf(b, "%s%sr%d ws ", opt ? "(" : "", i ? "\",\" ws " : "", pr[i]);
        opened += opt;
    }
    long done = (long)k, left_lo = lo > done ? lo - done : 0;
    long left_hi = hi < 0 ? -1 : (hi > done ? hi - done : 0);
    if (item != -1 && left_hi != 0) {
        if (done == 0) {
            /* (item ("," item){lo-1,hi-1})? */
            long a = left_lo > 0 ? left_lo - 1 : 0;
            if (left_hi < 0) sbuf_addf(b, "(%s ws (\",\" ws %s ws){%ld,})%s", in, in, a, left_lo ? "" : "?");
            else sbuf_addf(b, "(%s ws (\",\" ws %s ws){%ld,%ld})%s", in, in, a, left_hi - 1, left_lo ? "" : "?");
        } else if (left_hi < 0) {
            sbuf_addf(b, "(\",\" ws %s ws){%ld,}", in, left_lo);
        } else {
            sbuf_addf(b, "(\",\" ws %s ws){%ld,%ld}", in, left_lo, left_hi);
        }
    }
    for (size_t i = 0; i < opened; i++) sbuf_add(b, ")?", 2);
    sbuf_add(b, " \"]\"", 4);
out:
    free(pr);
}

/* ------------------------------------------------------------------------ */
/* Schemas                                                                  */
/* ------------------------------------------------------------------------ */

static const char *const KNOWN[] = {"type", "properties", "required", "additionalProperties", "enum", "const",
                                    "anyOf", "oneOf", "allOf", "$ref", "items", "prefixItems", "minItems",
                                    "maxItems", "minLength", "maxLength", "pattern", "format", "minimum",
                                    "maximum", "exclusiveMinimum", "exclusiveMaximum", "nullable", "uniqueItems",
                                    NULL};

/* Keywords that do not constrain a value (beside $ref, anyOf, oneOf). */
static bool inert(const char *k) { return in_list(k, ANNOTATIONS) || !strcmp(k, "nullable"); }

static bool check_keywords(sc *c, json_t *s, const char *ptr)
{
    const char *k;
    json_t *v;
    char p[512];
    json_object_foreach(s, k, v) {
        if (in_list(k, KNOWN) || in_list(k, ANNOTATIONS)) continue;
        subptr(p, sizeof p, ptr, k);
        fail(c, p, "the JSON Schema keyword '%s' is not supported (it cannot be enforced while decoding)", k);
        return false;
    }
    const char *alone[] = {"$ref", "anyOf", "oneOf", "const", "enum", "allOf"};
    for (size_t i = 0; i < sizeof alone / sizeof alone[0]; i++) {
        if (!json_object_get(s, alone[i])) continue;
        json_object_foreach(s, k, v) {
            if (!strcmp(k, alone[i]) || inert(k) || !strcmp(k, "type")) continue;
            if (!strcmp(alone[i], "allOf") && (!strcmp(k, "properties") || !strcmp(k, "required") ||
                                               !strcmp(k, "additionalProperties")))
                continue;
            subptr(p, sizeof p, ptr, k);
            fail(c, p, "'%s' beside '%s' is not supported", k, alone[i]);
            return false;
        }
    }
    return true;
}

/* The types a schema names or implies (T_ALL: any value). */
static int schema_types(sc *c, json_t *s, const char *ptr)
{
    json_t *t = json_object_get(s, "type");
    int bits = 0;
    char p[512];
    subptr(p, sizeof p, ptr, "type");
    if (json_is_string(t)) {
        bits = type_bit(json_string_value(t));
    } else if (json_is_array(t)) {
        size_t i;
        json_t *v;
        json_array_foreach(t, i, v) {
            int b = json_is_string(v) ? type_bit(json_string_value(v)) : 0;
            if (!b) bits = -1;
            if (bits >= 0) bits |= b;
        }
        if (bits == 0) bits = -1;
    } else if (t) {
        bits = -1;
    } else if (json_object_get(s, "properties") || json_object_get(s, "additionalProperties") ||
               json_object_get(s, "required")) {
        bits = T_OBJ;
    } else if (json_object_get(s, "items") || json_object_get(s, "prefixItems")) {
        bits = T_ARR;
    } else if (json_object_get(s, "pattern") || json_object_get(s, "format") || json_object_get(s, "minLength")) {
        bits = T_STR;
    } else {
        bits = T_ALL;
    }
    if (bits <= 0) fail(c, p, "'type' must be one of (or a list of) object, array, string, number, integer, "
                              "boolean, null");
    return bits;
}

static void alt(sbuf *b, bool *first, const char *s)
{
    if (!*first) sbuf_add(b, " | ", 3);
    *first = false;
    sbuf_add(b, s, strlen(s));
}

static void gen_types(sc *c, json_t *s, const char *ptr, int depth, sbuf *b)
{
    int bits = schema_types(c, s, ptr);
    if (c->failed) return;
    if (json_is_true(json_object_get(s, "nullable"))) bits |= T_NULL;
    if (bits == T_ALL) {
        sbuf_add(b, "value", 5);
        return;
    }
    bool first = true;
    sbuf_add(b, "(", 1);
    if (bits & T_OBJ) {
        alt(b, &first, "");
        gen_object(c, s, ptr, depth, b);
    }
    if (bits & T_ARR) {
        alt(b, &first, "");
        gen_array(c, s, ptr, depth, b);
    }
    if (bits & T_STR) {
        alt(b, &first, "");
        gen_string(c, s, ptr, b);
    }
    if ((bits & T_FRAC) && !c->failed) {
        const char *ks[] = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"};
        for (size_t i = 0; i < 4; i++)
            if (json_object_get(s, ks[i])) {
                char p[512];
                subptr(p, sizeof p, ptr, ks[i]);
                fail(c, p, "'%s' is supported on type integer only (not number)", ks[i]);
                return;
            }
        alt(b, &first, "number");
    } else if (bits & T_INT) {
        alt(b, &first, "");
        gen_integer(c, s, ptr, b);
    }
    if (bits & T_BOOL) alt(b, &first, "\"true\" | \"false\"");
    if (bits & T_NULL) alt(b, &first, "\"null\"");
    sbuf_add(b, ")", 1);
}

static void gen_choice(sc *c, json_t *s, const char *ptr, int depth, sbuf *b)
{
    const char *kw = json_object_get(s, "anyOf") ? "anyOf" : "oneOf";
    json_t *arr = json_object_get(s, kw);
    char p[512];
    subptr(p, sizeof p, ptr, kw);
    if (!json_is_array(arr) || json_array_size(arr) == 0) {
        fail(c, p, "'%s' must be a non-empty array of schemas", kw);
        return;
    }
    if (!strcmp(kw, "oneOf") && !branches_disjoint(c, arr)) {
        fail(c, p, "'oneOf' whose branches may overlap is not supported (use anyOf, or tell the branches apart by "
                   "type or by a required property with a different 'const' in each)");
        return;
    }
    bool first = true;
    sbuf_add(b, "(", 1);
    size_t i;
    json_t *br;
    json_array_foreach(arr, i, br) {
        char bp[540];
        snprintf(bp, sizeof bp, "%s/%zu", p, i);
        int r = gen(c, br, bp, depth + 1);
        if (r < 0) return;
        char nm[32];
        snprintf(nm, sizeof nm, "r%d", r);
        alt(b, &first, nm);
    }
    if (json_is_true(json_object_get(s, "nullable"))) alt(b, &first, "\"null\"");
    sbuf_add(b, ")", 1);
}

static void gen_enum(sc *c, json_t *s, const char *ptr, sbuf *b)
{
    json_t *x = json_object_get(s, "const");
    if (x) {
        json_lit(c, b, x);
        return;
    }
    json_t *arr = json_object_get(s, "enum");
    char p[512];
    subptr(p, sizeof p, ptr, "enum");
    int bits = json_object_get(s, "type") ? schema_types(c, s, ptr) : T_ALL;
    if (!json_is_array(arr) || c->failed) {
        fail(c, p, "'enum' must be an array");
        return;
    }
    bool first = true;
    sbuf_add(b, "(", 1);
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v) {
        if (!(value_bits(v) & bits)) continue;
        if (!first) sbuf_add(b, " | ", 3);
        first = false;
        json_lit(c, b, v);
    }
    sbuf_add(b, ")", 1);
    if (first) fail(c, p, "'enum' has no value of the schema's 'type'");
}

static int gen(sc *c, json_t *s, const char *ptr, int depth)
{
    if (c->failed) return -1;
    if (depth > c->lim->max_depth) {
        fail(c, ptr, "schema nested deeper than %d levels (schema_max_depth)", c->lim->max_depth);
        return -1;
    }
    if (json_is_false(s)) {
        fail(c, ptr, "the schema false matches no value");
        return -1;
    }
    if (!json_is_object(s) && !json_is_true(s)) {
        fail(c, ptr, "a schema must be an object or a boolean");
        return -1;
    }
    if (json_is_object(s) && !check_keywords(c, s, ptr)) return -1;
    json_t *ref = json_object_get(s, "$ref");
    if (ref) {
        if (json_is_string(ref)) return gen_ref(c, json_string_value(ref), ptr, depth);
        char p[512];
        subptr(p, sizeof p, ptr, "$ref");
        fail(c, p, "'$ref' must be a string");
        return -1;
    }
    int id = new_rule_id(c, ptr);
    if (id < 0) return -1;
    sbuf b = {0};
    if (json_is_true(s)) sbuf_add(&b, "value", 5);
    else if (json_object_get(s, "const") || json_object_get(s, "enum")) gen_enum(c, s, ptr, &b);
    else if (json_object_get(s, "anyOf") || json_object_get(s, "oneOf")) gen_choice(c, s, ptr, depth, &b);
    else if (json_object_get(s, "allOf")) gen_all_of(c, s, ptr, depth, &b);
    else gen_types(c, s, ptr, depth, &b);
    if (!c->failed) put_rule(c, id, &b);
    free(b.p);
    return c->failed ? -1 : id;
}

#define COMMON_RULES \
    "ws ::= ([ ] | [\\n] [ \\t]{0,20})?\n" \
    "char ::= [^\"\\\\\\x00-\\x1F] | \"\\\\\" ([\"\\\\/bfnrt] | \"u\" [0-9a-fA-F]{4})\n" \
    "string ::= \"\\\"\" char* \"\\\"\"\n" \
    "number ::= \"-\"? (\"0\" | [1-9] [0-9]{0,15}) (\".\" [0-9]{1,15})? ([eE] [-+]? [0-9]{1,3})?\n" \
    "value ::= object | array | string | number | \"true\" | \"false\" | \"null\"\n" \
    "object ::= \"{\" ws (string ws \":\" ws value ws (\",\" ws string ws \":\" ws value ws)*)? \"}\"\n" \
    "array ::= \"[\" ws (value ws (\",\" ws value ws)*)? \"]\"\n" \
    "fmt-date ::= [0-9]{4} \"-\" ((\"0\" [13578] | \"1\" [02]) \"-\" (\"0\" [1-9] | [12] [0-9] | \"3\" [01]) | " \
    "(\"0\" [469] | \"11\") \"-\" (\"0\" [1-9] | [12] [0-9] | \"30\") | \"02-\" (\"0\" [1-9] | \"1\" [0-9] | \"2\" " \
    "[0-8]))\n" \
    "fmt-time ::= ([01] [0-9] | \"2\" [0-3]) \":\" [0-5] [0-9] \":\" [0-5] [0-9] (\".\" [0-9]{1,6})? (\"Z\" | [+-] " \
    "([01] [0-9] | \"2\" [0-3]) \":\" [0-5] [0-9])\n" \
    "fmt-date-time ::= fmt-date \"T\" fmt-time\n" \
    "fmt-uuid ::= [0-9a-f]{8} \"-\" [0-9a-f]{4} \"-\" [0-9a-f]{4} \"-\" [0-9a-f]{4} \"-\" [0-9a-f]{12}\n" \
    "fmt-email ::= email-atom (\".\" email-atom){0,3} \"@\" email-label (\".\" email-label){1,3}\n" \
    "email-atom ::= [a-z0-9!#$%&'*+/=?^_`{|}~-]{1,24}\n" \
    "email-label ::= [a-z0-9] ([a-z0-9-]{0,20} [a-z0-9])?\n" \
    "fmt-ipv4 ::= ipv4-octet \".\" ipv4-octet \".\" ipv4-octet \".\" ipv4-octet\n" \
    "ipv4-octet ::= \"25\" [0-5] | \"2\" [0-4] [0-9] | \"1\" [0-9] [0-9] | [1-9]? [0-9]\n"

static const char COMMON[] = COMMON_RULES;

int schema_to_gbnf(json_t *schema, const schema_limits *lim, char **gbnf, char *pointer, size_t plen, char *msg,
                   size_t mlen)
{
    *gbnf = NULL;
    sc c = {.root = schema, .lim = lim, .eptr = pointer, .eplen = plen, .emsg = msg, .emlen = mlen};
    int id = gen(&c, schema, "", 0);
    if (id >= 0) {
        sbuf_addf(&c.out, "root ::= r%d\n", id);
        if (!sbuf_add(&c.out, COMMON, sizeof COMMON - 1)) fail(&c, "", "out of memory");
    }
    for (size_t i = 0; i < c.n_refs; i++) free(c.refs[i].ptr);
    free(c.refs);
    if (c.failed || id < 0) {
        free(c.out.p);
        return -1;
    }
    *gbnf = c.out.p;
    return 0;
}

const char *schema_json_object_gbnf(void)
{
    static const char text[] = "root ::= object\n" COMMON_RULES;
    return text;
}
