/*
 * pool.c - the compute pool that runs the matrix work inside one engine step.
 *
 * DESIGN: the thread that calls eng__pool_run is thread 0; n-1 workers wait
 * for a new job generation. A forward pass is one job: every thread walks the
 * same sequence of phases, each splitting its work by thread index, with
 * eng__pool_barrier between phases. Workers spin (with pause) for a short
 * while after each job, because the next job usually follows within
 * microseconds during a step, and sleep on a condition variable otherwise so
 * an idle server uses no CPU. Jobs never overlap: one caller at a time.
 */
#include "internal.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

#define SPIN_S 0.002 /* how long an idle worker spins before sleeping (2 ms) */
#define SPIN_YIELD 4096 /* pauses before a waiting thread yields its core */

/* Spin politely: after SPIN_YIELD pauses, give the core away each round, so a
 * thread the OS has descheduled (more threads than free cores) gets to run
 * instead of everyone burning time slices waiting for it. */
static inline void spin_wait(unsigned *spins)
{
    if (++*spins < SPIN_YIELD) {
        cpu_relax();
    } else {
        sched_yield();
    }
}

struct eng__pool {
    int n;
    int active; /* threads in the current job (1 or n) */
    pthread_t *threads;
    eng__pool_fn fn;
    void *arg;
    atomic_uint gen;     /* bumped once per job */
    atomic_int pending;  /* workers still in the current job */
    atomic_bool stop;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    /* barrier */
    atomic_int bar_count;
    atomic_uint bar_phase;
};

typedef struct {
    eng__pool *p;
    int ith;
} worker_arg;

static void *worker_main(void *a)
{
    worker_arg *wa = a;
    eng__pool *p = wa->p;
    int ith = wa->ith;
    free(wa);
    unsigned seen = 0;
    for (;;) {
        unsigned g = atomic_load_explicit(&p->gen, memory_order_acquire);
        if (g == seen) {
            double t0 = eng__now();
            int spins = 0;
            while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen &&
                   !atomic_load(&p->stop)) {
                cpu_relax();
                if (++spins % 1024 == 0) {
                    if (eng__now() - t0 > SPIN_S) break;
                    if (spins >= SPIN_YIELD) sched_yield();
                }
            }
            if (g == seen) {
                pthread_mutex_lock(&p->mu);
                while ((g = atomic_load(&p->gen)) == seen && !atomic_load(&p->stop))
                    pthread_cond_wait(&p->cv, &p->mu);
                pthread_mutex_unlock(&p->mu);
            }
        }
        if (atomic_load(&p->stop)) break;
        seen = g;
        p->fn(ith, p->n, p->arg);
        atomic_fetch_sub_explicit(&p->pending, 1, memory_order_acq_rel);
    }
    return NULL;
}

eng_status eng__pool_new(int n_threads, eng__pool **out)
{
    if (n_threads < 1 || n_threads > 512 || !out) return ENG_EINVAL;
    eng__pool *p = eng__calloc(1, sizeof *p);
    if (!p) return ENG_ENOMEM;
    p->n = n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->threads = eng__calloc((size_t)n_threads, sizeof *p->threads);
    if (!p->threads) goto err;
    for (int i = 1; i < n_threads; i++) {
        worker_arg *wa = eng__malloc(sizeof *wa);
        if (!wa) goto err_threads;
        wa->p = p;
        wa->ith = i;
        if (pthread_create(&p->threads[i], NULL, worker_main, wa) != 0) {
            free(wa);
            goto err_threads;
        }
        continue;
    err_threads:
        p->n = i; /* only threads 1..i-1 exist */
        eng__pool_free(p);
        return ENG_ENOMEM;
    }
    *out = p;
    return ENG_OK;
err:
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p);
    return ENG_ENOMEM;
}

void eng__pool_free(eng__pool *p)
{
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, true);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n; i++) pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->threads);
    free(p);
}

int eng__pool_size(const eng__pool *p) { return p->n; }

void eng__pool_run(eng__pool *p, eng__pool_fn fn, void *arg)
{
    eng__pool_run_n(p, p->n, fn, arg);
}

void eng__pool_run_n(eng__pool *p, int n, eng__pool_fn fn, void *arg)
{
    if (p->n == 1 || n <= 1) {
        p->active = 1;
        fn(0, 1, arg);
        return;
    }
    p->active = p->n;
    p->fn = fn;
    p->arg = arg;
    atomic_store_explicit(&p->pending, p->n - 1, memory_order_relaxed);
    atomic_store_explicit(&p->bar_count, 0, memory_order_relaxed);
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    fn(0, p->n, arg);
    unsigned spins = 0;
    while (atomic_load_explicit(&p->pending, memory_order_acquire) > 0) spin_wait(&spins);
}

void eng__pool_barrier(eng__pool *p)
{
    if (p->active <= 1) return;
    unsigned phase = atomic_load_explicit(&p->bar_phase, memory_order_acquire);
    if (atomic_fetch_add_explicit(&p->bar_count, 1, memory_order_acq_rel) == p->n - 1) {
        atomic_store_explicit(&p->bar_count, 0, memory_order_relaxed);
        atomic_fetch_add_explicit(&p->bar_phase, 1, memory_order_release);
        return;
    }
    unsigned spins = 0;
    while (atomic_load_explicit(&p->bar_phase, memory_order_acquire) == phase) spin_wait(&spins);
}

void eng__split(int64_t n, int ith, int nth, int64_t align, int64_t *r0, int64_t *r1)
{
    if (align < 1) align = 1;
    int64_t chunks = (n + align - 1) / align;
    int64_t per = chunks / nth, extra = chunks % nth;
    int64_t c0 = ith * per + (ith < extra ? ith : extra);
    int64_t c1 = c0 + per + (ith < extra ? 1 : 0);
    *r0 = c0 * align < n ? c0 * align : n;
    *r1 = c1 * align < n ? c1 * align : n;
}
