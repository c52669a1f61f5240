/*
 * orthorank_json.c - the "orthorank" request settings (validation) and the
 * "orthorank" object every response reports, built from the statistics the
 * engine counted from what its kernels skipped (never from the request), and
 * GET /v1/orthorank.
 */
#include "orthorank_json.h"
#include "server.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define FAIL(p, ...)                                                                                          \
    do {                                                                                                      \
        *param = p;                                                                                           \
        snprintf(msg, msglen, __VA_ARGS__);                                                                   \
        return -1;                                                                                            \
    } while (0)

int orthorank_parse(json_t *v, const srv_config *cfg, int32_t n_layer, orank_req *out, const char **param,
                    char *msg, size_t msglen)
{
    memset(out, 0, sizeof *out);
    out->sparsity = cfg->or_sparsity;
    out->token_ratio = -1;
    snprintf(out->decode, sizeof out->decode, "%s", cfg->or_decode);
    snprintf(out->method, sizeof out->method, "%s", cfg->or_method);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_object(v)) FAIL("orthorank", "'orthorank' must be an object");
    out->present = true;
    const char *key;
    json_t *x;
    json_object_foreach(v, key, x) {
        if (!strcmp(key, "sparsity")) {
            if (!json_is_number(x)) FAIL("orthorank.sparsity", "'orthorank.sparsity' must be a number");
            double d = json_number_value(x);
            if (!(d >= 0 && d <= 0.9)) FAIL("orthorank.sparsity", "'orthorank.sparsity' must be in [0, 0.9]");
            out->sparsity = d;
        } else if (!strcmp(key, "token_ratio")) {
            if (!json_is_number(x)) FAIL("orthorank.token_ratio", "'orthorank.token_ratio' must be a number");
            double d = json_number_value(x);
            if (!(d > 0 && d <= 1)) FAIL("orthorank.token_ratio", "'orthorank.token_ratio' must be in (0, 1]");
            if (!((float)d > 0)) /* the engine takes a float */
                FAIL("orthorank.token_ratio", "'orthorank.token_ratio' must be in (0, 1], got %g (0 as a 32-bit float)",
                     d);
            out->token_ratio = d;
        } else if (!strcmp(key, "layers")) {
            if (!json_is_array(x)) FAIL("orthorank.layers", "'orthorank.layers' must be an array of layer indices");
            size_t i;
            json_t *e;
            if (json_array_size(x) > sizeof out->layers / sizeof out->layers[0] || json_array_size(x) > (size_t)n_layer)
                FAIL("orthorank.layers", "'orthorank.layers' lists more layers than the model has (%d)", n_layer);
            json_array_foreach(x, i, e) {
                if (!json_is_integer(e) || json_integer_value(e) < 0 || json_integer_value(e) >= n_layer)
                    FAIL("orthorank.layers", "'orthorank.layers' must hold integers in [0, %d)", n_layer);
                for (size_t k = 0; k < out->n_layers; k++)
                    if (out->layers[k] == (int32_t)json_integer_value(e))
                        FAIL("orthorank.layers", "'orthorank.layers' lists layer %d twice", out->layers[k]);
                out->layers[out->n_layers++] = (int32_t)json_integer_value(e);
            }
        } else if (!strcmp(key, "decode")) {
            const char *s = json_string_value(x);
            if (!s || (strcmp(s, "threshold") && strcmp(s, "full") && strcmp(s, "off")))
                FAIL("orthorank.decode", "'orthorank.decode' must be one of \"threshold\", \"full\", \"off\"");
            snprintf(out->decode, sizeof out->decode, "%s", s);
        } else if (!strcmp(key, "method")) {
            const char *s = json_string_value(x);
            if (!s || (strcmp(s, "orthorank") && strcmp(s, "layer_skip") && strcmp(s, "random") && strcmp(s, "inverse")))
                FAIL("orthorank.method",
                     "'orthorank.method' must be one of \"orthorank\", \"layer_skip\", \"random\", \"inverse\"");
            snprintf(out->method, sizeof out->method, "%s", s);
        } else {
            *param = "orthorank";
            snprintf(msg, msglen, "unknown field 'orthorank.%s' (known: sparsity, token_ratio, layers, decode, method)",
                     key);
            return -1;
        }
    }
    double k = out->token_ratio > 0 ? out->token_ratio : cfg->or_token_ratio;
    if (out->sparsity > 0 && out->n_layers == 0 && strcmp(out->method, "layer_skip") && (float)k >= 1)
        FAIL("orthorank.token_ratio",
             "'orthorank.token_ratio' 1 updates every token, so no sparsity above 0 can be reached");
    return 0;
}

eng_orthorank_params orthorank_params(const orank_req *req, const srv_config *cfg)
{
    eng_orthorank_params p = eng_orthorank_default_params();
    p.sparsity = (float)req->sparsity;
    p.token_ratio = (float)(req->token_ratio > 0 ? req->token_ratio : cfg->or_token_ratio);
    p.layers = req->n_layers ? req->layers : NULL;
    p.n_layers = (int32_t)req->n_layers;
    /* both names were validated by orthorank_parse / the config */
    eng_or_decode_from_name(req->decode, strlen(req->decode), &p.decode);
    eng_or_method_from_name(req->method, strlen(req->method), &p.method);
    p.min_tokens = (int32_t)cfg->or_min_tokens;
    return p;
}

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

json_t *orthorank_json(const orank_req *req, const eng_orthorank_stats *st, int32_t n_prompt, int32_t n_gen,
                       int32_t n_layer)
{
    json_t *o = json_object();
    json_t *layers = json_array();
    if (st) {
        json_object_set_new(o, "method", json_string(eng_or_method_name(st->method)));
        json_object_set_new(o, "decode_policy", json_string(eng_or_decode_name(st->decode)));
        json_object_set_new(o, "sparsity_requested", ratio_json(st->sparsity_requested));
        json_object_set_new(o, "token_ratio", ratio_json(st->token_ratio));
        for (int32_t i = 0; i < st->n_layers; i++) json_array_append_new(layers, json_integer(st->layers[i]));
        json_object_set_new(o, "layers", layers);
        json_object_set_new(o, "layer_order_source",
                            json_string(st->layer_order_source ? st->layer_order_source : "fallback"));
        json_object_set_new(o, "prefill", phase_json(st->prefill_tokens, st->prefill_total, st->prefill_skipped));
        json_object_set_new(o, "decode", phase_json(st->decode_tokens, st->decode_total, st->decode_skipped));
        uint64_t tot = st->prefill_total + st->decode_total, sk = st->prefill_skipped + st->decode_skipped;
        json_object_set_new(o, "sparsity_effective", ratio_json(tot ? (double)sk / (double)tot : 0.0));
        json_object_set_new(o, "flops_saved_fraction",
                            ratio_json(st->flops_total > 0 ? st->flops_saved / st->flops_total : 0.0));
        return o;
    }
    /* Never ran (e.g. cancelled while queued): the settings, nothing computed. */
    json_object_set_new(o, "method", json_string(req->method));
    json_object_set_new(o, "decode_policy", json_string(req->decode));
    json_object_set_new(o, "sparsity_requested", ratio_json(req->sparsity));
    json_object_set_new(o, "token_ratio", req->token_ratio > 0 ? ratio_json(req->token_ratio) : json_null());
    for (size_t i = 0; i < req->n_layers; i++) json_array_append_new(layers, json_integer(req->layers[i]));
    json_object_set_new(o, "layers", layers);
    json_object_set_new(o, "layer_order_source", json_string("none"));
    (void)n_layer;
    json_object_set_new(o, "prefill", phase_json((uint64_t)n_prompt, 0, 0));
    json_object_set_new(o, "decode", phase_json((uint64_t)n_gen, 0, 0));
    json_object_set_new(o, "sparsity_effective", json_real(0));
    json_object_set_new(o, "flops_saved_fraction", json_real(0));
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
    json_t *d = json_object();
    json_object_set_new(d, "sparsity", json_real(s->cfg->or_sparsity));
    json_object_set_new(d, "token_ratio", json_real(s->cfg->or_token_ratio));
    json_object_set_new(d, "decode", json_string(s->cfg->or_decode));
    json_object_set_new(d, "method", json_string(s->cfg->or_method));
    json_object_set_new(d, "min_tokens", json_integer(s->cfg->or_min_tokens));
    json_object_set_new(o, "defaults", d);
    http_reply_json(r, 200, o);
}
