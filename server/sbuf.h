/*
 * sbuf.h - a growable byte buffer, always NUL-terminated (p may be NULL while
 * empty). Used for SSE bytes, JSON text and the text assembler. Plain data:
 * zero-initialise, free(p) when done.
 */
#ifndef ORTHOSERVE_SBUF_H
#define ORTHOSERVE_SBUF_H

#include <stdbool.h>
#include <stddef.h>

typedef struct {
    char *p;
    size_t n, cap;
} sbuf;

/* Append n bytes; false (buffer unchanged) when memory runs out. */
bool sbuf_add(sbuf *b, const char *s, size_t n);
bool sbuf_addf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Drop the first k bytes (k <= n). */
void sbuf_drop_front(sbuf *b, size_t k);

#endif
