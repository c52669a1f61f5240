/*
 * bridge.c - the locked event list between the scheduler thread and the
 * loop thread (see bridge.h for the design). One malloc per event; events
 * are small and the loop frees them right after delivery.
 */
#include "bridge.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

static void on_async(uv_async_t *a)
{
    bridge_flush(a->data);
}

int bridge_init(bridge *b, uv_loop_t *loop, bridge_handler h, void *user)
{
    memset(b, 0, sizeof *b);
    b->handler = h;
    b->handler_user = user;
    pthread_mutex_init(&b->lock, NULL);
    int rc = uv_async_init(loop, &b->async, on_async);
    b->async.data = b;
    return rc;
}

void bridge_flush(bridge *b)
{
    pthread_mutex_lock(&b->lock);
    bridge_event *e = b->head;
    b->head = b->tail = NULL;
    pthread_mutex_unlock(&b->lock);
    while (e) {
        bridge_event *next = e->next;
        b->handler(&e->ev, b->handler_user);
        free(e);
        e = next;
    }
}

void bridge_close(bridge *b)
{
    bridge_flush(b);
    uv_close((uv_handle_t *)&b->async, NULL);
}

void bridge_event_cb(const eng_event *ev, void *user)
{
    bridge_user *bu = user;
    bridge *b = bu->b;
    size_t size = BRIDGE_EVENT_SIZE(ev->orthorank != NULL);
    bridge_event *e = malloc(size);
    if (!e) {
        /* Dropping a TOKEN would corrupt the text; dropping DONE would leak
         * the request. Neither is acceptable, so wait for memory. */
        while (!(e = malloc(size))) {
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
    }
    e->next = NULL;
    e->ev = *ev;
    e->ev.user = bu->user;
    int32_t n = ev->n_top > ENG_MAX_TOP_LOGPROBS ? ENG_MAX_TOP_LOGPROBS : (ev->n_top < 0 ? 0 : ev->n_top);
    e->ev.n_top = n;
    if (n && ev->top_ids) memcpy(e->top_ids, ev->top_ids, (size_t)n * sizeof(int32_t));
    if (n && ev->top_logprobs) memcpy(e->top_lps, ev->top_logprobs, (size_t)n * sizeof(float));
    e->ev.top_ids = e->top_ids;
    e->ev.top_logprobs = e->top_lps;
    if (ev->orthorank) {
        e->orthorank = *ev->orthorank;
        e->ev.orthorank = &e->orthorank;
    }
    pthread_mutex_lock(&b->lock);
    if (b->tail) b->tail->next = e;
    else b->head = e;
    b->tail = e;
    pthread_mutex_unlock(&b->lock);
    uv_async_send(&b->async);
}
