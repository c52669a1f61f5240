/* test_sampler.c - eng_sampler_* and eng_logprobs. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "testutil.h"

/* test hook defined in sampler.c */
eng_status eng__sampler_debug_logits(eng_sampler *s, const float *logits, float *out);

/* Parameters with every filter off and a given temperature. */
static eng_sampler_params plain(float temp, uint64_t seed)
{
    eng_sampler_params p = eng_sampler_default_params();
    p.temperature = temp;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.repeat_penalty = 1.0f;
    p.presence_penalty = 0.0f;
    p.frequency_penalty = 0.0f;
    p.seed = seed;
    return p;
}

static eng_sampler *mk(const eng_sampler_params *p, int32_t n_vocab)
{
    eng_sampler *s = NULL;
    cr_assert_eq(eng_sampler_new(p, n_vocab, &s), ENG_OK);
    cr_assert_not_null(s);
    return s;
}

static int32_t draw(eng_sampler *s, const float *logits)
{
    int32_t t = -1;
    cr_assert_eq(eng_sampler_sample(s, logits, &t), ENG_OK);
    return t;
}

static void rand_logits(float *l, int32_t n, uint64_t *st, float scale)
{
    for (int32_t i = 0; i < n; i++) l[i] = td_randf(st) * scale;
}

/* ------------------------------------------------------------------------ */

Test(sampler, defaults_are_valid)
{
    eng_sampler_params p = eng_sampler_default_params();
    eng_sampler *s = mk(&p, 100);
    float l[100];
    uint64_t st = 1;
    rand_logits(l, 100, &st, 5.0f);
    int32_t t = draw(s, l);
    cr_assert(t >= 0 && t < 100);
    eng_sampler_free(s);
    eng_sampler_free(NULL);
}

Test(sampler, greedy_argmax_ties_to_lowest)
{
    const float l[6] = {1.0f, 3.0f, -2.0f, 3.0f, 0.5f, 3.0f};
    for (int k = 0; k < 2; k++) {
        eng_sampler_params p = plain(k == 0 ? 0.0f : -1.0f, 7);
        eng_sampler *s = mk(&p, 6);
        for (int i = 0; i < 5; i++) cr_assert_eq(draw(s, l), 1);
        eng_sampler_free(s);
    }
    /* the maximum at the end, and negatives only */
    const float m[4] = {-5.0f, -4.0f, -7.0f, -1.5f};
    eng_sampler_params p = plain(0.0f, 0);
    eng_sampler *s = mk(&p, 4);
    cr_assert_eq(draw(s, m), 3);
    /* NaN is never chosen */
    const float n[3] = {NAN, 0.0f, -1.0f};
    eng_sampler_free(s);
    s = mk(&p, 3);
    cr_assert_eq(draw(s, n), 1);
    eng_sampler_free(s);
}

Test(sampler, top_k_1_equals_greedy)
{
    enum { NV = 5000 };
    static float l[NV];
    uint64_t st = 42;
    eng_sampler_params pk = plain(1.5f, 99);
    pk.top_k = 1;
    eng_sampler_params pg = plain(0.0f, 0);
    eng_sampler *sk = mk(&pk, NV), *sg = mk(&pg, NV);
    for (int it = 0; it < 50; it++) {
        rand_logits(l, NV, &st, 4.0f);
        if (it % 5 == 0) l[(it * 37) % NV] = l[(it * 91 + 3) % NV] = 10.0f; /* a tie at the top */
        cr_assert_eq(draw(sk, l), draw(sg, l), "step %d", it);
    }
    eng_sampler_free(sk);
    eng_sampler_free(sg);
}

static void run_seq(uint64_t seed, int32_t *out, int n)
{
    enum { NV = 1000 };
    static float l[NV];
    uint64_t st = 12345; /* same logits sequence every run */
    eng_sampler_params p = plain(1.0f, seed);
    p.top_k = 50;
    p.top_p = 0.95f;
    p.min_p = 0.01f;
    eng_sampler *s = mk(&p, NV);
    for (int i = 0; i < n; i++) {
        rand_logits(l, NV, &st, 3.0f);
        out[i] = draw(s, l);
    }
    eng_sampler_free(s);
}

Test(sampler, seed_determinism)
{
    enum { N = 200 };
    int32_t a[N], b[N], c[N];
    run_seq(1234, a, N);
    /* unrelated sampler activity in between must not matter */
    eng_sampler_params p = plain(1.0f, 5);
    eng_sampler *other = mk(&p, 10);
    float l[10] = {0};
    for (int i = 0; i < 17; i++) draw(other, l);
    run_seq(1234, b, N);
    eng_sampler_free(other);
    run_seq(1235, c, N);
    cr_assert_arr_eq(a, b, sizeof a);
    int diff = 0;
    for (int i = 0; i < N; i++) diff += a[i] != c[i];
    cr_assert_gt(diff, N / 4, "different seeds gave nearly the same sequence (%d diffs)", diff);
}

/* chi-square of counts against expected probabilities */
static double chi2(const int *cnt, const double *pr, int k, int n)
{
    double x = 0;
    for (int i = 0; i < k; i++) {
        double e = pr[i] * n;
        x += (cnt[i] - e) * (cnt[i] - e) / e;
    }
    return x;
}

Test(sampler, temperature_distribution)
{
    const double pr[4] = {0.1, 0.2, 0.3, 0.4};
    float l[4];
    for (int i = 0; i < 4; i++) l[i] = (float)log(pr[i]) + 2.0f; /* shift is irrelevant */
    const int N = 100000;
    /* T = 1: the softmax itself; T = 2: p^(1/2) renormalised; T = 0.5: p^2 */
    const float temps[3] = {1.0f, 2.0f, 0.5f};
    for (int ti = 0; ti < 3; ti++) {
        double q[4], z = 0;
        for (int i = 0; i < 4; i++) z += q[i] = pow(pr[i], 1.0 / temps[ti]);
        for (int i = 0; i < 4; i++) q[i] /= z;
        eng_sampler_params p = plain(temps[ti], 2024 + (uint64_t)ti);
        eng_sampler *s = mk(&p, 4);
        int cnt[4] = {0};
        for (int n = 0; n < N; n++) cnt[draw(s, l)]++;
        eng_sampler_free(s);
        /* 3 degrees of freedom: P(chi2 > 21.1) ~ 1e-4 */
        double x = chi2(cnt, q, 4, N);
        cr_assert_lt(x, 21.1, "T=%g chi2=%g counts %d %d %d %d", temps[ti], x, cnt[0], cnt[1],
                     cnt[2], cnt[3]);
    }
}

Test(sampler, top_k_top_p_min_p_exclusion)
{
    /* probabilities 0.5, 0.3, 0.15, 0.05 */
    const double pr[4] = {0.5, 0.3, 0.15, 0.05};
    float l[4];
    for (int i = 0; i < 4; i++) l[i] = (float)log(pr[i]);
    struct {
        int top_k;
        float top_p, min_p;
        int allowed; /* bit set */
    } cases[] = {
        {2, 1.0f, 0.0f, 0x3},   /* top-k 2 */
        {0, 0.75f, 0.0f, 0x3},  /* 0.5 < 0.75 <= 0.8 */
        {0, 0.4f, 0.0f, 0x1},   /* the first token alone reaches 0.4 */
        {0, 0.9f, 0.0f, 0x7},   /* 0.8 < 0.9 <= 0.95 */
        {0, 1.0f, 0.35f, 0x3},  /* keep p >= 0.175 */
        {0, 1.0f, 0.2f, 0x7},   /* keep p >= 0.1 */
        {0, 0.9f, 0.35f, 0x3},  /* both: the smaller set */
        {3, 0.99f, 0.0f, 0x7},  /* top-k then top-p over the renormalised three */
        {0, 1.0f, 1.0f, 0x1},   /* min-p 1: only the maximum */
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        eng_sampler_params p = plain(1.0f, 77 + c);
        p.top_k = cases[c].top_k;
        p.top_p = cases[c].top_p;
        p.min_p = cases[c].min_p;
        eng_sampler *s = mk(&p, 4);
        int seen = 0;
        for (int n = 0; n < 5000; n++) seen |= 1 << draw(s, l);
        eng_sampler_free(s);
        cr_assert_eq(seen, cases[c].allowed, "case %zu: seen 0x%x want 0x%x", c, seen,
                     cases[c].allowed);
    }
}

Test(sampler, top_p_large_vocab)
{
    /* 1000 scattered tokens at logit 10, the rest of 150k at 0: the 1000 hold
     * 99.3% of the mass, so top_p = 0.99 keeps only (most of) them. */
    enum { NV = 150000, HOT = 1000 };
    float *l = calloc(NV, sizeof *l);
    unsigned char *hot = calloc(NV, 1);
    cr_assert(l && hot);
    uint64_t st = 9;
    for (int placed = 0; placed < HOT;) {
        int32_t id = (int32_t)(td_rand(&st) % NV);
        if (hot[id]) continue;
        hot[id] = 1;
        l[id] = 10.0f;
        placed++;
    }
    eng_sampler_params p = plain(1.0f, 3);
    p.top_p = 0.99f;
    eng_sampler *s = mk(&p, NV);
    int distinct = 0;
    unsigned char *seen = calloc(NV, 1);
    for (int n = 0; n < 1500; n++) {
        int32_t t = draw(s, l);
        cr_assert(hot[t], "token %d is outside the top-p set", t);
        if (!seen[t]) distinct++;
        seen[t] = 1;
    }
    cr_assert_gt(distinct, 650); /* ~775 expected: the survivors really are sampled from */
    eng_sampler_free(s);

    /* with top-k 40 on top: only the 40 lowest-id hot tokens (ties -> lower id) */
    p.top_k = 40;
    s = mk(&p, NV);
    int32_t limit = -1, k = 0;
    for (int32_t i = 0; i < NV && k < 40; i++)
        if (hot[i]) limit = i, k++;
    for (int n = 0; n < 500; n++) {
        int32_t t = draw(s, l);
        cr_assert(hot[t] && t <= limit);
    }
    eng_sampler_free(s);
    free(seen);
    free(hot);
    free(l);
}

Test(sampler, repetition_penalty_exact)
{
    enum { NV = 8 };
    const float l[NV] = {2.0f, -1.0f, 0.5f, 3.0f, -4.0f, 0.0f, 1.25f, 7.0f};
    eng_sampler_params p = plain(1.0f, 0);
    p.repeat_penalty = 1.3f;
    p.repeat_last_n = 4;
    eng_sampler *s = mk(&p, NV);
    float out[NV];
    /* history 0 1 1 5: 0 and 1 penalised once each (count does not matter) */
    eng_sampler_accept(s, 0);
    eng_sampler_accept(s, 1);
    eng_sampler_accept(s, 1);
    eng_sampler_accept(s, 5);
    cr_assert_eq(eng__sampler_debug_logits(s, l, out), ENG_OK);
    float want[NV];
    memcpy(want, l, sizeof want);
    want[0] = 2.0f / 1.3f;
    want[1] = -1.0f * 1.3f;
    want[5] = 0.0f * 1.3f;
    cr_assert_arr_eq(out, want, sizeof want);
    /* the window slides: after 3 more tokens, 0 and the first 1s are gone */
    eng_sampler_accept(s, 3);
    eng_sampler_accept(s, 4);
    eng_sampler_accept(s, 99); /* out of range: ignored */
    eng_sampler_accept(s, 6);
    /* window now 1 5 3 4 6 -> last 4: 5 3 4 6 */
    cr_assert_eq(eng__sampler_debug_logits(s, l, out), ENG_OK);
    memcpy(want, l, sizeof want);
    want[5] = 0.0f;
    want[3] = 3.0f / 1.3f;
    want[4] = -4.0f * 1.3f;
    want[6] = 1.25f / 1.3f;
    cr_assert_arr_eq(out, want, sizeof want);
    eng_sampler_free(s);

    /* greedy decision flips exactly where the penalty says it should */
    const float g[2] = {2.0f, 1.9f};
    for (int k = 0; k < 2; k++) {
        eng_sampler_params q = plain(0.0f, 0);
        q.repeat_penalty = k == 0 ? 1.1f : 1.05f; /* 1.818 < 1.9 ; 1.905 > 1.9 */
        eng_sampler *t = mk(&q, 2);
        eng_sampler_accept(t, 0);
        cr_assert_eq(draw(t, g), k == 0 ? 1 : 0);
        eng_sampler_free(t);
    }
}

Test(sampler, presence_frequency_exact)
{
    enum { NV = 5 };
    const float l[NV] = {1.0f, 2.0f, 3.0f, -1.0f, 0.25f};
    eng_sampler_params p = plain(1.0f, 0);
    p.presence_penalty = 0.5f;
    p.frequency_penalty = 0.25f;
    p.repeat_last_n = -1; /* whole history */
    eng_sampler *s = mk(&p, NV);
    const int32_t hist[] = {2, 2, 2, 3, 0, 2};
    for (size_t i = 0; i < sizeof hist / sizeof hist[0]; i++) eng_sampler_accept(s, hist[i]);
    float out[NV], want[NV];
    memcpy(want, l, sizeof want);
    want[0] -= 1 * 0.25f + 0.5f;
    want[2] -= 4 * 0.25f + 0.5f;
    want[3] -= 1 * 0.25f + 0.5f;
    cr_assert_eq(eng__sampler_debug_logits(s, l, out), ENG_OK);
    cr_assert_arr_eq(out, want, sizeof want);
    eng_sampler_free(s);

    /* all three together: repetition first, then presence/frequency */
    p.repeat_penalty = 2.0f;
    p.repeat_last_n = 3;
    s = mk(&p, NV);
    eng_sampler_accept(s, 4); /* slides out */
    eng_sampler_accept(s, 1);
    eng_sampler_accept(s, 1);
    eng_sampler_accept(s, 3);
    memcpy(want, l, sizeof want);
    want[1] = 2.0f / 2.0f - (2 * 0.25f + 0.5f);
    want[3] = -1.0f * 2.0f - (1 * 0.25f + 0.5f);
    cr_assert_eq(eng__sampler_debug_logits(s, l, out), ENG_OK);
    cr_assert_arr_eq(out, want, sizeof want);
    eng_sampler_free(s);

    /* repeat_last_n = 0 disables every penalty */
    p.repeat_last_n = 0;
    s = mk(&p, NV);
    eng_sampler_accept(s, 1);
    cr_assert_eq(eng__sampler_debug_logits(s, l, out), ENG_OK);
    cr_assert_arr_eq(out, l, sizeof out);
    eng_sampler_free(s);
}

Test(sampler, logit_bias_and_ban)
{
    enum { NV = 6 };
    const float l[NV] = {0.0f, 5.0f, 4.9f, 1.0f, 1.0f, 1.0f};
    eng_logit_bias b[3] = {{1, -INFINITY}, {3, 0.5f}, {3, 0.25f}};
    eng_sampler_params p = plain(0.0f, 0);
    p.logit_bias = b;
    p.n_logit_bias = 3;
    eng_sampler *s = mk(&p, NV);
    b[0].token = 0; /* the sampler keeps its own copy */
    float out[NV];
    cr_assert_eq(eng__sampler_debug_logits(s, l, out), ENG_OK);
    cr_assert(isinf(out[1]) && out[1] < 0);
    cr_assert_float_eq(out[3], 1.75f, 0.0f);
    cr_assert_eq(draw(s, l), 2);
    eng_sampler_free(s);

    /* stochastic: the banned token never comes out even at a high temperature */
    b[0].token = 1;
    p = plain(5.0f, 11);
    p.logit_bias = b;
    p.n_logit_bias = 1;
    s = mk(&p, NV);
    for (int n = 0; n < 5000; n++) cr_assert_neq(draw(s, l), 1);
    eng_sampler_free(s);

    /* every token banned: an error, not a made-up token */
    eng_logit_bias all[NV];
    for (int i = 0; i < NV; i++) all[i] = (eng_logit_bias){i, -INFINITY};
    p.logit_bias = all;
    p.n_logit_bias = NV;
    s = mk(&p, NV);
    int32_t t;
    cr_assert_eq(eng_sampler_sample(s, l, &t), ENG_EINVAL);
    eng_sampler_free(s);
}

Test(sampler, infinite_logits)
{
    const float l[4] = {1.0f, INFINITY, 2.0f, INFINITY};
    eng_sampler_params p = plain(1.0f, 1);
    eng_sampler *s = mk(&p, 4);
    cr_assert_eq(draw(s, l), 1);
    eng_sampler_free(s);
    const float m[3] = {-INFINITY, 0.0f, -INFINITY};
    s = mk(&p, 3);
    for (int i = 0; i < 20; i++) cr_assert_eq(draw(s, m), 1);
    eng_sampler_free(s);
}

Test(sampler, invalid_params)
{
    eng_sampler *s = (eng_sampler *)1;
    eng_sampler_params base = eng_sampler_default_params();
    eng_logit_bias bad_id = {10, 1.0f}, neg_id = {-1, 1.0f}, nan_b = {0, NAN},
                   pinf = {0, INFINITY};
#define REJECT(field, value)                                                   \
    do {                                                                       \
        eng_sampler_params q = base;                                           \
        q.field = value;                                                       \
        cr_assert_eq(eng_sampler_new(&q, 10, &s), ENG_EINVAL, #field "=" #value); \
        cr_assert_null(s);                                                     \
    } while (0)
    REJECT(temperature, NAN);
    REJECT(temperature, INFINITY);
    REJECT(top_p, 0.0f);
    REJECT(top_p, -0.5f);
    REJECT(top_p, 1.5f);
    REJECT(top_p, NAN);
    REJECT(min_p, -0.1f);
    REJECT(min_p, 1.1f);
    REJECT(min_p, NAN);
    REJECT(repeat_penalty, 0.0f);
    REJECT(repeat_penalty, -1.0f);
    REJECT(repeat_penalty, NAN);
    REJECT(repeat_penalty, INFINITY);
    REJECT(repeat_last_n, -2);
    REJECT(presence_penalty, 2.5f);
    REJECT(presence_penalty, NAN);
    REJECT(frequency_penalty, -3.0f);
    REJECT(n_logit_bias, 2); /* with a NULL array */
#undef REJECT
    const eng_logit_bias *bads[4] = {&bad_id, &neg_id, &nan_b, &pinf};
    for (int i = 0; i < 4; i++) {
        eng_sampler_params q = base;
        q.logit_bias = bads[i];
        q.n_logit_bias = 1;
        cr_assert_eq(eng_sampler_new(&q, 10, &s), ENG_EINVAL, "bias %d", i);
    }
    cr_assert_eq(eng_sampler_new(&base, 0, &s), ENG_EINVAL);
    cr_assert_eq(eng_sampler_new(NULL, 10, &s), ENG_EINVAL);
    cr_assert_eq(eng_sampler_new(&base, 10, NULL), ENG_EINVAL);

    /* accepted edge values */
    eng_sampler_params q = base;
    q.temperature = -1.0f;
    q.top_p = 1.0f;
    q.min_p = 1.0f;
    q.presence_penalty = -2.0f;
    q.frequency_penalty = 2.0f;
    q.repeat_last_n = -1;
    eng_logit_bias ok[2] = {{9, -INFINITY}, {0, -100.0f}};
    q.logit_bias = ok;
    q.n_logit_bias = 2;
    cr_assert_eq(eng_sampler_new(&q, 10, &s), ENG_OK);
    int32_t t;
    float l[10] = {0};
    cr_assert_eq(eng_sampler_sample(s, NULL, &t), ENG_EINVAL);
    cr_assert_eq(eng_sampler_sample(s, l, NULL), ENG_EINVAL);
    eng_sampler_free(s);
}

Test(sampler, oom_in_new_is_clean)
{
    /* each Criterion test runs in its own process, so the knob is fresh */
    setenv("ORTHOSERVE_FAIL_ALLOC_AT", "3", 1);
    eng_sampler_params p = eng_sampler_default_params();
    p.repeat_penalty = 1.1f;
    eng_sampler *s = NULL;
    cr_assert_eq(eng_sampler_new(&p, 1000, &s), ENG_ENOMEM);
    cr_assert_null(s);
    cr_assert_eq(eng_sampler_new(&p, 1000, &s), ENG_OK); /* only the 3rd call fails */
    eng_sampler_free(s);
}

/* ------------------------------------------------------------------------ */
/* eng_logprobs                                                             */
/* ------------------------------------------------------------------------ */

Test(logprobs, hand_computation_and_top)
{
    const float l[5] = {1.0f, 2.0f, 3.0f, -INFINITY, 2.0f};
    const double lse = log(exp(1.0) + exp(2.0) + exp(3.0) + exp(2.0));
    float lp;
    int32_t ids[3];
    float lps[3];
    cr_assert_eq(eng_logprobs(l, 5, 1, &lp, 3, ids, lps), ENG_OK);
    cr_assert_float_eq(lp, (float)(2.0 - lse), 1e-6);
    cr_assert_eq(ids[0], 2);
    cr_assert_eq(ids[1], 1); /* tie with 4: lower id first */
    cr_assert_eq(ids[2], 4);
    cr_assert_float_eq(lps[0], (float)(3.0 - lse), 1e-6);
    cr_assert_float_eq(lps[1], (float)(2.0 - lse), 1e-6);
    cr_assert_float_eq(lps[2], (float)(2.0 - lse), 1e-6);
    /* -inf logit: -inf logprob */
    cr_assert_eq(eng_logprobs(l, 5, 3, &lp, 0, NULL, NULL), ENG_OK);
    cr_assert(isinf(lp) && lp < 0);
    /* top covering everything puts -inf last */
    int32_t all[5];
    float alp[5];
    cr_assert_eq(eng_logprobs(l, 5, 0, &lp, 5, all, alp), ENG_OK);
    const int32_t want[5] = {2, 1, 4, 0, 3};
    cr_assert_arr_eq(all, want, sizeof want);
    cr_assert(isinf(alp[4]));
}

Test(logprobs, sums_to_one_and_stable)
{
    enum { NV = 4096 };
    static float l[NV];
    uint64_t st = 5;
    rand_logits(l, NV, &st, 20.0f);
    l[100] = -INFINITY;
    double sum = 0;
    for (int32_t i = 0; i < NV; i++) {
        float lp;
        cr_assert_eq(eng_logprobs(l, NV, i, &lp, 0, NULL, NULL), ENG_OK);
        cr_assert(lp <= 0.0f);
        sum += exp((double)lp);
    }
    cr_assert_float_eq(sum, 1.0, 1e-4);

    /* huge logits do not overflow */
    const float big[3] = {10000.0f, 9999.0f, -10000.0f};
    float lp0, lp1;
    cr_assert_eq(eng_logprobs(big, 3, 0, &lp0, 0, NULL, NULL), ENG_OK);
    cr_assert_eq(eng_logprobs(big, 3, 1, &lp1, 0, NULL, NULL), ENG_OK);
    double e = log(1.0 + exp(-1.0));
    cr_assert_float_eq(lp0, (float)-e, 1e-6);
    cr_assert_float_eq(lp1, (float)(-1.0 - e), 1e-6);

    /* ties in the top list across a large vocab */
    static float flat[NV];
    int32_t ids[4];
    float lps[4];
    flat[4000] = 1.0f;
    cr_assert_eq(eng_logprobs(flat, NV, 0, NULL, 4, ids, lps), ENG_OK);
    cr_assert_eq(ids[0], 4000);
    cr_assert_eq(ids[1], 0);
    cr_assert_eq(ids[2], 1);
    cr_assert_eq(ids[3], 2);
}

Test(logprobs, invalid)
{
    const float l[3] = {0, 1, 2};
    const float dead[2] = {-INFINITY, -INFINITY};
    float lp;
    int32_t id;
    float v;
    cr_assert_eq(eng_logprobs(NULL, 3, 0, &lp, 0, NULL, NULL), ENG_EINVAL);
    cr_assert_eq(eng_logprobs(l, 0, 0, &lp, 0, NULL, NULL), ENG_EINVAL);
    cr_assert_eq(eng_logprobs(l, 3, 3, &lp, 0, NULL, NULL), ENG_EINVAL);
    cr_assert_eq(eng_logprobs(l, 3, -1, &lp, 0, NULL, NULL), ENG_EINVAL);
    cr_assert_eq(eng_logprobs(l, 3, 0, &lp, 1, NULL, &v), ENG_EINVAL);
    cr_assert_eq(eng_logprobs(l, 3, 0, &lp, 4, &id, &v), ENG_EINVAL);
    cr_assert_eq(eng_logprobs(l, 3, 0, &lp, -1, &id, &v), ENG_EINVAL);
    cr_assert_eq(eng_logprobs(dead, 2, 0, &lp, 0, NULL, NULL), ENG_EINVAL);
}
