/*
 * grammar.c - GBNF text to the byte-level grammar IR (grammar.h).
 *
 * The syntax is llama.cpp's documented GBNF: `name ::= alternatives`, one
 * rule per line (a rule continues across newlines inside parentheses, after
 * `::=` or `|`, and on a following line that starts with `|`); "literals"
 * and [classes] with the escapes \n \r \t \\ \" \[ \] \- \xHH \uHHHH
 * \UHHHHHHHH; `^` negates a class; `.` is any character; `*` `+` `?`
 * `{m}` `{m,}` `{m,n}` repeat the item before them; `#` starts a comment.
 * Groups and repetitions become rules of their own (named "rule-N" in
 * messages); repetition is right-recursive in tail position, which the
 * matcher runs without growing its stacks. Characters are code points:
 * classes become rules over UTF-8 byte sequences (surrogates excluded).
 * Every limit of eng_grammar_limits is checked as the IR grows, and
 * left recursion (which no top-down matcher can run) is refused.
 */
#include "grammar.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    gelem *e;
    int32_t n, cap;
} elist;

typedef struct {
    char *name;
    int32_t name_len;
    bool defined;
    int32_t line;       /* first reference or definition, for messages */
    elist body;         /* alternatives, each ended by GE_END */
} brule;

typedef struct {
    const char *s, *end, *p;
    const eng_grammar_limits *lim;
    brule *rules;
    int32_t n_rule, cap_rule;
    gbyteset *sets;
    int32_t n_set, cap_set;
    int32_t single[256]; /* set index of each one-byte set, -1: none yet */
    int64_t n_el;
    int32_t depth;       /* group nesting */
    double t0;
    char *err;
    size_t errlen;
    bool failed;
    bool oom;
} gparser;

#define MAX_NESTING 256 /* group nesting: the parser recurses per group */

/* ------------------------------------------------------------------------ */
/* Errors and growth                                                        */
/* ------------------------------------------------------------------------ */

static void perr(gparser *P, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void perr(gparser *P, const char *fmt, ...)
{
    if (P->failed) return;
    P->failed = true;
    int line = 1, col = 1;
    for (const char *q = P->s; q < P->p && q < P->end; q++) {
        if (*q == '\n') {
            line++;
            col = 1;
        } else {
            col++;
        }
    }
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    eng__errf(P->err, P->errlen, "grammar line %d column %d: %s", line, col, msg);
}

/* Like perr but about the whole grammar (no position). */
static void gerr(gparser *P, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void gerr(gparser *P, const char *fmt, ...)
{
    if (P->failed) return;
    P->failed = true;
    P->oom = !strcmp(fmt, "out of memory");
    va_list ap;
    va_start(ap, fmt);
    char msg[300];
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    eng__errf(P->err, P->errlen, "%s", msg);
}

static bool grow(void **p, int32_t *cap, int32_t need, size_t sz)
{
    if (need <= *cap) return true;
    int32_t nc = *cap ? *cap : 8;
    while (nc < need) nc *= 2;
    void *q = eng__realloc(*p, (size_t)nc * sz);
    if (!q) return false;
    *p = q;
    *cap = nc;
    return true;
}

static bool check_time(gparser *P)
{
    if (P->failed) return false;
    if ((eng__now() - P->t0) * 1000.0 > P->lim->max_compile_ms) {
        gerr(P, "grammar too complex: compiling it took longer than max_compile_ms (%.0f ms)",
             P->lim->max_compile_ms);
        return false;
    }
    return true;
}

static void push(gparser *P, elist *l, uint8_t kind, int32_t arg)
{
    if (P->failed) return;
    if (++P->n_el > P->lim->max_elements) {
        gerr(P, "grammar too large: more than max_elements (%d) elements after expanding repetitions",
             P->lim->max_elements);
        return;
    }
    if (!grow((void **)&l->e, &l->cap, l->n + 1, sizeof *l->e)) {
        gerr(P, "out of memory");
        return;
    }
    l->e[l->n++] = (gelem){kind, arg};
}

static int32_t new_rule(gparser *P, const char *name, int32_t len)
{
    if (P->failed) return -1;
    if (P->n_rule >= P->lim->max_rules) {
        gerr(P, "grammar too large: more than max_rules (%d) rules (groups, repetitions and classes count)",
             P->lim->max_rules);
        return -1;
    }
    if (!grow((void **)&P->rules, &P->cap_rule, P->n_rule + 1, sizeof *P->rules)) {
        gerr(P, "out of memory");
        return -1;
    }
    brule *r = &P->rules[P->n_rule];
    memset(r, 0, sizeof *r);
    r->name = eng__strndup(name, (size_t)len);
    r->name_len = len;
    if (!r->name) {
        gerr(P, "out of memory");
        return -1;
    }
    return P->n_rule++;
}

/* A rule made by the parser for a group, repetition or class. */
static int32_t synth_rule(gparser *P)
{
    char nm[32];
    int n = snprintf(nm, sizeof nm, "rule-%d", P->n_rule);
    int32_t id = new_rule(P, nm, n);
    if (id >= 0) P->rules[id].defined = true;
    return id;
}

static int32_t find_rule(gparser *P, const char *name, int32_t len)
{
    for (int32_t i = 0; i < P->n_rule; i++)
        if (P->rules[i].name_len == len && !memcmp(P->rules[i].name, name, (size_t)len)) return i;
    int32_t id = new_rule(P, name, len);
    if (id >= 0) {
        int line = 1;
        for (const char *q = P->s; q < P->p; q++) line += *q == '\n';
        P->rules[id].line = line;
    }
    return id;
}

static int32_t add_set(gparser *P, const gbyteset *s)
{
    if (P->failed) return -1;
    int bits = 0, last = 0;
    for (int b = 0; b < 256; b++)
        if (gbs_has(s, (unsigned)b)) {
            bits++;
            last = b;
        }
    if (bits == 1 && P->single[last] >= 0) return P->single[last];
    if (!grow((void **)&P->sets, &P->cap_set, P->n_set + 1, sizeof *P->sets)) {
        gerr(P, "out of memory");
        return -1;
    }
    P->sets[P->n_set] = *s;
    if (bits == 1) P->single[last] = P->n_set;
    return P->n_set++;
}

static void push_byte_range(gparser *P, elist *l, unsigned lo, unsigned hi)
{
    gbyteset s;
    memset(&s, 0, sizeof s);
    for (unsigned b = lo; b <= hi; b++) s.w[b >> 5] |= 1u << (b & 31);
    int32_t id = add_set(P, &s);
    if (id >= 0) push(P, l, GE_BYTES, id);
}

/* ------------------------------------------------------------------------ */
/* Code points to UTF-8 byte sequences                                      */
/* ------------------------------------------------------------------------ */

typedef struct {
    uint32_t lo, hi;
} cprange;

static int utf8_encode(uint32_t c, uint8_t *o)
{
    if (c < 0x80) {
        o[0] = (uint8_t)c;
        return 1;
    }
    if (c < 0x800) {
        o[0] = (uint8_t)(0xC0 | (c >> 6));
        o[1] = (uint8_t)(0x80 | (c & 0x3F));
        return 2;
    }
    if (c < 0x10000) {
        o[0] = (uint8_t)(0xE0 | (c >> 12));
        o[1] = (uint8_t)(0x80 | ((c >> 6) & 0x3F));
        o[2] = (uint8_t)(0x80 | (c & 0x3F));
        return 3;
    }
    o[0] = (uint8_t)(0xF0 | (c >> 18));
    o[1] = (uint8_t)(0x80 | ((c >> 12) & 0x3F));
    o[2] = (uint8_t)(0x80 | ((c >> 6) & 0x3F));
    o[3] = (uint8_t)(0x80 | (c & 0x3F));
    return 4;
}

/* Alternatives (into rule body l) matching the code points [lo, hi], all of
 * one encoded length: split until every byte position is a plain range. */
static void utf8_split(gparser *P, elist *l, uint32_t lo, uint32_t hi)
{
    static const uint32_t lens[4][2] = {{0, 0x7F}, {0x80, 0x7FF}, {0x800, 0xFFFF}, {0x10000, 0x10FFFF}};
    for (int k = 0; k < 4; k++) {
        uint32_t a = lo > lens[k][0] ? lo : lens[k][0], b = hi < lens[k][1] ? hi : lens[k][1];
        if (a > b) continue;
        if (a != lo || b != hi) {
            utf8_split(P, l, a, b);
            continue;
        }
        int n = k + 1;
        for (int i = 1; i < n; i++) {
            uint32_t m = (1u << (6 * i)) - 1;
            if ((lo & ~m) != (hi & ~m)) {
                if ((lo & m) != 0) {
                    utf8_split(P, l, lo, lo | m);
                    utf8_split(P, l, (lo | m) + 1, hi);
                    return;
                }
                if ((hi & m) != m) {
                    utf8_split(P, l, lo, (hi & ~m) - 1);
                    utf8_split(P, l, hi & ~m, hi);
                    return;
                }
            }
        }
        uint8_t x[4], y[4];
        utf8_encode(lo, x);
        utf8_encode(hi, y);
        for (int i = 0; i < n; i++) push_byte_range(P, l, x[i], y[i]);
        push(P, l, GE_END, -1);
        return;
    }
}

/* One element matching any code point of the ranges (sorted, disjoint, no
 * surrogates): a byte set when all are ASCII, else a rule. */
static void push_class(gparser *P, elist *l, const cprange *r, int32_t n)
{
    gbyteset ascii;
    memset(&ascii, 0, sizeof ascii);
    bool any_ascii = false, multi = false;
    for (int32_t i = 0; i < n; i++) {
        for (uint32_t c = r[i].lo; c <= r[i].hi && c < 0x80; c++) {
            ascii.w[c >> 5] |= 1u << (c & 31);
            any_ascii = true;
        }
        if (r[i].hi >= 0x80) multi = true;
    }
    if (!multi) {
        int32_t id = any_ascii ? add_set(P, &ascii) : -1;
        if (id >= 0) push(P, l, GE_BYTES, id);
        else if (!any_ascii) perr(P, "empty character class");
        return;
    }
    int32_t rid = synth_rule(P);
    if (rid < 0) return;
    elist body = {0};
    if (any_ascii) {
        int32_t id = add_set(P, &ascii);
        if (id >= 0) push(P, &body, GE_BYTES, id);
        push(P, &body, GE_END, -1);
    }
    for (int32_t i = 0; i < n; i++)
        if (r[i].hi >= 0x80) utf8_split(P, &body, r[i].lo < 0x80 ? 0x80 : r[i].lo, r[i].hi);
    P->rules[rid].body = body;
    push(P, l, GE_RULE, rid);
}

/* Normalise ranges: sort, merge, remove surrogates; negate if asked. */
static int32_t normalise(cprange *r, int32_t n, bool negate, cprange *out)
{
    for (int32_t i = 1; i < n; i++) { /* insertion sort: classes are short */
        cprange x = r[i];
        int32_t j = i;
        while (j > 0 && r[j - 1].lo > x.lo) {
            r[j] = r[j - 1];
            j--;
        }
        r[j] = x;
    }
    int32_t m = 0;
    for (int32_t i = 0; i < n; i++) {
        if (m && r[i].lo <= r[m - 1].hi + 1) {
            if (r[i].hi > r[m - 1].hi) r[m - 1].hi = r[i].hi;
        } else {
            r[m++] = r[i];
        }
    }
    int32_t k = 0;
    if (negate) {
        uint32_t next = 0;
        for (int32_t i = 0; i < m; i++) {
            if (r[i].lo > next) out[k++] = (cprange){next, r[i].lo - 1};
            next = r[i].hi + 1;
        }
        if (next <= 0x10FFFF) out[k++] = (cprange){next, 0x10FFFF};
    } else {
        memcpy(out, r, (size_t)m * sizeof *r);
        k = m;
    }
    /* drop the surrogates (not characters; never valid UTF-8) */
    int32_t w = 0;
    cprange tmp[2];
    for (int32_t i = 0; i < k; i++) {
        cprange x = out[i];
        int nt = 0;
        if (x.hi < 0xD800 || x.lo > 0xDFFF) {
            tmp[nt++] = x;
        } else {
            if (x.lo < 0xD800) tmp[nt++] = (cprange){x.lo, 0xD7FF};
            if (x.hi > 0xDFFF) tmp[nt++] = (cprange){0xE000, x.hi};
        }
        for (int t = 0; t < nt; t++) out[w++] = tmp[t];
    }
    return w;
}

/* ------------------------------------------------------------------------ */
/* Lexing                                                                   */
/* ------------------------------------------------------------------------ */

static bool is_name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

/* Skip spaces and comments; newlines too when nl_ok. */
static void skip_space(gparser *P, bool nl_ok)
{
    while (P->p < P->end) {
        char c = *P->p;
        if (c == ' ' || c == '\t' || (nl_ok && (c == '\n' || c == '\r'))) {
            P->p++;
        } else if (c == '#') {
            while (P->p < P->end && *P->p != '\n') P->p++;
        } else {
            break;
        }
    }
}

/* A following line that starts with '|' continues the alternatives. */
static bool continues_on_next_line(gparser *P)
{
    const char *save = P->p;
    skip_space(P, true);
    if (P->p < P->end && *P->p == '|') return true;
    P->p = save;
    return false;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decode one UTF-8 code point from the text (invalid bytes: -1). */
static int32_t next_utf8(gparser *P)
{
    const unsigned char *q = (const unsigned char *)P->p;
    size_t left = (size_t)(P->end - P->p);
    unsigned c = q[0];
    int n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (!n || (size_t)n > left) return -1;
    uint32_t v = n == 1 ? c : n == 2 ? (c & 0x1F) : n == 3 ? (c & 0x0F) : (c & 0x07);
    for (int i = 1; i < n; i++) {
        if ((q[i] & 0xC0) != 0x80) return -1;
        v = (v << 6) | (q[i] & 0x3F);
    }
    if (v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return -1;
    P->p += n;
    return (int32_t)v;
}

/* One character of a literal or class, escapes decoded; -1 on error. */
static int32_t parse_char(gparser *P)
{
    if (P->p >= P->end) {
        perr(P, "unexpected end of the grammar");
        return -1;
    }
    if (*P->p != '\\') {
        int32_t c = next_utf8(P);
        if (c < 0) perr(P, "invalid UTF-8");
        return c;
    }
    P->p++;
    if (P->p >= P->end) {
        perr(P, "unexpected end after '\\'");
        return -1;
    }
    char e = *P->p++;
    int nhex = e == 'x' ? 2 : e == 'u' ? 4 : e == 'U' ? 8 : 0;
    if (nhex) {
        uint32_t v = 0;
        for (int i = 0; i < nhex; i++) {
            int h = P->p < P->end ? hexval(*P->p) : -1;
            if (h < 0) {
                perr(P, "expected %d hex digits after '\\%c'", nhex, e);
                return -1;
            }
            v = v * 16 + (uint32_t)h;
            P->p++;
        }
        if (v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) {
            perr(P, "escape names no character (U+%X)", v);
            return -1;
        }
        return (int32_t)v;
    }
    switch (e) {
    case 'n': return '\n';
    case 'r': return '\r';
    case 't': return '\t';
    case '0': return 0;
    case '\\': case '"': case '[': case ']': case '-': case '^': case '\'': case '/': case '.':
        return (unsigned char)e;
    default: perr(P, "unknown escape '\\%c'", e); return -1;
    }
}

/* ------------------------------------------------------------------------ */
/* Items, sequences, alternatives                                           */
/* ------------------------------------------------------------------------ */

static void parse_alternatives(gparser *P, elist *body, bool nested);

static void parse_literal(gparser *P, elist *l)
{
    P->p++; /* '"' */
    while (!P->failed && P->p < P->end && *P->p != '"' && *P->p != '\n') {
        int32_t c = parse_char(P);
        if (c < 0) return;
        uint8_t b[4];
        int n = utf8_encode((uint32_t)c, b);
        for (int i = 0; i < n; i++) push_byte_range(P, l, b[i], b[i]);
    }
    if (P->p >= P->end || *P->p == '\n') {
        perr(P, "unterminated string literal");
        return;
    }
    P->p++;
}

#define MAX_CLASS_RANGES 1024

static void parse_class(gparser *P, elist *l)
{
    P->p++; /* '[' */
    bool neg = P->p < P->end && *P->p == '^';
    if (neg) P->p++;
    cprange *r = eng__malloc(2 * (MAX_CLASS_RANGES + 2) * sizeof *r);
    if (!r) {
        gerr(P, "out of memory");
        return;
    }
    int32_t n = 0;
    while (!P->failed && P->p < P->end && *P->p != ']' && *P->p != '\n') {
        if (n >= MAX_CLASS_RANGES) {
            perr(P, "character class has more than %d ranges", MAX_CLASS_RANGES);
            break;
        }
        int32_t a = parse_char(P), b = a;
        if (a < 0) break;
        if (P->p + 1 < P->end && *P->p == '-' && P->p[1] != ']' && P->p[1] != '\n') {
            P->p++;
            b = parse_char(P);
            if (b < 0) break;
            if (b < a) {
                perr(P, "character range is reversed");
                break;
            }
        }
        r[n++] = (cprange){(uint32_t)a, (uint32_t)b};
    }
    if (!P->failed && (P->p >= P->end || *P->p == '\n')) perr(P, "unterminated character class");
    if (!P->failed) {
        P->p++;
        int32_t m = normalise(r, n, neg, r + MAX_CLASS_RANGES + 2);
        push_class(P, l, r + MAX_CLASS_RANGES + 2, m);
    }
    free(r);
}

/* The elements of l from `from` on become one element (a rule if needed),
 * which is returned and removed from l. */
static gelem single_element(gparser *P, elist *l, int32_t from)
{
    if (l->n - from == 1) {
        P->n_el -= 1;
        l->n = from;
        return l->e[from];
    }
    int32_t rid = synth_rule(P);
    if (rid < 0) return (gelem){GE_END, -1};
    elist body = {0};
    for (int32_t i = from; i < l->n; i++) push(P, &body, l->e[i].kind, l->e[i].arg);
    push(P, &body, GE_END, -1);
    P->rules[rid].body = body;
    P->n_el -= l->n - from;
    l->n = from;
    return (gelem){GE_RULE, rid};
}

/* x{lo,hi} (hi < 0: unbounded) in place of the item at l[from..]. */
static void repeat(gparser *P, elist *l, int32_t from, long lo, long hi)
{
    if (l->n == from) return; /* an empty item repeated is empty */
    gelem x = single_element(P, l, from);
    if (P->failed) return;
    if (lo > P->lim->max_elements || hi > P->lim->max_elements) {
        gerr(P, "grammar too large: a repetition count exceeds max_elements (%d)", P->lim->max_elements);
        return;
    }
    for (long i = 0; i < lo && !P->failed; i++) push(P, l, x.kind, x.arg);
    if (hi == lo) return;
    if (hi < 0) { /* star ::= x star | "" */
        int32_t s = synth_rule(P);
        if (s < 0) return;
        elist b = {0};
        push(P, &b, x.kind, x.arg);
        push(P, &b, GE_RULE, s);
        push(P, &b, GE_END, -1);
        push(P, &b, GE_END, -1);
        P->rules[s].body = b;
        push(P, l, GE_RULE, s);
        return;
    }
    int32_t prev = -1; /* opt_k ::= x opt_{k-1} | "" */
    for (long k = 0; k < hi - lo && check_time(P); k++) {
        int32_t o = synth_rule(P);
        if (o < 0) return;
        elist b = {0};
        push(P, &b, x.kind, x.arg);
        if (prev >= 0) push(P, &b, GE_RULE, prev);
        push(P, &b, GE_END, -1);
        push(P, &b, GE_END, -1);
        P->rules[o].body = b;
        prev = o;
    }
    push(P, l, GE_RULE, prev);
}

static long parse_count(gparser *P)
{
    long v = 0;
    if (P->p >= P->end || *P->p < '0' || *P->p > '9') {
        perr(P, "expected a number in {}");
        return -1;
    }
    while (P->p < P->end && *P->p >= '0' && *P->p <= '9') {
        v = v * 10 + (*P->p++ - '0');
        if (v > 1000000) {
            perr(P, "repetition count too large");
            return -1;
        }
    }
    return v;
}

/* A postfix operator after the item l[from..], if any. */
static void parse_postfix(gparser *P, elist *l, int32_t from)
{
    char c = *P->p;
    if (c == '*' || c == '+' || c == '?') {
        P->p++;
        repeat(P, l, from, c == '+' ? 1 : 0, c == '?' ? 1 : -1);
        return;
    }
    P->p++; /* '{' */
    skip_space(P, false);
    long lo = parse_count(P), hi = lo;
    skip_space(P, false);
    if (!P->failed && P->p < P->end && *P->p == ',') {
        P->p++;
        skip_space(P, false);
        hi = (P->p < P->end && *P->p == '}') ? -1 : parse_count(P);
        skip_space(P, false);
    }
    if (P->failed) return;
    if (P->p >= P->end || *P->p != '}') {
        perr(P, "expected '}'");
        return;
    }
    P->p++;
    if (hi >= 0 && hi < lo) {
        perr(P, "repetition {%ld,%ld}: the maximum is below the minimum", lo, hi);
        return;
    }
    repeat(P, l, from, lo, hi);
}

/* One item: literal, class, rule name, group or '.'. */
static void parse_item(gparser *P, elist *l)
{
    char c = *P->p;
    if (c == '"') {
        parse_literal(P, l);
    } else if (c == '[') {
        parse_class(P, l);
    } else if (c == '.') {
        P->p++;
        cprange any[2] = {{0, 0xD7FF}, {0xE000, 0x10FFFF}};
        push_class(P, l, any, 2);
    } else if (c == '(') {
        if (++P->depth > MAX_NESTING) {
            perr(P, "groups nested deeper than %d", MAX_NESTING);
            return;
        }
        P->p++;
        int32_t rid = synth_rule(P);
        if (rid < 0) return;
        elist body = {0};
        skip_space(P, true);
        parse_alternatives(P, &body, true);
        P->rules[rid].body = body;
        P->depth--;
        if (P->failed) return;
        if (P->p >= P->end || *P->p != ')') {
            perr(P, "expected ')'");
            return;
        }
        P->p++;
        push(P, l, GE_RULE, rid);
    } else if (is_name_char(c)) {
        const char *q = P->p;
        while (P->p < P->end && is_name_char(*P->p)) P->p++;
        int32_t rid = find_rule(P, q, (int32_t)(P->p - q));
        if (rid >= 0) push(P, l, GE_RULE, rid);
    } else {
        perr(P, "unexpected character '%c'", c);
    }
}

static void parse_sequence(gparser *P, elist *l, bool nested)
{
    while (!P->failed && P->p < P->end) {
        char c = *P->p;
        if (c == '|' || c == ')' || c == '\n' || c == '\r') break;
        int32_t from = l->n;
        parse_item(P, l);
        if (P->failed) return;
        skip_space(P, nested);
        while (!P->failed && P->p < P->end && (*P->p == '*' || *P->p == '+' || *P->p == '?' || *P->p == '{')) {
            parse_postfix(P, l, from);
            skip_space(P, nested);
        }
    }
}

static void parse_alternatives(gparser *P, elist *body, bool nested)
{
    for (;;) {
        parse_sequence(P, body, nested);
        push(P, body, GE_END, -1);
        if (P->failed) return;
        if (!nested && P->p < P->end && *P->p != '|' && !continues_on_next_line(P)) return;
        if (P->p >= P->end || *P->p != '|') return;
        P->p++;
        skip_space(P, true);
    }
}

static void parse_rule(gparser *P)
{
    const char *q = P->p;
    while (P->p < P->end && is_name_char(*P->p)) P->p++;
    if (P->p == q) {
        perr(P, "expected a rule name");
        return;
    }
    int32_t rid = find_rule(P, q, (int32_t)(P->p - q));
    if (rid < 0) return;
    if (P->rules[rid].defined) {
        perr(P, "rule '%.*s' is defined twice", (int)(P->p - q), q);
        return;
    }
    P->rules[rid].defined = true;
    skip_space(P, false);
    if (P->end - P->p < 3 || memcmp(P->p, "::=", 3)) {
        perr(P, "expected '::='");
        return;
    }
    P->p += 3;
    skip_space(P, true);
    elist body = {0};
    parse_alternatives(P, &body, false);
    P->rules[rid].body = body;
    if (!P->failed && P->p < P->end && *P->p != '\n' && *P->p != '\r') perr(P, "expected the end of the line");
}

/* ------------------------------------------------------------------------ */
/* Checks and flattening                                                    */
/* ------------------------------------------------------------------------ */

/* Which rules can match the empty string (a fixpoint). */
static void nullable_rules(const gparser *P, bool *nul)
{
    bool changed = true;
    while (changed) {
        changed = false;
        for (int32_t r = 0; r < P->n_rule; r++) {
            if (nul[r]) continue;
            const elist *b = &P->rules[r].body;
            bool alt_ok = true;
            for (int32_t i = 0; i < b->n; i++) {
                const gelem *e = &b->e[i];
                if (e->kind == GE_END) {
                    if (alt_ok) {
                        nul[r] = changed = true;
                        break;
                    }
                    alt_ok = true;
                } else if (e->kind == GE_BYTES || !nul[e->arg]) {
                    alt_ok = false;
                }
            }
        }
    }
}

/* Depth-first search for a cycle of "r begins with s" edges. */
static int32_t left_cycle(const gparser *P, const bool *nul, int8_t *color, int32_t r, int32_t depth)
{
    if (color[r] == 1) return r;
    if (color[r] == 2 || depth > P->n_rule) return -1;
    color[r] = 1;
    const elist *b = &P->rules[r].body;
    bool at_left = true;
    for (int32_t i = 0; i < b->n; i++) {
        const gelem *e = &b->e[i];
        if (e->kind == GE_END) {
            at_left = true;
            continue;
        }
        if (!at_left) continue;
        if (e->kind == GE_RULE) {
            int32_t c = left_cycle(P, nul, color, e->arg, depth + 1);
            if (c >= 0) return c;
            if (!nul[e->arg]) at_left = false;
        } else {
            at_left = false;
        }
    }
    color[r] = 2;
    return -1;
}

static void check_rules(gparser *P, int32_t root)
{
    for (int32_t r = 0; r < P->n_rule && !P->failed; r++)
        if (!P->rules[r].defined)
            gerr(P, "grammar: rule '%s' (line %d) is used but never defined", P->rules[r].name, P->rules[r].line);
    if (P->failed) return;
    bool *nul = eng__calloc((size_t)P->n_rule, 1);
    int8_t *color = eng__calloc((size_t)P->n_rule, 1);
    if (!nul || !color) {
        gerr(P, "out of memory");
    } else {
        nullable_rules(P, nul);
        for (int32_t r = 0; r < P->n_rule && !P->failed; r++) {
            int32_t c = left_cycle(P, nul, color, r, 0);
            if (c >= 0)
                gerr(P, "grammar: rule '%s' is left-recursive (it can reach itself before matching a character; "
                        "a repetition of something that can be empty, like (\"a\"?)*, does this too)",
                     P->rules[c].name);
        }
    }
    (void)root;
    free(nul);
    free(color);
}

static eng_status flatten(gparser *P, int32_t root, gir *g)
{
    int64_t n_el = 0, n_alt = 0;
    for (int32_t r = 0; r < P->n_rule; r++) {
        n_el += P->rules[r].body.n;
        for (int32_t i = 0; i < P->rules[r].body.n; i++) n_alt += P->rules[r].body.e[i].kind == GE_END;
    }
    g->el = eng__malloc((size_t)(n_el + 1) * sizeof *g->el);
    g->alt_start = eng__malloc((size_t)(n_alt + 1) * sizeof *g->alt_start);
    g->rule_alt = eng__malloc((size_t)(P->n_rule + 1) * sizeof *g->rule_alt);
    g->sets = eng__malloc((size_t)(P->n_set + 1) * sizeof *g->sets);
    if (!g->el || !g->alt_start || !g->rule_alt || !g->sets) return ENG_ENOMEM;
    int32_t e = 0, a = 0;
    for (int32_t r = 0; r < P->n_rule; r++) {
        g->rule_alt[r] = a;
        const elist *b = &P->rules[r].body;
        bool start = true;
        for (int32_t i = 0; i < b->n; i++) {
            if (start) g->alt_start[a++] = e;
            start = b->e[i].kind == GE_END;
            g->el[e] = b->e[i];
            if (start) g->el[e].arg = r;
            e++;
        }
    }
    g->rule_alt[P->n_rule] = a;
    g->n_el = e;
    g->n_alt = a;
    g->n_rule = P->n_rule;
    if (P->n_set) memcpy(g->sets, P->sets, (size_t)P->n_set * sizeof *g->sets);
    g->n_set = P->n_set;
    g->root = root;
    return ENG_OK;
}

void eng__gir_free(gir *g)
{
    if (!g) return;
    free(g->el);
    free(g->alt_start);
    free(g->rule_alt);
    free(g->sets);
    memset(g, 0, sizeof *g);
}

static void parser_free(gparser *P)
{
    for (int32_t r = 0; r < P->n_rule; r++) {
        free(P->rules[r].name);
        free(P->rules[r].body.e);
    }
    free(P->rules);
    free(P->sets);
}

eng_status eng__gir_parse(const char *text, size_t len, const char *root, const eng_grammar_limits *lim, gir *g,
                          char *err, size_t errlen)
{
    memset(g, 0, sizeof *g);
    if (err && errlen) err[0] = 0;
    if (len > lim->max_bytes) {
        eng__errf(err, errlen, "grammar too large: %zu bytes, more than max_bytes (%zu)", len, lim->max_bytes);
        return ENG_EINVAL;
    }
    gparser P = {.s = text, .end = text + len, .p = text, .lim = lim, .t0 = eng__now(), .err = err,
                 .errlen = errlen};
    for (int i = 0; i < 256; i++) P.single[i] = -1;
    skip_space(&P, true);
    while (P.p < P.end && check_time(&P)) {
        parse_rule(&P);
        skip_space(&P, true);
    }
    const char *rn = root ? root : "root";
    int32_t rid = -1;
    for (int32_t r = 0; r < P.n_rule && !P.failed; r++)
        if (P.rules[r].defined && !strcmp(P.rules[r].name, rn)) rid = r;
    if (!P.failed && rid < 0) gerr(&P, "grammar: the start rule '%s' is not defined", rn);
    if (!P.failed) check_rules(&P, rid);
    eng_status st = ENG_OK;
    if (!P.failed) {
        st = flatten(&P, rid, g);
        if (st != ENG_OK) eng__errf(err, errlen, "out of memory");
    } else {
        st = P.oom ? ENG_ENOMEM : ENG_EINVAL;
    }
    parser_free(&P);
    if (st != ENG_OK) eng__gir_free(g);
    return st;
}
