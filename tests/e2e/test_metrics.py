"""Operations (issue 6): /metrics in the Prometheus text format (promtool
parses it; every documented family is there with HELP and TYPE; counters move
by exactly what a known sequence of requests implies; histograms are
cumulative and count requests), X-Request-Id on every response, and the
one-line-per-request log in text and JSON."""
import json
import math
import os
import re
import shutil
import socket
import subprocess
import unittest

from e2eutil import BIN, MODEL, MODEL_ID, Server, connect, read_until, scaled, wait_for

M = 'model="%s"' % MODEL_ID

# Every family docs/METRICS.md lists, with its type.
FAMILIES = {
    "orthoserve_http_requests_total": "counter",
    "orthoserve_http_requests_active": "gauge",
    "orthoserve_prompt_tokens_total": "counter",
    "orthoserve_generated_tokens_total": "counter",
    "orthoserve_prompt_tokens_cached_total": "counter",
    "orthoserve_requests_cancelled_total": "counter",
    "orthoserve_requests_finished_total": "counter",
    "orthoserve_orthorank_token_layers_total": "counter",
    "orthoserve_orthorank_token_layers_skipped_total": "counter",
    "orthoserve_scheduler_steps_total": "counter",
    "orthoserve_requests_running": "gauge",
    "orthoserve_requests_waiting": "gauge",
    "orthoserve_kv_cache_usage_ratio": "gauge",
    "orthoserve_kv_tokens_used": "gauge",
    "orthoserve_kv_tokens_capacity": "gauge",
    "orthoserve_kv_tokens_cached": "gauge",
    "orthoserve_kv_cache_bytes_per_token": "gauge",
    "orthoserve_kv_cache_bytes_used": "gauge",
    "orthoserve_kv_cache_bytes_capacity": "gauge",
    "orthoserve_batch_tokens": "gauge",
    "orthoserve_model_loaded": "gauge",
    "orthoserve_build_info": "gauge",
    "orthoserve_model_info": "gauge",
    "orthoserve_time_to_first_token_seconds": "histogram",
    "orthoserve_inter_token_latency_seconds": "histogram",
    "orthoserve_time_per_output_token_seconds": "histogram",
    "orthoserve_e2e_request_latency_seconds": "histogram",
    "orthoserve_request_queue_time_seconds": "histogram",
    "orthoserve_request_prompt_tokens": "histogram",
    "orthoserve_request_generation_tokens": "histogram",
    "orthoserve_request_orthorank_sparsity_effective": "histogram",
    "orthoserve_step_duration_seconds": "histogram",
}
HISTOGRAMS = [k for k, v in FAMILIES.items() if v == "histogram"]

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')


def parse_exposition(text):
    """-> (families {name: {"help", "type"}}, samples [(name, {labels}, value)]),
    checking the 0.0.4 text format's line shapes on the way."""
    fams, samples = {}, []
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_ = line[7:].partition(" ")
            fams.setdefault(name, {})["help"] = help_
        elif line.startswith("# TYPE "):
            name, _, typ = line[7:].partition(" ")
            assert name in fams and "type" not in fams[name], "TYPE before HELP or twice: " + line
            fams[name]["type"] = typ
        else:
            m = SAMPLE.match(line)
            assert m, "bad sample line: %r" % line
            labels = {}
            if m.group(3):
                rest = m.group(3)
                pos = 0
                while pos < len(rest):
                    lm = LABEL.match(rest, pos)
                    assert lm, "bad labels: %r" % line
                    labels[lm.group(1)] = lm.group(2)
                    pos = lm.end()
            samples.append((m.group(1), labels, float(m.group(4))))
    return fams, samples


def family_of(name, fams):
    for suf in ("_bucket", "_sum", "_count"):
        if name.endswith(suf) and name[:-len(suf)] in fams and fams[name[:-len(suf)]]["type"] == "histogram":
            return name[:-len(suf)]
    return name


class Scrape:
    def __init__(self, server):
        st, h, data = server.request("GET", "/metrics")
        assert st == 200
        self.ctype = h["content-type"]
        self.text = data.decode()
        self.fams, self.samples = parse_exposition(self.text)

    def get(self, name, **labels):
        for n, l, v in self.samples:
            if n == name and l == labels:
                return v
        return None

    def hist(self, name, **labels):
        """-> ([(le, cumulative count)], sum, count)"""
        buckets = []
        for n, l, v in self.samples:
            if n == name + "_bucket" and {k: x for k, x in l.items() if k != "le"} == labels:
                buckets.append((float(l["le"]), v))
        return buckets, self.get(name + "_sum", **labels), self.get(name + "_count", **labels)


def promtool_check(text):
    tool = shutil.which("promtool")
    assert tool, "promtool not found: tools/deps.sh installs Debian's prometheus package"
    out = subprocess.run([tool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=scaled(60))
    return out.returncode, out.stdout + out.stderr


class MetricsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.s = Server("-c", "4096", "--parallel", "4")

    @classmethod
    def tearDownClass(cls):
        assert cls.s.stop() == 0

    def test_promtool_and_families(self):
        self.s.post("/v1/completions", {"prompt": "Hi", "max_tokens": 3})
        sc = Scrape(self.s)
        self.assertTrue(sc.ctype.startswith("text/plain; version=0.0.4"), sc.ctype)
        rc, out = promtool_check(sc.text)
        self.assertEqual(rc, 0, out)
        self.assertEqual(out.strip(), "", out)  # no lint warnings either
        for name, typ in FAMILIES.items():
            self.assertIn(name, sc.fams, name)
            self.assertEqual(sc.fams[name].get("type"), typ, name)
            self.assertTrue(sc.fams[name].get("help"), name)
        for n, _, _ in sc.samples:
            self.assertTrue(n.startswith("orthoserve_"), n)
            self.assertIn(family_of(n, sc.fams), sc.fams, n)
        # The model label where it applies, build and model info.
        for name in ("orthoserve_prompt_tokens_total", "orthoserve_generated_tokens_total",
                     "orthoserve_prompt_tokens_cached_total"):
            self.assertIsNotNone(sc.get(name, model=MODEL_ID), name)
        for name in HISTOGRAMS:
            self.assertIsNotNone(sc.get(name + "_count", model=MODEL_ID), name)
        info = [l for n, l, v in sc.samples if n == "orthoserve_model_info" and v == 1]
        self.assertEqual(len(info), 1)
        self.assertEqual(info[0]["model"], MODEL_ID)
        self.assertEqual(info[0]["architecture"], "llama")
        self.assertEqual(info[0]["type"], "F32")
        self.assertEqual(info[0]["n_layer"], "5")
        build = [l for n, l, v in sc.samples if n == "orthoserve_build_info" and v == 1]
        self.assertEqual(len(build), 1)
        self.assertRegex(build[0]["version"], r"^\d+\.\d+\.\d+$")
        self.assertIn(build[0]["kernels"], ("scalar", "avx2", "avx2vnni", "avx512"))
        self.assertEqual(sc.get("orthoserve_model_loaded"), 1)
        ratio = sc.get("orthoserve_kv_cache_usage_ratio")
        self.assertTrue(0 <= ratio <= 1)
        self.assertEqual(sc.get("orthoserve_kv_tokens_capacity"), 4096 * 4)
        # stories260K, F16 K and V (the default): 5 layers x 4 kv heads x 8 dims x 2 bytes x 2
        bpt = [(l, v) for n, l, v in sc.samples if n == "orthoserve_kv_cache_bytes_per_token"]
        self.assertEqual(bpt, [({"type_k": "f16", "type_v": "f16"}, 640)])
        self.assertEqual(sc.get("orthoserve_kv_cache_bytes_capacity"), 4096 * 4 * 640)
        self.assertEqual(sc.get("orthoserve_kv_cache_bytes_used"), sc.get("orthoserve_kv_tokens_used") * 640)

    def test_exact_counts(self):
        """Three requests of known sizes (token-id prompts, ignore_eos, one
        streamed, one OrthoRank-sparse): every counter and histogram moves by
        exactly what they imply."""
        reqs = [
            ({"prompt": [1, 400, 401], "max_tokens": 4}, False),
            ({"prompt": [1, 410, 411, 412, 413, 414, 415], "max_tokens": 9}, True),
            ({"prompt": [1] + list(range(300, 339)), "max_tokens": 12, "orthorank": {"sparsity": 0.4}}, False),
        ]
        a = Scrape(self.s)
        results = []
        for body, stream in reqs:
            b = dict(body, temperature=0, ignore_eos=True)
            if stream:
                b.update(stream=True, stream_options={"include_usage": True})
                st, h, data = self.s.request("POST", "/v1/completions", b)
                self.assertEqual(st, 200)
                recs = [json.loads(r[6:]) for r in data.decode().split("\n\n") if r.startswith("data: {")]
                results.append(recs[-1])
            else:
                st, _, j, _ = self.s.post("/v1/completions", b)
                self.assertEqual(st, 200, j)
                results.append(j)
        z = Scrape(self.s)
        d = lambda name, **l: (z.get(name, **l) or 0) - (a.get(name, **l) or 0)

        n_in = [len(r["prompt"]) for r, _ in reqs]
        n_out = [r["max_tokens"] for r, _ in reqs]
        self.assertEqual([r["usage"]["prompt_tokens"] for r in results], n_in)
        self.assertEqual([r["usage"]["completion_tokens"] for r in results], n_out)
        cached = sum(r["usage"]["prompt_tokens_details"]["cached_tokens"] for r in results)
        self.assertEqual(d("orthoserve_http_requests_total", endpoint="completions", status="200"), 3)
        self.assertEqual(d("orthoserve_prompt_tokens_total", model=MODEL_ID), sum(n_in))
        self.assertEqual(d("orthoserve_generated_tokens_total", model=MODEL_ID), sum(n_out))
        self.assertEqual(d("orthoserve_prompt_tokens_cached_total", model=MODEL_ID), cached)
        self.assertEqual(d("orthoserve_requests_finished_total", model=MODEL_ID, finish_reason="length"), 3)
        for phase in ("prefill", "decode"):
            self.assertEqual(d("orthoserve_orthorank_token_layers_total", model=MODEL_ID, phase=phase),
                             sum(r["orthorank"][phase]["token_layers_total"] for r in results))
            self.assertEqual(d("orthoserve_orthorank_token_layers_skipped_total", model=MODEL_ID, phase=phase),
                             sum(r["orthorank"][phase]["token_layers_skipped"] for r in results))
        self.assertGreater(results[2]["orthorank"]["sparsity_effective"], 0)
        self.assertGreaterEqual(d("orthoserve_scheduler_steps_total"), max(n_out))

        def hd(name):
            ba, sa, ca = a.hist(name, model=MODEL_ID)
            bz, sz, cz = z.hist(name, model=MODEL_ID)
            # Cumulative buckets, +Inf last and equal to _count.
            for b in (ba, bz):
                les = [le for le, _ in b]
                self.assertEqual(les, sorted(les), name)
                self.assertEqual(les[-1], math.inf, name)
                counts = [c for _, c in b]
                self.assertEqual(counts, sorted(counts), name + " buckets must be cumulative")
            self.assertEqual(bz[-1][1], cz, name)
            return [(le, c1 - c0) for (le, c1), (_, c0) in zip(bz, ba)], sz - sa, cz - ca

        for name in ("orthoserve_e2e_request_latency_seconds", "orthoserve_time_to_first_token_seconds",
                     "orthoserve_request_queue_time_seconds", "orthoserve_time_per_output_token_seconds",
                     "orthoserve_request_orthorank_sparsity_effective"):
            self.assertEqual(hd(name)[2], 3, name)
        buckets, s, c = hd("orthoserve_request_prompt_tokens")
        self.assertEqual((s, c), (sum(n_in), 3))
        for le, cnt in buckets:  # exact bucket placement of known values
            self.assertEqual(cnt, sum(1 for n in n_in if n <= le), le)
        buckets, s, c = hd("orthoserve_request_generation_tokens")
        self.assertEqual((s, c), (sum(n_out), 3))
        for le, cnt in buckets:
            self.assertEqual(cnt, sum(1 for n in n_out if n <= le), le)
        _, s, c = hd("orthoserve_inter_token_latency_seconds")
        self.assertEqual(c, sum(n - 1 for n in n_out))
        _, s, c = hd("orthoserve_request_orthorank_sparsity_effective")
        want = sum(r["orthorank"]["sparsity_effective"] for r in results)
        self.assertAlmostEqual(s, want, delta=1e-3)
        # TTFT <= e2e, both positive.
        _, s_ttft, _ = hd("orthoserve_time_to_first_token_seconds")
        _, s_e2e, _ = hd("orthoserve_e2e_request_latency_seconds")
        self.assertGreater(s_ttft, 0)
        self.assertLessEqual(s_ttft, s_e2e)

    def test_errors_and_cancellations_counted(self):
        a = Scrape(self.s)
        self.assertEqual(self.s.post("/v1/completions", {"prompt": "Hi", "max_tokens": -1})[0], 400)
        self.assertEqual(self.s.request("GET", "/nope")[0], 404)
        # A stream whose client goes away.
        body = json.dumps({"prompt": "Once", "max_tokens": 4000, "ignore_eos": True, "stream": True}).encode()
        sock = connect(self.s.port)
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.assertIn(b"data: {", read_until(sock, b"data: {", "the stream's first chunk"))
        sock.close()
        cancelled = lambda sc: sc.get("orthoserve_requests_cancelled_total", reason="client_disconnect") or 0

        def scrape_after_cancel():
            sc = Scrape(self.s)
            return sc if cancelled(sc) > cancelled(a) else None

        z = wait_for(scrape_after_cancel, "the dropped stream's client_disconnect cancellation")
        d = lambda name, **l: (z.get(name, **l) or 0) - (a.get(name, **l) or 0)
        self.assertEqual(d("orthoserve_requests_cancelled_total", reason="client_disconnect"), 1)
        self.assertEqual(d("orthoserve_requests_finished_total", model=MODEL_ID, finish_reason="cancelled"), 1)
        self.assertEqual(d("orthoserve_http_requests_total", endpoint="completions", status="400"), 1)
        self.assertEqual(d("orthoserve_http_requests_total", endpoint="other", status="404"), 1)
        self.assertEqual(d("orthoserve_e2e_request_latency_seconds_count", model=MODEL_ID), 1)

    def test_step_duration_sampled_under_load(self):
        # Three long streams, dropped as soon as the server has timed a
        # window of back-to-back steps (it looks every 100 ms): as long as
        # that takes on this machine, no longer.
        a = Scrape(self.s)
        body = json.dumps({"prompt": "Once upon a time", "max_tokens": 1500, "ignore_eos": True,
                           "stream": True}).encode()
        socks = []
        try:
            for _ in range(3):
                socks.append(connect(self.s.port))
                socks[-1].sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                  b"Content-Length: %d\r\n\r\n" % len(body) + body)
            wait_for(lambda: (Scrape(self.s).get("orthoserve_step_duration_seconds_count", model=MODEL_ID) or 0) > 0,
                     "a step duration sample under load")
        finally:
            for k in socks:
                k.close()
        wait_for(lambda: Scrape(self.s).get("orthoserve_requests_running") == 0, "the dropped streams to end")
        z = Scrape(self.s)
        _, s, c = z.hist("orthoserve_step_duration_seconds", model=MODEL_ID)
        steps = z.get("orthoserve_scheduler_steps_total") - a.get("orthoserve_scheduler_steps_total")
        self.assertGreater(c, 0)
        self.assertLessEqual(c, z.get("orthoserve_scheduler_steps_total"))
        self.assertGreater(steps, 0)
        self.assertTrue(0 < s / c < scaled(1), s / c)


class RequestIdTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.s = Server("--api-key", "k")

    @classmethod
    def tearDownClass(cls):
        assert cls.s.stop() == 0

    def test_every_response_has_an_id(self):
        auth = {"Authorization": "Bearer k"}
        ids = set()
        for method, path, body, hdr, want in (
                ("GET", "/health", None, {}, 200), ("GET", "/metrics", None, {}, 200),
                ("GET", "/v1/models", None, {}, 401), ("GET", "/v1/models", None, auth, 200),
                ("GET", "/nope", None, {}, 401), ("POST", "/health", b"", {}, 405),
                ("POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 2}, auth, 200),
                ("POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 2, "stream": True}, auth, 200),
                ("POST", "/v1/completions", "{", auth, 400)):
            st, h, _ = self.s.request(method, path, body, hdr)
            self.assertEqual(st, want, path)
            self.assertIn("x-request-id", h, path)
            ids.add(h["x-request-id"])
        self.assertEqual(len(ids), 9, "generated ids are unique")
        for i in ids:
            self.assertRegex(i, r"^req-[0-9a-f]{8}-\d+$")

    def test_incoming_id(self):
        for given, kept in (("abc-123", True), ("x" * 128, True), ("x" * 129, False), ("has space", False),
                            ("tab\there", False), ("ünïcode", False), ("trace=1;span=2/\"q\"", True)):
            hdr = {"X-Request-Id": given.encode("utf-8").decode("latin-1")}
            st, h, _ = self.s.request("GET", "/health", None, hdr)
            self.assertEqual(st, 200)
            if kept:
                self.assertEqual(h["x-request-id"], given)
            else:
                self.assertRegex(h["x-request-id"], r"^req-[0-9a-f]{8}-\d+$", given)
        st, h, j, _ = self.s.post("/v1/completions", {"prompt": "Hi", "max_tokens": 2},
                                  {"Authorization": "Bearer k", "X-Request-Id": "mine-42"})
        self.assertEqual(h["x-request-id"], "mine-42")
        # The line is written once the response is out: the client may see it first.
        line = wait_for(lambda: [l for l in self.s.log_text().splitlines() if " mine-42 " in l],
                        "the request's log line")
        self.assertEqual(len(line), 1, self.s.log_text())
        self.assertRegex(line[0], r"^orthoserve: mine-42 POST /v1/completions 200 in=\d+ out=2 cached=\d+ "
                                  r"ttft_ms=[\d.]+ total_ms=[\d.]+ sparsity=0\.0000$")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class LogFormatTest(unittest.TestCase):
    def test_json_lines_content(self):
        s = Server("--log-format", "json")
        try:
            st, h, j, _ = s.post("/v1/completions", {"prompt": [1, 400, 401], "max_tokens": 3,
                                                     "ignore_eos": True, "orthorank": {"sparsity": 0.4}},
                                 {"X-Request-Id": "json-1"})
            self.assertEqual(st, 200)
            self.assertEqual(s.request("GET", "/nope")[0], 404)
        finally:
            self.assertEqual(s.stop(), 0)
        # The whole log: every line is written by the time the server has exited.
        lines = s.final_log.splitlines()
        objs = [json.loads(l) for l in lines]  # every line is one JSON object
        for o in objs:
            self.assertRegex(o["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
            self.assertIn(o["level"], ("error", "warn", "info", "debug"))
            self.assertIsInstance(o["msg"], str)
        self.assertTrue(any(o["msg"].startswith("listening on http://") for o in objs))
        req = [o for o in objs if o.get("request_id") == "json-1"]
        self.assertEqual(len(req), 1)
        r = req[0]
        self.assertEqual((r["msg"], r["method"], r["path"], r["status"]),
                         ("request", "POST", "/v1/completions", 200))
        self.assertEqual((r["tokens_in"], r["tokens_out"]), (3, 3))
        self.assertGreater(r["ttft_ms"], 0)
        self.assertGreaterEqual(r["total_ms"], r["ttft_ms"])
        self.assertAlmostEqual(r["sparsity_effective"], j["orthorank"]["sparsity_effective"], delta=1e-3)
        self.assertIs(r["cancelled"], None)
        nf = [o for o in objs if o.get("path") == "/nope"]
        self.assertEqual(nf[0]["status"], 404)
        self.assertIsNone(nf[0]["ttft_ms"])
        self.assertIsNone(nf[0]["sparsity_effective"])

    def run_level(self, level):
        port = free_port()
        e = {k: v for k, v in os.environ.items() if not k.startswith("ORTHOSERVE_")}
        p = subprocess.Popen([BIN, "serve", "-m", MODEL, "--host", "127.0.0.1", "--port", str(port),
                              "--log-level", level], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=e)
        import http.client

        def healthy():
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=scaled(10))
                c.request("GET", "/health")
                ok = c.getresponse().status == 200
                c.close()
                return ok
            except OSError:
                return False

        try:
            wait_for(healthy, "GET /health 200 at --log-level " + level, 60)
        finally:
            p.terminate()
            _, err = p.communicate(timeout=scaled(60))
        self.assertEqual(p.returncode, 0)
        return err.decode()

    def test_levels(self):
        self.assertEqual(self.run_level("warn"), "")
        self.assertEqual(self.run_level("error"), "")
        info = self.run_level("info")
        self.assertIn("listening on", info)
        self.assertIn("GET /health 200", info)
        self.assertNotIn("engine debug", info)
        debug = self.run_level("debug")
        self.assertIn("GET /health 200", debug)


if __name__ == "__main__":
    unittest.main(verbosity=2)
