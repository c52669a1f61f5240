/*
 * sbuf.c - see sbuf.h.
 */
#include "sbuf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool sbuf_add(sbuf *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np) return false;
        b->p = np;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return true;
}

bool sbuf_addf(sbuf *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (k < 0) return false;
    if ((size_t)k < sizeof tmp) return sbuf_add(b, tmp, (size_t)k);
    char *big = malloc((size_t)k + 1);
    if (!big) return false;
    va_start(ap, fmt);
    vsnprintf(big, (size_t)k + 1, fmt, ap);
    va_end(ap);
    bool ok = sbuf_add(b, big, (size_t)k);
    free(big);
    return ok;
}

void sbuf_drop_front(sbuf *b, size_t k)
{
    if (!k) return;
    memmove(b->p, b->p + k, b->n - k);
    b->n -= k;
    if (b->p) b->p[b->n] = 0;
}
