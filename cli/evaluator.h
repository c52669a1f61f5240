/*
 * evaluator.h - what orthoserve perplexity and calibrate share: a model and
 * a tokenized text (a session), llama-perplexity's windows of that text
 * through eng_decode with or without OrthoRank settings, the NLL of the
 * scored positions, the OrthoRank stats summed over the windows, sink
 * scores for calibration, and a progress bar on a terminal (evaluator.c).
 *
 * Protocol: the whole file is tokenized once with BOS, cut into
 * non-overlapping windows of CTX tokens, the first token of every window is
 * replaced by BOS, positions restart at 0 (fresh sequence) and, in the
 * default "half" mode, logits at positions CTX/2 .. CTX-2 are scored against
 * the next token. Each window is decoded in ONE eng_decode call (several
 * windows as separate sequences of the same call), so OrthoRank's prefill
 * selection sees the whole window.
 */
#ifndef ORTHOSERVE_CLI_EVALUATOR_H
#define ORTHOSERVE_CLI_EVALUATOR_H

#include "orthoserve/engine.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A model and the tokens of a text file. */
typedef struct {
    eng_model *m;
    eng_model_info info;
    int32_t *toks;
    size_t n_toks;
} ev_session;

/* Load the model and tokenize the text from byte offset on (advanced to the
 * next line start): 0, or -1 with a message printed. */
int ev_session_open(ev_session *s, const char *model, const char *text, size_t offset, int32_t threads);
void ev_session_free(ev_session *s);
/* Windows of ctx tokens available from window first on (at most want when
 * > 0); prints an error and returns -1 if none. */
int32_t ev_windows(const ev_session *s, int32_t ctx, long first, long want);

/* A context for n_seq windows of n_ctx tokens decoded together, and its batch. */
typedef struct {
    eng_context *ctx;
    int32_t n_ctx, n_seq, n_vocab, n_layer, bos;
    int32_t *tok, *pos, *seq;
    int8_t *want;
    double *win_nll;   /* per window of the current batch */
    uint64_t *win_cnt;
} evaluator;

int ev_init(evaluator *ev, eng_model *m, int32_t n_ctx, int32_t n_seq, int32_t threads, eng_kv_type type_k,
            eng_kv_type type_v);
void ev_free(evaluator *ev);

/* Per layer: sink scores seen on a dense pass (calibrate). */
typedef struct {
    float **v;
    size_t *n, *cap;
    int32_t n_layer;
} score_acc;

/* One evaluation: which windows, how, with which settings. */
typedef struct {
    const int32_t *toks;
    size_t n_toks;
    int64_t first_chunk;
    int32_t n_chunks;
    bool full;                             /* score positions 0..CTX-2 instead of CTX/2..CTX-2 */
    bool decode_eval;                      /* second half one token per call, decode policy */
    const eng_orthorank_params *orthorank; /* NULL: dense */
    bool print_running;                    /* [i]ppl on stderr */
    const char *label;                     /* progress label */
    size_t prog_base, prog_total;          /* windows done before / overall, for the bar */
    score_acc *scores;                     /* record sink scores here, or NULL */
} run_opts;

/* What it gave: NLL sums and the OrthoRank stats summed over the windows. */
typedef struct {
    double nll, nll2;
    uint64_t count;
    uint64_t pf_tokens, pf_total, pf_skipped, dc_tokens, dc_total, dc_skipped;
    double flops_total, flops_saved;
    double t_decode, t_cpu; /* wall and process CPU seconds inside eng_decode */
    uint64_t n_fed;
    int32_t n_windows;
    char layers[256];       /* the first window's layers, "4,3" */
    char source[32];
    int32_t n_orthorank_layers;
    float token_ratio;      /* the first window's k in force (the engine may adjust the requested one) */
    float sparsity_target;  /* and its planned sparsity */
    eng_status err;
} run_result;

/* 0, or -1 with r->err set (a message is the caller's to print). */
int ev_run(evaluator *ev, const run_opts *o, run_result *r);

double rr_ppl(const run_result *r);
double rr_ppl_err(const run_result *r);   /* llama-perplexity's +/- */
double rr_sparsity(const run_result *r);  /* skipped / total token-layers over all windows */
double rr_flops(const run_result *r);     /* flops saved / total over all windows */
double rr_tps(const run_result *r);       /* tokens per second inside eng_decode */
double rr_decode_sel(const run_result *r); /* realised decode selection rate at the OrthoRank layers */

/* "4,3,2" into buf. */
void ev_fmt_layers(char *buf, size_t cap, const int32_t *l, int32_t n);

/* The progress bar: on only when stderr is a terminal (ev_progress_init). */
void ev_progress_init(void);
bool ev_progress_on(void);
void ev_progress(const char *label, size_t done, size_t total, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void ev_progress_clear(void);

#endif
