/*
 * jinja_value.c - the value model of the Jinja interpreter: the arena, growing
 * buffers, lists and ordered dicts, and the Python semantics that show in a
 * rendering (truthiness, ==, ordering, str(), repr(), json.dumps).
 */
#include "jinja.h"
#include "internal.h"
#include "tokenizer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- arena ---------------------------------------------------------------- */

struct jchunk {
    jchunk *next;
    size_t used, cap;
    _Alignas(16) unsigned char mem[];
};

void *jj_arena_alloc(jarena *a, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    if (a->head && a->head->cap - a->head->used >= n) {
        void *p = a->head->mem + a->head->used;
        a->head->used += n;
        return p;
    }
    size_t cap = n > 65536 ? n : 65536;
    if (a->limit && a->total + cap + sizeof(jchunk) > a->limit) return NULL;
    jchunk *c = eng__malloc(sizeof(jchunk) + cap);
    if (!c) return NULL;
    a->total += cap + sizeof(jchunk);
    c->cap = cap;
    c->used = n;
    /* a big block gets its own chunk behind the current one, so the
     * current chunk's free space is not abandoned */
    if (a->head && n > 65536) {
        c->next = a->head->next;
        a->head->next = c;
    } else {
        c->next = a->head;
        a->head = c;
    }
    return c->mem;
}

void jj_arena_free(jarena *a)
{
    jchunk *c = a->head;
    while (c) {
        jchunk *n = c->next;
        free(c);
        c = n;
    }
    a->head = NULL;
    a->total = 0;
}

/* ---- buffers --------------------------------------------------------------- */

static void jb_grow(jr *R, jbuf *b, size_t need)
{
    if (b->cap - b->n >= need) return;
    size_t cap = b->cap ? b->cap * 2 : 64;
    while (cap - b->n < need) cap *= 2;
    char *p = jj_alloc(R, cap);
    if (b->n) memcpy(p, b->p, b->n);
    b->p = p;
    b->cap = cap;
}

void jb_put(jr *R, jbuf *b, const char *s, size_t n)
{
    if (!n) return;
    if (b == R->out) {
        R->out_total += n;
        if (R->out_total > R->lim.max_output)
            jj_fail(R, "output limit exceeded (%zu bytes)", R->lim.max_output);
    }
    jb_grow(R, b, n);
    memcpy(b->p + b->n, s, n);
    b->n += n;
}

void jb_putc(jr *R, jbuf *b, char c) { jb_put(R, b, &c, 1); }

void jb_printf(jr *R, jbuf *b, const char *fmt, ...)
{
    char tmp[128];
    va_list ap, ap2;
    va_start(ap, fmt);
    va_copy(ap2, ap);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0 && (size_t)n < sizeof tmp) {
        jb_put(R, b, tmp, (size_t)n);
    } else if (n > 0) { /* longer: formatted again into a buffer of its size */
        char *big = jj_alloc(R, (size_t)n + 1);
        vsnprintf(big, (size_t)n + 1, fmt, ap2);
        jb_put(R, b, big, (size_t)n);
    }
    va_end(ap2);
}

jv jb_str(jbuf *b) { return jv_strn(b->n ? b->p : "", b->n); }

/* ---- containers ------------------------------------------------------------- */

jlist *jl_new(jr *R, size_t cap)
{
    jlist *l = jj_alloc(R, sizeof *l);
    l->n = 0;
    l->cap = cap;
    l->v = cap ? jj_alloc(R, cap * sizeof(jv)) : NULL;
    return l;
}

void jl_push(jr *R, jlist *l, jv v)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 4;
        jv *nv = jj_alloc(R, cap * sizeof(jv));
        if (l->n) memcpy(nv, l->v, l->n * sizeof(jv));
        l->v = nv;
        l->cap = cap;
    }
    l->v[l->n++] = v;
}

jv jv_list(jlist *l)
{
    jv v = {0};
    v.t = JV_LIST;
    v.u.l = l;
    return v;
}

jdict *jd_new(jr *R)
{
    jdict *d = jj_alloc(R, sizeof *d);
    memset(d, 0, sizeof *d);
    return d;
}

bool jv_streq(jv v, const char *s)
{
    size_t n = strlen(s);
    return v.t == JV_STR && v.u.s.n == n && memcmp(v.u.s.p, s, n) == 0;
}

/* Key lookup without a render context: keys compare as Python hashable
 * values do (1 == 1.0 == True); only scalar keys occur. */
static bool key_eq(jv a, jv b)
{
    if (a.t == JV_STR || b.t == JV_STR)
        return a.t == b.t && a.u.s.n == b.u.s.n && memcmp(a.u.s.p, b.u.s.p, a.u.s.n) == 0;
    bool an = a.t == JV_INT || a.t == JV_BOOL || a.t == JV_FLOAT;
    bool bn = b.t == JV_INT || b.t == JV_BOOL || b.t == JV_FLOAT;
    if (an && bn) {
        double x = a.t == JV_FLOAT ? a.u.f : a.t == JV_INT ? (double)a.u.i : a.u.b;
        double y = b.t == JV_FLOAT ? b.u.f : b.t == JV_INT ? (double)b.u.i : b.u.b;
        return x == y;
    }
    if (a.t != b.t) return false;
    return a.t == JV_NONE || a.t == JV_UNDEF;
}

static ptrdiff_t jd_find(const jdict *d, jv k)
{
    for (size_t i = 0; i < d->n; i++)
        if (key_eq(d->k[i], k)) return (ptrdiff_t)i;
    return -1;
}

bool jd_get(const jdict *d, jv k, jv *out)
{
    ptrdiff_t i = jd_find(d, k);
    if (i < 0) return false;
    *out = d->v[i];
    return true;
}

bool jd_get_str(const jdict *d, const char *k, size_t n, jv *out) { return jd_get(d, jv_strn(k, n), out); }

void jd_set(jr *R, jdict *d, jv k, jv v)
{
    ptrdiff_t i = jd_find(d, k);
    if (i >= 0) {
        d->v[i] = v;
        return;
    }
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 4;
        jv *nk = jj_alloc(R, cap * sizeof(jv)), *nv = jj_alloc(R, cap * sizeof(jv));
        if (d->n) {
            memcpy(nk, d->k, d->n * sizeof(jv));
            memcpy(nv, d->v, d->n * sizeof(jv));
        }
        d->k = nk;
        d->v = nv;
        d->cap = cap;
    }
    d->k[d->n] = k;
    d->v[d->n++] = v;
}

jv jv_str_copy(jr *R, const char *p, size_t n)
{
    char *q = jj_alloc(R, n + 1);
    if (n) memcpy(q, p, n);
    q[n] = 0;
    return jv_strn(q, n);
}

/* ---- UTF-8 ----------------------------------------------------------------- */

uint32_t jj_utf8_next(const char *p, size_t n, size_t *i) { return eng__utf8_next((const uint8_t *)p, n, i); }

size_t jj_utf8_count(const char *p, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; c++) jj_utf8_next(p, n, &i);
    return c;
}

bool jj_py_isspace(uint32_t cp) { return eng__uisspace(cp) || (cp >= 0x1C && cp <= 0x1F); }

static bool py_isprintable(uint32_t cp)
{
    if (cp < 0x7F) return cp >= 0x20;
    if (cp == 0x7F) return false;
    int c = eng__ucat(cp);
    return c != ENG_UCAT_UNDEF && c != ENG_UCAT_SEPARATOR && c != ENG_UCAT_CONTROL;
}

/* ---- Python semantics --------------------------------------------------------- */

const char *jv_type_name(jv v)
{
    static const char *names[] = {"Undefined", "NoneType", "bool", "int", "float", "str", "list",
                                  "dict", "Namespace", "Macro", "function", "method", "LoopContext"};
    if (v.t == JV_LIST && v.tuple) return "tuple";
    return names[v.t];
}

bool jv_truthy(jv v)
{
    switch (v.t) {
    case JV_UNDEF: case JV_NONE: return false;
    case JV_BOOL: return v.u.b;
    case JV_INT: return v.u.i != 0;
    case JV_FLOAT: return v.u.f != 0.0;
    case JV_STR: return v.u.s.n != 0;
    case JV_LIST: return v.u.l->n != 0;
    case JV_DICT: return v.u.d->n != 0;
    default: return true;
    }
}

static bool is_num(jv v) { return v.t == JV_INT || v.t == JV_BOOL || v.t == JV_FLOAT; }
static double num_f(jv v) { return v.t == JV_FLOAT ? v.u.f : v.t == JV_INT ? (double)v.u.i : (double)v.u.b; }
static int64_t num_i(jv v) { return v.t == JV_INT ? v.u.i : (int64_t)v.u.b; }

static void depth_check(jr *R, int level)
{
    if (level > 200) jj_fail(R, "value nested too deeply");
}

static bool eq_at(jr *R, jv a, jv b, int level)
{
    depth_check(R, level);
    if (is_num(a) && is_num(b)) {
        if (a.t == JV_FLOAT || b.t == JV_FLOAT) return num_f(a) == num_f(b);
        return num_i(a) == num_i(b);
    }
    if (a.t != b.t) return false;
    switch (a.t) {
    case JV_UNDEF: case JV_NONE: return true;
    case JV_STR: return a.u.s.n == b.u.s.n && memcmp(a.u.s.p, b.u.s.p, a.u.s.n) == 0;
    case JV_LIST:
        if (a.tuple != b.tuple || a.u.l->n != b.u.l->n) return false;
        for (size_t i = 0; i < a.u.l->n; i++)
            if (!eq_at(R, a.u.l->v[i], b.u.l->v[i], level + 1)) return false;
        return true;
    case JV_DICT:
        if (a.u.d->n != b.u.d->n) return false;
        for (size_t i = 0; i < a.u.d->n; i++) {
            jv o;
            if (!jd_get(b.u.d, a.u.d->k[i], &o) || !eq_at(R, a.u.d->v[i], o, level + 1)) return false;
        }
        return true;
    case JV_NS: return a.u.d == b.u.d;
    case JV_MACRO: return a.u.node == b.u.node;
    case JV_FUNC: return a.u.i == b.u.i;
    default: return false;
    }
}

bool jv_eq(jr *R, jv a, jv b) { return eq_at(R, a, b, 0); }

static int cmp_at(jr *R, jv a, jv b, int level)
{
    depth_check(R, level);
    if (is_num(a) && is_num(b)) {
        if (a.t == JV_FLOAT || b.t == JV_FLOAT) {
            double x = num_f(a), y = num_f(b);
            return x < y ? -1 : x > y ? 1 : 0;
        }
        int64_t x = num_i(a), y = num_i(b);
        return x < y ? -1 : x > y ? 1 : 0;
    }
    if (a.t == JV_STR && b.t == JV_STR) {
        size_t n = a.u.s.n < b.u.s.n ? a.u.s.n : b.u.s.n;
        int c = n ? memcmp(a.u.s.p, b.u.s.p, n) : 0;
        if (c) return c;
        return a.u.s.n < b.u.s.n ? -1 : a.u.s.n > b.u.s.n ? 1 : 0;
    }
    if (a.t == JV_LIST && b.t == JV_LIST && a.tuple == b.tuple) {
        for (size_t i = 0; i < a.u.l->n && i < b.u.l->n; i++) {
            if (eq_at(R, a.u.l->v[i], b.u.l->v[i], level + 1)) continue;
            return cmp_at(R, a.u.l->v[i], b.u.l->v[i], level + 1);
        }
        return a.u.l->n < b.u.l->n ? -1 : a.u.l->n > b.u.l->n ? 1 : 0;
    }
    if (a.t == JV_UNDEF || b.t == JV_UNDEF) jj_fail(R, "UndefinedError: comparison with an undefined value");
    jj_fail(R, "TypeError: '<' not supported between instances of '%s' and '%s'", jv_type_name(a),
            jv_type_name(b));
}

int jv_cmp(jr *R, jv a, jv b) { return cmp_at(R, a, b, 0); }

/* Python's float repr: the shortest digits that read back to the same
 * double, fixed notation for 1e-4 <= |x| < 1e16, else d.ddde+XX. */
static void write_float(jr *R, jbuf *b, double x, bool json)
{
    if (isnan(x)) { jb_puts(R, b, json ? "NaN" : "nan"); return; }
    if (isinf(x)) { jb_puts(R, b, x < 0 ? (json ? "-Infinity" : "-inf") : (json ? "Infinity" : "inf")); return; }
    char tmp[40];
    int prec = 1;
    for (; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*e", prec - 1, x);
        if (strtod(tmp, NULL) == x) break;
    }
    char digits[24];
    size_t nd = 0;
    const char *p = tmp;
    bool neg = *p == '-';
    if (neg) p++;
    for (; *p && *p != 'e'; p++)
        if (*p >= '0' && *p <= '9') digits[nd++] = *p;
    int exp10 = atoi(p + 1);
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    int decpt = exp10 + 1;
    if (neg) jb_putc(R, b, '-');
    if (decpt > -4 && decpt <= 16) {
        if (decpt <= 0) {
            jb_puts(R, b, "0.");
            for (int i = 0; i < -decpt; i++) jb_putc(R, b, '0');
            jb_put(R, b, digits, nd);
        } else if ((size_t)decpt >= nd) {
            jb_put(R, b, digits, nd);
            for (size_t i = nd; i < (size_t)decpt; i++) jb_putc(R, b, '0');
            jb_puts(R, b, ".0");
        } else {
            jb_put(R, b, digits, (size_t)decpt);
            jb_putc(R, b, '.');
            jb_put(R, b, digits + decpt, nd - (size_t)decpt);
        }
        return;
    }
    jb_putc(R, b, digits[0]);
    if (nd > 1) {
        jb_putc(R, b, '.');
        jb_put(R, b, digits + 1, nd - 1);
    }
    jb_printf(R, b, "e%c%02d", exp10 < 0 ? '-' : '+', exp10 < 0 ? -exp10 : exp10);
}

static void write_str_repr(jr *R, jbuf *b, const char *s, size_t n)
{
    bool sq = memchr(s, '\'', n) != NULL, dq = memchr(s, '"', n) != NULL;
    char q = sq && !dq ? '"' : '\'';
    jb_putc(R, b, q);
    for (size_t i = 0; i < n;) {
        size_t st = i;
        uint32_t cp = jj_utf8_next(s, n, &i);
        if (cp == (uint32_t)q || cp == '\\') {
            jb_putc(R, b, '\\');
            jb_putc(R, b, (char)cp);
        } else if (cp == '\n') jb_puts(R, b, "\\n");
        else if (cp == '\r') jb_puts(R, b, "\\r");
        else if (cp == '\t') jb_puts(R, b, "\\t");
        else if (py_isprintable(cp)) jb_put(R, b, s + st, i - st);
        else if (cp < 0x100) jb_printf(R, b, "\\x%02x", cp);
        else if (cp < 0x10000) jb_printf(R, b, "\\u%04x", cp);
        else jb_printf(R, b, "\\U%08x", cp);
    }
    jb_putc(R, b, q);
}

static void write_py(jr *R, jbuf *b, jv v, bool repr, int level);

static void write_seq(jr *R, jbuf *b, jv v, int level)
{
    jb_putc(R, b, v.tuple ? '(' : '[');
    for (size_t i = 0; i < v.u.l->n; i++) {
        if (i) jb_puts(R, b, ", ");
        write_py(R, b, v.u.l->v[i], true, level + 1);
    }
    if (v.tuple && v.u.l->n == 1) jb_putc(R, b, ',');
    jb_putc(R, b, v.tuple ? ')' : ']');
}

static void write_dict(jr *R, jbuf *b, const jdict *d, int level)
{
    jb_putc(R, b, '{');
    for (size_t i = 0; i < d->n; i++) {
        if (i) jb_puts(R, b, ", ");
        write_py(R, b, d->k[i], true, level + 1);
        jb_puts(R, b, ": ");
        write_py(R, b, d->v[i], true, level + 1);
    }
    jb_putc(R, b, '}');
}

static void write_py(jr *R, jbuf *b, jv v, bool repr, int level)
{
    depth_check(R, level);
    switch (v.t) {
    case JV_UNDEF: if (repr) jb_puts(R, b, "Undefined"); break;
    case JV_NONE: jb_puts(R, b, "None"); break;
    case JV_BOOL: jb_puts(R, b, v.u.b ? "True" : "False"); break;
    case JV_INT: jb_printf(R, b, "%lld", (long long)v.u.i); break;
    case JV_FLOAT: write_float(R, b, v.u.f, false); break;
    case JV_STR:
        if (repr) write_str_repr(R, b, v.u.s.p, v.u.s.n);
        else jb_put(R, b, v.u.s.p, v.u.s.n);
        break;
    case JV_LIST: write_seq(R, b, v, level); break;
    case JV_DICT: write_dict(R, b, v.u.d, level); break;
    case JV_NS:
        jb_puts(R, b, "<Namespace ");
        write_dict(R, b, v.u.d, level);
        jb_putc(R, b, '>');
        break;
    case JV_MACRO: jb_printf(R, b, "<Macro '%.*s'>", (int)v.u.node->name_len, v.u.node->name); break;
    case JV_FUNC: jb_puts(R, b, "<function>"); break;
    case JV_METHOD: jb_printf(R, b, "<built-in method %s>", v.u.m->name); break;
    case JV_LOOP: jb_puts(R, b, "<LoopContext>"); break;
    }
}

void jv_write_str(jr *R, jbuf *b, jv v) { write_py(R, b, v, false, 0); }
void jv_write_repr(jr *R, jbuf *b, jv v) { write_py(R, b, v, true, 0); }

jv jv_to_str(jr *R, jv v)
{
    if (v.t == JV_STR) return v;
    jbuf b = {0};
    jv_write_str(R, &b, v);
    return jb_str(&b);
}

/* ---- json.dumps(ensure_ascii=False) ---------------------------------------- */

static void write_json_str(jr *R, jbuf *b, const char *s, size_t n)
{
    jb_putc(R, b, '"');
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        jb_put(R, b, s + run, i - run);
        run = i + 1;
        switch (c) {
        case '"': jb_puts(R, b, "\\\""); break;
        case '\\': jb_puts(R, b, "\\\\"); break;
        case '\n': jb_puts(R, b, "\\n"); break;
        case '\r': jb_puts(R, b, "\\r"); break;
        case '\t': jb_puts(R, b, "\\t"); break;
        case '\b': jb_puts(R, b, "\\b"); break;
        case '\f': jb_puts(R, b, "\\f"); break;
        default: jb_printf(R, b, "\\u%04x", c); break;
        }
    }
    jb_put(R, b, s + run, n - run);
    jb_putc(R, b, '"');
}

static void json_newline(jr *R, jbuf *b, int indent, int level)
{
    jb_putc(R, b, '\n');
    for (int i = 0; i < indent * level; i++) jb_putc(R, b, ' ');
}

static void write_json_key(jr *R, jbuf *b, jv k)
{
    switch (k.t) {
    case JV_STR: write_json_str(R, b, k.u.s.p, k.u.s.n); return;
    case JV_INT: jb_printf(R, b, "\"%lld\"", (long long)k.u.i); return;
    case JV_BOOL: jb_puts(R, b, k.u.b ? "\"true\"" : "\"false\""); return;
    case JV_NONE: jb_puts(R, b, "\"null\""); return;
    case JV_FLOAT: {
        jbuf t = {0};
        write_float(R, &t, k.u.f, true);
        write_json_str(R, b, t.p, t.n);
        return;
    }
    default: jj_fail(R, "TypeError: keys must be str, int, float, bool or None, not %s", jv_type_name(k));
    }
}

static void write_json_dict(jr *R, jbuf *b, const jdict *d, int indent, const char *isep, const char *ksep,
                            bool sort_keys, int level)
{
    if (!d->n) { jb_puts(R, b, "{}"); return; }
    size_t *ord = jj_alloc(R, d->n * sizeof *ord);
    for (size_t i = 0; i < d->n; i++) ord[i] = i;
    if (sort_keys) /* insertion sort: stable, and dicts here are small */
        for (size_t i = 1; i < d->n; i++)
            for (size_t j = i; j > 0 && jv_cmp(R, d->k[ord[j - 1]], d->k[ord[j]]) > 0; j--) {
                size_t t = ord[j];
                ord[j] = ord[j - 1];
                ord[j - 1] = t;
            }
    jb_putc(R, b, '{');
    for (size_t i = 0; i < d->n; i++) {
        if (i) jb_puts(R, b, isep);
        if (indent >= 0) json_newline(R, b, indent, level + 1);
        write_json_key(R, b, d->k[ord[i]]);
        jb_puts(R, b, ksep);
        jv_write_json(R, b, d->v[ord[i]], indent, isep, ksep, sort_keys, level + 1);
    }
    if (indent >= 0) json_newline(R, b, indent, level);
    jb_putc(R, b, '}');
}

/* indent < 0: no indentation (Python's indent=None). */
void jv_write_json(jr *R, jbuf *b, jv v, int indent, const char *isep, const char *ksep, bool sort_keys, int level)
{
    depth_check(R, level);
    switch (v.t) {
    case JV_NONE: jb_puts(R, b, "null"); return;
    case JV_BOOL: jb_puts(R, b, v.u.b ? "true" : "false"); return;
    case JV_INT: jb_printf(R, b, "%lld", (long long)v.u.i); return;
    case JV_FLOAT: write_float(R, b, v.u.f, true); return;
    case JV_STR: write_json_str(R, b, v.u.s.p, v.u.s.n); return;
    case JV_DICT: write_json_dict(R, b, v.u.d, indent, isep, ksep, sort_keys, level); return;
    case JV_LIST:
        if (!v.u.l->n) { jb_puts(R, b, "[]"); return; }
        jb_putc(R, b, '[');
        for (size_t i = 0; i < v.u.l->n; i++) {
            if (i) jb_puts(R, b, isep);
            if (indent >= 0) json_newline(R, b, indent, level + 1);
            jv_write_json(R, b, v.u.l->v[i], indent, isep, ksep, sort_keys, level + 1);
        }
        if (indent >= 0) json_newline(R, b, indent, level);
        jb_putc(R, b, ']');
        return;
    default: jj_fail(R, "TypeError: Object of type %s is not JSON serializable", jv_type_name(v));
    }
}
