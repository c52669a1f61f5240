/*
 * toolcall.h - a model's generated text split into content, reasoning and
 * OpenAI tool calls, for the call formats of the common chat-template
 * families (issue 20 part 4). Pure: no HTTP, no engine.
 */
#ifndef ORTHOSERVE_TOOLCALL_H
#define ORTHOSERVE_TOOLCALL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    TC_NONE = 0,     /* no tool calls: everything is content */
    TC_HERMES,       /* <tool_call>{"name", "arguments"}</tool_call> (Hermes, Qwen2.5, Qwen3) */
    TC_QWEN3_CODER,  /* <tool_call><function=f><parameter=p>v</parameter></function></tool_call> */
    TC_LLAMA3,       /* {"name", "parameters"} as the whole reply, or after <|python_tag|> */
    TC_MISTRAL,      /* [TOOL_CALLS][{"name", "arguments", "id"}, ...] (Nemo) */
    TC_MISTRAL_ARGS, /* [TOOL_CALLS]f[CALL_ID]id[ARGS]{...} repeated (Small 3.2) */
    TC_GRANITE,      /* <|tool_call|>[{"name", "arguments"}, ...] */
    TC_FUNCTIONARY,  /* recipient\nbody segments joined by ">>>" ("all" = content) */
    TC_DEEPSEEK      /* <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n{...}\n```... */
} tc_format;

typedef struct {
    tc_format fmt;
    bool thinking;   /* the family writes <think>...</think> before its answer */
    bool think_open; /* the prompt ended inside a think block (DeepSeek-R1's "<think>\n") */
    uint64_t id_seed;/* call ids are derived from it and the call's index */
} tc_opts;

typedef struct {
    char id[32];     /* "call_" + 24 characters */
    char *name;
    char *arguments; /* a JSON object, compact, as OpenAI sends it (a string) */
} tc_call;

typedef struct {
    char *content;   /* text outside calls and reasoning; "" when none */
    char *reasoning; /* text inside <think>...</think>, or NULL */
    size_t content_n, reasoning_n; /* their lengths (generated text may hold NUL bytes) */
    tc_call *calls;
    size_t n_calls;
    bool pending;    /* partial: text held back (a call or a marker has begun) */
} tc_result;

/* The call format and thinking of a Jinja template, from its markers. */
tc_format tc_detect(const char *tmpl);
bool tc_detect_thinking(const char *tmpl);
const char *tc_format_name(tc_format f);

/*
 * Split text (len bytes). partial: the text is a prefix of a reply still
 * being generated: calls are returned only once complete, and content stops
 * before anything that may still become a call (pending says so). Otherwise
 * the text is final: a malformed or unfinished call is left in the content
 * as plain text, never an error. 0, or -1 when memory ran out. Free with
 * tc_result_free().
 */
int tc_parse(const tc_opts *o, const char *text, size_t len, bool partial, tc_result *out);
void tc_result_free(tc_result *r);

#endif
