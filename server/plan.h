/*
 * plan.h - OrthoRank layer plans on disk (schema "orthoserve-plan/1").
 *
 * A plan is written by `orthoserve calibrate` and read by `orthoserve
 * perplexity --plan` and by the server (MODEL.orthorank.json beside the
 * model). The file:
 *
 *   {"schema": "orthoserve-plan/1", "model_file": "...", "model_sha256": "..." (optional),
 *    "n_layer": L, "token_ratio": K, "exclude": "first",
 *    "calibration": {"file": "...", "chunks": N, "ctx": C, "start_chunk": S},
 *    "orthorank_order": [...], "orthorank_nll": [...],
 *    "layer_skip_order": [...], "layer_skip_nll": [...],
 *    "thresholds": [L numbers or null], "dense_nll": x}
 *
 * Required when reading: schema, n_layer, token_ratio, orthorank_order,
 * layer_skip_order. Everything else is optional; if present it is checked
 * (nll arrays as long as their order, thresholds exactly n_layer entries,
 * each finite or null).
 */
#ifndef ORTHOSERVE_PLAN_H
#define ORTHOSERVE_PLAN_H

#include "orthoserve/engine.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#define PLAN_SCHEMA "orthoserve-plan/1"

typedef struct {
    char *model_file;    /* may be NULL */
    char *model_sha256;  /* may be NULL */
    int32_t n_layer;
    float token_ratio;
    char *exclude;       /* "first,last" | "first" | "none" (may be NULL) */
    char *calib_file;    /* may be NULL */
    int32_t calib_chunks, calib_ctx, calib_start_chunk;
    int32_t *order;      /* OrthoRank layer order */
    double *order_nll;   /* n_order entries or NULL; NAN = unknown */
    int32_t n_order;
    int32_t *skip_order; /* layer-skipping order */
    double *skip_nll;    /* n_skip_order entries or NULL */
    int32_t n_skip_order;
    float *thresholds;   /* n_layer entries (NAN = none) or NULL */
    double dense_nll;    /* NAN when absent */
} plan_data;

/* Zero a plan (all pointers NULL, dense_nll NAN). */
void plan_data_init(plan_data *p);
/* Free what a plan owns and re-initialise it. */
void plan_data_free(plan_data *p);

/* Validate and copy a parsed plan. n_layer < 0 skips the n_layer check
 * against a model. Returns 0, or -1 with a message in err. */
int plan_from_json(const json_t *root, int32_t n_layer, plan_data *out, char *err, size_t errlen);
/* A new JSON object for the plan (json_decref it), or NULL on allocation failure. */
json_t *plan_to_json(const plan_data *p);

/* Read / write a plan file. 0 or -1 with a message (naming the file) in err. */
int plan_read(const char *path, int32_t n_layer, plan_data *out, char *err, size_t errlen);
int plan_write(const char *path, const plan_data *p, char *err, size_t errlen);

/* Install a validated plan into a model (eng_model_set_orthorank_plan, source
 * "calibrated"). 0 or -1 with a message. */
int plan_apply(const plan_data *p, eng_model *m, char *err, size_t errlen);

/* plan_read (checked against the model's n_layer) + plan_apply. 0 or -1. */
int plan_load(const char *path, eng_model *m, char *err, size_t errlen);

/* The default plan beside a model: for "dir/name.gguf" the first of
 * "dir/name.orthorank.json" and "dir/name.gguf.orthorank.json" that exists.
 * Returns 0 when none exists (the model keeps its fallback plan), 1 when one
 * was loaded (its path goes to err as information), -1 when one exists but is
 * invalid (message in err). */
int plan_load_default(const char *model_path, eng_model *m, char *err, size_t errlen);

/* The default plan path(s) for a model: writes candidate i (0 or 1) to buf.
 * Returns 0, or -1 if buf is too small or i is out of range. */
int plan_default_path(const char *model_path, int i, char *buf, size_t cap);

#endif
