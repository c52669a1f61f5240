/*
 * jinja_lex.c - the Jinja lexer: template source to a token array, with the
 * whitespace rules of transformers' environment applied here (trim_blocks,
 * lstrip_blocks, "-" markers, the dropped final newline, {% raw %}).
 */
#include "jinja.h"
#include "internal.h"
#include "tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    jparse_env *E;
    const char *s;
    size_t n, pos;
    int line;
    jtok *t;
    size_t nt, cap;
    bool lstrip_next; /* the last tag ended with "-": strip the next text's leading whitespace */
    bool line_start;  /* the last tag's consumed text ended a line */
} lexer;

_Noreturn void jj_parse_fail(jparse_env *E, int line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int k = snprintf(E->err->msg, sizeof E->err->msg, "TemplateSyntaxError (line %d): ", line);
    if (k < 0 || (size_t)k >= sizeof E->err->msg) k = 0;
    vsnprintf(E->err->msg + k, sizeof E->err->msg - (size_t)k, fmt, ap);
    va_end(ap);
    longjmp(*E->jb, 1);
}

void *jj_palloc(jparse_env *E, size_t n)
{
    void *p = jj_arena_alloc(E->ar, n);
    if (!p) {
        snprintf(E->err->msg, sizeof E->err->msg, "out of memory parsing the template");
        longjmp(*E->jb, 2);
    }
    return p;
}

static jtok *emit(lexer *L, jtok_kind k)
{
    if (L->nt == L->cap) {
        size_t cap = L->cap ? L->cap * 2 : 256;
        jtok *nt = jj_palloc(L->E, cap * sizeof *nt);
        if (L->nt) memcpy(nt, L->t, L->nt * sizeof *nt);
        L->t = nt;
        L->cap = cap;
    }
    jtok *t = &L->t[L->nt++];
    memset(t, 0, sizeof *t);
    t->kind = (uint8_t)k;
    t->line = L->line;
    return t;
}

static bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
static bool is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
static bool is_digit(char c) { return c >= '0' && c <= '9'; }

static int count_lines(const char *s, size_t a, size_t b)
{
    int k = 0;
    for (size_t i = a; i < b; i++) k += s[i] == '\n';
    return k;
}

static bool at(const lexer *L, size_t p, const char *lit)
{
    size_t k = strlen(lit);
    return p + k <= L->n && memcmp(L->s + p, lit, k) == 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Python "unicode-escape" decoding of a string literal's body. */
static void decode_string(lexer *L, jtok *t, const char *s, size_t n)
{
    char *o = jj_palloc(L->E, n + 1);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '\\' || i + 1 == n) { o[k++] = s[i]; continue; }
        char c = s[++i];
        const char *simple = strchr("\\'\"abfnrtv\n", c);
        if (c && simple) {
            static const char from[] = "\\'\"abfnrtv\n", to[] = "\\'\"\a\b\f\n\r\t\v";
            if (c != '\n') o[k++] = to[strchr(from, c) - from];
            continue;
        }
        if (c >= '0' && c <= '7') {
            uint32_t v = 0;
            size_t j = 0;
            for (; j < 3 && i + j < n && s[i + j] >= '0' && s[i + j] <= '7'; j++) v = v * 8 + (uint32_t)(s[i + j] - '0');
            i += j - 1;
            k += (size_t)eng__utf8_put(v, (uint8_t *)o + k);
            continue;
        }
        int w = c == 'x' ? 2 : c == 'u' ? 4 : c == 'U' ? 8 : 0;
        if (w) {
            uint32_t v = 0;
            for (int j = 1; j <= w; j++) {
                int h = i + (size_t)j < n ? hexval(s[i + (size_t)j]) : -1;
                if (h < 0) jj_parse_fail(L->E, t->line, "truncated \\%c escape in a string", c);
                v = v * 16 + (uint32_t)h;
            }
            if (v > 0x10FFFF) jj_parse_fail(L->E, t->line, "illegal Unicode character in a string");
            i += (size_t)w;
            /* an escape is at most 10 source bytes and yields at most 4 */
            k += (size_t)eng__utf8_put(v, (uint8_t *)o + k);
            continue;
        }
        o[k++] = '\\';
        o[k++] = c;
    }
    o[k] = 0;
    t->p = o;
    t->n = k;
}

static void lex_string(lexer *L)
{
    char q = L->s[L->pos];
    size_t st = ++L->pos;
    while (L->pos < L->n && L->s[L->pos] != q) L->pos += L->s[L->pos] == '\\' ? 2 : 1;
    if (L->pos >= L->n) jj_parse_fail(L->E, L->line, "unterminated string");
    jtok *t = emit(L, TK_STRING);
    decode_string(L, t, L->s + st, L->pos - st);
    L->line += count_lines(L->s, st, L->pos);
    L->pos++;
}

static void lex_number(lexer *L)
{
    size_t st = L->pos;
    char buf[64];
    size_t k = 0;
    bool flt = false;
    while (L->pos < L->n && (is_digit(L->s[L->pos]) || L->s[L->pos] == '_')) {
        if (L->s[L->pos] != '_' && k < sizeof buf - 8) buf[k++] = L->s[L->pos];
        L->pos++;
    }
    if (L->pos + 1 < L->n && L->s[L->pos] == '.' && is_digit(L->s[L->pos + 1])) {
        flt = true;
        buf[k++] = L->s[L->pos++];
        while (L->pos < L->n && (is_digit(L->s[L->pos]) || L->s[L->pos] == '_')) {
            if (L->s[L->pos] != '_' && k < sizeof buf - 8) buf[k++] = L->s[L->pos];
            L->pos++;
        }
    }
    if (L->pos < L->n && (L->s[L->pos] == 'e' || L->s[L->pos] == 'E')) {
        size_t p = L->pos + 1;
        if (p < L->n && (L->s[p] == '+' || L->s[p] == '-')) p++;
        if (p < L->n && is_digit(L->s[p])) {
            flt = true;
            buf[k++] = 'e';
            for (size_t q = L->pos + 1; q < p; q++) buf[k++] = L->s[q];
            L->pos = p;
            while (L->pos < L->n && is_digit(L->s[L->pos]) && k < sizeof buf - 1) buf[k++] = L->s[L->pos++];
        }
    }
    buf[k] = 0;
    jtok *t = emit(L, flt ? TK_FLOAT : TK_INT);
    t->p = L->s + st;
    t->n = L->pos - st;
    if (flt) {
        t->f = strtod(buf, NULL);
    } else {
        if (k > 19 || (k == 19 && strcmp(buf, "9223372036854775807") > 0))
            jj_parse_fail(L->E, t->line, "integer literal too large");
        t->i = strtoll(buf, NULL, 10);
    }
}

static const char *const OPS[] = {"//", "**", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<",
                                  ">", "=", "(", ")", "[", "]", "{", "}", ",", ".", ":", "|"};

static void lex_op(lexer *L)
{
    for (size_t i = 0; i < sizeof OPS / sizeof *OPS; i++) {
        if (!at(L, L->pos, OPS[i])) continue;
        jtok *t = emit(L, TK_OP);
        t->p = OPS[i];
        t->n = strlen(OPS[i]);
        L->pos += t->n;
        return;
    }
    jj_parse_fail(L->E, L->line, "unexpected character '%c'", L->s[L->pos]);
}

/* The tokens of one {{ }} or {% %} tag, up to and including its end. */
static void lex_tag(lexer *L, bool block)
{
    int balance = 0;
    const char *end = block ? "%}" : "}}";
    for (;;) {
        while (L->pos < L->n && is_ws(L->s[L->pos])) L->line += L->s[L->pos++] == '\n';
        if (L->pos >= L->n) jj_parse_fail(L->E, L->line, "unexpected end of template inside a tag");
        if (balance == 0) {
            bool minus = L->s[L->pos] == '-' && at(L, L->pos + 1, end);
            bool plus = block && L->s[L->pos] == '+' && at(L, L->pos + 1, end);
            if (minus || plus || at(L, L->pos, end)) {
                emit(L, block ? TK_BLOCK_END : TK_VAR_END);
                L->pos += (minus || plus) + 2;
                L->lstrip_next = minus;
                if (block && !minus && !plus && L->pos < L->n && L->s[L->pos] == '\n') {
                    L->pos++;
                    L->line++;
                }
                L->line_start = L->s[L->pos - 1] == '\n';
                return;
            }
        }
        char c = L->s[L->pos];
        if (is_alpha(c)) {
            size_t st = L->pos;
            while (L->pos < L->n && (is_alpha(L->s[L->pos]) || is_digit(L->s[L->pos]))) L->pos++;
            jtok *t = emit(L, TK_NAME);
            t->p = L->s + st;
            t->n = L->pos - st;
        } else if (is_digit(c)) {
            lex_number(L);
        } else if (c == '\'' || c == '"') {
            lex_string(L);
        } else {
            lex_op(L);
            char o = L->t[L->nt - 1].p[0];
            if (L->t[L->nt - 1].n == 1 && (o == '(' || o == '[' || o == '{')) balance++;
            if (L->t[L->nt - 1].n == 1 && (o == ')' || o == ']' || o == '}') && balance > 0) balance--;
        }
    }
}

/* After "{% raw %}": everything up to "{% endraw %}" is text. */
static void lex_raw(lexer *L)
{
    L->nt -= 3; /* drop BLOCK_BEGIN raw BLOCK_END */
    if (L->lstrip_next) /* "{% raw -%}" */
        while (L->pos < L->n && is_ws(L->s[L->pos])) L->line += L->s[L->pos++] == '\n';
    L->lstrip_next = false;
    for (size_t p = L->pos; p + 1 < L->n; p++) {
        if (L->s[p] != '{' || L->s[p + 1] != '%') continue;
        size_t q = p + 2;
        bool minus = q < L->n && L->s[q] == '-';
        q += minus || (q < L->n && L->s[q] == '+');
        while (q < L->n && is_ws(L->s[q])) q++;
        if (!at(L, q, "endraw")) continue;
        q += 6;
        while (q < L->n && is_ws(L->s[q])) q++;
        bool emin = q < L->n && L->s[q] == '-';
        if (!at(L, q + emin, "%}")) continue;
        size_t dend = p;
        if (minus)
            while (dend > L->pos && is_ws(L->s[dend - 1])) dend--;
        if (dend > L->pos) {
            jtok *t = emit(L, TK_DATA);
            t->p = L->s + L->pos;
            t->n = dend - L->pos;
        }
        L->line += count_lines(L->s, L->pos, q);
        L->pos = q + emin + 2;
        L->lstrip_next = emin;
        if (!emin && L->pos < L->n && L->s[L->pos] == '\n') {
            L->pos++;
            L->line++;
        }
        L->line_start = L->s[L->pos - 1] == '\n';
        return;
    }
    jj_parse_fail(L->E, L->line, "missing {%% endraw %%}");
}

/* Text before a tag at L->pos .. tag (the tag's kind and marker decide how
 * its trailing whitespace goes), then emitted if not empty. */
static void lex_text(lexer *L, size_t tag)
{
    size_t a = L->pos, b = tag;
    if (L->lstrip_next)
        while (a < b && is_ws(L->s[a])) a++;
    bool line_start = a > L->pos ? L->s[a - 1] == '\n' : L->line_start;
    L->lstrip_next = false;
    if (tag < L->n) {
        char kind = L->s[tag + 1], mark = tag + 2 < L->n ? L->s[tag + 2] : 0;
        if (mark == '-') {
            while (b > a && is_ws(L->s[b - 1])) b--;
        } else if (mark != '+' && (kind == '%' || kind == '#')) {
            size_t l = b;
            while (l > a && (L->s[l - 1] == ' ' || L->s[l - 1] == '\t')) l--;
            if ((l > a && L->s[l - 1] == '\n') || (l == a && line_start)) b = l;
        }
    }
    if (b > a) {
        jtok *t = emit(L, TK_DATA);
        t->p = L->s + a;
        t->n = b - a;
    }
    L->line += count_lines(L->s, L->pos, tag);
}

static void lex_comment(lexer *L, size_t tag)
{
    size_t p = tag + 2;
    while (p + 1 < L->n && !(L->s[p] == '#' && L->s[p + 1] == '}')) p++;
    if (p + 1 >= L->n) jj_parse_fail(L->E, L->line, "missing end of comment tag");
    L->lstrip_next = p > tag + 2 && L->s[p - 1] == '-';
    L->line += count_lines(L->s, tag, p);
    L->pos = p + 2;
    if (!L->lstrip_next && L->pos < L->n && L->s[L->pos] == '\n') {
        L->pos++;
        L->line++;
    }
    L->line_start = L->s[L->pos - 1] == '\n';
}

static size_t find_tag(const lexer *L)
{
    for (size_t p = L->pos; p + 1 < L->n; p++) {
        if (L->s[p] != '{') continue;
        char c = L->s[p + 1];
        if (c == '{' || c == '%' || c == '#') return p;
    }
    return L->n;
}

/* Newlines normalised to "\n" and one trailing newline dropped, as jinja2
 * does with keep_trailing_newline=False. */
static char *normalise(jparse_env *E, const char *src, size_t len, size_t *out_len)
{
    char *s = jj_palloc(E, len + 1);
    size_t k = 0;
    for (size_t i = 0; i < len; i++) {
        if (src[i] == '\r') {
            s[k++] = '\n';
            if (i + 1 < len && src[i + 1] == '\n') i++;
        } else {
            s[k++] = src[i];
        }
    }
    if (k && s[k - 1] == '\n') k--;
    s[k] = 0;
    *out_len = k;
    return s;
}

jtok *jj_lex(jparse_env *E, const char *src, size_t len, size_t *ntok)
{
    lexer L = {.E = E, .line = 1, .line_start = true};
    L.s = normalise(E, src, len, &L.n);
    while (L.pos < L.n) {
        size_t tag = find_tag(&L);
        lex_text(&L, tag);
        if (tag >= L.n) break;
        char kind = L.s[tag + 1];
        if (kind == '#') {
            lex_comment(&L, tag);
            continue;
        }
        emit(&L, kind == '%' ? TK_BLOCK_BEGIN : TK_VAR_BEGIN);
        L.pos = tag + 2;
        if (L.pos < L.n && (L.s[L.pos] == '-' || L.s[L.pos] == '+')) L.pos++;
        lex_tag(&L, kind == '%');
        if (kind == '%' && L.nt >= 3 && L.t[L.nt - 2].kind == TK_NAME && L.t[L.nt - 3].kind == TK_BLOCK_BEGIN &&
            L.t[L.nt - 2].n == 3 && memcmp(L.t[L.nt - 2].p, "raw", 3) == 0)
            lex_raw(&L);
    }
    emit(&L, TK_EOF);
    *ntok = L.nt;
    return L.t;
}
