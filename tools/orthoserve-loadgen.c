/*
 * orthoserve-loadgen - load generator for OpenAI-compatible servers.
 *
 * Drives /v1/completions or /v1/chat/completions with N concurrent clients
 * (closed loop) or a Poisson arrival rate (open loop), streaming (SSE) or not,
 * and reports what vLLM's `bench serve` reports: request and token throughput,
 * TTFT, TPOT, ITL and end-to-end latency as mean/p50/p90/p99, as text on
 * stdout and optionally as JSON. For soak tests it can abort a fraction of the
 * streams mid-way and send a fraction of deliberately broken requests.
 * Every request sent is accounted for in exactly one bucket at the end:
 *   sent = completed + http_errors + transport_errors + cancelled + malformed
 *
 * DESIGN: one thread, one libcurl multi handle driven by curl_multi_poll().
 * Each in-flight request owns a slot from an array allocated at start (one
 * per allowed concurrent request); latency samples go to arrays sized by
 * --requests (at most 1e6), inter-token gaps to a bounded reservoir, so the
 * memory used does not grow with run time. The SSE parser runs inside the
 * write callback and works line by line across arbitrary chunk boundaries.
 * The main loop ends by itself: no request is started after --requests or
 * --duration is reached, in-flight ones get --drain seconds, then are aborted.
 * Only loopback targets are accepted unless --allow-remote is given; the
 * tests only ever use 127.0.0.1. No proxies, no redirects are followed.
 */
#include <curl/curl.h>
#include <jansson.h>

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define LG_MAX_REQUESTS 1000000L   /* cap of --requests (sample arrays are sized by it) */
#define LG_MAX_CONC 4096           /* cap of --concurrency / --max-concurrency */
#define LG_MAX_TOKENS 1000000L     /* cap of the sampled max_tokens */
#define LG_ITL_RESERVOIR 2000000   /* at most this many ITL samples kept (doubles) */
#define LG_ITL_PER_REQ 65536       /* per-request gap buffer cap */
#define LG_ITL_SLOTS_BUDGET 8000000 /* ... and over all slots together (64 MB) */
#define LG_BODY_CAP (8u << 20)     /* non-streamed response body cap, bytes */
#define LG_LINE_CAP (4u << 20)     /* one SSE line / event cap, bytes */
#define LG_FILE_CAP (256u << 20)   /* prompt corpus cap, bytes */
#define LG_REASONS 16              /* distinct failure reasons tracked */

/* ------------------------------------------------------------------------ */
/* Small utilities                                                           */
/* ------------------------------------------------------------------------ */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* splitmix64: small, seedable, good enough for sampling lengths and arrivals. */
static uint64_t rng_state;

static uint64_t rng_u64(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1). */
static double rng_unif(void) { return (double)(rng_u64() >> 11) * (1.0 / 9007199254740992.0); }

/* Uniform integer in [lo, hi]. */
static long rng_range(long lo, long hi)
{
    if (hi <= lo) return lo;
    return lo + (long)(rng_u64() % (uint64_t)(hi - lo + 1));
}

/* A growable byte buffer with a hard cap; add fails (returns false) past it. */
typedef struct {
    char *p;
    size_t n, cap, max;
} sbuf;

static bool sbuf_add(sbuf *b, const char *s, size_t n)
{
    if (n > b->max - b->n) return false;
    if (b->n + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 256;
        while (nc < b->n + n + 1) nc *= 2;
        if (nc > b->max + 1) nc = b->max + 1;
        char *q = realloc(b->p, nc);
        if (!q) return false;
        b->p = q;
        b->cap = nc;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
    return true;
}

static void sbuf_free(sbuf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* ------------------------------------------------------------------------ */
/* Options                                                                   */
/* ------------------------------------------------------------------------ */

enum api_kind { API_COMPLETIONS, API_CHAT };
enum len_unit { UNIT_WORDS, UNIT_CHARS };

typedef struct {
    const char *url;         /* base URL, e.g. http://127.0.0.1:8080 */
    enum api_kind api;
    const char *model;       /* NULL: no "model" field */
    int concurrency;         /* closed loop: clients; open loop: in-flight cap */
    double rate;             /* requests/s, 0 = closed loop */
    long n_requests;         /* stop after this many sent */
    double duration;         /* ... or after this many seconds */
    double drain;            /* seconds in-flight requests get after the stop */
    double timeout;          /* per-request timeout, seconds */
    const char *prompt_file; /* NULL: random words */
    long input_len;          /* prompt length in input_unit */
    double input_range;      /* uniform in [len*(1-r), len*(1+r)] */
    enum len_unit input_unit;
    long output_len;         /* max_tokens */
    double output_range;
    bool stream, ignore_eos, usage;
    json_t *extra;           /* merged into every request body (owned) */
    const char *api_key;
    bool allow_remote;
    double cancel_fraction, malformed_fraction;
    const char *json_path;
    uint64_t seed;
    double progress;         /* seconds between progress lines on stderr, 0 = off */
    bool strict;
} lg_opts;

static void usage(FILE *f)
{
    fputs(
        "usage: orthoserve-loadgen [options]\n"
        "\n"
        "Target (loopback only unless --allow-remote):\n"
        "  -u, --url URL             base URL (default http://127.0.0.1:8080)\n"
        "  -a, --api NAME            completions | chat (default completions)\n"
        "  -m, --model NAME          send \"model\": NAME (default: no model field)\n"
        "  -k, --api-key KEY         Authorization: Bearer KEY (default $ORTHOSERVE_API_KEY)\n"
        "      --allow-remote        allow non-loopback hosts (tests only ever use loopback)\n"
        "\n"
        "Load shape:\n"
        "  -c, --concurrency N       closed loop with N clients (default 1); with --rate,\n"
        "                            the cap on requests in flight (default 256)\n"
        "  -r, --rate R              open loop: Poisson arrivals at R requests/s\n"
        "  -n, --requests N          stop after N requests (default 100, max 1e6)\n"
        "  -d, --duration S          stop sending after S seconds (default 60)\n"
        "      --drain S             then wait at most S s for in-flight ones (default 30)\n"
        "      --timeout S           per-request timeout (default 300)\n"
        "\n"
        "Requests:\n"
        "  -f, --prompt-file FILE    cut prompts from FILE (default: random words)\n"
        "  -i, --input-len N         prompt length (default 32)\n"
        "      --input-unit U        words | chars (default words)\n"
        "      --input-range R       sample uniformly in [N(1-R), N(1+R)] (default 0)\n"
        "  -o, --output-len N        max_tokens (default 32)\n"
        "      --output-range R      likewise for max_tokens (default 0)\n"
        "      --no-ignore-eos       do not send \"ignore_eos\": true\n"
        "      --no-stream           non-streaming requests (default: stream)\n"
        "      --no-usage            do not send stream_options.include_usage\n"
        "  -x, --extra JSON          object merged into every request body\n"
        "\n"
        "Soak:\n"
        "      --cancel-fraction F   abort fraction F of streams after a random chunk count\n"
        "      --malformed-fraction F  send fraction F of broken requests (expect 4xx)\n"
        "\n"
        "Output:\n"
        "  -j, --json FILE           write the results as JSON to FILE\n"
        "      --seed N              RNG seed (default 1)\n"
        "      --progress S          progress line on stderr every S s (default 5, 0 off)\n"
        "      --strict              exit 1 if anything but cancelled/ok-4xx went wrong\n"
        "  -h, --help\n"
        "\n"
        "Exit status: 0 on a completed run, 1 on a broken accounting identity (or,\n"
        "with --strict, any failure), 2 on bad arguments or setup errors.\n",
        f);
}

static bool parse_long(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    double d = strtod(s, &end); /* accepts 1e6 */
    if (errno || end == s || *end || d < (double)lo || d > (double)hi || d != floor(d)) return false;
    *out = (long)d;
    return true;
}

static bool parse_double(const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double d = strtod(s, &end);
    if (errno || end == s || *end || !(d >= lo && d <= hi)) return false;
    *out = d;
    return true;
}

/* Accepts only http(s) URLs whose host is loopback unless allow_remote. */
static bool check_target(const char *url, bool allow_remote, char *err, size_t errsz)
{
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL;
    bool ok = false;
    if (!u) {
        snprintf(err, errsz, "out of memory");
        return false;
    }
    if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK) {
        snprintf(err, errsz, "cannot parse URL '%s'", url);
        goto out;
    }
    if (strcasecmp(scheme, "http") && strcasecmp(scheme, "https")) {
        snprintf(err, errsz, "scheme '%s' is not http or https", scheme);
        goto out;
    }
    bool loop = !strcasecmp(host, "localhost") || !strcmp(host, "[::1]") || !strcmp(host, "::1") ||
                !strncmp(host, "127.", 4);
    if (!loop && !allow_remote) {
        snprintf(err, errsz, "host '%s' is not loopback (127.0.0.1, localhost, ::1); "
                 "pass --allow-remote to target it", host);
        goto out;
    }
    ok = true;
out:
    curl_free(scheme);
    curl_free(host);
    curl_url_cleanup(u);
    return ok;
}

/* ------------------------------------------------------------------------ */
/* Prompts                                                                   */
/* ------------------------------------------------------------------------ */

typedef struct {
    char *text;       /* sanitized corpus, NUL-terminated */
    size_t len;
    uint32_t *words;  /* byte offset of each word start */
    size_t n_words;
} corpus;

static const char *const k_words[] = {
    "the", "a", "little", "girl", "boy", "dog", "cat", "big", "small", "happy", "sad", "ran",
    "saw", "found", "played", "with", "in", "on", "park", "tree", "ball", "red", "blue", "sun",
    "day", "mom", "friend", "said", "wanted", "to", "go", "and", "was", "very", "bird", "sky",
    "house", "car", "toy", "box", "jumped", "laughed", "looked", "at", "one", "time", "upon", "once",
};
#define N_K_WORDS (sizeof k_words / sizeof k_words[0])

/* Length of the valid UTF-8 sequence at p (1..4), or 0 if invalid. */
static size_t utf8_len(const unsigned char *p, size_t avail)
{
    unsigned c = p[0];
    size_t n;
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf) n = 2;
    else if (c >= 0xe0 && c <= 0xef) n = 3;
    else if (c >= 0xf0 && c <= 0xf4) n = 4;
    else return 0;
    if (n > avail) return 0;
    for (size_t i = 1; i < n; i++)
        if ((p[i] & 0xc0) != 0x80) return 0;
    if (n == 3 && c == 0xe0 && p[1] < 0xa0) return 0;
    if (n == 3 && c == 0xed && p[1] >= 0xa0) return 0;
    if (n == 4 && c == 0xf0 && p[1] < 0x90) return 0;
    if (n == 4 && c == 0xf4 && p[1] >= 0x90) return 0;
    return n;
}

/* Loads FILE (first LG_FILE_CAP bytes); invalid UTF-8 and control characters
 * other than newline/tab become spaces so every cut is a valid JSON string. */
static bool corpus_load(corpus *c, const char *path, char *err, size_t errsz)
{
    memset(c, 0, sizeof *c);
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errsz, "cannot open '%s': %s", path, strerror(errno));
        return false;
    }
    c->text = malloc(LG_FILE_CAP + 1);
    if (!c->text) {
        fclose(f);
        snprintf(err, errsz, "out of memory");
        return false;
    }
    c->len = fread(c->text, 1, LG_FILE_CAP, f);
    fclose(f);
    c->text[c->len] = '\0';
    unsigned char *t = (unsigned char *)c->text;
    for (size_t i = 0; i < c->len;) {
        size_t n = utf8_len(t + i, c->len - i);
        if (n == 0) {
            t[i++] = ' ';
        } else {
            if (n == 1 && (t[i] < 0x20 || t[i] == 0x7f) && t[i] != '\n' && t[i] != '\t') t[i] = ' ';
            i += n;
        }
    }
    size_t nw = 0;
    for (size_t i = 0; i < c->len; i++)
        if (!isspace(t[i]) && (i == 0 || isspace(t[i - 1]))) nw++;
    if (nw == 0) {
        snprintf(err, errsz, "'%s' holds no words", path);
        free(c->text);
        c->text = NULL;
        return false;
    }
    c->words = malloc(nw * sizeof *c->words);
    if (!c->words) {
        snprintf(err, errsz, "out of memory");
        free(c->text);
        c->text = NULL;
        return false;
    }
    for (size_t i = 0; i < c->len; i++)
        if (!isspace(t[i]) && (i == 0 || isspace(t[i - 1]))) c->words[c->n_words++] = (uint32_t)i;
    return true;
}

static void corpus_free(corpus *c)
{
    free(c->text);
    free(c->words);
    memset(c, 0, sizeof *c);
}

/* Appends a prompt of `len` units to b: consecutive words (or characters,
 * counted as code points) of the corpus from a random word start, wrapping
 * around at the end; random dictionary words without a corpus. */
static bool make_prompt(const corpus *c, enum len_unit unit, long len, sbuf *b)
{
    b->n = 0;
    if (!c->text) {
        for (long i = 0; i < len; i++) {
            const char *w = k_words[rng_u64() % N_K_WORDS];
            if ((i && !sbuf_add(b, " ", 1)) || !sbuf_add(b, w, strlen(w))) return false;
        }
        return true;
    }
    size_t w = (size_t)(rng_u64() % c->n_words);
    long left = len;
    /* Each pass consumes the corpus from word w to the end at most, so the
     * number of passes is bounded by len / (corpus size) + 1. */
    while (left > 0) {
        size_t start = c->words[w], end;
        if (unit == UNIT_WORDS) {
            size_t take = (size_t)left < c->n_words - w ? (size_t)left : c->n_words - w;
            end = w + take < c->n_words ? c->words[w + take] : c->len;
            left -= (long)take;
        } else {
            const unsigned char *t = (const unsigned char *)c->text;
            end = start;
            while (end < c->len && left > 0) {
                size_t n = utf8_len(t + end, c->len - end);
                end += n ? n : 1;
                left--;
            }
        }
        if (b->n && !sbuf_add(b, " ", 1)) return false;
        if (!sbuf_add(b, c->text + start, end - start)) return false;
        w = 0;
    }
    while (b->n && isspace((unsigned char)b->p[b->n - 1])) b->p[--b->n] = '\0';
    return true;
}

/* ------------------------------------------------------------------------ */
/* Statistics                                                                */
/* ------------------------------------------------------------------------ */

/* Samples in ms. Up to cap values are kept; past that a uniform reservoir
 * (Algorithm R) so percentiles stay unbiased; the mean uses every value. */
typedef struct {
    double *v;
    size_t n, cap;
    uint64_t seen;
    double sum;
} samples;

static bool samples_init(samples *s, size_t cap)
{
    memset(s, 0, sizeof *s);
    s->cap = cap ? cap : 1;
    s->v = malloc(s->cap * sizeof *s->v);
    return s->v != NULL;
}

static void samples_add(samples *s, double x)
{
    s->seen++;
    s->sum += x;
    if (s->n < s->cap) {
        s->v[s->n++] = x;
        return;
    }
    uint64_t j = rng_u64() % s->seen;
    if (j < s->cap) s->v[j] = x;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct {
    uint64_t n;
    double mean, p50, p90, p99, max;
} summary;

/* Linear interpolation between closest ranks, as numpy.percentile does. */
static double pct(const double *v, size_t n, double p)
{
    if (!n) return 0;
    double r = p / 100.0 * (double)(n - 1);
    size_t i = (size_t)r;
    if (i + 1 >= n) return v[n - 1];
    return v[i] + (r - (double)i) * (v[i + 1] - v[i]);
}

static summary samples_summary(samples *s)
{
    summary m = {0};
    if (!s->n) return m;
    qsort(s->v, s->n, sizeof *s->v, cmp_d);
    m.n = s->seen;
    m.mean = s->sum / (double)s->seen;
    m.p50 = pct(s->v, s->n, 50);
    m.p90 = pct(s->v, s->n, 90);
    m.p99 = pct(s->v, s->n, 99);
    m.max = s->v[s->n - 1];
    return m;
}

/* Counted failure reasons: a small fixed table, the rest lumped as "other". */
typedef struct {
    char name[96];
    long n;
} reason;

typedef struct {
    reason r[LG_REASONS];
    int n;
    long other;
} reasons;

static void reasons_add(reasons *t, const char *name)
{
    for (int i = 0; i < t->n; i++)
        if (!strcmp(t->r[i].name, name)) {
            t->r[i].n++;
            return;
        }
    if (t->n == LG_REASONS) {
        t->other++;
        return;
    }
    snprintf(t->r[t->n].name, sizeof t->r[t->n].name, "%s", name);
    t->r[t->n++].n = 1;
}

/* ------------------------------------------------------------------------ */
/* Requests in flight                                                        */
/* ------------------------------------------------------------------------ */

enum req_kind { REQ_NORMAL, REQ_MALFORMED };

typedef struct lg lg;

typedef struct {
    lg *g;
    CURL *easy;
    bool busy;
    enum req_kind kind;
    bool stream;
    char *body;            /* request body (owned until the request ends) */
    size_t body_len;
    long max_tokens;
    long cancel_after;     /* abort after this many content chunks, 0 = never */
    double t_start, t_first, t_last; /* s, monotonic */
    long n_chunks;         /* SSE events that carried output text */
    long usage_out, usage_in; /* from "usage", -1 when absent */
    long status;           /* HTTP status, 0 until known */
    bool cancelled;        /* the write callback aborted on purpose */
    bool done_seen;        /* "data: [DONE]" arrived */
    char problem[96];      /* first protocol problem, "" if none */
    sbuf line;             /* SSE: the incomplete line */
    sbuf data;             /* SSE: data lines of the current event */
    sbuf body_in;          /* non-SSE response body */
    double *itl;           /* (itl_cap) gaps of this request, ms */
    size_t n_itl, itl_cap;
    long itl_dropped;      /* gaps past itl_cap (not recorded) */
} slot;

struct lg {
    lg_opts o;
    char *endpoint;         /* full URL */
    CURLM *multi;
    struct curl_slist *headers;
    slot *slots;            /* (n_slots) */
    int n_slots, active;
    corpus corp;
    sbuf prompt;
    /* counters */
    long sent, completed, http_errors, transport_errors, cancelled;
    long malformed_ok, malformed_bad;
    long http_by_status[600];
    reasons transport_why, malformed_why;
    char first_http_error[256];
    long in_tokens, out_tokens, in_unknown, len_mismatch;
    long itl_dropped;        /* gaps not recorded: per-request buffer full */
    long n_delayed;          /* open loop: arrivals started > 10 ms late (cap reached) */
    samples ttft, tpot, itl, e2e; /* ms */
    double t0, t_end;
    const char *stop_reason;
};

static volatile sig_atomic_t g_interrupted;

static void on_sigint(int sig)
{
    (void)sig;
    g_interrupted = 1;
}

static void set_problem(slot *s, const char *fmt, const char *arg)
{
    if (s->problem[0]) return;
    snprintf(s->problem, sizeof s->problem, fmt, arg ? arg : "");
}

/* One complete SSE event's data. */
static void sse_event(slot *s, const char *data, size_t len, double now)
{
    if (len == 6 && !memcmp(data, "[DONE]", 6)) {
        s->done_seen = true;
        return;
    }
    if (s->done_seen) {
        set_problem(s, "data after [DONE]%s", NULL);
        return;
    }
    json_error_t jerr;
    /* JSON_ALLOW_NUL: text may hold U+0000 (\u0000), e.g. a <0x00> byte token */
    json_t *o = json_loadb(data, len, JSON_ALLOW_NUL, &jerr);
    if (!json_is_object(o)) {
        set_problem(s, "bad JSON in SSE event%s", NULL);
        json_decref(o);
        return;
    }
    json_t *e = json_object_get(o, "error");
    if (e && !json_is_null(e)) {
        json_t *msg = json_is_object(e) ? json_object_get(e, "message") : NULL;
        set_problem(s, "error event: %.70s", json_is_string(msg) ? json_string_value(msg) : "?");
    }
    json_t *ch = json_object_get(o, "choices");
    if (json_is_array(ch) && json_array_size(ch) > 0) {
        json_t *c0 = json_array_get(ch, 0), *t;
        if (s->g->o.api == API_CHAT) t = json_object_get(json_object_get(c0, "delta"), "content");
        else t = json_object_get(c0, "text");
        /* Like vLLM: only chunks with text count (a role-only first delta or
         * the usage-only last chunk do not). */
        if (json_is_string(t) && json_string_length(t) > 0) {
            if (s->n_chunks == 0) {
                s->t_first = now;
            } else if (s->n_itl < s->itl_cap) {
                s->itl[s->n_itl++] = (now - s->t_last) * 1e3;
            } else {
                s->itl_dropped++;
            }
            s->t_last = now;
            s->n_chunks++;
        }
    }
    json_t *u = json_object_get(o, "usage");
    if (json_is_object(u)) {
        json_t *ct = json_object_get(u, "completion_tokens"), *pt = json_object_get(u, "prompt_tokens");
        if (json_is_integer(ct)) s->usage_out = (long)json_integer_value(ct);
        if (json_is_integer(pt)) s->usage_in = (long)json_integer_value(pt);
    }
    json_decref(o);
}

/* One SSE line (without its terminator). Returns false to abort the stream. */
static bool sse_line(slot *s, const char *p, size_t n, double now)
{
    if (n && p[n - 1] == '\r') n--;
    if (n == 0) { /* blank line: dispatch */
        if (s->data.n) sse_event(s, s->data.p, s->data.n, now);
        s->data.n = 0;
        return true;
    }
    if (p[0] == ':') return true; /* comment / keep-alive */
    if (n >= 5 && !memcmp(p, "data:", 5)) {
        p += 5;
        n -= 5;
        if (n && *p == ' ') p++, n--;
        if ((s->data.n && !sbuf_add(&s->data, "\n", 1)) || !sbuf_add(&s->data, p, n)) {
            set_problem(s, "SSE event larger than the cap%s", NULL);
            return false;
        }
    }
    return true; /* event:, id:, retry: are ignored */
}

static size_t on_write(char *ptr, size_t size, size_t nmemb, void *ud)
{
    slot *s = ud;
    size_t total = size * nmemb;
    double now = now_s();
    if (!s->status) curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &s->status);
    if (!s->stream || s->status != 200) {
        /* Keep the body for parsing or an error message, up to the cap. */
        if (!sbuf_add(&s->body_in, ptr, total)) set_problem(s, "response body larger than the cap%s", NULL);
        return total;
    }
    size_t off = 0;
    /* Bounded by the bytes of this chunk: each pass consumes one line. */
    while (off < total) {
        const char *nl = memchr(ptr + off, '\n', total - off);
        if (!nl) {
            if (!sbuf_add(&s->line, ptr + off, total - off)) {
                set_problem(s, "SSE line larger than the cap%s", NULL);
                return 0;
            }
            break;
        }
        size_t n = (size_t)(nl - (ptr + off));
        bool ok;
        if (s->line.n) {
            if (!sbuf_add(&s->line, ptr + off, n)) {
                set_problem(s, "SSE line larger than the cap%s", NULL);
                return 0;
            }
            ok = sse_line(s, s->line.p, s->line.n, now);
            s->line.n = 0;
        } else {
            ok = sse_line(s, ptr + off, n, now);
        }
        off += n + 1;
        if (!ok) return 0;
        if (s->cancel_after && s->n_chunks >= s->cancel_after && !s->done_seen) {
            s->cancelled = true;
            return 0; /* libcurl ends the transfer with CURLE_WRITE_ERROR */
        }
    }
    return total;
}

/* Merges src into dst recursively (objects merge, everything else replaces). */
static int json_merge(json_t *dst, json_t *src, int depth)
{
    const char *k;
    json_t *v;
    if (depth > 32) return -1;
    json_object_foreach(src, k, v) {
        json_t *d = json_object_get(dst, k);
        if (json_is_object(d) && json_is_object(v)) {
            if (json_merge(d, v, depth + 1)) return -1;
        } else if (json_object_set(dst, k, v)) {
            return -1;
        }
    }
    return 0;
}

/* Broken requests: each is a syntax error or an invalid value that any
 * OpenAI-compatible server must reject with 4xx. */
static const char *malformed_body(enum api_kind api, int variant, size_t *len)
{
    static const char *const common[] = {
        "this is not json",
        "[1, 2, 3]",
        "",
        "{\"prompt\": \"\xff\xfe broken utf-8\", \"messages\": [{\"role\": \"user\", \"content\": \"\xff\xfe\"}]}",
        "{\"prompt\": \"hi\", \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"temperature\": \"hot\"}",
        "{\"prompt\": \"hi\", \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"max_tokens\": \"ten\"}",
    };
    static const char *const comp[] = {
        "{\"prompt\": \"Once upon a time\", \"max_tokens\": 8",
        "{\"max_tokens\": 8}",
    };
    static const char *const chat[] = {
        "{\"messages\": [{\"role\": \"user\", \"content\": \"Once upon a time\"}",
        "{\"messages\": \"hi\"}",
    };
    const int nc = (int)(sizeof common / sizeof common[0]);
    const char *b = variant < nc ? common[variant] : (api == API_CHAT ? chat : comp)[(variant - nc) % 2];
    *len = strlen(b);
    return b;
}
#define N_MALFORMED 8

static char *build_body(lg *g, slot *s, size_t *len)
{
    const lg_opts *o = &g->o;
    long in_len = rng_range((long)lround((double)o->input_len * (1 - o->input_range)),
                            (long)lround((double)o->input_len * (1 + o->input_range)));
    if (in_len < 1) in_len = 1;
    long out_len = rng_range((long)lround((double)o->output_len * (1 - o->output_range)),
                             (long)lround((double)o->output_len * (1 + o->output_range)));
    if (out_len < 1) out_len = 1;
    if (out_len > LG_MAX_TOKENS) out_len = LG_MAX_TOKENS;
    s->max_tokens = out_len;
    if (!make_prompt(&g->corp, o->input_unit, in_len, &g->prompt)) return NULL;

    json_t *r = json_object();
    if (!r) return NULL;
    if (o->model) json_object_set_new(r, "model", json_string(o->model));
    if (o->api == API_CHAT) {
        json_t *m = json_object();
        json_object_set_new(m, "role", json_string("user"));
        json_object_set_new(m, "content", json_stringn(g->prompt.p, g->prompt.n));
        json_t *a = json_array();
        json_array_append_new(a, m);
        json_object_set_new(r, "messages", a);
    } else {
        json_object_set_new(r, "prompt", json_stringn(g->prompt.p, g->prompt.n));
    }
    json_object_set_new(r, "max_tokens", json_integer(out_len));
    if (o->ignore_eos) json_object_set_new(r, "ignore_eos", json_true());
    if (o->stream) {
        json_object_set_new(r, "stream", json_true());
        if (o->usage) {
            json_t *so = json_object();
            json_object_set_new(so, "include_usage", json_true());
            json_object_set_new(r, "stream_options", so);
        }
    }
    if (o->extra && json_merge(r, o->extra, 0)) {
        json_decref(r);
        return NULL;
    }
    /* --extra may have turned streaming on or off. */
    json_t *st = json_object_get(r, "stream");
    s->stream = json_is_true(st);
    json_t *mt = json_object_get(r, "max_tokens");
    if (json_is_integer(mt)) s->max_tokens = (long)json_integer_value(mt);
    char *body = json_dumps(r, JSON_COMPACT);
    json_decref(r);
    if (body) *len = strlen(body);
    return body;
}

static void slot_reset(slot *s)
{
    free(s->body);
    s->body = NULL;
    s->busy = s->cancelled = s->done_seen = false;
    s->kind = REQ_NORMAL;
    s->n_chunks = s->status = 0;
    s->usage_in = s->usage_out = -1;
    s->cancel_after = 0;
    s->problem[0] = '\0';
    s->line.n = s->data.n = s->body_in.n = 0;
    s->n_itl = 0;
    s->itl_dropped = 0;
    s->t_first = s->t_last = 0;
    /* Give back memory a huge response made us take. */
    if (s->body_in.cap > (1u << 20)) sbuf_free(&s->body_in);
    s->body_in.max = LG_BODY_CAP;
}

static bool launch(lg *g, slot *s, double now)
{
    const lg_opts *o = &g->o;
    slot_reset(s);
    if (o->malformed_fraction > 0 && rng_unif() < o->malformed_fraction) {
        size_t n;
        const char *b = malformed_body(o->api, (int)(rng_u64() % N_MALFORMED), &n);
        s->kind = REQ_MALFORMED;
        s->stream = false;
        s->body = malloc(n + 1);
        if (!s->body) return false;
        memcpy(s->body, b, n + 1);
        s->body_len = n;
    } else {
        s->body = build_body(g, s, &s->body_len);
        if (!s->body) return false;
        if (s->stream && o->cancel_fraction > 0 && rng_unif() < o->cancel_fraction)
            s->cancel_after = rng_range(1, s->max_tokens > 1 ? s->max_tokens - 1 : 1);
    }
    curl_easy_setopt(s->easy, CURLOPT_POSTFIELDS, s->body);
    curl_easy_setopt(s->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)s->body_len);
    s->t_start = now;
    if (curl_multi_add_handle(g->multi, s->easy) != CURLM_OK) return false;
    s->busy = true;
    g->active++;
    g->sent++;
    return true;
}

/* Sorts the finished request into exactly one bucket. `abort_why` is set
 * when we tore the request down ourselves (drain timeout, interrupt). */
static void finish(lg *g, slot *s, CURLcode res, const char *abort_why, double now)
{
    const lg_opts *o = &g->o;
    char why[128];
    if (!s->status) curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &s->status);

    if (s->kind == REQ_MALFORMED) {
        if (!abort_why && res == CURLE_OK && s->status >= 400 && s->status < 500) {
            g->malformed_ok++;
        } else {
            g->malformed_bad++;
            if (abort_why) snprintf(why, sizeof why, "%s", abort_why);
            else if (res != CURLE_OK) snprintf(why, sizeof why, "curl: %s", curl_easy_strerror(res));
            else snprintf(why, sizeof why, "HTTP %ld", s->status);
            reasons_add(&g->malformed_why, why);
        }
        return;
    }
    if (s->cancelled) {
        g->cancelled++;
        return;
    }
    if (abort_why) {
        g->transport_errors++;
        reasons_add(&g->transport_why, abort_why);
        return;
    }
    if (res != CURLE_OK) {
        g->transport_errors++;
        if (res == CURLE_WRITE_ERROR && s->problem[0]) snprintf(why, sizeof why, "%s", s->problem);
        else snprintf(why, sizeof why, "curl: %s", curl_easy_strerror(res));
        reasons_add(&g->transport_why, why);
        return;
    }
    if (s->status != 200) {
        g->http_errors++;
        g->http_by_status[s->status > 0 && s->status < 600 ? s->status : 0]++;
        if (!g->first_http_error[0])
            snprintf(g->first_http_error, sizeof g->first_http_error, "HTTP %ld: %.200s", s->status,
                     s->body_in.p ? s->body_in.p : "");
        return;
    }
    double e2e = now - s->t_start;
    long n_out = -1;
    if (s->stream) {
        if (!s->problem[0] && !s->done_seen) set_problem(s, "stream ended without [DONE]%s", NULL);
        n_out = s->usage_out >= 0 ? s->usage_out : s->n_chunks;
    } else {
        json_error_t jerr;
        json_t *r = json_loadb(s->body_in.p ? s->body_in.p : "", s->body_in.n, JSON_ALLOW_NUL, &jerr);
        json_t *ch = json_object_get(r, "choices");
        if (!s->problem[0] && (!json_is_array(ch) || json_array_size(ch) == 0))
            set_problem(s, "response without choices%s", NULL);
        json_t *u = json_object_get(r, "usage");
        json_t *ct = json_object_get(u, "completion_tokens"), *pt = json_object_get(u, "prompt_tokens");
        if (json_is_integer(ct)) n_out = (long)json_integer_value(ct);
        if (json_is_integer(pt)) s->usage_in = (long)json_integer_value(pt);
        json_decref(r);
    }
    if (s->problem[0]) {
        g->transport_errors++;
        reasons_add(&g->transport_why, s->problem);
        return;
    }
    g->completed++;
    samples_add(&g->e2e, e2e * 1e3);
    if (s->stream && s->n_chunks > 0) {
        double ttft = s->t_first - s->t_start;
        samples_add(&g->ttft, ttft * 1e3);
        if (n_out > 1) samples_add(&g->tpot, (e2e - ttft) / (double)(n_out - 1) * 1e3);
        for (size_t i = 0; i < s->n_itl; i++) samples_add(&g->itl, s->itl[i]);
        g->itl_dropped += s->itl_dropped;
    }
    if (n_out >= 0) g->out_tokens += n_out;
    if (s->usage_in >= 0) g->in_tokens += s->usage_in;
    else g->in_unknown++;
    if (o->ignore_eos && n_out >= 0 && n_out != s->max_tokens) g->len_mismatch++;
}

static void reap(lg *g, double now)
{
    CURLMsg *m;
    int left;
    /* Bounded: each message is one finished transfer, at most n_slots. */
    while ((m = curl_multi_info_read(g->multi, &left))) {
        if (m->msg != CURLMSG_DONE) continue;
        char *priv = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, &priv);
        slot *s = (slot *)priv;
        CURLcode res = m->data.result;
        curl_multi_remove_handle(g->multi, m->easy_handle);
        if (!s || !s->busy) continue;
        finish(g, s, res, NULL, now);
        s->busy = false;
        g->active--;
        free(s->body);
        s->body = NULL;
    }
}

static void abort_all(lg *g, const char *why, double now)
{
    for (int i = 0; i < g->n_slots; i++) {
        slot *s = &g->slots[i];
        if (!s->busy) continue;
        curl_multi_remove_handle(g->multi, s->easy);
        finish(g, s, CURLE_OK, why, now);
        s->busy = false;
        g->active--;
    }
}

/* ------------------------------------------------------------------------ */
/* Reports                                                                   */
/* ------------------------------------------------------------------------ */

static long malformed_total(const lg *g) { return g->malformed_ok + g->malformed_bad; }

static bool identity_ok(const lg *g)
{
    return g->sent == g->completed + g->http_errors + g->transport_errors + g->cancelled + malformed_total(g);
}

static void print_summary(const char *title, const summary *m)
{
    printf("%-40s %lu\n", title, (unsigned long)m->n);
    if (!m->n) {
        printf("  (no samples%s)\n", strstr(title, "End") ? "" : ": needs streaming responses with text");
        return;
    }
    printf("  mean / p50 / p90 / p99 / max (ms):    %.2f / %.2f / %.2f / %.2f / %.2f\n", m->mean, m->p50,
           m->p90, m->p99, m->max);
}

static void report_text(lg *g, const summary *ttft, const summary *tpot, const summary *itl, const summary *e2e)
{
    const lg_opts *o = &g->o;
    double dur = g->t_end - g->t0;
    printf("============ orthoserve-loadgen result ============\n");
    printf("%-40s %s\n", "Target:", g->endpoint);
    if (o->rate > 0) printf("%-40s open loop, Poisson %.3g req/s, max %d in flight\n", "Mode:", o->rate, o->concurrency);
    else printf("%-40s closed loop, %d clients\n", "Mode:", o->concurrency);
    printf("%-40s %s, max_tokens %ld (range %.2f)%s\n", "Requests:", o->stream ? "streaming" : "non-streaming",
           o->output_len, o->output_range, o->ignore_eos ? ", ignore_eos" : "");
    printf("%-40s %s\n", "Stopped by:", g->stop_reason);
    printf("%-40s %.3f\n", "Benchmark duration (s):", dur);
    printf("%-40s %ld\n", "Sent:", g->sent);
    printf("%-40s %ld\n", "Completed:", g->completed);
    printf("%-40s %ld\n", "HTTP errors:", g->http_errors);
    for (int st = 0; st < 600; st++)
        if (g->http_by_status[st]) printf("  HTTP %-34d %ld\n", st, g->http_by_status[st]);
    if (g->first_http_error[0]) printf("  first: %.200s\n", g->first_http_error);
    printf("%-40s %ld\n", "Transport/protocol errors:", g->transport_errors);
    for (int i = 0; i < g->transport_why.n; i++)
        printf("  %-38s %ld\n", g->transport_why.r[i].name, g->transport_why.r[i].n);
    if (g->transport_why.other) printf("  %-38s %ld\n", "(other)", g->transport_why.other);
    printf("%-40s %ld\n", "Cancelled (by us):", g->cancelled);
    printf("%-40s %ld ok-4xx, %ld unexpected\n", "Malformed:", g->malformed_ok, g->malformed_bad);
    for (int i = 0; i < g->malformed_why.n; i++)
        printf("  %-38s %ld\n", g->malformed_why.r[i].name, g->malformed_why.r[i].n);
    printf("Accounting: sent %ld = completed %ld + http_errors %ld + transport_errors %ld + cancelled %ld + "
           "malformed %ld  [%s]\n",
           g->sent, g->completed, g->http_errors, g->transport_errors, g->cancelled, malformed_total(g),
           identity_ok(g) ? "OK" : "MISMATCH");
    if (g->n_delayed) printf("%-40s %ld\n", "Arrivals started >10 ms late:", g->n_delayed);
    printf("%-40s %ld%s\n", "Total input tokens:", g->in_tokens,
           g->in_unknown ? " (some responses had no usage)" : "");
    printf("%-40s %ld\n", "Total generated tokens:", g->out_tokens);
    if (o->ignore_eos) printf("%-40s %ld\n", "Completions != max_tokens:", g->len_mismatch);
    printf("%-40s %.2f\n", "Request throughput (req/s):", dur > 0 ? (double)g->completed / dur : 0);
    printf("%-40s %.2f\n", "Output token throughput (tok/s):", dur > 0 ? (double)g->out_tokens / dur : 0);
    printf("%-40s %.2f\n", "Total token throughput (tok/s):",
           dur > 0 ? (double)(g->in_tokens + g->out_tokens) / dur : 0);
    printf("---------------------------------------------------\n");
    print_summary("Time to first token, requests:", ttft);
    print_summary("Time per output token (excl. 1st):", tpot);
    print_summary("Inter-token latency, gaps:", itl);
    if (g->itl.seen > g->itl.n)
        printf("  (percentiles from a uniform sample of %zu gaps)\n", g->itl.n);
    if (g->itl_dropped) printf("  (%ld gaps past the per-request buffer not recorded)\n", g->itl_dropped);
    print_summary("End-to-end latency, requests:", e2e);
    printf("===================================================\n");
}

static void json_metric(json_t *r, const char *name, const summary *m)
{
    char k[64];
    snprintf(k, sizeof k, "mean_%s_ms", name);
    json_object_set_new(r, k, json_real(m->mean));
    snprintf(k, sizeof k, "median_%s_ms", name);
    json_object_set_new(r, k, json_real(m->p50));
    snprintf(k, sizeof k, "p90_%s_ms", name);
    json_object_set_new(r, k, json_real(m->p90));
    snprintf(k, sizeof k, "p99_%s_ms", name);
    json_object_set_new(r, k, json_real(m->p99));
    snprintf(k, sizeof k, "max_%s_ms", name);
    json_object_set_new(r, k, json_real(m->max));
    snprintf(k, sizeof k, "n_%s", name);
    json_object_set_new(r, k, json_integer((json_int_t)m->n));
}

static json_t *reasons_json(const reasons *t)
{
    json_t *o = json_object();
    for (int i = 0; i < t->n; i++) json_object_set_new(o, t->r[i].name, json_integer(t->r[i].n));
    if (t->other) json_object_set_new(o, "(other)", json_integer(t->other));
    return o;
}

/* Key names follow vLLM's `bench serve --save-result` where one exists. */
static int report_json(lg *g, const char *path, const summary *ttft, const summary *tpot, const summary *itl,
                       const summary *e2e)
{
    const lg_opts *o = &g->o;
    double dur = g->t_end - g->t0;
    json_t *r = json_object(), *cfg = json_object(), *st = json_object();
    json_object_set_new(cfg, "endpoint", json_string(g->endpoint));
    json_object_set_new(cfg, "mode", json_string(o->rate > 0 ? "open" : "closed"));
    json_object_set_new(cfg, "concurrency", json_integer(o->concurrency));
    json_object_set_new(cfg, "rate", json_real(o->rate));
    json_object_set_new(cfg, "requests", json_integer(o->n_requests));
    json_object_set_new(cfg, "duration_s", json_real(o->duration));
    json_object_set_new(cfg, "stream", json_boolean(o->stream));
    json_object_set_new(cfg, "input_len", json_integer(o->input_len));
    json_object_set_new(cfg, "input_unit", json_string(o->input_unit == UNIT_WORDS ? "words" : "chars"));
    json_object_set_new(cfg, "input_range", json_real(o->input_range));
    json_object_set_new(cfg, "output_len", json_integer(o->output_len));
    json_object_set_new(cfg, "output_range", json_real(o->output_range));
    json_object_set_new(cfg, "ignore_eos", json_boolean(o->ignore_eos));
    json_object_set_new(cfg, "prompt_file", o->prompt_file ? json_string(o->prompt_file) : json_null());
    json_object_set_new(cfg, "cancel_fraction", json_real(o->cancel_fraction));
    json_object_set_new(cfg, "malformed_fraction", json_real(o->malformed_fraction));
    json_object_set_new(cfg, "seed", json_integer((json_int_t)o->seed));
    if (o->extra) json_object_set(cfg, "extra", o->extra);
    json_object_set_new(r, "config", cfg);
    json_object_set_new(r, "stop_reason", json_string(g->stop_reason));
    json_object_set_new(r, "duration", json_real(dur));
    json_object_set_new(r, "sent", json_integer(g->sent));
    json_object_set_new(r, "completed", json_integer(g->completed));
    json_object_set_new(r, "http_errors", json_integer(g->http_errors));
    for (int i = 0; i < 600; i++)
        if (g->http_by_status[i]) {
            char k[8];
            snprintf(k, sizeof k, "%d", i);
            json_object_set_new(st, k, json_integer(g->http_by_status[i]));
        }
    json_object_set_new(r, "http_errors_by_status", st);
    json_object_set_new(r, "transport_errors", json_integer(g->transport_errors));
    json_object_set_new(r, "transport_errors_by_reason", reasons_json(&g->transport_why));
    json_object_set_new(r, "cancelled", json_integer(g->cancelled));
    json_object_set_new(r, "malformed", json_integer(malformed_total(g)));
    json_object_set_new(r, "malformed_ok_4xx", json_integer(g->malformed_ok));
    json_object_set_new(r, "malformed_unexpected", json_integer(g->malformed_bad));
    json_object_set_new(r, "malformed_unexpected_by_reason", reasons_json(&g->malformed_why));
    json_object_set_new(r, "accounting_ok", json_boolean(identity_ok(g)));
    json_object_set_new(r, "arrivals_delayed", json_integer(g->n_delayed));
    json_object_set_new(r, "total_input_tokens", json_integer(g->in_tokens));
    json_object_set_new(r, "total_output_tokens", json_integer(g->out_tokens));
    json_object_set_new(r, "output_len_mismatch", json_integer(g->len_mismatch));
    json_object_set_new(r, "request_throughput", json_real(dur > 0 ? (double)g->completed / dur : 0));
    json_object_set_new(r, "output_throughput", json_real(dur > 0 ? (double)g->out_tokens / dur : 0));
    json_object_set_new(r, "total_token_throughput",
                        json_real(dur > 0 ? (double)(g->in_tokens + g->out_tokens) / dur : 0));
    json_metric(r, "ttft", ttft);
    json_metric(r, "tpot", tpot);
    json_metric(r, "itl", itl);
    json_metric(r, "e2el", e2e);
    json_object_set_new(r, "itl_samples_kept", json_integer((json_int_t)g->itl.n));
    json_object_set_new(r, "itl_dropped", json_integer(g->itl_dropped));
    int rc = json_dump_file(r, path, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(r);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Main loop                                                                 */
/* ------------------------------------------------------------------------ */

static void progress_line(const lg *g, double now)
{
    fprintf(stderr, "[%7.1fs] sent %ld  done %ld  http_err %ld  transport_err %ld  cancelled %ld  malformed %ld  "
            "in flight %d\n",
            now - g->t0, g->sent, g->completed, g->http_errors, g->transport_errors, g->cancelled,
            malformed_total(g), g->active);
}

static int run(lg *g)
{
    const lg_opts *o = &g->o;
    bool open_loop = o->rate > 0;
    double now = now_s();
    g->t0 = now;
    double t_stop_sending = now + o->duration, t_hard = 0;
    double next_arrival = now, next_progress = now + o->progress;
    bool stopping = false;
    g->stop_reason = "requests";

    /* Terminates: after t_stop_sending no request starts, and at
     * t_stop_sending + drain every remaining one is aborted. */
    for (;;) {
        now = now_s();
        if (!stopping) {
            if (g_interrupted) g->stop_reason = "interrupted", stopping = true;
            else if (g->sent >= o->n_requests) g->stop_reason = "requests", stopping = true;
            else if (now >= t_stop_sending) g->stop_reason = "duration", stopping = true;
            if (stopping) t_hard = now + o->drain;
        }
        if (stopping && g->active == 0) break;
        if (stopping && (now >= t_hard || g_interrupted)) {
            abort_all(g, g_interrupted ? "aborted: interrupted" : "aborted: still running after --drain", now);
            break;
        }
        if (!stopping) {
            /* Bounded by n_slots per pass. */
            for (int i = 0; i < g->n_slots && g->sent < o->n_requests; i++) {
                slot *s = &g->slots[i];
                if (s->busy) continue;
                if (open_loop && next_arrival > now) break;
                if (!launch(g, s, now)) {
                    fprintf(stderr, "loadgen: cannot start a request (out of memory?)\n");
                    abort_all(g, "aborted: setup failure", now);
                    g->stop_reason = "error";
                    g->t_end = now_s();
                    return -1;
                }
                if (open_loop) {
                    if (now - next_arrival > 0.010) g->n_delayed++;
                    next_arrival += -log(1.0 - rng_unif()) / o->rate;
                }
            }
        }
        int running = 0;
        CURLMcode mc = curl_multi_perform(g->multi, &running);
        if (mc != CURLM_OK) {
            fprintf(stderr, "loadgen: curl_multi_perform: %s\n", curl_multi_strerror(mc));
            abort_all(g, "aborted: multi error", now_s());
            break;
        }
        reap(g, now_s());
        now = now_s();
        if (o->progress > 0 && now >= next_progress) {
            progress_line(g, now);
            next_progress = now + o->progress;
        }
        /* Sleep until socket activity, the next arrival, or 100 ms (so the
         * deadlines and Ctrl-C are noticed promptly). */
        double wait = 0.1;
        if (!stopping && open_loop && g->active < g->n_slots && next_arrival - now < wait)
            wait = next_arrival - now;
        if (!stopping && !open_loop && g->active < g->n_slots && g->sent < o->n_requests) wait = 0;
        if (!stopping && t_stop_sending - now < wait) wait = t_stop_sending - now;
        if (stopping && t_hard - now < wait) wait = t_hard - now;
        int ms = wait > 0 ? (int)ceil(wait * 1e3) : 0;
        if (ms > 0 || g->active > 0) curl_multi_poll(g->multi, NULL, 0, ms, NULL);
    }
    g->t_end = now_s();
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Setup                                                                     */
/* ------------------------------------------------------------------------ */

static bool parse_args(int argc, char **argv, lg_opts *o)
{
    enum {
        O_ALLOW_REMOTE = 256, O_DRAIN, O_TIMEOUT, O_IN_UNIT, O_IN_RANGE, O_OUT_RANGE, O_NO_EOS, O_NO_STREAM,
        O_STREAM, O_NO_USAGE, O_CANCEL, O_MALFORMED, O_SEED, O_PROGRESS, O_STRICT, O_MAXCONC
    };
    static const struct option lo[] = {
        {"url", required_argument, 0, 'u'},        {"api", required_argument, 0, 'a'},
        {"model", required_argument, 0, 'm'},      {"api-key", required_argument, 0, 'k'},
        {"allow-remote", no_argument, 0, O_ALLOW_REMOTE},
        {"concurrency", required_argument, 0, 'c'}, {"max-concurrency", required_argument, 0, O_MAXCONC},
        {"rate", required_argument, 0, 'r'},
        {"requests", required_argument, 0, 'n'},   {"duration", required_argument, 0, 'd'},
        {"drain", required_argument, 0, O_DRAIN},  {"timeout", required_argument, 0, O_TIMEOUT},
        {"prompt-file", required_argument, 0, 'f'}, {"input-len", required_argument, 0, 'i'},
        {"input-unit", required_argument, 0, O_IN_UNIT}, {"input-range", required_argument, 0, O_IN_RANGE},
        {"output-len", required_argument, 0, 'o'}, {"output-range", required_argument, 0, O_OUT_RANGE},
        {"no-ignore-eos", no_argument, 0, O_NO_EOS}, {"no-stream", no_argument, 0, O_NO_STREAM},
        {"stream", no_argument, 0, O_STREAM},      {"no-usage", no_argument, 0, O_NO_USAGE},
        {"extra", required_argument, 0, 'x'},      {"cancel-fraction", required_argument, 0, O_CANCEL},
        {"malformed-fraction", required_argument, 0, O_MALFORMED},
        {"json", required_argument, 0, 'j'},       {"seed", required_argument, 0, O_SEED},
        {"progress", required_argument, 0, O_PROGRESS}, {"strict", no_argument, 0, O_STRICT},
        {"help", no_argument, 0, 'h'},             {0, 0, 0, 0},
    };
    long conc = -1, maxconc = -1, l;
    int c;
    json_error_t jerr;
    while ((c = getopt_long(argc, argv, "u:a:m:k:c:r:n:d:f:i:o:x:j:h", lo, NULL)) != -1) {
        const char *bad = NULL;
        switch (c) {
        case 'u': o->url = optarg; break;
        case 'a':
            if (!strcmp(optarg, "completions")) o->api = API_COMPLETIONS;
            else if (!strcmp(optarg, "chat")) o->api = API_CHAT;
            else bad = "--api must be completions or chat";
            break;
        case 'm': o->model = optarg; break;
        case 'k': o->api_key = optarg; break;
        case O_ALLOW_REMOTE: o->allow_remote = true; break;
        case 'c': if (!parse_long(optarg, 1, LG_MAX_CONC, &conc)) bad = "--concurrency must be in [1, 4096]"; break;
        case O_MAXCONC:
            if (!parse_long(optarg, 1, LG_MAX_CONC, &maxconc)) bad = "--max-concurrency must be in [1, 4096]";
            break;
        case 'r': if (!parse_double(optarg, 0, 1e6, &o->rate)) bad = "--rate must be in [0, 1e6]"; break;
        case 'n':
            if (!parse_long(optarg, 1, LG_MAX_REQUESTS, &o->n_requests)) bad = "--requests must be in [1, 1e6]";
            break;
        case 'd': if (!parse_double(optarg, 0.001, 1e7, &o->duration)) bad = "--duration must be > 0"; break;
        case O_DRAIN: if (!parse_double(optarg, 0, 1e6, &o->drain)) bad = "--drain must be >= 0"; break;
        case O_TIMEOUT: if (!parse_double(optarg, 0.001, 1e6, &o->timeout)) bad = "--timeout must be > 0"; break;
        case 'f': o->prompt_file = optarg; break;
        case 'i': if (!parse_long(optarg, 1, 10000000, &o->input_len)) bad = "--input-len must be in [1, 1e7]"; break;
        case O_IN_UNIT:
            if (!strcmp(optarg, "words")) o->input_unit = UNIT_WORDS;
            else if (!strcmp(optarg, "chars")) o->input_unit = UNIT_CHARS;
            else bad = "--input-unit must be words or chars";
            break;
        case O_IN_RANGE: if (!parse_double(optarg, 0, 1, &o->input_range)) bad = "--input-range must be in [0, 1]"; break;
        case 'o':
            if (!parse_long(optarg, 1, LG_MAX_TOKENS, &o->output_len)) bad = "--output-len must be in [1, 1e6]";
            break;
        case O_OUT_RANGE:
            if (!parse_double(optarg, 0, 1, &o->output_range)) bad = "--output-range must be in [0, 1]";
            break;
        case O_NO_EOS: o->ignore_eos = false; break;
        case O_NO_STREAM: o->stream = false; break;
        case O_STREAM: o->stream = true; break;
        case O_NO_USAGE: o->usage = false; break;
        case 'x':
            json_decref(o->extra);
            o->extra = json_loads(optarg, 0, &jerr);
            if (!json_is_object(o->extra)) bad = "--extra must be a JSON object";
            break;
        case O_CANCEL:
            if (!parse_double(optarg, 0, 1, &o->cancel_fraction)) bad = "--cancel-fraction must be in [0, 1]";
            break;
        case O_MALFORMED:
            if (!parse_double(optarg, 0, 1, &o->malformed_fraction)) bad = "--malformed-fraction must be in [0, 1]";
            break;
        case 'j': o->json_path = optarg; break;
        case O_SEED:
            if (!parse_long(optarg, 0, 1L << 52, &l)) bad = "--seed must be an integer >= 0";
            o->seed = (uint64_t)l;
            break;
        case O_PROGRESS: if (!parse_double(optarg, 0, 1e6, &o->progress)) bad = "--progress must be >= 0"; break;
        case O_STRICT: o->strict = true; break;
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); return false;
        }
        if (bad) {
            fprintf(stderr, "loadgen: %s (got '%s')\n", bad, optarg);
            return false;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "loadgen: unexpected argument '%s'\n", argv[optind]);
        return false;
    }
    /* --extra may switch streaming; make the report and stream_options agree. */
    json_t *st = json_object_get(o->extra, "stream");
    if (json_is_boolean(st)) o->stream = json_is_true(st);
    if (o->rate > 0) o->concurrency = (int)(maxconc > 0 ? maxconc : conc > 0 ? conc : 256);
    else o->concurrency = (int)(conc > 0 ? conc : 1);
    if (o->concurrency > o->n_requests) o->concurrency = (int)o->n_requests;
    if (o->cancel_fraction > 0 && !o->stream)
        fprintf(stderr, "loadgen: note: --cancel-fraction only applies to streaming requests\n");
    return true;
}

static bool setup(lg *g)
{
    const lg_opts *o = &g->o;
    char err[256];
    if (!check_target(o->url, o->allow_remote, err, sizeof err)) {
        fprintf(stderr, "loadgen: %s\n", err);
        return false;
    }
    if (o->prompt_file && !corpus_load(&g->corp, o->prompt_file, err, sizeof err)) {
        fprintf(stderr, "loadgen: %s\n", err);
        return false;
    }
    size_t ul = strlen(o->url);
    const char *path = o->api == API_CHAT ? "/v1/chat/completions" : "/v1/completions";
    g->endpoint = malloc(ul + strlen(path) + 1);
    if (!g->endpoint) return false;
    memcpy(g->endpoint, o->url, ul + 1);
    while (ul && g->endpoint[ul - 1] == '/') g->endpoint[--ul] = '\0';
    strcat(g->endpoint, path);

    g->prompt.max = LG_LINE_CAP * 16;
    g->headers = curl_slist_append(NULL, "Content-Type: application/json");
    g->headers = curl_slist_append(g->headers, "Expect:");
    if (o->api_key) {
        char *h = malloc(strlen(o->api_key) + 32);
        if (!h) return false;
        sprintf(h, "Authorization: Bearer %s", o->api_key);
        g->headers = curl_slist_append(g->headers, h);
        free(h);
    }
    if (!g->headers) return false;

    size_t cap = (size_t)o->n_requests;
    if (!samples_init(&g->ttft, cap) || !samples_init(&g->tpot, cap) || !samples_init(&g->e2e, cap))
        return false;
    double max_out = (double)o->output_len * (1 + o->output_range) + 1;
    double itl_cap = (double)cap * max_out;
    if (itl_cap > LG_ITL_RESERVOIR) itl_cap = LG_ITL_RESERVOIR;
    if (!samples_init(&g->itl, (size_t)itl_cap)) return false;

    g->multi = curl_multi_init();
    if (!g->multi) return false;
    curl_multi_setopt(g->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)o->concurrency);
    g->n_slots = o->concurrency;
    g->slots = calloc((size_t)g->n_slots, sizeof *g->slots);
    if (!g->slots) return false;
    size_t per_req = max_out + 8 < LG_ITL_PER_REQ ? (size_t)max_out + 8 : LG_ITL_PER_REQ;
    if (per_req > LG_ITL_SLOTS_BUDGET / (size_t)g->n_slots) per_req = LG_ITL_SLOTS_BUDGET / (size_t)g->n_slots;
    for (int i = 0; i < g->n_slots; i++) {
        slot *s = &g->slots[i];
        s->g = g;
        s->line.max = LG_LINE_CAP;
        s->data.max = LG_LINE_CAP;
        s->body_in.max = LG_BODY_CAP;
        s->itl_cap = per_req;
        s->itl = malloc(per_req * sizeof *s->itl);
        s->easy = curl_easy_init();
        if (!s->itl || !s->easy) return false;
        CURL *e = s->easy;
        curl_easy_setopt(e, CURLOPT_URL, g->endpoint);
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, g->headers);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
        curl_easy_setopt(e, CURLOPT_WRITEDATA, s);
        curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)s);
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(o->timeout * 1e3));
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
        /* Never leave the target: no proxies from the environment, no redirects. */
        curl_easy_setopt(e, CURLOPT_NOPROXY, "*");
        curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
#if LIBCURL_VERSION_NUM >= 0x075500
        curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
#endif
        curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    }
    return true;
}

static void teardown(lg *g)
{
    for (int i = 0; g->slots && i < g->n_slots; i++) {
        slot *s = &g->slots[i];
        if (s->easy) {
            if (s->busy) curl_multi_remove_handle(g->multi, s->easy);
            curl_easy_cleanup(s->easy);
        }
        free(s->body);
        free(s->itl);
        sbuf_free(&s->line);
        sbuf_free(&s->data);
        sbuf_free(&s->body_in);
    }
    free(g->slots);
    if (g->multi) curl_multi_cleanup(g->multi);
    curl_slist_free_all(g->headers);
    free(g->endpoint);
    free(g->ttft.v);
    free(g->tpot.v);
    free(g->itl.v);
    free(g->e2e.v);
    sbuf_free(&g->prompt);
    corpus_free(&g->corp);
    json_decref(g->o.extra);
}

int main(int argc, char **argv)
{
    static lg g; /* large (counter tables); zero-initialised */
    lg_opts *o = &g.o;
    o->url = "http://127.0.0.1:8080";
    o->n_requests = 100;
    o->duration = 60;
    o->drain = 30;
    o->timeout = 300;
    o->input_len = 32;
    o->output_len = 32;
    o->stream = o->ignore_eos = o->usage = true;
    o->seed = 1;
    o->progress = 5;
    o->api_key = getenv("ORTHOSERVE_API_KEY");
    if (o->api_key && !*o->api_key) o->api_key = NULL;
    if (!parse_args(argc, argv, o)) {
        json_decref(o->extra);
        return 2;
    }
    rng_state = o->seed;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "loadgen: curl_global_init failed\n");
        return 2;
    }
    int rc = 0;
    if (!setup(&g)) {
        fprintf(stderr, "loadgen: setup failed\n");
        rc = 2;
        goto out;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sa.sa_flags = SA_RESETHAND; /* a second Ctrl-C kills us */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    run(&g);

    summary ttft = samples_summary(&g.ttft), tpot = samples_summary(&g.tpot);
    summary itl = samples_summary(&g.itl), e2e = samples_summary(&g.e2e);
    report_text(&g, &ttft, &tpot, &itl, &e2e);
    if (o->json_path && report_json(&g, o->json_path, &ttft, &tpot, &itl, &e2e)) {
        fprintf(stderr, "loadgen: cannot write '%s'\n", o->json_path);
        rc = 2;
    }
    if (!identity_ok(&g)) rc = 1;
    if (o->strict && (g.http_errors || g.transport_errors || g.malformed_bad)) rc = rc ? rc : 1;
out:
    teardown(&g);
    curl_global_cleanup();
    return rc;
}
