/*
 * jinja_builtins.c - what a template can call: jinja2's filters and tests,
 * the Python str/dict/list methods templates use (the modifying ones are not
 * reachable, as in jinja2's immutable sandbox), and the globals transformers
 * provides (raise_exception, strftime_now) next to namespace, range, dict.
 */
#include "jinja.h"
#include "internal.h"
#include "tokenizer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EQ(a, b) (strcmp((a), (b)) == 0)

/* ---- arguments ------------------------------------------------------------------ */

/* Argument by position (after the operand) or by keyword, else def. */
static jv arg(const jargs *a, size_t pos, const char *name, jv def)
{
    for (size_t i = 0; i < a->nkw; i++)
        if (EQ(a->kname[i], name)) return a->kval[i];
    return pos < a->npos ? a->pos[pos] : def;
}

static bool has_arg(const jargs *a, size_t pos, const char *name)
{
    for (size_t i = 0; i < a->nkw; i++)
        if (EQ(a->kname[i], name)) return true;
    return pos < a->npos;
}

static jv need_str(jr *R, jv v, const char *what)
{
    if (v.t != JV_STR) jj_fail(R, "TypeError: %s must be a string, not %s", what, jv_type_name(v));
    return v;
}

static int64_t need_int(jr *R, jv v, const char *what)
{
    if (v.t == JV_INT) return v.u.i;
    if (v.t == JV_BOOL) return v.u.b;
    jj_fail(R, "TypeError: %s must be an integer, not %s", what, jv_type_name(v));
}

static jv mk_dict(jdict *d)
{
    jv v = {0};
    v.t = JV_DICT;
    v.u.d = d;
    return v;
}

static jv tuple2(jr *R, jv a, jv b)
{
    jlist *l = jl_new(R, 2);
    jl_push(R, l, a);
    jl_push(R, l, b);
    jv t = jv_list(l);
    t.tuple = 1;
    return t;
}

jv jj_iterate(jr *R, jv x)
{
    jlist *l;
    switch (x.t) {
    case JV_LIST: return x;
    case JV_UNDEF: return jv_list(jl_new(R, 0));
    case JV_DICT:
        l = jl_new(R, x.u.d->n);
        for (size_t i = 0; i < x.u.d->n; i++) jl_push(R, l, x.u.d->k[i]);
        return jv_list(l);
    case JV_STR:
        l = jl_new(R, x.u.s.n);
        for (size_t i = 0; i < x.u.s.n;) {
            size_t st = i;
            jj_utf8_next(x.u.s.p, x.u.s.n, &i);
            jl_push(R, l, jv_strn(x.u.s.p + st, i - st));
        }
        return jv_list(l);
    default: jj_fail(R, "TypeError: '%s' object is not iterable", jv_type_name(x));
    }
}

/* ---- strings ----------------------------------------------------------------------- */

static bool in_set(uint32_t cp, jv chars)
{
    if (chars.t != JV_STR) return jj_py_isspace(cp);
    for (size_t i = 0; i < chars.u.s.n;)
        if (jj_utf8_next(chars.u.s.p, chars.u.s.n, &i) == cp) return true;
    return false;
}

static jv py_strip(jr *R, jv s, jv chars, bool left, bool right)
{
    if (chars.t != JV_STR && chars.t != JV_NONE && chars.t != JV_UNDEF)
        jj_fail(R, "TypeError: strip arg must be None or str");
    const char *p = s.u.s.p;
    size_t a = 0, b = s.u.s.n;
    while (left && a < b) {
        size_t i = a;
        if (!in_set(jj_utf8_next(p, b, &i), chars)) break;
        a = i;
    }
    while (right && b > a) {
        size_t st = b - 1;
        while (st > a && ((unsigned char)p[st] & 0xC0) == 0x80) st--;
        size_t i = st;
        if (!in_set(jj_utf8_next(p, b, &i), chars)) break;
        b = st;
    }
    return jv_strn(p + a, b - a);
}

static jv py_split(jr *R, jv s, jv sep, int64_t maxsplit)
{
    jlist *l = jl_new(R, 4);
    const char *p = s.u.s.p;
    size_t n = s.u.s.n;
    if (sep.t == JV_STR) {
        if (!sep.u.s.n) jj_fail(R, "ValueError: empty separator");
        size_t a = 0;
        for (;;) {
            const char *hit = maxsplit == 0 ? NULL : memmem(p + a, n - a, sep.u.s.p, sep.u.s.n);
            if (!hit) break;
            jl_push(R, l, jv_strn(p + a, (size_t)(hit - (p + a))));
            a = (size_t)(hit - p) + sep.u.s.n;
            if (maxsplit > 0) maxsplit--;
        }
        jl_push(R, l, jv_strn(p + a, n - a));
        return jv_list(l);
    }
    size_t i = 0;
    for (;;) {
        while (i < n) { /* skip whitespace */
            size_t k = i;
            if (!jj_py_isspace(jj_utf8_next(p, n, &k))) break;
            i = k;
        }
        if (i >= n) break;
        if (maxsplit == 0) { /* the rest, trailing whitespace kept */
            jl_push(R, l, jv_strn(p + i, n - i));
            break;
        }
        size_t st = i;
        while (i < n) {
            size_t k = i;
            if (jj_py_isspace(jj_utf8_next(p, n, &k))) break;
            i = k;
        }
        jl_push(R, l, jv_strn(p + st, i - st));
        if (maxsplit > 0) maxsplit--;
    }
    return jv_list(l);
}

static jv py_replace(jr *R, jv s, jv old, jv rep, int64_t count)
{
    need_str(R, old, "replace() argument 1");
    need_str(R, rep, "replace() argument 2");
    jbuf b = {0};
    size_t a = 0;
    const char *p = s.u.s.p;
    size_t n = s.u.s.n;
    if (!old.u.s.n) { /* Python inserts rep between every character */
        for (size_t i = 0; i <= n && count != 0; count--) {
            jb_put(R, &b, rep.u.s.p, rep.u.s.n);
            if (i == n) { a = n; break; }
            size_t st = i;
            jj_utf8_next(p, n, &i);
            jb_put(R, &b, p + st, i - st);
            a = i;
        }
        jb_put(R, &b, p + a, n - a);
        return jb_str(&b);
    }
    while (count != 0) {
        const char *hit = memmem(p + a, n - a, old.u.s.p, old.u.s.n);
        if (!hit) break;
        jb_put(R, &b, p + a, (size_t)(hit - (p + a)));
        jb_put(R, &b, rep.u.s.p, rep.u.s.n);
        a = (size_t)(hit - p) + old.u.s.n;
        if (count > 0) count--;
    }
    jb_put(R, &b, p + a, n - a);
    return jb_str(&b);
}

static bool is_lower_c(char c) { return c >= 'a' && c <= 'z'; }
static bool is_upper_c(char c) { return c >= 'A' && c <= 'Z'; }

/* Simple case mapping of ASCII, Latin-1, Latin Extended-A, Greek and
 * Cyrillic (Python's full mapping has a few one-to-many cases, such as
 * "\u00df".upper() == "SS", that are not followed here). */
static uint32_t case_map(uint32_t c, bool up)
{
    if (c == 0x130 || c == 0x131) return c; /* dotted/dotless i map to two code points */
    if (c < 0x80) return up ? (is_lower_c((char)c) ? c - 32 : c) : (is_upper_c((char)c) ? c + 32 : c);
    if (up) {
        if ((c >= 0xE0 && c <= 0xFE && c != 0xF7) || (c >= 0x3B1 && c <= 0x3C9 && c != 0x3C2) || (c >= 0x430 && c <= 0x44F))
            return c - 0x20;
        if (c == 0xFF) return 0x178;
        if (c == 0x3C2) return 0x3A3;
        if (c >= 0x450 && c <= 0x45F) return c - 0x50;
        if (((c >= 0x100 && c <= 0x137) || (c >= 0x14A && c <= 0x177)) && (c & 1)) return c - 1;
        if (((c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17E)) && !(c & 1)) return c - 1;
        return c;
    }
    if ((c >= 0xC0 && c <= 0xDE && c != 0xD7) || (c >= 0x391 && c <= 0x3A9 && c != 0x3A2) || (c >= 0x410 && c <= 0x42F))
        return c + 0x20;
    if (c == 0x178) return 0xFF;
    if (c >= 0x400 && c <= 0x40F) return c + 0x50;
    if (((c >= 0x100 && c <= 0x137) || (c >= 0x14A && c <= 0x177)) && !(c & 1)) return c + 1;
    if (((c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17E)) && (c & 1)) return c + 1;
    return c;
}

static bool is_cased(uint32_t c) { return case_map(c, true) != c || case_map(c, false) != c; }

/* mode: 'u' upper, 'l' lower, 't' str.title (a letter after a cased one is
 * lowered, others raised), 'T' jinja2's title filter (raised after "-",
 * whitespace, "(", "{", "[", "<" or at the start, else lowered), 'c'
 * capitalize (the first raised, the rest lowered) */
static jv py_case(jr *R, jv s, char mode)
{
    char *o = jj_alloc(R, s.u.s.n + 1);
    size_t k = 0;
    bool prev_cased = false, word_start = true;
    for (size_t i = 0; i < s.u.s.n;) {
        size_t st = i;
        uint32_t cp = jj_utf8_next(s.u.s.p, s.u.s.n, &i);
        bool up = mode == 'u' || (mode == 't' && !prev_cased) || (mode == 'c' && st == 0) || (mode == 'T' && word_start);
        word_start = jj_py_isspace(cp) || (cp < 0x80 && strchr("-({[<", (int)cp) && cp);
        uint32_t m = case_map(cp, up);
        if (m == cp) {
            memcpy(o + k, s.u.s.p + st, i - st);
            k += i - st;
        } else { /* mapped pairs here keep their UTF-8 length */
            k += (size_t)eng__utf8_put(m, (uint8_t *)o + k);
        }
        prev_cased = is_cased(cp) || (cp >= 0x80 && eng__ucat(cp) == ENG_UCAT_LETTER);
    }
    o[k] = 0;
    return jv_strn(o, k);
}

jv jj_title_filter(jr *R, jv s) { return py_case(R, s, 'T'); }

/* Python's printf-style "%" formatting: %s %r %d %i %f %x %% with optional
 * flags, width and precision, over args in order. */
jv jj_percent_format(jr *R, jv fmt, const jv *args, size_t nargs)
{
    jbuf o = {0};
    size_t k = 0;
    const char *p = fmt.u.s.p, *e = p + fmt.u.s.n;
    while (p < e) {
        const char *q = memchr(p, '%', (size_t)(e - p));
        if (!q) q = e;
        jb_put(R, &o, p, (size_t)(q - p));
        if (q == e) break;
        const char *spec = q++;
        while (q < e && *q && strchr("-+ 0#", *q)) q++;
        long num = 0;
        while (q < e && ((*q >= '0' && *q <= '9') || *q == '.')) {
            num = *q == '.' ? 0 : num * 10 + (*q - '0');
            if (num > 4096) jj_fail(R, "ValueError: format width or precision too large");
            q++;
        }
        if (q >= e || (size_t)(q - spec) > 16) jj_fail(R, "ValueError: incomplete format");
        char conv = *q++;
        if (conv == '%') {
            jb_putc(R, &o, '%');
        } else {
            if (k >= nargs) jj_fail(R, "TypeError: not enough arguments for format string");
            jv a = args[k++];
            char cfmt[24];
            int fl = (int)(q - 1 - spec);
            if (conv == 's' || conv == 'r') {
                jbuf t = {0};
                if (conv == 's') jv_write_str(R, &t, a);
                else jv_write_repr(R, &t, a);
                if (fl == 1) {
                    jb_put(R, &o, t.p, t.n);
                } else { /* width / precision (bytes, not characters) */
                    snprintf(cfmt, sizeof cfmt, "%.*ss", fl, spec);
                    char *z = jj_alloc(R, t.n + 1);
                    memcpy(z, t.p ? t.p : "", t.n);
                    z[t.n] = 0;
                    jb_printf(R, &o, cfmt, z);
                }
            } else if (strchr("dixXf", conv) && (a.t == JV_INT || a.t == JV_BOOL || a.t == JV_FLOAT)) {
                double d = a.t == JV_FLOAT ? a.u.f : (double)(a.t == JV_INT ? a.u.i : a.u.b);
                if (conv == 'f') {
                    snprintf(cfmt, sizeof cfmt, "%.*sf", fl, spec);
                    jb_printf(R, &o, cfmt, d);
                } else {
                    snprintf(cfmt, sizeof cfmt, "%.*sll%c", fl, spec, conv == 'i' ? 'd' : conv);
                    jb_printf(R, &o, cfmt, a.t == JV_FLOAT ? (long long)d : (long long)(a.t == JV_INT ? a.u.i : a.u.b));
                }
            } else {
                jj_fail(R, "TypeError: %%%c format: a number is required, not %s", conv, jv_type_name(a));
            }
        }
        p = q;
    }
    if (k < nargs) jj_fail(R, "TypeError: not all arguments converted during string formatting");
    return jb_str(&o);
}

static bool affix(jr *R, jv s, jv fix, bool end)
{
    if (fix.t == JV_LIST && fix.tuple) {
        for (size_t i = 0; i < fix.u.l->n; i++)
            if (affix(R, s, fix.u.l->v[i], end)) return true;
        return false;
    }
    need_str(R, fix, end ? "endswith() argument" : "startswith() argument");
    if (fix.u.s.n > s.u.s.n) return false;
    const char *p = end ? s.u.s.p + s.u.s.n - fix.u.s.n : s.u.s.p;
    return memcmp(p, fix.u.s.p, fix.u.s.n) == 0;
}

static int64_t py_find(jv s, jv sub, bool last)
{
    if (sub.u.s.n > s.u.s.n) return -1;
    int64_t found = -1;
    for (size_t i = 0; i + sub.u.s.n <= s.u.s.n; i++) {
        if (memcmp(s.u.s.p + i, sub.u.s.p, sub.u.s.n) != 0) continue;
        found = (int64_t)jj_utf8_count(s.u.s.p, i);
        if (!last) break;
    }
    return found;
}

static int64_t py_count(jv s, jv sub)
{
    if (!sub.u.s.n) return (int64_t)jj_utf8_count(s.u.s.p, s.u.s.n) + 1;
    int64_t k = 0;
    for (size_t i = 0; i + sub.u.s.n <= s.u.s.n;) {
        if (memcmp(s.u.s.p + i, sub.u.s.p, sub.u.s.n) == 0) {
            k++;
            i += sub.u.s.n;
        } else {
            i++;
        }
    }
    return k;
}

static jv str_join(jr *R, jv sep, jv items)
{
    jv l = jj_iterate(R, items);
    jbuf b = {0};
    for (size_t i = 0; i < l.u.l->n; i++) {
        if (i) jb_put(R, &b, sep.u.s.p, sep.u.s.n);
        jv_write_str(R, &b, l.u.l->v[i]);
    }
    return jb_str(&b);
}

static bool str_all(jv s, int kind)
{
    if (!s.u.s.n) return false;
    bool cased = false;
    for (size_t i = 0; i < s.u.s.n; i++) {
        char c = s.u.s.p[i];
        bool digit = c >= '0' && c <= '9', alpha = is_lower_c(c) || is_upper_c(c) || (unsigned char)c >= 0x80;
        switch (kind) {
        case 'd': if (!digit) return false; break;
        case 'a': if (!alpha) return false; break;
        case 'n': if (!digit && !alpha) return false; break;
        case 's': if (!jj_py_isspace((unsigned char)c)) return false; break;
        case 'l': if (is_upper_c(c)) return false; cased |= is_lower_c(c); break;
        case 'u': if (is_lower_c(c)) return false; cased |= is_upper_c(c); break;
        }
    }
    return kind == 'l' || kind == 'u' ? cased : true;
}

static const char *const STR_METHODS[] = {
    "strip", "lstrip", "rstrip", "split", "startswith", "endswith", "replace", "upper", "lower", "title",
    "capitalize", "find", "rfind", "count", "join", "isdigit", "isalpha", "isalnum", "isspace", "islower",
    "isupper", "splitlines", "index", NULL};
static const char *const DICT_METHODS[] = {"get", "items", "keys", "values", NULL};
static const char *const LIST_METHODS[] = {"index", "count", NULL};

static bool in_names(const char *const *names, const char *name)
{
    for (; *names; names++)
        if (EQ(*names, name)) return true;
    return false;
}

bool jj_method_exists(jv self, const char *name)
{
    switch (self.t) {
    case JV_STR: return in_names(STR_METHODS, name);
    case JV_DICT: return in_names(DICT_METHODS, name);
    case JV_LIST: return in_names(LIST_METHODS, name);
    default: return false;
    }
}

static jv str_splitlines(jr *R, jv s)
{
    jlist *l = jl_new(R, 4);
    size_t a = 0, n = s.u.s.n;
    const char *p = s.u.s.p;
    for (size_t i = 0; i < n; i++) {
        if (p[i] != '\n' && p[i] != '\r') continue;
        jl_push(R, l, jv_strn(p + a, i - a));
        if (p[i] == '\r' && i + 1 < n && p[i + 1] == '\n') i++;
        a = i + 1;
    }
    if (a < n) jl_push(R, l, jv_strn(p + a, n - a));
    return jv_list(l);
}

static jv str_method(jr *R, jv s, const char *m, jargs *a)
{
    jv none = jv_none();
    if (EQ(m, "strip") || EQ(m, "lstrip") || EQ(m, "rstrip"))
        return py_strip(R, s, arg(a, 0, "chars", none), m[0] != 'r', m[0] != 'l');
    if (EQ(m, "split"))
        return py_split(R, s, arg(a, 0, "sep", none), has_arg(a, 1, "maxsplit") ? need_int(R, arg(a, 1, "maxsplit", none), "maxsplit") : -1);
    if (EQ(m, "startswith") || EQ(m, "endswith")) return jv_bool(affix(R, s, arg(a, 0, "prefix", none), m[0] == 'e'));
    if (EQ(m, "replace"))
        return py_replace(R, s, arg(a, 0, "old", none), arg(a, 1, "new", none),
                          has_arg(a, 2, "count") ? need_int(R, arg(a, 2, "count", none), "count") : -1);
    if (EQ(m, "upper") || EQ(m, "lower") || EQ(m, "title") || EQ(m, "capitalize"))
        return py_case(R, s, m[0] == 'u' ? 'u' : m[0] == 'l' ? 'l' : m[0] == 't' ? 't' : 'c');
    if (EQ(m, "find") || EQ(m, "rfind") || EQ(m, "index")) {
        int64_t k = py_find(s, need_str(R, arg(a, 0, "sub", none), "find() argument"), m[0] == 'r');
        if (k < 0 && m[0] == 'i') jj_fail(R, "ValueError: substring not found");
        return jv_int(k);
    }
    if (EQ(m, "count")) return jv_int(py_count(s, need_str(R, arg(a, 0, "sub", none), "count() argument")));
    if (EQ(m, "join")) return str_join(R, s, arg(a, 0, "iterable", none));
    if (EQ(m, "splitlines")) return str_splitlines(R, s);
    static const char *const is[] = {"isdigit", "isalpha", "isalnum", "isspace", "islower", "isupper"};
    static const char kinds[] = "dansl u";
    for (int i = 0; i < 6; i++)
        if (EQ(m, is[i])) return jv_bool(str_all(s, i == 5 ? 'u' : kinds[i]));
    jj_fail(R, "AttributeError: str has no method '%s'", m);
}

static jv dict_method(jr *R, jv d, const char *m, jargs *a)
{
    if (EQ(m, "get")) {
        jv v;
        if (jd_get(d.u.d, arg(a, 0, "key", jv_none()), &v)) return v;
        return arg(a, 1, "default", jv_none());
    }
    jlist *l = jl_new(R, d.u.d->n);
    for (size_t i = 0; i < d.u.d->n; i++) {
        if (EQ(m, "items")) jl_push(R, l, tuple2(R, d.u.d->k[i], d.u.d->v[i]));
        else jl_push(R, l, EQ(m, "keys") ? d.u.d->k[i] : d.u.d->v[i]);
    }
    return jv_list(l);
}

static jv list_method(jr *R, jv l, const char *m, jargs *a)
{
    jv x = arg(a, 0, "value", jv_none());
    int64_t k = 0;
    for (size_t i = 0; i < l.u.l->n; i++) {
        if (!jv_eq(R, l.u.l->v[i], x)) continue;
        if (EQ(m, "index")) return jv_int((int64_t)i);
        k++;
    }
    if (EQ(m, "index")) jj_fail(R, "ValueError: value is not in list");
    return jv_int(k);
}

jv jj_call_method(jr *R, jmethod *mt, jargs *a)
{
    jv s = mt->self;
    switch (s.t) {
    case JV_STR: return str_method(R, s, mt->name, a);
    case JV_DICT: return dict_method(R, s, mt->name, a);
    case JV_LIST: return list_method(R, s, mt->name, a);
    case JV_LOOP: /* loop.cycle(a, b, ...) */
        if (!a->npos) jj_fail(R, "TypeError: no items for cycling given");
        return a->pos[s.u.loop->i % a->npos];
    default: jj_fail(R, "TypeError: not callable");
    }
}

/* ---- globals ------------------------------------------------------------------------- */

jv jj_global(const char *name, size_t n, bool *found)
{
    static const struct { const char *name; int fn; } g[] = {
        {"raise_exception", JF_RAISE}, {"strftime_now", JF_STRFTIME}, {"namespace", JF_NAMESPACE},
        {"range", JF_RANGE}, {"dict", JF_DICT}};
    for (size_t i = 0; i < sizeof g / sizeof *g; i++) {
        if (strlen(g[i].name) != n || memcmp(g[i].name, name, n) != 0) continue;
        jv v = {0};
        v.t = JV_FUNC;
        v.u.i = g[i].fn;
        *found = true;
        return v;
    }
    *found = false;
    return jv_undef();
}

static jv strftime_now(jr *R, jargs *a)
{
    jv fmt = need_str(R, arg(a, 0, "format", jv_none()), "strftime_now() format");
    if (fmt.u.s.n > 256) jj_fail(R, "strftime_now: format too long");
    char f[260], out[4096];
    memcpy(f, fmt.u.s.p, fmt.u.s.n);
    f[fmt.u.s.n] = 0;
    struct tm tm;
    if (R->have_now) {
        tm = R->now;
    } else {
        time_t t = time(NULL);
        localtime_r(&t, &tm);
    }
    size_t n = strftime(out, sizeof out, f, &tm);
    if (!n && fmt.u.s.n) jj_fail(R, "strftime_now: result too long");
    return jv_str_copy(R, out, n);
}

static jv make_range(jr *R, jargs *a)
{
    int64_t start = 0, stop, step = 1;
    if (a->npos == 1) {
        stop = need_int(R, a->pos[0], "range() argument");
    } else if (a->npos == 2 || a->npos == 3) {
        start = need_int(R, a->pos[0], "range() argument");
        stop = need_int(R, a->pos[1], "range() argument");
        if (a->npos == 3) step = need_int(R, a->pos[2], "range() argument");
    } else {
        jj_fail(R, "TypeError: range expected 1 to 3 arguments");
    }
    if (step == 0) jj_fail(R, "ValueError: range() arg 3 must not be zero");
    jlist *l = jl_new(R, 0);
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
        if (l->n >= 100000) jj_fail(R, "range too large (more than 100000 items)");
        jl_push(R, l, jv_int(i));
        if ((step > 0 && i > INT64_MAX - step) || (step < 0 && i < INT64_MIN - step)) break;
    }
    return jv_list(l);
}

jv jj_call_func(jr *R, int fn, jargs *a)
{
    switch (fn) {
    case JF_RAISE: {
        jv msg = jv_to_str(R, arg(a, 0, "message", jv_strn("", 0)));
        jj_raise(R, msg.u.s.p, msg.u.s.n);
    }
    case JF_STRFTIME: return strftime_now(R, a);
    case JF_RANGE: return make_range(R, a);
    case JF_NAMESPACE: case JF_DICT: {
        jdict *d = jd_new(R);
        for (size_t i = 0; i < a->npos; i++) {
            if (a->pos[i].t != JV_DICT) jj_fail(R, "TypeError: %s() takes a mapping", fn == JF_DICT ? "dict" : "namespace");
            for (size_t k = 0; k < a->pos[i].u.d->n; k++) jd_set(R, d, a->pos[i].u.d->k[k], a->pos[i].u.d->v[k]);
        }
        for (size_t i = 0; i < a->nkw; i++) jd_set(R, d, jv_strn(a->kname[i], strlen(a->kname[i])), a->kval[i]);
        jv v = mk_dict(d);
        if (fn == JF_NAMESPACE) v.t = JV_NS;
        return v;
    }
    default: jj_fail(R, "internal error: unknown function");
    }
}

/* ---- tests ------------------------------------------------------------------------------- */

static const char *const TESTS[] = {
    "defined", "undefined", "none", "string", "number", "integer", "float", "boolean", "true", "false",
    "mapping", "iterable", "sequence", "callable", "equalto", "eq", "==", "ne", "!=", "lt", "<", "le",
    "<=", "gt", ">", "ge", ">=", "greaterthan", "lessthan", "in", "sameas", "odd", "even", "divisibleby",
    "lower", "upper", "escaped", "filter", "test", NULL};

bool jj_has_test(const char *name) { return in_names(TESTS, name); }

static bool test_cmp(jr *R, const char *n, jv x, jv y)
{
    if (EQ(n, "equalto") || EQ(n, "eq") || EQ(n, "==")) return jv_eq(R, x, y);
    if (EQ(n, "ne") || EQ(n, "!=")) return !jv_eq(R, x, y);
    int c = jv_cmp(R, x, y);
    if (EQ(n, "lt") || EQ(n, "<") || EQ(n, "lessthan")) return c < 0;
    if (EQ(n, "le") || EQ(n, "<=")) return c <= 0;
    if (EQ(n, "gt") || EQ(n, ">") || EQ(n, "greaterthan")) return c > 0;
    return c >= 0;
}

static bool same_as(jv x, jv y)
{
    if (x.t != y.t) return false;
    switch (x.t) {
    case JV_NONE: case JV_UNDEF: return x.t == JV_NONE;
    case JV_BOOL: return x.u.b == y.u.b;
    case JV_INT: return x.u.i == y.u.i && x.u.i >= -5 && x.u.i <= 256; /* CPython's small ints */
    case JV_STR: return x.u.s.p == y.u.s.p && x.u.s.n == y.u.s.n;
    case JV_LIST: return x.u.l == y.u.l;
    case JV_DICT: case JV_NS: return x.u.d == y.u.d;
    default: return false;
    }
}

bool jj_test(jr *R, const char *n, jv x, jargs *a)
{
    jv y = a->npos ? a->pos[0] : jv_none();
    if (EQ(n, "defined")) return x.t != JV_UNDEF;
    if (EQ(n, "undefined")) return x.t == JV_UNDEF;
    if (EQ(n, "none")) return x.t == JV_NONE;
    if (EQ(n, "string")) return x.t == JV_STR;
    if (EQ(n, "number")) return x.t == JV_INT || x.t == JV_FLOAT || x.t == JV_BOOL;
    if (EQ(n, "integer")) return x.t == JV_INT;
    if (EQ(n, "float")) return x.t == JV_FLOAT;
    if (EQ(n, "boolean")) return x.t == JV_BOOL;
    if (EQ(n, "true")) return x.t == JV_BOOL && x.u.b;
    if (EQ(n, "false")) return x.t == JV_BOOL && !x.u.b;
    if (EQ(n, "mapping")) return x.t == JV_DICT;
    if (EQ(n, "iterable")) return x.t == JV_STR || x.t == JV_LIST || x.t == JV_DICT || x.t == JV_UNDEF;
    if (EQ(n, "sequence")) return x.t == JV_STR || x.t == JV_LIST || x.t == JV_DICT || x.t == JV_UNDEF;
    if (EQ(n, "callable")) return x.t == JV_MACRO || x.t == JV_FUNC || x.t == JV_METHOD;
    if (EQ(n, "in")) {
        if (y.t == JV_STR) return x.t == JV_STR && memmem(y.u.s.p, y.u.s.n, x.u.s.p, x.u.s.n) != NULL;
        jv it = jj_iterate(R, y);
        for (size_t i = 0; i < it.u.l->n; i++)
            if (jv_eq(R, it.u.l->v[i], x)) return true;
        return false;
    }
    if (EQ(n, "sameas")) return same_as(x, y);
    if (EQ(n, "odd") || EQ(n, "even")) {
        int64_t v = need_int(R, x, "odd/even operand");
        return ((v % 2) != 0) == EQ(n, "odd");
    }
    if (EQ(n, "divisibleby")) {
        int64_t d = need_int(R, y, "divisibleby argument");
        if (!d) jj_fail(R, "ZeroDivisionError: integer modulo by zero");
        return need_int(R, x, "divisibleby operand") % d == 0;
    }
    if (EQ(n, "lower") || EQ(n, "upper")) return str_all(jv_to_str(R, x), n[0] == 'l' ? 'l' : 'u');
    if (EQ(n, "escaped")) return false;
    if (EQ(n, "filter") || EQ(n, "test")) {
        jv s = need_str(R, x, "name");
        char tmp[32];
        if (s.u.s.n >= sizeof tmp) return false;
        memcpy(tmp, s.u.s.p, s.u.s.n);
        tmp[s.u.s.n] = 0;
        return EQ(n, "test") ? jj_has_test(tmp) : jj_has_filter(tmp);
    }
    if (EQ(n, "eq") || EQ(n, "equalto") || EQ(n, "==") || EQ(n, "ne") || EQ(n, "!=") || EQ(n, "lt") ||
        EQ(n, "<") || EQ(n, "le") || EQ(n, "<=") || EQ(n, "gt") || EQ(n, ">") || EQ(n, "ge") || EQ(n, ">=") ||
        EQ(n, "greaterthan") || EQ(n, "lessthan"))
        return test_cmp(R, n, x, y);
    jj_fail(R, "TemplateRuntimeError: no test named '%s'", n);
}
