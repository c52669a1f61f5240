/*
 * pooling.c - what embedding requests read of the model and the forward
 * pass: the pooling type a GGUF file names, pooling names, and a batch
 * row's final-norm hidden state (the scheduler pools these per request).
 */
#include "context.h"
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static const char *const POOLING_NAMES[] = {"none", "mean", "cls", "last"};

const char *eng_pooling_name(eng_pooling p)
{
    return (unsigned)p < sizeof POOLING_NAMES / sizeof *POOLING_NAMES ? POOLING_NAMES[p] : "none";
}

eng_pooling eng_pooling_from_name(const char *name)
{
    for (unsigned i = 1; name && i < sizeof POOLING_NAMES / sizeof *POOLING_NAMES; i++)
        if (!strcmp(name, POOLING_NAMES[i])) return (eng_pooling)i;
    return ENG_POOLING_NONE;
}

eng_pooling eng_model_pooling(const eng_model *m)
{
    char key[64];
    uint64_t v;
    snprintf(key, sizeof key, "%s.pooling_type", m->arch);
    if (!eng__gguf_find(m->gguf, key) || !eng__gguf_get_u64(m->gguf, key, &v)) return ENG_POOLING_NONE;
    return v >= ENG_POOLING_MEAN && v <= ENG_POOLING_LAST ? (eng_pooling)v : ENG_POOLING_NONE;
}

/* The residual stream of row i after the last layer (c->x, which the
 * forward pass leaves in place for every row), through the output norm:
 * the same values the logits are computed from. */
void eng__hidden_row(const eng_context *c, int32_t i, float *out)
{
    const eng_model *m = c->m;
    const int64_t E = m->n_embd;
    const float *x = c->x + (int64_t)i * E;
    double sum = 0.0;
    for (int64_t k = 0; k < E; k++) sum += (double)(x[k] * x[k]);
    const float scale = 1.0f / sqrtf((float)(sum / (double)E) + m->rms_eps);
    for (int64_t k = 0; k < E; k++) out[k] = (x[k] * scale) * m->output_norm[k];
}
