/* test_grammar.c - GBNF parsing, the byte matcher and token masks
 * (grammar.c, grammar_match.c, grammar_mask.c). */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "grammar.h"
#include "testutil.h"

static eng_vocab *load_vocab(const char *rel)
{
    eng_vocab *v = NULL;
    char err[256];
    cr_assert_eq(eng_vocab_load(td_path(rel), &v, err, sizeof err), ENG_OK, "%s", err);
    return v;
}

typedef struct {
    eng_vocab *v;
    eng_grammar_vocab *gv;
} tvocab;

static tvocab tv_spm(void)
{
    tvocab t;
    t.v = load_vocab("vocab/ggml-vocab-llama-spm.gguf");
    cr_assert_eq(eng_grammar_vocab_new(t.v, &t.gv), ENG_OK);
    return t;
}

static void tv_free(tvocab *t)
{
    eng_grammar_vocab_free(t->gv);
    eng_vocab_free(t->v);
}

static eng_grammar *compile(const eng_grammar_vocab *gv, const char *text)
{
    eng_grammar *g = NULL;
    char err[512];
    eng_status st = eng_grammar_new(gv, text, strlen(text), NULL, NULL, &g, err, sizeof err);
    cr_assert_eq(st, ENG_OK, "%s: %s", text, err);
    return g;
}

/* Whether the whole string is a sentence (1), a proper prefix (0) or neither (-1). */
static int classify(eng_grammar *g, const char *s)
{
    eng_matcher *m = NULL;
    cr_assert_eq(eng_matcher_new(g, &m), ENG_OK);
    int r = eng_matcher_accept_bytes(m, s, strlen(s)) != ENG_OK ? -1 : eng_matcher_is_accepting(m) ? 1 : 0;
    eng_matcher_free(m);
    return r;
}

static const char *JSONISH =
    "root ::= \"{\" ws pair (\",\" ws pair)* \"}\"\n"
    "pair ::= str ws \":\" ws value ws   # a comment\n"
    "value ::= str | num | \"true\" | \"false\" | \"null\" | \"[\" ws ( value (\",\" ws value)* )? \"]\"\n"
    "str ::= \"\\\"\" ( [^\"\\\\\\x00-\\x1f] | \"\\\\\" [\"\\\\/bfnrt] )* \"\\\"\"\n"
    "num ::= \"-\"? ([0-9] | [1-9] [0-9]{1,15}) (\".\" [0-9]+)?\n"
    "ws ::= [ \\t\\n]{0,4}\n";

Test(grammar, sentences_and_prefixes)
{
    tvocab t = tv_spm();
    eng_grammar *g = compile(t.gv, JSONISH);
    cr_assert_eq(classify(g, "{\"a\":1}"), 1);
    cr_assert_eq(classify(g, "{ \"a\" : [1, \"x\", true, null], \"b\":-2.5}"), 1);
    cr_assert_eq(classify(g, "{\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\":\"\\n\"}"), 1);
    cr_assert_eq(classify(g, "{\"a\":[1,"), 0);
    cr_assert_eq(classify(g, "{\"\xc3"), 0, "a prefix may end inside a character");
    cr_assert_eq(classify(g, "{\"a\":01}"), -1);
    cr_assert_eq(classify(g, "{\"a\":1}}"), -1);
    cr_assert_eq(classify(g, "{\"\xc3\x28\":1}"), -1, "invalid UTF-8");
    cr_assert_eq(classify(g, "{\"\xed\xa0\x80\":1}"), -1, "a surrogate");
    cr_assert_eq(classify(g, "{     \"a\":1}"), -1, "at most four spaces");
    cr_assert_eq(classify(g, "{\"a\":1234567890123456}"), 1);
    cr_assert_eq(classify(g, "{\"a\":12345678901234567}"), -1, "{1,15} bounds the digits");
    eng_grammar_release(g);
    tv_free(&t);
}

Test(grammar, syntax_forms)
{
    tvocab t = tv_spm();
    eng_grammar *g = compile(t.gv, "root ::= a{2} b{1,} c{0,2} d? \"x\"+ .\n"
                                   "a ::= \"a\"\nb ::= [b-c]\nc ::= \"c\"\nd ::= ( \"d\" | \"D\"\n  | \"e\" )\n");
    cr_assert_eq(classify(g, "aabxz"), 1);
    cr_assert_eq(classify(g, "aabbccDxx\xe2\x82\xac"), 1);
    cr_assert_eq(classify(g, "abx!"), -1);
    cr_assert_eq(classify(g, "aabddx"), -1);
    eng_grammar_release(g);
    g = compile(t.gv, "root ::= \"a\"\n  | \"b\" # continued\n");
    cr_assert_eq(classify(g, "b"), 1);
    eng_grammar_release(g);
    g = compile(t.gv, "root ::= [^a-z\\u00e9]+\n");
    cr_assert_eq(classify(g, "AB\xc3\xa8"), 1);
    cr_assert_eq(classify(g, "A\xc3\xa9"), -1);
    cr_assert_eq(classify(g, "Ab"), -1);
    eng_grammar_release(g);
    tv_free(&t);
}

static void expect_error(const eng_grammar_vocab *gv, const char *text, const eng_grammar_limits *lim,
                         const char *needle)
{
    eng_grammar *g = NULL;
    char err[512] = "";
    eng_status st = eng_grammar_new(gv, text, strlen(text), NULL, lim, &g, err, sizeof err);
    cr_assert_eq(st, ENG_EINVAL, "%s compiled", text);
    cr_assert_null(g);
    cr_assert(strstr(err, needle), "'%s' gave '%s', expected '%s'", text, err, needle);
}

Test(grammar, errors_and_limits)
{
    tvocab t = tv_spm();
    expect_error(t.gv, "root ::= foo\n", NULL, "'foo'");
    expect_error(t.gv, "start ::= \"a\"\n", NULL, "'root' is not defined");
    expect_error(t.gv, "root ::= root \"a\" | \"b\"\n", NULL, "left-recursive");
    expect_error(t.gv, "root ::= (\"a\"?)*\n", NULL, "left-recursive");
    expect_error(t.gv, "root ::= \"a\n", NULL, "line 1");
    expect_error(t.gv, "root ::= [a-\n", NULL, "line 1");
    expect_error(t.gv, "root ::= \"a\"\nroot ::= \"b\"\n", NULL, "defined twice");
    expect_error(t.gv, "root ::= \"a\"{3,2}\n", NULL, "below the minimum");
    expect_error(t.gv, "root ::= [z-a]\n", NULL, "reversed");
    expect_error(t.gv, "root ::= \"\\q\"\n", NULL, "unknown escape");
    eng_grammar_limits lim = eng_grammar_default_limits();
    lim.max_elements = 100;
    expect_error(t.gv, "root ::= \"a\"{1000}\n", &lim, "max_elements");
    lim = eng_grammar_default_limits();
    lim.max_rules = 5;
    expect_error(t.gv, "root ::= (\"a\") (\"b\") (\"c\") (\"d\") (\"e\") (\"f\")\n", &lim, "max_rules");
    lim = eng_grammar_default_limits();
    lim.max_bytes = 10;
    expect_error(t.gv, "root ::= \"abcdefghijkl\"\n", &lim, "max_bytes");
    char deep[2000];
    size_t k = (size_t)snprintf(deep, sizeof deep, "root ::= ");
    for (int i = 0; i < 300; i++) deep[k++] = '(';
    deep[k++] = '"';
    deep[k++] = 'a';
    deep[k++] = '"';
    for (int i = 0; i < 300; i++) deep[k++] = ')';
    deep[k] = 0;
    expect_error(t.gv, deep, NULL, "nested deeper");
    tv_free(&t);
}

/* The mask at each step equals what feeding each token alone allows, for a
 * random walk through the grammar (tokens drawn from the mask). */
static void check_masks(const tvocab *t, const char *text, int steps, uint64_t seed)
{
    eng_grammar *g = compile(t->gv, text);
    eng_matcher *m = NULL;
    cr_assert_eq(eng_matcher_new(g, &m), ENG_OK);
    int32_t nv = eng_vocab_n_tokens(t->v);
    uint32_t *bits = calloc(((size_t)nv + 31) / 32, 4);
    char out[4096];
    size_t n_out = 0;
    for (int s = 0; s < steps; s++) {
        int32_t n = eng_matcher_mask(m, bits);
        cr_assert_geq(n, 1);
        int32_t cnt = 0;
        for (int32_t tok = 0; tok < nv; tok++) {
            bool want;
            if (t->gv->eog[tok]) {
                want = eng_matcher_is_accepting(m);
            } else if (!t->gv->bytes[tok]) {
                want = false;
            } else {
                eng_matcher *f = NULL;
                cr_assert_eq(eng_matcher_new(g, &f), ENG_OK);
                want = eng_matcher_accept_bytes(f, out, n_out) == ENG_OK &&
                       eng_matcher_accept(f, tok) == ENG_OK;
                eng_matcher_free(f);
            }
            bool got = (bits[tok >> 5] >> (tok & 31)) & 1u;
            cr_assert_eq(got, want, "step %d token %d '%s' after '%.*s': mask %d, brute force %d", s, tok,
                         eng_vocab_text(t->v, tok), (int)n_out, out, got, want);
            cnt += got;
        }
        cr_assert_eq(cnt, n);
        /* draw an allowed non-EOG token, if any */
        int32_t pick = -1, seen = 0;
        for (int32_t tok = 0; tok < nv; tok++) {
            if (!((bits[tok >> 5] >> (tok & 31)) & 1u) || t->gv->eog[tok]) continue;
            if (td_rand(&seed) % (uint64_t)(++seen) == 0) pick = tok;
        }
        if (pick < 0) break;
        cr_assert_eq(eng_matcher_accept(m, pick), ENG_OK);
        memcpy(out + n_out, t->gv->bytes[pick], t->gv->len[pick]);
        n_out += t->gv->len[pick];
    }
    free(bits);
    eng_matcher_free(m);
    eng_grammar_release(g);
}

Test(grammar, masks_match_brute_force_spm, .timeout = 600)
{
    tvocab t = tv_spm();
    check_masks(&t, JSONISH, 6, 1);
    check_masks(&t, "root ::= \"\xc3\xa9t\xc3\xa9 \" [0-9]{2,3} (\"x\" | \"xy\")\n", 5, 2);
    tv_free(&t);
}

Test(grammar, masks_without_kept_tables, .timeout = 600)
{
    tvocab t = tv_spm();
    eng__grammar_max_tables = 2; /* past two, every table is built for its step and dropped */
    check_masks(&t, JSONISH, 5, 4);
    eng__grammar_max_tables = 4096;
    tv_free(&t);
}

Test(grammar, masks_match_brute_force_bpe, .timeout = 600)
{
    tvocab t;
    t.v = load_vocab("vocab/ggml-vocab-gpt-2.gguf");
    cr_assert_eq(eng_grammar_vocab_new(t.v, &t.gv), ENG_OK);
    check_masks(&t, JSONISH, 5, 3);
    tv_free(&t);
}

Test(grammar, eog_only_where_accepting)
{
    tvocab t = tv_spm();
    eng_grammar *g = compile(t.gv, "root ::= \"ab\" \"c\"?\n");
    eng_matcher *m = NULL;
    cr_assert_eq(eng_matcher_new(g, &m), ENG_OK);
    int32_t eos = eng_vocab_eos(t.v);
    cr_assert_eq(eng_matcher_accept(m, eos), ENG_EINVAL);
    cr_assert_eq(eng_matcher_accept_bytes(m, "ab", 2), ENG_OK);
    cr_assert(eng_matcher_is_accepting(m));
    cr_assert_eq(eng_matcher_accept(m, eos), ENG_OK);
    cr_assert_eq(eng_matcher_accept_bytes(m, "x", 1), ENG_EINVAL);
    cr_assert_eq(eng_matcher_accept_bytes(m, "c", 1), ENG_OK);
    cr_assert_not(eng_matcher_can_continue(m));
    uint32_t *bits = calloc(((size_t)eng_vocab_n_tokens(t.v) + 31) / 32, 4);
    cr_assert_eq(eng_matcher_mask(m, bits), t.gv->n_eog);
    free(bits);
    eng_matcher_free(m);
    eng_grammar_release(g);
    tv_free(&t);
}

Test(grammar, long_outputs_keep_memory_bounded)
{
    tvocab t = tv_spm();
    eng_grammar *g = compile(t.gv, "root ::= \"[\" (item (\",\" item)*)? \"]\"\nitem ::= \"[\" [0-9] \"]\"\n");
    eng_matcher *m = NULL;
    cr_assert_eq(eng_matcher_new(g, &m), ENG_OK);
    cr_assert_eq(eng_matcher_accept_bytes(m, "[[1]", 4), ENG_OK);
    for (int i = 0; i < 20000; i++) cr_assert_eq(eng_matcher_accept_bytes(m, ",[2]", 4), ENG_OK);
    cr_assert_lt(m->a.n, 10000, "frames are compacted (%d)", m->a.n);
    cr_assert_eq(eng_matcher_accept_bytes(m, "]", 1), ENG_OK);
    cr_assert(eng_matcher_is_accepting(m));
    eng_matcher_free(m);
    eng_grammar_release(g);
    tv_free(&t);
}

/* ------------------------------------------------------------------------ */
/* Through the scheduler                                                    */
/* ------------------------------------------------------------------------ */

#include <math.h>
#include <pthread.h>

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    char text[2048];
    size_t n;
    int32_t n_tok;
    bool done, lp_ok;
    eng_finish_reason finish;
    const eng_vocab *v;
} sink;

static void on_ev(const eng_event *ev, void *user)
{
    sink *k = user;
    pthread_mutex_lock(&k->mu);
    if (ev->type == ENG_EVENT_TOKEN) {
        size_t got = 0;
        if (k->n + 64 < sizeof k->text &&
            eng_token_to_piece(k->v, ev->token, false, k->text + k->n, sizeof k->text - k->n - 1, &got) == ENG_OK)
            k->n += got;
        k->n_tok++;
        /* logprobs of the masked distribution: the chosen token has probability > 0 and the
         * alternatives' probabilities sum to at most 1 */
        double mass = 0;
        for (int i = 0; i < ev->n_top; i++) mass += exp(ev->top_logprobs[i]);
        if (!(ev->logprob > -INFINITY) || mass > 1.0001) k->lp_ok = false;
    } else if (ev->type == ENG_EVENT_DONE) {
        k->done = true;
        k->finish = ev->finish;
        pthread_cond_broadcast(&k->cv);
    }
    pthread_mutex_unlock(&k->mu);
}

Test(grammar, scheduler_batches_constrained_and_free_sequences, .timeout = 300)
{
    char err[256];
    eng_model *m = NULL;
    cr_assert_eq(eng_model_load(td_path("models/tiny256-F32.gguf"), NULL, &m, err, sizeof err), ENG_OK, "%s", err);
    const eng_vocab *v = eng_model_vocab(m);
    eng_grammar_vocab *gv = NULL;
    cr_assert_eq(eng_grammar_vocab_new(v, &gv), ENG_OK);
    eng_grammar *g = compile(gv, "root ::= \"[\" ([0-9] (\",\" [0-9]){0,5})? \"]\"\n");
    eng_sched_params sp = eng_sched_default_params();
    sp.n_ctx = 128;
    sp.n_seq_max = 4;
    eng_sched *s = NULL;
    cr_assert_eq(eng_sched_new(m, &sp, &s), ENG_OK);
    int32_t prompt[3] = {1, 300, 301};
    enum { N = 8 };
    sink k[N];
    eng_request *rq[N];
    for (int i = 0; i < N; i++) {
        memset(&k[i], 0, sizeof k[i]);
        pthread_mutex_init(&k[i].mu, NULL);
        pthread_cond_init(&k[i].cv, NULL);
        k[i].v = v;
        k[i].lp_ok = true;
        eng_request_params p = {0};
        p.prompt = prompt;
        p.n_prompt = 3;
        p.max_tokens = i == 7 ? 3 : 60; /* one is cut short: its text must be a prefix */
        p.sampling = eng_sampler_default_params();
        p.sampling.temperature = 1.5f;
        p.sampling.seed = (uint64_t)i;
        p.n_logprobs = 3;
        p.on_event = on_ev;
        p.user = &k[i];
        p.grammar = i % 2 == 0 || i == 7 ? g : NULL; /* free sequences share the steps */
        cr_assert_eq(eng_sched_submit(s, &p, &rq[i]), ENG_OK);
    }
    for (int i = 0; i < N; i++) {
        pthread_mutex_lock(&k[i].mu);
        while (!k[i].done) pthread_cond_wait(&k[i].cv, &k[i].mu);
        pthread_mutex_unlock(&k[i].mu);
        eng_request_release(rq[i]);
        if (i % 2 && i != 7) continue;
        k[i].text[k[i].n] = 0;
        cr_assert(k[i].lp_ok, "sequence %d: logprobs not of the masked distribution", i);
        if (i == 7) {
            cr_assert_eq(k[i].finish, ENG_FINISH_LENGTH);
            cr_assert_neq(classify(g, k[i].text), -1, "'%s' is a prefix", k[i].text);
        } else {
            cr_assert_eq(k[i].finish, ENG_FINISH_STOP, "sequence %d: '%s'", i, k[i].text);
            cr_assert_eq(classify(g, k[i].text), 1, "sequence %d: '%s' is a sentence", i, k[i].text);
        }
    }
    eng_sched_free(s);
    eng_grammar_release(g); /* the requests held their own references */
    eng_grammar_vocab_free(gv);
    eng_model_free(m);
}

Test(grammar, ambiguity_is_bounded_work, .timeout = 300)
{
    tvocab t = tv_spm();
    /* 600 alternatives that all match the same letter: every letter token
     * is alive on hundreds of paths at every byte */
    char text[16384];
    size_t k = (size_t)snprintf(text, sizeof text, "root ::= x*\nx ::= [a-z]");
    for (int i = 1; i < 600; i++) k += (size_t)snprintf(text + k, sizeof text - k, " | [a-z]");
    snprintf(text + k, sizeof text - k, "\n");
    eng_grammar *g = compile(t.gv, text);
    eng_matcher *m = NULL;
    cr_assert_eq(eng_matcher_new(g, &m), ENG_OK);
    uint32_t *bits = calloc(((size_t)eng_vocab_n_tokens(t.v) + 31) / 32, 4);
    double t0 = eng__now();
    int32_t n = eng_matcher_mask(m, bits);
    cr_assert(n == -2 || n > 0, "%d", n);
    cr_assert_lt(eng__now() - t0, 60.0, "the work bound stops it");
    cr_assert_eq(n, -2, "this grammar needs more than the bound");
    free(bits);
    eng_matcher_free(m);
    eng_grammar_release(g);
    tv_free(&t);
}
