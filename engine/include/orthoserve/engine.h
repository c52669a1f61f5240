/*
 * orthoserve/engine.h - the inference engine's one public header.
 *
 * The engine loads Llama-family GGUF models, tokenizes, runs batched forward
 * passes on the CPU and samples. It depends on libc, pthreads and OpenBLAS
 * only. Every call that can fail returns an eng_status (negative on error)
 * and writes results through out-parameters; eng_strerror() names a status.
 * The engine never prints and never exits: install a log callback with
 * eng_log_set() to see its messages.
 *
 * Thread-safety: a model (eng_model) and its vocabulary are immutable after
 * loading and may be shared by any number of threads. A context (eng_context)
 * and a sampler are owned by one thread at a time.
 */
#ifndef ORTHOSERVE_ENGINE_H
#define ORTHOSERVE_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* Status, logging, memory                                                  */
/* ------------------------------------------------------------------------ */

typedef enum {
    ENG_OK = 0,
    ENG_EINVAL = -1,      /* bad argument */
    ENG_ENOMEM = -2,      /* allocation failed */
    ENG_EIO = -3,         /* file could not be opened / read / mapped */
    ENG_EFORMAT = -4,     /* malformed or unsupported file contents */
    ENG_ECTXFULL = -5,    /* no room left in the context / KV cache */
    ENG_ECANCELED = -6,   /* request cancelled */
    ENG_ERANGE = -7,      /* output buffer too small; the needed size is reported */
    ENG_EUNSUPPORTED = -8, /* valid but not supported (architecture, type, feature) */
    ENG_EBUSY = -9,        /* queue full: try again later */
    ENG_ESTOPPED = -10     /* the scheduler is draining or stopped */
} eng_status;

/* Static string naming a status ("invalid argument", ...). Never NULL. */
const char *eng_strerror(eng_status st);

typedef enum { ENG_LOG_ERROR = 0, ENG_LOG_WARN = 1, ENG_LOG_INFO = 2, ENG_LOG_DEBUG = 3 } eng_log_level;
typedef void (*eng_log_fn)(eng_log_level lvl, const char *msg, void *user);
/* Install the process-wide log callback (NULL: messages are dropped) and the
 * most verbose level delivered. Not thread-safe: call before using the engine. */
void eng_log_set(eng_log_fn fn, void *user, eng_log_level max_level);

/* Free memory the engine returned with "free with eng_free()". NULL is fine. */
void eng_free(void *p);

/* ------------------------------------------------------------------------ */
/* Vocabulary and tokenizer                                                 */
/* ------------------------------------------------------------------------ */

typedef struct eng_vocab eng_vocab;

typedef enum {
    ENG_VOCAB_SPM = 1, /* tokenizer.ggml.model = "llama": SentencePiece-style BPE over scores */
    ENG_VOCAB_BPE = 2  /* tokenizer.ggml.model = "gpt2": byte-level BPE with merges */
} eng_vocab_kind;

/* Token attributes (bit set), from tokenizer.ggml.token_type. */
enum {
    ENG_TOKEN_NORMAL = 1 << 0,
    ENG_TOKEN_UNKNOWN = 1 << 1,
    ENG_TOKEN_CONTROL = 1 << 2,
    ENG_TOKEN_USER_DEFINED = 1 << 3,
    ENG_TOKEN_UNUSED = 1 << 4,
    ENG_TOKEN_BYTE = 1 << 5
};

/* Load only the tokenizer of a GGUF file (a vocab-only file or a full model).
 * err receives a message on failure. Free with eng_vocab_free(). */
eng_status eng_vocab_load(const char *path, eng_vocab **out, char *err, size_t errlen);
void eng_vocab_free(eng_vocab *v);

eng_vocab_kind eng_vocab_type(const eng_vocab *v);
int32_t eng_vocab_n_tokens(const eng_vocab *v);
int32_t eng_vocab_bos(const eng_vocab *v); /* -1 when the vocab has none */
int32_t eng_vocab_eos(const eng_vocab *v);
int32_t eng_vocab_eot(const eng_vocab *v);
bool eng_vocab_add_bos(const eng_vocab *v);
bool eng_vocab_add_eos(const eng_vocab *v);
/* True for tokens that end generation (EOS, EOT, and other end-of-generation ids). */
bool eng_vocab_is_eog(const eng_vocab *v, int32_t id);
uint32_t eng_vocab_attr(const eng_vocab *v, int32_t id); /* ENG_TOKEN_* bits, 0 if out of range */
/* The most input bytes one token can stand for: a text of n bytes
 * tokenizes to at least n / this many tokens (so a prompt can be refused
 * as too long for a context before it is tokenized). */
int32_t eng_vocab_max_token_bytes(const eng_vocab *v);
/* The token's vocabulary string (NUL-terminated, lives as long as v), or NULL. */
const char *eng_vocab_text(const eng_vocab *v, int32_t id);
/* Pre-tokenizer name in use ("default", "llama3", "qwen2", ...). */
const char *eng_vocab_pre(const eng_vocab *v);

/*
 * Tokenize len bytes of text (need not be NUL-terminated or valid UTF-8).
 * add_special adds BOS/EOS as the vocab's flags say; parse_special turns the
 * text of control/user-defined tokens into those tokens (otherwise it is
 * plain text). Writes at most n_max ids to out and the full count to *n_out;
 * returns ENG_ERANGE when n_max is too small (nothing useful in out then).
 */
eng_status eng_tokenize(const eng_vocab *v, const char *text, size_t len, bool add_special,
                        bool parse_special, int32_t *out, size_t n_max, size_t *n_out);

/* The bytes one token renders to (what a streaming printer shows). special:
 * render control tokens as their text (otherwise they render as nothing).
 * Writes at most cap bytes; *n_out = bytes needed; ENG_ERANGE if cap too small. */
eng_status eng_token_to_piece(const eng_vocab *v, int32_t id, bool special, char *buf,
                              size_t cap, size_t *n_out);

/* Ids back to text, with llama.cpp's rules (leading-space removal for SPM,
 * byte tokens as raw bytes). remove_special drops BOS/EOS; unparse_special
 * renders control tokens as their text. Same buffer rules as above. The
 * output is bytes: it may end inside a UTF-8 sequence. */
eng_status eng_detokenize(const eng_vocab *v, const int32_t *ids, size_t n, bool remove_special,
                          bool unparse_special, char *buf, size_t cap, size_t *n_out);

/* ------------------------------------------------------------------------ */
/* Chat templates                                                           */
/* ------------------------------------------------------------------------ */

typedef enum {
    ENG_CHAT_UNKNOWN = 0,
    ENG_CHAT_CHATML,   /* <|im_start|>role\n...<|im_end|>\n  (Qwen, SmolLM, Hermes) */
    ENG_CHAT_LLAMA2,   /* <s>[INST] <<SYS>>...<</SYS>> ... [/INST] */
    ENG_CHAT_LLAMA3,   /* <|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|> */
    ENG_CHAT_MISTRAL,  /* [INST] ... [/INST] (v1/v3, system folded into first user turn) */
    ENG_CHAT_ZEPHYR,   /* <|user|>\n...</s>\n */
    ENG_CHAT_PHI3,     /* <|user|>\n...<|end|>\n */
    ENG_CHAT_GEMMA,    /* <start_of_turn>user\n...<end_of_turn>\n */
    ENG_CHAT_PLAIN     /* documented fallback: "role: content" lines, then "assistant:" */
} eng_chat_format;
/*
 * Renderings (engine/src/chat.c has the exact rules). CHATML, LLAMA3,
 * MISTRAL (llama.cpp's "mistral-v3": "[INST] sys\n\nuser[/INST] reply</s>"),
 * ZEPHYR, PHI3 and GEMMA (assistant -> "model", system folded into the first
 * user turn as "sys\n\n") give llama.cpp's llama_chat_apply_template text.
 * LLAMA2 follows Meta's own template: "[INST] <<SYS>>\nsys\n<</SYS>>\n\nuser
 * [/INST] reply </s><s>[INST] ..." (inner "<s>" kept, leading BOS left out).
 * PLAIN: each message as role ": " content "\n"; the opener is "assistant:"
 * (no space or newline after the colon). For LLAMA2 and MISTRAL the opener
 * is empty ("[/INST]" ends every user turn). Render special tokens in the
 * text with eng_tokenize(..., parse_special = true).
 */

typedef struct {
    const char *role;    /* "system", "user" or "assistant" */
    const char *content; /* UTF-8 text */
} eng_chat_msg;

/* Detect the family of a Jinja chat template (tokenizer.chat_template). NULL
 * or an unrecognised template gives ENG_CHAT_UNKNOWN. */
eng_chat_format eng_chat_detect(const char *tmpl);
/* The family an architecture's models use ("qwen3" -> CHATML, "gemma3" ->
 * GEMMA, "phi3" -> PHI3, "qwen2" -> CHATML), for files without a template;
 * ENG_CHAT_UNKNOWN for "llama" (several families) and anything else. */
eng_chat_format eng_chat_for_arch(const char *arch);
const char *eng_chat_format_name(eng_chat_format f); /* "chatml", "llama2", ... */
eng_chat_format eng_chat_format_from_name(const char *name); /* ENG_CHAT_UNKNOWN if none */

/* Render messages to prompt text (BOS not included: the tokenizer adds it as
 * the vocab says). add_assistant appends the assistant turn opener.
 * *out is NUL-terminated; free with eng_free(). ENG_EINVAL for an unknown role
 * (roles are exactly "system", "user", "assistant") or format; a NULL
 * content renders as "". */
eng_status eng_chat_apply(eng_chat_format f, const eng_chat_msg *msgs, size_t n,
                          bool add_assistant, char **out, size_t *out_len);

/* ------------------------------------------------------------------------ */
/* Jinja chat templates (engine/src/jinja_*.c)                              */
/* ------------------------------------------------------------------------ */
/*
 * A Jinja2-subset interpreter that renders a model's tokenizer.chat_template
 * as Hugging Face transformers' apply_chat_template does (Python jinja2,
 * sandboxed, trim_blocks + lstrip_blocks, loopcontrols, raise_exception,
 * strftime_now, a tojson that keeps non-ASCII text). Templates are untrusted:
 * every render is bounded in output, memory, recursion, steps and time, and
 * nothing outside the template and its variables is reachable.
 *
 * A parsed template (eng_jinja) is immutable: any number of threads may render
 * it at once, each with its own variables (eng_jinja_vars, one thread).
 */
typedef struct eng_jinja eng_jinja;           /* a parsed template */
typedef struct eng_jinja_vars eng_jinja_vars; /* the variables of a render */
typedef struct eng_jinja_val eng_jinja_val;   /* a value, owned by its vars */

typedef struct {
    char msg[512]; /* what went wrong, with the template line where known */
    bool raised;   /* the template called raise_exception(msg): msg is its text */
} eng_jinja_error;

typedef struct {
    size_t max_output;   /* bytes of rendered text (default 4 MiB) */
    size_t max_memory;   /* bytes of working memory of one render (default 64 MiB) */
    uint32_t max_depth;  /* nested macro calls (default 64) */
    uint64_t max_steps;  /* loop iterations + calls + outputs (default 2,000,000) */
    uint32_t max_ms;     /* wall time of one render in ms (default 2000) */
    const char *now;     /* "YYYY-MM-DD HH:MM:SS" fixes strftime_now; NULL: local time */
} eng_jinja_limits;

eng_jinja_limits eng_jinja_default_limits(void);

/* Parse template source (UTF-8, len bytes). ENG_EFORMAT with err->msg on a
 * syntax error, ENG_ENOMEM. Free with eng_jinja_free() (NULL is fine). */
eng_status eng_jinja_parse(const char *src, size_t len, eng_jinja **out, eng_jinja_error *err);
void eng_jinja_free(eng_jinja *t);

/* Variables: values are built in the vars' memory and live until
 * eng_jinja_vars_free(). Constructors return NULL when memory runs out;
 * passing NULL to push/set gives ENG_ENOMEM, so a builder checks once at the
 * end. Dict keys keep their insertion order (as Python dicts). */
eng_jinja_vars *eng_jinja_vars_new(void);
void eng_jinja_vars_free(eng_jinja_vars *v);
eng_jinja_val *eng_jinja_none(eng_jinja_vars *v);
eng_jinja_val *eng_jinja_bool(eng_jinja_vars *v, bool b);
eng_jinja_val *eng_jinja_int(eng_jinja_vars *v, int64_t i);
eng_jinja_val *eng_jinja_float(eng_jinja_vars *v, double d);
eng_jinja_val *eng_jinja_str(eng_jinja_vars *v, const char *s, size_t len); /* copied */
eng_jinja_val *eng_jinja_list(eng_jinja_vars *v);
eng_jinja_val *eng_jinja_dict(eng_jinja_vars *v);
eng_status eng_jinja_list_push(eng_jinja_vars *v, eng_jinja_val *list, const eng_jinja_val *item);
/* Set key (replacing an existing one in place). */
eng_status eng_jinja_dict_set(eng_jinja_vars *v, eng_jinja_val *dict, const char *key, size_t klen,
                              const eng_jinja_val *val);
/* Define a template variable (a later set of the same name wins). */
eng_status eng_jinja_vars_set(eng_jinja_vars *v, const char *name, const eng_jinja_val *val);

/* Render. On ENG_OK *out is the NUL-terminated text (*out_len bytes, free with
 * eng_free()). ENG_EINVAL with err filled when the template fails (a runtime
 * error, raise_exception, or a limit: the message names the limit), ENG_ENOMEM.
 * lim NULL = defaults. */
eng_status eng_jinja_render(const eng_jinja *t, const eng_jinja_vars *v, const eng_jinja_limits *lim,
                            char **out, size_t *out_len, eng_jinja_error *err);

/* ------------------------------------------------------------------------ */
/* Sampling                                                                 */
/* ------------------------------------------------------------------------ */

typedef struct {
    int32_t token;
    float bias; /* added to the logit; -INFINITY bans the token */
} eng_logit_bias;

typedef struct {
    float temperature;       /* <= 0: greedy (argmax, ties to the lowest id) */
    int32_t top_k;           /* <= 0: off */
    float top_p;             /* >= 1: off */
    float min_p;             /* <= 0: off */
    float repeat_penalty;    /* 1: off (llama.cpp semantics: divide positive logits) */
    int32_t repeat_last_n;   /* window for all penalties; -1: whole history */
    float presence_penalty;  /* 0: off (OpenAI semantics) */
    float frequency_penalty; /* 0: off */
    uint64_t seed;           /* same seed and inputs => same tokens */
    const eng_logit_bias *logit_bias; /* copied by eng_sampler_new */
    size_t n_logit_bias;
} eng_sampler_params;

typedef struct eng_sampler eng_sampler;

/* llama.cpp's defaults: temperature 0.8, top_k 40, top_p 0.95, min_p 0.05,
 * repeat_penalty 1 (off), repeat_last_n 64, no presence/frequency penalty,
 * seed 0, no biases. Order of application: biases, penalties, temperature,
 * top-k, top-p, min-p, then one draw from the softmax. */
eng_sampler_params eng_sampler_default_params(void);
/* Free with eng_sampler_free(). ENG_EINVAL for out-of-range params or bias
 * ids. Accepted: temperature finite (<= 0 greedy); top_p in (0, 1]; min_p in
 * [0, 1]; repeat_penalty finite > 0; repeat_last_n >= -1 (0: no penalties);
 * presence/frequency in [-2, 2]; bias tokens in [0, n_vocab), bias not NaN
 * or +INFINITY. */
eng_status eng_sampler_new(const eng_sampler_params *p, int32_t n_vocab, eng_sampler **out);
void eng_sampler_free(eng_sampler *s);
/* Record a token as part of the history penalties look at (prompt or output). */
void eng_sampler_accept(eng_sampler *s, int32_t token);
/* Choose the next token from raw logits (n_vocab floats, not modified).
 * NaN logits count as -INFINITY. ENG_EINVAL when no token is left (all banned).
 * Allocates nothing. */
eng_status eng_sampler_sample(eng_sampler *s, const float *logits, int32_t *token);

/*
 * Log-probabilities from raw logits (log-softmax, before any sampling
 * transform, as the OpenAI API reports them): *lp = log p(token); the n_top
 * most likely ids (ties: lower id first) go to top_ids/top_lps when n_top > 0.
 * lp may be NULL (token is then not checked); n_top <= n_vocab. -INFINITY
 * (and NaN) logits get -INFINITY; ENG_EINVAL if every logit is -INFINITY.
 */
eng_status eng_logprobs(const float *logits, int32_t n_vocab, int32_t token, float *lp,
                        int32_t n_top, int32_t *top_ids, float *top_lps);

/* ------------------------------------------------------------------------ */
/* Models                                                                   */
/* ------------------------------------------------------------------------ */

typedef struct eng_model eng_model;

#define ENG_MAX_LAYERS 1024 /* the most layers a model may have (eng_model_load refuses more) */

typedef struct {
    int32_t n_threads; /* compute threads for contexts made from this model (>= 1) */
    bool use_mmap;     /* map the file read-only (default); false: read it into memory, so a
                        * file truncated or rewritten while in use cannot fault (SIGBUS) */
    bool repack;       /* reorder F16 / Q8_0 / Q4_K / Q6_K weight matrices at load into the
                        * interleaved layout the AVX-512 kernels stream fastest (default);
                        * with use_mmap those matrices are copied into anonymous memory
                        * (their size again, while the file stays in the page cache).
                        * Results are bit-identical either way. */
} eng_model_params;

eng_model_params eng_model_default_params(void);

/* Map and validate a GGUF model. Unsupported architectures or weight types are
 * refused with ENG_EUNSUPPORTED and a message naming them and what is
 * supported. Free with eng_model_free(). */
eng_status eng_model_load(const char *path, const eng_model_params *p, eng_model **out,
                          char *err, size_t errlen);
void eng_model_free(eng_model *m);

typedef struct {
    const char *arch;         /* "llama", "qwen2", "qwen3", "gemma3", "phi3" */
    const char *name;         /* general.name or "" */
    const char *file_type;    /* dominant weight type: "Q8_0", "F16", ... */
    const char *chat_template;/* tokenizer.chat_template or NULL */
    int32_t n_vocab, n_ctx_train, n_embd, n_layer, n_head, n_head_kv, n_ff, n_rot;
    float rope_freq_base, rope_freq_scale, rms_eps;
    bool rope_neox, tied_output;
    uint64_t n_params;        /* weight elements */
    uint64_t n_bytes;         /* bytes of weight data */
    /* architecture specifics (qwen3, gemma3, phi3) */
    int32_t head_dim;         /* per-head size (may differ from n_embd / n_head) */
    int32_t n_swa;            /* sliding window of the sliding-window layers, 0: none */
    int32_t n_swa_layers;     /* how many layers use it */
    float rope_freq_base_swa; /* rope base of those layers */
    float logit_softcap;      /* final logit soft-capping, 0: none */
    const char *traits;       /* the family's traits in words ("q/k norm, ...") or "" */
} eng_model_info;

void eng_model_get_info(const eng_model *m, eng_model_info *out);
const eng_vocab *eng_model_vocab(const eng_model *m); /* lives as long as m */
/* Type name of a ggml type id ("Q4_K"), or NULL. */
const char *eng_type_name(int type);

/* ------------------------------------------------------------------------ */
/* Contexts: KV cache + batched forward pass                               */
/* ------------------------------------------------------------------------ */

typedef struct eng_context eng_context;

/* KV cache element types, chosen separately for K and V (values: the ggml
 * type ids). F16 is the default (as llama.cpp's); F32 is what the golden
 * logits were made with; Q8_0 stores blocks of 32 int8 with an F16 scale
 * (GGUF's Q8_0; a head size that is not a multiple of 32 ends in a shorter
 * block). The attention kernels read every type in place. */
typedef enum { ENG_KV_F32 = 0, ENG_KV_F16 = 1, ENG_KV_Q8_0 = 8 } eng_kv_type;
/* "f32", "f16", "q8_0"; NULL for a value that is none of them. */
const char *eng_kv_type_name(eng_kv_type t);
/* The type a name gives (case-insensitive); ENG_EINVAL for an unknown name. */
eng_status eng_kv_type_parse(const char *name, eng_kv_type *out);
/* Bytes of KV cache one token takes over all layers of m with these types. */
size_t eng_kv_bytes_per_token(const eng_model *m, eng_kv_type type_k, eng_kv_type type_v);

typedef struct {
    int32_t n_ctx;       /* max positions per sequence; 0: the model's n_ctx_train */
    int32_t n_seq_max;   /* sequences that can be live at once (>= 1) */
    int32_t n_batch_max; /* max tokens per eng_decode call (>= 1) */
    int32_t n_kv_tokens; /* KV budget in tokens over all sequences; 0: n_ctx * n_seq_max */
    int32_t n_threads;   /* 0: the model's n_threads */
    eng_kv_type type_k, type_v; /* KV cache element types (default ENG_KV_F16) */
} eng_context_params;

eng_context_params eng_context_default_params(void);
/* All buffers are allocated here; eng_decode allocates nothing. Free with
 * eng_context_free(). The model must outlive the context. */
eng_status eng_context_new(eng_model *m, const eng_context_params *p, eng_context **out);
void eng_context_free(eng_context *c);
int32_t eng_context_n_ctx(const eng_context *c);

/*
 * A ragged batch: token i belongs to sequence seq[i] at position pos[i].
 * Within one sequence, positions must continue that sequence's cache (the
 * first new position equals the number of positions cached) and ascend by 1.
 * logits[i] != 0 asks for token i's logits.
 */
typedef struct {
    int32_t n_tokens;
    const int32_t *token;
    const int32_t *pos;
    const int32_t *seq;
    const int8_t *logits;
} eng_batch;

/* Run the model over the batch, writing K/V into the cache. ENG_ECTXFULL
 * when a position exceeds n_ctx or the KV budget is exhausted (the cache is
 * unchanged then); ENG_EINVAL for bad ids, sequences or positions. */
eng_status eng_decode(eng_context *c, const eng_batch *b);
/* Logits (n_vocab floats) of batch token i, which must have asked for them;
 * NULL otherwise. Valid until the next eng_decode on this context. */
const float *eng_get_logits(const eng_context *c, int32_t i);
/* Number of positions cached for a sequence (0 if none). */
int32_t eng_seq_len(const eng_context *c, int32_t seq);
/* Drop positions >= p0 of a sequence (p0 = 0 frees it entirely). */
void eng_seq_truncate(eng_context *c, int32_t seq, int32_t p0);
/* Tokens of KV in use / budget, over all sequences. */
void eng_kv_usage(const eng_context *c, int32_t *used, int32_t *total);

/* ------------------------------------------------------------------------ */
/* OrthoRank: per-sequence token sparsity (docs/ORTHORANK.md)               */
/* ------------------------------------------------------------------------ */

typedef enum {
    ENG_ORTHORANK_METHOD_ORTHORANK = 0,  /* update the k*N tokens most orthogonal to the sink */
    ENG_ORTHORANK_METHOD_LAYER_SKIP = 1, /* baseline: remove whole layers (SLEB-style order) */
    ENG_ORTHORANK_METHOD_RANDOM = 2,     /* ablation: k*N tokens at random (seeded) */
    ENG_ORTHORANK_METHOD_INVERSE = 3     /* ablation: the k*N least orthogonal tokens */
} eng_orthorank_method;

typedef enum {
    ENG_ORTHORANK_DECODE_THRESHOLD = 0, /* a decode token is updated if it ranks in the best k of the
                                         * sequence's recent scores at that layer, held at rate k */
    ENG_ORTHORANK_DECODE_FULL = 1,      /* decoding runs densely */
    ENG_ORTHORANK_DECODE_OFF = 2        /* OrthoRank off for the whole sequence */
} eng_orthorank_decode;

typedef enum {
    ENG_ORTHORANK_GROUPING_NONE = 0, /* the sequence's decode rows decide alone */
    ENG_ORTHORANK_GROUPING_BATCH = 1 /* at an OrthoRank layer, the decode rows of the step's sequences that
                                      * chose "batch" (and have the same k) are updated or skipped together,
                                      * so a layer's weights are not read when all of them skip it; each
                                      * sequence's rate is still held at k. Its output then depends on its
                                      * batch companions (docs/ORTHORANK.md, "Batched decode grouping") */
} eng_orthorank_grouping;

/* A sequence's settings: plain data, copied by value (no pointers). */
typedef struct {
    double sparsity;         /* layer-equivalents in [0, 0.9]; 0 = dense (used as a float) */
    double token_ratio;      /* k in (0, 1] (used as a float: must not round to 0) */
    int32_t n_layers;        /* an explicit layer list (overrides sparsity); 0: none */
    int32_t layers[ENG_MAX_LAYERS];
    eng_orthorank_decode decode;
    eng_orthorank_method method;
    int32_t min_tokens;      /* prompt chunks shorter than this are selected token by token (default 16) */
    uint64_t seed;           /* for ENG_ORTHORANK_METHOD_RANDOM */
    eng_orthorank_grouping decode_grouping; /* default none */
} eng_orthorank_params;

/* Dense defaults: sparsity 0, token_ratio 1/3, decode threshold, method orthorank, min_tokens 16,
 * decode_grouping none. */
eng_orthorank_params eng_orthorank_default_params(void);
/* Names as the API spells them ("orthorank", "layer_skip", ...; "threshold", "full", "off"). */
const char *eng_orthorank_method_name(eng_orthorank_method m);
const char *eng_orthorank_decode_name(eng_orthorank_decode d);
const char *eng_orthorank_grouping_name(eng_orthorank_grouping g); /* "none", "batch" */

/*
 * The settings' one list: every field of eng_orthorank_params by the name
 * the HTTP API, the server's config (as "orthorank_<name>") and the CLI's
 * --orthorank specs use, with its kind and range. Callers parse settings by
 * looking fields up here and setting them through the setters below, which
 * check the value; eng_orthorank_check then checks the whole. Every check
 * names the field and explains itself in a message that reads after the
 * field's name ("must be in [0, 0.9]"), so a caller can say
 * "'orthorank.sparsity' must be in [0, 0.9]" or "key 'orthorank_sparsity':
 * must be in [0, 0.9]" without knowing any range.
 */
typedef enum {
    ENG_ORTHORANK_FIELD_NUMBER = 0,  /* a number in [lo, hi] (lo excluded when lo_open) */
    ENG_ORTHORANK_FIELD_INTEGER = 1, /* a whole number in [lo, hi] */
    ENG_ORTHORANK_FIELD_NAME = 2,    /* one of names[] */
    ENG_ORTHORANK_FIELD_LAYERS = 3   /* a list of distinct layer indices of the model */
} eng_orthorank_field_kind;

typedef struct {
    const char *name;           /* "sparsity", "token_ratio", "layers", "decode", "method", "min_tokens", "seed",
                                 * "decode_grouping" */
    eng_orthorank_field_kind kind;
    double lo, hi;              /* NUMBER and INTEGER */
    bool lo_open;
    const char *const *names;   /* NAME: the accepted names, NULL-terminated */
    const char *expect;         /* what a value must be: "a number", "one of \"threshold\", \"full\", \"off\"", ... */
    bool per_request;           /* part of a request's "orthorank" object (the others are the server's
                                 * or the study tools' knobs: min_tokens, seed) */
} eng_orthorank_field;

/* All fields (*n of them), in the order above. */
const eng_orthorank_field *eng_orthorank_fields(size_t *n);
/* The field called by the first len bytes of name, or NULL. */
const eng_orthorank_field *eng_orthorank_field_find(const char *name, size_t len);
/*
 * Set one field, checking the value alone; ENG_EINVAL with the reason in
 * msg (which reads after the field's name) and p unchanged. set_number:
 * NUMBER and INTEGER fields. set_name: NAME fields (s need not be
 * NUL-terminated; NULL: not a name). set_layers: n values (JSON numbers,
 * parsed text; NAN or a fraction is not a layer) checked against m's
 * layers (m NULL: against ENG_MAX_LAYERS; eng_orthorank_check does the rest
 * once the model is known); more values than the model has layers are
 * refused before any is read.
 */
eng_status eng_orthorank_set_number(eng_orthorank_params *p, const eng_orthorank_field *f, double v, char *msg,
                                    size_t len);
eng_status eng_orthorank_set_name(eng_orthorank_params *p, const eng_orthorank_field *f, const char *s, size_t n,
                                  char *msg, size_t len);
eng_status eng_orthorank_set_layers(eng_orthorank_params *p, const eng_model *m, const double *v, size_t n,
                                    char *msg, size_t len);
/* Whether two settings are the same in every field (layers: the first
 * n_layers): what a sparsified sequence's K/V depend on. */
bool eng_orthorank_params_equal(const eng_orthorank_params *a, const eng_orthorank_params *b);
/* Check whole settings against a model (m NULL: what can be checked without
 * one). ENG_OK, or ENG_EINVAL with *field = the field at fault (a name from
 * the list) and the reason in msg (both may be NULL). */
eng_status eng_orthorank_check(const eng_model *m, const eng_orthorank_params *p, const char **field, char *msg,
                               size_t len);

/*
 * A model's layer plan: the order in which layers become OrthoRank layers
 * (best first), the layer-skipping baseline's order, and per-layer decode
 * thresholds (the token_ratio-quantile of sink scores on calibration text;
 * NAN where unknown), which start the running decode rule while a sequence
 * has few scores of its own. Without a plan set, the engine uses the
 * fallback: deepest layers first, layer 0 excluded, for both orders, no
 * thresholds (source "fallback").
 */
typedef struct {
    const int32_t *order;        /* OrthoRank layer order */
    int32_t n_order;
    const int32_t *skip_order;   /* layer-skipping order */
    int32_t n_skip_order;
    const float *thresholds;     /* (n_layer) or NULL */
    float threshold_ratio;       /* the token_ratio the thresholds were calibrated for */
    const char *source;          /* "calibrated" or "fallback" */
} eng_orthorank_plan;

/* Install a plan (copied; layers must be distinct and in [0, n_layer)).
 * Not thread-safe: call before contexts or schedulers use the model. */
eng_status eng_model_set_orthorank_plan(eng_model *m, const eng_orthorank_plan *plan);
/* The plan in use (views valid while m lives and no new plan is set). */
void eng_model_get_orthorank_plan(const eng_model *m, eng_orthorank_plan *out);

/*
 * What a sequence actually got, counted from what the kernels skipped:
 * plain data, copied by value. token_layers_total counts (token, layer)
 * pairs processed; skipped counts pairs whose layer update was not
 * computed. flops_* count the weight products of the layer stack (the K/V
 * projections still paid are included in the total and not in the saving).
 */
typedef struct {
    eng_orthorank_method method;
    eng_orthorank_decode decode;
    eng_orthorank_grouping decode_grouping;
    float sparsity_requested, token_ratio; /* token_ratio: the k in force (see sparsity_target) */
    float sparsity_target;          /* planned: n_layers*(1-k)/n_layer (layer_skip: n_layers/n_layer) */
    int32_t n_layers;
    int32_t layers[ENG_MAX_LAYERS]; /* OrthoRank (or skipped) layers, in plan order */
    char layer_order_source[16];    /* the plan's source: "calibrated" or "fallback" */
    uint64_t prefill_tokens, prefill_total, prefill_skipped;
    uint64_t decode_tokens, decode_total, decode_skipped;
    double flops_total, flops_saved;
    double sparsity_effective;      /* skipped / total token-layers (0 when none) */
    double flops_saved_fraction;    /* flops_saved / flops_total (0 when none) */
    /* decode rows' update rate at the least and the most updated OrthoRank
     * layer (updated / decoded; 1 when nothing was decoded or no layer) */
    double decode_rate_min, decode_rate_max;
} eng_orthorank_stats;

/* Settings for a sequence from its next position on (call when the sequence
 * is empty, or holds only a prefix of the same prompt that a sequence with
 * the same settings computed: its sink data is kept); n_prompt: positions
 * below it are prompt (prefill rules), later ones decode. NULL params:
 * dense. Resets the sequence's stats. ENG_EINVAL for out-of-range values or
 * layers. A sparsity (no explicit layers) becomes n layers of the plan's
 * order and a k (docs/ORTHORANK.md, "Targets"): n = round(sparsity*L/(1-k))
 * (at least 1, at most the order's length) with the requested k when
 * n*(1-k)/L is within 0.02 of the request, else k' = 1 - sparsity*L/n
 * (at least 0.1). */
eng_status eng_seq_set_orthorank(eng_context *c, int32_t seq, const eng_orthorank_params *p,
                                 int32_t n_prompt);
/* The sequence's stats. */
eng_status eng_seq_get_orthorank_stats(const eng_context *c, int32_t seq, eng_orthorank_stats *out);

/* Per-layer sink scores of the last eng_decode for batch token i (n_layer
 * floats, NAN where not scored), for calibration tools. Valid until the next
 * eng_decode. Scores are recorded only for sequences with
 * eng_seq_record_scores(c, seq, true). */
void eng_seq_record_scores(eng_context *c, int32_t seq, bool on);
const float *eng_get_scores(const eng_context *c, int32_t i);

/* ------------------------------------------------------------------------ */
/* Grammars: output constrained while decoding (grammar*.c)                 */
/* ------------------------------------------------------------------------ */

/*
 * A grammar is GBNF text (llama.cpp's documented syntax: rules
 * `name ::= ...`, "literals", [classes] with ranges and ^ negation, `.`,
 * `*` `+` `?` `{m}` `{m,}` `{m,n}`, groups, `|`, # comments) compiled for one
 * vocabulary. A matcher follows one sequence's output: it gives the tokens
 * that keep the output a prefix of a sentence of the grammar, and allows
 * end-of-generation tokens only where the output is a whole sentence.
 * Left-recursive rules are refused. Every bound below is an error of
 * eng_grammar_new naming it, or a limit a matcher keeps (it drops parse
 * paths past max_stacks / max_depth: the output stays inside the grammar).
 */
typedef struct eng_grammar_vocab eng_grammar_vocab; /* a vocabulary's token bytes, as a trie */
typedef struct eng_grammar eng_grammar;             /* compiled, immutable, reference-counted */
typedef struct eng_matcher eng_matcher;             /* one sequence's parse state */

typedef struct {
    size_t max_bytes;      /* GBNF text */
    int32_t max_rules;     /* rules, counting those made for groups, repetitions and classes */
    int32_t max_elements;  /* elements over all rules (a{1000} is 1000) */
    int32_t max_stacks;    /* parse stacks a matcher holds at once */
    int32_t max_depth;     /* nesting depth of one parse stack */
    double max_compile_ms; /* wall time of eng_grammar_new */
} eng_grammar_limits;

/* max_bytes 1 MiB, 20000 rules, 200000 elements, 1024 stacks, depth 256, 2000 ms. */
eng_grammar_limits eng_grammar_default_limits(void);

/* The token table grammars of v's vocabulary use (built once: a sort of the
 * token byte strings). v must outlive it. Free with eng_grammar_vocab_free(). */
eng_status eng_grammar_vocab_new(const eng_vocab *v, eng_grammar_vocab **out);
void eng_grammar_vocab_free(eng_grammar_vocab *gv);

/* Compile GBNF text (len bytes; root: the start rule, NULL: "root") for gv,
 * which must outlive the grammar. ENG_EINVAL with a message in err (the
 * line:column and what was expected, or the bound exceeded, named as in
 * eng_grammar_limits); ENG_ENOMEM. *out holds one reference. Thread-safe. */
eng_status eng_grammar_new(const eng_grammar_vocab *gv, const char *gbnf, size_t len, const char *root,
                           const eng_grammar_limits *lim, eng_grammar **out, char *err, size_t errlen);
/* References (thread-safe); the last release frees. NULL is fine. */
void eng_grammar_retain(eng_grammar *g);
void eng_grammar_release(eng_grammar *g);

/* A matcher at the start of g's start rule (it holds a reference to g).
 * Free with eng_matcher_free(). One thread at a time; matchers of one
 * grammar may run on different threads. */
eng_status eng_matcher_new(eng_grammar *g, eng_matcher **out);
void eng_matcher_free(eng_matcher *m);
/* The allowed tokens now: bit t of bits ((n_vocab + 31) / 32 words) is set
 * when token t may come next (end-of-generation tokens: when the output is
 * a sentence). Returns the count of allowed tokens; -1 when memory ran
 * out; -2 when the grammar is too ambiguous to mask in bounded work (2e7
 * expansion steps per table built, and as many for the rest of a mask). Allocates nothing after the grammar's per-state tables
 * are built (on first use of a state). */
int32_t eng_matcher_mask(eng_matcher *m, uint32_t *bits);
/* Feed a token (its bytes) / raw bytes. ENG_EINVAL when they leave the
 * grammar (the state is unchanged then). An end-of-generation token is
 * accepted only where the output is a sentence, and changes nothing. */
eng_status eng_matcher_accept(eng_matcher *m, int32_t token);
eng_status eng_matcher_accept_bytes(eng_matcher *m, const char *s, size_t n);
/* The output so far is a sentence of the grammar / can be continued. */
bool eng_matcher_is_accepting(const eng_matcher *m);
bool eng_matcher_can_continue(const eng_matcher *m);

/* ------------------------------------------------------------------------ */
/* Scheduler: continuous batching of requests on its own thread            */
/* ------------------------------------------------------------------------ */

/*
 * DESIGN: eng_sched_new starts one scheduler thread that owns a context.
 * eng_sched_submit (any thread) queues a request; each scheduler step admits
 * queued requests FIFO while their KV need fits, forms one ragged batch (one
 * token for every decoding sequence first, then prefill chunks up to the
 * step's token budget), runs one forward pass, samples, and reports through
 * the request's callback. Callbacks run on the scheduler thread and must be
 * quick (copy and hand off). Cancellation is an atomic flag checked before
 * every step: a cancelled request gets its DONE event within one step and its
 * KV blocks are freed at once.
 */

typedef struct eng_sched eng_sched;
typedef struct eng_request eng_request;

#define ENG_MAX_TOP_LOGPROBS 20 /* the most alternatives a request may ask for per token */

/* How a pooling (embedding) request reduces its prompt's final-norm hidden
 * states to one vector; the numbers are GGUF's <arch>.pooling_type values. */
typedef enum {
    ENG_POOLING_NONE = 0, /* not an embedding request */
    ENG_POOLING_MEAN = 1, /* mean over every prompt position */
    ENG_POOLING_CLS = 2,  /* the first position */
    ENG_POOLING_LAST = 3  /* the last position */
} eng_pooling;

/* The pooling the model's file names (<arch>.pooling_type: mean, cls or
 * last), or ENG_POOLING_NONE when it names none (or one not supported). */
eng_pooling eng_model_pooling(const eng_model *m);
const char *eng_pooling_name(eng_pooling p);          /* "none", "mean", "cls", "last" */
eng_pooling eng_pooling_from_name(const char *name);  /* ENG_POOLING_NONE if unknown */

typedef struct {
    int32_t n_ctx;       /* max positions per sequence; 0: the model's n_ctx_train */
    int32_t n_seq_max;   /* sequences decoded together (slots) */
    int32_t n_batch_max; /* token budget of one step (decode tokens + prefill chunks) */
    int32_t n_kv_tokens; /* KV budget over all sequences; 0: n_ctx * n_seq_max */
    int32_t max_queue;   /* waiting requests beyond which submit says ENG_EBUSY */
    int32_t n_threads;   /* compute threads; 0: the model's */
    bool prefix_cache;   /* keep finished dense sequences' KV to reuse prompt prefixes */
    eng_kv_type type_k, type_v; /* KV cache element types (default ENG_KV_F16) */
} eng_sched_params;

eng_sched_params eng_sched_default_params(void);

typedef enum {
    ENG_FINISH_NONE = 0,
    ENG_FINISH_STOP = 1,      /* an end-of-generation token (not reported as a token) */
    ENG_FINISH_LENGTH = 2,    /* max_tokens or the context end reached */
    ENG_FINISH_CANCELLED = 3, /* eng_request_cancel, or the scheduler stopped */
    ENG_FINISH_ERROR = 4      /* see status */
} eng_finish_reason;

typedef enum {
    ENG_EVENT_PROMPT = 1, /* log-probability of prompt token `index` (>= 1), when asked */
    ENG_EVENT_TOKEN = 2,  /* generated token number `index` (from 0) */
    ENG_EVENT_DONE = 3    /* last event of a request */
} eng_event_type;

typedef struct {
    eng_event_type type;
    eng_request *req;
    void *user;
    /* PROMPT and TOKEN */
    int32_t index;
    int32_t token;
    float logprob;               /* log p(token) from the raw logits (when n_logprobs >= 0) */
    int32_t n_top;               /* alternatives in top_ids/top_logprobs (<= ENG_MAX_TOP_LOGPROBS) */
    const int32_t *top_ids;      /* valid during the callback only */
    const float *top_logprobs;
    /* DONE */
    eng_finish_reason finish;
    eng_status status;
    int32_t n_prompt, n_generated, n_cached; /* tokens; n_cached: prompt tokens reused from cache */
    double t_queue, t_prompt, t_generate;    /* seconds waiting, prefilling, generating */
    const eng_orthorank_stats *orthorank;    /* DONE: what the request got (valid during the callback) */
    const float *embedding;  /* DONE of a pooling request that completed: the pooled hidden state
                              * (n_embd floats, not normalised; valid during the callback), else NULL */
    int32_t n_embd;
} eng_event;

typedef void (*eng_event_fn)(const eng_event *ev, void *user);

typedef struct {
    const int32_t *prompt;   /* copied by submit; n_prompt >= 1 */
    size_t n_prompt;
    int32_t max_tokens;      /* >= 0; clipped to the context end (finish LENGTH) */
    int32_t min_tokens;      /* end-of-generation tokens are suppressed before this many */
    bool ignore_eos;         /* never stop on end-of-generation tokens (with a grammar: only where it accepts) */
    eng_sampler_params sampling;
    int32_t n_logprobs;      /* -1: none; 0: the chosen token's only; n: also the top n
                              * (<= ENG_MAX_TOP_LOGPROBS) */
    bool prompt_logprobs;    /* emit PROMPT events for prompt tokens 1..n-1 (echo) */
    const eng_orthorank_params *orthorank; /* copied; NULL: dense */
    eng_event_fn on_event;   /* required */
    void *user;
    /* Prefix-cache partition, an opaque tag: a request reuses only the KV
     * that requests with the same tag left (0 is a tag like any other). The
     * server gives each API key (and cache_salt) its own. */
    uint64_t cache_scope;
    /* Embeddings: a pooling request only prefills its prompt (no sampling,
     * no logits; max_tokens and sampling are ignored) and its DONE event
     * carries the prompt's final-norm hidden states pooled as asked. */
    eng_pooling pooling;     /* ENG_POOLING_NONE (0): a generation */
    /* eng_sched_submit_many only: 0, or 1 + the index of an earlier request
     * of the same call (its "leader", itself with fork_of 0, and the same
     * prompt) whose prompt KV this request shares: the prompt is computed
     * once, then forked (see eng_sched_submit_many). */
    int32_t fork_of;
    /* Structured output: NULL, free text; else every token keeps the output
     * inside this grammar and end-of-generation comes only where it accepts
     * (the mask applies before any sampling transform; logprobs are those of
     * the masked distribution). The request holds its own reference. */
    eng_grammar *grammar;
} eng_request_params;

/* Start the scheduler thread. The model must outlive it. Free with eng_sched_free(). */
eng_status eng_sched_new(eng_model *m, const eng_sched_params *p, eng_sched **out);
/* Queue a request. ENG_EINVAL for bad params (bad token ids, missing
 * callback), ENG_ECTXFULL when the prompt cannot fit the context at all,
 * ENG_EBUSY when the queue is full, ENG_ESTOPPED while draining. On success
 * *out holds a reference the caller must drop with eng_request_release();
 * exactly one DONE event follows, always. Thread-safe. */
eng_status eng_sched_submit(eng_sched *s, const eng_request_params *p, eng_request **out);
/*
 * Queue n requests at once, all or none (the queue must have room for all
 * n: ENG_EBUSY otherwise; any one refused by eng_sched_validate refuses the
 * call with its status). out receives n references. A request whose fork_of
 * is j + 1 joins the family of request j (its leader, fork_of 0, same
 * prompt, same OrthoRank settings; ENG_EINVAL otherwise); a family's members
 * follow their leader contiguously and are admitted together (n slots and
 * their KV at once; a family larger than n_seq_max is ENG_ECTXFULL). The
 * leader prefills the prompt once; then each member gets the prompt's KV
 * (full blocks shared by reference, the partial last block copied) and
 * samples its first token from the same logits with its own sampler, so a
 * member equals the same request submitted alone (same seed), its DONE
 * reporting the whole prompt as cached (n_cached = n_prompt). Members keep
 * nothing in the prefix cache. Prompt log-probabilities (prompt_logprobs)
 * come from the leader only.
 */
eng_status eng_sched_submit_many(eng_sched *s, const eng_request_params *p, size_t n, eng_request **out);
/* What eng_sched_submit would answer for p, without queueing anything:
 * ENG_OK, ENG_EINVAL (bad params: token ids, sampler or OrthoRank settings,
 * missing callback) or ENG_ECTXFULL (the prompt cannot fit the context, or
 * the request's KV need exceeds the whole budget). The queue's state
 * (ENG_EBUSY, ENG_ESTOPPED) is not looked at. Allocates nothing. Thread-safe. */
eng_status eng_sched_validate(const eng_sched *s, const eng_request_params *p);
/* Ask for the request to stop (thread-safe, idempotent, any time before release). */
void eng_request_cancel(eng_request *r);
/* Drop the caller's reference (after which r must not be used). */
void eng_request_release(eng_request *r);

typedef struct {
    int32_t running, waiting;    /* requests decoding or prefilling / queued */
    int32_t kv_used, kv_total;   /* KV tokens held by running requests / budget */
    int32_t kv_cached;           /* KV tokens kept for prefix reuse (evicted on demand) */
    int32_t kv_held;             /* KV tokens of the blocks actually held (a block shared by forks once),
                                  * in whole blocks: what the cache's memory holds */
    int32_t last_batch_tokens;   /* tokens in the last step */
    uint64_t steps;              /* steps run so far */
    uint64_t prompt_tokens;      /* prompt tokens computed so far (reused and forked ones not counted) */
    bool draining;
} eng_sched_stats;

/* A consistent snapshot (thread-safe). */
void eng_sched_get_stats(eng_sched *s, eng_sched_stats *out);
/* Stop admitting: later submits get ENG_ESTOPPED; running and queued requests
 * go on. Thread-safe. */
void eng_sched_drain(eng_sched *s);
/* Cancel every request still live (each gets its DONE event), stop the
 * thread and free. Call from a thread that is not a callback. NULL is fine. */
void eng_sched_free(eng_sched *s);

/* Kernel level in use: "scalar", "avx2", "avx2vnni" or "avx512" (the
 * environment variable ORTHOSERVE_ISA names one; unset or empty: the best
 * this CPU has). "none" when ORTHOSERVE_ISA names an unknown level or one the
 * CPU lacks: then every eng_model_load fails, saying why. */
const char *eng_kernel_name(void);

/* ENG_OK when the kernel level can be used, else ENG_EUNSUPPORTED with a
 * message naming ORTHOSERVE_ISA, the level asked for, the CPU features
 * missing and the levels this CPU has (the one eng_model_load gives). */
eng_status eng_kernels_check(char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif /* ORTHOSERVE_ENGINE_H */
