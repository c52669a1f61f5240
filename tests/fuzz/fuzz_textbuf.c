/*
 * fuzz_textbuf - libFuzzer harness for the generated-text assembler
 * (server/textbuf.c: UTF-8 boundaries, U+FFFD, stop strings) and the SSE
 * framing of its output (server/stream.c, on a job without a connection).
 *
 * Input layout:
 *
 *   byte 0   bits 0-2: number of stop strings (0-7); bit 3: chat framing
 *            (else completions); bit 4: echo (completions only); bit 5:
 *            stream_options.include_usage; bit 6: take the text only at the
 *            end (else after every push, as the server does)
 *   then     per stop string: a length byte and that many bytes (a NUL ends
 *            the C string early, as it would in textbuf_new)
 *   then     a count byte k and k push sizes (bytes, used in turn; 0 is an
 *            empty push; k = 0: one push of everything)
 *   rest     the token bytes
 *
 * The bytes go through textbuf three times: in the fuzzer's chunks, all at
 * once, and one byte at a time. Checked against a reference written here
 * (its own UTF-8 decoder, Unicode's maximal-subpart replacement):
 *
 * - every piece textbuf_take returns is valid UTF-8 on its own;
 * - the whole output never contains a stop string;
 * - the output is the sanitized input cut before the stop string that ends
 *   first (ties: the one that starts first), textbuf_stopped() exactly when
 *   there is one; else the whole sanitized input; stop strings are matched
 *   as text (their own invalid bytes are U+FFFD, like the input's);
 * - all three chunkings give the same output;
 * - nothing is held back for longer than needed: after each push the text
 *   released so far is the decoded input minus at most an unfinished
 *   character and the longest tail that could still begin a stop string;
 * - after a stop, pushes are ignored;
 * - the SSE stream of the chunked run is "data: <json>\n\n" records ending
 *   with "data: [DONE]\n\n", each record a JSON object of the endpoint's
 *   shape, whose text (chat: role first, then delta.content; completions:
 *   text, echo first) concatenates to the output, with one finish_reason
 *   ("stop" exactly when stopped) and the usage chunk when asked.
 */
#include "fuzz.h"
#include "job.h"
#include "server.h"
#include "stream.h"
#include "textbuf.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


#define MAX_STOPS 7

/* ------------------------------------------------------------------------ */
/* Reference                                                                */
/* ------------------------------------------------------------------------ */

typedef struct {
    char *p;
    size_t n, cap;
} buf;

static void put(buf *b, const void *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        b->cap = (b->n + n + 1) * 2;
        b->p = realloc(b->p, b->cap);
        CHECK(b->p);
    }
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

/* Unicode Table 3-7 (well-formed UTF-8): the sequence length a lead byte
 * starts and the range its second byte must be in; 0 for bytes that start
 * nothing. */
static int lead_len(uint8_t c, uint8_t *lo, uint8_t *hi)
{
    *lo = 0x80, *hi = 0xBF;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) return 2;
    if (c == 0xE0) return *lo = 0xA0, 3;
    if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) return 3;
    if (c == 0xED) return *hi = 0x9F, 3;
    if (c == 0xF0) return *lo = 0x90, 4;
    if (c >= 0xF1 && c <= 0xF3) return 4;
    if (c == 0xF4) return *hi = 0x8F, 4;
    return 0;
}

/* Decode s[0..n) into out, each maximal invalid subpart becoming U+FFFD.
 * Not final: an unfinished character at the end is left out; returns the
 * bytes consumed. */
static size_t ref_decode(const uint8_t *s, size_t n, bool final, buf *out)
{
    size_t i = 0;
    while (i < n) {
        uint8_t lo, hi;
        int len = lead_len(s[i], &lo, &hi);
        if (len == 0) {
            put(out, "\xEF\xBF\xBD", 3);
            i++;
            continue;
        }
        int ok = 1; /* bytes of a valid prefix so far */
        while (ok < len && i + (size_t)ok < n) {
            uint8_t b = s[i + (size_t)ok];
            uint8_t l = ok == 1 ? lo : 0x80, h = ok == 1 ? hi : 0xBF;
            if (b < l || b > h) break;
            ok++;
        }
        if (ok == len) {
            put(out, s + i, (size_t)len);
            i += (size_t)len;
        } else if (i + (size_t)ok == n && !final) {
            break; /* could still be completed */
        } else {
            put(out, "\xEF\xBF\xBD", 3);
            i += (size_t)ok;
        }
    }
    return i;
}

static bool is_utf8(const char *s, size_t n)
{
    buf b = {0};
    size_t used = ref_decode((const uint8_t *)s, n, false, &b);
    bool ok = used == n && b.n == n && (n == 0 || !memcmp(b.p, s, n));
    free(b.p);
    return ok;
}

typedef struct {
    char *s[MAX_STOPS]; /* as given (C strings) */
    size_t n;
    buf text[MAX_STOPS]; /* as matched: decoded */
} stopset;

/* The stop string of t[0..n) that ends first (ties: starts first):
 * its start, or -1. */
static long first_stop(const stopset *ss, const char *t, size_t n)
{
    long best = -1;
    size_t best_end = (size_t)-1;
    for (size_t k = 0; k < ss->n; k++) {
        const buf *st = &ss->text[k];
        if (!st->n) continue;
        const char *f = memmem(t, n, st->p, st->n);
        if (!f) continue;
        size_t at = (size_t)(f - t), end = at + st->n;
        if (end < best_end || (end == best_end && (long)at < best)) best = (long)at, best_end = end;
    }
    return best;
}

/* Length of the longest tail of t[0..n) that is a proper prefix of a stop. */
static size_t held_tail(const stopset *ss, const char *t, size_t n)
{
    size_t keep = 0;
    for (size_t k = 0; k < ss->n; k++) {
        const buf *st = &ss->text[k];
        for (size_t m = st->n ? st->n - 1 : 0; m > keep; m--)
            if (m <= n && !memcmp(t + n - m, st->p, m)) {
                keep = m;
                break;
            }
    }
    return keep;
}

/* ------------------------------------------------------------------------ */
/* Runs                                                                     */
/* ------------------------------------------------------------------------ */

typedef struct {
    const uint8_t *in;
    size_t n;
    const uint8_t *sizes;
    size_t n_sizes;      /* 0: one push */
    bool take_at_end;
    bool progress;       /* check what is released after every push */
    job *j;              /* SSE: the released text goes to stream_text */
} plan;

static size_t max_stop_len(const stopset *ss)
{
    size_t m = 0;
    for (size_t k = 0; k < ss->n; k++)
        if (ss->text[k].n > m) m = ss->text[k].n;
    return m;
}

static void take(textbuf *tb, buf *out, job *j, bool force)
{
    size_t n;
    const char *t = textbuf_take(tb, &n);
    CHECK(t && t[n] == 0);
    CHECK(is_utf8(t, n));
    put(out, t, n);
    if (j) stream_text(j, t, n, force);
}

/* Push in->n bytes as the plan says; returns the whole output. */
static buf run(const stopset *ss, const plan *pl, bool *stopped)
{
    textbuf *tb = textbuf_new((const char *const *)ss->s, ss->n);
    CHECK(tb);
    buf out = {0}, dec = {0};
    put(&out, "", 0);
    put(&dec, "", 0);
    size_t i = 0, k = 0, decoded = 0, empty = 0;
    bool st = false;
    while (i < pl->n && empty <= pl->n_sizes) {
        size_t len = pl->n_sizes ? pl->sizes[k++ % pl->n_sizes] : pl->n;
        if (len > pl->n - i) len = pl->n - i;
        empty = len ? 0 : empty + 1; /* only zero sizes left: the rest goes at once below */
        bool was = textbuf_stopped(tb);
        bool r = textbuf_push(tb, (const char *)pl->in + i, len);
        i += len;
        CHECK(r == textbuf_stopped(tb));
        CHECK(!was || r); /* stopped stays stopped */
        st = r;
        if (pl->take_at_end) continue;
        size_t before = out.n;
        take(tb, &out, pl->j, false);
        if (was) CHECK(out.n == before); /* nothing after a stop */
        if (st || !pl->progress) continue;
        /* Released so far: everything decided (decoded, minus what could
         * still begin a stop string), no more, no less. */
        size_t old = dec.n;
        decoded += ref_decode(pl->in + decoded, i - decoded, false, &dec);
        size_t from = old > max_stop_len(ss) ? old - max_stop_len(ss) : 0;
        CHECK(first_stop(ss, dec.p + from, dec.n - from) < 0); /* no stop went unnoticed */
        size_t want = dec.n - held_tail(ss, dec.p, dec.n);
        CHECK(out.n == want && !memcmp(out.p, dec.p, want));
    }
    if (i < pl->n) st = textbuf_push(tb, (const char *)pl->in + i, pl->n - i);
    if (!st) textbuf_finish(tb);
    if (pl->j && !pl->j->echo_sent) stream_text(pl->j, "", 0, true);
    take(tb, &out, pl->j, true);
    CHECK(!textbuf_failed(tb));
    *stopped = textbuf_stopped(tb);
    CHECK(!st || *stopped);
    /* Pushes after the end change nothing. */
    if (*stopped) {
        CHECK(textbuf_push(tb, "x", 1));
        size_t n;
        textbuf_take(tb, &n);
        CHECK(n == 0);
    }
    textbuf_free(tb);
    free(dec.p);
    return out;
}

/* ------------------------------------------------------------------------ */
/* SSE                                                                      */
/* ------------------------------------------------------------------------ */

static srv fake_srv;
static const char echo_text[] = "Echo \"quoted\"\n\t\xE2\x80\xA8 \xC3\xA9";

/* Parse the job's SSE bytes; checks the framing and returns the text. */
static void check_sse(job *j, const buf *want, bool stopped)
{
    buf sse = {0};
    put(&sse, "", 0);
    char chunk[7];
    long got;
    while ((got = job_stream_read(j, chunk, sizeof chunk)) > 0) put(&sse, chunk, (size_t)got);
    CHECK(got == -1); /* the stream ended */
    buf text = {0};
    put(&text, "", 0);
    int n_finish = 0, n_events = 0, n_usage = 0;
    bool done = false;
    char *p = sse.p, *end = sse.p + sse.n;
    while (p < end) {
        CHECK(!done); /* nothing after [DONE] */
        CHECK((size_t)(end - p) > 6 && !memcmp(p, "data: ", 6));
        p += 6;
        char *e = memmem(p, (size_t)(end - p), "\n\n", 2);
        CHECK(e);
        CHECK(!memchr(p, '\n', (size_t)(e - p))); /* one line per record */
        if (e - p == 6 && !memcmp(p, "[DONE]", 6)) {
            done = true;
            p = e + 2;
            continue;
        }
        json_error_t je;
        json_t *o = json_loadb(p, (size_t)(e - p), JSON_ALLOW_NUL, &je); /* tokens may hold NUL: \u0000 */
        CHECK(json_is_object(o));
        CHECK(!json_object_get(o, "error"));
        CHECK(!strcmp(json_string_value(json_object_get(o, "object")),
                      j->chat ? "chat.completion.chunk" : "text_completion"));
        json_t *choices = json_object_get(o, "choices");
        CHECK(json_is_array(choices));
        if (json_array_size(choices) == 0) {
            /* The usage chunk, last before [DONE]. */
            CHECK(j->include_usage && json_is_object(json_object_get(o, "usage")));
            n_usage++;
        } else {
            CHECK(json_array_size(choices) == 1 && n_usage == 0);
            json_t *ch = json_array_get(choices, 0);
            json_t *fin = json_object_get(ch, "finish_reason");
            if (json_is_string(fin)) {
                CHECK(!strcmp(json_string_value(fin), stopped ? "stop" : "length"));
                n_finish++;
            } else {
                CHECK(json_is_null(fin) && n_finish == 0);
            }
            json_t *t;
            if (j->chat) {
                json_t *d = json_object_get(ch, "delta");
                CHECK(json_is_object(d));
                json_t *role = json_object_get(d, "role");
                CHECK(!role || (n_events == 0 && !strcmp(json_string_value(role), "assistant")));
                CHECK(n_events > 0 || role); /* the role comes first */
                t = json_object_get(d, "content");
            } else {
                t = json_object_get(ch, "text");
                CHECK(json_is_string(t));
            }
            if (t) {
                CHECK(json_is_string(t));
                put(&text, json_string_value(t), json_string_length(t));
            }
            if (j->include_usage) CHECK(json_is_null(json_object_get(o, "usage")));
        }
        json_decref(o);
        n_events++;
        p = e + 2;
    }
    CHECK(done && n_finish == 1 && n_usage == (j->include_usage ? 1 : 0));
    size_t skip = 0;
    if (j->echo) {
        CHECK(text.n >= j->echo_len && !memcmp(text.p, j->echo_text, j->echo_len));
        skip = j->echo_len;
    }
    CHECK(text.n - skip == want->n && !memcmp(text.p + skip, want->p, want->n));
    free(text.p);
    free(sse.p);
}

/* ------------------------------------------------------------------------ */
/* Entry                                                                    */
/* ------------------------------------------------------------------------ */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    uint8_t fl = data[0];
    size_t pos = 1;
    stopset ss;
    memset(&ss, 0, sizeof ss);
    ss.n = fl & 7;
    for (size_t k = 0; k < ss.n; k++) {
        size_t len = pos < size ? data[pos++] : 0;
        if (len > size - pos) len = size - pos;
        ss.s[k] = strndup((const char *)data + pos, len); /* a NUL ends it early */
        CHECK(ss.s[k]);
        pos += len;
        put(&ss.text[k], "", 0);
        ref_decode((const uint8_t *)ss.s[k], strlen(ss.s[k]), true, &ss.text[k]);
    }
    size_t n_sizes = pos < size ? data[pos++] : 0;
    if (n_sizes > size - pos) n_sizes = size - pos;
    const uint8_t *sizes = data + pos;
    pos += n_sizes;
    /* An exact-size copy so that ASan sees reads past the end. */
    size_t n = size - pos;
    uint8_t *in = malloc(n ? n : 1);
    CHECK(in);
    memcpy(in, data + pos, n);

    /* The reference. */
    buf all = {0};
    put(&all, "", 0);
    ref_decode(in, n, true, &all);
    long cut = first_stop(&ss, all.p, all.n);
    bool ref_stopped = cut >= 0;
    size_t ref_len = ref_stopped ? (size_t)cut : all.n;

    /* The fuzzer's chunks, with the SSE framing of a streaming job. */
    job *j = calloc(1, sizeof *j);
    CHECK(j);
    snprintf(fake_srv.model_id, sizeof fake_srv.model_id, "stories260K.gguf");
    j->s = &fake_srv;
    j->chat = fl & 8;
    j->stream = true;
    j->include_usage = fl & 32;
    j->echo = !j->chat && (fl & 16);
    j->echo_text = j->echo ? (char *)echo_text : NULL;
    j->echo_len = j->echo ? sizeof echo_text - 1 : 0;
    j->n_logprobs = -1;
    snprintf(j->id, sizeof j->id, "cmpl-fuzz");
    stream_begin(j);
    bool st_a, st_b, st_c;
    plan pa = {in, n, sizes, n_sizes, fl & 64, true, j};
    buf a = run(&ss, &pa, &st_a);
    stream_finish(j, st_a ? "stop" : "length");

    plan pb = {in, n, NULL, 0, false, false, NULL};
    buf b = run(&ss, &pb, &st_b);
    static const uint8_t one = 1;
    plan pc = {in, n, &one, 1, false, false, NULL};
    buf c = run(&ss, &pc, &st_c);

    if (st_a != ref_stopped || a.n != ref_len || memcmp(a.p, all.p, ref_len)) {
        fprintf(stderr, "fuzz_textbuf: output (%zu bytes, %s) differs from the reference (%zu bytes, %s)\n", a.n,
                st_a ? "stopped" : "not stopped", ref_len, ref_stopped ? "stopped" : "not stopped");
        CHECK(!"textbuf output == reference");
    }
    CHECK(st_b == st_a && b.n == a.n && !memcmp(b.p, a.p, a.n));
    CHECK(st_c == st_a && c.n == a.n && !memcmp(c.p, a.p, a.n));
    CHECK(is_utf8(a.p, a.n));
    for (size_t k = 0; k < ss.n; k++)
        if (ss.text[k].n) CHECK(!memmem(a.p, a.n, ss.text[k].p, ss.text[k].n));
    check_sse(j, &a, st_a);

    free(j->sse.p);
    free(j);
    free(a.p);
    free(b.p);
    free(c.p);
    free(all.p);
    free(in);
    for (size_t k = 0; k < ss.n; k++) {
        free(ss.s[k]);
        free(ss.text[k].p);
    }
    return 0;
}
