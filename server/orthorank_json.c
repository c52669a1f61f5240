/*
 * orthorank_json.c - OrthoRank in the HTTP API's answers: the "orthorank"
 * object every response reports, rendered from the stats the engine counted
 * from what its kernels skipped (never from the request), and GET
 * /v1/orthorank. A request's "orthorank" settings are parsed in request.c.
 */
#include "orthorank_json.h"
#include "server.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static json_t *phase_json(uint64_t tokens, uint64_t total, uint64_t skipped)
{
    json_t *p = json_object();
    json_object_set_new(p, "tokens", json_integer((json_int_t)tokens));
    json_object_set_new(p, "token_layers_total", json_integer((json_int_t)total));
    json_object_set_new(p, "token_layers_skipped", json_integer((json_int_t)skipped));
    return p;
}

/* 4 significant decimals, as the spec's example shows. */
static json_t *ratio_json(double v)
{
    return json_real(round(v * 10000.0) / 10000.0);
}

json_t *orthorank_json(const eng_orthorank_stats *st)
{
    json_t *o = json_object();
    json_t *layers = json_array();
    json_object_set_new(o, "method", json_string(eng_orthorank_method_name(st->method)));
    json_object_set_new(o, "decode_policy", json_string(eng_orthorank_decode_name(st->decode)));
    json_object_set_new(o, "decode_grouping", json_string(eng_orthorank_grouping_name(st->decode_grouping)));
    json_object_set_new(o, "sparsity_requested", ratio_json(st->sparsity_requested));
    json_object_set_new(o, "sparsity_target", ratio_json(st->sparsity_target));
    json_object_set_new(o, "token_ratio", ratio_json(st->token_ratio));
    for (int32_t i = 0; i < st->n_layers; i++) json_array_append_new(layers, json_integer(st->layers[i]));
    json_object_set_new(o, "layers", layers);
    /* "" only in stats the engine never filled: nothing ran */
    json_object_set_new(o, "layer_order_source",
                        json_string(st->layer_order_source[0] ? st->layer_order_source : "none"));
    json_object_set_new(o, "prefill", phase_json(st->prefill_tokens, st->prefill_total, st->prefill_skipped));
    json_object_set_new(o, "decode", phase_json(st->decode_tokens, st->decode_total, st->decode_skipped));
    json_object_set_new(o, "sparsity_effective", ratio_json(st->sparsity_effective));
    json_object_set_new(o, "flops_saved_fraction", ratio_json(st->flops_saved_fraction));
    return o;
}

void api_orthorank(hreq *r)
{
    srv *s = r->s;
    if (!s->model) {
        http_reply_error(r, 503, "unavailable_error", "loading", NULL, "the model is still loading");
        return;
    }
    eng_orthorank_plan p;
    eng_model_get_orthorank_plan(s->model, &p);
    json_t *o = json_object();
    json_object_set_new(o, "object", json_string("orthorank.plan"));
    json_object_set_new(o, "model", json_string(s->model_id));
    json_object_set_new(o, "n_layer", json_integer(s->info.n_layer));
    json_object_set_new(o, "layer_order_source", json_string(p.source ? p.source : "fallback"));
    json_object_set_new(o, "plan_file", s->plan_file[0] ? json_string(s->plan_file) : json_null());
    json_t *ord = json_array(), *sk = json_array(), *th = json_array();
    for (int32_t i = 0; i < p.n_order; i++) json_array_append_new(ord, json_integer(p.order[i]));
    for (int32_t i = 0; i < p.n_skip_order; i++) json_array_append_new(sk, json_integer(p.skip_order[i]));
    for (int32_t i = 0; p.thresholds && i < s->info.n_layer; i++)
        json_array_append_new(th, isnan(p.thresholds[i]) ? json_null() : json_real(p.thresholds[i]));
    json_object_set_new(o, "orthorank_order", ord);
    json_object_set_new(o, "layer_skip_order", sk);
    json_object_set_new(o, "thresholds", p.thresholds ? th : (json_decref(th), json_null()));
    json_object_set_new(o, "threshold_token_ratio", p.thresholds ? json_real(p.threshold_ratio) : json_null());
    const eng_orthorank_params *d = &s->cfg->orthorank;
    json_t *dj = json_object();
    json_object_set_new(dj, "sparsity", json_real(d->sparsity));
    json_object_set_new(dj, "token_ratio", json_real(d->token_ratio));
    json_object_set_new(dj, "decode", json_string(eng_orthorank_decode_name(d->decode)));
    json_object_set_new(dj, "method", json_string(eng_orthorank_method_name(d->method)));
    json_object_set_new(dj, "min_tokens", json_integer(d->min_tokens));
    json_object_set_new(dj, "decode_grouping", json_string(eng_orthorank_grouping_name(d->decode_grouping)));
    json_object_set_new(o, "defaults", dj);
    http_reply_json(r, 200, o);
}
