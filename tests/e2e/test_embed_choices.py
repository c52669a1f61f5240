"""/v1/embeddings, n > 1 and prompt lists over HTTP (issue 21, parts 3-4).

Embeddings: the response shape (openapi.yaml), unit length, dimensions
(truncate, renormalise), base64 == float, one text the same alone and among
64 inputs sent while generations run (within 1e-5), cls pooling of a causal
model (every text starting with BOS gets the BOS row), the errors (empty
input, too many inputs, too long, bad token id, bad encoding_format or
dimensions, unknown model), KV returned afterwards.
n: n = 4 computes the prompt once (orthoserve_prompt_tokens_total grows by
the prompt once; usage and timings count it once), each choice equals the
request with n = 1 and seed + index, streamed choices interleave by index and
each equals its non-streamed text, n above max_n is a 400.
Prompt lists: 4 prompts with echo + logprobs and max_tokens 0 (as
lm-evaluation-harness sends them) equal four single requests, in prompt
order; with n = 2 the index is prompt * n + j; max_prompts is a 400.
"""
import base64
import json
import math
import struct
import threading
import unittest

from e2eutil import MODEL_ID, OpenAPI, Server, parse_sse, wait_for

TEXTS = ["Once upon a time", "The little dog ran home.", "Lily liked the sun.", "He was happy."]


def norm(v):
    return math.sqrt(sum(x * x for x in v))


class EmbeddingsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.s = Server("-c", "256", "--parallel", "8", "--max-embedding-inputs", "64", "--max-queue", "80")
        cls.api = OpenAPI()

    @classmethod
    def tearDownClass(cls):
        assert cls.s.stop() == 0

    def embed(self, body, status=200):
        st, _, j, raw = self.s.post("/v1/embeddings", body)
        self.assertEqual(st, status, raw[:400])
        return j

    def test_shape_norm_dimensions_base64(self):
        j = self.embed({"model": MODEL_ID, "input": TEXTS, "encoding_format": "float", "user": "u1"})
        self.api.check(j, "/v1/embeddings", "POST", 200)
        self.assertEqual([d["index"] for d in j["data"]], [0, 1, 2, 3])
        for d in j["data"]:
            self.assertAlmostEqual(norm(d["embedding"]), 1.0, places=5)
        full = j["data"][0]["embedding"]
        self.assertNotEqual(full, j["data"][1]["embedding"])
        d8 = self.embed({"input": TEXTS[0], "dimensions": 8})["data"][0]["embedding"]
        head = full[:8]
        for a, b in zip(d8, head):
            self.assertAlmostEqual(a, b / norm(head), places=5)
        b64 = self.embed({"input": TEXTS[0], "encoding_format": "base64"})
        self.api.check(b64, "/v1/embeddings", "POST", 200)
        raw = base64.b64decode(b64["data"][0]["embedding"])
        vals = struct.unpack("<%df" % (len(raw) // 4), raw)
        self.assertEqual(len(vals), len(full))
        self.assertLess(max(abs(a - b) for a, b in zip(vals, full)), 1e-6)
        # token ids and lists of them are inputs too
        self.assertEqual(len(self.embed({"input": [1, 403, 407]})["data"]), 1)
        self.assertEqual(len(self.embed({"input": [[1, 403], [1, 407, 261]]})["data"]), 2)

    def test_same_alone_and_in_a_batch_of_64_beside_generations(self):
        alone = self.embed({"input": TEXTS[2], "encoding_format": "float"})["data"][0]["embedding"]
        batch = ["%s %d" % (TEXTS[i % 4], i) for i in range(64)]
        batch[37] = TEXTS[2]
        gens = []

        def generate():
            st, _, j, _ = self.s.post("/v1/completions", {"prompt": "Once", "max_tokens": 60, "ignore_eos": True})
            gens.append(st)

        threads = [threading.Thread(target=generate) for _ in range(2)]
        for t in threads:
            t.start()
        j = self.embed({"input": batch, "encoding_format": "float"})
        for t in threads:
            t.join(120)
        self.assertEqual(gens, [200, 200])
        self.assertEqual(len(j["data"]), 64)
        got = j["data"][37]["embedding"]
        self.assertLess(max(abs(a - b) for a, b in zip(alone, got)), 1e-5)
        # nothing is held once they are done
        wait_for(lambda: self.s.metrics()["orthoserve_requests_running"] == 0 and
                 self.s.metrics()["orthoserve_kv_tokens_used"] == 0, "no request running, no KV held", 30)

    def test_errors(self):
        cases = [
            ({}, 400, "input"),
            ({"input": ""}, 400, "input"),
            ({"input": []}, 400, "input"),
            ({"input": ["a", ""]}, 400, "input[1]"),
            ({"input": ["x"] * 65}, 400, "input"),
            ({"input": "word " * 400}, 400, "input"),
            ({"input": [[1, 2], [99999]]}, 400, "input[1]"),
            ({"input": "a", "encoding_format": "int8"}, 400, "encoding_format"),
            ({"input": "a", "dimensions": 0}, 400, "dimensions"),
            ({"input": "a", "dimensions": 100000}, 400, "dimensions"),
            ({"input": "a", "user": 5}, 400, "user"),
            ({"input": "a", "model": "nope"}, 404, "model"),
        ]
        for body, status, param in cases:
            st, _, j, raw = self.s.post("/v1/embeddings", body)
            self.assertEqual(st, status, (body, raw[:300]))
            self.assertEqual(j["error"]["param"], param, body)
            self.api.check(j, "/v1/embeddings", "POST", status)
        too_long = self.s.post("/v1/embeddings", {"input": "word " * 400})[2]
        self.assertEqual(too_long["error"]["code"], "context_length_exceeded")


class PoolingConfigTest(unittest.TestCase):
    def test_cls_pooling_is_the_first_row(self):
        s = Server("-c", "128", "--pooling", "cls")
        try:
            st, _, j, _ = s.post("/v1/embeddings", {"input": TEXTS, "encoding_format": "float"})
            self.assertEqual(st, 200)
            first = j["data"][0]["embedding"]  # every text starts with BOS: the same first row
            for d in j["data"][1:]:
                self.assertLess(max(abs(a - b) for a, b in zip(first, d["embedding"])), 1e-6)
        finally:
            self.assertEqual(s.stop(), 0)
        s = Server("-c", "128", "--pooling", "last")
        try:
            a = s.post("/v1/embeddings", {"input": [[1, 403, 407], [1, 403]], "encoding_format": "float"})[2]
            self.assertNotEqual(a["data"][0]["embedding"], a["data"][1]["embedding"])
        finally:
            self.assertEqual(s.stop(), 0)


class ChoicesTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.s = Server("-c", "256", "--parallel", "8", "--max-prompts", "8")
        cls.api = OpenAPI()

    @classmethod
    def tearDownClass(cls):
        assert cls.s.stop() == 0

    def prompt_counter(self):
        return self.s.metrics()['orthoserve_prompt_tokens_total{model="%s"}' % MODEL_ID]

    def test_n4_computes_the_prompt_once_and_each_choice_equals_its_seed(self):
        body = {"prompt": "Once upon a time there was a", "max_tokens": 16, "seed": 1000, "temperature": 0.9,
                "cache_salt": "n4"}
        before = self.prompt_counter()
        st, _, j, raw = self.s.post("/v1/completions", dict(body, n=4))
        self.assertEqual(st, 200, raw[:300])
        self.api.check(j, "/v1/completions", "POST", 200)
        n_prompt = j["usage"]["prompt_tokens"]
        self.assertEqual(self.prompt_counter() - before, n_prompt, "the prompt counted once")
        self.assertEqual(j["timings"]["prompt_n"], n_prompt)
        self.assertEqual([c["index"] for c in j["choices"]], [0, 1, 2, 3])
        self.assertGreater(len({c["text"] for c in j["choices"]}), 1)
        generated = 0
        for i, c in enumerate(j["choices"]):
            st, _, one, _ = self.s.post("/v1/completions", dict(body, seed=1000 + i, cache_salt="single%d" % i))
            self.assertEqual(st, 200)
            self.assertEqual(one["usage"]["prompt_tokens"], n_prompt)
            generated += one["usage"]["completion_tokens"]
            self.assertEqual(one["choices"][0]["text"], c["text"], "choice %d" % i)
            self.assertEqual(one["choices"][0]["finish_reason"], c["finish_reason"])
        self.assertEqual(j["usage"]["completion_tokens"], generated)

    def test_chat_n_streamed_interleaves_by_index(self):
        body = {"messages": [{"role": "user", "content": "Tell a story"}], "max_tokens": 10, "seed": 5, "n": 3,
                "temperature": 1.0}
        st, _, whole, _ = self.s.post("/v1/chat/completions", body)
        self.assertEqual(st, 200)
        st, _, raw = self.s.request("POST", "/v1/chat/completions",
                                    dict(body, stream=True, stream_options={"include_usage": True}))
        self.assertEqual(st, 200)
        recs = [json.loads(r) for r in parse_sse(raw)[:-1]]
        texts, finish, order = ["", "", ""], [None] * 3, []
        for r in recs:
            for c in r["choices"]:
                order.append(c["index"])
                texts[c["index"]] += c["delta"].get("content") or ""
                if c["finish_reason"]:
                    finish[c["index"]] = c["finish_reason"]
        self.assertEqual(sorted(set(order)), [0, 1, 2])
        self.assertEqual(recs[-1]["usage"]["prompt_tokens"], whole["usage"]["prompt_tokens"])
        for i in range(3):
            self.assertEqual(texts[i], whole["choices"][i]["message"]["content"])
            self.assertEqual(finish[i], whole["choices"][i]["finish_reason"])

    def test_n_bounds(self):
        st, _, j, _ = self.s.post("/v1/completions", {"prompt": "a", "n": 9})
        self.assertEqual(st, 400)
        self.assertEqual(j["error"]["param"], "n")
        st, _, j, _ = self.s.post("/v1/completions", {"prompt": "a", "best_of": 2})
        self.assertEqual(st, 400)

    def test_four_prompts_as_lm_eval_sends_them(self):
        prompts = ["Once upon a time", "The dog", [1, 403, 407, 261], "Lily was"]
        body = {"model": MODEL_ID, "max_tokens": 0, "echo": True, "logprobs": 1, "temperature": 0.0}
        st, _, j, raw = self.s.post("/v1/completions", dict(body, prompt=prompts))
        self.assertEqual(st, 200, raw[:300])
        self.api.check(j, "/v1/completions", "POST", 200)
        self.assertEqual([c["index"] for c in j["choices"]], [0, 1, 2, 3])
        total = 0
        for i, p in enumerate(prompts):
            st, _, one, _ = self.s.post("/v1/completions", dict(body, prompt=p))
            self.assertEqual(st, 200)
            self.assertEqual(j["choices"][i]["text"], one["choices"][0]["text"])
            self.assertEqual(j["choices"][i]["logprobs"], one["choices"][0]["logprobs"], "prompt %d" % i)
            total += one["usage"]["prompt_tokens"]
        self.assertEqual(j["usage"]["prompt_tokens"], total)
        # with generation and n = 2: index = prompt * n + j
        st, _, j2, _ = self.s.post("/v1/completions", {"prompt": prompts[:2], "n": 2, "max_tokens": 4, "seed": 9})
        self.assertEqual(st, 200)
        self.assertEqual([c["index"] for c in j2["choices"]], [0, 1, 2, 3])
        st, _, one, _ = self.s.post("/v1/completions", {"prompt": prompts[1], "max_tokens": 4, "seed": 10})
        self.assertEqual(j2["choices"][3]["text"], one["choices"][0]["text"])

    def test_prompt_list_errors(self):
        st, _, j, _ = self.s.post("/v1/completions", {"prompt": ["a"] * 9})
        self.assertEqual(st, 400)
        self.assertEqual(j["error"]["param"], "prompt")
        st, _, j, _ = self.s.post("/v1/completions", {"prompt": ["a", 5]})
        self.assertEqual(st, 400)
        self.assertEqual(j["error"]["param"], "prompt[1]")
        st, _, j, _ = self.s.post("/v1/completions", {"prompt": ["a", [99999]]})
        self.assertEqual(st, 400)
        self.assertEqual(j["error"]["param"], "prompt[1]")


if __name__ == "__main__":
    unittest.main(verbosity=2)
