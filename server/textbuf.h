/*
 * textbuf.h - turns the raw bytes of generated tokens into text that is safe
 * to send: valid UTF-8 only (split on character boundaries; bytes that can
 * never form a character become U+FFFD), and stop strings held back until
 * decided. Once a stop string is seen, the text before it is released, the
 * stop string and everything after it are dropped, and textbuf_stopped()
 * turns true. When several are in the text, the one that is complete first
 * (ends first; of those, the one that starts first) decides, so the output
 * is the same however the bytes were split into pushes. Stop strings are
 * matched against the decoded text: their own invalid bytes count as
 * U+FFFD. Single-threaded; no JSON; unit-testable and fuzzable
 * (tests/fuzz/fuzz_textbuf.c).
 */
#ifndef ORTHOSERVE_TEXTBUF_H
#define ORTHOSERVE_TEXTBUF_H

#include <stdbool.h>
#include <stddef.h>

typedef struct textbuf textbuf;

/* stops: n strings (copied; empty ones are ignored). NULL on allocation failure.
 * Free with textbuf_free(). */
textbuf *textbuf_new(const char *const *stops, size_t n);
void textbuf_free(textbuf *tb);

/* Feed n bytes (any bytes). Returns true when a stop string has been matched
 * (now or before); bytes pushed after that are ignored. -1 never: allocation
 * failure is reported as false with textbuf_failed() true. */
bool textbuf_push(textbuf *tb, const char *bytes, size_t n);
/* No more bytes will come: an unfinished character becomes U+FFFD and the
 * held-back text is released (unless a stop string was matched). */
void textbuf_finish(textbuf *tb);
/* The text decided since the last take (valid UTF-8, may be empty). The
 * pointer is valid until the next call on tb; the text is consumed. */
const char *textbuf_take(textbuf *tb, size_t *len);
bool textbuf_stopped(const textbuf *tb);
bool textbuf_failed(const textbuf *tb);

/* Byte length of the longest prefix of s[0..n) that is valid UTF-8 and ends
 * on a character boundary (for callers that validate input). */
size_t utf8_valid_prefix(const char *s, size_t n);

/* A copy of s[0..n) with invalid UTF-8 replaced by U+FFFD (NUL-terminated,
 * *out_len its length without the NUL). Free with free(); NULL if out of memory. */
char *utf8_sanitize(const char *s, size_t n, size_t *out_len);
/* Number of code points in valid UTF-8 text. */
size_t utf8_count(const char *s, size_t n);

#endif
