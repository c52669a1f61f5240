/*
 * chat_tmpl.h - the model's own chat template (tokenizer.chat_template, or a
 * --chat-template-file) rendered with the engine's Jinja interpreter from a
 * chat request's JSON, as transformers' apply_chat_template does.
 */
#ifndef ORTHOSERVE_CHAT_TMPL_H
#define ORTHOSERVE_CHAT_TMPL_H

#include "toolcall.h"

#include <jansson.h>
#include <orthoserve/engine.h>
#include <stdbool.h>

typedef struct chat_tmpl chat_tmpl;

/* Parse template source; bos / eos are the special tokens' text passed as
 * bos_token / eos_token (NULL: not passed). NULL with err filled on a syntax
 * error or no memory. Free with chat_tmpl_free() (NULL is fine). Immutable:
 * renders may run on any thread. */
chat_tmpl *chat_tmpl_new(const char *src, size_t len, const char *bos, const char *eos, char *err, size_t errlen);
void chat_tmpl_free(chat_tmpl *t);
const char *chat_tmpl_bos(const chat_tmpl *t); /* the bos_token passed, or NULL */
/* The tool-call format of the template's family (toolcall.h: tc_detect) and
 * whether it writes <think> blocks, detected from its source once. */
tc_format chat_tmpl_tool_format(const chat_tmpl *t);
bool chat_tmpl_thinking(const chat_tmpl *t);

/*
 * Render a request body: messages (content-part arrays flattened to their
 * text parts joined by "\n"; any role goes to the template), tools (null when
 * absent), add_generation_prompt (body's, default true), then every key of
 * chat_template_kwargs (e.g. enable_thinking). Tool-call "arguments" strings
 * holding a JSON object are given to the template as objects (what HF
 * templates expect); if that rendering fails, it is tried again with null
 * contents as "" and then with the arguments as sent (llama.cpp's server
 * adapts the same way).
 * 0: *out (malloc'd, NUL-terminated, *len bytes). -1: refused, *param names
 * the field and msg says why (the template's raise_exception text, or its
 * error): a 400. -2: no memory.
 */
int chat_tmpl_render(const chat_tmpl *t, const json_t *body, char **out, size_t *len, const char **param, char *msg,
                     size_t msglen);

#endif
