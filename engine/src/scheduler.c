/*
 * scheduler.c - continuous batching: one thread owns a context and runs
 * steps over every live request.
 *
 * DESIGN. Threads: any thread calls eng_sched_submit / eng_request_cancel /
 * eng_request_release / eng_sched_get_stats / eng_sched_drain; only the
 * scheduler thread touches the context, the running set and the batch
 * buffers, and only it calls event callbacks. Shared state (the FIFO queue,
 * flags, the stats snapshot) is under `mu`; cancellation is an atomic flag per
 * request, read before every step. A request holds two references (the
 * caller's and the scheduler's) and is freed when both are dropped.
 *
 * A step:
 *   1. finish cancelled requests (running and queued): DONE, free KV;
 *   2. admit queued requests in FIFO order while a slot is free and their KV
 *      need (prompt + max_tokens, capped at n_ctx) fits the unreserved budget
 *      - the head of the queue blocks those behind it, so long prompts never
 *      starve;
 *   3. build one ragged batch within the token budget: first one token for
 *      every decoding sequence (decode has priority), then prefill chunks of
 *      admitted prompts in admission order;
 *   4. one eng_decode, then sample / emit events for every sequence.
 * Reserving the whole need at admission means eng_decode never runs out of
 * KV in the middle of a request.
 *
 * Prefix reuse: a finished dense request leaves its KV in its slot, with the
 * tokens it holds. A new dense request takes the idle slot sharing the
 * longest prompt prefix, truncates it to that prefix (keeping at least its
 * last prompt token to compute) and prefills only the rest; chunked prefill
 * is bitwise identical to whole prefill, so the result is the same as
 * recomputing. Only requests with the same cache_scope share prefixes (a
 * tenant must not learn another's prompt from n_cached or the prefill
 * time). A sparsified request's K/V depend on its selection, so its prefix
 * is reused only by a request with the same prompt and the same OrthoRank
 * settings, for all the prompt but its last token (which every selection
 * updates, so it computes as it did and the output is the same as
 * recomputing), and never by a dense request or the reverse. Cancelled
 * and echo requests do not reuse. Idle slots are evicted least recently
 * used when a request needs their blocks.
 */
#include "grammar.h"
#include "internal.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

typedef enum { RQ_WAITING = 0, RQ_PREFILL, RQ_DECODE, RQ_DONE, RQ_FORKWAIT } rq_state;

/* A family of eng_sched_submit_many: requests sharing one prompt's KV (see
 * "Forks" below). Its members' pointers are borrowed: a member is removed
 * (NULL) before the scheduler drops its reference. */
typedef struct {
    atomic_int refs;      /* members not yet destroyed */
    int32_t live;         /* members not yet finished (scheduler thread) */
    int32_t shared_blocks;/* the prompt's full blocks, reserved once for the family */
    int32_t n;
    struct eng_request **members; /* (n) the leader first */
} sched_fam;

struct eng_request {
    atomic_int refs;
    atomic_bool cancel;
    eng_sched *s;
    eng_request_params p;
    int32_t *prompt;
    eng_sampler *smp;
    eng_matcher *matcher; /* structured output (p.grammar), or NULL */
    uint32_t *allowed;    /* (n_vocab / 32) the matcher's mask */
    eng_orthorank_params orthorank; /* copy of *p.orthorank */
    bool has_orthorank;
    struct eng_request *next; /* queue link (under mu) */
    /* scheduler thread only */
    rq_state state;
    int32_t seq;       /* slot, or -1 */
    int32_t n_past;    /* positions in the cache */
    int32_t n_fed;     /* prompt tokens fed */
    int32_t n_gen;     /* tokens generated */
    int32_t last;      /* token to feed next while decoding */
    int32_t max_pos;   /* positions this request may use (its reservation) */
    int32_t kv_blocks; /* reserved blocks */
    int32_t n_cached;  /* prompt positions reused from a cached prefix */
    double t_submit, t_admit, t_first;
    /* pooling requests: the running sum (mean) or the row kept (cls, last),
     * and the result DONE reports */
    double *pool_acc;
    float *embd;
    bool pooled;       /* embd holds the result */
    /* forks: the family (NULL: none), the member's index in it, and whether
     * the leader has handed the prompt's KV to its members */
    sched_fam *fam;
    int32_t fam_i;
    bool forked;
};

/* Who may reuse a cached slot's prefix: requests of the same cache_scope;
 * a sparsified request's prefix only by a request with the same prompt
 * (its whole length) and the same settings. */
typedef struct {
    uint64_t scope;
    bool sparse;
    int32_t n_prompt;               /* sparse: the prompt length */
    eng_orthorank_params orthorank; /* sparse: the settings */
} slot_key;

struct eng_sched {
    eng_model *m;
    eng_context *ctx;
    int32_t n_ctx, n_seq, n_batch, n_vocab;
    pthread_t thread;
    bool thread_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    /* under mu */
    eng_request *q_head, *q_tail;
    int32_t n_waiting, max_queue;
    bool stop, draining;
    eng_sched_stats stats;
    /* scheduler thread only */
    eng_request **slots;        /* (n_seq) running requests by slot */
    int32_t **slot_tok;         /* (n_seq, n_ctx) tokens whose K/V the slot holds */
    int32_t *slot_len;          /* (n_seq) positions held (running or cached) */
    uint64_t *slot_used;        /* (n_seq) LRU clock of cached slots, 0: nothing cached */
    slot_key *slot_key;         /* (n_seq) what the request that left the slot's prefix shares it with */
    uint64_t clock;
    bool prefix_cache;
    eng_request **order;        /* running requests in admission order */
    int32_t n_running;
    int32_t kv_free_blocks;     /* neither reserved by running requests nor held by cached slots */
    int32_t *b_tok, *b_pos, *b_seq;
    int8_t *b_logits;
    eng_request **b_req;
    float *scratch;             /* (n_vocab) masked logits */
    int32_t top_ids[ENG_MAX_TOP_LOGPROBS];
    float top_lps[ENG_MAX_TOP_LOGPROBS];
    int32_t n_embd;
    float *hidden;              /* (n_embd) one row's final-norm hidden state */
    int32_t *fam_slots;         /* (n_seq) admit_family's choice of slots */
    int32_t step_prompt;        /* prompt tokens in the last step */
};

eng_sched_params eng_sched_default_params(void)
{
    eng_sched_params p = {.n_ctx = 0, .n_seq_max = 8, .n_batch_max = 512, .n_kv_tokens = 0,
                          .max_queue = 64, .n_threads = 0, .prefix_cache = true,
                          .type_k = ENG_KV_F16, .type_v = ENG_KV_F16};
    return p;
}

/* ------------------------------------------------------------------------ */
/* Requests                                                                 */
/* ------------------------------------------------------------------------ */

static void request_destroy(eng_request *r)
{
    if (r->fam && atomic_fetch_sub(&r->fam->refs, 1) == 1) {
        free(r->fam->members);
        free(r->fam);
    }
    eng_sampler_free(r->smp);
    free(r->pool_acc);
    free(r->embd);
    eng_matcher_free(r->matcher);
    free(r->allowed);
    free(r->prompt);
    free(r);
}

static void request_unref(eng_request *r)
{
    if (atomic_fetch_sub(&r->refs, 1) == 1) request_destroy(r);
}

void eng_request_cancel(eng_request *r)
{
    if (r) atomic_store(&r->cancel, true);
}

void eng_request_release(eng_request *r)
{
    if (r) request_unref(r);
}

static void emit_done(eng_sched *s, eng_request *r, eng_finish_reason fin, eng_status st)
{
    double t = eng__now();
    eng_event ev = {.type = ENG_EVENT_DONE, .req = r, .user = r->p.user, .finish = fin,
                    .status = st, .n_prompt = (int32_t)r->p.n_prompt, .n_generated = r->n_gen,
                    .n_cached = r->n_cached};
    double admit = r->t_admit > 0 ? r->t_admit : t;
    double first = r->t_first > 0 ? r->t_first : t;
    ev.t_queue = admit - r->t_submit;
    ev.t_prompt = r->t_admit > 0 ? first - admit : 0;
    ev.t_generate = r->t_first > 0 ? t - first : 0;
    eng_orthorank_stats stats;
    if (r->seq >= 0 && eng_seq_get_orthorank_stats(s->ctx, r->seq, &stats) == ENG_OK) ev.orthorank = &stats;
    if (r->pooled) {
        ev.embedding = r->embd;
        ev.n_embd = s->n_embd;
    }
    r->state = RQ_DONE;
    r->p.on_event(&ev, r->p.user);
}

/* Whether r's settings sparsify anything (its K/V then depend on them). */
static bool is_sparse(const eng_request *r)
{
    const eng_orthorank_params *p = &r->orthorank;
    return r->has_orthorank && p->decode != ENG_ORTHORANK_DECODE_OFF && ((float)p->sparsity > 0 || p->n_layers > 0);
}

static void finish_running(eng_sched *s, eng_request *r, eng_finish_reason fin, eng_status st);

/* --- Forks: families of eng_sched_submit_many ---
 * A family is admitted as one (admit_family: a slot per member, the KV of
 * all at once). Its leader prefills the prompt; the members wait
 * (RQ_FORKWAIT) until the step that computes the prompt's last token, when
 * fork_members gives each the prompt's KV (eng__seq_fork) and samples its
 * first token from the leader's logits. Reservation: the prompt's full
 * blocks once for the family (returned by the last member to finish), and
 * per member its own blocks (the rest of its positions, the copied partial
 * block included). */

/* r leaves its family: its blocks' share returns with the last member; a
 * leader that ends before forking ends its waiting members the same way. */
static void family_leave(eng_sched *s, eng_request *r, eng_finish_reason fin, eng_status st)
{
    sched_fam *f = r->fam;
    f->members[r->fam_i] = NULL;
    if (--f->live == 0) s->kv_free_blocks += f->shared_blocks;
    if (r->fam_i != 0 || r->forked) return;
    for (int32_t i = 1; i < f->n; i++) {
        eng_request *m = f->members[i];
        if (m && m->state == RQ_FORKWAIT)
            finish_running(s, m, fin == ENG_FINISH_ERROR ? fin : ENG_FINISH_CANCELLED,
                           fin == ENG_FINISH_ERROR ? st : ENG_ECANCELED);
    }
}

static void next_token(eng_sched *s, eng_request *r, const float *logits);

/* The leader r has computed its prompt (logits: its last token's): each
 * waiting member gets the prompt's KV and its first token. */
static void fork_members(eng_sched *s, eng_request *r, const float *logits)
{
    sched_fam *f = r->fam;
    r->forked = true;
    const int32_t np = (int32_t)r->p.n_prompt;
    for (int32_t i = 1; i < f->n; i++) {
        eng_request *m = f->members[i];
        if (!m || m->state != RQ_FORKWAIT) continue;
        eng_status st = eng__seq_fork(s->ctx, r->seq, m->seq, np);
        if (st != ENG_OK) { /* cannot happen: the copied block is reserved */
            finish_running(s, m, ENG_FINISH_ERROR, st);
            continue;
        }
        memcpy(s->slot_tok[m->seq], s->slot_tok[r->seq], (size_t)np * sizeof(int32_t));
        m->n_fed = m->n_past = m->n_cached = np;
        m->state = RQ_PREFILL;
        next_token(s, m, logits);
    }
}
/* --- end of forks --- */

/* Finish a running request: event, KV and slot back, scheduler's ref dropped. */
static void finish_running(eng_sched *s, eng_request *r, eng_finish_reason fin, eng_status st)
{
    emit_done(s, r, fin, st);
    int32_t slot = r->seq;
    bool keep = s->prefix_cache && fin != ENG_FINISH_CANCELLED && fin != ENG_FINISH_ERROR && r->n_past > 0 &&
                (!is_sparse(r) || r->n_past >= (int32_t)r->p.n_prompt) && !r->fam &&
                r->p.pooling == ENG_POOLING_NONE;
    if (r->fam) {
        family_leave(s, r, fin, st);
        eng_seq_truncate(s->ctx, slot, 0);
        s->slot_len[slot] = 0;
        s->slot_used[slot] = 0;
        s->kv_free_blocks += r->kv_blocks;
    } else if (keep) {
        s->slot_len[slot] = r->n_past;
        s->slot_used[slot] = ++s->clock;
        s->slot_key[slot] = (slot_key){.scope = r->p.cache_scope, .sparse = is_sparse(r),
                                       .n_prompt = (int32_t)r->p.n_prompt, .orthorank = r->orthorank};
        s->kv_free_blocks += r->kv_blocks - eng__kv_blocks_for(r->n_past);
    } else {
        eng_seq_truncate(s->ctx, slot, 0);
        s->slot_len[slot] = 0;
        s->slot_used[slot] = 0;
        s->kv_free_blocks += r->kv_blocks;
    }
    eng_seq_set_orthorank(s->ctx, slot, NULL, 0);
    s->slots[slot] = NULL;
    for (int32_t i = 0; i < s->n_running; i++)
        if (s->order[i] == r) {
            memmove(&s->order[i], &s->order[i + 1], (size_t)(s->n_running - i - 1) * sizeof *s->order);
            s->n_running--;
            break;
        }
    request_unref(r);
}

/* Everything eng_sched_submit checks before it queues a request; allocates nothing. */
static eng_status request_check(const eng_sched *s, const eng_request_params *p)
{
    if (!p->on_event || !p->prompt || p->n_prompt < 1 || p->max_tokens < 0 || p->min_tokens < 0 ||
        p->n_logprobs < -1 || p->n_logprobs > ENG_MAX_TOP_LOGPROBS)
        return ENG_EINVAL;
    for (size_t i = 0; i < p->n_prompt; i++)
        if (p->prompt[i] < 0 || p->prompt[i] >= s->n_vocab) return ENG_EINVAL;
    if ((unsigned)p->pooling > ENG_POOLING_LAST) return ENG_EINVAL;
    const int32_t max_tokens = p->pooling ? 0 : p->max_tokens;
    if (p->n_prompt + (max_tokens > 0 ? 1u : 0u) > (size_t)s->n_ctx) return ENG_ECTXFULL;
    if (p->orthorank && eng_orthorank_check(s->m, p->orthorank, NULL, NULL, 0) != ENG_OK) return ENG_EINVAL;
    if (!eng__sampler_params_ok(&p->sampling, s->n_vocab)) return ENG_EINVAL;
    if (p->grammar && p->grammar->gv->v != eng_model_vocab(s->m)) return ENG_EINVAL;
    int64_t want = (int64_t)p->n_prompt + max_tokens;
    if (eng__kv_blocks_for((int32_t)(want < s->n_ctx ? want : s->n_ctx)) > eng__kv_blocks_total(s->ctx))
        return ENG_ECTXFULL;
    return ENG_OK;
}

eng_status eng_sched_validate(const eng_sched *s, const eng_request_params *p)
{
    if (!s || !p) return ENG_EINVAL;
    return request_check(s, p);
}

/* A request for p (checked), not yet queued; NULL when memory ran out. */
static eng_request *request_make(eng_sched *s, const eng_request_params *p)
{
    eng_request *r = eng__calloc(1, sizeof *r);
    if (!r) return NULL;
    r->p = *p;
    r->p.sampling.logit_bias = NULL; /* the sampler keeps its own copy */
    r->p.sampling.n_logit_bias = 0;
    r->prompt = eng__malloc(p->n_prompt * sizeof *r->prompt);
    if (p->pooling) {
        r->p.max_tokens = 0;
        r->pool_acc = eng__calloc((size_t)s->n_embd, sizeof *r->pool_acc);
        r->embd = eng__malloc((size_t)s->n_embd * sizeof *r->embd);
    }
    if (!r->prompt || (p->pooling && (!r->pool_acc || !r->embd)) ||
        eng_sampler_new(&p->sampling, s->n_vocab, &r->smp) != ENG_OK) {
        request_destroy(r);
        return NULL;
    }
    memcpy(r->prompt, p->prompt, p->n_prompt * sizeof *r->prompt);
    r->p.prompt = r->prompt;
    r->p.orthorank = NULL;
    if (p->orthorank) {
        r->orthorank = *p->orthorank;
        r->has_orthorank = true;
    }
    for (size_t i = 0; i < p->n_prompt; i++) eng_sampler_accept(r->smp, p->prompt[i]);
    r->p.grammar = NULL; /* the matcher holds the reference */
    if (p->grammar) {
        r->allowed = eng__malloc(((size_t)s->n_vocab + 31) / 32 * sizeof *r->allowed);
        if (!r->allowed || eng_matcher_new(p->grammar, &r->matcher) != ENG_OK) {
            request_destroy(r);
            return NULL;
        }
    }
    int64_t want = (int64_t)p->n_prompt + r->p.max_tokens;
    r->max_pos = (int32_t)(want < s->n_ctx ? want : s->n_ctx);
    r->kv_blocks = eng__kv_blocks_for(r->max_pos);
    r->seq = -1;
    r->s = s;
    r->t_submit = eng__now();
    atomic_init(&r->refs, 2);
    atomic_init(&r->cancel, false);
    return r;
}

/* Queue r[0..n) (all or none); ENG_OK, ENG_ESTOPPED or ENG_EBUSY. */
static eng_status enqueue(eng_sched *s, eng_request **r, size_t n)
{
    pthread_mutex_lock(&s->mu);
    eng_status st = ENG_OK;
    if (s->stop || s->draining) st = ENG_ESTOPPED;
    else if ((size_t)s->n_waiting + n > (size_t)s->max_queue) st = ENG_EBUSY;
    for (size_t i = 0; st == ENG_OK && i < n; i++) {
        if (s->q_tail) s->q_tail->next = r[i];
        else s->q_head = r[i];
        s->q_tail = r[i];
        s->n_waiting++;
    }
    if (st == ENG_OK) {
        s->stats.waiting = s->n_waiting;
        pthread_cond_signal(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
    return st;
}

eng_status eng_sched_submit(eng_sched *s, const eng_request_params *p, eng_request **out)
{
    if (!s || !p || !out) return ENG_EINVAL;
    *out = NULL;
    eng_status st = request_check(s, p);
    if (st != ENG_OK) return st;
    eng_request *r = request_make(s, p);
    if (!r) return ENG_ENOMEM;
    st = enqueue(s, &r, 1);
    if (st != ENG_OK) {
        request_destroy(r);
        return st;
    }
    *out = r;
    return ENG_OK;
}

/* The family checks of eng_sched_submit_many: members follow their leader
 * (same prompt and settings); a family fits the slots and the budget. */
static eng_status families_check(const eng_sched *s, const eng_request_params *p, size_t n)
{
    size_t lead = 0;
    int64_t blocks = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i == n || p[i].fork_of == 0) {
            if (i > lead + 1) { /* the family [lead, i) */
                if (i - lead > (size_t)s->n_seq) return ENG_ECTXFULL;
                blocks += p[lead].n_prompt / ENG_KV_BLOCK;
                if (blocks > eng__kv_blocks_total(s->ctx)) return ENG_ECTXFULL;
            }
            lead = i;
            blocks = 0;
            if (i == n) break;
        } else {
            const eng_request_params *l = &p[lead];
            if ((size_t)p[i].fork_of != lead + 1 || p[i].n_prompt != l->n_prompt || p[i].pooling || l->pooling ||
                memcmp(p[i].prompt, l->prompt, l->n_prompt * sizeof(int32_t)) ||
                !p[i].orthorank != !l->orthorank ||
                (l->orthorank && !eng_orthorank_params_equal(p[i].orthorank, l->orthorank)))
                return ENG_EINVAL;
        }
        int64_t want = (int64_t)p[i].n_prompt + p[i].max_tokens;
        blocks += eng__kv_blocks_for((int32_t)(want < s->n_ctx ? want : s->n_ctx)) -
                  (int64_t)p[i].n_prompt / ENG_KV_BLOCK;
    }
    return ENG_OK;
}

/* Tie the family [r[lead], r[end]) together; false when memory ran out. */
static bool family_make(eng_request **r, size_t lead, size_t end)
{
    sched_fam *f = eng__calloc(1, sizeof *f);
    if (!f || !(f->members = eng__calloc(end - lead, sizeof *f->members))) {
        free(f);
        return false;
    }
    f->n = f->live = (int32_t)(end - lead);
    f->shared_blocks = (int32_t)r[lead]->p.n_prompt / ENG_KV_BLOCK;
    atomic_init(&f->refs, f->n);
    for (size_t i = lead; i < end; i++) {
        f->members[i - lead] = r[i];
        r[i]->fam = f;
        r[i]->fam_i = (int32_t)(i - lead);
        r[i]->kv_blocks -= f->shared_blocks;
    }
    return true;
}

eng_status eng_sched_submit_many(eng_sched *s, const eng_request_params *p, size_t n, eng_request **out)
{
    if (!s || !p || !out || n == 0) return ENG_EINVAL;
    memset(out, 0, n * sizeof *out);
    for (size_t i = 0; i < n; i++) {
        eng_status st = request_check(s, &p[i]);
        if (st != ENG_OK) return st;
        if (p[i].fork_of < 0 || (size_t)p[i].fork_of > i) return ENG_EINVAL;
    }
    eng_status st = families_check(s, p, n);
    if (st != ENG_OK) return st;
    st = ENG_ENOMEM;
    for (size_t i = 0; i < n; i++)
        if (!(out[i] = request_make(s, &p[i]))) goto fail;
    for (size_t lead = 0, i = 1; i <= n; i++)
        if (i == n || p[i].fork_of == 0) {
            if (i > lead + 1 && !family_make(out, lead, i)) goto fail;
            lead = i;
        }
    st = enqueue(s, out, n);
    if (st == ENG_OK) return ENG_OK;
fail:
    for (size_t i = 0; i < n; i++) {
        if (out[i]) request_destroy(out[i]);
        out[i] = NULL;
    }
    return st;
}

/* ------------------------------------------------------------------------ */
/* Steps                                                                    */
/* ------------------------------------------------------------------------ */

/* Remove cancelled requests from the queue (under mu) into a local list. */
static eng_request *take_cancelled_queued(eng_sched *s)
{
    eng_request *out = NULL, **pp = &s->q_head, *prev = NULL;
    /* A family waits and goes as one: one member cancelled cancels all. */
    for (eng_request *r = s->q_head; r; r = r->next)
        if (r->fam && atomic_load(&r->cancel))
            for (int32_t i = 0; i < r->fam->n; i++)
                if (r->fam->members[i]) atomic_store(&r->fam->members[i]->cancel, true);
    while (*pp) {
        eng_request *r = *pp;
        if (atomic_load(&r->cancel) || s->stop) {
            if (r->fam) r->fam->members[r->fam_i] = NULL;
            *pp = r->next;
            if (s->q_tail == r) s->q_tail = prev;
            s->n_waiting--;
            r->next = out;
            out = r;
        } else {
            prev = r;
            pp = &r->next;
        }
    }
    return out;
}

/* Drop an idle slot's cached prefix, returning its blocks. */
static void evict(eng_sched *s, int32_t slot)
{
    s->kv_free_blocks += eng__kv_blocks_for(s->slot_len[slot]);
    eng_seq_truncate(s->ctx, slot, 0);
    s->slot_len[slot] = 0;
    s->slot_used[slot] = 0;
}

/* Whether r may reuse the prefix cached in slot i (see slot_key). */
static bool may_reuse(const eng_sched *s, int32_t i, const eng_request *r)
{
    const slot_key *k = &s->slot_key[i];
    if (r->p.prompt_logprobs || r->p.pooling || k->scope != r->p.cache_scope || k->sparse != is_sparse(r))
        return false;
    return !k->sparse ||
           (k->n_prompt == (int32_t)r->p.n_prompt && eng_orthorank_params_equal(&k->orthorank, &r->orthorank));
}

/* Pick a slot for r: the idle slot sharing the longest prefix with its
 * prompt, else an empty one, else the least recently used cached one. A
 * sparsified request reuses only all of its prompt but the last token: its
 * K/V came from a selection over the whole prompt chunk, and the last token
 * (always updated) then computes exactly as it did. Sets *reuse to the
 * positions that can be kept. */
static int32_t pick_slot(eng_sched *s, const eng_request *r, int32_t *reuse)
{
    int32_t best = -1, best_len = 0, empty = -1, lru = -1;
    for (int32_t i = 0; i < s->n_seq; i++) {
        if (s->slots[i]) continue;
        if (s->slot_used[i] == 0) {
            if (empty < 0) empty = i;
            continue;
        }
        if (lru < 0 || s->slot_used[i] < s->slot_used[lru]) lru = i;
        if (!may_reuse(s, i, r)) continue; /* another partition, or other settings */
        int32_t n = s->slot_len[i], lim = (int32_t)r->p.n_prompt - 1, k = 0;
        if (lim > n) lim = n;
        while (k < lim && s->slot_tok[i][k] == r->prompt[k]) k++;
        if (s->slot_key[i].sparse && k < (int32_t)r->p.n_prompt - 1) continue; /* not the same prompt */
        if (k > best_len || (k == best_len && k > 0 && s->slot_used[i] > s->slot_used[best])) {
            best = i;
            best_len = k;
        }
    }
    *reuse = 0;
    if (best >= 0 && best_len > 0) {
        *reuse = best_len;
        return best;
    }
    return empty >= 0 ? empty : lru;
}

/* r leaves the queue's head for slot (holding reuse positions of its prompt). */
static void start_running(eng_sched *s, eng_request *r, int32_t slot, int32_t reuse, rq_state state)
{
    s->q_head = r->next;
    if (!s->q_head) s->q_tail = NULL;
    r->next = NULL;
    s->n_waiting--;
    s->slots[slot] = r;
    r->seq = slot;
    r->state = state;
    r->n_cached = reuse;
    r->n_fed = r->n_past = reuse;
    r->t_admit = eng__now();
    /* validated at submit, so this cannot fail */
    eng_seq_set_orthorank(s->ctx, slot, r->has_orthorank ? &r->orthorank : NULL, (int32_t)r->p.n_prompt);
    s->order[s->n_running++] = r;
}

/* Trim the chosen slot to the reused prefix, then evict LRU idle slots
 * (never one of the n in keep) until need blocks are free. */
static void make_room(eng_sched *s, int32_t slot, int32_t reuse, int32_t need, const int32_t *keep, int32_t n)
{
    s->kv_free_blocks += eng__kv_blocks_for(s->slot_len[slot]) - eng__kv_blocks_for(reuse);
    eng_seq_truncate(s->ctx, slot, reuse);
    s->slot_len[slot] = reuse;
    s->slot_used[slot] = 0;
    while (s->kv_free_blocks < need) {
        int32_t v = -1;
        for (int32_t i = 0; i < s->n_seq; i++) {
            bool kept = false;
            for (int32_t k = 0; k < n; k++) kept |= keep[k] == i;
            if (!kept && !s->slots[i] && s->slot_used[i] && (v < 0 || s->slot_used[i] < s->slot_used[v])) v = i;
        }
        ENG_ASSERT(v >= 0);
        evict(s, v);
    }
}

/* Admit the family led by r (the queue's head, its members next) when its
 * slots and KV are there; false otherwise. */
static bool admit_family(eng_sched *s, eng_request *r)
{
    sched_fam *f = r->fam;
    if (s->n_running + f->n > s->n_seq) return false;
    int32_t reuse = 0, *sl = s->fam_slots;
    sl[0] = pick_slot(s, r, &reuse);
    if (sl[0] < 0) return false;
    /* members: empty slots first, then the least recently used idle ones */
    for (int32_t k = 1; k < f->n; k++) {
        int32_t best = -1;
        for (int32_t i = 0; i < s->n_seq; i++) {
            bool taken = false;
            for (int32_t j = 0; j < k; j++) taken |= sl[j] == i;
            if (taken || s->slots[i]) continue;
            if (best < 0 || s->slot_used[i] < s->slot_used[best]) best = i;
        }
        if (best < 0) return false;
        sl[k] = best;
    }
    int32_t need = f->shared_blocks - eng__kv_blocks_for(reuse), avail = s->kv_free_blocks - eng__kv_blocks_for(reuse);
    for (int32_t k = 0; k < f->n; k++) need += f->members[k]->kv_blocks;
    for (int32_t i = 0; i < s->n_seq; i++)
        if (!s->slots[i] && s->slot_used[i]) avail += eng__kv_blocks_for(s->slot_len[i]);
    if (need > avail) return false;
    for (int32_t k = 1; k < f->n; k++)
        if (s->slot_used[sl[k]]) evict(s, sl[k]);
    make_room(s, sl[0], reuse, need, sl, f->n);
    s->kv_free_blocks -= need;
    start_running(s, r, sl[0], reuse, RQ_PREFILL);
    for (int32_t k = 1; k < f->n; k++) {
        ENG_ASSERT(s->q_head == f->members[k]);
        start_running(s, f->members[k], sl[k], 0, RQ_FORKWAIT);
    }
    return true;
}

/* Admit from the head of the queue while it fits (under mu). */
static void admit(eng_sched *s)
{
    while (s->q_head && s->n_running < s->n_seq) {
        eng_request *r = s->q_head;
        if (r->fam) {
            if (!admit_family(s, r)) break;
            continue;
        }
        int32_t reuse = 0, slot = pick_slot(s, r, &reuse);
        if (slot < 0) break;
        /* Blocks the request still needs beyond the prefix it keeps; idle
         * cached slots other than the chosen one can be evicted for them. */
        int32_t keep_blocks = eng__kv_blocks_for(reuse);
        int32_t held = eng__kv_blocks_for(s->slot_len[slot]);
        int32_t need = r->kv_blocks - keep_blocks, avail = s->kv_free_blocks + held - keep_blocks;
        for (int32_t i = 0; i < s->n_seq; i++)
            if (i != slot && !s->slots[i] && s->slot_used[i]) avail += eng__kv_blocks_for(s->slot_len[i]);
        if (need > avail) break; /* FIFO: the head waits, so do the rest */
        make_room(s, slot, reuse, need, &slot, 1);
        s->kv_free_blocks -= need;
        start_running(s, r, slot, reuse, RQ_PREFILL);
    }
}

static void emit_logprob(eng_sched *s, eng_request *r, eng_event_type type, int32_t index,
                         int32_t token, const float *logits)
{
    eng_event ev = {.type = type, .req = r, .user = r->p.user, .index = index, .token = token};
    if (r->p.n_logprobs >= 0 || type == ENG_EVENT_PROMPT) {
        int32_t n_top = r->p.n_logprobs > 0 ? r->p.n_logprobs : 0;
        if (eng_logprobs(logits, s->n_vocab, token, &ev.logprob, n_top, s->top_ids, s->top_lps) ==
            ENG_OK) {
            ev.n_top = n_top;
            ev.top_ids = s->top_ids;
            ev.top_logprobs = s->top_lps;
        }
    }
    r->p.on_event(&ev, r->p.user);
}

/* Structured output: the logits with every token the grammar does not allow
 * at -INFINITY, into s->scratch (before any sampling transform, so the
 * sampler and the logprobs see the masked distribution; end-of-generation
 * only where the grammar accepts). ENG_FINISH_NONE, or how r ends when
 * nothing but the end can follow (STOP) or the grammar is stuck (ERROR). */
static eng_finish_reason grammar_logits(eng_sched *s, eng_request *r, const float *logits, eng_status *st)
{
    int32_t n = eng_matcher_mask(r->matcher, r->allowed);
    if (n < 0) *st = n == -1 ? ENG_ENOMEM : ENG_EUNSUPPORTED; /* -2: too ambiguous to mask */
    if (n <= 0) return n == 0 && eng_matcher_is_accepting(r->matcher) ? ENG_FINISH_STOP : ENG_FINISH_ERROR;
    if (!eng_matcher_can_continue(r->matcher) && eng_matcher_is_accepting(r->matcher)) return ENG_FINISH_STOP;
    for (int32_t t = 0; t < s->n_vocab; t++)
        s->scratch[t] = (r->allowed[t >> 5] >> (t & 31)) & 1u ? logits[t] : -INFINITY;
    return ENG_FINISH_NONE;
}

/* Sample the next token of r from logits; emits TOKEN or finishes r. */
static void next_token(eng_sched *s, eng_request *r, const float *logits)
{
    if (r->n_gen >= r->p.max_tokens || r->n_past >= s->n_ctx) {
        finish_running(s, r, ENG_FINISH_LENGTH, ENG_OK);
        return;
    }
    const eng_vocab *v = eng_model_vocab(s->m);
    const float *lg = logits;
    if (r->matcher) {
        eng_status gst = ENG_EINVAL;
        eng_finish_reason f = grammar_logits(s, r, logits, &gst);
        if (f != ENG_FINISH_NONE) {
            finish_running(s, r, f, f == ENG_FINISH_STOP ? ENG_OK : gst);
            return;
        }
        lg = logits = s->scratch;
    }
    if (!r->p.ignore_eos && r->n_gen < r->p.min_tokens) {
        /* Suppress end-of-generation tokens until min_tokens are out. */
        if (logits != s->scratch) memcpy(s->scratch, logits, (size_t)s->n_vocab * sizeof(float));
        for (int32_t t = 0; t < s->n_vocab; t++)
            if (eng_vocab_is_eog(v, t)) s->scratch[t] = -INFINITY;
        lg = s->scratch;
    }
    int32_t tok;
    eng_status st = eng_sampler_sample(r->smp, lg, &tok);
    if (st != ENG_OK) {
        finish_running(s, r, ENG_FINISH_ERROR, st);
        return;
    }
    eng_sampler_accept(r->smp, tok);
    if (r->matcher && (st = eng_matcher_accept(r->matcher, tok)) != ENG_OK) {
        finish_running(s, r, ENG_FINISH_ERROR, st);
        return;
    }
    if (r->t_first == 0) r->t_first = eng__now();
    if ((!r->p.ignore_eos || r->matcher) && eng_vocab_is_eog(v, tok)) { /* a grammar ends where it accepts */
        finish_running(s, r, ENG_FINISH_STOP, ENG_OK);
        return;
    }
    emit_logprob(s, r, ENG_EVENT_TOKEN, r->n_gen, tok, logits);
    r->n_gen++;
    if (r->n_gen >= r->p.max_tokens || r->n_past >= r->max_pos) {
        finish_running(s, r, ENG_FINISH_LENGTH, ENG_OK);
        return;
    }
    r->last = tok;
    r->state = RQ_DECODE;
}

/* --- Pooled outputs: embedding requests ---
 * Batch row i is prompt position pi of the pooling request r: fold its
 * final-norm hidden state into r's pool (in position order, whatever the
 * batch, so a text's embedding does not depend on its companions); at the
 * prompt's end r is done, its DONE carrying the pooled vector. */
static void pool_row(eng_sched *s, eng_request *r, int32_t i, int32_t pi)
{
    const int32_t np = (int32_t)r->p.n_prompt, E = s->n_embd;
    eng_pooling pool = r->p.pooling;
    if (pool == ENG_POOLING_MEAN || (pool == ENG_POOLING_CLS && pi == 0) || (pool == ENG_POOLING_LAST && pi == np - 1)) {
        eng__hidden_row(s->ctx, i, s->hidden);
        for (int32_t k = 0; k < E; k++) r->pool_acc[k] += s->hidden[k];
    }
    if (pi + 1 < np) return;
    const double div = pool == ENG_POOLING_MEAN ? np : 1;
    for (int32_t k = 0; k < E; k++) r->embd[k] = (float)(r->pool_acc[k] / div);
    r->pooled = true;
    finish_running(s, r, ENG_FINISH_STOP, ENG_OK);
}
/* --- end of pooled outputs --- */

/* One forward pass over everything runnable; returns the batch size. */
static int32_t step(eng_sched *s)
{
    int32_t n = 0;
    /* decode first */
    for (int32_t i = 0; i < s->n_running && n < s->n_batch; i++) {
        eng_request *r = s->order[i];
        if (r->state != RQ_DECODE) continue;
        s->b_tok[n] = r->last;
        s->b_pos[n] = r->n_past;
        s->b_seq[n] = r->seq;
        s->b_logits[n] = 1;
        s->b_req[n] = r;
        n++;
    }
    const int32_t n_decode = n;
    /* then prefill chunks, in admission order */
    for (int32_t i = 0; i < s->n_running && n < s->n_batch; i++) {
        eng_request *r = s->order[i];
        if (r->state != RQ_PREFILL) continue;
        int32_t left = (int32_t)r->p.n_prompt - r->n_fed, take = s->n_batch - n;
        if (take > left) take = left;
        for (int32_t k = 0; k < take; k++) {
            int32_t pi = r->n_fed + k;
            s->b_tok[n] = r->prompt[pi];
            s->b_pos[n] = pi;
            s->b_seq[n] = r->seq;
            s->b_logits[n] = !r->p.pooling && ((pi == (int32_t)r->p.n_prompt - 1) || r->p.prompt_logprobs);
            s->b_req[n] = r;
            n++;
        }
    }
    s->step_prompt = n - n_decode;
    if (n == 0) return 0;
    eng_batch b = {n, s->b_tok, s->b_pos, s->b_seq, s->b_logits};
    eng_status st = eng_decode(s->ctx, &b);
    if (st != ENG_OK) {
        /* Cannot happen with reservations; fail the requests in this batch
         * rather than spin on them. */
        for (int32_t i = 0; i < n; i++) {
            eng_request *r = s->b_req[i];
            if (r->state != RQ_DONE && (i == 0 || s->b_req[i - 1] != r))
                finish_running(s, r, ENG_FINISH_ERROR, st);
        }
        return n;
    }
    for (int32_t i = 0; i < n; i++) {
        eng_request *r = s->b_req[i];
        const float *logits = s->b_logits[i] ? eng_get_logits(s->ctx, i) : NULL;
        if (r->state == RQ_DECODE) {
            s->slot_tok[r->seq][r->n_past] = r->last;
            r->n_past++;
            next_token(s, r, logits);
            continue;
        }
        /* a prompt token */
        int32_t pi = s->b_pos[i];
        s->slot_tok[r->seq][pi] = r->prompt[pi];
        r->n_fed = pi + 1;
        r->n_past = pi + 1;
        if (r->p.pooling) {
            pool_row(s, r, i, pi);
            continue;
        }
        if (r->p.prompt_logprobs && pi + 1 < (int32_t)r->p.n_prompt)
            emit_logprob(s, r, ENG_EVENT_PROMPT, pi + 1, r->prompt[pi + 1], logits);
        if (r->n_fed == (int32_t)r->p.n_prompt) {
            if (r->fam && !r->forked) fork_members(s, r, logits);
            next_token(s, r, logits);
        }
    }
    return n;
}

static void *sched_main(void *arg)
{
    eng_sched *s = arg;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        while (!s->stop && s->n_running == 0 && !s->q_head) pthread_cond_wait(&s->cv, &s->mu);
        bool stop = s->stop;
        eng_request *cancelled = take_cancelled_queued(s);
        pthread_mutex_unlock(&s->mu);

        for (eng_request *r = cancelled, *nx; r; r = nx) {
            nx = r->next;
            emit_done(s, r, ENG_FINISH_CANCELLED, ENG_ECANCELED);
            request_unref(r);
        }
        for (int32_t i = s->n_running - 1; i >= 0; i--) {
            if (i >= s->n_running) continue; /* a leader's end took its waiting members */
            eng_request *r = s->order[i];
            if (stop || atomic_load(&r->cancel)) finish_running(s, r, ENG_FINISH_CANCELLED, ENG_ECANCELED);
        }
        if (stop) break;

        pthread_mutex_lock(&s->mu);
        admit(s);
        pthread_mutex_unlock(&s->mu);
        int32_t nb = step(s);

        int32_t used = 0, total = 0, cached = 0;
        eng_kv_usage(s->ctx, NULL, &total);
        for (int32_t i = 0; i < s->n_seq; i++) {
            if (s->slots[i]) used += eng_seq_len(s->ctx, i);
            else cached += eng_seq_len(s->ctx, i);
        }
        pthread_mutex_lock(&s->mu);
        s->stats.running = s->n_running;
        s->stats.waiting = s->n_waiting;
        s->stats.kv_used = used;
        s->stats.kv_cached = cached;
        s->stats.kv_total = total;
        s->stats.kv_held = eng__kv_blocks_used(s->ctx) * ENG_KV_BLOCK;
        s->stats.last_batch_tokens = nb;
        if (nb > 0) s->stats.steps++;
        s->stats.prompt_tokens += (uint64_t)s->step_prompt;
        pthread_mutex_unlock(&s->mu);
    }
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Lifecycle                                                                */
/* ------------------------------------------------------------------------ */

eng_status eng_sched_new(eng_model *m, const eng_sched_params *p, eng_sched **out)
{
    if (!m || !out) return ENG_EINVAL;
    *out = NULL;
    eng_sched_params dp = eng_sched_default_params();
    if (!p) p = &dp;
    if (p->n_seq_max < 1 || p->n_batch_max < 1 || p->max_queue < 0) return ENG_EINVAL;
    eng_sched *s = eng__calloc(1, sizeof *s);
    if (!s) return ENG_ENOMEM;
    s->m = m;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    eng_context_params cp = eng_context_default_params();
    cp.n_ctx = p->n_ctx;
    cp.n_seq_max = p->n_seq_max;
    cp.n_batch_max = p->n_batch_max;
    cp.n_kv_tokens = p->n_kv_tokens;
    cp.n_threads = p->n_threads;
    cp.type_k = p->type_k;
    cp.type_v = p->type_v;
    eng_status st = eng_context_new(m, &cp, &s->ctx);
    if (st != ENG_OK) goto fail;
    eng_model_info info;
    eng_model_get_info(m, &info);
    s->n_ctx = eng_context_n_ctx(s->ctx);
    s->n_seq = p->n_seq_max;
    s->n_batch = p->n_batch_max;
    s->n_vocab = info.n_vocab;
    s->max_queue = p->max_queue;
    s->n_embd = info.n_embd;
    s->hidden = eng__malloc((size_t)s->n_embd * sizeof(float));
    s->fam_slots = eng__malloc((size_t)s->n_seq * sizeof(int32_t));
    s->kv_free_blocks = eng__kv_blocks_total(s->ctx);
    size_t B = (size_t)s->n_batch;
    s->slots = eng__calloc((size_t)s->n_seq, sizeof *s->slots);
    s->slot_tok = eng__calloc((size_t)s->n_seq, sizeof *s->slot_tok);
    s->slot_len = eng__calloc((size_t)s->n_seq, sizeof *s->slot_len);
    s->slot_used = eng__calloc((size_t)s->n_seq, sizeof *s->slot_used);
    s->slot_key = eng__calloc((size_t)s->n_seq, sizeof *s->slot_key);
    s->prefix_cache = p->prefix_cache;
    if (s->slot_tok)
        for (int32_t i = 0; i < s->n_seq; i++)
            if (!(s->slot_tok[i] = eng__malloc((size_t)s->n_ctx * sizeof(int32_t)))) break;
    s->order = eng__calloc((size_t)s->n_seq, sizeof *s->order);
    s->b_tok = eng__malloc(B * sizeof *s->b_tok);
    s->b_pos = eng__malloc(B * sizeof *s->b_pos);
    s->b_seq = eng__malloc(B * sizeof *s->b_seq);
    s->b_logits = eng__malloc(B);
    s->b_req = eng__malloc(B * sizeof *s->b_req);
    s->scratch = eng__malloc((size_t)s->n_vocab * sizeof(float));
    st = ENG_ENOMEM;
    bool toks_ok = s->slot_tok != NULL;
    for (int32_t i = 0; toks_ok && i < s->n_seq; i++) toks_ok = s->slot_tok[i] != NULL;
    if (!toks_ok || !s->slot_len || !s->slot_used || !s->slot_key || !s->slots || !s->order || !s->b_tok || !s->b_pos || !s->b_seq || !s->b_logits || !s->b_req ||
        !s->scratch || !s->hidden || !s->fam_slots)
        goto fail;
    eng_kv_usage(s->ctx, NULL, &s->stats.kv_total);
    if (pthread_create(&s->thread, NULL, sched_main, s) != 0) goto fail;
    s->thread_started = true;
    *out = s;
    return ENG_OK;
fail:
    eng_sched_free(s);
    return st;
}

void eng_sched_get_stats(eng_sched *s, eng_sched_stats *out)
{
    pthread_mutex_lock(&s->mu);
    *out = s->stats;
    out->waiting = s->n_waiting;
    out->draining = s->draining;
    pthread_mutex_unlock(&s->mu);
}

void eng_sched_drain(eng_sched *s)
{
    pthread_mutex_lock(&s->mu);
    s->draining = true;
    pthread_mutex_unlock(&s->mu);
}

void eng_sched_free(eng_sched *s)
{
    if (!s) return;
    if (s->thread_started) {
        pthread_mutex_lock(&s->mu);
        s->stop = true;
        pthread_cond_signal(&s->cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->thread, NULL);
    }
    eng_context_free(s->ctx);
    if (s->slot_tok)
        for (int32_t i = 0; i < s->n_seq; i++) free(s->slot_tok[i]);
    free(s->slot_tok);
    free(s->slot_len);
    free(s->slot_used);
    free(s->slot_key);
    free(s->slots);
    free(s->order);
    free(s->b_tok);
    free(s->b_pos);
    free(s->b_seq);
    free(s->b_logits);
    free(s->b_req);
    free(s->scratch);
    free(s->hidden);
    free(s->fam_slots);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
}
