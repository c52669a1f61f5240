#!/usr/bin/env python3
"""Writes dashboards/orthoserve.json (the Grafana dashboard provisioned by
docker/compose.yaml). Edit the panels here and re-run; a test checks that
every metric the queries use is one orthoserve exports."""
import json
import os

RI = "$__rate_interval"
DS = {"type": "prometheus", "uid": "${datasource}"}
panels = []


def panel(title, targets, unit="short", kind="timeseries", w=8, h=8, desc="", extra=None):
    n = len(panels)
    p = {
        "id": n + 1, "type": kind, "title": title, "description": desc, "datasource": DS,
        "gridPos": {"x": (sum(q["gridPos"]["w"] for q in panels) % 24), "y": 0, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": [{"refId": chr(65 + i), "datasource": DS, "expr": e, "legendFormat": l}
                    for i, (e, l) in enumerate(targets)],
    }
    if extra:
        p.update(extra)
    panels.append(p)


def quantiles(metric, by=""):
    grp = "le" + (", " + by if by else "")
    return [("histogram_quantile(%s, sum by (%s) (rate(%s_bucket[%s])))" % (q, grp, metric, RI), "p%d" % (q * 100))
            for q in (0.5, 0.95, 0.99)]


panel("Request rate by endpoint",
      [("sum by (endpoint) (rate(orthoserve_http_requests_total[%s]))" % RI, "{{endpoint}}")], "reqps",
      desc="HTTP requests per second, by endpoint.")
panel("Error rate",
      [("sum(rate(orthoserve_http_requests_total{status=~\"5..\"}[%s])) / sum(rate(orthoserve_http_requests_total[%s]))"
        % (RI, RI), "5xx"),
       ("sum(rate(orthoserve_http_requests_total{status=~\"4..\"}[%s])) / sum(rate(orthoserve_http_requests_total[%s]))"
        % (RI, RI), "4xx"),
       ("sum by (reason) (rate(orthoserve_requests_cancelled_total[%s])) / scalar(sum(rate(orthoserve_http_requests_total[%s])))"
        % (RI, RI), "cancelled: {{reason}}")], "percentunit",
      desc="Share of requests answered 5xx / 4xx, and generations cancelled (client gone, timeout, shutdown).")
panel("Tokens per second",
      [("sum(rate(orthoserve_generated_tokens_total[%s]))" % RI, "generated"),
       ("sum(rate(orthoserve_prompt_tokens_total[%s]))" % RI, "prompt"),
       ("sum(rate(orthoserve_prompt_tokens_cached_total[%s]))" % RI, "prompt (from the prefix cache)")],
      "short", desc="Tokens generated and prompt tokens processed per second.")
panel("Time to first token", quantiles("orthoserve_time_to_first_token_seconds"), "s",
      desc="Arrival to the first generated token.")
panel("Inter-token latency", quantiles("orthoserve_inter_token_latency_seconds"), "s",
      desc="Time between consecutive tokens of a request.")
panel("End-to-end request latency", quantiles("orthoserve_e2e_request_latency_seconds"), "s",
      desc="Arrival to the end of generation.")
panel("Queue depth",
      [("sum(orthoserve_requests_waiting)", "waiting"), ("sum(orthoserve_requests_running)", "running")],
      "short", desc="Requests waiting for a slot (the autoscaling signal) and running.")
panel("KV cache usage",
      [("avg(orthoserve_kv_cache_usage_ratio)", "used / capacity")], "percentunit",
      desc="KV cache tokens held by running requests over the budget.",
      extra={"fieldConfig": {"defaults": {"unit": "percentunit", "min": 0, "max": 1}, "overrides": []}})
panel("KV cache tokens",
      [("sum(orthoserve_kv_tokens_used)", "used"), ("sum(orthoserve_kv_tokens_cached)", "kept for prefix reuse"),
       ("sum(orthoserve_kv_tokens_capacity)", "capacity")], "short")
panel("KV cache memory",
      [("sum(orthoserve_kv_cache_bytes_used)", "used"), ("sum(orthoserve_kv_cache_bytes_capacity)", "capacity")],
      "bytes", desc="KV cache bytes held by running requests, and allocated (kv_tokens x bytes per token of the "
      "cache types, cache_type_k / cache_type_v).")
panel("OrthoRank effective sparsity",
      [("sum by (phase) (rate(orthoserve_orthorank_token_layers_skipped_total[%s])) / "
        "sum by (phase) (rate(orthoserve_orthorank_token_layers_total[%s]))" % (RI, RI), "{{phase}} (token-layers)"),
       ("sum(rate(orthoserve_request_orthorank_sparsity_effective_sum[%s])) / "
        "sum(rate(orthoserve_request_orthorank_sparsity_effective_count[%s]))" % (RI, RI), "mean per request")],
      "percentunit", desc="Token-layers whose update OrthoRank skipped over those processed; 0 = dense.")
panel("OrthoRank sparsity per request",
      quantiles("orthoserve_request_orthorank_sparsity_effective"), "percentunit")
panel("Time per output token", quantiles("orthoserve_time_per_output_token_seconds"), "s",
      desc="Per request: first to last token over the tokens after the first.")
panel("Queue time", quantiles("orthoserve_request_queue_time_seconds"), "s",
      desc="Time a request waited for a scheduler slot.")
panel("Scheduler step", quantiles("orthoserve_step_duration_seconds") +
      [("sum(orthoserve_batch_tokens)", "batch tokens (last step)"),
       ("sum(rate(orthoserve_scheduler_steps_total[%s]))" % RI, "steps/s")], "s",
      desc="Step duration (sampled), last batch size and steps per second.",
      extra={"fieldConfig": {"defaults": {"unit": "s"}, "overrides": [
          {"matcher": {"id": "byRegexp", "options": "batch tokens.*|steps/s"},
           "properties": [{"id": "unit", "value": "short"}, {"id": "custom.axisPlacement", "value": "right"}]}]}})
panel("Prompt and generation length",
      [("histogram_quantile(0.5, sum by (le) (rate(orthoserve_request_prompt_tokens_bucket[%s])))" % RI, "prompt p50"),
       ("histogram_quantile(0.95, sum by (le) (rate(orthoserve_request_prompt_tokens_bucket[%s])))" % RI, "prompt p95"),
       ("histogram_quantile(0.5, sum by (le) (rate(orthoserve_request_generation_tokens_bucket[%s])))" % RI,
        "generation p50"),
       ("histogram_quantile(0.95, sum by (le) (rate(orthoserve_request_generation_tokens_bucket[%s])))" % RI,
        "generation p95")], "short")
panel("Finished requests by reason",
      [("sum by (finish_reason) (rate(orthoserve_requests_finished_total[%s]))" % RI, "{{finish_reason}}")], "reqps")
panel("Model", [("orthoserve_model_info", "{{model}} {{architecture}} {{type}}"),
                ("orthoserve_build_info", "orthoserve {{version}} ({{kernels}})")], "short", kind="table", w=16,
      extra={"options": {"showHeader": True},
             "targets": [{"refId": "A", "datasource": DS, "expr": "orthoserve_model_info", "format": "table",
                          "instant": True},
                         {"refId": "B", "datasource": DS, "expr": "orthoserve_build_info", "format": "table",
                          "instant": True}]})

# Lay the panels out in rows of 24 units.
x = y = 0
rowh = 0
for p in panels:
    w, h = p["gridPos"]["w"], p["gridPos"]["h"]
    if x + w > 24:
        x, y = 0, y + rowh
        rowh = 0
    p["gridPos"].update(x=x, y=y)
    x += w
    rowh = max(rowh, h)

dash = {
    "uid": "orthoserve",
    "title": "orthoserve",
    "tags": ["orthoserve", "llm"],
    "timezone": "browser",
    "schemaVersion": 39,
    "version": 1,
    "editable": True,
    "refresh": "10s",
    "time": {"from": "now-1h", "to": "now"},
    "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source",
                             "current": {"text": "Prometheus", "value": "prometheus"}}]},
    "annotations": {"list": []},
    "panels": panels,
}
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboards", "orthoserve.json")
with open(out, "w") as f:
    json.dump(dash, f, indent=2)
    f.write("\n")
print("wrote", out, len(panels), "panels")
