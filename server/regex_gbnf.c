/*
 * regex_gbnf.c - JSON Schema "pattern" to GBNF (regex_gbnf.h says which
 * subset): a recursive-descent parser that writes the GBNF as it goes.
 * Every character becomes a class of code points, written so that the
 * JSON-escaped text of each one is what the grammar matches.
 */
#include "regex_gbnf.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_RANGES 256
#define MAX_GROUP_DEPTH 64

typedef struct {
    unsigned lo[MAX_RANGES], hi[MAX_RANGES];
    size_t n;
} cpset;

typedef struct {
    const char *p, *end;
    sbuf *out;
    char *msg;
    size_t msglen;
    bool failed;
    int depth;
} rx;

static void rfail(rx *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void rfail(rx *r, const char *fmt, ...)
{
    if (r->failed) return;
    r->failed = true;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->msg, r->msglen, fmt, ap);
    va_end(ap);
}

static void emit(rx *r, const char *s)
{
    if (!sbuf_add(r->out, s, strlen(s))) rfail(r, "out of memory");
}

/* ------------------------------------------------------------------------ */
/* Code-point sets                                                          */
/* ------------------------------------------------------------------------ */

static bool set_add(cpset *s, unsigned lo, unsigned hi)
{
    if (s->n >= MAX_RANGES) return false;
    s->lo[s->n] = lo;
    s->hi[s->n] = hi;
    s->n++;
    return true;
}

static void set_norm(cpset *s)
{
    for (size_t i = 1; i < s->n; i++) {
        unsigned a = s->lo[i], b = s->hi[i];
        size_t j = i;
        while (j > 0 && s->lo[j - 1] > a) {
            s->lo[j] = s->lo[j - 1];
            s->hi[j] = s->hi[j - 1];
            j--;
        }
        s->lo[j] = a;
        s->hi[j] = b;
    }
    size_t m = 0;
    for (size_t i = 0; i < s->n; i++) {
        if (m && s->lo[i] <= s->hi[m - 1] + 1) {
            if (s->hi[i] > s->hi[m - 1]) s->hi[m - 1] = s->hi[i];
        } else {
            s->lo[m] = s->lo[i];
            s->hi[m] = s->hi[i];
            m++;
        }
    }
    s->n = m;
}

static void set_negate(cpset *s)
{
    set_norm(s);
    cpset t = {.n = 0};
    unsigned next = 0;
    for (size_t i = 0; i < s->n; i++) {
        if (s->lo[i] > next) set_add(&t, next, s->lo[i] - 1);
        next = s->hi[i] + 1;
    }
    if (next <= 0x10FFFF) set_add(&t, next, 0x10FFFF);
    *s = t;
}

/* One code point inside a GBNF class. */
static void class_cp(sbuf *o, unsigned c)
{
    char b[16];
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) snprintf(b, sizeof b, "%c", c);
    else if (c < 0x80) snprintf(b, sizeof b, "\\x%02X", c);
    else if (c < 0x10000) snprintf(b, sizeof b, "\\u%04X", c);
    else snprintf(b, sizeof b, "\\U%08X", c);
    sbuf_add(o, b, strlen(b));
}

static bool set_has(const unsigned *lo, const unsigned *hi, size_t n, unsigned c)
{
    for (size_t i = 0; i < n; i++)
        if (c >= lo[i] && c <= hi[i]) return true;
    return false;
}

int regex_class_gbnf(const unsigned *lo, const unsigned *hi, size_t n, sbuf *out)
{
    sbuf cls = {0};
    bool any = false;
    for (size_t i = 0; i < n; i++) {
        unsigned a = lo[i] < 0x20 ? 0x20 : lo[i], b = hi[i] > 0x10FFFF ? 0x10FFFF : hi[i];
        /* cut out '"' (0x22), '\\' (0x5C) and the surrogates */
        unsigned cuts[3][2] = {{0x22, 0x22}, {0x5C, 0x5C}, {0xD800, 0xDFFF}};
        unsigned x = a;
        for (int k = 0; k <= 3 && x <= b; k++) {
            unsigned stop = k < 3 ? cuts[k][0] : 0x110000;
            if (stop > x) {
                unsigned e = (stop - 1 < b) ? stop - 1 : b;
                class_cp(&cls, x);
                if (e > x) {
                    sbuf_add(&cls, "-", 1);
                    class_cp(&cls, e);
                }
                any = true;
            }
            if (k < 3 && cuts[k][1] + 1 > x) x = cuts[k][1] + 1;
        }
    }
    static const struct {
        unsigned c;
        const char *lit;
    } esc[] = {{'"', "\"\\\\\\\"\""}, {'\\', "\"\\\\\\\\\""}, {'\n', "\"\\\\n\""}, {'\r', "\"\\\\r\""},
               {'\t', "\"\\\\t\""}};
    bool first = true, ok = true;
    ok &= sbuf_add(out, "(", 1);
    if (any) {
        ok &= sbuf_add(out, "[", 1) && sbuf_add(out, cls.p, cls.n) && sbuf_add(out, "]", 1);
        first = false;
    }
    for (size_t k = 0; k < sizeof esc / sizeof esc[0]; k++) {
        if (!set_has(lo, hi, n, esc[k].c)) continue;
        if (!first) ok &= sbuf_add(out, " | ", 3);
        ok &= sbuf_add(out, esc[k].lit, strlen(esc[k].lit));
        first = false;
    }
    ok &= sbuf_add(out, ")", 1);
    free(cls.p);
    return first || !ok ? -1 : 0;
}

static void emit_set(rx *r, cpset *s)
{
    set_norm(s);
    if (regex_class_gbnf(s->lo, s->hi, s->n, r->out)) rfail(r, "a character class of 'pattern' matches no character a JSON string can hold");
}

/* ------------------------------------------------------------------------ */
/* Characters and escapes                                                   */
/* ------------------------------------------------------------------------ */

static int hexv(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static long utf8_next(rx *r)
{
    const unsigned char *q = (const unsigned char *)r->p;
    unsigned c = q[0];
    int n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (!n || r->p + n > r->end) {
        rfail(r, "'pattern' is not valid UTF-8");
        return -1;
    }
    unsigned v = n == 1 ? c : n == 2 ? (c & 0x1F) : n == 3 ? (c & 0x0F) : (c & 0x07);
    for (int i = 1; i < n; i++) v = (v << 6) | (q[i] & 0x3F);
    r->p += n;
    return (long)v;
}

/* Add the class escape \d \w \s (upper case: negated) to s; false if e is none. */
static bool class_escape(char e, cpset *s)
{
    cpset t = {.n = 0};
    switch (e | 0x20) {
    case 'd': set_add(&t, '0', '9'); break;
    case 'w':
        set_add(&t, '0', '9');
        set_add(&t, 'A', 'Z');
        set_add(&t, '_', '_');
        set_add(&t, 'a', 'z');
        break;
    case 's':
        set_add(&t, '\t', '\r');
        set_add(&t, ' ', ' ');
        set_add(&t, 0xA0, 0xA0);
        set_add(&t, 0x2028, 0x2029);
        set_add(&t, 0xFEFF, 0xFEFF);
        break;
    default: return false;
    }
    if (e >= 'A' && e <= 'Z') set_negate(&t);
    for (size_t i = 0; i < t.n; i++) set_add(s, t.lo[i], t.hi[i]);
    return true;
}

/* One escaped character after '\' (the class escapes handled by the caller). */
static long escape_char(rx *r)
{
    if (r->p >= r->end) {
        rfail(r, "'pattern' ends with '\\'");
        return -1;
    }
    char e = *r->p++;
    switch (e) {
    case 't': return '\t';
    case 'n': return '\n';
    case 'r': return '\r';
    case 'f': return '\f';
    case 'v': return '\v';
    case '0': return 0;
    case 'x':
    case 'u': {
        int nd = e == 'x' ? 2 : 4;
        long v = 0;
        for (int i = 0; i < nd; i++) {
            int h = r->p < r->end ? hexv(*r->p) : -1;
            if (h < 0) {
                rfail(r, "'pattern': expected %d hex digits after '\\%c'", nd, e);
                return -1;
            }
            v = v * 16 + h;
            r->p++;
        }
        return v;
    }
    case 'b': case 'B': rfail(r, "'pattern': word boundaries (\\b, \\B) are not supported"); return -1;
    default:
        if ((e >= '1' && e <= '9') || e == 'k') {
            rfail(r, "'pattern': back-references are not supported");
            return -1;
        }
        if ((e >= 'a' && e <= 'z') || (e >= 'A' && e <= 'Z')) {
            rfail(r, "'pattern': the escape '\\%c' is not supported", e);
            return -1;
        }
        r->p--;
        return utf8_next(r);
    }
}

static void parse_class(rx *r)
{
    r->p++; /* '[' */
    bool neg = r->p < r->end && *r->p == '^';
    if (neg) r->p++;
    cpset s = {.n = 0};
    while (!r->failed && r->p < r->end && *r->p != ']') {
        long a;
        if (*r->p == '\\' && r->p + 1 < r->end && class_escape(r->p[1], &s)) {
            r->p += 2;
            continue;
        }
        if (*r->p == '\\') {
            r->p++;
            a = escape_char(r);
        } else {
            a = utf8_next(r);
        }
        if (a < 0) return;
        long b = a;
        if (r->p + 1 < r->end && *r->p == '-' && r->p[1] != ']') {
            r->p++;
            if (*r->p == '\\') {
                r->p++;
                b = escape_char(r);
            } else {
                b = utf8_next(r);
            }
            if (b < 0) return;
            if (b < a) {
                rfail(r, "'pattern': a class range is reversed");
                return;
            }
        }
        if (!set_add(&s, (unsigned)a, (unsigned)b)) {
            rfail(r, "'pattern': a class has more than %d ranges", MAX_RANGES);
            return;
        }
    }
    if (r->p >= r->end) {
        rfail(r, "'pattern': unterminated character class");
        return;
    }
    r->p++;
    if (neg) set_negate(&s);
    emit_set(r, &s);
}

/* ------------------------------------------------------------------------ */
/* Atoms, sequences, alternatives                                           */
/* ------------------------------------------------------------------------ */

static void parse_alt(rx *r, bool top);

static void parse_group(rx *r)
{
    r->p++; /* '(' */
    if (r->p < r->end && *r->p == '?') {
        if (r->end - r->p >= 2 && r->p[1] == ':') {
            r->p += 2;
        } else if (r->end - r->p >= 3 && r->p[1] == '<' && r->p[2] != '=' && r->p[2] != '!') {
            while (r->p < r->end && *r->p != '>') r->p++;
            if (r->p < r->end) r->p++;
        } else {
            rfail(r, "'pattern': lookaround assertions are not supported");
            return;
        }
    }
    if (++r->depth > MAX_GROUP_DEPTH) {
        rfail(r, "'pattern': groups nested deeper than %d", MAX_GROUP_DEPTH);
        return;
    }
    emit(r, "(");
    parse_alt(r, false);
    r->depth--;
    if (r->failed) return;
    if (r->p >= r->end || *r->p != ')') {
        rfail(r, "'pattern': unbalanced parenthesis");
        return;
    }
    r->p++;
    emit(r, ")");
}

static void parse_atom(rx *r)
{
    char c = *r->p;
    cpset s = {.n = 0};
    if (c == '(') {
        parse_group(r);
    } else if (c == '[') {
        parse_class(r);
    } else if (c == '.') {
        r->p++;
        set_add(&s, '\n', '\n');
        set_add(&s, '\r', '\r');
        set_add(&s, 0x2028, 0x2029);
        set_negate(&s);
        emit_set(r, &s);
    } else if (c == '*' || c == '+' || c == '?' || c == '{') {
        rfail(r, "'pattern': nothing to repeat before '%c'", c);
    } else if (c == '^' || c == '$') {
        rfail(r, "'pattern': the anchor '%c' is supported only at the start / end of the pattern or of a "
                 "top-level alternative", c);
    } else if (c == '\\') {
        if (r->p + 1 < r->end && class_escape(r->p[1], &s)) {
            r->p += 2;
            emit_set(r, &s);
            return;
        }
        r->p++;
        long v = escape_char(r);
        if (v >= 0 && set_add(&s, (unsigned)v, (unsigned)v)) emit_set(r, &s);
    } else {
        long v = utf8_next(r);
        if (v >= 0 && set_add(&s, (unsigned)v, (unsigned)v)) emit_set(r, &s);
    }
}

static long parse_num(rx *r)
{
    long v = 0;
    bool any = false;
    while (r->p < r->end && *r->p >= '0' && *r->p <= '9') {
        v = v * 10 + (*r->p++ - '0');
        any = true;
        if (v > REGEX_MAX_COUNT) {
            rfail(r, "'pattern': a repetition count exceeds %d", REGEX_MAX_COUNT);
            return -1;
        }
    }
    if (!any) rfail(r, "'pattern': expected a number in {}");
    return any ? v : -1;
}

static void parse_quant(rx *r)
{
    char c = *r->p;
    char buf[48];
    if (c == '*' || c == '+' || c == '?') {
        r->p++;
        snprintf(buf, sizeof buf, "%c", c);
    } else {
        r->p++;
        long lo = parse_num(r), hi = lo;
        if (r->failed) return;
        if (r->p < r->end && *r->p == ',') {
            r->p++;
            hi = (r->p < r->end && *r->p == '}') ? -1 : parse_num(r);
            if (r->failed) return;
        }
        if (r->p >= r->end || *r->p != '}') {
            rfail(r, "'pattern': expected '}'");
            return;
        }
        r->p++;
        if (hi >= 0 && hi < lo) {
            rfail(r, "'pattern': {%ld,%ld} has its maximum below its minimum", lo, hi);
            return;
        }
        if (hi < 0) snprintf(buf, sizeof buf, "{%ld,}", lo);
        else snprintf(buf, sizeof buf, "{%ld,%ld}", lo, hi);
    }
    if (r->p < r->end && *r->p == '?') r->p++; /* lazy: the same language */
    emit(r, buf);
    if (r->p < r->end && (*r->p == '*' || *r->p == '+' || *r->p == '?' || *r->p == '{'))
        rfail(r, "'pattern': a quantifier follows a quantifier");
}

/* Any JSON string character, for the unanchored ends of a pattern. */
#define ANY_CHAR "([^\"\\\\\\x00-\\x1F] | \"\\\\\" [\"\\\\/bfnrt])"

static void parse_seq(rx *r, bool top)
{
    bool start = top && r->p < r->end && *r->p == '^';
    if (start) r->p++;
    emit(r, "(");
    if (top && !start) emit(r, ANY_CHAR "* ");
    bool end_anchor = false;
    while (!r->failed && r->p < r->end && *r->p != '|' && *r->p != ')') {
        if (top && *r->p == '$' && (r->p + 1 == r->end || r->p[1] == '|')) {
            r->p++;
            end_anchor = true;
            break;
        }
        parse_atom(r);
        if (!r->failed && r->p < r->end && (*r->p == '*' || *r->p == '+' || *r->p == '?' || *r->p == '{'))
            parse_quant(r);
        emit(r, " ");
    }
    if (top && !end_anchor) emit(r, ANY_CHAR "*");
    emit(r, ")");
}

static void parse_alt(rx *r, bool top)
{
    for (;;) {
        parse_seq(r, top);
        if (r->failed || r->p >= r->end || *r->p != '|') return;
        r->p++;
        emit(r, " | ");
    }
}

int regex_to_gbnf(const char *re, size_t len, sbuf *out, char *msg, size_t msglen)
{
    rx r = {.p = re, .end = re + len, .out = out, .msg = msg, .msglen = msglen};
    emit(&r, "(");
    parse_alt(&r, true);
    if (!r.failed && r.p < r.end) rfail(&r, "'pattern': unbalanced parenthesis");
    emit(&r, ")");
    return r.failed ? -1 : 0;
}
