/*
 * job.c - a generation's state and lifetime: creation from a validated
 * request, the live list, cancellation, the hooks that tie it to its HTTP
 * request, and what each engine event changes in it (counts, timings,
 * log-probabilities, text through the textbuf, the engine's OrthoRank
 * statistics). Output is not made here: api_openai.c sends it, through
 * stream.c or as one reply.
 */
#include "job.h"
#include "orthorank_json.h"
#include "server.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* xorshift64 over the server's state (seeded at start, never 0). */
static uint64_t rng_next(srv *s)
{
    s->rng ^= s->rng << 13;
    s->rng ^= s->rng >> 7;
    s->rng ^= s->rng << 17;
    return s->rng;
}

static bool lp_push(job *j, const lp_entry *e)
{
    if (j->n_lps == j->cap_lps) {
        size_t cap = j->cap_lps ? 2 * j->cap_lps : 64;
        lp_entry *n = realloc(j->lps, cap * sizeof *n);
        if (!n) return false;
        j->lps = n;
        j->cap_lps = cap;
    }
    j->lps[j->n_lps++] = *e;
    return true;
}

/* Count a token's text for text_offset. */
static size_t piece_chars(srv *s, int32_t id)
{
    char buf[256];
    size_t n = reply_piece(s->vocab, id, buf, sizeof buf), cl;
    char *clean = utf8_sanitize(buf, n, &cl);
    size_t c = clean ? utf8_count(clean, cl) : 0;
    free(clean);
    return c;
}

/* ------------------------------------------------------------------------ */
/* Lifetime                                                                 */
/* ------------------------------------------------------------------------ */

job *job_new(hreq *r, api_request *req)
{
    srv *s = r->s;
    job *j = calloc(1, sizeof *j);
    if (!j) return NULL;
    j->s = s;
    j->chat = req->chat;
    j->stream = req->stream;
    j->include_usage = req->include_usage;
    j->echo = req->echo;
    j->echo_text = req->echo_text;
    j->echo_len = req->echo_len;
    req->echo_text = NULL;
    j->n_logprobs = req->p.n_logprobs;
    j->n_prompt = (int32_t)req->p.n_prompt;
    j->first_prompt_token = req->prompt[0];
    j->created = (long long)time(NULL);
    uint64_t hi = rng_next(s), lo = rng_next(s) & 0xffffffffu;
    snprintf(j->id, sizeof j->id, "%s-%016" PRIx64 "%08" PRIx64, req->chat ? "chatcmpl" : "cmpl", hi, lo);
    j->deadline = r->t0 + s->cfg->request_timeout;
    j->t_start = r->t0;
    j->bu = (bridge_user){&s->br, j};
    if (!(j->tb = textbuf_new(req->stops, req->n_stops))) {
        job_free(j);
        return NULL;
    }
    if (req->p.prompt_logprobs) {
        lp_entry e = {.token = req->prompt[0], .null_lp = true, .offset = 0};
        lp_push(j, &e);
        j->tok_chars = piece_chars(s, req->prompt[0]);
    }
    if (req->parse_reply) { /* tool calls and reasoning: call ids drawn per reply */
        tc_opts o = req->tc;
        o.id_seed = rng_next(s);
        if (!(j->tcs = malloc(sizeof *j->tcs))) {
            job_free(j);
            return NULL;
        }
        tc_stream_init(j->tcs, &o, req->single_call);
    }
    if (!req->seeded) req->p.sampling.seed = rng_next(s);
    return j;
}

void job_free(job *j)
{
    if (!j) return;
    if (j->er) eng_request_release(j->er);
    if (j->out && j->out->release) j->out->release(j->out_ctx);
    textbuf_free(j->tb);
    tc_stream_free(j->tcs);
    free(j->tcs);
    free(j->text.p);
    free(j->lps);
    free(j->sse.p);
    free(j->echo_text);
    free(j);
}

void job_link(job *j)
{
    srv *s = j->s;
    j->next = s->jobs;
    if (s->jobs) s->jobs->prev = j;
    s->jobs = j;
    s->n_jobs++;
}

static void job_unlink(job *j)
{
    srv *s = j->s;
    if (j->prev) j->prev->next = j->next;
    else if (s->jobs == j) s->jobs = j->next;
    if (j->next) j->next->prev = j->prev;
    j->prev = j->next = NULL;
    s->n_jobs--;
}

void job_cancel(job *j, const char *reason)
{
    if (j->done || j->stop_hit) return;
    if (!j->cancel_reason) j->cancel_reason = reason;
    if (j->hr && !j->hr->gen.cancel_reason) j->hr->gen.cancel_reason = reason;
    eng_request_cancel(j->er);
}

void jobs_sweep(srv *s, double now)
{
    for (job *j = s->jobs; j; j = j->next)
        if (!j->done && now > j->deadline) job_cancel(j, "timeout");
}

long job_stream_read(job *j, char *buf, size_t max)
{
    size_t avail = j->sse.n - j->sse_off;
    if (avail) {
        size_t n = avail < max ? avail : max;
        memcpy(buf, j->sse.p + j->sse_off, n);
        j->sse_off += n;
        if (j->sse_off == j->sse.n) j->sse_off = j->sse.n = 0;
        return (long)n;
    }
    return j->sse_end ? -1 : 0;
}

/* The request's hooks (http.h). */
static void on_hangup(hreq *r) { job_cancel(r->ctx, "client_disconnect"); }

/* The request is gone: cancel the job when it is still running (reason
 * NULL: the response was sent in full), and free it when it is done. */
static void on_close(hreq *r, const char *reason)
{
    job *j = r->ctx;
    if (reason) job_cancel(j, reason);
    j->hr = NULL;
    if (j->done) job_free(j);
}

static long on_read(hreq *r, char *buf, size_t max) { return job_stream_read(r->ctx, buf, max); }

static const http_hooks JOB_HOOKS = {on_hangup, on_close, on_read};

void job_attach(job *j, hreq *r)
{
    j->hr = r;
    http_attach(r, &JOB_HOOKS, j);
}

/* ------------------------------------------------------------------------ */
/* Engine events                                                            */
/* ------------------------------------------------------------------------ */

static void lp_from_event(job *j, const eng_event *ev, lp_entry *e)
{
    memset(e, 0, sizeof *e);
    e->token = ev->token;
    e->lp = ev->logprob;
    e->n_top = ev->n_top < ENG_MAX_TOP_LOGPROBS ? ev->n_top : ENG_MAX_TOP_LOGPROBS;
    if (e->n_top > j->n_logprobs) e->n_top = j->n_logprobs;
    for (int32_t i = 0; i < e->n_top; i++) {
        e->top_ids[i] = ev->top_ids[i];
        e->top_lps[i] = ev->top_logprobs[i];
    }
}

void job_prompt_event(job *j, const eng_event *ev)
{
    if (!j->echo || j->n_logprobs < 0) return;
    lp_entry e;
    lp_from_event(j, ev, &e);
    e.offset = j->tok_chars;
    j->tok_chars += piece_chars(j->s, ev->token);
    lp_push(j, &e);
}

bool job_token_event(job *j, const eng_event *ev)
{
    if (j->stop_hit || j->done) return false;
    srv *s = j->s;
    if (j->n_gen == 0 && j->echo) j->tok_chars = utf8_count(j->echo_text, j->echo_len);
    j->n_gen++;
    /* TTFT and inter-token latency, as the loop sees the tokens. */
    double now = now_mono();
    if (j->n_gen == 1) {
        j->t_first = now;
        srv_metrics_first_token(&s->mx, now - j->t_start);
    } else {
        srv_metrics_next_token(&s->mx, now - j->t_last);
    }
    j->t_last = now;
    if (j->n_logprobs >= 0) {
        lp_entry e;
        lp_from_event(j, ev, &e);
        e.offset = j->tok_chars;
        lp_push(j, &e);
    }
    if (j->n_logprobs >= 0 || j->echo) j->tok_chars += piece_chars(s, ev->token);
    char buf[256];
    size_t n = reply_piece(s->vocab, ev->token, buf, sizeof buf);
    if (textbuf_push(j->tb, buf, n)) {
        j->stop_hit = true;
        eng_request_cancel(j->er); /* the stop string decided it: no more tokens needed */
    }
    return true;
}

void job_done_event(job *j, const eng_event *ev)
{
    j->done = true;
    j->finish = ev->finish;
    j->status = ev->status;
    j->t_queue = ev->t_queue;
    j->t_prompt = ev->t_prompt;
    j->t_generate = ev->t_generate;
    j->n_cached = ev->n_cached;
    if (ev->n_prompt > 0) j->n_prompt = ev->n_prompt;
    if (ev->orthorank) j->orthorank = *ev->orthorank; /* the bridge's copy: the one hop */
    if (job_cancelled(j) && !j->cancel_reason) j->cancel_reason = j->s->state != SRV_READY ? "shutdown" : "unknown";
    job_unlink(j);
}

bool job_cancelled(const job *j) { return j->finish == ENG_FINISH_CANCELLED && !j->stop_hit; }

const char *job_finish(const job *j)
{
    if (job_cancelled(j)) return "cancelled";
    if (j->finish == ENG_FINISH_ERROR) return "error";
    if (j->stop_hit || j->finish == ENG_FINISH_STOP) return "stop";
    return "length";
}

double job_sparsity(const job *j)
{
    if (!j->orthorank.prefill_total && !j->orthorank.decode_total) return -1;
    return j->orthorank.sparsity_effective;
}

/* ------------------------------------------------------------------------ */
/* Response pieces                                                          */
/* ------------------------------------------------------------------------ */

reply_head job_head(const job *j)
{
    return (reply_head){.id = j->id, .model = j->s->model_id, .created = j->created, .chat = j->chat,
                        .include_usage = j->include_usage, .index = j->index};
}

reply_counts job_counts(const job *j)
{
    return (reply_counts){.n_prompt = j->n_prompt, .n_gen = j->n_gen, .n_cached = j->n_cached,
                          .t_queue = j->t_queue, .t_prompt = j->t_prompt, .t_generate = j->t_generate};
}

json_t *job_logprobs_json(job *j, size_t from, size_t to)
{
    return reply_logprobs(j->s->vocab, j->chat, j->lps + from, to - from);
}

json_t *job_orthorank_json(job *j)
{
    return orthorank_json(&j->orthorank);
}
