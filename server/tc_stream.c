/*
 * tc_stream.c - a growing reply parsed whole at each push (toolcall.c keeps
 * back what may still become a call) and compared with what was sent: the
 * difference is the delta. Calls are sent once complete, in order.
 */
#include "tc_stream.h"

#include <stdlib.h>
#include <string.h>

void tc_stream_init(tc_stream *s, const tc_opts *o, bool single)
{
    memset(s, 0, sizeof *s);
    s->o = *o;
    s->single = single;
}

void tc_stream_free(tc_stream *s)
{
    if (!s) return;
    free(s->text.p);
    free(s->content.p);
    free(s->reasoning.p);
    memset(s, 0, sizeof *s);
}

/* Calls after the first dropped (parallel_tool_calls false). */
static void keep_first(tc_result *r)
{
    for (size_t k = 1; k < r->n_calls; k++) {
        free(r->calls[k].name);
        free(r->calls[k].arguments);
    }
    if (r->n_calls > 1) r->n_calls = 1;
}

int tc_parse_reply(const tc_opts *o, bool single, const char *text, size_t n, tc_result *out)
{
    if (tc_parse(o, text, n, false, out)) return -1;
    if (single) keep_first(out);
    return 0;
}

/* What now extends sent: appended to sent, *new_p / *new_n point at it.
 * hold: trailing whitespace waits (a call after it would trim it). */
static int extend(sbuf *sent, const char *now, size_t k, bool hold, const char **new_p, size_t *new_n)
{
    *new_p = NULL;
    *new_n = 0;
    while (hold && k && memchr(" \t\r\n", now[k - 1], 4)) k--; /* (not strchr: NUL is no space) */
    if (k <= sent->n || (sent->n && memcmp(now, sent->p, sent->n))) return 0;
    size_t old = sent->n;
    if (!sbuf_add(sent, now + old, k - old)) return -1;
    *new_p = sent->p + old;
    *new_n = k - old;
    return 0;
}

/* n, less a UTF-8 sequence cut short at the end (a JSON parser would call
 * the text malformed where it is only unfinished). */
static size_t whole_chars(const char *p, size_t n)
{
    for (size_t k = 1; k <= 3 && k <= n; k++) {
        unsigned char c = (unsigned char)p[n - k];
        if ((c & 0xC0) == 0x80) continue; /* a continuation byte */
        size_t len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
        return len > k ? n - k : n;
    }
    return n;
}

int tc_stream_push(tc_stream *s, const char *t, size_t n, bool final, tc_delta *d)
{
    memset(d, 0, sizeof *d);
    if (n && !sbuf_add(&s->text, t, n)) return -1;
    size_t upto = final ? s->text.n : whole_chars(s->text.p, s->text.n);
    if (tc_parse(&s->o, s->text.p ? s->text.p : "", upto, !final, &d->r)) return -1;
    if (s->single) keep_first(&d->r);
    if (extend(&s->content, d->r.content, d->r.content_n, !final, &d->content, &d->content_n) ||
        extend(&s->reasoning, d->r.reasoning, d->r.reasoning_n, false, &d->reasoning, &d->reasoning_n)) {
        tc_delta_free(d);
        return -1;
    }
    d->first = s->n_calls;
    d->n = d->r.n_calls > s->n_calls ? d->r.n_calls - s->n_calls : 0;
    s->n_calls += d->n;
    return 0;
}

void tc_delta_free(tc_delta *d)
{
    if (!d) return;
    tc_result_free(&d->r);
    memset(d, 0, sizeof *d);
}
