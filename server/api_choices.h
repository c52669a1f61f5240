/*
 * api_choices.h - completion requests with several choices: "n" > 1, and
 * /v1/completions with a list of prompts (api_choices.c has the design).
 * Loop thread.
 */
#ifndef ORTHOSERVE_API_CHOICES_H
#define ORTHOSERVE_API_CHOICES_H

#include "http.h"
#include "request.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

/* Submit the validated requests (one per prompt, each with the same
 * n_choices) as one group of n_prompts * n_choices choices and answer r
 * when all have ended. Takes the requests' echo texts; the caller frees
 * the requests. */
void choices_submit(hreq *r, api_request *reqs, size_t n_prompts);
/* Whether a /v1/completions body's "prompt" is a list of several prompts. */
bool choices_is_prompt_list(json_t *body);
/* Validate such a body (each prompt as its own request, off the loop),
 * then submit it or reply with the error (param "prompt[i]"). */
void choices_completions(hreq *r, const api_limits *lim);

#endif
