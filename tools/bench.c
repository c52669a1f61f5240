/*
 * bench.c - engine benchmark: prefill and decode speed of GGUF models next to
 * the machine's own limits, measured in the same run.
 *
 *   bench [-r RUNS] [-t 1,2] [-p 512] [-n 128] [-s SPARSITY] [-M 0|1] [-R 0|1]
 *         [--cache-type-k T] [--cache-type-v T] MODEL.gguf [...]
 *
 * -M 0: read the model into memory (huge pages) instead of mapping it;
 * -R 0: keep the file's weight layout instead of repacking (model.c);
 * --cache-type-k / --cache-type-v: the KV cache types (f16 default, f32,
 * q8_0; bench-kv compares them side by side).
 *
 * It prints the CPU (model name, SIMD features) and the kernel level in use
 * (ORTHOSERVE_ISA, else the best the CPU has); for each thread count it
 * measures the arithmetic peaks the CPU has (FP32 FMA on ymm / zmm, int8
 * vpmaddubsw+vpmaddwd on ymm, vpdpbusd on ymm / zmm, BF16 vdpbf16ps on zmm;
 * "n/a" for what it lacks: tools/common/machine.h) and the memory read
 * bandwidth; for each model, prefill tokens/s of a P-token prompt and decode
 * tokens/s of N tokens (median of RUNS), with the bandwidth measured right
 * before and after each decode run. Ratios: decode vs the bandwidth bound
 * (weight bytes read per token / bandwidth; the median over runs of each
 * run's speed against the bandwidth measured around it, since the machine's
 * 2-thread bandwidth can change between runs) and the prefill weight-product
 * FLOP rate vs the peak of the level in use for the model's main weight
 * type (mach_level_peak: the level's int8 instruction for quantized weights,
 * vdpbf16ps for BF16 on avx512, else FP32 FMA of the level's width; none
 * for scalar).
 * With -s, every run also measures OrthoRank at that sparsity (k = 1/3,
 * decode policy threshold) right after the dense measurement, and reports
 * the median of the per-run speed ratios with the realised skip fractions.
 * Timing claims live here, never in unit tests.
 */
#include "model.h"
#include "common/machine.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


/* ------------------------------------------------------------------------ */
/* Model runs                                                               */
/* ------------------------------------------------------------------------ */

/* Weight bytes one decode step reads: every layer matrix and norm, the
 * output matrix, and one embedding row (the whole matrix only when tied,
 * where it is the output matrix). */
static double bytes_per_token(const eng_model *m)
{
    double b = (double)m->n_bytes;
    if (!m->tied) b -= (double)m->tok_embd.row_bytes * (double)(m->tok_embd.n_out - 1);
    return b;
}

/* FLOPs of the weight products for n tokens (2 per multiply-add). */
static double matmul_flops(const eng_model *m, int n)
{
    double per = 0;
    for (int il = 0; il < m->n_layer; il++) {
        const eng__layer *L = &m->layers[il];
        const eng__mat *ms[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        for (int i = 0; i < 7; i++) per += (double)ms[i]->n_in * (double)ms[i]->n_out;
    }
    return 2.0 * per * n + 2.0 * (double)m->output.n_in * (double)m->output.n_out; /* logits: last row */
}

static int32_t *make_tokens(const eng_model *m, int n)
{
    int32_t *t = malloc((size_t)n * sizeof *t);
    uint64_t s = 12345;
    int32_t nv = m->n_vocab > 300 ? m->n_vocab : 300;
    t[0] = eng_vocab_bos(m->vocab) >= 0 ? eng_vocab_bos(m->vocab) : 1;
    for (int i = 1; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        t[i] = (int32_t)(259 + (s >> 33) % (uint64_t)(nv - 259)) % m->n_vocab;
    }
    return t;
}

static double run_batch(eng_context *c, const int32_t *tok, int n, int pos0)
{
    int32_t *pos = malloc((size_t)n * sizeof *pos), *seq = calloc((size_t)n, sizeof *seq);
    int8_t *want = calloc((size_t)n, 1);
    for (int i = 0; i < n; i++) pos[i] = pos0 + i;
    want[n - 1] = 1;
    eng_batch b = {n, tok, pos, seq, want};
    double t0 = eng__now();
    eng_status st = eng_decode(c, &b);
    double dt = eng__now() - t0;
    free(pos);
    free(seq);
    free(want);
    if (st != ENG_OK) {
        fprintf(stderr, "bench: decode failed: %s\n", eng_strerror(st));
        exit(1);
    }
    return dt;
}

static void usage(void)
{
    fprintf(stderr, "usage: bench [-r RUNS] [-t 1,2] [-p PROMPT_TOKENS] [-n GEN_TOKENS] [-s SPARSITY] [-M 0|1] [-R 0|1] MODEL.gguf...\n"
                    "  -M 0: read the model into memory (huge pages) instead of mapping the file (-M 1, default)\n"
                    "  -R 0: keep the weights in the file's layout instead of repacking them (-R 1, default)\n"
                    "  --cache-type-k T, --cache-type-v T: KV cache types f16 (default), f32 or q8_0\n");
    exit(2);
}

typedef struct {
    double prefill, decode;           /* tokens/s */
    double pf_skip, dc_skip;          /* realised skipped / total token-layers */
    double flops_saved;
} run_result;

/* One prefill of n_prompt tokens and n_gen single-token decode steps on a
 * fresh sequence, with the given OrthoRank settings (NULL: dense). */
static run_result measure(eng_context *c, const int32_t *tok, int n_prompt, int n_gen,
                          const eng_orthorank_params *orp)
{
    run_result r = {0};
    eng_seq_truncate(c, 0, 0);
    if (eng_seq_set_orthorank(c, 0, orp, n_prompt) != ENG_OK) {
        fprintf(stderr, "bench: invalid OrthoRank settings\n");
        exit(1);
    }
    r.prefill = (double)n_prompt / run_batch(c, tok, n_prompt, 0);
    double t = 0;
    for (int g = 0; g < n_gen; g++) t += run_batch(c, tok + n_prompt + g, 1, n_prompt + g);
    r.decode = (double)n_gen / t;
    eng_orthorank_stats st;
    eng_seq_get_orthorank_stats(c, 0, &st);
    r.pf_skip = st.prefill_total ? (double)st.prefill_skipped / st.prefill_total : 0;
    r.dc_skip = st.decode_total ? (double)st.decode_skipped / st.decode_total : 0;
    r.flops_saved = st.flops_total > 0 ? st.flops_saved / st.flops_total : 0;
    return r;
}

/* Dense vs OrthoRank side by side: per run, dense then sparse on the same
 * context, so both see the same machine state. */
static eng_kv_type type_k = ENG_KV_F16, type_v = ENG_KV_F16; /* --cache-type-k / -v */

static void orthorank_rows(eng_model *m, const char *base, int threads, int runs, int n_prompt,
                           int n_gen, float sparsity, const int32_t *tok)
{
    eng_context_params cp = eng_context_default_params();
    cp.n_ctx = n_prompt + n_gen;
    cp.n_batch_max = n_prompt;
    cp.n_threads = threads;
    cp.type_k = type_k;
    cp.type_v = type_v;
    eng_context *c = NULL;
    if (eng_context_new(m, &cp, &c) != ENG_OK) {
        fprintf(stderr, "bench: cannot create a context\n");
        exit(1);
    }
    eng_orthorank_params orp = eng_orthorank_default_params();
    orp.sparsity = sparsity;
    double pr[100], dr[100], pd[100], ps[100], dd[100], ds[100];
    run_result sp = {0};
    measure(c, tok, n_prompt < 32 ? n_prompt : 32, 2, NULL); /* warm up */
    for (int i = 0; i < runs; i++) {
        run_result d = measure(c, tok, n_prompt, n_gen, NULL);
        sp = measure(c, tok, n_prompt, n_gen, &orp);
        pd[i] = d.prefill;
        ps[i] = sp.prefill;
        dd[i] = d.decode;
        ds[i] = sp.decode;
        pr[i] = sp.prefill / d.prefill;
        dr[i] = sp.decode / d.decode;
    }
    eng_orthorank_stats st;
    eng_seq_get_orthorank_stats(c, 0, &st);
    printf("| %s | %s | %d | %.2f | %d | %.0f | %.0f | **%.3fx** | %.3f | %.1f | %.1f | **%.3fx** | %.3f |\n", base,
           m->file_type, threads, sparsity, st.n_layers, mach_median(pd, runs), mach_median(ps, runs), mach_median(pr, runs),
           sp.pf_skip, mach_median(dd, runs), mach_median(ds, runs), mach_median(dr, runs), sp.dc_skip);
    fflush(stdout);
    eng_context_free(c);
}

/* The peaks the CPU has and the read bandwidth, per thread count: one
 * table row each ("n/a" for instructions the CPU lacks). */
static void peak_table(const int *threads, int n_thr, double pk[][MACH_N_PEAKS])
{
    printf("| threads |");
    for (int p = 0; p < MACH_N_PEAKS; p++) printf(" %s G/s |", mach_peak_name((mach_peak)p));
    printf(" read GB/s |\n|---|");
    for (int p = 0; p <= MACH_N_PEAKS; p++) printf("---|");
    printf("\n");
    for (int ti = 0; ti < n_thr; ti++) {
        printf("| %d |", threads[ti]);
        for (int p = 0; p < MACH_N_PEAKS; p++) {
            pk[ti][p] = mach_peak_ops((mach_peak)p, threads[ti]);
            if (pk[ti][p] > 0) printf(" %.0f |", pk[ti][p] / 1e9);
            else printf(" n/a |");
        }
        printf(" %.1f |\n", mach_read_bw(threads[ti]) / 1e9);
        fflush(stdout);
    }
}

int main(int argc, char **argv)
{
    int runs = 5, n_prompt = 512, n_gen = 128, threads[8] = {1, 2}, n_thr = 2, i0 = 1;
    float sparsity = 0;
    bool use_mmap = true, repack = true;
    for (; i0 < argc && argv[i0][0] == '-'; i0 += 2) {
        if (i0 + 1 >= argc) usage();
        const char *o = argv[i0], *v = argv[i0 + 1];
        if (!strcmp(o, "-r")) runs = atoi(v);
        else if (!strcmp(o, "-p")) n_prompt = atoi(v);
        else if (!strcmp(o, "-n")) n_gen = atoi(v);
        else if (!strcmp(o, "-s")) sparsity = (float)atof(v);
        else if (!strcmp(o, "-M")) use_mmap = atoi(v) != 0;
        else if (!strcmp(o, "-R")) repack = atoi(v) != 0;
        else if (!strcmp(o, "--cache-type-k")) { if (eng_kv_type_parse(v, &type_k) != ENG_OK) usage(); }
        else if (!strcmp(o, "--cache-type-v")) { if (eng_kv_type_parse(v, &type_v) != ENG_OK) usage(); }
        else if (!strcmp(o, "-t")) {
            n_thr = 0;
            for (char *s = (char *)v; *s && n_thr < 8; s++) {
                threads[n_thr++] = (int)strtol(s, &s, 10);
                if (!*s) break;
            }
        } else usage();
    }
    if (i0 >= argc || runs < 1 || runs > 100 || n_prompt < 1 || n_gen < 1) usage();
    eng__kernel_level lvl;
    char err0[512];
    if (!mach_level(&lvl, err0, sizeof err0)) {
        fprintf(stderr, "bench: %s\n", err0);
        return 1;
    }
    mach_print_cpu(stdout, lvl);
    printf("runs: %d (median); prompt %d tokens, decode %d tokens; weights %s, %s; KV cache K %s, V %s\n\n", runs,
           n_prompt, n_gen, use_mmap ? "mapped" : "read into memory", repack ? "repacked" : "in the file layout",
           eng_kv_type_name(type_k), eng_kv_type_name(type_v));
    double pk[8][MACH_N_PEAKS];
    peak_table(threads, n_thr, pk);
    printf("\n| model | type | threads | prefill tok/s | prefill GFLOP/s | of peak | decode tok/s | BW before/after GB/s | bound tok/s | of bound |\n"
           "|---|---|---|---|---|---|---|---|---|---|\n");
    for (int mi = i0; mi < argc; mi++) {
        char err[512] = "";
        eng_model *m = NULL;
        eng_model_params mp = eng_model_default_params();
        mp.use_mmap = use_mmap;
        mp.repack = repack;
        if (eng_model_load(argv[mi], &mp, &m, err, sizeof err) != ENG_OK) {
            fprintf(stderr, "bench: %s: %s\n", argv[mi], err);
            return 1;
        }
        const char *base = strrchr(argv[mi], '/') ? strrchr(argv[mi], '/') + 1 : argv[mi];
        /* the roofline: the peak of the level in use for the main weight type */
        const int wt = !strcmp(m->file_type, "F32") ? ENG_TYPE_F32 : !strcmp(m->file_type, "F16") ? ENG_TYPE_F16
                     : !strcmp(m->file_type, "BF16") ? ENG_TYPE_BF16 : ENG_TYPE_Q8_0;
        int32_t *tok = make_tokens(m, n_prompt + n_gen);
        for (int ti = 0; ti < n_thr; ti++) {
            eng_context_params cp = eng_context_default_params();
            cp.n_ctx = n_prompt + n_gen;
            cp.n_batch_max = n_prompt;
            cp.n_threads = threads[ti];
            cp.type_k = type_k;
            cp.type_v = type_v;
            eng_context *c = NULL;
            if (eng_context_new(m, &cp, &c) != ENG_OK) {
                fprintf(stderr, "bench: cannot create a context\n");
                return 1;
            }
            double pf[100], dc[100], ratio[100], bw_lo = 1e30, bw_hi = 0, bound_sum = 0;
            run_batch(c, tok, n_prompt < 32 ? n_prompt : 32, 0); /* warm up: page in the weights */
            eng_seq_truncate(c, 0, 0);
            for (int r = 0; r < runs; r++) {
                eng_seq_truncate(c, 0, 0);
                pf[r] = (double)n_prompt / run_batch(c, tok, n_prompt, 0);
                eng_seq_truncate(c, 0, 0);
                double b0 = mach_read_bw(threads[ti]);
                double t = 0;
                for (int g = 0; g < n_gen; g++) t += run_batch(c, tok + n_prompt + g, 1, g);
                double b1 = mach_read_bw(threads[ti]);
                dc[r] = (double)n_gen / t;
                double bw = 0.5 * (b0 + b1);
                bound_sum += bw / bytes_per_token(m);
                ratio[r] = dc[r] / (bw / bytes_per_token(m)); /* this run against its own bandwidth */
                if (b0 < bw_lo) bw_lo = b0;
                if (b1 < bw_lo) bw_lo = b1;
                if (b0 > bw_hi) bw_hi = b0;
                if (b1 > bw_hi) bw_hi = b1;
            }
            double pfm = mach_median(pf, runs), dcm = mach_median(dc, runs), bound = bound_sum / runs,
                   of_bound = mach_median(ratio, runs);
            double gflops = matmul_flops(m, n_prompt) / ((double)n_prompt / pfm) / 1e9;
            char of_peak[96] = "n/a (scalar)";
            const mach_peak pkind = mach_level_peak(lvl, wt);
            if (pkind != MACH_NO_PEAK && pk[ti][pkind] > 0)
                snprintf(of_peak, sizeof of_peak, "%.1f%% of %s", 100.0 * gflops / (pk[ti][pkind] / 1e9),
                         mach_peak_name(pkind));
            printf("| %s | %s | %d | %.1f | %.0f | %s | %.1f | %.0f / %.0f | %.1f | %.1f%% |\n", base,
                   m->file_type, threads[ti], pfm, gflops, of_peak, dcm, bw_lo / 1e9, bw_hi / 1e9, bound,
                   100.0 * of_bound);
            fflush(stdout);
            eng_context_free(c);
        }
        free(tok);
        eng_model_free(m);
    }
    if (sparsity > 0) {
        printf("\nOrthoRank (k = 1/3, decode threshold, plan: fallback unless MODEL.orthorank.json was applied) vs dense, same run:\n\n"
               "| model | type | threads | sparsity | layers | prefill dense tok/s | prefill OrthoRank tok/s | prefill speedup | prefill skipped | decode dense tok/s | decode OrthoRank tok/s | decode speedup | decode skipped |\n"
               "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        for (int mi = i0; mi < argc; mi++) {
            char err[512] = "";
            eng_model *m = NULL;
            eng_model_params mp = eng_model_default_params();
            mp.use_mmap = use_mmap;
        mp.repack = repack;
            if (eng_model_load(argv[mi], &mp, &m, err, sizeof err) != ENG_OK) {
                fprintf(stderr, "bench: %s: %s\n", argv[mi], err);
                return 1;
            }
            const char *base = strrchr(argv[mi], '/') ? strrchr(argv[mi], '/') + 1 : argv[mi];
            int32_t *tok = make_tokens(m, n_prompt + n_gen);
            for (int ti = 0; ti < n_thr; ti++)
                orthorank_rows(m, base, threads[ti], runs, n_prompt, n_gen, sparsity, tok);
            free(tok);
            eng_model_free(m);
        }
    }
    return 0;
}
