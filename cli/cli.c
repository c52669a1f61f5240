/*
 * cli.c - orthoserve generate / tokenize / info: the engine driven from the
 * command line. generate prints only the generated text on stdout (as it is
 * produced) and its timings on stderr, so its output can be compared byte for
 * byte with the server's.
 */
#include "cli.h"

#include "orthoserve/engine.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Tokenize into a malloc'd array (retrying with the size the engine asks for). */
static int32_t *tokenize_alloc(const eng_vocab *v, const char *text, bool add_special,
                               bool parse_special, size_t *n)
{
    size_t len = strlen(text), cap = len + 16;
    for (int tries = 0; tries < 2; tries++) {
        int32_t *ids = malloc(cap * sizeof *ids);
        if (!ids) return NULL;
        eng_status st = eng_tokenize(v, text, len, add_special, parse_special, ids, cap, n);
        if (st == ENG_OK) return ids;
        free(ids);
        if (st != ENG_ERANGE) return NULL;
        cap = *n;
    }
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* generate                                                                 */
/* ------------------------------------------------------------------------ */

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

int cli_generate(int argc, char **argv)
{
    const char *model = NULL, *prompt = NULL;
    long n_predict = 64, n_ctx = 0, threads = 2, top_k = 0;
    double temp = 0, top_p = 1, min_p = 0, rep = 1;
    unsigned long long seed = 0;
    bool ignore_eos = false, print_ids = false, verbose = false, use_mmap = true, repack = true;
    const char *or_spec = NULL;
    enum { O_TEMP = 256, O_TOPK, O_TOPP, O_MINP, O_REP, O_SEED, O_IGNORE, O_IDS, O_ORANK, O_NOMMAP, O_NOREPACK };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},      {"prompt", required_argument, 0, 'p'},
        {"n-predict", required_argument, 0, 'n'},  {"ctx-size", required_argument, 0, 'c'},
        {"threads", required_argument, 0, 't'},    {"temp", required_argument, 0, O_TEMP},
        {"top-k", required_argument, 0, O_TOPK},   {"top-p", required_argument, 0, O_TOPP},
        {"min-p", required_argument, 0, O_MINP},   {"repeat-penalty", required_argument, 0, O_REP},
        {"seed", required_argument, 0, O_SEED},    {"ignore-eos", no_argument, 0, O_IGNORE},
        {"ids", no_argument, 0, O_IDS},            {"verbose", no_argument, 0, 'v'},
        {"orthorank", required_argument, 0, O_ORANK}, {"no-mmap", no_argument, 0, O_NOMMAP},
        {"no-repack", no_argument, 0, O_NOREPACK},
        {"help", no_argument, 0, 'h'},             {0, 0, 0, 0}};
    optind = 1;
    int ch;
    while ((ch = getopt_long(argc, argv, "m:p:n:c:t:vh", opts, NULL)) != -1) {
        switch (ch) {
        case 'm': model = optarg; break;
        case 'p': prompt = optarg; break;
        case 'n': if (!cli_parse_long(optarg, 0, 1 << 20, &n_predict)) BAD("--n-predict", optarg); break;
        case 'c': if (!cli_parse_long(optarg, 1, 1 << 20, &n_ctx)) BAD("--ctx-size", optarg); break;
        case 't': if (!cli_parse_long(optarg, 1, 512, &threads)) BAD("--threads", optarg); break;
        case O_TEMP: if (!cli_parse_double(optarg, 0, 100, &temp)) BAD("--temp", optarg); break;
        case O_TOPK: if (!cli_parse_long(optarg, 0, 1 << 24, &top_k)) BAD("--top-k", optarg); break;
        case O_TOPP: if (!cli_parse_double(optarg, 0, 1, &top_p) || top_p == 0) BAD("--top-p", optarg); break;
        case O_MINP: if (!cli_parse_double(optarg, 0, 1, &min_p)) BAD("--min-p", optarg); break;
        case O_REP: if (!cli_parse_double(optarg, 0.01, 100, &rep)) BAD("--repeat-penalty", optarg); break;
        case O_SEED: {
            char *end;
            errno = 0;
            seed = strtoull(optarg, &end, 10);
            if (errno || end == optarg || *end) BAD("--seed", optarg);
            break;
        }
        case O_IGNORE: ignore_eos = true; break;
        case O_IDS: print_ids = true; break;
        case O_ORANK: or_spec = optarg; break;
        case O_NOMMAP: use_mmap = false; break;
        case O_NOREPACK: repack = false; break;
        case 'v': verbose = true; break;
        case 'h': generate_usage(stdout); return 0;
        default: generate_usage(stderr); return 2;
        }
    }
    if (!model || !prompt || optind != argc) {
        fprintf(stderr, "orthoserve generate: %s\n",
                optind != argc ? "unexpected argument" : "--model and --prompt are required");
        generate_usage(stderr);
        return 2;
    }
    if (verbose) eng_log_set(cli_log_stderr, NULL, ENG_LOG_DEBUG);

    int rc = 1;
    char err[512] = "";
    eng_model *m = NULL;
    eng_context *ctx = NULL;
    eng_sampler *smp = NULL;
    int32_t *ids = NULL, *pos = NULL, *seq = NULL;
    int8_t *want = NULL;
    eng_model_params mp = eng_model_default_params();
    mp.n_threads = (int32_t)threads;
    mp.use_mmap = use_mmap;
    mp.repack = repack;
    double t0 = cli_now();
    eng_status st = eng_model_load(model, &mp, &m, err, sizeof err);
    if (st != ENG_OK) {
        fprintf(stderr, "orthoserve: cannot load model: %s\n", err[0] ? err : eng_strerror(st));
        return 1;
    }
    double t_load = cli_now() - t0;
    const eng_vocab *v = eng_model_vocab(m);
    eng_model_info info;
    eng_model_get_info(m, &info);
    size_t n_prompt = 0;
    ids = tokenize_alloc(v, prompt, true, false, &n_prompt);
    if (!ids) {
        fprintf(stderr, "orthoserve: cannot tokenize the prompt\n");
        goto out;
    }
    if (n_prompt == 0) {
        fprintf(stderr, "orthoserve: the prompt is empty and the model adds no BOS token\n");
        goto out;
    }
    eng_context_params cp = eng_context_default_params();
    cp.n_ctx = n_ctx > 0 ? (int32_t)n_ctx : info.n_ctx_train;
    cp.n_batch_max = 512;
    cp.n_threads = (int32_t)threads;
    if ((long)n_prompt + n_predict > cp.n_ctx) {
        fprintf(stderr,
                "orthoserve: prompt (%zu tokens) + %ld to generate exceeds the context (%d); use -c\n",
                n_prompt, n_predict, cp.n_ctx);
        rc = 2;
        goto out;
    }
    if ((st = eng_context_new(m, &cp, &ctx)) != ENG_OK) {
        fprintf(stderr, "orthoserve: cannot create a context: %s\n", eng_strerror(st));
        goto out;
    }
    eng_sampler_params sp = eng_sampler_default_params();
    sp.temperature = (float)temp;
    sp.top_k = (int32_t)top_k;
    sp.top_p = (float)top_p;
    sp.min_p = (float)min_p;
    sp.repeat_penalty = (float)rep;
    sp.seed = seed;
    if ((st = eng_sampler_new(&sp, info.n_vocab, &smp)) != ENG_OK) {
        fprintf(stderr, "orthoserve: bad sampling parameters: %s\n", eng_strerror(st));
        goto out;
    }
    for (size_t i = 0; i < n_prompt; i++) eng_sampler_accept(smp, ids[i]);
    eng_orthorank_params orp = eng_orthorank_default_params();
    static int32_t or_layers[1024];
    if (or_spec) {
        char oerr[256] = "";
        if (!cli_parse_orthorank(or_spec, &orp, or_layers, oerr, sizeof oerr)) {
            fprintf(stderr, "orthoserve: --orthorank: %s\n", oerr);
            rc = 2;
            goto out;
        }
        if ((st = eng_seq_set_orthorank(ctx, 0, &orp, (int32_t)n_prompt)) != ENG_OK) {
            fprintf(stderr, "orthoserve: --orthorank: settings out of range for this model\n");
            rc = 2;
            goto out;
        }
    }

    size_t nb = 512;
    pos = malloc(nb * sizeof *pos);
    seq = calloc(nb, sizeof *seq);
    want = calloc(nb, 1);
    if (!pos || !seq || !want) goto out;
    double t1 = cli_now();
    const float *logits = NULL;
    for (size_t i0 = 0; i0 < n_prompt; i0 += nb) {
        size_t n = n_prompt - i0 < nb ? n_prompt - i0 : nb;
        for (size_t i = 0; i < n; i++) {
            pos[i] = (int32_t)(i0 + i);
            want[i] = (i0 + i == n_prompt - 1);
        }
        eng_batch b = {(int32_t)n, ids + i0, pos, seq, want};
        if ((st = eng_decode(ctx, &b)) != ENG_OK) {
            fprintf(stderr, "orthoserve: decode failed: %s\n", eng_strerror(st));
            goto out;
        }
        if (i0 + n == n_prompt) logits = eng_get_logits(ctx, (int32_t)(n - 1));
    }
    double t_prompt = cli_now() - t1;
    double t2 = cli_now();
    long n_gen = 0;
    char piece[256];
    for (; n_gen < n_predict; n_gen++) {
        int32_t tok;
        if ((st = eng_sampler_sample(smp, logits, &tok)) != ENG_OK) {
            fprintf(stderr, "orthoserve: sampling failed: %s\n", eng_strerror(st));
            goto out;
        }
        eng_sampler_accept(smp, tok);
        if (!ignore_eos && eng_vocab_is_eog(v, tok)) break;
        if (print_ids) {
            printf("%s%d", n_gen ? " " : "", tok);
        } else {
            size_t pn = 0;
            st = eng_token_to_piece(v, tok, false, piece, sizeof piece, &pn);
            if (st == ENG_OK) {
                fwrite(piece, 1, pn, stdout);
            } else if (st != ENG_ERANGE) { /* a piece over 256 bytes is skipped, as before */
                fprintf(stderr, "\northoserve: cannot print token %d: %s\n", tok, eng_strerror(st));
                goto out;
            }
        }
        fflush(stdout);
        if (n_gen + 1 == n_predict) {
            n_gen++;
            break;
        }
        int32_t p = (int32_t)(n_prompt + (size_t)n_gen);
        int32_t s0 = 0;
        int8_t w = 1;
        eng_batch b = {1, &tok, &p, &s0, &w};
        if ((st = eng_decode(ctx, &b)) != ENG_OK) {
            fprintf(stderr, "orthoserve: decode failed: %s\n", eng_strerror(st));
            goto out;
        }
        logits = eng_get_logits(ctx, 0);
    }
    if (print_ids) printf("\n");
    fflush(stdout);
    double t_gen = cli_now() - t2;
    fprintf(stderr,
            "\northoserve: load %.3f s | prompt %zu tokens in %.3f s (%.1f tokens/s) | "
            "generated %ld tokens in %.3f s (%.1f tokens/s) | kernels %s, %ld threads\n",
            t_load, n_prompt, t_prompt, t_prompt > 0 ? (double)n_prompt / t_prompt : 0.0, n_gen,
            t_gen, t_gen > 0 ? (double)n_gen / t_gen : 0.0, eng_kernel_name(), threads);
    if (or_spec) {
        eng_orthorank_stats ors;
        eng_seq_get_orthorank_stats(ctx, 0, &ors);
        uint64_t tot = ors.prefill_total + ors.decode_total, sk = ors.prefill_skipped + ors.decode_skipped;
        fprintf(stderr, "orthoserve: orthorank %s, %d layers (%s): prefill %llu/%llu token-layers skipped, "
                        "decode %llu/%llu, sparsity_effective %.4f, flops_saved_fraction %.4f\n",
                eng_or_method_name(ors.method), ors.n_layers, ors.layer_order_source,
                (unsigned long long)ors.prefill_skipped, (unsigned long long)ors.prefill_total,
                (unsigned long long)ors.decode_skipped, (unsigned long long)ors.decode_total,
                tot ? (double)sk / (double)tot : 0.0, ors.flops_total > 0 ? ors.flops_saved / ors.flops_total : 0.0);
    }
    rc = 0;
out:
    free(ids);
    free(pos);
    free(seq);
    free(want);
    eng_sampler_free(smp);
    eng_context_free(ctx);
    eng_model_free(m);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* tokenize                                                                 */
/* ------------------------------------------------------------------------ */

int cli_tokenize(int argc, char **argv)
{
    const char *model = NULL, *prompt = NULL;
    bool no_special = false, parse_special = false, pieces = false;
    enum { O_NOSPEC = 256, O_PARSE, O_PIECES };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"prompt", required_argument, 0, 'p'},
        {"no-bos", no_argument, 0, O_NOSPEC}, {"parse-special", no_argument, 0, O_PARSE},
        {"pieces", no_argument, 0, O_PIECES}, {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    optind = 1;
    int ch;
    while ((ch = getopt_long(argc, argv, "m:p:h", opts, NULL)) != -1) {
        switch (ch) {
        case 'm': model = optarg; break;
        case 'p': prompt = optarg; break;
        case O_NOSPEC: no_special = true; break;
        case O_PARSE: parse_special = true; break;
        case O_PIECES: pieces = true; break;
        case 'h':
        default:
            fprintf(ch == 'h' ? stdout : stderr,
                    "usage: orthoserve tokenize -m MODEL -p TEXT [--no-bos] [--parse-special] [--pieces]\n"
                    "Prints the token ids (with --pieces: id and vocabulary string per line)\n"
                    "and the tokenizer's speed on stderr.\n");
            return ch == 'h' ? 0 : 2;
        }
    }
    if (!model || !prompt) {
        fprintf(stderr, "orthoserve tokenize: --model and --prompt are required\n");
        return 2;
    }
    char err[512] = "";
    eng_vocab *v = NULL;
    eng_status st = eng_vocab_load(model, &v, err, sizeof err);
    if (st != ENG_OK) {
        fprintf(stderr, "orthoserve: cannot load the tokenizer: %s\n", err[0] ? err : eng_strerror(st));
        return 1;
    }
    double t0 = cli_now();
    size_t n = 0;
    int32_t *ids = tokenize_alloc(v, prompt, !no_special, parse_special, &n);
    double dt = cli_now() - t0;
    if (!ids) {
        fprintf(stderr, "orthoserve: tokenization failed\n");
        eng_vocab_free(v);
        return 1;
    }
    for (size_t i = 0; i < n; i++) {
        if (pieces) {
            const char *t = eng_vocab_text(v, ids[i]);
            printf("%d\t%s\n", ids[i], t ? t : "");
        } else {
            printf("%s%d", i ? " " : "", ids[i]);
        }
    }
    if (!pieces) printf("\n");
    fprintf(stderr, "orthoserve: %zu tokens from %zu bytes in %.3f ms (%.0f tokens/s)\n", n,
            strlen(prompt), dt * 1e3, dt > 0 ? (double)n / dt : 0.0);
    free(ids);
    eng_vocab_free(v);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* info                                                                     */
/* ------------------------------------------------------------------------ */

int cli_info(int argc, char **argv)
{
    const char *model = NULL;
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    optind = 1;
    int ch;
    while ((ch = getopt_long(argc, argv, "m:h", opts, NULL)) != -1) {
        if (ch == 'm') {
            model = optarg;
        } else {
            fprintf(ch == 'h' ? stdout : stderr, "usage: orthoserve info -m MODEL\n");
            return ch == 'h' ? 0 : 2;
        }
    }
    if (!model) {
        fprintf(stderr, "orthoserve info: --model is required\n");
        return 2;
    }
    char err[512] = "";
    eng_model *m = NULL;
    eng_status st = eng_model_load(model, NULL, &m, err, sizeof err);
    if (st != ENG_OK) {
        fprintf(stderr, "orthoserve: cannot load model: %s\n", err[0] ? err : eng_strerror(st));
        return 1;
    }
    eng_model_info i;
    eng_model_get_info(m, &i);
    const eng_vocab *v = eng_model_vocab(m);
    printf("file            %s\n", model);
    printf("name            %s\n", i.name);
    printf("architecture    %s\n", i.arch);
    printf("weights         %s, %.3f M parameters, %.2f MiB\n", i.file_type, (double)i.n_params / 1e6,
           (double)i.n_bytes / (1024.0 * 1024.0));
    printf("layers          %d\n", i.n_layer);
    printf("n_embd          %d\n", i.n_embd);
    printf("n_ff            %d\n", i.n_ff);
    printf("heads           %d (kv %d), head size %d, rope dims %d\n", i.n_head, i.n_head_kv,
           i.n_embd / i.n_head, i.n_rot);
    printf("rope            %s, base %g, scale %g\n", i.rope_neox ? "neox" : "normal",
           (double)i.rope_freq_base, (double)i.rope_freq_scale);
    printf("rms eps         %g\n", (double)i.rms_eps);
    printf("context (train) %d\n", i.n_ctx_train);
    printf("output          %s\n", i.tied_output ? "tied to token_embd" : "separate output.weight");
    printf("vocab           %d tokens (%s, pre '%s'), bos %d, eos %d, add_bos %s\n",
           eng_vocab_n_tokens(v), eng_vocab_type(v) == ENG_VOCAB_SPM ? "SentencePiece" : "byte-level BPE",
           eng_vocab_pre(v), eng_vocab_bos(v), eng_vocab_eos(v), eng_vocab_add_bos(v) ? "yes" : "no");
    eng_chat_format cf = eng_chat_detect(i.chat_template);
    printf("chat template   %s\n", i.chat_template ? eng_chat_format_name(cf) : "none (plain fallback)");
    printf("kernels         %s\n", eng_kernel_name());
    eng_model_free(m);
    return 0;
}
