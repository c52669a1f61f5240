/* test_util.c - util.c's byte buffer (appends, printf, growth, the oom
 * latch, take) and its monotonic clock. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

Test(util, buf_appends_and_printf)
{
    eng__buf b = {0};
    cr_assert_null(b.data);
    eng__buf_append(&b, "", 0);
    cr_assert_null(b.data, "an empty append allocates nothing");
    eng__buf_puts(&b, "abc");
    eng__buf_append(&b, "de\0f", 4);
    eng__buf_printf(&b, "[%d %s]", 42, "x");
    cr_assert_eq(b.len, 3 + 4 + 6);
    cr_assert_eq(memcmp(b.data, "abcde\0f[42 x]", b.len), 0);
    cr_assert_eq(b.data[b.len], 0, "NUL-terminated");
    cr_assert_not(b.oom);
    eng__buf_free(&b);
    cr_assert_null(b.data);
    cr_assert_eq(b.len, 0);
}

Test(util, buf_grows_past_many_doublings)
{
    eng__buf b = {0};
    char chunk[100];
    memset(chunk, 'q', sizeof chunk);
    for (int i = 0; i < 1000; i++) eng__buf_append(&b, chunk, sizeof chunk);
    eng__buf_printf(&b, "%0*d", 5000, 7);
    cr_assert_eq(b.len, 100000 + 5000);
    cr_assert_geq(b.cap, b.len + 1);
    cr_assert_eq(b.data[99999], 'q');
    cr_assert_eq(b.data[b.len - 1], '7');
    cr_assert_eq(b.data[b.len - 2], '0');
    eng__buf_free(&b);
}

Test(util, buf_reserve_is_exact_enough)
{
    eng__buf b = {0};
    cr_assert(eng__buf_reserve(&b, 10000));
    cr_assert_geq(b.cap, 10001);
    char *before = b.data;
    for (int i = 0; i < 10000; i++) eng__buf_append(&b, "z", 1);
    cr_assert_eq(b.data, before, "no growth inside a reservation");
    eng__buf_free(&b);
}

Test(util, buf_take)
{
    eng__buf b = {0};
    char *s = eng__buf_take(&b);
    cr_assert_str_eq(s, "", "nothing appended: an empty string");
    free(s);
    eng__buf_puts(&b, "hello");
    s = eng__buf_take(&b);
    cr_assert_str_eq(s, "hello");
    cr_assert_null(b.data, "take empties the buffer");
    free(s);
}

Test(util, buf_oom_latches)
{
    eng__buf b = {0};
    cr_assert_not(eng__buf_reserve(&b, SIZE_MAX - 1));
    cr_assert(b.oom);
    eng__buf_puts(&b, "ignored");
    eng__buf_printf(&b, "%s", "ignored");
    cr_assert_eq(b.len, 0);
    cr_assert_null(eng__buf_take(&b), "take reports the failure");
    cr_assert_not(b.oom, "and resets the buffer");
}

Test(util, buf_oom_from_the_allocator)
{
    setenv("ORTHOSERVE_FAIL_ALLOC_AT", "2", 1);
    eng__buf b = {0};
    eng__buf_puts(&b, "first allocation");
    cr_assert_not(b.oom);
    char big[1000];
    memset(big, 'b', sizeof big);
    eng__buf_append(&b, big, sizeof big); /* the second allocation fails */
    cr_assert(b.oom);
    cr_assert_eq(b.len, strlen("first allocation"), "the contents before stay");
    eng__buf_free(&b);
}

Test(util, clock_is_monotonic_seconds)
{
    double t0 = eng__now();
    cr_assert_gt(t0, 0.0);
    double t1 = t0;
    for (int i = 0; i < 100000; i++) {
        double t = eng__now();
        cr_assert_geq(t, t1);
        t1 = t;
    }
    struct timespec d = {0, 20 * 1000 * 1000};
    nanosleep(&d, NULL);
    double dt = eng__now() - t0;
    cr_assert(dt >= 0.02 && dt < 5.0, "slept 20 ms, measured %g s", dt);
}
