/* test_plan.c - OrthoRank layer plans (server/plan.c): JSON round trip,
 * validation messages, installation into a model, the default plan path. */
#include "plan.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MODEL "models/stories260K.gguf"

static char *tmpdir(void)
{
    static char tmpl[64];
    snprintf(tmpl, sizeof tmpl, "/tmp/test_plan.XXXXXX");
    char *d = mkdtemp(tmpl);
    cr_assert_not_null(d);
    return d;
}

static void sample_plan(plan_data *p)
{
    plan_data_init(p);
    static const int32_t order[] = {3, 1, 2, 4}, skip[] = {4, 3, 1, 2};
    static const double onll[] = {1.25, 1.3125, 1.40625, 1.5}, snll[] = {1.3, 1.45, 1.7, 2.1};
    p->model_file = strdup("stories260K.gguf");
    p->exclude = strdup("first");
    p->calib_file = strdup("tinystories_val.txt");
    p->n_layer = 5;
    p->token_ratio = 1.0f / 3;
    p->calib_chunks = 32;
    p->calib_ctx = 256;
    p->calib_start_chunk = 200;
    p->n_order = p->n_skip_order = 4;
    p->order = malloc(sizeof order);
    p->skip_order = malloc(sizeof skip);
    p->order_nll = malloc(sizeof onll);
    p->skip_nll = malloc(sizeof snll);
    p->thresholds = malloc(5 * sizeof *p->thresholds);
    memcpy(p->order, order, sizeof order);
    memcpy(p->skip_order, skip, sizeof skip);
    memcpy(p->order_nll, onll, sizeof onll);
    memcpy(p->skip_nll, snll, sizeof snll);
    p->thresholds[0] = NAN; /* no scores for layer 0 */
    p->thresholds[1] = 0.123456789f;
    p->thresholds[2] = 0.2f;
    p->thresholds[3] = 1.0f / 3;
    p->thresholds[4] = 0.987654f;
    p->dense_nll = 1.356991234567;
}

Test(plan, round_trip_through_a_file)
{
    plan_data a, b;
    sample_plan(&a);
    char path[128], err[256] = "";
    const char *dir = tmpdir();
    snprintf(path, sizeof path, "%s/p.json", dir);
    cr_assert_eq(plan_write(path, &a, err, sizeof err), 0, "%s", err);
    cr_assert_eq(plan_read(path, 5, &b, err, sizeof err), 0, "%s", err);
    cr_assert_eq(b.n_layer, 5);
    cr_assert_float_eq(b.token_ratio, a.token_ratio, 0);
    cr_assert_str_eq(b.model_file, "stories260K.gguf");
    cr_assert_null(b.model_sha256);
    cr_assert_str_eq(b.exclude, "first");
    cr_assert_str_eq(b.calib_file, "tinystories_val.txt");
    cr_assert_eq(b.calib_chunks, 32);
    cr_assert_eq(b.calib_ctx, 256);
    cr_assert_eq(b.calib_start_chunk, 200);
    cr_assert_eq(b.n_order, 4);
    cr_assert_eq(b.n_skip_order, 4);
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(b.order[i], a.order[i]);
        cr_assert_eq(b.skip_order[i], a.skip_order[i]);
        cr_assert_float_eq(b.order_nll[i], a.order_nll[i], 1e-8);
        cr_assert_float_eq(b.skip_nll[i], a.skip_nll[i], 1e-8);
    }
    cr_assert(isnan(b.thresholds[0]));
    for (int l = 1; l < 5; l++) /* 9 significant digits: floats round-trip exactly */
        cr_assert_eq(b.thresholds[l], a.thresholds[l], "layer %d: %.9g vs %.9g", l,
                     (double)b.thresholds[l], (double)a.thresholds[l]);
    cr_assert_float_eq(b.dense_nll, a.dense_nll, 1e-8);
    plan_data_free(&a);
    plan_data_free(&b);
    unlink(path);
    rmdir(dir);
}

Test(plan, json_shape)
{
    plan_data a;
    sample_plan(&a);
    json_t *o = plan_to_json(&a);
    cr_assert_not_null(o);
    cr_assert_str_eq(json_string_value(json_object_get(o, "schema")), "orthoserve-plan/1");
    cr_assert_eq(json_integer_value(json_object_get(o, "n_layer")), 5);
    json_t *t = json_object_get(o, "thresholds");
    cr_assert_eq(json_array_size(t), 5);
    cr_assert(json_is_null(json_array_get(t, 0)), "NAN thresholds are written as null");
    cr_assert(json_is_real(json_array_get(t, 1)));
    json_t *cal = json_object_get(o, "calibration");
    cr_assert_eq(json_integer_value(json_object_get(cal, "start_chunk")), 200);
    cr_assert_eq(json_array_size(json_object_get(o, "orthorank_order")), 4);
    cr_assert_eq(json_array_size(json_object_get(o, "layer_skip_nll")), 4);
    /* and back */
    plan_data b;
    char err[256] = "";
    cr_assert_eq(plan_from_json(o, -1, &b, err, sizeof err), 0, "%s", err);
    cr_assert_eq(b.order[0], 3);
    plan_data_free(&b);
    json_decref(o);
    plan_data_free(&a);
}

Test(plan, minimal_plan_is_enough)
{
    const char *s = "{\"schema\":\"orthoserve-plan/1\",\"n_layer\":5,\"token_ratio\":0.5,"
                    "\"orthorank_order\":[2],\"layer_skip_order\":[]}";
    json_t *o = json_loads(s, 0, NULL);
    cr_assert_not_null(o);
    plan_data p;
    char err[256] = "";
    cr_assert_eq(plan_from_json(o, 5, &p, err, sizeof err), 0, "%s", err);
    cr_assert_eq(p.n_order, 1);
    cr_assert_eq(p.n_skip_order, 0);
    cr_assert_null(p.thresholds);
    cr_assert_null(p.order_nll);
    cr_assert(isnan(p.dense_nll));
    plan_data_free(&p);
    json_decref(o);
}

/* A plan that differs from a valid one by `patch` (a JSON object merged in;
 * a null value deletes the key) must be rejected with a message containing want. */
static void expect_bad(const char *patch, int32_t n_layer, const char *want)
{
    const char *base = "{\"schema\":\"orthoserve-plan/1\",\"n_layer\":5,\"token_ratio\":0.3333,"
                       "\"exclude\":\"first\",\"orthorank_order\":[3,1,2,4],"
                       "\"orthorank_nll\":[1,2,3,4],\"layer_skip_order\":[4,3],"
                       "\"layer_skip_nll\":[1,2],\"thresholds\":[null,0.1,0.2,0.3,0.4],"
                       "\"dense_nll\":1.35,\"calibration\":{\"file\":\"x\",\"chunks\":8,"
                       "\"ctx\":256,\"start_chunk\":0}}";
    json_t *o = json_loads(base, 0, NULL);
    json_t *p = json_loads(patch, 0, NULL);
    cr_assert_not_null(o);
    cr_assert_not_null(p, "bad patch %s", patch);
    const char *k;
    json_t *v;
    json_object_foreach(p, k, v)
    {
        if (json_is_null(v)) json_object_del(o, k);
        else json_object_set(o, k, v);
    }
    plan_data pd;
    char err[256] = "";
    int rc = plan_from_json(o, n_layer, &pd, err, sizeof err);
    cr_assert_eq(rc, -1, "patch %s was accepted", patch);
    cr_assert(strstr(err, want) != NULL, "patch %s: message '%s' lacks '%s'", patch, err, want);
    cr_assert_null(pd.order, "nothing is returned on failure");
    json_decref(p);
    json_decref(o);
}

Test(plan, the_unpatched_base_is_valid)
{
    expect_bad("{\"n_layer\":\"x\"}", 5, "n_layer"); /* sanity of expect_bad itself */
    const char *base = "{\"schema\":\"orthoserve-plan/1\",\"n_layer\":5,\"token_ratio\":0.3333,"
                       "\"orthorank_order\":[3,1,2,4],\"layer_skip_order\":[4,3]}";
    json_t *o = json_loads(base, 0, NULL);
    plan_data pd;
    char err[256] = "";
    cr_assert_eq(plan_from_json(o, 5, &pd, err, sizeof err), 0, "%s", err);
    plan_data_free(&pd);
    json_decref(o);
}

Test(plan, bad_plans_are_rejected_with_clear_messages)
{
    expect_bad("{\"schema\":\"orthoserve-plan/2\"}", 5, "\"schema\" must be \"orthoserve-plan/1\"");
    expect_bad("{\"schema\":null}", 5, "schema");
    expect_bad("{}", 22, "the plan is for 5 layers but the model has 22");
    expect_bad("{\"n_layer\":0}", 5, "\"n_layer\" must be a positive integer");
    expect_bad("{\"token_ratio\":0}", 5, "\"token_ratio\" must be a number in (0, 1]");
    expect_bad("{\"token_ratio\":1.5}", 5, "token_ratio");
    expect_bad("{\"token_ratio\":\"1/3\"}", 5, "token_ratio");
    expect_bad("{\"orthorank_order\":null}", 5, "\"orthorank_order\" is missing");
    expect_bad("{\"layer_skip_order\":null}", 5, "\"layer_skip_order\" is missing");
    expect_bad("{\"orthorank_order\":3}", 5, "\"orthorank_order\" must be an array");
    expect_bad("{\"orthorank_order\":[3,1,5,2]}", 5,
               "\"orthorank_order\"[2] = 5 is out of range [0, 5)");
    expect_bad("{\"orthorank_order\":[3,-1]}", 5, "\"orthorank_order\"[1] = -1 is out of range");
    expect_bad("{\"layer_skip_order\":[4,3,4]}", 5,
               "\"layer_skip_order\"[2] = 4 repeats \"layer_skip_order\"[0]");
    expect_bad("{\"orthorank_order\":[3,1.5]}", 5, "\"orthorank_order\"[1] must be an integer");
    expect_bad("{\"orthorank_order\":[0,1,2,3,4,0]}", 5, "has 6 entries but the model has 5 layers");
    expect_bad("{\"orthorank_nll\":[1,2]}", 5, "\"orthorank_nll\" has 2 entries, expected 4");
    expect_bad("{\"layer_skip_nll\":[1,\"x\"]}", 5, "\"layer_skip_nll\"[1] must be a finite number");
    expect_bad("{\"thresholds\":[0.1,0.2]}", 5, "\"thresholds\" has 2 entries, expected 5");
    expect_bad("{\"thresholds\":[null,0.1,\"a\",0.3,0.4]}", 5,
               "\"thresholds\"[2] must be a finite number or null");
    expect_bad("{\"thresholds\":{}}", 5, "\"thresholds\" must be an array");
    expect_bad("{\"dense_nll\":\"x\"}", 5, "\"dense_nll\" must be a finite number");
    expect_bad("{\"exclude\":\"last\"}", 5, "\"exclude\" must be");
    expect_bad("{\"model_file\":7}", 5, "\"model_file\" must be a string");
    expect_bad("{\"calibration\":[]}", 5, "\"calibration\" must be an object");
    expect_bad("{\"calibration\":{\"ctx\":-3}}", 5, "\"calibration.ctx\" must be an integer");
}

Test(plan, unreadable_files_name_the_file_and_line)
{
    char path[128], err[256] = "";
    const char *dir = tmpdir();
    snprintf(path, sizeof path, "%s/broken.json", dir);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs("{\"schema\": \"orthoserve-plan/1\",\n \"n_layer\": 5,,\n}", f);
    fclose(f);
    plan_data p;
    cr_assert_eq(plan_read(path, 5, &p, err, sizeof err), -1);
    cr_assert(strstr(err, path) && strstr(err, ":2:"), "message: %s", err);
    unlink(path);
    cr_assert_eq(plan_read("/nonexistent/plan.json", 5, &p, err, sizeof err), -1);
    cr_assert(strstr(err, "/nonexistent/plan.json"), "message: %s", err);
    /* duplicate keys are an error, not a silent override */
    f = fopen(path, "w");
    fputs("{\"schema\":\"orthoserve-plan/1\",\"n_layer\":5,\"n_layer\":6}", f);
    fclose(f);
    cr_assert_eq(plan_read(path, 5, &p, err, sizeof err), -1);
    cr_assert(strstr(err, "duplicate"), "message: %s", err);
    unlink(path);
    rmdir(dir);
}

Test(plan, load_installs_the_plan_into_the_model)
{
    eng_model *m = NULL;
    char err[512] = "";
    cr_assert_eq(eng_model_load(td_path(MODEL), NULL, &m, err, sizeof err), ENG_OK, "%s", err);
    eng_orthorank_plan ep;
    eng_model_get_orthorank_plan(m, &ep);
    cr_assert_str_eq(ep.source, "fallback");

    plan_data a;
    sample_plan(&a);
    char path[128];
    const char *dir = tmpdir();
    snprintf(path, sizeof path, "%s/p.json", dir);
    cr_assert_eq(plan_write(path, &a, err, sizeof err), 0, "%s", err);
    cr_assert_eq(plan_load(path, m, err, sizeof err), 0, "%s", err);
    eng_model_get_orthorank_plan(m, &ep);
    cr_assert_str_eq(ep.source, "calibrated");
    cr_assert_eq(ep.n_order, 4);
    cr_assert_eq(ep.order[0], 3);
    cr_assert_eq(ep.n_skip_order, 4);
    cr_assert_eq(ep.skip_order[0], 4);
    cr_assert_not_null(ep.thresholds);
    cr_assert(isnan(ep.thresholds[0]));
    cr_assert_float_eq(ep.thresholds[2], 0.2f, 1e-7);
    cr_assert_float_eq(ep.threshold_ratio, 1.0f / 3, 1e-7);

    /* a plan for another model is refused and names the mismatch */
    a.n_layer = 22;
    free(a.thresholds);
    a.thresholds = NULL;
    cr_assert_eq(plan_write(path, &a, err, sizeof err), 0, "%s", err);
    cr_assert_eq(plan_load(path, m, err, sizeof err), -1);
    cr_assert(strstr(err, "22 layers but the model has 5"), "message: %s", err);
    unlink(path);
    rmdir(dir);
    plan_data_free(&a);
    eng_model_free(m);
}

Test(plan, default_plan_beside_the_model)
{
    char buf[256];
    cr_assert_eq(plan_default_path("/a/b/model.gguf", 0, buf, sizeof buf), 0);
    cr_assert_str_eq(buf, "/a/b/model.orthorank.json");
    cr_assert_eq(plan_default_path("/a/b/model.gguf", 1, buf, sizeof buf), 0);
    cr_assert_str_eq(buf, "/a/b/model.gguf.orthorank.json");
    cr_assert_eq(plan_default_path("/a.gguf/model", 0, buf, sizeof buf), 0);
    cr_assert_str_eq(buf, "/a.gguf/model.orthorank.json");
    cr_assert_eq(plan_default_path("/a/b/model.gguf", 0, buf, 8), -1);

    const char *dir = tmpdir();
    char model[160], plan[160], err[512] = "";
    snprintf(model, sizeof model, "%s/m.gguf", dir);
    char *real = realpath(td_path(MODEL), NULL);
    cr_assert_not_null(real);
    cr_assert_eq(symlink(real, model), 0);
    free(real);
    eng_model *m = NULL;
    cr_assert_eq(eng_model_load(model, NULL, &m, err, sizeof err), ENG_OK, "%s", err);
    cr_assert_eq(plan_load_default(model, m, err, sizeof err), 0, "no plan: 0");

    snprintf(plan, sizeof plan, "%s/m.orthorank.json", dir);
    FILE *f = fopen(plan, "w");
    fputs("{\"schema\":\"orthoserve-plan/1\",\"n_layer\":5,\"token_ratio\":0.5,"
          "\"orthorank_order\":[2,9],\"layer_skip_order\":[]}", f);
    fclose(f);
    cr_assert_eq(plan_load_default(model, m, err, sizeof err), -1, "an invalid plan is an error");
    cr_assert(strstr(err, plan) && strstr(err, "out of range"), "message: %s", err);

    f = fopen(plan, "w");
    fputs("{\"schema\":\"orthoserve-plan/1\",\"n_layer\":5,\"token_ratio\":0.5,"
          "\"orthorank_order\":[2,4],\"layer_skip_order\":[4]}", f);
    fclose(f);
    cr_assert_eq(plan_load_default(model, m, err, sizeof err), 1, "%s", err);
    cr_assert_str_eq(err, plan);
    eng_orthorank_plan ep;
    eng_model_get_orthorank_plan(m, &ep);
    cr_assert_str_eq(ep.source, "calibrated");
    cr_assert_eq(ep.n_order, 2);
    cr_assert_eq(ep.order[1], 4);
    eng_model_free(m);
    unlink(plan);
    unlink(model);
    rmdir(dir);
}
