/*
 * evaluator.c - the windows of a text through eng_decode for perplexity and
 * calibrate (evaluator.h has the protocol): sessions, the evaluator, one
 * evaluation run with its NLL and OrthoRank stats, and the progress bar.
 */
#include "evaluator.h"
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* CPU time of the whole process (all threads): less sensitive than wall time
 * to other load on the machine. */
static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------------------ */
/* Progress                                                                 */
/* ------------------------------------------------------------------------ */

static bool g_tty;

void ev_progress_init(void)
{
    g_tty = isatty(2);
}

bool ev_progress_on(void)
{
    return g_tty;
}

void ev_progress(const char *label, size_t done, size_t total, const char *fmt, ...)
{
    if (!g_tty) return;
    char extra[160] = "";
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(extra, sizeof extra, fmt, ap);
        va_end(ap);
    }
    enum { W = 30 };
    int fill = total ? (int)((double)done / (double)total * W) : W;
    char bar[W + 1];
    for (int i = 0; i < W; i++) bar[i] = i < fill ? '#' : '.';
    bar[W] = 0;
    fprintf(stderr, "\r\033[K%-28.28s [%s] %5.1f%% %s", label, bar,
            total ? 100.0 * (double)done / (double)total : 100.0, extra);
    fflush(stderr);
}

void ev_progress_clear(void)
{
    if (g_tty) fprintf(stderr, "\r\033[K");
}

/* ------------------------------------------------------------------------ */
/* Corpus                                                                   */
/* ------------------------------------------------------------------------ */

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (n < cap) break;
        char *nb = realloc(buf, cap * 2 + 1);
        if (!nb) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = nb;
        cap *= 2;
    }
    bool err = ferror(f);
    fclose(f);
    if (!buf || err) {
        free(buf);
        return NULL;
    }
    buf[n] = 0;
    *len = n;
    return buf;
}

/* Tokenize the file from byte `offset` (advanced to the next line start) with
 * BOS, parse_special off. */
static int32_t *tokenize_file(const eng_vocab *v, const char *path, size_t offset, size_t *n_out)
{
    size_t len = 0;
    char *text = read_file(path, &len);
    if (!text) {
        fprintf(stderr, "orthoserve: cannot read %s: %s\n", path, strerror(errno));
        return NULL;
    }
    size_t off = offset < len ? offset : len;
    if (off > 0 && text[off - 1] != '\n') {
        const char *nl = memchr(text + off, '\n', len - off);
        off = nl ? (size_t)(nl - text) + 1 : len;
    }
    int32_t *ids = cli_tokenize_text(v, text + off, len - off, true, false, n_out);
    free(text);
    if (!ids) fprintf(stderr, "orthoserve: cannot tokenize %s\n", path);
    return ids;
}

/* ------------------------------------------------------------------------ */
/* Sessions                                                                 */
/* ------------------------------------------------------------------------ */

void ev_session_free(ev_session *s)
{
    free(s->toks);
    eng_model_free(s->m);
    memset(s, 0, sizeof *s);
}

int ev_session_open(ev_session *s, const char *model, const char *text, size_t offset, int32_t threads)
{
    memset(s, 0, sizeof *s);
    char err[512] = "";
    eng_model_params mp = eng_model_default_params();
    mp.n_threads = threads;
    eng_status st = eng_model_load(model, &mp, &s->m, err, sizeof err);
    if (st != ENG_OK) {
        fprintf(stderr, "orthoserve: cannot load model: %s\n", err[0] ? err : eng_strerror(st));
        return -1;
    }
    eng_model_get_info(s->m, &s->info);
    if (eng_vocab_bos(eng_model_vocab(s->m)) < 0) {
        fprintf(stderr, "orthoserve: the model's vocabulary has no BOS token\n");
        ev_session_free(s);
        return -1;
    }
    double t0 = cli_now();
    s->toks = tokenize_file(eng_model_vocab(s->m), text, offset, &s->n_toks);
    if (!s->toks) {
        ev_session_free(s);
        return -1;
    }
    fprintf(stderr, "orthoserve: %s: %zu tokens (tokenized in %.2f s)\n", text, s->n_toks,
            cli_now() - t0);
    return 0;
}

int32_t ev_windows(const ev_session *s, int32_t ctx, long first, long want)
{
    long total = (long)(s->n_toks / (size_t)ctx);
    long avail = total - first;
    if (avail <= 0) {
        fprintf(stderr,
                "orthoserve: the text has %zu tokens = %ld windows of %d; none left after "
                "chunk %ld\n",
                s->n_toks, total, ctx, first);
        return -1;
    }
    return (int32_t)(want > 0 && want < avail ? want : avail);
}

/* ------------------------------------------------------------------------ */
/* The evaluator: windows through eng_decode, NLL of the scored positions   */
/* ------------------------------------------------------------------------ */

double rr_ppl(const run_result *r)
{
    return r->count ? exp(r->nll / (double)r->count) : NAN;
}

/* llama-perplexity's +/-: exp(mean) * stddev / sqrt(count - 1). */
double rr_ppl_err(const run_result *r)
{
    if (r->count < 2) return NAN;
    double mean = r->nll / (double)r->count;
    double var = r->nll2 / (double)r->count - mean * mean;
    return var > 0 ? exp(mean) * sqrt(var / (double)(r->count - 1)) : 0.0;
}

double rr_sparsity(const run_result *r)
{
    uint64_t t = r->pf_total + r->dc_total;
    return t ? (double)(r->pf_skipped + r->dc_skipped) / (double)t : 0.0;
}

double rr_flops(const run_result *r)
{
    return r->flops_total > 0 ? r->flops_saved / r->flops_total : 0.0;
}

double rr_tps(const run_result *r)
{
    return r->t_decode > 0 ? (double)r->n_fed / r->t_decode : 0.0;
}

/* Realised decode selection rate at the OrthoRank layers (1 - skipped share). */
double rr_decode_sel(const run_result *r)
{
    double d = (double)r->dc_tokens * (double)r->n_orthorank_layers;
    return d > 0 ? 1.0 - (double)r->dc_skipped / d : NAN;
}

void ev_free(evaluator *ev)
{
    eng_context_free(ev->ctx);
    free(ev->tok);
    free(ev->pos);
    free(ev->seq);
    free(ev->want);
    free(ev->win_nll);
    free(ev->win_cnt);
    memset(ev, 0, sizeof *ev);
}

int ev_init(evaluator *ev, eng_model *m, int32_t n_ctx, int32_t n_seq, int32_t threads, eng_kv_type type_k,
            eng_kv_type type_v)
{
    memset(ev, 0, sizeof *ev);
    eng_model_info info;
    eng_model_get_info(m, &info);
    ev->n_ctx = n_ctx;
    ev->n_seq = n_seq;
    ev->n_vocab = info.n_vocab;
    ev->n_layer = info.n_layer;
    ev->bos = eng_vocab_bos(eng_model_vocab(m));
    eng_context_params cp = eng_context_default_params();
    cp.n_ctx = n_ctx;
    cp.n_seq_max = n_seq;
    cp.n_batch_max = n_seq * n_ctx;
    cp.n_threads = threads;
    cp.type_k = type_k;
    cp.type_v = type_v;
    eng_status st = eng_context_new(m, &cp, &ev->ctx);
    if (st != ENG_OK) {
        fprintf(stderr, "orthoserve: cannot create a context (%d x %d tokens): %s\n", n_seq, n_ctx,
                eng_strerror(st));
        return -1;
    }
    size_t nb = (size_t)n_seq * (size_t)n_ctx;
    ev->tok = malloc(nb * sizeof *ev->tok);
    ev->pos = malloc(nb * sizeof *ev->pos);
    ev->seq = malloc(nb * sizeof *ev->seq);
    ev->want = malloc(nb);
    ev->win_nll = malloc((size_t)n_seq * sizeof *ev->win_nll);
    ev->win_cnt = malloc((size_t)n_seq * sizeof *ev->win_cnt);
    if (!ev->tok || !ev->pos || !ev->seq || !ev->want || !ev->win_nll || !ev->win_cnt) {
        fprintf(stderr, "orthoserve: out of memory\n");
        ev_free(ev);
        return -1;
    }
    return 0;
}

/* -log softmax(logits)[target], in double. */
static double token_nll(const float *logits, int32_t n_vocab, int32_t target)
{
    double mx = -INFINITY;
    for (int32_t i = 0; i < n_vocab; i++)
        if (logits[i] > mx) mx = logits[i];
    double sum = 0;
    for (int32_t i = 0; i < n_vocab; i++) sum += exp((double)logits[i] - mx);
    return log(sum) + mx - (double)logits[target];
}

static int score_push(score_acc *sa, int32_t l, float x)
{
    if (sa->n[l] == sa->cap[l]) {
        size_t nc = sa->cap[l] ? sa->cap[l] * 2 : 4096;
        float *nv = realloc(sa->v[l], nc * sizeof *nv);
        if (!nv) return -1;
        sa->v[l] = nv;
        sa->cap[l] = nc;
    }
    sa->v[l][sa->n[l]++] = x;
    return 0;
}

/* One eng_decode of ev's batch (n tokens); accumulates NLL of wanted tokens
 * (whose targets are in targets[]) per window, and records scores. */
static eng_status ev_decode(evaluator *ev, int32_t n, const int32_t *targets, run_result *r,
                            score_acc *sa)
{
    eng_batch b = {n, ev->tok, ev->pos, ev->seq, ev->want};
    double t0 = cli_now(), c0 = cpu_s();
    eng_status st = eng_decode(ev->ctx, &b);
    r->t_decode += cli_now() - t0;
    r->t_cpu += cpu_s() - c0;
    if (st != ENG_OK) return st;
    r->n_fed += (uint64_t)n;
    for (int32_t i = 0; i < n; i++) {
        if (ev->want[i]) {
            const float *lg = eng_get_logits(ev->ctx, i);
            if (!lg) return ENG_EINVAL;
            double x = token_nll(lg, ev->n_vocab, targets[i]);
            ev->win_nll[ev->seq[i]] += x;
            ev->win_cnt[ev->seq[i]]++;
            r->nll += x;
            r->nll2 += x * x;
            r->count++;
        }
        if (sa && ev->pos[i] > 0) {
            const float *sc = eng_get_scores(ev->ctx, i);
            if (!sc) continue;
            for (int32_t l = 0; l < sa->n_layer; l++)
                if (isfinite(sc[l]) && score_push(sa, l, sc[l])) return ENG_ENOMEM;
        }
    }
    return ENG_OK;
}

void ev_fmt_layers(char *buf, size_t cap, const int32_t *l, int32_t n)
{
    size_t o = 0;
    buf[0] = 0;
    for (int32_t i = 0; i < n && o + 12 < cap; i++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%d", i ? "," : "", l[i]);
}

/* Window w's OrthoRank stats into r (the first also names its layers). */
static eng_status add_stats(evaluator *ev, int32_t w, bool first, run_result *r)
{
    eng_orthorank_stats s;
    eng_status st = eng_seq_get_orthorank_stats(ev->ctx, w, &s);
    if (st != ENG_OK) return st;
    r->pf_tokens += s.prefill_tokens;
    r->pf_total += s.prefill_total;
    r->pf_skipped += s.prefill_skipped;
    r->dc_tokens += s.decode_tokens;
    r->dc_total += s.decode_total;
    r->dc_skipped += s.decode_skipped;
    r->flops_total += s.flops_total;
    r->flops_saved += s.flops_saved;
    if (first) {
        ev_fmt_layers(r->layers, sizeof r->layers, s.layers, s.n_layers);
        r->n_orthorank_layers = s.n_layers;
        r->token_ratio = s.token_ratio;
        r->sparsity_target = s.sparsity_target;
        snprintf(r->source, sizeof r->source, "%s", s.layer_order_source);
    }
    return ENG_OK;
}

int ev_run(evaluator *ev, const run_opts *o, run_result *r)
{
    memset(r, 0, sizeof *r);
    const int32_t C = ev->n_ctx, H = C / 2;
    int32_t *targets = malloc((size_t)ev->n_seq * (size_t)C * sizeof *targets);
    if (!targets) return -1;
    int rc = -1;
    eng_status st = ENG_OK;
    double nll_run = 0;
    uint64_t cnt_run = 0;
    static char run_buf[1 << 16]; /* running values, printed after the bar on a TTY */
    size_t run_len = 0;
    run_buf[0] = 0;
    for (int32_t c0 = 0; c0 < o->n_chunks; c0 += ev->n_seq) {
        int32_t nw = o->n_chunks - c0 < ev->n_seq ? o->n_chunks - c0 : ev->n_seq;
        for (int32_t w = 0; w < nw; w++) {
            eng_seq_truncate(ev->ctx, w, 0);
            st = eng_seq_set_orthorank(ev->ctx, w, o->orthorank, o->decode_eval ? H : C);
            if (st != ENG_OK) goto fail;
            eng_seq_record_scores(ev->ctx, w, o->scores != NULL);
            ev->win_nll[w] = 0;
            ev->win_cnt[w] = 0;
        }
        /* Prefill: the whole window, or its first half for --decode-eval. */
        int32_t P = o->decode_eval ? H : C;
        int32_t n = 0;
        for (int32_t w = 0; w < nw; w++) {
            const int32_t *src = o->toks + (size_t)(o->first_chunk + c0 + w) * (size_t)C;
            for (int32_t j = 0; j < P; j++, n++) {
                ev->tok[n] = j == 0 ? ev->bos : src[j];
                ev->pos[n] = j;
                ev->seq[n] = w;
                ev->want[n] = (int8_t)(j <= C - 2 && (o->full || j >= H));
                targets[n] = j + 1 < C ? src[j + 1] : 0;
            }
        }
        if ((st = ev_decode(ev, n, targets, r, o->scores)) != ENG_OK) goto fail;
        /* Decode-style: one token per sequence per call up to position C-2. */
        if (o->decode_eval) {
            for (int32_t j = H; j <= C - 2; j++) {
                for (int32_t w = 0; w < nw; w++) {
                    const int32_t *src = o->toks + (size_t)(o->first_chunk + c0 + w) * (size_t)C;
                    ev->tok[w] = j == 0 ? ev->bos : src[j];
                    ev->pos[w] = j;
                    ev->seq[w] = w;
                    ev->want[w] = 1;
                    targets[w] = src[j + 1];
                }
                if ((st = ev_decode(ev, nw, targets, r, o->scores)) != ENG_OK) goto fail;
            }
        }
        for (int32_t w = 0; w < nw; w++) {
            if ((st = add_stats(ev, w, c0 == 0 && w == 0, r)) != ENG_OK) goto fail;
            nll_run += ev->win_nll[w];
            cnt_run += ev->win_cnt[w];
            r->n_windows++;
            if (o->print_running) {
                char item[48];
                int il = snprintf(item, sizeof item, "[%d]%.4f,", c0 + w + 1,
                                  exp(nll_run / (double)cnt_run));
                if (!g_tty) {
                    fputs(item, stderr);
                    fflush(stderr);
                } else if (run_len + (size_t)il < sizeof run_buf) { /* shown after the bar */
                    memcpy(run_buf + run_len, item, (size_t)il + 1);
                    run_len += (size_t)il;
                }
            }
        }
        for (int32_t w = 0; w < nw; w++) eng_seq_truncate(ev->ctx, w, 0);
        ev_progress(o->label, o->prog_base + (size_t)(c0 + nw), o->prog_total, "%d/%d  [%d]%.4f  %.0f tok/s",
                    c0 + nw, o->n_chunks, c0 + nw, exp(nll_run / (double)cnt_run), rr_tps(r));
    }
    if (o->print_running && g_tty) {
        ev_progress_clear();
        fputs(run_buf, stderr);
    }
    if (o->print_running) fprintf(stderr, "\n");
    rc = 0;
    goto out;
fail:
    r->err = st;
    if (o->print_running && !g_tty) fprintf(stderr, "\n");
    ev_progress_clear();
    for (int32_t w = 0; w < ev->n_seq; w++) eng_seq_truncate(ev->ctx, w, 0);
out:
    free(targets);
    return rc;
}
