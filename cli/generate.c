/*
 * generate.c - orthoserve generate: the engine driven from the command line.
 * Prints only the generated text on stdout (as it is produced) and its
 * timings on stderr, so its output can be compared byte for byte with the
 * server's.
 */
#include "cli.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void generate_usage(FILE *f)
{
    fprintf(f,
            "usage: orthoserve generate -m MODEL -p PROMPT [options]\n"
            "\n"
            "Prints the generated text on stdout as it is produced; timings go to stderr.\n"
            "\n"
            "  -m, --model FILE         GGUF model (required)\n"
            "  -p, --prompt TEXT        prompt text (BOS added as the model says)\n"
            "  -n, --n-predict N        tokens to generate (default 64)\n"
            "  -c, --ctx-size N         context size (default: the model's)\n"
            "  -t, --threads N          compute threads (default 2)\n"
            CLI_CACHE_TYPE_USAGE
            "      --temp T             temperature; 0 = greedy (default 0)\n"
            "      --top-k K            (default 0 = off)\n"
            "      --top-p P            (default 1 = off)\n"
            "      --min-p P            (default 0 = off)\n"
            "      --repeat-penalty R   (default 1 = off)\n"
            "      --seed S             sampling seed (default 0)\n"
            "      --ignore-eos         keep generating after end-of-generation tokens\n"
            "      --orthorank SPEC     sparsify, e.g. sparsity=0.2,token_ratio=1/3,decode=threshold\n"
            "                           (keys: sparsity token_ratio layers=3:1 decode method min_tokens seed);\n"
            "                           the OrthoRank stats go to stderr\n"
            "      --ids                print generated token ids instead of text\n"
            "      --no-mmap            read the model into memory instead of mapping it\n"
            "      --no-repack          keep the weights in the file's layout (see config key repack)\n"
            "  -v, --verbose            engine log messages on stderr\n");
}

typedef struct {
    const char *model, *prompt;
    long n_predict, n_ctx, threads;
    eng_sampler_params sampling;
    bool orthorank_given;
    eng_orthorank_params orthorank;
    bool ignore_eos, print_ids, verbose, use_mmap, repack;
    eng_kv_type type_k, type_v;
} generate_opts;

/* The options into o: -1 to go on, else the exit code. */
static int parse_options(int argc, char **argv, generate_opts *o)
{
    long top_k = 0;
    double temp = 0, top_p = 1, min_p = 0, rep = 1;
    char err[256] = "";
    enum { O_TEMP = 256, O_TOPK, O_TOPP, O_MINP, O_REP, O_SEED, O_IGNORE, O_IDS, O_ORTHORANK, O_NOMMAP, O_NOREPACK,
           O_CTK, O_CTV };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},      {"prompt", required_argument, 0, 'p'},
        {"n-predict", required_argument, 0, 'n'},  {"ctx-size", required_argument, 0, 'c'},
        {"threads", required_argument, 0, 't'},    {"temp", required_argument, 0, O_TEMP},
        {"top-k", required_argument, 0, O_TOPK},   {"top-p", required_argument, 0, O_TOPP},
        {"min-p", required_argument, 0, O_MINP},   {"repeat-penalty", required_argument, 0, O_REP},
        {"seed", required_argument, 0, O_SEED},    {"ignore-eos", no_argument, 0, O_IGNORE},
        {"ids", no_argument, 0, O_IDS},            {"verbose", no_argument, 0, 'v'},
        {"orthorank", required_argument, 0, O_ORTHORANK}, {"no-mmap", no_argument, 0, O_NOMMAP},
        {"no-repack", no_argument, 0, O_NOREPACK},
        {"cache-type-k", required_argument, 0, O_CTK}, {"cache-type-v", required_argument, 0, O_CTV},
        {"help", no_argument, 0, 'h'},             {0, 0, 0, 0}};
    *o = (generate_opts){.n_predict = 64, .threads = 2, .sampling = eng_sampler_default_params(),
                         .orthorank = eng_orthorank_default_params(), .use_mmap = true, .repack = true,
                         .type_k = eng_context_default_params().type_k, .type_v = eng_context_default_params().type_v};
    optind = 1;
    int ch;
    while ((ch = getopt_long(argc, argv, "m:p:n:c:t:vh", opts, NULL)) != -1) {
        switch (ch) {
        case 'm': o->model = optarg; break;
        case 'p': o->prompt = optarg; break;
        case 'n': if (!cli_parse_long(optarg, 0, 1 << 20, &o->n_predict)) BAD("--n-predict", optarg); break;
        case 'c': if (!cli_parse_long(optarg, 1, 1 << 20, &o->n_ctx)) BAD("--ctx-size", optarg); break;
        case 't': if (!cli_parse_long(optarg, 1, 512, &o->threads)) BAD("--threads", optarg); break;
        case O_TEMP: if (!cli_parse_double(optarg, 0, 100, &temp)) BAD("--temp", optarg); break;
        case O_TOPK: if (!cli_parse_long(optarg, 0, 1 << 24, &top_k)) BAD("--top-k", optarg); break;
        case O_TOPP: if (!cli_parse_double(optarg, 0, 1, &top_p) || top_p == 0) BAD("--top-p", optarg); break;
        case O_MINP: if (!cli_parse_double(optarg, 0, 1, &min_p)) BAD("--min-p", optarg); break;
        case O_REP: if (!cli_parse_double(optarg, 0.01, 100, &rep)) BAD("--repeat-penalty", optarg); break;
        case O_SEED: {
            char *end;
            errno = 0;
            o->sampling.seed = strtoull(optarg, &end, 10);
            if (errno || end == optarg || *end) BAD("--seed", optarg);
            break;
        }
        case O_IGNORE: o->ignore_eos = true; break;
        case O_IDS: o->print_ids = true; break;
        case O_ORTHORANK:
            if (!cli_parse_orthorank(optarg, &o->orthorank, err, sizeof err)) {
                fprintf(stderr, "orthoserve: --orthorank: %s\n", err);
                return 2;
            }
            o->orthorank_given = true;
            break;
        case O_NOMMAP: o->use_mmap = false; break;
        case O_NOREPACK: o->repack = false; break;
        case O_CTK: if (eng_kv_type_parse(optarg, &o->type_k) != ENG_OK) BAD("--cache-type-k", optarg); break;
        case O_CTV: if (eng_kv_type_parse(optarg, &o->type_v) != ENG_OK) BAD("--cache-type-v", optarg); break;
        case 'v': o->verbose = true; break;
        case 'h': generate_usage(stdout); return 0;
        default: generate_usage(stderr); return 2;
        }
    }
    if (!o->model || !o->prompt || optind != argc) {
        fprintf(stderr, "orthoserve generate: %s\n",
                optind != argc ? "unexpected argument" : "--model and --prompt are required");
        generate_usage(stderr);
        return 2;
    }
    o->sampling.temperature = (float)temp;
    o->sampling.top_k = (int32_t)top_k;
    o->sampling.top_p = (float)top_p;
    o->sampling.min_p = (float)min_p;
    o->sampling.repeat_penalty = (float)rep;
    return -1;
}

/* What a run holds; freed by run_free. */
typedef struct {
    eng_model *m;
    eng_model_info info;
    eng_context *ctx;
    eng_sampler *smp;
    int32_t *ids;
    size_t n_prompt;
    double t_load;
} run;

static void run_free(run *r)
{
    free(r->ids);
    eng_sampler_free(r->smp);
    eng_context_free(r->ctx);
    eng_model_free(r->m);
}

/* Model, prompt tokens, context, sampler and OrthoRank settings: 0, or the exit code. */
static int run_open(const generate_opts *o, run *r)
{
    char err[512] = "";
    eng_model_params mp = eng_model_default_params();
    mp.n_threads = (int32_t)o->threads;
    mp.use_mmap = o->use_mmap;
    mp.repack = o->repack;
    double t0 = cli_now();
    eng_status st = eng_model_load(o->model, &mp, &r->m, err, sizeof err);
    if (st != ENG_OK) {
        fprintf(stderr, "orthoserve: cannot load model: %s\n", err[0] ? err : eng_strerror(st));
        return 1;
    }
    r->t_load = cli_now() - t0;
    eng_model_get_info(r->m, &r->info);
    r->ids = cli_tokenize_text(eng_model_vocab(r->m), o->prompt, strlen(o->prompt), true, false, &r->n_prompt);
    if (!r->ids || r->n_prompt == 0) {
        fprintf(stderr, "orthoserve: %s\n",
                !r->ids ? "cannot tokenize the prompt" : "the prompt is empty and the model adds no BOS token");
        return 1;
    }
    eng_context_params cp = eng_context_default_params();
    cp.n_ctx = o->n_ctx > 0 ? (int32_t)o->n_ctx : r->info.n_ctx_train;
    cp.n_batch_max = 512;
    cp.n_threads = (int32_t)o->threads;
    cp.type_k = o->type_k;
    cp.type_v = o->type_v;
    if ((long)r->n_prompt + o->n_predict > cp.n_ctx) {
        fprintf(stderr, "orthoserve: prompt (%zu tokens) + %ld to generate exceeds the context (%d); use -c\n",
                r->n_prompt, o->n_predict, cp.n_ctx);
        return 2;
    }
    if ((st = eng_context_new(r->m, &cp, &r->ctx)) != ENG_OK) {
        fprintf(stderr, "orthoserve: cannot create a context: %s\n", eng_strerror(st));
        return 1;
    }
    if (o->verbose) cli_print_kv(r->m, cp.type_k, cp.type_v, cp.n_ctx);
    if ((st = eng_sampler_new(&o->sampling, r->info.n_vocab, &r->smp)) != ENG_OK) {
        fprintf(stderr, "orthoserve: bad sampling parameters: %s\n", eng_strerror(st));
        return 1;
    }
    for (size_t i = 0; i < r->n_prompt; i++) eng_sampler_accept(r->smp, r->ids[i]);
    const char *field;
    if (o->orthorank_given && eng_orthorank_check(r->m, &o->orthorank, &field, err, sizeof err) != ENG_OK) {
        fprintf(stderr, "orthoserve: --orthorank: %s %s\n", field, err);
        return 2;
    }
    if (o->orthorank_given) eng_seq_set_orthorank(r->ctx, 0, &o->orthorank, (int32_t)r->n_prompt);
    return 0;
}

/* The prompt in chunks of up to 512 tokens; *logits: the last token's. */
static eng_status prefill(run *r, const float **logits)
{
    enum { NB = 512 };
    int32_t pos[NB], seq[NB] = {0};
    int8_t want[NB];
    for (size_t i0 = 0; i0 < r->n_prompt; i0 += NB) {
        size_t n = r->n_prompt - i0 < NB ? r->n_prompt - i0 : NB;
        for (size_t i = 0; i < n; i++) {
            pos[i] = (int32_t)(i0 + i);
            want[i] = (i0 + i == r->n_prompt - 1);
        }
        eng_batch b = {(int32_t)n, r->ids + i0, pos, seq, want};
        eng_status st = eng_decode(r->ctx, &b);
        if (st != ENG_OK) return st;
        if (i0 + n == r->n_prompt) *logits = eng_get_logits(r->ctx, (int32_t)(n - 1));
    }
    return ENG_OK;
}

/* Sample, print and feed back up to n_predict tokens: 0 with *n_gen, or 1. */
static int generate_tokens(const generate_opts *o, run *r, const float *logits, long *n_gen)
{
    const eng_vocab *v = eng_model_vocab(r->m);
    char piece[256];
    eng_status st;
    for (*n_gen = 0; *n_gen < o->n_predict; (*n_gen)++) {
        int32_t tok;
        if ((st = eng_sampler_sample(r->smp, logits, &tok)) != ENG_OK) {
            fprintf(stderr, "orthoserve: sampling failed: %s\n", eng_strerror(st));
            return 1;
        }
        eng_sampler_accept(r->smp, tok);
        if (!o->ignore_eos && eng_vocab_is_eog(v, tok)) break;
        if (o->print_ids) {
            printf("%s%d", *n_gen ? " " : "", tok);
        } else {
            size_t pn = 0;
            st = eng_token_to_piece(v, tok, false, piece, sizeof piece, &pn);
            if (st == ENG_OK) {
                fwrite(piece, 1, pn, stdout);
            } else if (st != ENG_ERANGE) { /* a piece over 256 bytes is skipped, as before */
                fprintf(stderr, "\northoserve: cannot print token %d: %s\n", tok, eng_strerror(st));
                return 1;
            }
        }
        fflush(stdout);
        if (*n_gen + 1 == o->n_predict) {
            (*n_gen)++;
            break;
        }
        int32_t p = (int32_t)(r->n_prompt + (size_t)*n_gen), s0 = 0;
        int8_t w = 1;
        eng_batch b = {1, &tok, &p, &s0, &w};
        if ((st = eng_decode(r->ctx, &b)) != ENG_OK) {
            fprintf(stderr, "orthoserve: decode failed: %s\n", eng_strerror(st));
            return 1;
        }
        logits = eng_get_logits(r->ctx, 0);
    }
    return 0;
}

static void print_orthorank_stats(const run *r)
{
    eng_orthorank_stats st;
    eng_seq_get_orthorank_stats(r->ctx, 0, &st);
    fprintf(stderr,
            "orthoserve: orthorank %s, %d layers (%s): prefill %llu/%llu token-layers skipped, "
            "decode %llu/%llu, sparsity_effective %.4f, flops_saved_fraction %.4f\n",
            eng_orthorank_method_name(st.method), st.n_layers, st.layer_order_source,
            (unsigned long long)st.prefill_skipped, (unsigned long long)st.prefill_total,
            (unsigned long long)st.decode_skipped, (unsigned long long)st.decode_total, st.sparsity_effective,
            st.flops_saved_fraction);
}

int cli_generate(int argc, char **argv)
{
    generate_opts o;
    int rc = parse_options(argc, argv, &o);
    if (rc >= 0) return rc;
    if (o.verbose) eng_log_set(cli_log_stderr, NULL, ENG_LOG_DEBUG);
    run r = {0};
    if ((rc = run_open(&o, &r)) != 0) goto out;
    rc = 1;
    double t1 = cli_now();
    const float *logits = NULL;
    eng_status st = prefill(&r, &logits);
    if (st != ENG_OK) {
        fprintf(stderr, "orthoserve: decode failed: %s\n", eng_strerror(st));
        goto out;
    }
    double t_prompt = cli_now() - t1, t2 = cli_now();
    long n_gen = 0;
    if (generate_tokens(&o, &r, logits, &n_gen)) goto out;
    if (o.print_ids) printf("\n");
    fflush(stdout);
    double t_gen = cli_now() - t2;
    fprintf(stderr,
            "\northoserve: load %.3f s | prompt %zu tokens in %.3f s (%.1f tokens/s) | "
            "generated %ld tokens in %.3f s (%.1f tokens/s) | kernels %s, %ld threads\n",
            r.t_load, r.n_prompt, t_prompt, t_prompt > 0 ? (double)r.n_prompt / t_prompt : 0.0, n_gen, t_gen,
            t_gen > 0 ? (double)n_gen / t_gen : 0.0, eng_kernel_name(), o.threads);
    if (o.orthorank_given) print_orthorank_stats(&r);
    rc = 0;
out:
    run_free(&r);
    return rc;
}
