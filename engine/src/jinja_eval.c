/*
 * jinja_eval.c - the Jinja evaluator: statements and expressions over the
 * AST with jinja2's scoping (a for body is a new scope per iteration, if is
 * not, macros see the top level), attribute/item lookup with Undefined,
 * Python's operators, macro calls, the limits, and eng_jinja_render.
 */
#include "jinja.h"
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { FLOW_NORMAL, FLOW_BREAK, FLOW_CONTINUE };

_Noreturn void jj_fail(jr *R, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int k = snprintf(R->err->msg, sizeof R->err->msg, "line %d: ", R->line);
    if (k < 0 || (size_t)k >= sizeof R->err->msg) k = 0;
    vsnprintf(R->err->msg + k, sizeof R->err->msg - (size_t)k, fmt, ap);
    va_end(ap);
    longjmp(R->jb, 1);
}

_Noreturn void jj_raise(jr *R, const char *msg, size_t n)
{
    if (n >= sizeof R->err->msg) n = sizeof R->err->msg - 1;
    memcpy(R->err->msg, msg, n);
    R->err->msg[n] = 0;
    R->err->raised = true;
    longjmp(R->jb, 1);
}

void *jj_alloc(jr *R, size_t n)
{
    void *p = jj_arena_alloc(R->ar, n);
    if (p) return p;
    if (R->ar->limit && R->ar->total + n + 65536 + 64 > R->ar->limit)
        jj_fail(R, "memory limit exceeded (%zu bytes)", R->ar->limit);
    R->oom = true;
    jj_fail(R, "out of memory");
}

static uint64_t elapsed_ms(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)(t.tv_sec - t0->tv_sec) * 1000u + (uint64_t)((t.tv_nsec - t0->tv_nsec) / 1000000);
}

void jj_step(jr *R)
{
    if (++R->steps > R->lim.max_steps) jj_fail(R, "step limit exceeded (%llu)", (unsigned long long)R->lim.max_steps);
    if ((R->steps & 255) == 0 && elapsed_ms(&R->t0) > R->lim.max_ms)
        jj_fail(R, "time limit exceeded (%u ms)", R->lim.max_ms);
}

/* ---- scopes ------------------------------------------------------------------ */

static jscope *scope_new(jr *R, jscope *parent)
{
    jscope *s = jj_alloc(R, sizeof *s);
    memset(s, 0, sizeof *s);
    s->parent = parent;
    return s;
}

static void scope_set(jr *R, jscope *s, const char *name, jv v)
{
    jd_set(R, &s->vars, jv_strn(name, strlen(name)), v);
}

static jv lookup(jr *R, jscope *s, const char *name, size_t n)
{
    jv v;
    for (; s; s = s->parent)
        if (jd_get_str(&s->vars, name, n, &v)) return v;
    if (jd_get_str(R->vars, name, n, &v)) return v;
    bool found;
    v = jj_global(name, n, &found);
    if (found) return v;
    jv u = jv_undef();
    u.u.s.p = name;
    u.u.s.n = n;
    return u;
}

static _Noreturn void undefined_fail(jr *R, jv u)
{
    if (u.u.s.n) jj_fail(R, "UndefinedError: '%.*s' is undefined", (int)u.u.s.n, u.u.s.p);
    jj_fail(R, "UndefinedError: an undefined value was used");
}

static jv undef_named(const char *name, size_t n)
{
    jv u = jv_undef();
    u.u.s.p = name;
    u.u.s.n = n;
    return u;
}

/* ---- lookup ------------------------------------------------------------------- */

static jv loop_attr(jr *R, jloop *L, const char *name, size_t n, bool *found)
{
    size_t len = L->items->n, i = L->i;
    *found = true;
#define IS(s) (n == sizeof(s) - 1 && memcmp(name, s, n) == 0)
    if (IS("index")) return jv_int((int64_t)i + 1);
    if (IS("index0")) return jv_int((int64_t)i);
    if (IS("revindex")) return jv_int((int64_t)(len - i));
    if (IS("revindex0")) return jv_int((int64_t)(len - i - 1));
    if (IS("first")) return jv_bool(i == 0);
    if (IS("last")) return jv_bool(i + 1 == len);
    if (IS("length")) return jv_int((int64_t)len);
    if (IS("depth")) return jv_int(L->depth);
    if (IS("depth0")) return jv_int(L->depth - 1);
    if (IS("previtem")) return i ? L->items->v[i - 1] : undef_named("previtem", 8);
    if (IS("nextitem")) return i + 1 < len ? L->items->v[i + 1] : undef_named("nextitem", 8);
#undef IS
    (void)R;
    *found = false;
    return jv_undef();
}

static jv bound_method(jr *R, jv self, const char *name, size_t n)
{
    jmethod *m = jj_alloc(R, sizeof *m);
    m->self = self;
    char *s = jj_alloc(R, n + 1);
    memcpy(s, name, n);
    s[n] = 0;
    m->name = s;
    jv v = {0};
    v.t = JV_METHOD;
    v.u.m = m;
    return v;
}

static bool name_is_method(jv self, const char *name, size_t n)
{
    char tmp[32];
    if (n >= sizeof tmp) return false;
    memcpy(tmp, name, n);
    tmp[n] = 0;
    return jj_method_exists(self, tmp);
}

jv jj_getattr(jr *R, jv obj, const char *name, size_t n)
{
    jv v;
    switch (obj.t) {
    case JV_UNDEF: undefined_fail(R, obj);
    case JV_DICT:
        if (name_is_method(obj, name, n)) return bound_method(R, obj, name, n);
        if (jd_get_str(obj.u.d, name, n, &v)) return v;
        break;
    case JV_NS:
        if (jd_get_str(obj.u.d, name, n, &v)) return v;
        break;
    case JV_LOOP: {
        bool found;
        v = loop_attr(R, obj.u.loop, name, n, &found);
        if (found) return v;
        if (n == 5 && memcmp(name, "cycle", 5) == 0) return bound_method(R, obj, name, n);
        break;
    }
    case JV_STR: case JV_LIST:
        if (name_is_method(obj, name, n)) return bound_method(R, obj, name, n);
        break;
    default: break;
    }
    return undef_named(name, n);
}

/* Python index (negative from the end) to a position, or -1 if out of range. */
static ptrdiff_t py_index(int64_t i, size_t len)
{
    if (i < 0) i += (int64_t)len;
    return i < 0 || (uint64_t)i >= len ? -1 : (ptrdiff_t)i;
}

static jv str_char_at(jr *R, jv s, int64_t idx)
{
    size_t len = jj_utf8_count(s.u.s.p, s.u.s.n);
    ptrdiff_t k = py_index(idx, len);
    if (k < 0) return jv_undef();
    size_t i = 0;
    for (ptrdiff_t c = 0; c < k; c++) jj_utf8_next(s.u.s.p, s.u.s.n, &i);
    size_t st = i;
    jj_utf8_next(s.u.s.p, s.u.s.n, &i);
    (void)R;
    return jv_strn(s.u.s.p + st, i - st);
}

jv jj_getitem(jr *R, jv obj, jv key)
{
    jv v;
    bool int_key = key.t == JV_INT || key.t == JV_BOOL;
    int64_t ik = key.t == JV_INT ? key.u.i : key.t == JV_BOOL ? key.u.b : 0;
    switch (obj.t) {
    case JV_UNDEF: undefined_fail(R, obj);
    case JV_DICT:
        if (jd_get(obj.u.d, key, &v)) return v;
        break;
    case JV_LIST:
        if (int_key) {
            ptrdiff_t k = py_index(ik, obj.u.l->n);
            return k < 0 ? jv_undef() : obj.u.l->v[k];
        }
        break;
    case JV_STR:
        if (int_key) return str_char_at(R, obj, ik);
        break;
    default: break;
    }
    if (key.t == JV_STR) return jj_getattr(R, obj, key.u.s.p, key.u.s.n);
    return jv_undef();
}

/* Python slice bounds for a sequence of len items. */
static void slice_bounds(jr *R, jv a, jv b, jv c, size_t len, int64_t *start, int64_t *stop, int64_t *step)
{
    int64_t n = (int64_t)len;
    *step = 1;
    if (c.t == JV_INT) *step = c.u.i;
    else if (c.t != JV_NONE && c.t != JV_UNDEF) jj_fail(R, "TypeError: slice indices must be integers");
    if (*step == 0) jj_fail(R, "ValueError: slice step cannot be zero");
    int64_t lo = *step < 0 ? -1 : 0, hi = *step < 0 ? n - 1 : n;
    int64_t *out[2] = {start, stop};
    jv in[2] = {a, b};
    for (int k = 0; k < 2; k++) {
        if (in[k].t == JV_NONE || in[k].t == JV_UNDEF) {
            *out[k] = (*step < 0) == (k == 0) ? hi : lo;
            continue;
        }
        if (in[k].t != JV_INT && in[k].t != JV_BOOL) jj_fail(R, "TypeError: slice indices must be integers");
        int64_t v = in[k].t == JV_INT ? in[k].u.i : in[k].u.b;
        if (v < 0) v = v + n < lo ? lo : v + n;
        else if (v > hi) v = hi;
        *out[k] = v;
    }
}

static jv do_slice(jr *R, jv obj, jv a, jv b, jv c)
{
    int64_t start, stop, step;
    if (obj.t == JV_UNDEF) undefined_fail(R, obj);
    if (obj.t == JV_LIST) {
        slice_bounds(R, a, b, c, obj.u.l->n, &start, &stop, &step);
        jlist *l = jl_new(R, 0);
        for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) jl_push(R, l, obj.u.l->v[i]);
        jv r = jv_list(l);
        r.tuple = obj.tuple;
        return r;
    }
    if (obj.t == JV_STR) {
        size_t len = jj_utf8_count(obj.u.s.p, obj.u.s.n);
        size_t *off = jj_alloc(R, (len + 1) * sizeof *off);
        size_t i = 0;
        for (size_t k = 0; k < len; k++) {
            off[k] = i;
            jj_utf8_next(obj.u.s.p, obj.u.s.n, &i);
        }
        off[len] = obj.u.s.n;
        slice_bounds(R, a, b, c, len, &start, &stop, &step);
        if (step == 1) return jv_strn(obj.u.s.p + off[start], start < stop ? off[stop] - off[start] : 0);
        jbuf out = {0};
        for (int64_t k = start; step > 0 ? k < stop : k > stop; k += step)
            jb_put(R, &out, obj.u.s.p + off[k], off[k + 1] - off[k]);
        return jb_str(&out);
    }
    return jv_undef();
}

/* ---- operators ------------------------------------------------------------------ */

static bool is_int(jv v) { return v.t == JV_INT || v.t == JV_BOOL; }
static bool is_num(jv v) { return is_int(v) || v.t == JV_FLOAT; }
static int64_t as_int(jv v) { return v.t == JV_INT ? v.u.i : v.u.b; }
static double as_f(jv v) { return v.t == JV_FLOAT ? v.u.f : (double)as_int(v); }

static _Noreturn void type_error(jr *R, const char *op, jv a, jv b)
{
    if (a.t == JV_UNDEF) undefined_fail(R, a);
    if (b.t == JV_UNDEF) undefined_fail(R, b);
    jj_fail(R, "TypeError: unsupported operand type(s) for %s: '%s' and '%s'", op, jv_type_name(a),
            jv_type_name(b));
}

static jv repeat(jr *R, jv seq, int64_t k)
{
    if (k < 0) k = 0;
    size_t unit = seq.t == JV_STR ? seq.u.s.n : seq.u.l->n * sizeof(jv);
    if (unit && (uint64_t)k > R->lim.max_output / unit) jj_fail(R, "repetition result too large");
    if (seq.t == JV_STR) {
        jbuf b = {0};
        for (int64_t i = 0; i < k; i++) jb_put(R, &b, seq.u.s.p, seq.u.s.n);
        return jb_str(&b);
    }
    jlist *l = jl_new(R, 0);
    for (int64_t i = 0; i < k; i++)
        for (size_t j = 0; j < seq.u.l->n; j++) jl_push(R, l, seq.u.l->v[j]);
    jv r = jv_list(l);
    r.tuple = seq.tuple;
    return r;
}

static jv arith_int(jr *R, jop op, int64_t x, int64_t y)
{
    int64_t r;
    switch (op) {
    case OP_ADD: if (__builtin_add_overflow(x, y, &r)) goto ovf; return jv_int(r);
    case OP_SUB: if (__builtin_sub_overflow(x, y, &r)) goto ovf; return jv_int(r);
    case OP_MUL: if (__builtin_mul_overflow(x, y, &r)) goto ovf; return jv_int(r);
    case OP_FLOORDIV: case OP_MOD: {
        if (y == 0) jj_fail(R, "ZeroDivisionError: integer division or modulo by zero");
        if (x == INT64_MIN && y == -1) goto ovf;
        int64_t q = x / y, m = x % y;
        if (m != 0 && ((m < 0) != (y < 0))) { q--; m += y; }
        return jv_int(op == OP_MOD ? m : q);
    }
    case OP_POW:
        if (y < 0) return jv_float(pow((double)x, (double)y));
        r = 1;
        for (int64_t i = 0; i < y; i++) {
            if (__builtin_mul_overflow(r, x, &r)) goto ovf;
            if (r == 0 || r == 1) break;
        }
        return jv_int(r);
    default: break;
    }
ovf:
    jj_fail(R, "OverflowError: integer result out of range");
}

static jv arith(jr *R, jop op, jv a, jv b)
{
    static const char *sym[] = {"+", "-", "*", "/", "//", "%", "**"};
    if (is_num(a) && is_num(b)) {
        if (op == OP_DIV) {
            if (as_f(b) == 0.0) jj_fail(R, "ZeroDivisionError: division by zero");
            return jv_float(as_f(a) / as_f(b));
        }
        if (is_int(a) && is_int(b)) return arith_int(R, op, as_int(a), as_int(b));
        double x = as_f(a), y = as_f(b);
        switch (op) {
        case OP_ADD: return jv_float(x + y);
        case OP_SUB: return jv_float(x - y);
        case OP_MUL: return jv_float(x * y);
        case OP_POW: return jv_float(pow(x, y));
        default:
            if (y == 0.0) jj_fail(R, "ZeroDivisionError: float modulo");
            double q = floor(x / y);
            return jv_float(op == OP_MOD ? x - q * y : q);
        }
    }
    if (op == OP_ADD && a.t == JV_STR && b.t == JV_STR) {
        jbuf o = {0};
        jb_put(R, &o, a.u.s.p, a.u.s.n);
        jb_put(R, &o, b.u.s.p, b.u.s.n);
        return jb_str(&o);
    }
    if (op == OP_ADD && a.t == JV_LIST && b.t == JV_LIST && a.tuple == b.tuple) {
        jlist *l = jl_new(R, a.u.l->n + b.u.l->n);
        for (size_t i = 0; i < a.u.l->n; i++) jl_push(R, l, a.u.l->v[i]);
        for (size_t i = 0; i < b.u.l->n; i++) jl_push(R, l, b.u.l->v[i]);
        jv r = jv_list(l);
        r.tuple = a.tuple;
        return r;
    }
    if (op == OP_MOD && a.t == JV_STR) /* "%s: %d" % (x, y) */
        return b.t == JV_LIST && b.tuple ? jj_percent_format(R, a, b.u.l->v, b.u.l->n) : jj_percent_format(R, a, &b, 1);
    if (op == OP_MUL && (a.t == JV_STR || a.t == JV_LIST) && is_int(b)) return repeat(R, a, as_int(b));
    if (op == OP_MUL && (b.t == JV_STR || b.t == JV_LIST) && is_int(a)) return repeat(R, b, as_int(a));
    type_error(R, sym[op], a, b);
}

static bool contains(jr *R, jv hay, jv needle)
{
    switch (hay.t) {
    case JV_UNDEF: return false;
    case JV_STR:
        if (needle.t != JV_STR)
            jj_fail(R, "TypeError: 'in <string>' requires string as left operand, not %s", jv_type_name(needle));
        if (!needle.u.s.n) return true;
        return memmem(hay.u.s.p, hay.u.s.n, needle.u.s.p, needle.u.s.n) != NULL;
    case JV_DICT: case JV_NS: {
        jv v;
        return jd_get(hay.u.d, needle, &v);
    }
    case JV_LIST:
        for (size_t i = 0; i < hay.u.l->n; i++)
            if (jv_eq(R, hay.u.l->v[i], needle)) return true;
        return false;
    default: jj_fail(R, "TypeError: argument of type '%s' is not iterable", jv_type_name(hay));
    }
}

static bool compare(jr *R, jop op, jv a, jv b)
{
    switch (op) {
    case OP_EQ: return jv_eq(R, a, b);
    case OP_NE: return !jv_eq(R, a, b);
    case OP_IN: return contains(R, b, a);
    case OP_NOTIN: return !contains(R, b, a);
    case OP_LT: return jv_cmp(R, a, b) < 0;
    case OP_LE: return jv_cmp(R, a, b) <= 0;
    case OP_GT: return jv_cmp(R, a, b) > 0;
    default: return jv_cmp(R, a, b) >= 0;
    }
}

/* ---- expressions ------------------------------------------------------------------ */

static jv eval(jr *R, jscope *S, const jnode *x);
static int exec_body(jr *R, jscope *S, const jnode *body);

static void eval_args(jr *R, jscope *S, const jnode *x, jv *first, jargs *a)
{
    size_t extra = first ? 1 : 0;
    a->npos = x->n + extra;
    a->pos = jj_alloc(R, (a->npos + 1) * sizeof(jv));
    if (first) a->pos[0] = *first;
    for (size_t i = 0; i < x->n; i++) a->pos[i + extra] = eval(R, S, x->list[i]);
    a->nkw = x->n2;
    a->kname = (const char **)x->names;
    a->kval = jj_alloc(R, (x->n2 + 1) * sizeof(jv));
    for (size_t i = 0; i < x->n2; i++) a->kval[i] = eval(R, S, x->list2[i]);
}

static jv call_macro(jr *R, const jnode *m, jargs *a)
{
    if (a->npos > m->nnames)
        jj_fail(R, "TypeError: macro '%s' takes not more than %zu argument(s)", m->name, m->nnames);
    if (++R->depth > R->lim.max_depth) jj_fail(R, "recursion limit exceeded (%u nested calls)", R->lim.max_depth);
    jscope *M = scope_new(R, R->globals);
    for (size_t i = 0; i < a->nkw; i++) {
        size_t k = 0;
        while (k < m->nnames && strcmp(m->names[k], a->kname[i]) != 0) k++;
        if (k == m->nnames) jj_fail(R, "TypeError: macro '%s' takes no keyword argument '%s'", m->name, a->kname[i]);
        if (k < a->npos) jj_fail(R, "TypeError: macro '%s' got multiple values for '%s'", m->name, a->kname[i]);
    }
    for (size_t k = 0; k < m->nnames; k++) {
        jv v = jv_undef();
        bool set = false;
        if (k < a->npos) {
            v = a->pos[k];
            set = true;
        }
        for (size_t i = 0; !set && i < a->nkw; i++)
            if (strcmp(m->names[k], a->kname[i]) == 0) {
                v = a->kval[i];
                set = true;
            }
        if (!set) v = m->list2[k] ? eval(R, M, m->list2[k]) : undef_named(m->names[k], strlen(m->names[k]));
        scope_set(R, M, m->names[k], v);
    }
    jbuf buf = {0}, *saved = R->out;
    R->out = &buf;
    exec_body(R, M, m->b);
    R->out = saved;
    R->depth--;
    return jb_str(&buf);
}

jv jj_call(jr *R, jv callee, jargs *a)
{
    jj_step(R);
    switch (callee.t) {
    case JV_MACRO: return call_macro(R, callee.u.node, a);
    case JV_FUNC: return jj_call_func(R, (int)callee.u.i, a);
    case JV_METHOD: return jj_call_method(R, callee.u.m, a);
    case JV_UNDEF: undefined_fail(R, callee);
    default: jj_fail(R, "TypeError: '%s' object is not callable", jv_type_name(callee));
    }
}

static jv eval_filter(jr *R, jscope *S, const jnode *x, jv operand)
{
    jargs a;
    eval_args(R, S, x, NULL, &a);
    jj_step(R);
    return jj_filter(R, x->name, operand, &a);
}

static jv eval_collection(jr *R, jscope *S, const jnode *x)
{
    if (x->kind == N_DICTLIT) {
        jdict *d = jd_new(R);
        for (size_t i = 0; i < x->n; i++) {
            jv k = eval(R, S, x->list[i]);
            if (k.t == JV_LIST && !k.tuple) jj_fail(R, "TypeError: unhashable type: 'list'");
            if (k.t == JV_DICT) jj_fail(R, "TypeError: unhashable type: 'dict'");
            jd_set(R, d, k, eval(R, S, x->list2[i]));
        }
        jv v = {0};
        v.t = JV_DICT;
        v.u.d = d;
        return v;
    }
    jlist *l = jl_new(R, x->n);
    for (size_t i = 0; i < x->n; i++) jl_push(R, l, eval(R, S, x->list[i]));
    jv v = jv_list(l);
    v.tuple = x->kind == N_TUPLELIT;
    return v;
}

static jv eval_cmp(jr *R, jscope *S, const jnode *x)
{
    jv a = eval(R, S, x->list[0]);
    for (size_t i = 1; i < x->n; i++) {
        jv b = eval(R, S, x->list[i]);
        if (!compare(R, (jop)x->ops[i - 1], a, b)) return jv_bool(false);
        a = b;
    }
    return jv_bool(true);
}

static jv eval_neg(jr *R, jv v, bool neg)
{
    if (v.t == JV_FLOAT) return jv_float(neg ? -v.u.f : v.u.f);
    if (is_int(v)) {
        if (neg && as_int(v) == INT64_MIN) jj_fail(R, "OverflowError: integer result out of range");
        return jv_int(neg ? -as_int(v) : as_int(v));
    }
    if (v.t == JV_UNDEF) undefined_fail(R, v);
    jj_fail(R, "TypeError: bad operand type for unary %c: '%s'", neg ? '-' : '+', jv_type_name(v));
}

static jv eval(jr *R, jscope *S, const jnode *x)
{
    R->line = x->line;
    switch ((jnode_kind)x->kind) {
    case N_LIT: return x->lit;
    case N_NAME: return lookup(R, S, x->name, x->name_len);
    case N_LISTLIT: case N_TUPLELIT: case N_DICTLIT: return eval_collection(R, S, x);
    case N_ATTR: return jj_getattr(R, eval(R, S, x->a), x->name, x->name_len);
    case N_ITEM: {
        jv o = eval(R, S, x->a);
        return jj_getitem(R, o, eval(R, S, x->b));
    }
    case N_SLICE: {
        jv o = eval(R, S, x->a);
        jv a = x->b ? eval(R, S, x->b) : jv_none(), b = x->c ? eval(R, S, x->c) : jv_none();
        return do_slice(R, o, a, b, x->d ? eval(R, S, x->d) : jv_none());
    }
    case N_CALL: {
        jv f = eval(R, S, x->a);
        jargs a;
        eval_args(R, S, x, NULL, &a);
        return jj_call(R, f, &a);
    }
    case N_FILTER: return eval_filter(R, S, x, eval(R, S, x->a));
    case N_TEST: {
        jv v = eval(R, S, x->a);
        jargs a;
        eval_args(R, S, x, NULL, &a);
        return jv_bool(jj_test(R, x->name, v, &a) != x->neg);
    }
    case N_BIN: {
        jv a = eval(R, S, x->a), b = eval(R, S, x->b);
        if (x->op == OP_CONCAT) {
            jbuf o = {0};
            jv_write_str(R, &o, a);
            jv_write_str(R, &o, b);
            return jb_str(&o);
        }
        return arith(R, (jop)x->op, a, b);
    }
    case N_NEG: case N_POS: return eval_neg(R, eval(R, S, x->a), x->kind == N_NEG);
    case N_NOT: return jv_bool(!jv_truthy(eval(R, S, x->a)));
    case N_AND: {
        jv a = eval(R, S, x->a);
        return jv_truthy(a) ? eval(R, S, x->b) : a;
    }
    case N_OR: {
        jv a = eval(R, S, x->a);
        return jv_truthy(a) ? a : eval(R, S, x->b);
    }
    case N_COND:
        if (jv_truthy(eval(R, S, x->a))) return eval(R, S, x->b);
        return x->c ? eval(R, S, x->c) : jv_undef();
    case N_CMP: return eval_cmp(R, S, x);
    default: jj_fail(R, "internal error: statement used as an expression");
    }
}

/* ---- statements ------------------------------------------------------------------ */

static void bind_targets(jr *R, jscope *S, const jnode *x, jv v)
{
    if (x->nnames == 1) {
        scope_set(R, S, x->names[0], v);
        return;
    }
    jv items = jj_iterate(R, v);
    if (items.u.l->n != x->nnames)
        jj_fail(R, "ValueError: cannot unpack %zu values into %zu names", items.u.l->n, x->nnames);
    for (size_t i = 0; i < x->nnames; i++) scope_set(R, S, x->names[i], items.u.l->v[i]);
}

static void exec_for(jr *R, jscope *S, const jnode *x)
{
    jv seq = jj_iterate(R, eval(R, S, x->a));
    jlist *items = seq.u.l;
    if (x->c) { /* the loop filter sees each item, not the loop variable */
        jlist *kept = jl_new(R, items->n);
        for (size_t i = 0; i < items->n; i++) {
            jj_step(R);
            jscope *F = scope_new(R, S);
            bind_targets(R, F, x, items->v[i]);
            if (jv_truthy(eval(R, F, x->c))) jl_push(R, kept, items->v[i]);
        }
        items = kept;
    }
    jloop *L = jj_alloc(R, sizeof *L);
    L->items = items;
    L->depth = 1; /* depth counts recursive loops only, which are not supported */
    jv lv = {0};
    lv.t = JV_LOOP;
    lv.u.loop = L;
    for (L->i = 0; L->i < items->n; L->i++) {
        jj_step(R);
        jscope *I = scope_new(R, S);
        bind_targets(R, I, x, items->v[L->i]);
        scope_set(R, I, "loop", lv);
        if (exec_body(R, I, x->b) == FLOW_BREAK) break;
    }
    if (!items->n && x->d) exec_body(R, S, x->d);
}

static void exec_set(jr *R, jscope *S, const jnode *x)
{
    if (x->kind == N_SETBLOCK) {
        jbuf buf = {0}, *saved = R->out;
        R->out = &buf;
        exec_body(R, S, x->b);
        R->out = saved;
        jv v = jb_str(&buf);
        if (x->c) v = eval_filter(R, S, x->c, v);
        scope_set(R, S, x->names[0], v);
        return;
    }
    jv v = eval(R, S, x->b);
    if (x->a) {
        jv ns = eval(R, S, x->a);
        if (ns.t != JV_NS) jj_fail(R, "TemplateRuntimeError: cannot assign attribute on non-namespace object");
        jd_set(R, ns.u.d, jv_strn(x->name, x->name_len), v);
        return;
    }
    bind_targets(R, S, x, v);
}

static int exec_stmt(jr *R, jscope *S, const jnode *x)
{
    R->line = x->line;
    switch ((jnode_kind)x->kind) {
    case N_DATA: jb_put(R, R->out, x->name, x->name_len); return FLOW_NORMAL;
    case N_OUT: {
        jj_step(R);
        jv v = eval(R, S, x->a);
        jv_write_str(R, R->out, v);
        return FLOW_NORMAL;
    }
    case N_IF:
        if (jv_truthy(eval(R, S, x->a))) return exec_body(R, S, x->b);
        if (!x->c) return FLOW_NORMAL;
        return x->c->kind == N_IF ? exec_stmt(R, S, x->c) : exec_body(R, S, x->c);
    case N_FOR: exec_for(R, S, x); return FLOW_NORMAL;
    case N_SET: case N_SETBLOCK: exec_set(R, S, x); return FLOW_NORMAL;
    case N_MACRO: {
        jv m = {0};
        m.t = JV_MACRO;
        m.u.node = x;
        scope_set(R, S, x->name, m);
        return FLOW_NORMAL;
    }
    case N_BREAK: return FLOW_BREAK;
    case N_CONTINUE: return FLOW_CONTINUE;
    case N_BODY: return exec_body(R, S, x);
    case N_FILTERBLOCK: {
        jbuf buf = {0}, *saved = R->out;
        R->out = &buf;
        exec_body(R, S, x->b);
        R->out = saved;
        jv_write_str(R, R->out, eval_filter(R, S, x->c, jb_str(&buf)));
        return FLOW_NORMAL;
    }
    default: jj_fail(R, "internal error: expression used as a statement");
    }
}

static int exec_body(jr *R, jscope *S, const jnode *body)
{
    for (size_t i = 0; i < body->n; i++) {
        int f = exec_stmt(R, S, body->list[i]);
        if (f != FLOW_NORMAL) return f;
    }
    return FLOW_NORMAL;
}

/* ---- entry ------------------------------------------------------------------------ */

eng_jinja_limits eng_jinja_default_limits(void)
{
    eng_jinja_limits l = {
        .max_output = 4u << 20, .max_memory = 64u << 20, .max_depth = 64, .max_steps = 2000000, .max_ms = 2000};
    return l;
}

static void apply_limits(jr *R, const eng_jinja_limits *lim)
{
    eng_jinja_limits d = eng_jinja_default_limits();
    R->lim = lim ? *lim : d;
    if (!R->lim.max_output) R->lim.max_output = d.max_output;
    if (!R->lim.max_memory) R->lim.max_memory = d.max_memory;
    if (!R->lim.max_depth) R->lim.max_depth = d.max_depth;
    if (!R->lim.max_steps) R->lim.max_steps = d.max_steps;
    if (!R->lim.max_ms) R->lim.max_ms = d.max_ms;
}

static bool parse_now(const char *s, struct tm *tm)
{
    int Y, M, D, h, m, sec;
    char tail;
    if (sscanf(s, "%d-%d-%d %d:%d:%d%c", &Y, &M, &D, &h, &m, &sec, &tail) != 6) return false;
    if (M < 1 || M > 12 || D < 1 || D > 31 || h < 0 || h > 23 || m < 0 || m > 59 || sec < 0 || sec > 60)
        return false;
    memset(tm, 0, sizeof *tm);
    tm->tm_year = Y - 1900;
    tm->tm_mon = M - 1;
    tm->tm_mday = D;
    tm->tm_hour = h;
    tm->tm_min = m;
    tm->tm_sec = sec;
    tm->tm_isdst = -1;
    time_t t = timegm(tm); /* normalises the weekday and day of the year */
    gmtime_r(&t, tm);
    return true;
}

struct eng_jinja_vars {
    jarena ar;
    jdict vars;
};

eng_status eng_jinja_render(const eng_jinja *t, const eng_jinja_vars *v, const eng_jinja_limits *lim,
                            char **out, size_t *out_len, eng_jinja_error *err)
{
    eng_jinja_error scratch;
    if (!err) err = &scratch;
    memset(err, 0, sizeof *err);
    if (!t || !out) return ENG_EINVAL;
    *out = NULL;
    if (out_len) *out_len = 0;
    jr *R = eng__calloc(1, sizeof *R);
    jarena ar = {0};
    if (!R) return ENG_ENOMEM;
    apply_limits(R, lim);
    ar.limit = R->lim.max_memory;
    R->ar = &ar;
    R->err = err;
    if (R->lim.now) {
        if (!parse_now(R->lim.now, &R->now)) {
            snprintf(err->msg, sizeof err->msg, "bad fixed time '%s' (want YYYY-MM-DD HH:MM:SS)", R->lim.now);
            free(R);
            return ENG_EINVAL;
        }
        R->have_now = true;
    }
    static const jdict empty;
    R->vars = v ? &v->vars : &empty;
    clock_gettime(CLOCK_MONOTONIC, &R->t0);
    if (setjmp(R->jb)) {
        eng_status st = R->oom ? ENG_ENOMEM : ENG_EINVAL;
        jj_arena_free(&ar);
        free(R);
        return st;
    }
    jbuf buf = {0};
    R->out = &buf;
    R->globals = scope_new(R, NULL);
    exec_body(R, R->globals, t->root);
    char *s = eng__malloc(buf.n + 1);
    if (!s) {
        jj_arena_free(&ar);
        free(R);
        return ENG_ENOMEM;
    }
    if (buf.n) memcpy(s, buf.p, buf.n);
    s[buf.n] = 0;
    *out = s;
    if (out_len) *out_len = buf.n;
    jj_arena_free(&ar);
    free(R);
    return ENG_OK;
}

/* ---- variables ----------------------------------------------------------------------- */

eng_jinja_vars *eng_jinja_vars_new(void) { return eng__calloc(1, sizeof(eng_jinja_vars)); }

void eng_jinja_vars_free(eng_jinja_vars *v)
{
    if (!v) return;
    jj_arena_free(&v->ar);
    free(v);
}

/* Builders reuse the render-side container code with a context whose
 * failure path returns ENG_ENOMEM. */
#define VARS_CTX(v, R, fail)                                                                            \
    jr R;                                                                                               \
    eng_jinja_error R##_err;                                                                            \
    memset(&R, 0, sizeof R);                                                                            \
    R.ar = &(v)->ar;                                                                                    \
    R.err = &R##_err;                                                                                   \
    R.lim = eng_jinja_default_limits();                                                                 \
    if (setjmp(R.jb)) return fail

static eng_jinja_val *box(eng_jinja_vars *v, jv x)
{
    if (!v) return NULL;
    eng_jinja_val *b = jj_arena_alloc(&v->ar, sizeof *b);
    if (b) b->v = x;
    return b;
}

eng_jinja_val *eng_jinja_none(eng_jinja_vars *v) { return box(v, jv_none()); }
eng_jinja_val *eng_jinja_bool(eng_jinja_vars *v, bool b) { return box(v, jv_bool(b)); }
eng_jinja_val *eng_jinja_int(eng_jinja_vars *v, int64_t i) { return box(v, jv_int(i)); }
eng_jinja_val *eng_jinja_float(eng_jinja_vars *v, double d) { return box(v, jv_float(d)); }

eng_jinja_val *eng_jinja_str(eng_jinja_vars *v, const char *s, size_t len)
{
    if (!v || (!s && len)) return NULL;
    char *p = jj_arena_alloc(&v->ar, len + 1);
    if (!p) return NULL;
    if (len) memcpy(p, s, len);
    p[len] = 0;
    return box(v, jv_strn(p, len));
}

eng_jinja_val *eng_jinja_list(eng_jinja_vars *v)
{
    if (!v) return NULL;
    jlist *l = jj_arena_alloc(&v->ar, sizeof *l);
    if (!l) return NULL;
    memset(l, 0, sizeof *l);
    return box(v, jv_list(l));
}

eng_jinja_val *eng_jinja_dict(eng_jinja_vars *v)
{
    if (!v) return NULL;
    jdict *d = jj_arena_alloc(&v->ar, sizeof *d);
    if (!d) return NULL;
    memset(d, 0, sizeof *d);
    jv x = {0};
    x.t = JV_DICT;
    x.u.d = d;
    return box(v, x);
}

eng_status eng_jinja_list_push(eng_jinja_vars *v, eng_jinja_val *list, const eng_jinja_val *item)
{
    if (!v || !list || !item) return ENG_ENOMEM;
    if (list->v.t != JV_LIST) return ENG_EINVAL;
    VARS_CTX(v, R, ENG_ENOMEM);
    jl_push(&R, list->v.u.l, item->v);
    return ENG_OK;
}

eng_status eng_jinja_dict_set(eng_jinja_vars *v, eng_jinja_val *dict, const char *key, size_t klen,
                              const eng_jinja_val *val)
{
    if (!v || !dict || !val || (!key && klen)) return ENG_ENOMEM;
    if (dict->v.t != JV_DICT) return ENG_EINVAL;
    VARS_CTX(v, R, ENG_ENOMEM);
    jd_set(&R, dict->v.u.d, jv_str_copy(&R, key ? key : "", klen), val->v);
    return ENG_OK;
}

eng_status eng_jinja_vars_set(eng_jinja_vars *v, const char *name, const eng_jinja_val *val)
{
    if (!v || !name || !val) return ENG_ENOMEM;
    VARS_CTX(v, R, ENG_ENOMEM);
    jd_set(&R, &v->vars, jv_str_copy(&R, name, strlen(name)), val->v);
    return ENG_OK;
}
