/*
 * jinja_filters.c - jinja2's filters ("x | name(args)") as the chat templates
 * use them, with transformers' tojson (json.dumps with ensure_ascii=False and
 * indent). A filter that is not here fails the render with its name.
 */
#include "jinja.h"
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EQ(a, b) (strcmp((a), (b)) == 0)

static jv arg(const jargs *a, size_t pos, const char *name, jv def)
{
    for (size_t i = 0; i < a->nkw; i++)
        if (EQ(a->kname[i], name)) return a->kval[i];
    return pos < a->npos ? a->pos[pos] : def;
}

static bool arg_given(jv v) { return v.t != JV_NONE && v.t != JV_UNDEF; }

static jlist *copy_list(jr *R, jv x)
{
    jv it = jj_iterate(R, x);
    jlist *l = jl_new(R, it.u.l->n);
    for (size_t i = 0; i < it.u.l->n; i++) jl_push(R, l, it.u.l->v[i]);
    return l;
}

/* jinja2's make_attrgetter: "a.b.0" looks up item a, then b, then index 0. */
jv jj_attr_path(jr *R, jv item, jv path)
{
    if (path.t == JV_INT) return jj_getitem(R, item, path);
    if (path.t != JV_STR) jj_fail(R, "TypeError: attribute must be a string");
    size_t a = 0, n = path.u.s.n;
    const char *p = path.u.s.p;
    while (a <= n) {
        size_t b = a;
        while (b < n && p[b] != '.') b++;
        jv key = jv_strn(p + a, b - a);
        bool digits = b > a;
        for (size_t i = a; i < b; i++) digits &= p[i] >= '0' && p[i] <= '9';
        if (digits && b - a < 18) key = jv_int(strtoll(p + a, NULL, 10));
        item = jj_getitem(R, item, key);
        a = b + 1;
    }
    return item;
}

static jv lower_if_str(jr *R, jv v, bool case_sensitive)
{
    if (case_sensitive || v.t != JV_STR) return v;
    char *o = jj_alloc(R, v.u.s.n + 1);
    for (size_t i = 0; i < v.u.s.n; i++) {
        char c = v.u.s.p[i];
        o[i] = c >= 'A' && c <= 'Z' ? (char)(c + 32) : c;
    }
    return jv_strn(o, v.u.s.n);
}

/* ---- select / reject / map ----------------------------------------------------------- */

static jv select_items(jr *R, jv seq, jargs *a, bool by_attr, bool keep)
{
    jv it = jj_iterate(R, seq);
    size_t k = by_attr ? 1 : 0;
    if (by_attr && !a->npos) jj_fail(R, "TypeError: selectattr needs an attribute");
    const char *test = NULL;
    char name[32];
    if (a->npos > k) {
        jv t = a->pos[k];
        if (t.t != JV_STR || t.u.s.n >= sizeof name) jj_fail(R, "TypeError: test name must be a string");
        memcpy(name, t.u.s.p, t.u.s.n);
        name[t.u.s.n] = 0;
        test = name;
    }
    jargs targs = {.pos = a->pos + (a->npos > k + 1 ? k + 1 : a->npos),
                   .npos = a->npos > k + 1 ? a->npos - k - 1 : 0};
    jlist *out = jl_new(R, 0);
    for (size_t i = 0; i < it.u.l->n; i++) {
        jj_step(R);
        jv item = it.u.l->v[i];
        jv v = by_attr ? jj_attr_path(R, item, a->pos[0]) : item;
        bool ok = test ? jj_test(R, test, v, &targs) : jv_truthy(v);
        if (ok == keep) jl_push(R, out, item);
    }
    return jv_list(out);
}

static jv map_items(jr *R, jv seq, jargs *a)
{
    jv it = jj_iterate(R, seq);
    jlist *out = jl_new(R, it.u.l->n);
    jv attr = arg(a, 99, "attribute", jv_undef());
    if (attr.t != JV_UNDEF) {
        jv def = arg(a, 99, "default", jv_undef());
        for (size_t i = 0; i < it.u.l->n; i++) {
            jv v = jj_attr_path(R, it.u.l->v[i], attr);
            jl_push(R, out, v.t == JV_UNDEF && def.t != JV_UNDEF ? def : v);
        }
        return jv_list(out);
    }
    if (!a->npos || a->pos[0].t != JV_STR) jj_fail(R, "TypeError: map needs a filter name or attribute=");
    char name[32];
    if (a->pos[0].u.s.n >= sizeof name) jj_fail(R, "TemplateRuntimeError: no filter with that name");
    memcpy(name, a->pos[0].u.s.p, a->pos[0].u.s.n);
    name[a->pos[0].u.s.n] = 0;
    jargs rest = *a;
    rest.pos++;
    rest.npos--;
    for (size_t i = 0; i < it.u.l->n; i++) {
        jj_step(R);
        jl_push(R, out, jj_filter(R, name, it.u.l->v[i], &rest));
    }
    return jv_list(out);
}

/* ---- sorting ---------------------------------------------------------------------------- */

typedef struct {
    jv key, item;
} keyed;

static void sort_keyed(jr *R, keyed *k, size_t n, bool reverse)
{
    /* merge sort: stable, as Python's sort */
    if (n < 2) return;
    keyed *tmp = jj_alloc(R, n * sizeof *tmp);
    for (size_t w = 1; w < n; w *= 2) {
        for (size_t lo = 0; lo < n; lo += 2 * w) {
            size_t mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n;
            size_t i = lo, j = mid, o = lo;
            while (i < mid && j < hi) {
                int c = jv_cmp(R, k[j].key, k[i].key);
                if (reverse) c = -c;
                tmp[o++] = c < 0 ? k[j++] : k[i++];
            }
            while (i < mid) tmp[o++] = k[i++];
            while (j < hi) tmp[o++] = k[j++];
        }
        memcpy(k, tmp, n * sizeof *k);
    }
}

static jv sort_items(jr *R, jv seq, jargs *a)
{
    jlist *l = copy_list(R, seq);
    bool reverse = jv_truthy(arg(a, 0, "reverse", jv_bool(false)));
    bool cs = jv_truthy(arg(a, 1, "case_sensitive", jv_bool(false)));
    jv attr = arg(a, 2, "attribute", jv_none());
    keyed *k = jj_alloc(R, (l->n + 1) * sizeof *k);
    for (size_t i = 0; i < l->n; i++) {
        k[i].item = l->v[i];
        k[i].key = lower_if_str(R, arg_given(attr) ? jj_attr_path(R, l->v[i], attr) : l->v[i], cs);
    }
    sort_keyed(R, k, l->n, reverse);
    for (size_t i = 0; i < l->n; i++) l->v[i] = k[i].item;
    return jv_list(l);
}

static jv dictsort(jr *R, jv d, jargs *a)
{
    if (d.t != JV_DICT) jj_fail(R, "TypeError: dictsort needs a mapping");
    bool cs = jv_truthy(arg(a, 0, "case_sensitive", jv_bool(false)));
    jv by = arg(a, 1, "by", jv_strn("key", 3));
    bool reverse = jv_truthy(arg(a, 2, "reverse", jv_bool(false)));
    bool by_value = jv_streq(by, "value");
    if (!by_value && !jv_streq(by, "key")) jj_fail(R, "FilterArgumentError: You can only sort by either \"key\" or \"value\"");
    size_t n = d.u.d->n;
    keyed *k = jj_alloc(R, (n + 1) * sizeof *k);
    for (size_t i = 0; i < n; i++) {
        jlist *t = jl_new(R, 2);
        jl_push(R, t, d.u.d->k[i]);
        jl_push(R, t, d.u.d->v[i]);
        k[i].item = jv_list(t);
        k[i].item.tuple = 1;
        k[i].key = lower_if_str(R, by_value ? d.u.d->v[i] : d.u.d->k[i], cs);
    }
    sort_keyed(R, k, n, reverse);
    jlist *out = jl_new(R, n);
    for (size_t i = 0; i < n; i++) jl_push(R, out, k[i].item);
    return jv_list(out);
}

static jv unique_items(jr *R, jv seq, jargs *a)
{
    jv it = jj_iterate(R, seq);
    bool cs = jv_truthy(arg(a, 0, "case_sensitive", jv_bool(false)));
    jv attr = arg(a, 1, "attribute", jv_none());
    jlist *out = jl_new(R, 0), *seen = jl_new(R, 0);
    for (size_t i = 0; i < it.u.l->n; i++) {
        jv item = it.u.l->v[i];
        jv key = lower_if_str(R, arg_given(attr) ? jj_attr_path(R, item, attr) : item, cs);
        if ((key.t == JV_LIST && !key.tuple) || key.t == JV_DICT)
            jj_fail(R, "TypeError: unhashable type: '%s'", jv_type_name(key));
        bool dup = false;
        for (size_t j = 0; j < seen->n && !dup; j++) {
            jj_step(R); /* quadratic: each comparison counts */
            dup = jv_eq(R, seen->v[j], key);
        }
        if (dup) continue;
        jl_push(R, seen, key);
        jl_push(R, out, item);
    }
    return jv_list(out);
}

static jv min_max(jr *R, jv seq, jargs *a, bool want_max)
{
    jv it = jj_iterate(R, seq);
    bool cs = jv_truthy(arg(a, 0, "case_sensitive", jv_bool(false)));
    jv attr = arg(a, 1, "attribute", jv_none());
    jv best = jv_undef(), best_key = jv_undef();
    for (size_t i = 0; i < it.u.l->n; i++) {
        jv item = it.u.l->v[i];
        jv key = lower_if_str(R, arg_given(attr) ? jj_attr_path(R, item, attr) : item, cs);
        if (best.t == JV_UNDEF || (want_max ? jv_cmp(R, key, best_key) > 0 : jv_cmp(R, key, best_key) < 0)) {
            best = item;
            best_key = key;
        }
    }
    return best;
}

/* ---- text ---------------------------------------------------------------------------------- */

static jv indent_text(jr *R, jv s, jargs *a)
{
    jv w = arg(a, 0, "width", jv_int(4));
    bool first = jv_truthy(arg(a, 1, "first", jv_bool(false)));
    bool blank = jv_truthy(arg(a, 2, "blank", jv_bool(false)));
    jv ind = w.t == JV_STR ? w : jv_none();
    if (w.t != JV_STR) {
        jbuf b = {0};
        int64_t n = w.t == JV_INT ? w.u.i : 4;
        for (int64_t i = 0; i < n && i < 1024; i++) jb_putc(R, &b, ' ');
        ind = jb_str(&b);
    }
    jbuf o = {0};
    if (first) jb_put(R, &o, ind.u.s.p, ind.u.s.n);
    size_t a0 = 0, n = s.u.s.n;
    bool line1 = true;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && s.u.s.p[i] != '\n') continue;
        if (i == n && a0 == n && !line1) break; /* text ending in "\n": no empty last line */
        size_t len = i - a0;
        if (!line1) {
            jb_putc(R, &o, '\n');
            if (len || blank) jb_put(R, &o, ind.u.s.p, ind.u.s.n);
        }
        jb_put(R, &o, s.u.s.p + a0, len);
        line1 = false;
        a0 = i + 1;
    }
    return jb_str(&o);
}

static jv html_escape(jr *R, jv s)
{
    jbuf o = {0};
    for (size_t i = 0; i < s.u.s.n; i++) {
        char c = s.u.s.p[i];
        switch (c) {
        case '&': jb_puts(R, &o, "&amp;"); break;
        case '<': jb_puts(R, &o, "&lt;"); break;
        case '>': jb_puts(R, &o, "&gt;"); break;
        case '"': jb_puts(R, &o, "&#34;"); break;
        case '\'': jb_puts(R, &o, "&#39;"); break;
        default: jb_putc(R, &o, c);
        }
    }
    return jb_str(&o);
}

static jv to_json(jr *R, jv x, jargs *a)
{
    jv ind = arg(a, 1, "indent", jv_none());
    jv seps = arg(a, 2, "separators", jv_none());
    bool sort = jv_truthy(arg(a, 3, "sort_keys", jv_bool(false)));
    if (jv_truthy(arg(a, 0, "ensure_ascii", jv_bool(false))))
        jj_fail(R, "tojson: ensure_ascii=True is not supported");
    int indent = -1;
    if (ind.t == JV_INT || ind.t == JV_BOOL) indent = (int)(ind.t == JV_INT ? (ind.u.i < 0 ? 0 : ind.u.i > 64 ? 64 : ind.u.i) : ind.u.b);
    else if (ind.t != JV_NONE && ind.t != JV_UNDEF) jj_fail(R, "tojson: indent must be an integer");
    const char *isep = indent >= 0 ? "," : ", ", *ksep = ": ";
    if (seps.t == JV_LIST && seps.u.l->n == 2 && seps.u.l->v[0].t == JV_STR && seps.u.l->v[1].t == JV_STR) {
        isep = jv_str_copy(R, seps.u.l->v[0].u.s.p, seps.u.l->v[0].u.s.n).u.s.p;
        ksep = jv_str_copy(R, seps.u.l->v[1].u.s.p, seps.u.l->v[1].u.s.n).u.s.p;
    } else if (seps.t != JV_NONE && seps.t != JV_UNDEF) {
        jj_fail(R, "tojson: separators must be a pair of strings");
    }
    jbuf b = {0};
    jv_write_json(R, &b, x, indent, isep, ksep, sort, 0);
    return jb_str(&b);
}

static jv length_of(jr *R, jv x)
{
    switch (x.t) {
    case JV_UNDEF: return jv_int(0);
    case JV_STR: return jv_int((int64_t)jj_utf8_count(x.u.s.p, x.u.s.n));
    case JV_LIST: return jv_int((int64_t)x.u.l->n);
    case JV_DICT: return jv_int((int64_t)x.u.d->n);
    case JV_LOOP: return jv_int((int64_t)x.u.loop->items->n);
    default: jj_fail(R, "TypeError: object of type '%s' has no len()", jv_type_name(x));
    }
}

static jv to_int(jr *R, jv x, jargs *a)
{
    jv def = arg(a, 0, "default", jv_int(0));
    if (x.t == JV_INT) return x;
    if (x.t == JV_BOOL) return jv_int(x.u.b);
    if (x.t == JV_FLOAT) return isfinite(x.u.f) && fabs(x.u.f) < 9e18 ? jv_int((int64_t)x.u.f) : def;
    if (x.t == JV_STR) {
        char tmp[64];
        if (x.u.s.n == 0 || x.u.s.n >= sizeof tmp) return def;
        memcpy(tmp, x.u.s.p, x.u.s.n);
        tmp[x.u.s.n] = 0;
        char *end;
        long long v = strtoll(tmp, &end, 10);
        while (*end == ' ') end++;
        if (!*end) return jv_int(v);
        double d = strtod(tmp, &end);
        while (*end == ' ') end++;
        return !*end && isfinite(d) && fabs(d) < 9e18 ? jv_int((int64_t)d) : def;
    }
    (void)R;
    return def;
}

static jv to_float(jv x, jargs *a)
{
    jv def = arg(a, 0, "default", jv_float(0.0));
    if (x.t == JV_FLOAT) return x;
    if (x.t == JV_INT) return jv_float((double)x.u.i);
    if (x.t == JV_BOOL) return jv_float(x.u.b);
    if (x.t == JV_STR) {
        char tmp[64];
        if (x.u.s.n == 0 || x.u.s.n >= sizeof tmp) return def;
        memcpy(tmp, x.u.s.p, x.u.s.n);
        tmp[x.u.s.n] = 0;
        char *end;
        double d = strtod(tmp, &end);
        return *end ? def : jv_float(d);
    }
    return def;
}

static jv sum_items(jr *R, jv seq, jargs *a)
{
    jv it = jj_iterate(R, seq);
    jv attr = arg(a, 0, "attribute", jv_none());
    jv acc = arg(a, 1, "start", jv_int(0));
    for (size_t i = 0; i < it.u.l->n; i++) {
        jv v = arg_given(attr) ? jj_attr_path(R, it.u.l->v[i], attr) : it.u.l->v[i];
        bool ints = (acc.t == JV_INT || acc.t == JV_BOOL) && (v.t == JV_INT || v.t == JV_BOOL);
        if (ints) {
            int64_t r;
            if (__builtin_add_overflow(acc.t == JV_INT ? acc.u.i : acc.u.b, v.t == JV_INT ? v.u.i : v.u.b, &r))
                jj_fail(R, "OverflowError: sum out of range");
            acc = jv_int(r);
        } else if ((acc.t == JV_INT || acc.t == JV_FLOAT || acc.t == JV_BOOL) &&
                   (v.t == JV_INT || v.t == JV_FLOAT || v.t == JV_BOOL)) {
            double x = acc.t == JV_FLOAT ? acc.u.f : acc.t == JV_INT ? (double)acc.u.i : acc.u.b;
            double y = v.t == JV_FLOAT ? v.u.f : v.t == JV_INT ? (double)v.u.i : v.u.b;
            acc = jv_float(x + y);
        } else {
            jj_fail(R, "TypeError: unsupported operand type(s) for +: '%s' and '%s'", jv_type_name(acc),
                    jv_type_name(v));
        }
    }
    return acc;
}

/* ---- dispatch ------------------------------------------------------------------------------- */

static const char *const FILTERS[] = {
    "tojson", "length", "count", "trim", "string", "items", "list", "selectattr", "rejectattr", "select",
    "reject", "join", "map", "replace", "safe", "unique", "default", "d", "first", "last", "lower", "upper",
    "title", "capitalize", "reverse", "sort", "dictsort", "abs", "int", "float", "round", "sum", "min",
    "max", "indent", "escape", "e", "wordcount", "format", NULL};

bool jj_has_filter(const char *name)
{
    for (const char *const *f = FILTERS; *f; f++)
        if (EQ(*f, name)) return true;
    return false;
}

static jv filter_seq(jr *R, const char *n, jv x, jargs *a, bool *done)
{
    *done = true;
    if (EQ(n, "list")) return jv_list(copy_list(R, x));
    if (EQ(n, "selectattr") || EQ(n, "rejectattr")) return select_items(R, x, a, true, n[0] == 's');
    if (EQ(n, "select") || EQ(n, "reject")) return select_items(R, x, a, false, n[0] == 's');
    if (EQ(n, "map")) return map_items(R, x, a);
    if (EQ(n, "unique")) return unique_items(R, x, a);
    if (EQ(n, "sort")) return sort_items(R, x, a);
    if (EQ(n, "dictsort")) return dictsort(R, x, a);
    if (EQ(n, "sum")) return sum_items(R, x, a);
    if (EQ(n, "min") || EQ(n, "max")) return min_max(R, x, a, n[1] == 'a');
    if (EQ(n, "first")) {
        jv it = jj_iterate(R, x);
        return it.u.l->n ? it.u.l->v[0] : jv_undef();
    }
    if (EQ(n, "last")) {
        if (x.t == JV_DICT) jj_fail(R, "TypeError: 'dict' object is not reversible");
        jv it = jj_iterate(R, x);
        return it.u.l->n ? it.u.l->v[it.u.l->n - 1] : jv_undef();
    }
    if (EQ(n, "items")) {
        if (x.t == JV_UNDEF) return jv_list(jl_new(R, 0));
        if (x.t != JV_DICT) jj_fail(R, "TypeError: Can only get item pairs from a mapping.");
        jlist *l = jl_new(R, x.u.d->n);
        for (size_t i = 0; i < x.u.d->n; i++) {
            jlist *t = jl_new(R, 2);
            jl_push(R, t, x.u.d->k[i]);
            jl_push(R, t, x.u.d->v[i]);
            jv tv = jv_list(t);
            tv.tuple = 1;
            jl_push(R, l, tv);
        }
        return jv_list(l);
    }
    if (EQ(n, "join")) {
        jv it = jj_iterate(R, x);
        jv sep = jv_to_str(R, arg(a, 0, "d", jv_strn("", 0)));
        jv attr = arg(a, 1, "attribute", jv_none());
        jbuf b = {0};
        for (size_t i = 0; i < it.u.l->n; i++) {
            if (i) jb_put(R, &b, sep.u.s.p, sep.u.s.n);
            jv_write_str(R, &b, arg_given(attr) ? jj_attr_path(R, it.u.l->v[i], attr) : it.u.l->v[i]);
        }
        return jb_str(&b);
    }
    if (EQ(n, "reverse")) {
        if (x.t == JV_STR) {
            jv it = jj_iterate(R, x);
            jbuf b = {0};
            for (size_t i = it.u.l->n; i-- > 0;) jb_put(R, &b, it.u.l->v[i].u.s.p, it.u.l->v[i].u.s.n);
            return jb_str(&b);
        }
        jlist *l = copy_list(R, x);
        for (size_t i = 0; i < l->n / 2; i++) {
            jv t = l->v[i];
            l->v[i] = l->v[l->n - 1 - i];
            l->v[l->n - 1 - i] = t;
        }
        return jv_list(l);
    }
    *done = false;
    return jv_undef();
}

static jv filter_text(jr *R, const char *n, jv x, jargs *a, bool *done)
{
    *done = true;
    jv none = jv_none();
    if (EQ(n, "string")) return jv_to_str(R, x);
    if (EQ(n, "safe")) return x.t == JV_STR ? x : jv_to_str(R, x);
    jv s = jv_to_str(R, x);
    if (EQ(n, "trim")) {
        jargs m = {.pos = a->pos, .npos = a->npos, .kname = a->kname, .kval = a->kval, .nkw = a->nkw};
        jmethod mt = {.self = s, .name = "strip"};
        return jj_call_method(R, &mt, &m);
    }
    if (EQ(n, "replace")) {
        jv cnt = arg(a, 2, "count", none);
        jv args3[3] = {arg(a, 0, "old", none), arg(a, 1, "new", none), cnt};
        jargs m = {.pos = args3, .npos = arg_given(cnt) ? 3 : 2};
        jmethod mt = {.self = s, .name = "replace"};
        return jj_call_method(R, &mt, &m);
    }
    if (EQ(n, "title")) return jj_title_filter(R, s);
    if (EQ(n, "format")) return jj_percent_format(R, s, a->pos, a->npos);
    if (EQ(n, "lower") || EQ(n, "upper") || EQ(n, "capitalize")) {
        jargs m = {0};
        jmethod mt = {.self = s, .name = n};
        return jj_call_method(R, &mt, &m);
    }
    if (EQ(n, "indent")) return indent_text(R, s, a);
    if (EQ(n, "escape") || EQ(n, "e")) return html_escape(R, s);
    if (EQ(n, "wordcount")) {
        jmethod mt = {.self = s, .name = "split"};
        jargs m = {0};
        return jv_int((int64_t)jj_call_method(R, &mt, &m).u.l->n);
    }
    *done = false;
    return jv_undef();
}

jv jj_filter(jr *R, const char *n, jv x, jargs *a)
{
    bool done;
    if (EQ(n, "tojson")) return to_json(R, x, a);
    if (EQ(n, "length") || EQ(n, "count")) return length_of(R, x);
    if (EQ(n, "default") || EQ(n, "d")) {
        bool boolean = jv_truthy(arg(a, 1, "boolean", jv_bool(false)));
        bool use = x.t == JV_UNDEF || (boolean && !jv_truthy(x));
        return use ? arg(a, 0, "default_value", jv_strn("", 0)) : x;
    }
    if (EQ(n, "abs")) {
        if (x.t == JV_INT) return x.u.i == INT64_MIN ? x : jv_int(x.u.i < 0 ? -x.u.i : x.u.i);
        if (x.t == JV_BOOL) return jv_int(x.u.b);
        if (x.t == JV_FLOAT) return jv_float(fabs(x.u.f));
        jj_fail(R, "TypeError: bad operand type for abs(): '%s'", jv_type_name(x));
    }
    if (EQ(n, "int")) return to_int(R, x, a);
    if (EQ(n, "float")) return to_float(x, a);
    if (EQ(n, "round")) {
        jv f = to_float(x, a);
        int64_t prec = 0;
        jv p = arg(a, 0, "precision", jv_int(0));
        if (p.t == JV_INT) prec = p.u.i < 0 ? 0 : p.u.i > 15 ? 15 : p.u.i;
        double m = pow(10.0, (double)prec);
        return jv_float(round(f.u.f * m) / m);
    }
    jv r = filter_seq(R, n, x, a, &done);
    if (done) return r;
    r = filter_text(R, n, x, a, &done);
    if (done) return r;
    jj_fail(R, "TemplateAssertionError: no filter named '%s'", n);
}
