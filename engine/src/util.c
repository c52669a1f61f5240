/*
 * util.c - status names, logging, allocation wrappers (with a fault-injection
 * knob for tests), assertion failure, the byte buffer and the clock.
 */
#include "internal.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <string.h>
#include <time.h>

const char *eng_strerror(eng_status st)
{
    switch (st) {
    case ENG_OK: return "success";
    case ENG_EINVAL: return "invalid argument";
    case ENG_ENOMEM: return "out of memory";
    case ENG_EIO: return "i/o error";
    case ENG_EFORMAT: return "malformed file";
    case ENG_ECTXFULL: return "context full";
    case ENG_ECANCELED: return "cancelled";
    case ENG_ERANGE: return "buffer too small";
    case ENG_EUNSUPPORTED: return "not supported";
    case ENG_EBUSY: return "busy";
    case ENG_ESTOPPED: return "stopped";
    }
    return "unknown status";
}

void eng__errf(char *buf, size_t len, const char *fmt, ...)
{
    if (!buf || len == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, len, fmt, ap);
    va_end(ap);
}

static eng_log_fn log_fn;
static void *log_user;
static eng_log_level log_max = ENG_LOG_INFO;

void eng_log_set(eng_log_fn fn, void *user, eng_log_level max_level)
{
    log_fn = fn;
    log_user = user;
    log_max = max_level;
}

void eng__log(eng_log_level lvl, const char *fmt, ...)
{
    if (!log_fn || lvl > log_max) return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    log_fn(lvl, msg, log_user);
}

_Noreturn void eng__assert_fail(const char *expr, const char *file, int line)
{
    /* Our own bug, never bad input: there is nothing sane left to do. */
    fprintf(stderr, "orthoserve: assertion failed: %s (%s:%d)\n", expr, file, line);
    abort();
}

/*
 * Fault injection: ORTHOSERVE_FAIL_ALLOC_AT=N makes the N-th allocation
 * through these wrappers (counted from process start, 1-based) fail, so
 * tests can walk every error path. Read once.
 */
static atomic_long alloc_count;
static long fail_at = -1;

static bool alloc_should_fail(void)
{
    if (fail_at < 0) {
        const char *s = getenv("ORTHOSERVE_FAIL_ALLOC_AT");
        long v = s ? strtol(s, NULL, 10) : 0;
        fail_at = v > 0 ? v : 0;
    }
    if (fail_at == 0) return false;
    return atomic_fetch_add(&alloc_count, 1) + 1 == fail_at;
}

void *eng__malloc(size_t n) { return alloc_should_fail() ? NULL : malloc(n ? n : 1); }
void *eng__calloc(size_t n, size_t sz) { return alloc_should_fail() ? NULL : calloc(n ? n : 1, sz ? sz : 1); }
void *eng__realloc(void *p, size_t n) { return alloc_should_fail() ? NULL : realloc(p, n ? n : 1); }

void *eng__aligned_alloc(size_t align, size_t n)
{
    if (alloc_should_fail()) return NULL;
    void *p = NULL;
    if (posix_memalign(&p, align, n ? n : align) != 0) return NULL;
    return p;
}

void eng__aligned_free(void *p) { free(p); }

/*
 * Big read-mostly buffers (weights read into memory): anonymous memory
 * aligned to 2 MiB and advised for transparent huge pages. Decoding streams
 * every weight once per token; with 4 KiB pages that is a TLB miss (and a
 * page walk) every 4 KiB, with 2 MiB pages almost none.
 */
#define HUGE_SZ ((size_t)2 << 20)
static size_t huge_len(size_t n) { return (n + HUGE_SZ - 1) & ~(HUGE_SZ - 1); }

void *eng__huge_alloc(size_t n)
{
    if (alloc_should_fail()) return NULL;
    size_t len = huge_len(n ? n : 1);
    uint8_t *p = mmap(NULL, len + HUGE_SZ, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    uint8_t *a = (uint8_t *)(((uintptr_t)p + HUGE_SZ - 1) & ~(uintptr_t)(HUGE_SZ - 1));
    if (a > p) munmap(p, (size_t)(a - p));
    if (p + len + HUGE_SZ > a + len) munmap(a + len, (size_t)(p + len + HUGE_SZ - (a + len)));
#ifdef MADV_HUGEPAGE
    madvise(a, len, MADV_HUGEPAGE); /* advice only: fine if THP is off */
#endif
    return a;
}

void eng__huge_free(void *p, size_t n)
{
    if (p) munmap(p, huge_len(n ? n : 1));
}

void eng__drop_pages(const void *p, size_t n)
{
    const uintptr_t pg = 4096, a = ((uintptr_t)p + pg - 1) & ~(pg - 1), e = ((uintptr_t)p + n) & ~(pg - 1);
    if (e > a) madvise((void *)a, e - a, MADV_DONTNEED); /* advice only */
}
void eng_free(void *p) { free(p); }

char *eng__strndup(const char *s, size_t n)
{
    char *d = eng__malloc(n + 1);
    if (!d) return NULL;
    memcpy(d, s, n);
    d[n] = 0;
    return d;
}

/* ------------------------------------------------------------------------ */
/* Byte buffer and clock                                                    */
/* ------------------------------------------------------------------------ */

bool eng__buf_reserve(eng__buf *b, size_t n)
{
    if (b->oom) return false;
    if (n > SIZE_MAX / 2 - b->len) {
        b->oom = true;
        return false;
    }
    size_t need = b->len + n + 1;
    if (need <= b->cap) return true;
    size_t cap = b->cap * 2 > need ? b->cap * 2 : need;
    if (cap < 256) cap = 256;
    char *d = eng__realloc(b->data, cap);
    if (!d) {
        b->oom = true;
        return false;
    }
    b->data = d;
    b->cap = cap;
    return true;
}

void eng__buf_append(eng__buf *b, const void *p, size_t n)
{
    if (n == 0 || !eng__buf_reserve(b, n)) return;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = 0;
}

void eng__buf_puts(eng__buf *b, const char *s) { eng__buf_append(b, s, strlen(s)); }

void eng__buf_printf(eng__buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->oom = true; /* an encoding error: the text would be incomplete */
        return;
    }
    if (n == 0 || !eng__buf_reserve(b, (size_t)n)) return;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

char *eng__buf_take(eng__buf *b)
{
    char *d = NULL;
    if (eng__buf_reserve(b, 0)) {
        d = b->data;
        d[b->len] = 0;
        b->data = NULL;
    }
    eng__buf_free(b);
    return d;
}

void eng__buf_free(eng__buf *b)
{
    free(b->data);
    *b = (eng__buf){0};
}

double eng__now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
