"""orthoserve serve over real HTTP: endpoints, golden output, streaming,
logprobs/echo, tokenize, orthorank, metrics, contract (openapi.yaml)."""
import json
import os
import subprocess
import unittest

from e2eutil import BIN, MODEL, MODEL_ID, OpenAPI, Server, load_golden, parse_sse, run_threads, scaled, stream_post

GOLDEN = load_golden()
G0 = GOLDEN["greedy"][0]  # "Once upon a time", n_predict 48


class HttpTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.s = Server("-c", "2048", "--parallel", "4")
        cls.api = OpenAPI()

    @classmethod
    def tearDownClass(cls):
        rc = cls.s.stop()
        assert rc == 0, "server exit code %r" % rc

    # --- operational endpoints ------------------------------------------
    def test_health_ready(self):
        st, j = self.s.get_json("/health")
        self.assertEqual(st, 200)
        self.api.check(j, "/health", "GET", 200)
        st, j = self.s.get_json("/ready")
        self.assertEqual(st, 200)
        self.api.check(j, "/ready", "GET", 200)

    def test_models(self):
        st, j = self.s.get_json("/v1/models")
        self.assertEqual(st, 200)
        self.api.check(j, "/v1/models", "GET", 200)
        self.assertEqual(j["data"][0]["id"], MODEL_ID)
        st, j = self.s.get_json("/v1/models/" + MODEL_ID)
        self.assertEqual(st, 200)
        self.api.check(j, "/v1/models/{id}", "GET", 200)
        st, j = self.s.get_json("/v1/models/nope")
        self.assertEqual(st, 404)
        self.api.check(j, "/v1/models/{id}", "GET", 404)

    def test_tokenize_detokenize(self):
        st, _, j, _ = self.s.post("/tokenize", {"content": "Once upon a time", "add_special": True})
        self.assertEqual(st, 200)
        self.api.check(j, "/tokenize", "POST", 200)
        self.assertEqual(j["tokens"], G0["prompt_tokens"])
        st, _, j2, _ = self.s.post("/tokenize", {"content": "Once upon", "with_pieces": True})
        self.assertEqual(st, 200)
        self.api.check(j2, "/tokenize", "POST", 200)
        self.assertTrue(all("id" in t and "piece" in t for t in j2["tokens"]))
        st, _, j3, _ = self.s.post("/detokenize", {"tokens": G0["prompt_tokens"][1:]})
        self.assertEqual(st, 200)
        self.api.check(j3, "/detokenize", "POST", 200)
        self.assertEqual(j3["content"].strip(), "Once upon a time")

    def test_metrics(self):
        self.s.post("/v1/completions", {"prompt": "Hi", "max_tokens": 2})
        st, h, data = self.s.request("GET", "/metrics")
        self.assertEqual(st, 200)
        self.assertTrue(h["content-type"].startswith("text/plain"))
        text = data.decode()
        for name in ("orthoserve_http_requests_total", "orthoserve_prompt_tokens_total",
                     "orthoserve_generated_tokens_total", "orthoserve_requests_cancelled_total"):
            self.assertIn("# TYPE " + name, text)
        m = self.s.metrics()
        self.assertGreaterEqual(m['orthoserve_http_requests_total{endpoint="completions",status="200"}'], 1)

    # --- golden output -----------------------------------------------------
    def greedy_completion(self, **extra):
        body = {"model": MODEL_ID, "prompt": "Once upon a time", "max_tokens": 48, "temperature": 0,
                "ignore_eos": True}
        body.update(extra)
        return self.s.post("/v1/completions", body)

    def test_golden_greedy(self):
        st, _, j, _ = self.greedy_completion()
        self.assertEqual(st, 200, j)
        self.api.check(j, "/v1/completions", "POST", 200)
        self.assertEqual(j["choices"][0]["text"], G0["text"])
        self.assertEqual(j["choices"][0]["finish_reason"], "length")
        u = dict(j["usage"])
        cached = u.pop("prompt_tokens_details")["cached_tokens"]
        self.assertEqual(u, {"prompt_tokens": 5, "completion_tokens": 48, "total_tokens": 53})
        self.assertIn(cached, (0, 4), "the prompt is new, or all but its last token come from the prefix cache")
        o = j["orthorank"]
        # Dense: nothing skipped. Prefill counts the prompt tokens computed
        # (the rest came from the prefix cache); decode the 47 tokens fed
        # back (the 48th is sampled, never computed).
        computed = 5 - j["usage"]["prompt_tokens_details"]["cached_tokens"]
        self.assertEqual(o, {"method": "orthorank", "decode_policy": "threshold", "decode_grouping": "none",
                             "sparsity_requested": 0,
                             "sparsity_target": 0, "token_ratio": 0.3333, "layers": [], "layer_order_source": "fallback",
                             "prefill": {"tokens": computed, "token_layers_total": 5 * computed,
                                         "token_layers_skipped": 0},
                             "decode": {"tokens": 47, "token_layers_total": 235, "token_layers_skipped": 0},
                             "sparsity_effective": 0, "flops_saved_fraction": 0})

    def test_generate_equals_http(self):
        out = subprocess.run([BIN, "generate", "-m", MODEL, "-p", "Once upon a time", "-n", "48", "--ignore-eos"],
                             capture_output=True, timeout=scaled(120))
        self.assertEqual(out.returncode, 0)
        st, _, j, _ = self.greedy_completion()
        self.assertEqual(j["choices"][0]["text"].encode(), out.stdout)

    def test_concurrent_same_seed(self):
        body = {"prompt": "The little dog", "max_tokens": 40, "temperature": 0.9, "seed": 1234}
        ref = self.s.post("/v1/completions", body)[2]["choices"][0]["text"]
        res = [None] * 4

        def run(i):
            res[i] = self.s.post("/v1/completions", body)[2]["choices"][0]["text"]
        run_threads([lambda i=i: run(i) for i in range(4)], "4 concurrent sampled requests")
        self.assertEqual(res, [ref] * 4)

    # --- chat ----------------------------------------------------------------
    def test_chat_shapes(self):
        body = {"model": MODEL_ID, "messages": [{"role": "system", "content": "Be nice."},
                                                {"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
                "max_tokens": 12, "temperature": 0, "user": "me", "some_unknown_field": 1,
                "response_format": {"type": "text"}, "top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1,
                "presence_penalty": 0.1, "frequency_penalty": 0.1, "logit_bias": {"13": -100}, "n": 1}
        st, _, j, _ = self.s.post("/v1/chat/completions", body)
        self.assertEqual(st, 200, j)
        self.api.check(j, "/v1/chat/completions", "POST", 200)
        self.assertEqual(j["object"], "chat.completion")
        self.assertEqual(j["choices"][0]["message"]["role"], "assistant")
        self.assertEqual(j["usage"]["completion_tokens"], 12)
        # generated tokens fed back through the model: all but the last, sampled one
        self.assertEqual(j["orthorank"]["decode"]["tokens"], 11)

    def test_chat_max_completion_tokens_and_logprobs(self):
        body = {"messages": [{"role": "user", "content": "Once upon a time"}], "max_completion_tokens": 5,
                "temperature": 0, "logprobs": True, "top_logprobs": 3}
        st, _, j, _ = self.s.post("/v1/chat/completions", body)
        self.assertEqual(st, 200, j)
        self.api.check(j, "/v1/chat/completions", "POST", 200)
        content = j["choices"][0]["logprobs"]["content"]
        self.assertEqual(len(content), 5)
        for e in content:
            self.assertEqual(len(e["top_logprobs"]), 3)
            self.assertAlmostEqual(e["logprob"], e["top_logprobs"][0]["logprob"], places=5)  # greedy
            self.assertEqual(bytes(e["bytes"]).decode(), e["token"])

    # --- streaming -------------------------------------------------------------
    def check_stream(self, path, body, schema_path):
        st, h, raw = self.s.request("POST", path, body)
        self.assertEqual(st, 200, raw[:300])
        self.assertEqual(h["content-type"], "text/event-stream")
        recs = parse_sse(raw)
        chunks = [json.loads(r) for r in recs[:-1]]
        for c in chunks:
            if "error" not in c:
                self.api.check(c, schema_path, "POST", 200, "text/event-stream")
        return chunks

    def test_chat_stream_equals_nonstream(self):
        base = {"messages": [{"role": "user", "content": "Tell me a story"}], "max_tokens": 40,
                "temperature": 0.8, "seed": 7}
        st, _, whole, _ = self.s.post("/v1/chat/completions", base)
        self.assertEqual(st, 200)
        chunks = self.check_stream("/v1/chat/completions", dict(base, stream=True,
                                   stream_options={"include_usage": True}), "/v1/chat/completions")
        self.assertEqual(chunks[0]["choices"][0]["delta"], {"role": "assistant", "content": ""})
        fin = chunks[-2]
        self.assertEqual(fin["choices"][0]["delta"], {})
        self.assertEqual(fin["choices"][0]["finish_reason"], whole["choices"][0]["finish_reason"])
        last = chunks[-1]
        self.assertEqual(last["choices"], [])
        strip = lambda u: {k: v for k, v in u.items() if k != "prompt_tokens_details"}
        self.assertEqual(strip(last["usage"]), strip(whole["usage"]))  # the second may reuse the first's prefix
        self.assertIn("orthorank", last)
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1])
        self.assertEqual(text, whole["choices"][0]["message"]["content"])
        ids = {c["id"] for c in chunks}
        self.assertEqual(len(ids), 1)
        for c in chunks[1:-2]:
            self.assertTrue(c["choices"][0]["delta"]["content"])  # text chunks are never empty
            self.assertIsNone(c["usage"])

    def test_stream_without_usage(self):
        chunks = self.check_stream("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}],
                                   "max_tokens": 5, "temperature": 0, "stream": True}, "/v1/chat/completions")
        self.assertEqual(chunks[-1]["choices"][0]["finish_reason"], "length")
        self.assertIn("orthorank", chunks[-1])
        self.assertNotIn("usage", chunks[-1])

    def test_completion_stream_equals_nonstream(self):
        st, _, whole, _ = self.greedy_completion()
        chunks = self.check_stream("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 48,
                                   "temperature": 0, "ignore_eos": True, "stream": True}, "/v1/completions")
        text = "".join(c["choices"][0]["text"] for c in chunks)
        self.assertEqual(text, whole["choices"][0]["text"])
        self.assertEqual(text, G0["text"])
        self.assertEqual(chunks[-1]["choices"][0]["finish_reason"], "length")
        self.assertEqual(chunks[-1]["choices"][0]["text"], "")

    def test_sse_bytes_exact(self):
        st, h, raw = self.s.request("POST", "/v1/completions", {"prompt": "Once upon a time", "max_tokens": 3,
                                                                 "temperature": 0, "stream": True})
        recs = raw.split(b"\n\n")
        self.assertEqual(recs[-2:], [b"data: [DONE]", b""])
        self.assertTrue(all(r.startswith(b"data: {") and r.endswith(b"}") for r in recs[:-2]))
        self.assertEqual(len(recs[:-2]), 4)  # 3 tokens + finish

    # --- stop strings ------------------------------------------------------------
    def test_stop_strings(self):
        full = G0["text"]
        for stop in (" Lily", ["park", "zzz"], "d Li", ".", "girl named"):
            st, _, j, _ = self.greedy_completion(stop=stop)
            self.assertEqual(st, 200, j)
            stops = [stop] if isinstance(stop, str) else stop
            cut = min(full.find(x) for x in stops if x in full)
            self.assertEqual(j["choices"][0]["text"], full[:cut])
            self.assertEqual(j["choices"][0]["finish_reason"], "stop")
            chunks = [json.loads(r) for r in parse_sse(self.s.request("POST", "/v1/completions", {
                "prompt": "Once upon a time", "max_tokens": 48, "temperature": 0, "ignore_eos": True,
                "stop": stop, "stream": True})[2])[:-1]]
            self.assertEqual("".join(c["choices"][0]["text"] for c in chunks), full[:cut])
            self.assertEqual(chunks[-1]["choices"][0]["finish_reason"], "stop")
        st, _, j, _ = self.greedy_completion(stop="not in the text")
        self.assertEqual(j["choices"][0]["text"], full)

    # --- logprobs / echo -------------------------------------------------------
    def test_completion_logprobs(self):
        st, _, j, _ = self.greedy_completion(max_tokens=6, logprobs=2)
        self.assertEqual(st, 200)
        self.api.check(j, "/v1/completions", "POST", 200)
        lp = j["choices"][0]["logprobs"]
        self.assertEqual(len(lp["tokens"]), 6)
        self.assertEqual("".join(lp["tokens"]), j["choices"][0]["text"])
        for t, l, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
            self.assertEqual(len(top), 2)
            self.assertAlmostEqual(l, max(top.values()), places=6)
        self.assertEqual(lp["text_offset"][0], 0)

    def test_echo_scoring(self):
        """lm-evaluation-harness style: echo + logprobs + max_tokens 0 scores the prompt."""
        gen = self.greedy_completion(max_tokens=8, logprobs=1)[2]
        gen_lps = gen["choices"][0]["logprobs"]["token_logprobs"]
        ids = G0["prompt_tokens"] + G0["tokens"][:8]
        st, _, j, _ = self.s.post("/v1/completions", {"prompt": ids, "max_tokens": 0, "echo": True,
                                                       "logprobs": 1, "temperature": 0})
        self.assertEqual(st, 200, j)
        self.api.check(j, "/v1/completions", "POST", 200)
        lp = j["choices"][0]["logprobs"]
        self.assertEqual(len(lp["tokens"]), len(ids))
        self.assertIsNone(lp["token_logprobs"][0])
        self.assertIsNone(lp["top_logprobs"][0])
        cont = lp["token_logprobs"][len(G0["prompt_tokens"]):]
        for a, b in zip(cont, gen_lps):
            self.assertAlmostEqual(a, b, delta=1e-3)
        # greedy continuation: every continuation token is the argmax
        for l, top in zip(cont, lp["top_logprobs"][len(G0["prompt_tokens"]):]):
            self.assertEqual(l, max(top.values()))
        self.assertEqual(j["usage"]["completion_tokens"], 0)
        self.assertEqual(j["usage"]["prompt_tokens"], len(ids))
        # lm-eval's own request shape: prompt as an array of one token list, max_tokens 1
        st, _, j2, _ = self.s.post("/v1/completions", {"prompt": [ids], "max_tokens": 1, "echo": True,
                                                        "logprobs": 1, "temperature": 0, "seed": 1})
        self.assertEqual(st, 200, j2)
        lp2 = j2["choices"][0]["logprobs"]
        self.assertEqual(lp2["token_logprobs"][:-1], lp["token_logprobs"])

    def test_echo_string_prompt(self):
        st, _, j, _ = self.s.post("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 4, "echo": True,
                                                       "temperature": 0})
        self.assertEqual(st, 200)
        self.assertEqual(j["choices"][0]["text"], "Once upon a time" + G0["text"][:len(j["choices"][0]["text"]) - 16])
        self.assertTrue(j["choices"][0]["text"].startswith("Once upon a time,"))

    # --- orthorank ----------------------------------------------------------------
    def test_orthorank_settings(self):
        ok = {"sparsity": 0, "token_ratio": 0.3333, "layers": [], "decode": "threshold", "method": "random"}
        st, _, j, _ = self.greedy_completion(max_tokens=2, orthorank=ok)
        self.assertEqual(st, 200, j)
        for bad, param in (({"sparsity": 0.2, "token_ratio": 1}, "orthorank.token_ratio"),
                           ({"layers": [1, 1]}, "orthorank.layers"),
                           ({"token_ratio": 0}, "orthorank.token_ratio"), ({"sparsity": 1.5}, "orthorank.sparsity"),
                           ({"layers": [99]}, "orthorank.layers"), ({"decode": "x"}, "orthorank.decode"),
                           ({"method": 3}, "orthorank.method"), ({"token_ratio": "a"}, "orthorank.token_ratio")):
            st, _, j, _ = self.greedy_completion(max_tokens=2, orthorank=bad)
            self.assertEqual(st, 400, (bad, j))
            self.assertEqual(j["error"]["param"], param)
            self.api.check(j, "/v1/completions", "POST", 400)

    def sparse_prompt(self):
        # a prompt long enough (>= min_tokens 16) for prompt selection to apply
        with open(os.path.join(os.path.dirname(MODEL), "..", "corpus", "tinystories_val.txt")) as f:
            return " ".join(f.read().split()[:60])

    def test_orthorank_stats_are_real(self):
        prompt = self.sparse_prompt()
        body = {"model": MODEL_ID, "prompt": prompt, "max_tokens": 8, "temperature": 0, "ignore_eos": True,
                "orthorank": {"sparsity": 0.2}}
        st, _, j, _ = self.s.post("/v1/completions", body)
        self.assertEqual(st, 200, j)
        self.api.check(j, "/v1/completions", "POST", 200)
        o = j["orthorank"]
        L = 5
        # round(0.2 * 5 / (2/3)) = 2 layers of the fallback order (deepest first); with k = 1/3 that
        # plans 0.267, more than 0.02 over, so k = 1 - 0.2 * 5 / 2 = 0.5 (docs/ORTHORANK.md, "Targets")
        self.assertEqual(o["layers"], [4, 3])
        self.assertEqual((o["token_ratio"], o["sparsity_target"]), (0.5, 0.2))
        self.assertEqual(o["layer_order_source"], "fallback")
        pf = o["prefill"]
        self.assertEqual(pf["tokens"], j["usage"]["prompt_tokens"], "sparsified requests never reuse a prefix")
        self.assertEqual(pf["token_layers_total"], L * pf["tokens"])
        self.assertGreater(pf["token_layers_skipped"], 0)
        # per OrthoRank layer round(N/2) rows are updated (+1 for the last token at most)
        n = pf["tokens"]
        lo, hi = 2 * (n - round(n / 2) - 1), 2 * (n - round(n / 2))
        self.assertTrue(lo <= pf["token_layers_skipped"] <= hi, (pf, lo, hi))
        tot = pf["token_layers_total"] + o["decode"]["token_layers_total"]
        sk = pf["token_layers_skipped"] + o["decode"]["token_layers_skipped"]
        self.assertAlmostEqual(o["sparsity_effective"], round(sk / tot, 4), places=4)
        self.assertGreater(o["flops_saved_fraction"], 0)
        self.assertLess(o["flops_saved_fraction"], o["sparsity_effective"], "K/V projections are still paid")
        # layer skipping at the same sparsity: round(0.2 * 5) = 1 layer, every token skipped there
        body["orthorank"] = {"sparsity": 0.2, "method": "layer_skip"}
        st, _, j2, _ = self.s.post("/v1/completions", body)
        self.assertEqual(st, 200, j2)
        o2 = j2["orthorank"]
        self.assertEqual(o2["method"], "layer_skip")
        self.assertEqual(len(o2["layers"]), 1)
        self.assertEqual(o2["prefill"]["token_layers_skipped"], o2["prefill"]["tokens"])
        self.assertEqual(o2["decode"]["token_layers_skipped"], o2["decode"]["tokens"])
        # an explicit layer list, streamed: the stats arrive in the final chunk
        body = {"model": MODEL_ID, "prompt": prompt, "max_tokens": 4, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}, "orthorank": {"layers": [2], "token_ratio": 0.5}}
        st, _, raw = stream_post(self.s, "/v1/completions", body)
        self.assertEqual(st, 200)
        last = json.loads(parse_sse(raw)[-2])
        self.assertEqual(last["orthorank"]["layers"], [2])
        self.assertEqual(last["orthorank"]["token_ratio"], 0.5)
        self.assertGreater(last["orthorank"]["prefill"]["token_layers_skipped"], 0)

    def test_two_concurrent_requests_get_their_own_stats(self):
        prompt = self.sparse_prompt()
        out = {}

        def run(name, orank):
            body = {"model": MODEL_ID, "prompt": prompt, "max_tokens": 6, "temperature": 0, "ignore_eos": True}
            if orank is not None:
                body["orthorank"] = orank
            out[name] = self.s.post("/v1/completions", body)

        run_threads([lambda: run("dense", None), lambda: run("sparse", {"sparsity": 0.3, "token_ratio": 0.5})],
                    "a dense and a sparse request at once")
        st, _, d, _ = out["dense"]
        st2, _, s, _ = out["sparse"]
        self.assertEqual((st, st2), (200, 200))
        self.assertEqual(d["orthorank"]["sparsity_effective"], 0)
        self.assertEqual(d["orthorank"]["layers"], [])
        self.assertEqual(s["orthorank"]["sparsity_requested"], 0.3)
        self.assertEqual(s["orthorank"]["layers"], [4, 3, 2])  # round(0.3 * 5 / 0.5) = 3
        self.assertGreater(s["orthorank"]["sparsity_effective"], 0)

    def test_orthorank_plan_endpoint(self):
        st, j = self.s.get_json("/v1/orthorank")
        self.assertEqual(st, 200, j)
        self.api.check(j, "/v1/orthorank", "GET", 200)
        self.assertEqual(j["n_layer"], 5)
        self.assertEqual(j["layer_order_source"], "fallback")
        self.assertEqual(j["orthorank_order"], [4, 3, 2, 1])
        self.assertEqual(j["defaults"]["sparsity"], 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
