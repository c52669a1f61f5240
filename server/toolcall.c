/*
 * toolcall.c - generated text to content, reasoning and tool calls: the
 * think block is split off first, then the family's call region (from its
 * first marker on) is parsed into {"name", "arguments"} objects; anything
 * malformed stays plain content.
 */
#include "toolcall.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum { R_OK, R_INCOMPLETE, R_BAD } rstat;

static const char *const MARKER[] = {
    [TC_NONE] = NULL,
    [TC_HERMES] = "<tool_call>",
    [TC_QWEN3_CODER] = "<tool_call>",
    [TC_LLAMA3] = "<|python_tag|>",
    [TC_MISTRAL] = "[TOOL_CALLS]",
    [TC_MISTRAL_ARGS] = "[TOOL_CALLS]",
    [TC_GRANITE] = "<|tool_call|>",
    [TC_FUNCTIONARY] = NULL,
    [TC_DEEPSEEK] = "<\xef\xbd\x9ctool\xe2\x96\x81" "calls\xe2\x96\x81" "begin\xef\xbd\x9c>",
};
#define DS_CALL_BEGIN "<\xef\xbd\x9ctool\xe2\x96\x81" "call\xe2\x96\x81" "begin\xef\xbd\x9c>"
#define DS_CALL_END "<\xef\xbd\x9ctool\xe2\x96\x81" "call\xe2\x96\x81" "end\xef\xbd\x9c>"
#define DS_CALLS_END "<\xef\xbd\x9ctool\xe2\x96\x81" "calls\xe2\x96\x81" "end\xef\xbd\x9c>"
#define DS_SEP "<\xef\xbd\x9ctool\xe2\x96\x81" "sep\xef\xbd\x9c>"

const char *tc_format_name(tc_format f)
{
    static const char *const names[] = {"none", "hermes", "qwen3_coder", "llama3", "mistral",
                                        "mistral_args", "granite", "functionary", "deepseek"};
    return (unsigned)f < sizeof names / sizeof *names ? names[f] : "none";
}

tc_format tc_detect(const char *t)
{
    if (!t) return TC_NONE;
    if (strstr(t, "<function=") && strstr(t, "<parameter=")) return TC_QWEN3_CODER;
    if (strstr(t, "<tool_call>")) return TC_HERMES;
    if (strstr(t, "[TOOL_CALLS]")) return strstr(t, "[ARGS]") ? TC_MISTRAL_ARGS : TC_MISTRAL;
    if (strstr(t, "<|tool_call|>")) return TC_GRANITE;
    if (strstr(t, MARKER[TC_DEEPSEEK])) return TC_DEEPSEEK;
    if (strstr(t, ">>>") && strstr(t, "recipient")) return TC_FUNCTIONARY;
    if (strstr(t, "<|python_tag|>") || (strstr(t, "<|start_header_id|>") && strstr(t, "\"parameters\"")))
        return TC_LLAMA3;
    return TC_NONE;
}

bool tc_detect_thinking(const char *t) { return t && strstr(t, "<think>") != NULL; }

static bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

static size_t skip_ws(const char *s, size_t n, size_t i)
{
    while (i < n && is_ws(s[i])) i++;
    return i;
}

static bool starts(const char *s, size_t n, size_t i, const char *lit)
{
    size_t k = strlen(lit);
    return i + k <= n && memcmp(s + i, lit, k) == 0;
}

static const char *find(const char *s, size_t n, const char *lit)
{
    size_t k = strlen(lit);
    return k <= n ? memmem(s, n, lit, k) : NULL;
}

/* A JSON value at s[i..n): *end is where it stops. NULL with *st set:
 * R_INCOMPLETE when the text ends inside it, R_BAD otherwise. A NUL byte
 * ends what is parsed (jansson would skip some raw NULs, where no JSON text
 * may hold one): a value it cuts short is bad, not unfinished. */
static json_t *json_at(const char *s, size_t n, size_t i, size_t *end, rstat *st)
{
    i = skip_ws(s, n, i);
    if (i >= n) {
        *st = R_INCOMPLETE;
        return NULL;
    }
    const char *nul = memchr(s + i, 0, n - i);
    const size_t lim = nul ? (size_t)(nul - (s + i)) : n - i;
    json_error_t e;
    json_t *j = lim ? json_loadb(s + i, lim, JSON_DECODE_ANY | JSON_DISABLE_EOF_CHECK | JSON_ALLOW_NUL, &e) : NULL;
    if (!j) {
        *st = !nul && (size_t)e.position >= lim ? R_INCOMPLETE : R_BAD;
        return NULL;
    }
    *end = i + (size_t)e.position;
    *st = R_OK;
    return j;
}

/* {"name": name, "arguments": args} appended when name is a string and args
 * an object or a string holding one (steals args). */
static bool add_call(json_t *calls, const json_t *name, json_t *args)
{
    if (json_is_string(args)) {
        json_t *o = json_loads(json_string_value(args), 0, NULL);
        json_decref(args);
        args = o;
    }
    if (!json_is_string(name) || !json_string_length(name) || strlen(json_string_value(name)) != json_string_length(name) ||
        !json_is_object(args)) { /* no name, or one with a NUL byte */
        json_decref(args);
        return false;
    }
    json_t *c = json_object();
    json_object_set(c, "name", (json_t *)name);
    json_object_set_new(c, "arguments", args);
    json_array_append_new(calls, c);
    return true;
}

static bool add_call_obj(json_t *calls, json_t *o, const char *args_key)
{
    if (!json_is_object(o)) return false;
    json_t *a = json_object_get(o, args_key);
    if (!a) a = json_object_get(o, "arguments");
    if (!a) a = json_object_get(o, "parameters");
    return add_call(calls, json_object_get(o, "name"), json_incref(a));
}

/* ---- the call regions, one parser per family -------------------------------------- */

static rstat region_hermes(const char *s, size_t n, json_t *calls, size_t *used)
{
    size_t i = 0;
    while (starts(s, n, i, "<tool_call>")) {
        const char *e = find(s + i, n - i, "</tool_call>");
        if (!e) return R_INCOMPLETE;
        size_t end, close = (size_t)(e - s);
        rstat st;
        json_t *j = json_at(s, close, i + 11, &end, &st);
        bool ok = j && skip_ws(s, close, end) == close && add_call_obj(calls, j, "arguments");
        json_decref(j);
        if (!ok) return R_BAD;
        i = skip_ws(s, n, close + 12);
        *used = i;
    }
    return R_OK;
}

/* A Qwen3-Coder parameter value: JSON when it parses as such, else the text. */
static json_t *param_value(const char *v, size_t n)
{
    if (n && v[0] == '\n') v++, n--;
    if (n && v[n - 1] == '\n') n--;
    json_t *j = memchr(v, 0, n) ? NULL : json_loadb(v, n, JSON_DECODE_ANY, NULL); /* (raw NUL: text) */
    return j ? j : json_stringn(v, n);
}

static rstat region_qwen3_coder(const char *s, size_t n, json_t *calls, size_t *used)
{
    size_t i = 0;
    while (starts(s, n, i, "<tool_call>")) {
        const char *e = find(s + i, n - i, "</tool_call>");
        if (!e) return R_INCOMPLETE;
        size_t close = (size_t)(e - s), k = skip_ws(s, close, i + 11);
        if (!starts(s, close, k, "<function=")) return R_BAD;
        const char *gt = memchr(s + k, '>', close - k);
        if (!gt) return R_BAD;
        json_t *name = json_stringn(s + k + 10, (size_t)(gt - s) - k - 10), *args = json_object();
        k = skip_ws(s, close, (size_t)(gt - s) + 1);
        while (starts(s, close, k, "<parameter=")) {
            const char *pg = memchr(s + k, '>', close - k);
            const char *pe = pg ? find(pg, (size_t)(s + close - pg), "</parameter>") : NULL;
            if (!pe) break;
            char key[256];
            size_t kl = (size_t)(pg - s) - k - 11;
            snprintf(key, sizeof key, "%.*s", (int)kl, s + k + 11);
            json_object_set_new(args, key, param_value(pg + 1, (size_t)(pe - pg) - 1));
            k = skip_ws(s, close, (size_t)(pe - s) + 12);
        }
        bool shape = starts(s, close, k, "</function>") && skip_ws(s, close, k + 11) == close;
        bool ok = shape ? add_call(calls, name, args) : (json_decref(args), false);
        json_decref(name);
        if (!ok) return R_BAD;
        i = skip_ws(s, n, close + 12);
        *used = i;
    }
    return R_OK;
}

/* A JSON array of call objects (Mistral Nemo, Granite) right after the marker. */
static rstat region_json_list(const char *s, size_t n, size_t mlen, json_t *calls, size_t *used)
{
    size_t end;
    rstat st;
    json_t *j = json_at(s, n, mlen, &end, &st);
    if (!j) return st;
    if (json_is_object(j)) { /* one call without the list */
        json_t *a = json_array();
        json_array_append_new(a, j);
        j = a;
    }
    size_t k;
    json_t *c;
    bool ok = json_is_array(j) && json_array_size(j);
    json_array_foreach(j, k, c) ok = ok && add_call_obj(calls, c, "arguments");
    json_decref(j);
    *used = skip_ws(s, n, end);
    return ok ? R_OK : R_BAD;
}

static rstat region_mistral_args(const char *s, size_t n, json_t *calls, size_t *used)
{
    size_t i = 0;
    while (starts(s, n, i, "[TOOL_CALLS]")) {
        const char *a = find(s + i, n - i, "[ARGS]");
        if (!a) return R_INCOMPLETE;
        size_t name_end = (size_t)(a - s);
        const char *cid = find(s + i, name_end - i, "[CALL_ID]");
        if (cid) name_end = (size_t)(cid - s);
        json_t *name = json_stringn(s + i + 12, name_end - i - 12);
        size_t end;
        rstat st;
        json_t *args = json_at(s, n, (size_t)(a - s) + 6, &end, &st);
        bool ok = args && add_call(calls, name, args);
        json_decref(name);
        if (!args) return st;
        if (!ok) return R_BAD;
        i = skip_ws(s, n, end);
        *used = i;
    }
    return R_OK;
}

static rstat region_deepseek(const char *s, size_t n, json_t *calls, size_t *used)
{
    size_t i = skip_ws(s, n, strlen(MARKER[TC_DEEPSEEK]));
    while (starts(s, n, i, DS_CALL_BEGIN)) {
        const char *e = find(s + i, n - i, DS_CALL_END);
        if (!e) return R_INCOMPLETE;
        size_t close = (size_t)(e - s);
        const char *sep = find(s + i, close - i, DS_SEP);
        const char *nl = sep ? memchr(sep, '\n', (size_t)(s + close - sep)) : NULL;
        if (!nl) return R_BAD;
        size_t ns = (size_t)(sep - s) + strlen(DS_SEP);
        json_t *name = json_stringn(s + ns, (size_t)(nl - s) - ns);
        size_t k = skip_ws(s, close, (size_t)(nl - s));
        if (starts(s, close, k, "```json")) k += 7;
        size_t end;
        rstat st;
        json_t *args = json_at(s, close, k, &end, &st);
        end = args ? skip_ws(s, close, end) : 0;
        bool shape = args && (end == close || starts(s, close, end, "```"));
        bool ok = shape ? add_call(calls, name, args) : (json_decref(args), false);
        json_decref(name);
        if (!ok) return R_BAD;
        i = skip_ws(s, n, close + strlen(DS_CALL_END));
        *used = i;
    }
    if (!starts(s, n, i, DS_CALLS_END)) { /* the text may stop inside the next marker */
        bool more = (n - i < strlen(DS_CALLS_END) && !strncmp(s + i, DS_CALLS_END, n - i)) ||
                    (n - i < strlen(DS_CALL_BEGIN) && !strncmp(s + i, DS_CALL_BEGIN, n - i));
        return more ? R_INCOMPLETE : R_BAD;
    }
    *used = skip_ws(s, n, i + strlen(DS_CALLS_END));
    return R_OK;
}

/* Llama 3.x: after <|python_tag|>, or the reply itself being one object. */
static rstat region_llama3(const char *s, size_t n, size_t mlen, json_t *calls, size_t *used)
{
    size_t end;
    rstat st;
    json_t *j = json_at(s, n, mlen, &end, &st);
    if (!j) return st;
    bool ok = add_call_obj(calls, j, "parameters");
    json_decref(j);
    *used = skip_ws(s, n, end);
    return ok ? R_OK : R_BAD;
}

/* ---- assembly ------------------------------------------------------------------------ */

static char *dup_range(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = 0;
    }
    return p;
}

/* Content around calls, without the whitespace next to them. */
static char *join_content(const char *a, size_t an, const char *b, size_t bn, bool trim, size_t *len)
{
    if (trim) {
        while (an && is_ws(a[an - 1])) an--; /* (leading whitespace stays: a stream has sent it) */
        while (bn && is_ws(b[bn - 1])) bn--;
    }
    char *p = malloc(an + bn + 1);
    if (!p) return NULL;
    memcpy(p, a, an);
    memcpy(p + an, b, bn);
    p[an + bn] = 0;
    *len = an + bn;
    return p;
}

static void make_id(char *out, uint64_t seed, size_t idx)
{
    static const char abc[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    uint64_t x = seed + 0x9E3779B97F4A7C15ull * (idx + 1);
    memcpy(out, "call_", 5);
    for (int k = 0; k < 24; k++) {
        x ^= x >> 30;
        x *= 0xBF58476D1CE4E5B9ull;
        x ^= x >> 27;
        out[5 + k] = abc[x % 62];
    }
    out[29] = 0;
}

static int export_calls(const tc_opts *o, json_t *calls, tc_result *out)
{
    size_t n = json_array_size(calls);
    if (!n) return 0;
    out->calls = calloc(n, sizeof *out->calls);
    if (!out->calls) return -1;
    for (size_t k = 0; k < n; k++) {
        json_t *c = json_array_get(calls, k);
        tc_call *t = &out->calls[out->n_calls++];
        make_id(t->id, o->id_seed, k);
        t->name = strdup(json_string_value(json_object_get(c, "name")));
        t->arguments = json_dumps(json_object_get(c, "arguments"), JSON_COMPACT);
        if (!t->name || !t->arguments) return -1;
    }
    return 0;
}

/* Bytes at the end of s that begin marker: held back while streaming. */
static size_t marker_tail(const char *s, size_t n, const char *marker)
{
    size_t m = strlen(marker);
    for (size_t k = m - 1; k > 0; k--)
        if (k <= n && memcmp(s + n - k, marker, k) == 0) return k;
    return 0;
}

/* The call region of text (after reasoning): where it starts (or n). */
static size_t region_start(const tc_opts *o, const char *s, size_t n, size_t *mlen)
{
    *mlen = 0;
    if (o->fmt == TC_LLAMA3) { /* a reply that is one JSON object (whatever comes later) */
        size_t i = skip_ws(s, n, 0);
        if (i < n && s[i] == '{') return i;
    }
    const char *m = MARKER[o->fmt];
    if (m) {
        const char *p = find(s, n, m);
        if (p) {
            *mlen = strlen(m);
            return (size_t)(p - s);
        }
    }
    return n;
}

/* Formats whose calls are framed one by one (a malformed call after good
 * ones does not spoil them), unlike one JSON list or object. */
static bool framed(tc_format f)
{
    return f == TC_HERMES || f == TC_QWEN3_CODER || f == TC_MISTRAL_ARGS || f == TC_DEEPSEEK;
}

static rstat parse_region(const tc_opts *o, const char *s, size_t n, size_t mlen, json_t *calls, size_t *used)
{
    switch (o->fmt) {
    case TC_HERMES: return region_hermes(s, n, calls, used);
    case TC_QWEN3_CODER: return region_qwen3_coder(s, n, calls, used);
    case TC_MISTRAL: case TC_GRANITE: return region_json_list(s, n, mlen, calls, used);
    case TC_MISTRAL_ARGS: return region_mistral_args(s, n, calls, used);
    case TC_DEEPSEEK: return region_deepseek(s, n, calls, used);
    case TC_LLAMA3: return region_llama3(s, n, mlen, calls, used);
    default: return R_BAD;
    }
}

/* A functionary "name\nbody" segment [i, e) (b: where the body starts): the
 * body's JSON object is the call, text after it is content (at the end of a
 * partial reply a ">" or ">>" is held: it may begin the next ">>>"). */
static rstat functionary_call(const char *s, size_t i, size_t b, size_t e, bool last_partial, json_t *calls, char *c,
                              size_t *cn)
{
    size_t end;
    rstat st;
    json_t *args = json_at(s, e, b, &end, &st);
    if (!args) return last_partial && st == R_INCOMPLETE ? R_INCOMPLETE : R_BAD;
    json_t *name = json_stringn(s + i, b - 1 - i);
    bool ok = add_call(calls, name, args);
    json_decref(name);
    if (!ok) return R_BAD;
    size_t k = skip_ws(s, e, end), keep = e - k;
    while (last_partial && keep && (e - k) - keep < 2 && s[k + keep - 1] == '>') keep--;
    memcpy(c + *cn, s + k, keep);
    *cn += keep;
    return keep < e - k ? R_INCOMPLETE : R_OK;
}

/* functionary v3.2: the prompt ends with ">>>"; each segment is
 * "recipient\nbody" and the segments are joined by ">>>". */
static rstat parse_functionary(const char *s, size_t n, bool partial, json_t *calls, char **content,
                               size_t *content_n)
{
    size_t i = 0, cn = 0, seg = 0;
    char *c = malloc(n + 1);
    if (!c) return R_BAD;
    rstat st = R_OK;
    while (i < n && st == R_OK) {
        seg = i;
        const char *next = find(s + i, n - i, ">>>");
        size_t e = next ? (size_t)(next - s) : n;
        const char *nl = memchr(s + i, '\n', e - i);
        if (!nl) {
            st = partial && !next ? R_INCOMPLETE : R_BAD;
            break;
        }
        size_t rl = (size_t)(nl - s) - i, b = (size_t)(nl - s) + 1;
        if (rl == 3 && !memcmp(s + i, "all", 3)) {
            size_t keep = e - b;
            while (partial && !next && keep && (e - b) - keep < 2 && s[b + keep - 1] == '>') keep--;
            if (keep < e - b) st = R_INCOMPLETE; /* maybe the start of ">>>" */
            memcpy(c + cn, s + b, keep);
            cn += keep;
        } else {
            st = functionary_call(s, i, b, e, partial && !next, calls, c, &cn);
        }
        i = next ? e + 3 : n;
    }
    if (st == R_BAD && seg > 0) { /* what came before it stays; from its ">>>" on, the text is content */
        memcpy(c + cn, ">>>", 3);
        memcpy(c + cn + 3, s + seg, n - seg);
        cn += 3 + n - seg;
        st = R_OK;
    }
    c[cn] = 0;
    *content = c;
    *content_n = cn;
    return st;
}

/* Reasoning split off: [*body, n) is what remains. */
static int split_think(const tc_opts *o, const char *s, size_t n, bool partial, tc_result *out, size_t *body)
{
    *body = 0;
    if (!o->thinking && !o->think_open) return 0;
    size_t i = skip_ws(s, n, 0);
    bool open = o->think_open;
    if (partial && n - i < 7 && !strncmp(s + i, "<think>", n - i)) {
        out->pending = true; /* the block may be beginning */
        *body = n;
        return 0;
    }
    if (starts(s, n, i, "<think>")) {
        open = true;
        i += 7;
    } else if (!open) {
        return 0;
    }
    const char *e = find(s + i, n - i, "</think>");
    size_t stop = e ? (size_t)(e - s) : n;
    if (!e && partial) stop -= marker_tail(s + i, n - i, "</think>");
    size_t a = skip_ws(s, stop, i), z = stop;
    while (z > a && is_ws(s[z - 1])) z--;
    out->reasoning = dup_range(s + a, z - a);
    if (!out->reasoning) return -1;
    out->reasoning_n = z - a;
    if (!e) {
        out->pending = partial;
        *body = n;
        return 0;
    }
    *body = skip_ws(s, n, stop + 8);
    return 0;
}

int tc_parse(const tc_opts *o, const char *text, size_t len, bool partial, tc_result *out)
{
    memset(out, 0, sizeof *out);
    size_t b;
    if (split_think(o, text, len, partial, out, &b)) goto oom;
    const char *s = text + b;
    size_t n = len - b;
    json_t *calls = json_array();
    if (!calls) goto oom;
    if (o->fmt == TC_FUNCTIONARY && n) {
        char *c = NULL;
        size_t cn = 0;
        rstat st = parse_functionary(s, n, partial, calls, &c, &cn);
        if (st == R_OK || st == R_INCOMPLETE) {
            out->content = c;
            out->content_n = cn;
            out->pending = out->pending || st == R_INCOMPLETE;
        } else {
            free(c);
            json_array_clear(calls);
        }
    } else if (o->fmt != TC_NONE) {
        size_t mlen, r = region_start(o, s, n, &mlen), used = 0;
        rstat st = r < n ? parse_region(o, s + r, n - r, mlen, calls, &used) : R_OK;
        if (st == R_OK && json_array_size(calls)) {
            size_t tail = n - r - used, hold = partial && MARKER[o->fmt] ? marker_tail(s + r + used, tail, MARKER[o->fmt]) : 0;
            out->content = join_content(s, r, s + r + used, tail - hold, true, &out->content_n);
            out->pending = out->pending || hold > 0;
        } else if (st == R_INCOMPLETE && partial) { /* the calls complete so far stay */
            out->content = join_content(s, r, "", 0, json_array_size(calls) > 0, &out->content_n);
            out->pending = true;
        } else if (json_array_size(calls) && used && framed(o->fmt) && (st == R_BAD || !partial)) {
            /* the calls before a malformed or unfinished one stay calls
             * (a stream has sent them); from it on, the text is content */
            out->content = join_content(s, r, s + r + used, n - r - used, true, &out->content_n);
        } else if (r == n && partial && MARKER[o->fmt]) {
            size_t hold = marker_tail(s, n, MARKER[o->fmt]);
            out->content = dup_range(s, n - hold);
            out->content_n = n - hold;
            out->pending = out->pending || hold > 0;
        }
        if (!out->content) json_array_clear(calls);
    }
    if (!out->content) {
        if (!(out->content = dup_range(s, n))) goto oom_calls;
        out->content_n = n;
    }
    if (export_calls(o, calls, out)) goto oom_calls;
    json_decref(calls);
    return 0;
oom_calls:
    json_decref(calls);
oom:
    tc_result_free(out);
    return -1;
}

void tc_result_free(tc_result *r)
{
    if (!r) return;
    for (size_t k = 0; k < r->n_calls; k++) {
        free(r->calls[k].name);
        free(r->calls[k].arguments);
    }
    free(r->calls);
    free(r->content);
    free(r->reasoning);
    memset(r, 0, sizeof *r);
}
