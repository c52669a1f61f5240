/*
 * bridge.h - engine scheduler thread -> libuv loop thread hand-off.
 *
 * DESIGN: bridge_event_cb is the eng_request_params.on_event of every
 * request; it runs on the scheduler thread, copies the event (top-logprob
 * arrays and OrthoRank stats included) into a node, appends it to a
 * mutex-protected list and calls uv_async_send. uv_async_send coalesces,
 * so the loop's async callback takes the whole list under the lock and then
 * delivers the events, in the order they were posted, to the handler
 * outside the lock. Nothing else of
 * the bridge is touched off the loop thread.
 */
#ifndef ORTHOSERVE_BRIDGE_H
#define ORTHOSERVE_BRIDGE_H

#include "orthoserve/engine.h"

#include <pthread.h>
#include <stddef.h>
#include <uv.h>

/* An owned copy of an eng_event; its pointers point into the same node.
 * The stats (about 4 KiB, layers inline) come with the DONE event only, so
 * they are the last member and a node without them is allocated without
 * them (BRIDGE_EVENT_SIZE): one token event is a few hundred bytes. */
typedef struct bridge_event {
    struct bridge_event *next;
    eng_event ev; /* ev.top_ids / ev.top_logprobs / ev.orthorank point at the fields below */
    int32_t top_ids[ENG_MAX_TOP_LOGPROBS];
    float top_lps[ENG_MAX_TOP_LOGPROBS];
    eng_orthorank_stats orthorank; /* DONE: the one copy of the stats off the scheduler thread */
} bridge_event;
#define BRIDGE_EVENT_SIZE(with_stats) ((with_stats) ? sizeof(bridge_event) : offsetof(bridge_event, orthorank))

typedef void (*bridge_handler)(const eng_event *ev, void *user);

typedef struct {
    uv_async_t async;
    pthread_mutex_t lock;
    bridge_event *head, *tail; /* guarded by lock */
    bridge_handler handler;    /* loop thread */
    void *handler_user;
} bridge;

/* Initialise on the loop thread. The handler receives each event on the loop
 * thread; ev->user is the request's user pointer. 0 or a libuv error. */
int bridge_init(bridge *b, uv_loop_t *loop, bridge_handler h, void *user);
/* Deliver everything queued now (also what the async callback does). Loop thread. */
void bridge_flush(bridge *b);
/* Close the async handle (uv_close) after a final flush; the bridge memory
 * must stay valid until the loop has run the close. */
void bridge_close(bridge *b);
/* The engine callback: pass &bridge as eng_request_params.user's owner via
 * bridge_user (below). Runs on the scheduler thread. */
void bridge_event_cb(const eng_event *ev, void *user);

/* eng_request_params.user for bridge_event_cb: the bridge plus the loop-side
 * pointer handed back in ev->user. Owned by the loop side; it must live until
 * the request's DONE event has been delivered. */
typedef struct {
    bridge *b;
    void *user;
} bridge_user;

#endif
