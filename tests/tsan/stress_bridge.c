/*
 * stress_bridge.c - the server's engine->loop hand-off (server/bridge.c)
 * under ThreadSanitizer: 4 producer threads (standing in for the scheduler
 * thread) post events through bridge_event_cb while the libuv loop delivers
 * them; every event must arrive exactly once, in order per producer, with its
 * top-logprob arrays intact. Plain program (Criterion cannot run under
 * TSan); run by ctest in every build. Exit 0 = pass.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "bridge.h"

#define PRODUCERS 4
#define EVENTS 20000

#define CHECK(c)                                                                         \
    do {                                                                                 \
        if (!(c)) {                                                                      \
            fprintf(stderr, "stress_bridge: check failed: %s (line %d)\n", #c, __LINE__); \
            exit(1);                                                                     \
        }                                                                                \
    } while (0)

static bridge br;
static bridge_user users[PRODUCERS];
static int next_index[PRODUCERS]; /* loop thread only */
static long delivered;            /* loop thread only */
static atomic_int producers_done;

static void on_event(const eng_event *ev, void *user)
{
    (void)user;
    int p = (int)(intptr_t)ev->user;
    CHECK(p >= 0 && p < PRODUCERS);
    CHECK(ev->index == next_index[p]); /* in order, none lost or doubled */
    CHECK(ev->n_top == 3 && ev->top_ids[2] == ev->index + 2 && ev->top_logprobs[1] == -1.0f);
    next_index[p]++;
    delivered++;
}

static void *producer(void *arg)
{
    int p = (int)(intptr_t)arg;
    int32_t ids[3];
    float lps[3] = {0.0f, -1.0f, -2.0f};
    for (int i = 0; i < EVENTS; i++) {
        ids[0] = i;
        ids[1] = i + 1;
        ids[2] = i + 2;
        eng_event ev = {.type = ENG_EVENT_TOKEN, .index = i, .token = i, .n_top = 3, .top_ids = ids,
                        .top_logprobs = lps};
        bridge_event_cb(&ev, &users[p]); /* the callback copies: ids may change right after */
    }
    atomic_fetch_add(&producers_done, 1);
    return NULL;
}

static void on_check(uv_timer_t *t)
{
    if (atomic_load(&producers_done) == PRODUCERS) {
        bridge_flush(&br);
        if (delivered == (long)PRODUCERS * EVENTS) {
            uv_timer_stop(t);
            uv_close((uv_handle_t *)t, NULL);
            bridge_close(&br);
        }
    }
}

int main(void)
{
    uv_loop_t *loop = uv_default_loop();
    CHECK(bridge_init(&br, loop, on_event, NULL) == 0);
    for (int p = 0; p < PRODUCERS; p++) users[p] = (bridge_user){&br, (void *)(intptr_t)p};
    uv_timer_t check;
    uv_timer_init(loop, &check);
    uv_timer_start(&check, on_check, 1, 1);
    pthread_t th[PRODUCERS];
    for (int p = 0; p < PRODUCERS; p++) CHECK(pthread_create(&th[p], NULL, producer, (void *)(intptr_t)p) == 0);
    uv_run(loop, UV_RUN_DEFAULT); /* returns once the bridge and the timer are closed */
    for (int p = 0; p < PRODUCERS; p++) pthread_join(th[p], NULL);
    CHECK(delivered == (long)PRODUCERS * EVENTS);
    printf("stress_bridge: %ld events delivered in order\n1 passed, 0 failed\n", delivered);
    return 0;
}
