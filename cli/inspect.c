/*
 * inspect.c - orthoserve tokenize / info: look at a model's tokenizer and
 * hyper-parameters from the command line.
 */
#include "cli.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    int32_t *ids = cli_tokenize_text(v, prompt, strlen(prompt), !no_special, parse_special, &n);
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
    printf("heads           %d (kv %d), head size %d%s, rope dims %d\n", i.n_head, i.n_head_kv, i.head_dim,
           i.head_dim != i.n_embd / i.n_head ? " (key_length, not n_embd/n_head)" : "", i.n_rot);
    printf("rope            %s, base %g, scale %g\n", i.rope_neox ? "neox" : "normal",
           (double)i.rope_freq_base, (double)i.rope_freq_scale);
    if (i.n_swa > 0)
        printf("sliding window  %d positions in %d of %d layers (the others global), their rope base %g\n", i.n_swa,
               i.n_swa_layers, i.n_layer, (double)i.rope_freq_base_swa);
    if (i.traits && i.traits[0]) printf("traits          %s\n", i.traits);
    printf("rms eps         %g\n", (double)i.rms_eps);
    printf("context (train) %d\n", i.n_ctx_train);
    printf("output          %s\n", i.tied_output ? "tied to token_embd" : "separate output.weight");
    printf("vocab           %d tokens (%s, pre '%s'), bos %d, eos %d, add_bos %s\n",
           eng_vocab_n_tokens(v), eng_vocab_type(v) == ENG_VOCAB_SPM ? "SentencePiece" : "byte-level BPE",
           eng_vocab_pre(v), eng_vocab_bos(v), eng_vocab_eos(v), eng_vocab_add_bos(v) ? "yes" : "no");
    eng_chat_format cf = eng_chat_detect(i.chat_template), fam = eng_chat_for_arch(i.arch);
    if (i.chat_template) printf("chat template   %s\n", eng_chat_format_name(cf));
    else if (fam != ENG_CHAT_UNKNOWN) printf("chat template   none (the %s family's: %s)\n", i.arch, eng_chat_format_name(fam));
    else printf("chat template   none (plain fallback)\n");
    printf("kernels         %s\n", eng_kernel_name());
    eng_model_free(m);
    return 0;
}
