/*
 * jinja_parse.c - the Jinja parser: tokens to an AST of statements and
 * expressions, with jinja2's operator precedence (a filter or test binds to
 * the unary operand: "a + b | f" is "a + (b | f)"), and eng_jinja_parse.
 */
#include "jinja.h"
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_NEST 200

typedef struct {
    jparse_env *E;
    const jtok *t;
    size_t n, i;
    int nest;
} parser;

typedef struct { const jnode **v; size_t n, cap; } nvec;

static void nv_push(parser *P, nvec *v, const jnode *x)
{
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 8;
        const jnode **nn = jj_palloc(P->E, cap * sizeof *nn);
        if (v->n) memcpy(nn, v->v, v->n * sizeof *nn);
        v->v = nn;
        v->cap = cap;
    }
    v->v[v->n++] = x;
}

typedef struct { const char **v; size_t n, cap; } svec;

static void sv_push(parser *P, svec *v, const char *s)
{
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 4;
        const char **nn = jj_palloc(P->E, cap * sizeof *nn);
        if (v->n) memcpy(nn, v->v, v->n * sizeof *nn);
        v->v = nn;
        v->cap = cap;
    }
    v->v[v->n++] = s;
}

static const jtok *cur(parser *P) { return &P->t[P->i]; }
static const jtok *peek(parser *P, size_t k) { return P->i + k < P->n ? &P->t[P->i + k] : &P->t[P->n - 1]; }

static bool tok_is(const jtok *t, jtok_kind k, const char *s)
{
    if (t->kind != k) return false;
    if (!s) return true;
    size_t n = strlen(s);
    return t->n == n && memcmp(t->p, s, n) == 0;
}

static bool is_op(parser *P, const char *s) { return tok_is(cur(P), TK_OP, s); }
static bool is_name(parser *P, const char *s) { return tok_is(cur(P), TK_NAME, s); }

static bool accept_op(parser *P, const char *s)
{
    if (!is_op(P, s)) return false;
    P->i++;
    return true;
}

static bool accept_name(parser *P, const char *s)
{
    if (!is_name(P, s)) return false;
    P->i++;
    return true;
}

static void expect_op(parser *P, const char *s)
{
    if (!accept_op(P, s)) jj_parse_fail(P->E, cur(P)->line, "expected '%s'", s);
}

static const char *dup_tok(parser *P, const jtok *t)
{
    char *s = jj_palloc(P->E, t->n + 1);
    memcpy(s, t->p, t->n);
    s[t->n] = 0;
    return s;
}

static const char *expect_ident(parser *P)
{
    if (cur(P)->kind != TK_NAME) jj_parse_fail(P->E, cur(P)->line, "expected a name");
    return dup_tok(P, &P->t[P->i++]);
}

static jnode *mk(parser *P, jnode_kind k)
{
    jnode *x = jj_palloc(P->E, sizeof *x);
    memset(x, 0, sizeof *x);
    x->kind = (uint8_t)k;
    x->line = cur(P)->line;
    return x;
}

static void enter(parser *P)
{
    if (++P->nest > MAX_NEST) jj_parse_fail(P->E, cur(P)->line, "template nested too deeply");
}

/* ---- expressions ------------------------------------------------------------- */

static const jnode *parse_expr(parser *P);
static const jnode *parse_or(parser *P);
static const jnode *parse_unary(parser *P, bool with_filter);

/* Arguments of a call, filter or test: positional, then name=value. */
static void parse_args(parser *P, jnode *x)
{
    nvec pos = {0}, kw = {0};
    svec names = {0};
    expect_op(P, "(");
    while (!accept_op(P, ")")) {
        if (pos.n + kw.n) expect_op(P, ",");
        if (accept_op(P, ")")) break;
        if (cur(P)->kind == TK_NAME && tok_is(peek(P, 1), TK_OP, "=")) {
            sv_push(P, &names, expect_ident(P));
            P->i++;
            nv_push(P, &kw, parse_expr(P));
        } else {
            if (kw.n) jj_parse_fail(P->E, cur(P)->line, "positional argument after a keyword argument");
            nv_push(P, &pos, parse_expr(P));
        }
    }
    x->list = pos.v;
    x->n = pos.n;
    x->list2 = kw.v;
    x->n2 = kw.n;
    x->names = names.v;
    x->nnames = names.n;
}

static const jnode *parse_seq_lit(parser *P, jnode_kind k, const char *close, const jnode *first)
{
    jnode *x = mk(P, k);
    nvec v = {0};
    if (first) {
        nv_push(P, &v, first);
        if (!accept_op(P, ",")) {
            expect_op(P, close);
            goto out;
        }
    }
    while (!accept_op(P, close)) {
        nv_push(P, &v, parse_expr(P));
        if (!accept_op(P, ",")) {
            expect_op(P, close);
            break;
        }
    }
out:
    x->list = v.v;
    x->n = v.n;
    return x;
}

static const jnode *parse_dict_lit(parser *P)
{
    jnode *x = mk(P, N_DICTLIT);
    nvec k = {0}, v = {0};
    while (!accept_op(P, "}")) {
        nv_push(P, &k, parse_expr(P));
        expect_op(P, ":");
        nv_push(P, &v, parse_expr(P));
        if (!accept_op(P, ",")) {
            expect_op(P, "}");
            break;
        }
    }
    x->list = k.v;
    x->n = k.n;
    x->list2 = v.v;
    x->n2 = v.n;
    return x;
}

static const jnode *lit(parser *P, jv v)
{
    jnode *x = mk(P, N_LIT);
    x->lit = v;
    return x;
}

static const jnode *parse_primary(parser *P)
{
    const jtok *t = cur(P);
    if (t->kind == TK_NAME) {
        P->i++;
        if (tok_is(t, TK_NAME, "true") || tok_is(t, TK_NAME, "True")) return lit(P, jv_bool(true));
        if (tok_is(t, TK_NAME, "false") || tok_is(t, TK_NAME, "False")) return lit(P, jv_bool(false));
        if (tok_is(t, TK_NAME, "none") || tok_is(t, TK_NAME, "None")) return lit(P, jv_none());
        jnode *x = mk(P, N_NAME);
        x->name = dup_tok(P, t);
        x->name_len = t->n;
        return x;
    }
    if (t->kind == TK_STRING) { /* adjacent literals concatenate */
        size_t n = 0, k = P->i;
        while (P->t[k].kind == TK_STRING) n += P->t[k++].n;
        char *s = jj_palloc(P->E, n + 1);
        n = 0;
        while (cur(P)->kind == TK_STRING) {
            memcpy(s + n, cur(P)->p, cur(P)->n);
            n += cur(P)->n;
            P->i++;
        }
        s[n] = 0;
        return lit(P, jv_strn(s, n));
    }
    if (t->kind == TK_INT) { P->i++; return lit(P, jv_int(t->i)); }
    if (t->kind == TK_FLOAT) { P->i++; return lit(P, jv_float(t->f)); }
    if (accept_op(P, "(")) {
        if (accept_op(P, ")")) return mk(P, N_TUPLELIT); /* () */
        const jnode *e = parse_expr(P);
        if (accept_op(P, ")")) return e;
        if (!is_op(P, ",")) expect_op(P, ")");
        return parse_seq_lit(P, N_TUPLELIT, ")", e);
    }
    if (accept_op(P, "[")) return parse_seq_lit(P, N_LISTLIT, "]", NULL);
    if (accept_op(P, "{")) return parse_dict_lit(P);
    jj_parse_fail(P->E, t->line, "unexpected token '%.*s'", (int)(t->n ? t->n : 3), t->n ? t->p : "end");
}

static const jnode *parse_subscript(parser *P, const jnode *obj)
{
    const jnode *parts[3] = {NULL, NULL, NULL};
    int k = 0;
    bool slice = false;
    for (;;) {
        if (is_op(P, ":")) {
            P->i++;
            slice = true;
            if (++k > 2) jj_parse_fail(P->E, cur(P)->line, "bad slice");
            continue;
        }
        if (accept_op(P, "]")) break;
        if (parts[k]) jj_parse_fail(P->E, cur(P)->line, "expected ']'");
        parts[k] = parse_expr(P);
    }
    jnode *x = mk(P, slice ? N_SLICE : N_ITEM);
    x->a = obj;
    if (!slice) {
        if (!parts[0]) jj_parse_fail(P->E, cur(P)->line, "empty subscript");
        x->b = parts[0];
    } else {
        x->b = parts[0];
        x->c = parts[1];
        x->d = parts[2];
    }
    return x;
}

static const jnode *parse_postfix(parser *P, const jnode *x)
{
    for (;;) {
        if (accept_op(P, ".")) {
            jnode *y = mk(P, N_ATTR);
            y->a = x;
            if (cur(P)->kind == TK_INT) { /* x.0 is x[0] */
                y->kind = N_ITEM;
                y->b = lit(P, jv_int(cur(P)->i));
                P->i++;
            } else {
                y->name = expect_ident(P);
                y->name_len = strlen(y->name);
            }
            x = y;
        } else if (accept_op(P, "[")) {
            x = parse_subscript(P, x);
        } else if (is_op(P, "(")) {
            jnode *y = mk(P, N_CALL);
            y->a = x;
            parse_args(P, y);
            x = y;
        } else {
            return x;
        }
    }
}

static bool test_arg_follows(parser *P)
{
    const jtok *t = cur(P);
    if (t->kind == TK_STRING || t->kind == TK_INT || t->kind == TK_FLOAT) return true;
    if (t->kind == TK_NAME)
        return !tok_is(t, TK_NAME, "else") && !tok_is(t, TK_NAME, "or") && !tok_is(t, TK_NAME, "and") &&
               !tok_is(t, TK_NAME, "if") && !tok_is(t, TK_NAME, "in") && !tok_is(t, TK_NAME, "not") &&
               !tok_is(t, TK_NAME, "is");
    return tok_is(t, TK_OP, "[") || tok_is(t, TK_OP, "{");
}

static const jnode *parse_filter_expr(parser *P, const jnode *x)
{
    for (;;) {
        if (accept_op(P, "|")) {
            jnode *y = mk(P, N_FILTER);
            y->a = x;
            y->name = expect_ident(P);
            if (is_op(P, "(")) parse_args(P, y);
            x = y;
        } else if (accept_name(P, "is")) {
            jnode *y = mk(P, N_TEST);
            y->a = x;
            y->neg = accept_name(P, "not");
            y->name = expect_ident(P);
            if (is_op(P, "(")) {
                parse_args(P, y);
            } else if (test_arg_follows(P)) {
                const jnode **one = jj_palloc(P->E, sizeof *one);
                one[0] = parse_postfix(P, parse_primary(P));
                y->list = one;
                y->n = 1;
            }
            x = y;
        } else if (is_op(P, "(")) {
            jnode *y = mk(P, N_CALL);
            y->a = x;
            parse_args(P, y);
            x = y;
        } else {
            return x;
        }
    }
}

static const jnode *parse_unary(parser *P, bool with_filter)
{
    enter(P);
    const jnode *x;
    if (accept_op(P, "-") || (is_op(P, "+") && (P->i++, true))) {
        bool neg = P->t[P->i - 1].p[0] == '-';
        jnode *y = mk(P, neg ? N_NEG : N_POS);
        y->a = parse_unary(P, false);
        x = y;
    } else {
        x = parse_primary(P);
    }
    x = parse_postfix(P, x);
    if (with_filter) x = parse_filter_expr(P, x);
    P->nest--;
    return x;
}

static const jnode *bin(parser *P, jop op, const jnode *a, const jnode *b)
{
    jnode *x = mk(P, N_BIN);
    x->op = (uint8_t)op;
    x->a = a;
    x->b = b;
    return x;
}

static const jnode *parse_pow(parser *P)
{
    const jnode *x = parse_unary(P, true);
    while (accept_op(P, "**")) x = bin(P, OP_POW, x, parse_unary(P, true));
    return x;
}

static const jnode *parse_math2(parser *P)
{
    const jnode *x = parse_pow(P);
    for (;;) {
        if (accept_op(P, "*")) x = bin(P, OP_MUL, x, parse_pow(P));
        else if (accept_op(P, "/")) x = bin(P, OP_DIV, x, parse_pow(P));
        else if (accept_op(P, "//")) x = bin(P, OP_FLOORDIV, x, parse_pow(P));
        else if (accept_op(P, "%")) x = bin(P, OP_MOD, x, parse_pow(P));
        else return x;
    }
}

static const jnode *parse_concat(parser *P)
{
    const jnode *x = parse_math2(P);
    while (accept_op(P, "~")) x = bin(P, OP_CONCAT, x, parse_math2(P));
    return x;
}

static const jnode *parse_math1(parser *P)
{
    const jnode *x = parse_concat(P);
    for (;;) {
        if (accept_op(P, "+")) x = bin(P, OP_ADD, x, parse_concat(P));
        else if (accept_op(P, "-")) x = bin(P, OP_SUB, x, parse_concat(P));
        else return x;
    }
}

static int cmp_op(parser *P)
{
    static const char *ops[] = {"==", "!=", "<", "<=", ">", ">="};
    static const jop codes[] = {OP_EQ, OP_NE, OP_LT, OP_LE, OP_GT, OP_GE};
    for (int i = 0; i < 6; i++)
        if (accept_op(P, ops[i])) return codes[i];
    if (accept_name(P, "in")) return OP_IN;
    if (is_name(P, "not") && tok_is(peek(P, 1), TK_NAME, "in")) {
        P->i += 2;
        return OP_NOTIN;
    }
    return -1;
}

static const jnode *parse_compare(parser *P)
{
    const jnode *first = parse_math1(P);
    nvec v = {0};
    uint8_t ops[64];
    size_t nops = 0;
    int op;
    while ((op = cmp_op(P)) >= 0) {
        if (nops == sizeof ops) jj_parse_fail(P->E, cur(P)->line, "comparison chain too long");
        if (!v.n) nv_push(P, &v, first);
        ops[nops++] = (uint8_t)op;
        nv_push(P, &v, parse_math1(P));
    }
    if (!nops) return first;
    jnode *x = mk(P, N_CMP);
    x->list = v.v;
    x->n = v.n;
    x->ops = jj_palloc(P->E, nops);
    memcpy(x->ops, ops, nops);
    return x;
}

static const jnode *parse_not(parser *P)
{
    if (is_name(P, "not") && !tok_is(peek(P, 1), TK_NAME, "in")) {
        P->i++;
        enter(P);
        jnode *x = mk(P, N_NOT);
        x->a = parse_not(P);
        P->nest--;
        return x;
    }
    return parse_compare(P);
}

static const jnode *parse_and(parser *P)
{
    const jnode *x = parse_not(P);
    while (accept_name(P, "and")) {
        jnode *y = mk(P, N_AND);
        y->a = x;
        y->b = parse_not(P);
        x = y;
    }
    return x;
}

static const jnode *parse_or(parser *P)
{
    const jnode *x = parse_and(P);
    while (accept_name(P, "or")) {
        jnode *y = mk(P, N_OR);
        y->a = x;
        y->b = parse_and(P);
        x = y;
    }
    return x;
}

static const jnode *parse_expr(parser *P)
{
    enter(P);
    const jnode *x = parse_or(P);
    while (accept_name(P, "if")) {
        jnode *y = mk(P, N_COND);
        y->a = parse_or(P);
        y->b = x;
        y->c = accept_name(P, "else") ? parse_expr(P) : NULL;
        x = y;
    }
    P->nest--;
    return x;
}

/* ---- statements ------------------------------------------------------------------ */

static const jnode *parse_body(parser *P, const char *const *ends, const char **which);

static void expect_block_end(parser *P)
{
    if (cur(P)->kind != TK_BLOCK_END) jj_parse_fail(P->E, cur(P)->line, "expected '%%}'");
    P->i++;
}

static void parse_targets(parser *P, jnode *x)
{
    svec names = {0};
    bool paren = accept_op(P, "(");
    do {
        sv_push(P, &names, expect_ident(P));
    } while (accept_op(P, ","));
    if (paren) expect_op(P, ")");
    x->names = names.v;
    x->nnames = names.n;
}

static const jnode *parse_for(parser *P)
{
    jnode *x = mk(P, N_FOR);
    parse_targets(P, x);
    if (!accept_name(P, "in")) jj_parse_fail(P->E, cur(P)->line, "expected 'in'");
    /* the iterable is a tuple-less expression without inline if (that is the filter) */
    x->a = parse_or(P);
    if (accept_name(P, "if")) x->c = parse_expr(P);
    if (accept_name(P, "recursive")) jj_parse_fail(P->E, x->line, "recursive loops are not supported");
    expect_block_end(P);
    static const char *const ends[] = {"endfor", "else", NULL};
    const char *which;
    x->b = parse_body(P, ends, &which);
    if (strcmp(which, "else") == 0) {
        static const char *const ends2[] = {"endfor", NULL};
        x->d = parse_body(P, ends2, &which);
    }
    return x;
}

static const jnode *parse_if(parser *P)
{
    jnode *x = mk(P, N_IF);
    x->a = parse_expr(P);
    expect_block_end(P);
    static const char *const ends[] = {"endif", "elif", "else", NULL};
    const char *which;
    x->b = parse_body(P, ends, &which);
    if (strcmp(which, "elif") == 0) {
        enter(P);
        x->c = parse_if(P); /* parse_if consumes up to and including endif */
        P->nest--;
    } else if (strcmp(which, "else") == 0) {
        static const char *const ends2[] = {"endif", NULL};
        x->c = parse_body(P, ends2, &which);
    }
    return x;
}

static const jnode *parse_set(parser *P)
{
    jnode *x = mk(P, N_SET);
    if (cur(P)->kind == TK_NAME && tok_is(peek(P, 1), TK_OP, ".")) {
        jnode *ns = mk(P, N_NAME);
        ns->name = expect_ident(P);
        ns->name_len = strlen(ns->name);
        P->i++;
        x->a = ns;
        x->name = expect_ident(P);
        x->name_len = strlen(x->name);
    } else {
        parse_targets(P, x);
    }
    if (accept_op(P, "=")) {
        x->b = parse_expr(P);
        if (is_op(P, ",")) { /* set a, b = 1, 2 */
            jnode *tup = mk(P, N_TUPLELIT);
            nvec v = {0};
            nv_push(P, &v, x->b);
            while (accept_op(P, ",")) nv_push(P, &v, parse_expr(P));
            tup->list = v.v;
            tup->n = v.n;
            x->b = tup;
        }
        expect_block_end(P);
        return x;
    }
    if (x->a || x->nnames != 1) jj_parse_fail(P->E, x->line, "a block set assigns one name");
    x->kind = N_SETBLOCK;
    if (accept_op(P, "|")) { /* {% set x | filter %} */
        jnode *f = mk(P, N_FILTER);
        f->name = expect_ident(P);
        if (is_op(P, "(")) parse_args(P, f);
        x->c = f;
    }
    expect_block_end(P);
    static const char *const ends[] = {"endset", NULL};
    const char *which;
    x->b = parse_body(P, ends, &which);
    return x;
}

static const jnode *parse_macro(parser *P)
{
    jnode *x = mk(P, N_MACRO);
    x->name = expect_ident(P);
    x->name_len = strlen(x->name);
    svec names = {0};
    nvec defs = {0};
    expect_op(P, "(");
    while (!accept_op(P, ")")) {
        if (names.n) expect_op(P, ",");
        if (accept_op(P, ")")) break;
        sv_push(P, &names, expect_ident(P));
        nv_push(P, &defs, accept_op(P, "=") ? parse_expr(P) : NULL);
    }
    x->names = names.v;
    x->nnames = names.n;
    x->list2 = defs.v;
    x->n2 = defs.n;
    expect_block_end(P);
    static const char *const ends[] = {"endmacro", NULL};
    const char *which;
    x->b = parse_body(P, ends, &which);
    return x;
}

static const jnode *parse_filter_block(parser *P)
{
    jnode *x = mk(P, N_FILTERBLOCK);
    jnode *f = mk(P, N_FILTER);
    f->name = expect_ident(P);
    if (is_op(P, "(")) parse_args(P, f);
    x->c = f;
    expect_block_end(P);
    static const char *const ends[] = {"endfilter", NULL};
    const char *which;
    x->b = parse_body(P, ends, &which);
    return x;
}

static const jnode *parse_statement(parser *P)
{
    const jtok *t = cur(P);
    enter(P);
    const jnode *x = NULL;
    if (accept_name(P, "for")) x = parse_for(P);
    else if (accept_name(P, "if")) x = parse_if(P);
    else if (accept_name(P, "set")) x = parse_set(P);
    else if (accept_name(P, "macro")) x = parse_macro(P);
    else if (accept_name(P, "filter")) x = parse_filter_block(P);
    else if (accept_name(P, "generation")) {
        expect_block_end(P);
        static const char *const ends[] = {"endgeneration", NULL};
        const char *which;
        x = parse_body(P, ends, &which);
    } else if (accept_name(P, "break") || accept_name(P, "continue")) {
        jnode *y = mk(P, tok_is(t, TK_NAME, "break") ? N_BREAK : N_CONTINUE);
        expect_block_end(P);
        x = y;
    } else if (t->kind == TK_NAME) {
        jj_parse_fail(P->E, t->line, "unsupported tag '%.*s'", (int)t->n, t->p);
    } else {
        jj_parse_fail(P->E, t->line, "expected a tag name");
    }
    P->nest--;
    return x;
}

/* Statements until one of ends (NULL-terminated; NULL ends = end of
 * template); the end tag is consumed and its name returned in *which. */
static const jnode *parse_body(parser *P, const char *const *ends, const char **which)
{
    jnode *body = mk(P, N_BODY);
    nvec v = {0};
    for (;;) {
        const jtok *t = cur(P);
        if (t->kind == TK_EOF) {
            if (ends) jj_parse_fail(P->E, t->line, "unexpected end of template, expected '%s'", ends[0]);
            *which = "";
            break;
        }
        if (t->kind == TK_DATA) {
            jnode *d = mk(P, N_DATA);
            d->name = t->p;
            d->name_len = t->n;
            nv_push(P, &v, d);
            P->i++;
            continue;
        }
        if (t->kind == TK_VAR_BEGIN) {
            P->i++;
            jnode *o = mk(P, N_OUT);
            o->a = parse_expr(P);
            if (cur(P)->kind != TK_VAR_END) jj_parse_fail(P->E, cur(P)->line, "expected '}}'");
            P->i++;
            nv_push(P, &v, o);
            continue;
        }
        if (t->kind != TK_BLOCK_BEGIN) jj_parse_fail(P->E, t->line, "unexpected token");
        P->i++;
        bool ended = false;
        for (size_t k = 0; ends && ends[k]; k++) {
            if (!is_name(P, ends[k])) continue;
            *which = ends[k];
            P->i++;
            if (strcmp(ends[k], "elif") != 0) expect_block_end(P);
            ended = true;
            break;
        }
        if (ended) break;
        nv_push(P, &v, parse_statement(P));
    }
    body->list = v.v;
    body->n = v.n;
    return body;
}

const jnode *jj_parse_tokens(jparse_env *E, const jtok *toks, size_t ntok)
{
    parser P = {.E = E, .t = toks, .n = ntok};
    const char *which;
    return parse_body(&P, NULL, &which);
}

eng_status eng_jinja_parse(const char *src, size_t len, eng_jinja **out, eng_jinja_error *err)
{
    eng_jinja_error scratch;
    if (!err) err = &scratch;
    memset(err, 0, sizeof *err);
    if (!out || (!src && len)) return ENG_EINVAL;
    *out = NULL;
    eng_jinja *t = eng__calloc(1, sizeof *t);
    if (!t) return ENG_ENOMEM;
    t->ar.limit = 256u << 20;
    jmp_buf jb;
    jparse_env E = {.ar = &t->ar, .jb = &jb, .err = err};
    int rc = setjmp(jb);
    if (rc) {
        jj_arena_free(&t->ar);
        free(t);
        return rc == 2 ? ENG_ENOMEM : ENG_EFORMAT;
    }
    size_t ntok;
    jtok *toks = jj_lex(&E, src ? src : "", len, &ntok);
    t->root = jj_parse_tokens(&E, toks, ntok);
    *out = t;
    return ENG_OK;
}

void eng_jinja_free(eng_jinja *t)
{
    if (!t) return;
    jj_arena_free(&t->ar);
    free(t);
}
