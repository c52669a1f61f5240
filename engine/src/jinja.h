/*
 * jinja.h - internals of the Jinja2-subset chat-template interpreter, shared
 * by its files: the value model (jinja_value.c), the lexer and parser
 * (jinja_lex.c, jinja_parse.c), the evaluator (jinja_eval.c) and the
 * filters, tests, methods and globals (jinja_builtins.c).
 *
 * DESIGN: every allocation of a parse or a render comes from one arena that
 * is freed as a whole, and errors unwind with longjmp to the entry point
 * (eng_jinja_parse / eng_jinja_render), which frees the arena. So no code in
 * between owns memory or checks for failure, and a template can never leak.
 */
#ifndef ORTHOSERVE_JINJA_H
#define ORTHOSERVE_JINJA_H

#include "orthoserve/engine.h"

#include <setjmp.h>
#include <stdarg.h>
#include <time.h>

/* ---- arena ---------------------------------------------------------------- */

typedef struct jchunk jchunk;
typedef struct {
    jchunk *head;
    size_t total, limit; /* bytes taken from malloc; 0 limit = none */
} jarena;

void *jj_arena_alloc(jarena *a, size_t n); /* 16-aligned, NULL on failure / limit */
void jj_arena_free(jarena *a);

/* ---- values ----------------------------------------------------------------- */

typedef enum {
    JV_UNDEF, JV_NONE, JV_BOOL, JV_INT, JV_FLOAT, JV_STR, JV_LIST, JV_DICT,
    JV_NS,     /* namespace(): a mutable dict reached by attribute */
    JV_MACRO,  /* a macro definition (u.node) */
    JV_FUNC,   /* a global function (u.i = JF_*) */
    JV_METHOD, /* a bound method (u.m) */
    JV_LOOP    /* the loop variable (u.loop) */
} jv_type;

typedef struct jlist jlist;
typedef struct jdict jdict;
typedef struct jnode jnode;
typedef struct jmethod jmethod;
typedef struct jloop jloop;

typedef struct jv {
    uint8_t t;
    uint8_t tuple; /* JV_LIST: a tuple, printed with parentheses */
    union {
        bool b;
        int64_t i;
        double f;
        struct { const char *p; size_t n; } s; /* JV_STR text; JV_UNDEF name (may be empty) */
        jlist *l;
        jdict *d;
        const jnode *node;
        jmethod *m;
        jloop *loop;
    } u;
} jv;

struct jlist { size_t n, cap; jv *v; };
struct jdict { size_t n, cap; jv *k, *v; };
struct jmethod { jv self; const char *name; };
struct jloop {
    jlist *items;
    size_t i; /* index0 */
    int depth;
};

struct eng_jinja_val { jv v; };

enum { JF_RAISE = 1, JF_STRFTIME, JF_NAMESPACE, JF_RANGE, JF_DICT };

static inline jv jv_undef(void) { jv v = {0}; v.t = JV_UNDEF; return v; }
static inline jv jv_none(void) { jv v = {0}; v.t = JV_NONE; return v; }
static inline jv jv_bool(bool b) { jv v = {0}; v.t = JV_BOOL; v.u.b = b; return v; }
static inline jv jv_int(int64_t i) { jv v = {0}; v.t = JV_INT; v.u.i = i; return v; }
static inline jv jv_float(double f) { jv v = {0}; v.t = JV_FLOAT; v.u.f = f; return v; }
static inline jv jv_strn(const char *p, size_t n) { jv v = {0}; v.t = JV_STR; v.u.s.p = p; v.u.s.n = n; return v; }

/* ---- the render context ------------------------------------------------------ */

typedef struct {
    char *p;
    size_t n, cap;
} jbuf;

typedef struct jscope jscope;
struct jscope {
    jscope *parent;
    jdict vars;
};

typedef struct jr {
    jarena *ar;
    bool oom;          /* malloc failed (as opposed to a limit) */
    jmp_buf jb;
    eng_jinja_error *err;
    eng_jinja_limits lim;
    uint64_t steps;
    uint32_t depth;
    struct timespec t0;
    jbuf *out;         /* where output goes (a macro call swaps in its own) */
    size_t out_total;  /* bytes written to every buffer, against max_output */
    jscope *globals;   /* top-level scope; its parent chain ends at the vars */
    const jdict *vars; /* the caller's variables */
    struct tm now;
    bool have_now;
    int line;          /* template line being evaluated, for messages */
} jr;

_Noreturn void jj_fail(jr *R, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
_Noreturn void jj_raise(jr *R, const char *msg, size_t n);
void *jj_alloc(jr *R, size_t n);
void jj_step(jr *R); /* counts a step, checks steps and time */

/* buffers (arena-grown) */
void jb_put(jr *R, jbuf *b, const char *s, size_t n);
static inline void jb_puts(jr *R, jbuf *b, const char *s) { size_t n = 0; while (s[n]) n++; jb_put(R, b, s, n); }
void jb_putc(jr *R, jbuf *b, char c);
void jb_printf(jr *R, jbuf *b, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
jv jb_str(jbuf *b);

/* containers */
jlist *jl_new(jr *R, size_t cap);
void jl_push(jr *R, jlist *l, jv v);
jv jv_list(jlist *l);
jdict *jd_new(jr *R);
void jd_set(jr *R, jdict *d, jv k, jv v);
bool jd_get(const jdict *d, jv k, jv *out);
bool jd_get_str(const jdict *d, const char *k, size_t n, jv *out);
bool jv_streq(jv v, const char *s);
jv jv_str_copy(jr *R, const char *p, size_t n);

/* Python semantics */
bool jv_truthy(jv v);
bool jv_eq(jr *R, jv a, jv b);
int jv_cmp(jr *R, jv a, jv b); /* <0, 0, >0; TypeError when unordered */
void jv_write_str(jr *R, jbuf *b, jv v);  /* str(v) */
void jv_write_repr(jr *R, jbuf *b, jv v); /* repr(v) */
jv jv_to_str(jr *R, jv v);
const char *jv_type_name(jv v);
void jv_write_json(jr *R, jbuf *b, jv v, int indent, const char *item_sep, const char *key_sep,
                   bool sort_keys, int level);
size_t jj_utf8_count(const char *p, size_t n);
bool jj_py_isspace(uint32_t cp);
uint32_t jj_utf8_next(const char *p, size_t n, size_t *i);

/* builtins (jinja_builtins.c); args are positional, kwargs are name/value pairs */
typedef struct {
    jv *pos;
    size_t npos;
    const char **kname;
    jv *kval;
    size_t nkw;
} jargs;

jv jj_filter(jr *R, const char *name, jv x, jargs *a);
bool jj_test(jr *R, const char *name, jv x, jargs *a);
bool jj_has_test(const char *name);
bool jj_has_filter(const char *name);
jv jj_title_filter(jr *R, jv s); /* jinja2's title filter (not str.title) */
jv jj_percent_format(jr *R, jv fmt, const jv *args, size_t nargs); /* Python's "fmt % args" */
jv jj_attr_path(jr *R, jv item, jv path); /* "a.b.0" as jinja2's attrgetter */
jv jj_call_method(jr *R, jmethod *m, jargs *a);
jv jj_call_func(jr *R, int fn, jargs *a);
bool jj_method_exists(jv self, const char *name);
jv jj_global(const char *name, size_t n, bool *found);
jv jj_iterate(jr *R, jv x); /* a JV_LIST of the items Python would iterate */

/* evaluator services the builtins use */
jv jj_getattr(jr *R, jv obj, const char *name, size_t n);
jv jj_getitem(jr *R, jv obj, jv key);
jv jj_call(jr *R, jv callee, jargs *a);

/* ---- AST ----------------------------------------------------------------------- */

typedef enum {
    /* expressions */
    N_LIT, N_NAME, N_LISTLIT, N_TUPLELIT, N_DICTLIT, N_ATTR, N_ITEM, N_SLICE, N_CALL, N_FILTER,
    N_TEST, N_BIN, N_NEG, N_POS, N_NOT, N_AND, N_OR, N_COND, N_CMP,
    /* statements */
    N_DATA, N_OUT, N_IF, N_FOR, N_SET, N_SETBLOCK, N_MACRO, N_BREAK, N_CONTINUE, N_BODY,
    N_FILTERBLOCK
} jnode_kind;

typedef enum {
    OP_ADD, OP_SUB, OP_MUL, OP_DIV, OP_FLOORDIV, OP_MOD, OP_POW, OP_CONCAT,
    OP_EQ, OP_NE, OP_LT, OP_LE, OP_GT, OP_GE, OP_IN, OP_NOTIN
} jop;

struct jnode {
    uint8_t kind, op;
    bool neg;             /* N_TEST: "is not" */
    int line;
    const jnode *a, *b, *c, *d;
    const jnode **list;   /* arguments, elements, keys, body */
    size_t n;
    const jnode **list2;  /* kwarg values, dict values, else body, macro defaults */
    size_t n2;
    uint8_t *ops;         /* N_CMP: the operators between list[i] and list[i+1] */
    const char *name;     /* identifier, filter/test name, text of N_DATA */
    size_t name_len;
    const char **names;   /* kwarg names, loop/set targets, macro params */
    size_t nnames;
    jv lit;
};

struct eng_jinja {
    jarena ar;
    const jnode *root; /* N_BODY */
};

/* lexer */
typedef enum {
    TK_EOF, TK_DATA, TK_VAR_BEGIN, TK_VAR_END, TK_BLOCK_BEGIN, TK_BLOCK_END,
    TK_NAME, TK_STRING, TK_INT, TK_FLOAT, TK_OP
} jtok_kind;

typedef struct {
    uint8_t kind;
    int line;
    const char *p; /* text (TK_DATA, TK_NAME, TK_STRING decoded, TK_OP) */
    size_t n;
    int64_t i;
    double f;
} jtok;

typedef struct {
    jarena *ar;
    jmp_buf *jb;
    eng_jinja_error *err;
} jparse_env;

_Noreturn void jj_parse_fail(jparse_env *E, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void *jj_palloc(jparse_env *E, size_t n);
jtok *jj_lex(jparse_env *E, const char *src, size_t len, size_t *ntok);
const jnode *jj_parse_tokens(jparse_env *E, const jtok *toks, size_t ntok);

#endif
