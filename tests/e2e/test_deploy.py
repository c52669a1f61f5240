"""docker/ without a container engine: the Prometheus config and rules pass
promtool; every PromQL query of the Grafana dashboard and of the alerting
rules parses (promtool check rules) and uses only metric names a live
orthoserve exports (scraped here); the dashboard is the one make_dashboard.py
writes; compose.yaml and the Kubernetes manifests have the pieces
docs/DEPLOY.md promises (probes on /ready and /health, resources, the HPA on
the waiting-requests metric)."""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

import yaml

from e2eutil import Server

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
DOCKER = os.path.join(ROOT, "docker")
DASHBOARD = os.path.join(DOCKER, "grafana", "dashboards", "orthoserve.json")
METRIC = re.compile(r"\b(orthoserve_[a-zA-Z0-9_]+|up)\b")


def promtool(*args):
    tool = shutil.which("promtool")
    assert tool, "promtool not found: tools/deps.sh installs Debian's prometheus package"
    out = subprocess.run([tool] + list(args), capture_output=True, text=True, timeout=60)
    return out.returncode, out.stdout + out.stderr


def dashboard_exprs():
    with open(DASHBOARD) as f:
        d = json.load(f)
    out = []
    for p in d["panels"]:
        for t in p.get("targets", []):
            out.append((p["title"], t["expr"]))
    return d, out


def rule_exprs():
    with open(os.path.join(DOCKER, "prometheus", "rules", "orthoserve.yml")) as f:
        rules = yaml.safe_load(f)
    return [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"]]


class DeployTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        s = Server()
        try:
            # One generation so that every labelled series exists too.
            st, _, _, _ = s.post("/v1/completions", {"prompt": "Hi", "max_tokens": 3})
            assert st == 200
            st, _, data = s.request("GET", "/metrics")
            assert st == 200
        finally:
            s.stop()
        cls.exposition = data.decode()
        cls.names = set()
        for line in cls.exposition.splitlines():
            if line.startswith("# TYPE "):
                name, typ = line[7:].split(" ")
                cls.names.add(name)
                if typ == "histogram":
                    cls.names.update({name + "_bucket", name + "_sum", name + "_count"})
        cls.names.add("up")  # Prometheus' own per-target series

    def test_prometheus_config(self):
        rc, out = promtool("check", "config", os.path.join(DOCKER, "prometheus", "prometheus.yml"))
        self.assertEqual(rc, 0, out)
        print(out, file=sys.stderr)
        rc, out = promtool("check", "rules", os.path.join(DOCKER, "prometheus", "rules", "orthoserve.yml"))
        self.assertEqual(rc, 0, out)
        with open(os.path.join(DOCKER, "prometheus", "prometheus.yml")) as f:
            cfg = yaml.safe_load(f)
        job = [j for j in cfg["scrape_configs"] if j["job_name"] == "orthoserve"][0]
        self.assertEqual(job.get("metrics_path", "/metrics"), "/metrics")

    def test_dashboard_queries_use_exported_metrics(self):
        d, exprs = dashboard_exprs()
        self.assertGreaterEqual(len(exprs), 20)
        used = set()
        for title, e in exprs + rule_exprs():
            names = set(METRIC.findall(e))
            self.assertTrue(names, (title, e))
            for n in names:
                self.assertIn(n, self.names, "%s: %s uses %s, which orthoserve does not export" % (title, e, n))
            used |= names
        # What the issue asks the dashboard to show.
        titles = " | ".join(p["title"] for p in d["panels"]).lower()
        for want in ("request rate", "error rate", "time to first token", "inter-token latency",
                     "end-to-end", "tokens per second", "queue depth", "kv cache", "orthorank effective sparsity"):
            self.assertIn(want, titles)
        for q in ("0.5", "0.95", "0.99"):
            for h in ("orthoserve_time_to_first_token_seconds_bucket", "orthoserve_inter_token_latency_seconds_bucket",
                      "orthoserve_e2e_request_latency_seconds_bucket"):
                self.assertTrue(any(e.startswith("histogram_quantile(%s," % q) and h in e for _, e in exprs), (q, h))
        for n in ("orthoserve_requests_waiting", "orthoserve_kv_cache_usage_ratio", "orthoserve_generated_tokens_total",
                  "orthoserve_orthorank_token_layers_skipped_total"):
            self.assertIn(n, used)

    def test_dashboard_queries_parse(self):
        """Every query as a recording rule: promtool parses the PromQL."""
        _, exprs = dashboard_exprs()
        rules = {"groups": [{"name": "dashboard", "rules": [
            {"record": "dashboard:q%d" % i, "expr": e.replace("$__rate_interval", "1m")}
            for i, (_, e) in enumerate(exprs)]}]}
        with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
            yaml.safe_dump(rules, f)
        try:
            rc, out = promtool("check", "rules", f.name)
        finally:
            os.unlink(f.name)
        self.assertEqual(rc, 0, out)

    def test_dashboard_is_generated(self):
        with open(DASHBOARD) as f:
            before = f.read()
        tmp = tempfile.mkdtemp()
        gen = os.path.join(tmp, "make_dashboard.py")
        shutil.copy(os.path.join(DOCKER, "grafana", "make_dashboard.py"), gen)
        os.mkdir(os.path.join(tmp, "dashboards"))
        subprocess.run([sys.executable, gen], check=True, capture_output=True)
        with open(os.path.join(tmp, "dashboards", "orthoserve.json")) as f:
            self.assertEqual(f.read(), before, "re-run docker/grafana/make_dashboard.py")
        shutil.rmtree(tmp)
        d = json.loads(before)
        ids = [p["id"] for p in d["panels"]]
        self.assertEqual(len(ids), len(set(ids)))
        for p in d["panels"]:
            g = p["gridPos"]
            self.assertLessEqual(g["x"] + g["w"], 24)

    def test_compose(self):
        with open(os.path.join(DOCKER, "compose.yaml")) as f:
            c = yaml.safe_load(f)
        svc = c["services"]
        self.assertEqual(set(svc), {"orthoserve", "prometheus", "grafana"})
        self.assertEqual(svc["orthoserve"]["build"]["dockerfile"], "docker/Dockerfile")
        self.assertTrue(any(v.endswith(":/models:ro") for v in svc["orthoserve"]["volumes"]))
        self.assertIn("ORTHOSERVE_MODEL", svc["orthoserve"]["environment"])
        for s in ("prometheus", "grafana"):
            for v in svc[s]["volumes"]:
                src = v.split(":")[0]
                if src.startswith("./"):
                    self.assertTrue(os.path.exists(os.path.join(DOCKER, src)), v)
        with open(os.path.join(DOCKER, "grafana", "provisioning", "datasources", "prometheus.yaml")) as f:
            ds = yaml.safe_load(f)["datasources"][0]
        self.assertEqual(ds["url"], "http://prometheus:9090")
        with open(os.path.join(DOCKER, "grafana", "provisioning", "dashboards", "orthoserve.yaml")) as f:
            prov = yaml.safe_load(f)["providers"][0]
        mounted = [v.split(":")[1] for v in svc["grafana"]["volumes"] if "dashboards" in v.split(":")[0]]
        self.assertIn(prov["options"]["path"], mounted)

    def test_kubernetes(self):
        docs = {}
        for name in ("deployment.yaml", "service.yaml", "hpa.yaml"):
            with open(os.path.join(DOCKER, "k8s", name)) as f:
                for d in yaml.safe_load_all(f):
                    docs[d["kind"]] = d
        dep = docs["Deployment"]
        c = dep["spec"]["template"]["spec"]["containers"][0]
        self.assertEqual(c["readinessProbe"]["httpGet"]["path"], "/ready")
        self.assertEqual(c["livenessProbe"]["httpGet"]["path"], "/health")
        self.assertIn("cpu", c["resources"]["requests"])
        self.assertIn("memory", c["resources"]["limits"])
        self.assertTrue(dep["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"])
        self.assertEqual(docs["Service"]["spec"]["selector"], dep["spec"]["selector"]["matchLabels"])
        hpa = docs["HorizontalPodAutoscaler"]
        self.assertEqual(hpa["spec"]["scaleTargetRef"]["name"], dep["metadata"]["name"])
        m = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
        self.assertEqual(m, "orthoserve_requests_waiting")
        self.assertIn(m, self.names)
        env = {e["name"] for e in c["env"]}
        with open(os.path.join(ROOT, "config", "orthoserve.json")) as f:
            keys = {"ORTHOSERVE_" + k.upper() for k in json.load(f)}
        self.assertLessEqual(env, keys, "every variable is a real setting")


if __name__ == "__main__":
    unittest.main(verbosity=2)
