/*
 * textbuf.c - UTF-8 and stop-string assembly for generated text.
 *
 * Three stages, each a byte buffer: raw (at most one unfinished UTF-8
 * sequence), held (decoded text that could still be the start of a stop
 * string) and out (decided text, waiting for textbuf_take). Invalid bytes are
 * replaced with U+FFFD following Unicode's "maximal subpart" practice, so a
 * stray lead byte costs one replacement character and the next byte is
 * examined afresh.
 */
#include "textbuf.h"
#include "sbuf.h"

#include <stdlib.h>
#include <string.h>

struct textbuf {
    sbuf raw, held, out, taken;
    char **stops;
    size_t *stop_len;
    size_t n_stops;
    bool stopped, failed;
};


textbuf *textbuf_new(const char *const *stops, size_t n)
{
    textbuf *tb = calloc(1, sizeof *tb);
    if (!tb) return NULL;
    if (n) {
        tb->stops = calloc(n, sizeof *tb->stops);
        tb->stop_len = calloc(n, sizeof *tb->stop_len);
        if (!tb->stops || !tb->stop_len) goto fail;
        for (size_t i = 0; i < n; i++) {
            if (!stops[i] || !stops[i][0]) continue;
            /* Matched against decoded text: invalid bytes count as U+FFFD
             * here too (a raw continuation byte could match inside a
             * character and cut it). */
            if (!(tb->stops[tb->n_stops] = utf8_sanitize(stops[i], strlen(stops[i]), &tb->stop_len[tb->n_stops])))
                goto fail;
            tb->n_stops++;
        }
    }
    return tb;
fail:
    textbuf_free(tb);
    return NULL;
}

void textbuf_free(textbuf *tb)
{
    if (!tb) return;
    for (size_t i = 0; i < tb->n_stops; i++) free(tb->stops[i]);
    free(tb->stops);
    free(tb->stop_len);
    free(tb->raw.p);
    free(tb->held.p);
    free(tb->out.p);
    free(tb->taken.p);
    free(tb);
}

/* Length of the valid sequence at s (1..4), 0 if s[0..n) is a valid but
 * unfinished prefix, or -k when the first k bytes are an invalid maximal
 * subpart (k >= 1). */
static int utf8_seq(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    if (c < 0x80) return 1;
    int len;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c == 0xE0) len = 3, lo = 0xA0;
    else if (c == 0xED) len = 3, hi = 0x9F;
    else if (c >= 0xE1 && c <= 0xEF) len = 3;
    else if (c == 0xF0) len = 4, lo = 0x90;
    else if (c == 0xF4) len = 4, hi = 0x8F;
    else if (c >= 0xF1 && c <= 0xF3) len = 4;
    else return -1;
    for (int i = 1; i < len; i++) {
        if ((size_t)i >= n) return 0;
        unsigned b = s[i];
        unsigned l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
        if (b < l || b > h) return -i;
    }
    return len;
}

size_t utf8_valid_prefix(const char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        int k = utf8_seq((const unsigned char *)s + i, n - i);
        if (k <= 0) break;
        i += (size_t)k;
    }
    return i;
}

static const char REPL[] = "\xEF\xBF\xBD";

/* Decode raw into held; with final, an unfinished tail becomes U+FFFD. */
static void decode(textbuf *tb, bool final)
{
    size_t i = 0;
    const unsigned char *s = (const unsigned char *)tb->raw.p;
    while (i < tb->raw.n) {
        int k = utf8_seq(s + i, tb->raw.n - i);
        if (k > 0) {
            /* Copy a run of valid sequences at once. */
            size_t j = i + (size_t)k;
            while (j < tb->raw.n) {
                int k2 = utf8_seq(s + j, tb->raw.n - j);
                if (k2 <= 0) break;
                j += (size_t)k2;
            }
            if (!sbuf_add(&tb->held, (const char *)s + i, j - i)) tb->failed = true;
            i = j;
        } else if (k < 0) {
            if (!sbuf_add(&tb->held, REPL, 3)) tb->failed = true;
            i += (size_t)(-k);
        } else if (final) {
            if (!sbuf_add(&tb->held, REPL, 3)) tb->failed = true;
            i = tb->raw.n;
        } else {
            break;
        }
    }
    sbuf_drop_front(&tb->raw, i);
}

/* Move decided text from held to out: up to a stop string, or everything
 * except the longest tail that is a proper prefix of some stop string. Of
 * several stop strings in held, the one that ends first decides (ties: the
 * one that starts first): that is the one a token-by-token stream completes
 * first, so the result does not depend on how the bytes were pushed. */
static void scan(textbuf *tb, bool final)
{
    const char *h = tb->held.p;
    size_t n = tb->held.n;
    if (!n) return;
    size_t best = (size_t)-1, best_end = (size_t)-1;
    for (size_t k = 0; k < tb->n_stops; k++) {
        const char *f = memmem(h, n, tb->stops[k], tb->stop_len[k]);
        if (!f) continue;
        size_t at = (size_t)(f - h), end = at + tb->stop_len[k];
        if (end < best_end || (end == best_end && at < best)) best = at, best_end = end;
    }
    if (best != (size_t)-1) {
        if (!sbuf_add(&tb->out, h, best)) tb->failed = true;
        tb->held.n = 0;
        tb->raw.n = 0;
        tb->stopped = true;
        return;
    }
    size_t keep = 0;
    if (!final) {
        for (size_t k = 0; k < tb->n_stops; k++) {
            size_t m = tb->stop_len[k] - 1 < n ? tb->stop_len[k] - 1 : n;
            for (; m > keep; m--)
                if (!memcmp(h + n - m, tb->stops[k], m)) break;
            if (m > keep) keep = m;
        }
    }
    if (!sbuf_add(&tb->out, h, n - keep)) tb->failed = true;
    sbuf_drop_front(&tb->held, n - keep);
}

bool textbuf_push(textbuf *tb, const char *bytes, size_t n)
{
    if (tb->stopped) return true;
    if (!sbuf_add(&tb->raw, bytes, n)) {
        tb->failed = true;
        return false;
    }
    decode(tb, false);
    scan(tb, false);
    return tb->stopped;
}

void textbuf_finish(textbuf *tb)
{
    if (tb->stopped) return;
    decode(tb, true);
    scan(tb, true);
}

const char *textbuf_take(textbuf *tb, size_t *len)
{
    /* Swap out and taken so the returned pointer stays valid until the next call. */
    sbuf t = tb->taken;
    tb->taken = tb->out;
    tb->out = t;
    tb->out.n = 0;
    if (tb->out.p) tb->out.p[0] = 0;
    *len = tb->taken.n;
    return tb->taken.p ? tb->taken.p : "";
}

bool textbuf_stopped(const textbuf *tb) { return tb->stopped; }
bool textbuf_failed(const textbuf *tb) { return tb->failed; }

char *utf8_sanitize(const char *s, size_t n, size_t *out_len)
{
    sbuf b = {0};
    size_t i = 0;
    const unsigned char *u = (const unsigned char *)s;
    bool ok = sbuf_add(&b, "", 0);
    while (ok && i < n) {
        int k = utf8_seq(u + i, n - i);
        if (k > 0) {
            ok = sbuf_add(&b, s + i, (size_t)k);
            i += (size_t)k;
        } else {
            ok = sbuf_add(&b, REPL, 3);
            i += k < 0 ? (size_t)(-k) : n - i;
        }
    }
    if (!ok) {
        free(b.p);
        return NULL;
    }
    if (out_len) *out_len = b.n;
    return b.p;
}

size_t utf8_count(const char *s, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        if (((unsigned char)s[i] & 0xC0) != 0x80) c++;
    return c;
}
