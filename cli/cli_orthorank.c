/*
 * cli_orthorank.c - orthoserve perplexity / calibrate: the OrthoRank study
 * tools (docs/ORTHORANK.md, docs/ORTHORANK_RESULTS.md).
 *
 * perplexity follows llama-perplexity's protocol exactly: the whole file is
 * tokenized once with BOS, cut into non-overlapping windows of CTX tokens,
 * the first token of every window is replaced by BOS, positions restart at 0
 * (fresh sequence) and, in the default "half" mode, logits at positions
 * CTX/2 .. CTX-2 are scored against the next token. Each window is decoded
 * in ONE eng_decode call (several windows as separate sequences of the same
 * call), so OrthoRank's prefill selection sees the whole window.
 *
 * calibrate computes a model's layer plan (SLEB-style greedy orders for
 * OrthoRank and for layer skipping, decode thresholds) and writes it as JSON
 * (server/plan.h).
 *
 * Results go to stdout; progress and running values to stderr.
 */
#include "cli_orthorank.h"
#include "cli.h"
#include "plan.h"

#include "orthoserve/engine.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_LAYERS 1024
#define MAX_GRID 16

/* CPU time of the whole process (all threads): less sensitive than wall time
 * to other load on the machine. */
static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* A number or a fraction "a/b" (token ratios: "1/3"). */
static bool parse_frac(const char *s, size_t len, double lo, double hi, double *out)
{
    char buf[64];
    if (len == 0 || len >= sizeof buf) return false;
    memcpy(buf, s, len);
    buf[len] = 0;
    char *end;
    errno = 0;
    double v = strtod(buf, &end);
    if (errno || end == buf) return false;
    if (*end == '/') {
        char *e2;
        double d = strtod(end + 1, &e2);
        if (e2 == end + 1 || *e2 || !(d != 0)) return false;
        v /= d;
    } else if (*end) {
        return false;
    }
    if (!isfinite(v) || v < lo || v > hi) return false;
    *out = v;
    return true;
}

/*
 * "sparsity=0.2,token_ratio=1/3,decode=threshold,method=orthorank,layers=3:1:2,
 *  min_tokens=16,seed=7" into p (layers stored in layers_buf).
 */
bool cli_parse_orthorank(const char *spec, eng_orthorank_params *p, int32_t *layers_buf, char *err,
                         size_t errlen)
{
    const char *s = spec;
    while (*s) {
        const char *comma = strchr(s, ',');
        size_t len = comma ? (size_t)(comma - s) : strlen(s);
        const char *eq = memchr(s, '=', len);
        if (!eq) {
            snprintf(err, errlen, "'%.*s' is not key=value", (int)len, s);
            return false;
        }
        size_t kl = (size_t)(eq - s);
        const char *v = eq + 1;
        size_t vl = len - kl - 1;
#define KEY(k) (kl == strlen(k) && !strncmp(s, k, kl))
        double d;
        if (KEY("sparsity")) {
            if (!parse_frac(v, vl, 0, 0.9, &d)) goto bad;
            p->sparsity = (float)d;
        } else if (KEY("token_ratio") || KEY("k")) {
            if (!parse_frac(v, vl, 1e-6, 1, &d)) goto bad;
            p->token_ratio = (float)d;
        } else if (KEY("decode")) {
            if (vl == 9 && !strncmp(v, "threshold", 9)) p->decode = ENG_OR_DECODE_THRESHOLD;
            else if (vl == 4 && !strncmp(v, "full", 4)) p->decode = ENG_OR_DECODE_FULL;
            else if (vl == 3 && !strncmp(v, "off", 3)) p->decode = ENG_OR_DECODE_OFF;
            else goto bad;
        } else if (KEY("method")) {
            if (!eng_or_method_from_name(v, vl, &p->method)) goto bad;
        } else if (KEY("min_tokens")) {
            if (!parse_frac(v, vl, 0, 1 << 30, &d) || d != floor(d)) goto bad;
            p->min_tokens = (int32_t)d;
        } else if (KEY("seed")) {
            if (!parse_frac(v, vl, 0, 1e18, &d) || d != floor(d)) goto bad;
            p->seed = (uint64_t)d;
        } else if (KEY("layers")) {
            int32_t n = 0;
            const char *q = v, *end = v + vl;
            while (q < end) {
                const char *c = memchr(q, ':', (size_t)(end - q));
                size_t l = c ? (size_t)(c - q) : (size_t)(end - q);
                if (!parse_frac(q, l, 0, MAX_LAYERS - 1, &d) || d != floor(d) || n >= MAX_LAYERS)
                    goto bad;
                layers_buf[n++] = (int32_t)d;
                q += l + (c ? 1 : 0);
            }
            if (n == 0) goto bad;
            p->layers = layers_buf;
            p->n_layers = n;
        } else {
            snprintf(err, errlen,
                     "unknown key '%.*s' (sparsity, token_ratio, decode, method, layers, "
                     "min_tokens, seed)",
                     (int)kl, s);
            return false;
        }
#undef KEY
        s += len + (comma ? 1 : 0);
        continue;
    bad:
        snprintf(err, errlen, "bad value '%.*s' for %.*s", (int)vl, v, (int)kl, s);
        return false;
    }
    return true;
}

/* Comma-separated list of numbers / fractions. */
static int parse_list(const char *s, double lo, double hi, double *out, int max)
{
    int n = 0;
    while (*s) {
        const char *c = strchr(s, ',');
        size_t l = c ? (size_t)(c - s) : strlen(s);
        if (n >= max || !parse_frac(s, l, lo, hi, &out[n])) return -1;
        n++;
        s += l + (c ? 1 : 0);
    }
    return n;
}

/* ------------------------------------------------------------------------ */
/* Progress                                                                 */
/* ------------------------------------------------------------------------ */

static bool g_tty;

static void progress(const char *label, size_t done, size_t total, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void progress(const char *label, size_t done, size_t total, const char *fmt, ...)
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

static void progress_clear(void)
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
    size_t cap = len - off + 16;
    int32_t *ids = NULL;
    for (int tries = 0; tries < 2; tries++) {
        ids = malloc(cap * sizeof *ids);
        if (!ids) break;
        eng_status st = eng_tokenize(v, text + off, len - off, true, false, ids, cap, n_out);
        if (st == ENG_OK) break;
        free(ids);
        ids = NULL;
        if (st != ENG_ERANGE) break;
        cap = *n_out;
    }
    free(text);
    if (!ids) fprintf(stderr, "orthoserve: cannot tokenize %s\n", path);
    return ids;
}

/* ------------------------------------------------------------------------ */
/* The evaluator: windows through eng_decode, NLL of the scored positions   */
/* ------------------------------------------------------------------------ */

typedef struct {
    eng_context *ctx;
    int32_t n_ctx, n_seq, n_vocab, n_layer, bos;
    int32_t *tok, *pos, *seq;
    int8_t *want;
    double *win_nll;   /* per window of the current batch */
    uint64_t *win_cnt;
} evaluator;

typedef struct {
    /* per layer: sink scores seen on a dense pass (calibrate) */
    float **v;
    size_t *n, *cap;
    int32_t n_layer;
} score_acc;

typedef struct {
    const int32_t *toks;
    size_t n_toks;
    int64_t first_chunk;
    int32_t n_chunks;
    bool full;        /* score positions 0..CTX-2 instead of CTX/2..CTX-2 */
    bool decode_eval; /* second half one token per call, decode policy */
    const eng_orthorank_params *orp; /* NULL: dense */
    bool print_running;              /* [i]ppl on stderr */
    const char *label;               /* progress label */
    size_t prog_base, prog_total;    /* windows done before / overall, for the bar */
    score_acc *scores;
} run_opts;

typedef struct {
    double nll, nll2;
    uint64_t count;
    uint64_t pf_tokens, pf_total, pf_skipped, dc_tokens, dc_total, dc_skipped;
    double flops_total, flops_saved;
    double t_decode, t_cpu; /* wall and process CPU seconds inside eng_decode */
    uint64_t n_fed;
    int32_t n_windows;
    char layers[256];
    char source[32];
    int32_t n_or_layers;
    eng_status err;
} run_result;

static double rr_ppl(const run_result *r)
{
    return r->count ? exp(r->nll / (double)r->count) : NAN;
}

/* llama-perplexity's +/-: exp(mean) * stddev / sqrt(count - 1). */
static double rr_ppl_err(const run_result *r)
{
    if (r->count < 2) return NAN;
    double mean = r->nll / (double)r->count;
    double var = r->nll2 / (double)r->count - mean * mean;
    return var > 0 ? exp(mean) * sqrt(var / (double)(r->count - 1)) : 0.0;
}

static double rr_sparsity(const run_result *r)
{
    uint64_t t = r->pf_total + r->dc_total;
    return t ? (double)(r->pf_skipped + r->dc_skipped) / (double)t : 0.0;
}

static double rr_flops(const run_result *r)
{
    return r->flops_total > 0 ? r->flops_saved / r->flops_total : 0.0;
}

static double rr_tps(const run_result *r)
{
    return r->t_decode > 0 ? (double)r->n_fed / r->t_decode : 0.0;
}

/* Realised decode selection rate at the OrthoRank layers (1 - skipped share). */
static double rr_decode_sel(const run_result *r)
{
    double d = (double)r->dc_tokens * (double)r->n_or_layers;
    return d > 0 ? 1.0 - (double)r->dc_skipped / d : NAN;
}

static void ev_free(evaluator *ev)
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

static int ev_init(evaluator *ev, eng_model *m, int32_t n_ctx, int32_t n_seq, int32_t threads)
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

static void fmt_layers(char *buf, size_t cap, const int32_t *l, int32_t n)
{
    size_t o = 0;
    buf[0] = 0;
    for (int32_t i = 0; i < n && o + 12 < cap; i++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%d", i ? "," : "", l[i]);
}

static int ev_run(evaluator *ev, const run_opts *o, run_result *r)
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
            st = eng_seq_set_orthorank(ev->ctx, w, o->orp, o->decode_eval ? H : C);
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
            eng_orthorank_stats s;
            if ((st = eng_seq_get_orthorank_stats(ev->ctx, w, &s)) != ENG_OK) goto fail;
            r->pf_tokens += s.prefill_tokens;
            r->pf_total += s.prefill_total;
            r->pf_skipped += s.prefill_skipped;
            r->dc_tokens += s.decode_tokens;
            r->dc_total += s.decode_total;
            r->dc_skipped += s.decode_skipped;
            r->flops_total += s.flops_total;
            r->flops_saved += s.flops_saved;
            if (c0 == 0 && w == 0) {
                fmt_layers(r->layers, sizeof r->layers, s.layers, s.n_layers);
                r->n_or_layers = s.n_layers;
                snprintf(r->source, sizeof r->source, "%s",
                         s.layer_order_source ? s.layer_order_source : "?");
            }
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
        progress(o->label, o->prog_base + (size_t)(c0 + nw), o->prog_total,
                 "%d/%d  [%d]%.4f  %.0f tok/s", c0 + nw, o->n_chunks, c0 + nw,
                 exp(nll_run / (double)cnt_run), rr_tps(r));
    }
    if (o->print_running && g_tty) {
        progress_clear();
        fputs(run_buf, stderr);
    }
    if (o->print_running) fprintf(stderr, "\n");
    rc = 0;
    goto out;
fail:
    r->err = st;
    if (o->print_running && !g_tty) fprintf(stderr, "\n");
    progress_clear();
    for (int32_t w = 0; w < ev->n_seq; w++) eng_seq_truncate(ev->ctx, w, 0);
out:
    free(targets);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Shared setup                                                             */
/* ------------------------------------------------------------------------ */

typedef struct {
    eng_model *m;
    eng_model_info info;
    int32_t *toks;
    size_t n_toks;
} session;

static void session_free(session *s)
{
    free(s->toks);
    eng_model_free(s->m);
    memset(s, 0, sizeof *s);
}

static int session_open(session *s, const char *model, const char *text, size_t offset,
                        int32_t threads)
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
        session_free(s);
        return -1;
    }
    double t0 = cli_now();
    s->toks = tokenize_file(eng_model_vocab(s->m), text, offset, &s->n_toks);
    if (!s->toks) {
        session_free(s);
        return -1;
    }
    fprintf(stderr, "orthoserve: %s: %zu tokens (tokenized in %.2f s)\n", text, s->n_toks,
            cli_now() - t0);
    return 0;
}

/* Windows available from first_chunk on; prints an error and returns -1 if none. */
static int32_t windows_available(const session *s, int32_t ctx, long first, long want)
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
/* perplexity                                                               */
/* ------------------------------------------------------------------------ */

static void perplexity_usage(FILE *f)
{
    fprintf(f,
            "usage: orthoserve perplexity -m MODEL -f TEXT [options]\n"
            "\n"
            "llama-perplexity's protocol: the file is tokenized once with BOS, cut into\n"
            "non-overlapping windows of CTX tokens whose first token is replaced by BOS;\n"
            "every window is a fresh sequence decoded in one eng_decode call.\n"
            "Running PPL goes to stderr, the result to stdout.\n"
            "\n"
            "  -m, --model FILE          GGUF model (required)\n"
            "  -f, --file TEXT           text file (required)\n"
            "  -c, --ctx-size N          window size (default 512)\n"
            "      --chunks N            windows to evaluate (default: all)\n"
            "      --mode half|full      half (default, llama.cpp-comparable): score positions\n"
            "                            CTX/2..CTX-2; full: positions 0..CTX-2\n"
            "      --orthorank SPEC      e.g. sparsity=0.2,token_ratio=1/3,decode=threshold,\n"
            "                            method=orthorank|layer_skip|random|inverse,layers=3:1:2,\n"
            "                            min_tokens=16,seed=0 (default: dense)\n"
            "      --plan PLAN.json      install a calibrated layer plan (orthoserve calibrate)\n"
            "      --decode-eval         feed the second half of every window one token per\n"
            "                            call, so it runs under the decode policy\n"
            "      --start-chunk K       skip the first K windows\n"
            "      --offset-bytes B      start reading the text at the line after byte B\n"
            "      --seqs N              windows per eng_decode call (default 4)\n"
            "  -t, --threads N           compute threads (default 2)\n"
            "      --sweep               markdown table: method x sparsity x token ratio\n"
            "      --sweep-methods LIST  (default orthorank,layer_skip,random,inverse)\n"
            "      --sweep-sparsity LIST (default 0.1,0.2,0.3,0.4)\n"
            "      --sweep-ratios LIST   (default 1/3,1/2,2/3)\n"
            "  -v, --verbose             engine log messages on stderr\n");
}

static void print_result(const char *what, const run_result *r, const eng_orthorank_params *p,
                         bool decode_eval)
{
    printf("%s\n", what);
    printf("PPL = %.4f +/- %.5f\n", rr_ppl(r), rr_ppl_err(r));
    printf("mean NLL = %.6f over %" PRIu64 " scored tokens, %d windows\n",
           r->count ? r->nll / (double)r->count : NAN, r->count, r->n_windows);
    printf("sparsity_effective = %.4f (%" PRIu64 " of %" PRIu64 " token-layers skipped)\n",
           rr_sparsity(r), r->pf_skipped + r->dc_skipped, r->pf_total + r->dc_total);
    if (decode_eval) {
        printf("prefill: %" PRIu64 " tokens, %" PRIu64 " / %" PRIu64 " token-layers skipped\n",
               r->pf_tokens, r->pf_skipped, r->pf_total);
        printf("decode:  %" PRIu64 " tokens, %" PRIu64 " / %" PRIu64
               " token-layers skipped, realised selection rate %.4f\n",
               r->dc_tokens, r->dc_skipped, r->dc_total, rr_decode_sel(r));
    }
    printf("flops_saved_fraction = %.4f\n", rr_flops(r));
    printf("layers = [%s] (%s)\n", r->layers, r->source);
    if (p)
        printf("settings: method %s, sparsity %.3f, token_ratio %.4f, decode %s\n",
               eng_or_method_name(p->method), (double)p->sparsity, (double)p->token_ratio,
               eng_or_decode_name(p->decode));
    printf("tokens/s = %.1f (%" PRIu64 " tokens in %.3f s of eng_decode, %.3f CPU s: %.1f tokens "
           "per CPU second)\n",
           rr_tps(r), r->n_fed, r->t_decode, r->t_cpu,
           r->t_cpu > 0 ? (double)r->n_fed / r->t_cpu : 0.0);
}

static void row_md(const char *method, double sp, const char *k, const run_result *r,
                   double dense_ppl, bool decode_eval)
{
    if (r->err != ENG_OK) {
        printf("| %s | %.2f | %s | - | error: %s | | | | | | |%s\n", method, sp, k,
               eng_strerror(r->err), decode_eval ? " |" : "");
        return;
    }
    printf("| %s | %.2f | %s | %s | %.4f | %.4f | %+.2f%% | %.4f | %.4f | %.0f | %.0f |", method,
           sp, k, r->layers[0] ? r->layers : "-", rr_ppl(r), rr_ppl_err(r),
           100.0 * (rr_ppl(r) / dense_ppl - 1.0), rr_sparsity(r), rr_flops(r), rr_tps(r),
           r->t_cpu > 0 ? (double)r->n_fed / r->t_cpu : 0.0);
    if (decode_eval) {
        double sel = rr_decode_sel(r);
        if (isfinite(sel)) printf(" %.3f |", sel);
        else printf(" - |");
    }
    printf("\n");
    fflush(stdout);
}

static const char *ratio_label(double k, char *buf, size_t cap)
{
    static const struct { double v; const char *s; } named[] = {
        {1.0 / 3, "1/3"}, {0.5, "1/2"}, {2.0 / 3, "2/3"}, {0.25, "1/4"}, {0.75, "3/4"}};
    for (size_t i = 0; i < sizeof named / sizeof named[0]; i++)
        if (fabs(k - named[i].v) < 1e-4) return named[i].s;
    snprintf(buf, cap, "%.3f", k);
    return buf;
}

int cli_perplexity(int argc, char **argv)
{
    const char *model = NULL, *text = NULL, *plan_path = NULL, *or_spec = NULL;
    long n_ctx = 512, chunks = 0, threads = 2, start_chunk = 0, offset = 0, seqs = 4;
    bool full = false, decode_eval = false, sweep = false, verbose = false, have_start = false,
         have_offset = false;
    const char *sw_methods = "orthorank,layer_skip,random,inverse";
    double sw_sp[MAX_GRID] = {0.1, 0.2, 0.3, 0.4}, sw_k[MAX_GRID] = {1.0 / 3, 0.5, 2.0 / 3};
    int n_sp = 4, n_k = 3;
    enum { O_CHUNKS = 256, O_MODE, O_OR, O_PLAN, O_DEC, O_START, O_OFF, O_SEQS, O_SWEEP, O_SWM,
           O_SWS, O_SWK };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},       {"file", required_argument, 0, 'f'},
        {"ctx-size", required_argument, 0, 'c'},    {"chunks", required_argument, 0, O_CHUNKS},
        {"mode", required_argument, 0, O_MODE},     {"orthorank", required_argument, 0, O_OR},
        {"plan", required_argument, 0, O_PLAN},     {"decode-eval", no_argument, 0, O_DEC},
        {"start-chunk", required_argument, 0, O_START},
        {"offset-bytes", required_argument, 0, O_OFF},
        {"seqs", required_argument, 0, O_SEQS},     {"threads", required_argument, 0, 't'},
        {"sweep", no_argument, 0, O_SWEEP},         {"sweep-methods", required_argument, 0, O_SWM},
        {"sweep-sparsity", required_argument, 0, O_SWS},
        {"sweep-ratios", required_argument, 0, O_SWK},
        {"verbose", no_argument, 0, 'v'},           {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    optind = 1;
    int ch;
    while ((ch = getopt_long(argc, argv, "m:f:c:t:vh", opts, NULL)) != -1) {
        switch (ch) {
        case 'm': model = optarg; break;
        case 'f': text = optarg; break;
        case 'c': if (!cli_parse_long(optarg, 4, 1 << 20, &n_ctx) || n_ctx % 2) BAD("--ctx-size", optarg); break;
        case 't': if (!cli_parse_long(optarg, 1, 512, &threads)) BAD("--threads", optarg); break;
        case O_CHUNKS: if (!cli_parse_long(optarg, 1, 1L << 30, &chunks)) BAD("--chunks", optarg); break;
        case O_MODE:
            if (!strcmp(optarg, "half")) full = false;
            else if (!strcmp(optarg, "full")) full = true;
            else BAD("--mode", optarg);
            break;
        case O_OR: or_spec = optarg; break;
        case O_PLAN: plan_path = optarg; break;
        case O_DEC: decode_eval = true; break;
        case O_START:
            if (!cli_parse_long(optarg, 0, 1L << 30, &start_chunk)) BAD("--start-chunk", optarg);
            have_start = true;
            break;
        case O_OFF:
            if (!cli_parse_long(optarg, 0, 1L << 40, &offset)) BAD("--offset-bytes", optarg);
            have_offset = true;
            break;
        case O_SEQS: if (!cli_parse_long(optarg, 1, 256, &seqs)) BAD("--seqs", optarg); break;
        case O_SWEEP: sweep = true; break;
        case O_SWM: sw_methods = optarg; break;
        case O_SWS:
            if ((n_sp = parse_list(optarg, 0, 0.9, sw_sp, MAX_GRID)) <= 0) BAD("--sweep-sparsity", optarg);
            break;
        case O_SWK:
            if ((n_k = parse_list(optarg, 1e-6, 1, sw_k, MAX_GRID)) <= 0) BAD("--sweep-ratios", optarg);
            break;
        case 'v': verbose = true; break;
        case 'h': perplexity_usage(stdout); return 0;
        default: perplexity_usage(stderr); return 2;
        }
    }
    if (!model || !text || optind != argc) {
        fprintf(stderr, "orthoserve perplexity: %s\n",
                optind != argc ? "unexpected argument" : "--model and --file are required");
        perplexity_usage(stderr);
        return 2;
    }
    if (have_start && have_offset) {
        fprintf(stderr, "orthoserve perplexity: use --start-chunk or --offset-bytes, not both\n");
        return 2;
    }
    eng_orthorank_params orp = eng_orthorank_default_params();
    int32_t layers_buf[MAX_LAYERS];
    if (or_spec) {
        char err[256];
        if (!cli_parse_orthorank(or_spec, &orp, layers_buf, err, sizeof err)) {
            fprintf(stderr, "orthoserve perplexity: --orthorank: %s\n", err);
            return 2;
        }
    }
    eng_or_method methods[8];
    int n_methods = 0;
    for (const char *s = sw_methods; *s;) {
        const char *c = strchr(s, ',');
        size_t l = c ? (size_t)(c - s) : strlen(s);
        if (n_methods >= 8 || !eng_or_method_from_name(s, l, &methods[n_methods])) BAD("--sweep-methods", sw_methods);
        n_methods++;
        s += l + (c ? 1 : 0);
    }
    if (verbose) eng_log_set(cli_log_stderr, NULL, ENG_LOG_DEBUG);
    g_tty = isatty(2);

    session S;
    if (session_open(&S, model, text, (size_t)offset, (int32_t)threads)) return 1;
    int rc = 1;
    evaluator ev = {0};
    char err[512] = "";
    if (plan_path && plan_load(plan_path, S.m, err, sizeof err)) {
        fprintf(stderr, "orthoserve: %s\n", err);
        goto out;
    }
    int32_t nch = windows_available(&S, (int32_t)n_ctx, start_chunk, chunks);
    if (nch < 0) goto out;
    int32_t n_seq = (int32_t)(seqs < nch ? seqs : nch);
    if (ev_init(&ev, S.m, (int32_t)n_ctx, n_seq, (int32_t)threads)) goto out;
    fprintf(stderr,
            "orthoserve: %d windows of %ld tokens from window %ld, %s mode%s, %d per call, "
            "%ld threads, kernels %s\n",
            nch, n_ctx, start_chunk, full ? "full" : "half", decode_eval ? ", decode-eval" : "",
            n_seq, threads, eng_kernel_name());

    run_opts ro = {.toks = S.toks, .n_toks = S.n_toks, .first_chunk = start_chunk,
                   .n_chunks = nch, .full = full, .decode_eval = decode_eval};
    run_result r;
    if (!sweep) {
        ro.orp = or_spec ? &orp : NULL;
        ro.print_running = true;
        ro.label = "perplexity";
        ro.prog_total = (size_t)nch;
        if (ev_run(&ev, &ro, &r)) {
            fprintf(stderr, "orthoserve: evaluation failed: %s\n", eng_strerror(r.err));
            goto out;
        }
        progress_clear();
        char what[256];
        snprintf(what, sizeof what, "%s: %d windows of %ld, %s mode%s%s", model, nch, n_ctx,
                 full ? "full" : "half", decode_eval ? ", decode-eval" : "",
                 or_spec ? "" : ", dense");
        print_result(what, &r, or_spec ? &orp : NULL, decode_eval);
        rc = 0;
        goto out;
    }

    /* --sweep */
    size_t n_runs = 1;
    for (int mi = 0; mi < n_methods; mi++)
        n_runs += (size_t)n_sp * (methods[mi] == ENG_OR_LAYER_SKIP ? 1 : (size_t)n_k);
    ro.prog_total = n_runs * (size_t)nch;
    ro.label = "dense";
    if (ev_run(&ev, &ro, &r)) {
        fprintf(stderr, "orthoserve: dense evaluation failed: %s\n", eng_strerror(r.err));
        goto out;
    }
    double dense_ppl = rr_ppl(&r);
    ro.prog_base += (size_t)nch;
    progress_clear();
    printf("%s, %s: %d windows of %ld from window %ld, %s mode, %s, plan %s\n\n", model, text, nch,
           n_ctx, start_chunk, full ? "full" : "half",
           decode_eval ? "second half decoded token by token (decode policy)"
                       : "whole window in one call (prefill top-K)",
           plan_path ? plan_path : "none (engine fallback order)");
    printf("| method | sparsity | k | layers | PPL | +/- | vs dense | sparsity_eff | flops saved | "
           "tok/s | tok/CPU-s |%s\n",
           decode_eval ? " decode sel. rate |" : "");
    printf("|---|---|---|---|---|---|---|---|---|---|---|%s\n", decode_eval ? "---|" : "");
    row_md("dense", 0, "-", &r, dense_ppl, decode_eval);
    for (int mi = 0; mi < n_methods; mi++) {
        bool ls = methods[mi] == ENG_OR_LAYER_SKIP;
        for (int ki = 0; ki < (ls ? 1 : n_k); ki++) {
            for (int si = 0; si < n_sp; si++) {
                eng_orthorank_params p = orp;
                p.layers = NULL;
                p.n_layers = 0;
                p.method = methods[mi];
                p.sparsity = (float)sw_sp[si];
                p.token_ratio = ls ? orp.token_ratio : (float)sw_k[ki];
                char lbl[64], kb[16];
                const char *kl = ls ? "-" : ratio_label(sw_k[ki], kb, sizeof kb);
                snprintf(lbl, sizeof lbl, "%s s=%.2f k=%s", eng_or_method_name(p.method), sw_sp[si], kl);
                ro.orp = &p;
                ro.label = lbl;
                ev_run(&ev, &ro, &r); /* errors become table rows */
                ro.prog_base += (size_t)nch;
                progress_clear();
                row_md(eng_or_method_name(p.method), sw_sp[si], kl, &r, dense_ppl, decode_eval);
            }
        }
    }
    rc = 0;
out:
    ev_free(&ev);
    session_free(&S);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* calibrate                                                                */
/* ------------------------------------------------------------------------ */

static void calibrate_usage(FILE *f)
{
    fprintf(f,
            "usage: orthoserve calibrate -m MODEL -f TEXT -o PLAN.json [options]\n"
            "\n"
            "SLEB-style greedy layer orders by calibration NLL (all positions of every\n"
            "window): repeatedly add the layer whose conversion to an OrthoRank layer\n"
            "(method orthorank, token ratio K) raises NLL least; the same greedy with\n"
            "layer removal gives the layer-skipping order. Decode thresholds are the\n"
            "K-quantile of each layer's sink scores on a dense pass (sink excluded).\n"
            "\n"
            "  -m, --model FILE        GGUF model (required)\n"
            "  -f, --file TEXT         calibration text (required)\n"
            "  -o, --output FILE       plan to write (required)\n"
            "  -c, --ctx-size N        window size (default 256)\n"
            "      --chunks N          calibration windows (default 32)\n"
            "      --start-chunk K     skip the first K windows (keep calibration and\n"
            "                          evaluation text apart)\n"
            "      --exclude WHICH     layers never converted: first,last | first | none\n"
            "                          (default first)\n"
            "      --token-ratio K     OrthoRank token ratio (default 1/3)\n"
            "      --seqs N            windows per eng_decode call (default 4)\n"
            "  -t, --threads N         compute threads (default 2)\n"
            "  -v, --verbose           engine log messages on stderr\n");
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* The q-quantile (linear interpolation between order statistics). Sorts v. */
static float quantile(float *v, size_t n, double q)
{
    qsort(v, n, sizeof *v, cmp_float);
    double p = q * (double)(n - 1);
    size_t i = (size_t)floor(p);
    if (i + 1 >= n) return v[n - 1];
    double f = p - (double)i;
    return (float)((1 - f) * v[i] + f * v[i + 1]);
}

/* Greedy order: candidates cand[0..n_cand); fills order/nll (n_cand entries). */
static int greedy(evaluator *ev, run_opts *ro, eng_or_method method, float k, const int32_t *cand,
                  int32_t n_cand, int32_t *order, double *nll)
{
    bool used[MAX_LAYERS] = {0};
    int32_t layers[MAX_LAYERS];
    for (int32_t step = 0; step < n_cand; step++) {
        double best = INFINITY;
        int32_t best_l = -1;
        for (int32_t ci = 0; ci < n_cand; ci++) {
            int32_t c = cand[ci];
            if (used[c]) continue;
            memcpy(layers, order, (size_t)step * sizeof *layers);
            layers[step] = c;
            eng_orthorank_params p = eng_orthorank_default_params();
            p.method = method;
            p.token_ratio = k;
            p.layers = layers;
            p.n_layers = step + 1;
            p.decode = ENG_OR_DECODE_FULL;
            char lbl[64];
            snprintf(lbl, sizeof lbl, "%s step %d/%d +%d", eng_or_method_name(method), step + 1, n_cand, c);
            ro->orp = &p;
            ro->label = lbl;
            run_result r;
            if (ev_run(ev, ro, &r)) {
                progress_clear();
                fprintf(stderr, "orthoserve: %s with layers +%d failed: %s\n", eng_or_method_name(method),
                        c, eng_strerror(r.err));
                return -1;
            }
            ro->prog_base += (size_t)ro->n_chunks;
            double x = r.nll / (double)r.count;
            if (x < best) {
                best = x;
                best_l = c;
            }
        }
        order[step] = best_l;
        nll[step] = best;
        used[best_l] = true;
        progress_clear();
        fprintf(stderr, "orthoserve: %s step %d: layer %d, NLL %.6f\n", eng_or_method_name(method),
                step + 1, best_l, best);
    }
    return 0;
}

int cli_calibrate(int argc, char **argv)
{
    const char *model = NULL, *text = NULL, *out_path = NULL, *exclude = "first";
    long n_ctx = 256, chunks = 32, start_chunk = 0, threads = 2, seqs = 4;
    double k = 1.0 / 3;
    bool verbose = false;
    enum { O_CHUNKS = 256, O_START, O_EXCL, O_K, O_SEQS };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},      {"file", required_argument, 0, 'f'},
        {"output", required_argument, 0, 'o'},     {"ctx-size", required_argument, 0, 'c'},
        {"chunks", required_argument, 0, O_CHUNKS}, {"start-chunk", required_argument, 0, O_START},
        {"exclude", required_argument, 0, O_EXCL}, {"token-ratio", required_argument, 0, O_K},
        {"seqs", required_argument, 0, O_SEQS},    {"threads", required_argument, 0, 't'},
        {"verbose", no_argument, 0, 'v'},          {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    optind = 1;
    int ch;
    while ((ch = getopt_long(argc, argv, "m:f:o:c:t:vh", opts, NULL)) != -1) {
        switch (ch) {
        case 'm': model = optarg; break;
        case 'f': text = optarg; break;
        case 'o': out_path = optarg; break;
        case 'c': if (!cli_parse_long(optarg, 4, 1 << 20, &n_ctx)) BAD("--ctx-size", optarg); break;
        case 't': if (!cli_parse_long(optarg, 1, 512, &threads)) BAD("--threads", optarg); break;
        case O_CHUNKS: if (!cli_parse_long(optarg, 1, 1L << 30, &chunks)) BAD("--chunks", optarg); break;
        case O_START: if (!cli_parse_long(optarg, 0, 1L << 30, &start_chunk)) BAD("--start-chunk", optarg); break;
        case O_EXCL:
            if (strcmp(optarg, "first,last") && strcmp(optarg, "first") && strcmp(optarg, "none"))
                BAD("--exclude", optarg);
            exclude = optarg;
            break;
        case O_K:
            if (!parse_frac(optarg, strlen(optarg), 1e-6, 1, &k)) BAD("--token-ratio", optarg);
            break;
        case O_SEQS: if (!cli_parse_long(optarg, 1, 256, &seqs)) BAD("--seqs", optarg); break;
        case 'v': verbose = true; break;
        case 'h': calibrate_usage(stdout); return 0;
        default: calibrate_usage(stderr); return 2;
        }
    }
    if (!model || !text || !out_path || optind != argc) {
        fprintf(stderr, "orthoserve calibrate: %s\n",
                optind != argc ? "unexpected argument" : "--model, --file and --output are required");
        calibrate_usage(stderr);
        return 2;
    }
    if (verbose) eng_log_set(cli_log_stderr, NULL, ENG_LOG_DEBUG);
    g_tty = isatty(2);

    session S;
    if (session_open(&S, model, text, 0, (int32_t)threads)) return 1;
    int rc = 1;
    evaluator ev = {0};
    score_acc sa = {0};
    plan_data plan;
    plan_data_init(&plan);
    int32_t L = S.info.n_layer;
    if (L > MAX_LAYERS) {
        fprintf(stderr, "orthoserve: %d layers (at most %d)\n", L, MAX_LAYERS);
        goto out;
    }
    int32_t nch = windows_available(&S, (int32_t)n_ctx, start_chunk, chunks);
    if (nch < 0) goto out;
    if (nch < chunks)
        fprintf(stderr, "orthoserve: only %d calibration windows available\n", nch);
    int32_t n_seq = (int32_t)(seqs < nch ? seqs : nch);
    if (ev_init(&ev, S.m, (int32_t)n_ctx, n_seq, (int32_t)threads)) goto out;

    int32_t cand[MAX_LAYERS], n_cand = 0;
    bool ex_last = !strcmp(exclude, "first,last"), ex_first = strcmp(exclude, "none") != 0;
    for (int32_t l = 0; l < L; l++)
        if (!(ex_first && l == 0) && !(ex_last && l == L - 1)) cand[n_cand++] = l;
    if (n_cand == 0) {
        fprintf(stderr, "orthoserve: no candidate layers left after --exclude %s\n", exclude);
        goto out;
    }
    size_t n_evals = 1 + (size_t)n_cand * (size_t)(n_cand + 1); /* dense + 2 greedy triangles */
    fprintf(stderr,
            "orthoserve: calibrating on %d windows of %ld from window %ld; %d candidate layers "
            "(exclude %s), token ratio %.4f; %zu evaluations\n",
            nch, n_ctx, start_chunk, n_cand, exclude, k, n_evals);

    sa.n_layer = L;
    sa.v = calloc((size_t)L, sizeof *sa.v);
    sa.n = calloc((size_t)L, sizeof *sa.n);
    sa.cap = calloc((size_t)L, sizeof *sa.cap);
    plan.order = malloc((size_t)n_cand * sizeof *plan.order);
    plan.order_nll = malloc((size_t)n_cand * sizeof *plan.order_nll);
    plan.skip_order = malloc((size_t)n_cand * sizeof *plan.skip_order);
    plan.skip_nll = malloc((size_t)n_cand * sizeof *plan.skip_nll);
    plan.thresholds = malloc((size_t)L * sizeof *plan.thresholds);
    plan.model_file = strdup(model);
    plan.calib_file = strdup(text);
    plan.exclude = strdup(exclude);
    if (!sa.v || !sa.n || !sa.cap || !plan.order || !plan.order_nll || !plan.skip_order ||
        !plan.skip_nll || !plan.thresholds || !plan.model_file || !plan.calib_file || !plan.exclude) {
        fprintf(stderr, "orthoserve: out of memory\n");
        goto out;
    }
    plan.n_layer = L;
    plan.token_ratio = (float)k;
    plan.calib_chunks = nch;
    plan.calib_ctx = (int32_t)n_ctx;
    plan.calib_start_chunk = (int32_t)start_chunk;
    plan.n_order = plan.n_skip_order = n_cand;

    double t0 = cli_now();
    run_opts ro = {.toks = S.toks, .n_toks = S.n_toks, .first_chunk = start_chunk, .n_chunks = nch,
                   .full = true, .label = "dense + scores", .prog_total = n_evals * (size_t)nch,
                   .scores = &sa};
    run_result r;
    if (ev_run(&ev, &ro, &r)) {
        fprintf(stderr, "orthoserve: dense pass failed: %s\n", eng_strerror(r.err));
        goto out;
    }
    ro.prog_base += (size_t)nch;
    ro.scores = NULL;
    plan.dense_nll = r.nll / (double)r.count;
    progress_clear();
    fprintf(stderr, "orthoserve: dense NLL %.6f (PPL %.4f) over %" PRIu64 " tokens\n",
            plan.dense_nll, exp(plan.dense_nll), r.count);
    for (int32_t l = 0; l < L; l++)
        plan.thresholds[l] = sa.n[l] ? quantile(sa.v[l], sa.n[l], k) : NAN;

    if (greedy(&ev, &ro, ENG_OR_ORTHORANK, (float)k, cand, n_cand, plan.order, plan.order_nll) ||
        greedy(&ev, &ro, ENG_OR_LAYER_SKIP, (float)k, cand, n_cand, plan.skip_order,
               plan.skip_nll))
        goto out;
    progress_clear();
    char err[512];
    if (plan_write(out_path, &plan, err, sizeof err)) {
        fprintf(stderr, "orthoserve: %s\n", err);
        goto out;
    }
    char buf[512];
    printf("plan written to %s (%.1f s)\n", out_path, cli_now() - t0);
    printf("dense NLL          %.6f (PPL %.4f) on %d windows of %ld from window %ld\n",
           plan.dense_nll, exp(plan.dense_nll), nch, n_ctx, start_chunk);
    fmt_layers(buf, sizeof buf, plan.order, plan.n_order);
    printf("orthorank order    [%s] (token ratio %.4f, exclude %s)\n", buf, k, exclude);
    printf("  NLL after each   ");
    for (int32_t i = 0; i < plan.n_order; i++) printf(" %.6f", plan.order_nll[i]);
    fmt_layers(buf, sizeof buf, plan.skip_order, plan.n_skip_order);
    printf("\nlayer_skip order   [%s]\n", buf);
    printf("  NLL after each   ");
    for (int32_t i = 0; i < plan.n_skip_order; i++) printf(" %.6f", plan.skip_nll[i]);
    printf("\nthresholds         ");
    for (int32_t l = 0; l < L; l++) {
        if (isfinite(plan.thresholds[l])) printf(" %.5f", (double)plan.thresholds[l]);
        else printf(" null");
    }
    printf("\n");
    rc = 0;
out:
    for (int32_t l = 0; sa.v && l < sa.n_layer; l++) free(sa.v[l]);
    free(sa.v);
    free(sa.n);
    free(sa.cap);
    plan_data_free(&plan);
    ev_free(&ev);
    session_free(&S);
    return rc;
}
