/* test_pool.c - the compute pool: every thread runs each job once, barriers
 * order phases, eng__split covers a range exactly, and many short jobs in a
 * row (the decode pattern) neither lose nor duplicate work. */
#include <criterion/criterion.h>
#include <stdatomic.h>

#include "internal.h"

typedef struct {
    eng__pool *p;
    atomic_int hits[8];
    int phase_a[8], phase_b[8];
    atomic_int bad;
} job;

static void count_job(int ith, int nth, void *arg)
{
    job *j = arg;
    (void)nth;
    atomic_fetch_add(&j->hits[ith], 1);
}

static void phased_job(int ith, int nth, void *arg)
{
    job *j = arg;
    for (int round = 0; round < 100; round++) {
        j->phase_a[ith] = round;
        eng__pool_barrier(j->p);
        /* after the barrier every thread has written this round */
        for (int t = 0; t < nth; t++)
            if (j->phase_a[t] != round) atomic_fetch_add(&j->bad, 1);
        eng__pool_barrier(j->p);
    }
}

Test(pool, every_thread_once_per_job, .timeout = 30)
{
    for (int n = 1; n <= 4; n++) {
        job j = {0};
        cr_assert_eq(eng__pool_new(n, &j.p), ENG_OK);
        cr_assert_eq(eng__pool_size(j.p), n);
        for (int k = 0; k < 2000; k++) eng__pool_run(j.p, count_job, &j);
        for (int t = 0; t < n; t++) cr_assert_eq(atomic_load(&j.hits[t]), 2000, "n=%d thread %d", n, t);
        eng__pool_free(j.p);
    }
}

Test(pool, barriers_order_phases, .timeout = 30)
{
    job j = {0};
    cr_assert_eq(eng__pool_new(3, &j.p), ENG_OK);
    for (int k = 0; k < 20; k++) eng__pool_run(j.p, phased_job, &j);
    cr_assert_eq(atomic_load(&j.bad), 0);
    eng__pool_free(j.p);
}

Test(pool, split_covers_range)
{
    for (int64_t n = 0; n < 300; n += 7)
        for (int nth = 1; nth <= 5; nth++)
            for (int64_t align = 1; align <= 32; align *= 4) {
                int64_t next = 0;
                for (int i = 0; i < nth; i++) {
                    int64_t r0, r1;
                    eng__split(n, i, nth, align, &r0, &r1);
                    cr_assert_eq(r0, next);
                    cr_assert(r1 >= r0);
                    if (r1 < n) cr_assert_eq(r0 % align, 0);
                    next = r1;
                }
                cr_assert_eq(next, n);
            }
}

Test(pool, rejects_bad_sizes)
{
    eng__pool *p = NULL;
    cr_assert_eq(eng__pool_new(0, &p), ENG_EINVAL);
    cr_assert_eq(eng__pool_new(-3, &p), ENG_EINVAL);
    eng__pool_free(NULL);
}
