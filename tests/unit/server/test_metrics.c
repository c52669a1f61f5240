/* Criterion tests for server/metrics.c: the Prometheus registry's text
 * exposition format 0.0.4 -- HELP/TYPE lines, counters, gauges and
 * histograms (cumulative buckets, +Inf, _sum, _count), labels and the
 * constant label, value formatting and label-value escaping. */
#include "metrics.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Render m and compare with want, printing both on a mismatch. */
static void expect_render(metrics *m, const char *want)
{
    size_t n = 0;
    char *txt = metrics_render(m, &n);
    cr_assert(txt);
    cr_expect_eq(n, strlen(txt));
    cr_expect_str_eq(txt, want, "got:\n%s\nwant:\n%s", txt, want);
    free(txt);
}

Test(metrics, empty_registry, .timeout = 10)
{
    metrics *m = metrics_new();
    expect_render(m, "");
    metrics_free(m);
}

Test(metrics, unlabelled_families_show_zero, .timeout = 10)
{
    metrics *m = metrics_new();
    metrics_add(m, "c_total", "A counter.", METRIC_COUNTER, NULL, NULL);
    metrics_add(m, "g", "A gauge.", METRIC_GAUGE, NULL, NULL);
    expect_render(m, "# HELP c_total A counter.\n# TYPE c_total counter\nc_total 0\n"
                     "# HELP g A gauge.\n# TYPE g gauge\ng 0\n");
    metrics_free(m);
}

Test(metrics, counter_adds_gauge_sets, .timeout = 10)
{
    metrics *m = metrics_new();
    metric *c = metrics_add(m, "c_total", "C.", METRIC_COUNTER, NULL, NULL);
    metric *g = metrics_add(m, "g", "G.", METRIC_GAUGE, NULL, NULL);
    metric_add(c, NULL, NULL, 2);
    metric_add(c, NULL, NULL, 3);
    metric_set(g, NULL, NULL, 7);
    metric_set(g, NULL, NULL, 4);
    cr_expect_eq(metric_get(c, NULL, NULL), 5);
    cr_expect_eq(metric_get(g, NULL, NULL), 4);
    expect_render(m, "# HELP c_total C.\n# TYPE c_total counter\nc_total 5\n# HELP g G.\n# TYPE g gauge\ng 4\n");
    metrics_free(m);
}

Test(metrics, labelled_series_in_creation_order, .timeout = 10)
{
    metrics *m = metrics_new();
    metric *c = metrics_add(m, "req_total", "Requests.", METRIC_COUNTER, "endpoint", "status");
    metric_add(c, "models", "200", 1);
    metric_add(c, "health", "503", 1);
    metric_add(c, "models", "200", 1);
    metric_add(c, "models", NULL, 1); /* an absent value renders "" */
    cr_expect_eq(metric_get(c, "models", "200"), 2);
    cr_expect_eq(metric_get(c, "nope", "200"), 0);
    expect_render(m, "# HELP req_total Requests.\n# TYPE req_total counter\n"
                     "req_total{endpoint=\"models\",status=\"200\"} 2\n"
                     "req_total{endpoint=\"health\",status=\"503\"} 1\n"
                     "req_total{endpoint=\"models\",status=\"\"} 1\n");
    metrics_free(m);
}

Test(metrics, labelled_family_without_series_has_no_samples, .timeout = 10)
{
    metrics *m = metrics_new();
    metrics_add(m, "r_total", "R.", METRIC_COUNTER, "reason", NULL);
    expect_render(m, "# HELP r_total R.\n# TYPE r_total counter\n");
    metrics_free(m);
}

Test(metrics, many_labels_and_const_label_first, .timeout = 10)
{
    metrics *m = metrics_new();
    static const char *l[] = {"a", "b", "c"};
    metric *g = metrics_add_labels(m, "info", "Info.", METRIC_GAUGE, l, 3);
    metric_const_label(g, "model", "m.gguf");
    const char *v[] = {"1", "2", "3"};
    metric_setv(g, v, 1);
    metric_addv(g, v, 1);
    expect_render(m, "# HELP info Info.\n# TYPE info gauge\ninfo{model=\"m.gguf\",a=\"1\",b=\"2\",c=\"3\"} 2\n");
    metrics_free(m);
}

Test(metrics, label_values_escaped, .timeout = 10)
{
    metrics *m = metrics_new();
    metric *g = metrics_add(m, "g", "G.", METRIC_GAUGE, "v", NULL);
    metric_const_label(g, "model", "a\"b");
    metric_set(g, "back\\slash \"quote\"\nnewline", NULL, 1);
    expect_render(m, "# HELP g G.\n# TYPE g gauge\n"
                     "g{model=\"a\\\"b\",v=\"back\\\\slash \\\"quote\\\"\\nnewline\"} 1\n");
    metrics_free(m);
}

Test(metrics, value_formatting, .timeout = 10)
{
    metrics *m = metrics_new();
    metric *g = metrics_add(m, "g", "G.", METRIC_GAUGE, "k", NULL);
    metric_set(g, "int", NULL, -42);
    metric_set(g, "frac", NULL, 0.1);
    metric_set(g, "big", NULL, 1e20);
    metric_set(g, "nan", NULL, NAN);
    metric_set(g, "inf", NULL, INFINITY);
    metric_set(g, "ninf", NULL, -INFINITY);
    expect_render(m, "# HELP g G.\n# TYPE g gauge\n"
                     "g{k=\"int\"} -42\n"
                     "g{k=\"frac\"} 0.10000000000000001\n"
                     "g{k=\"big\"} 1e+20\n"
                     "g{k=\"nan\"} NaN\n"
                     "g{k=\"inf\"} +Inf\n"
                     "g{k=\"ninf\"} -Inf\n");
    metrics_free(m);
}

Test(metrics, histogram_cumulative_buckets, .timeout = 10)
{
    metrics *m = metrics_new();
    static const double b[] = {0.1, 1, 2.5};
    metric *h = metrics_add_histogram(m, "lat_seconds", "Latency.", NULL, b, 3);
    cr_assert(h);
    metric_observe(h, NULL, 0.1); /* le: a value on a bound is in that bucket */
    metric_observe(h, NULL, 0.5);
    metric_observe_n(h, NULL, 2, 2);
    metric_observe(h, NULL, 100);
    metric_observe(h, NULL, NAN); /* ignored */
    metric_observe_n(h, NULL, 1, 0); /* nothing */
    double sum;
    cr_expect_eq(metric_hist_count(h, NULL, &sum), 5);
    cr_expect_float_eq(sum, 104.6, 1e-9);
    expect_render(m, "# HELP lat_seconds Latency.\n# TYPE lat_seconds histogram\n"
                     "lat_seconds_bucket{le=\"0.1\"} 1\n"
                     "lat_seconds_bucket{le=\"1\"} 2\n"
                     "lat_seconds_bucket{le=\"2.5\"} 4\n"
                     "lat_seconds_bucket{le=\"+Inf\"} 5\n"
                     "lat_seconds_sum 104.59999999999999\n"
                     "lat_seconds_count 5\n");
    metrics_free(m);
}

Test(metrics, histogram_empty_and_labelled, .timeout = 10)
{
    metrics *m = metrics_new();
    static const double b[] = {0.0005};
    metric *h = metrics_add_histogram(m, "e_seconds", "E.", NULL, b, 1);
    metric_const_label(h, "model", "x");
    metric *hl = metrics_add_histogram(m, "p_seconds", "P.", "phase", b, 1);
    metric_observe(hl, "decode", 0.0001);
    expect_render(m, "# HELP e_seconds E.\n# TYPE e_seconds histogram\n"
                     "e_seconds_bucket{model=\"x\",le=\"0.0005\"} 0\n"
                     "e_seconds_bucket{model=\"x\",le=\"+Inf\"} 0\n"
                     "e_seconds_sum{model=\"x\"} 0\n"
                     "e_seconds_count{model=\"x\"} 0\n"
                     "# HELP p_seconds P.\n# TYPE p_seconds histogram\n"
                     "p_seconds_bucket{phase=\"decode\",le=\"0.0005\"} 1\n"
                     "p_seconds_bucket{phase=\"decode\",le=\"+Inf\"} 1\n"
                     "p_seconds_sum{phase=\"decode\"} 0.0001\n"
                     "p_seconds_count{phase=\"decode\"} 1\n");
    metrics_free(m);
}

Test(metrics, bad_families_refused, .timeout = 10)
{
    metrics *m = metrics_new();
    static const double not_increasing[] = {1, 1};
    static const double not_finite[] = {1, INFINITY};
    static const char *seven[] = {"a", "b", "c", "d", "e", "f", "g"};
    cr_expect_null(metrics_add_histogram(m, "h1", "H.", NULL, not_increasing, 2));
    cr_expect_null(metrics_add_histogram(m, "h2", "H.", NULL, not_finite, 2));
    cr_expect_null(metrics_add_labels(m, "g", "G.", METRIC_GAUGE, seven, 7));
    cr_expect_null(metrics_add_labels(m, "h3", "H.", METRIC_HISTOGRAM, seven, 1));
    expect_render(m, ""); /* nothing was registered */
    metrics_free(m);
}

Test(metrics, wrong_kind_and_null_handles_ignored, .timeout = 10)
{
    metrics *m = metrics_new();
    static const double b[] = {1};
    metric *c = metrics_add(m, "c_total", "C.", METRIC_COUNTER, NULL, NULL);
    metric *h = metrics_add_histogram(m, "h", "H.", NULL, b, 1);
    metric_observe(c, NULL, 1); /* a counter is not a histogram */
    metric_add(h, NULL, NULL, 1); /* nor the reverse */
    metric_add(NULL, "x", NULL, 1);
    metric_observe(NULL, NULL, 1);
    metric_const_label(NULL, "model", "x");
    cr_expect_eq(metric_get(NULL, NULL, NULL), 0);
    cr_expect_eq(metric_hist_count(NULL, NULL, NULL), 0);
    expect_render(m, "# HELP c_total C.\n# TYPE c_total counter\nc_total 0\n"
                     "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 0\nh_bucket{le=\"+Inf\"} 0\nh_sum 0\nh_count 0\n");
    metrics_free(m);
    metrics_free(NULL);
}
