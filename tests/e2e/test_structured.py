"""Structured output over HTTP (issue 19): response_format json_object /
json_schema, the llama.cpp-style json_schema and grammar fields, on both
completion endpoints, with streaming, logprobs of the masked distribution,
seeds, stop strings and max_tokens; the 400s of unsupported keywords and of
each bound; then the property test (structured_props.mjs: ajv over 110
schemas x 10 seeds) and the client libraries (structured_sdk.mjs), run by
node from ORTHOSERVE_NODE_DIR (e2e.sdk_setup installs them).
The model is tiny256-F32 (random weights: an adversarial distribution)."""
import json
import math
import os
import re
import subprocess
import sys
import unittest

from e2eutil import TESTDATA, Server, parse_sse, scaled

NODE_DIR = os.environ.get("ORTHOSERVE_NODE_DIR", "")
MODEL = os.path.join(TESTDATA, "models", "tiny256-F32.gguf")
MODEL_ID = "tiny256-F32.gguf"
CH, C = "/v1/chat/completions", "/v1/completions"

PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age", "tags"],
          "properties": {"name": {"type": "string", "maxLength": 6},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120},
                         "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3}}}


def chat(**kw):
    body = {"messages": [{"role": "user", "content": "Give JSON."}], "max_tokens": 200, "temperature": 1.5,
            "seed": 1}
    body.update(kw)
    return body


def schema_format(schema):
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}}


def person_ok(v):
    return (isinstance(v, dict) and set(v) == {"name", "age", "tags"} and isinstance(v["name"], str)
            and len(v["name"]) <= 6 and isinstance(v["age"], int) and 0 <= v["age"] <= 120
            and isinstance(v["tags"], list) and len(v["tags"]) <= 3 and all(t in ("a", "b") for t in v["tags"]))


class StructuredTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.s = Server("--grammar-max-bytes", "4096", "--schema-max-count", "50", model=MODEL)

    @classmethod
    def tearDownClass(cls):
        assert cls.s.stop() == 0

    def post_ok(self, path, body):
        st, _, j, data = self.s.post(path, body)
        self.assertEqual(st, 200, data[:500])
        return j["choices"][0]

    def test_json_schema_chat_and_completions(self):
        for seed in range(4):
            c = self.post_ok(CH, chat(seed=seed, response_format=schema_format(PERSON)))
            self.assertEqual(c["finish_reason"], "stop", c)
            self.assertTrue(person_ok(json.loads(c["message"]["content"])), c)
            c = self.post_ok(C, {"prompt": "JSON:", "max_tokens": 200, "temperature": 1.5, "seed": seed,
                                 "response_format": schema_format(PERSON)})
            self.assertEqual(c["finish_reason"], "stop", c)
            self.assertTrue(person_ok(json.loads(c["text"])), c)
            c = self.post_ok(C, {"prompt": "JSON:", "max_tokens": 200, "temperature": 1.5, "seed": seed,
                                 "json_schema": PERSON})
            self.assertTrue(person_ok(json.loads(c["text"])), c)

    def test_every_road_enforces_it(self):
        """n > 1, a list of prompts and /v1/responses text.format: every choice validates."""
        st, _, j, data = self.s.post(CH, chat(seed=7, n=3, response_format=schema_format(PERSON)))
        self.assertEqual(st, 200, data[:500])
        self.assertEqual(len(j["choices"]), 3)
        for c in j["choices"]:
            self.assertEqual(c["finish_reason"], "stop", c)
            self.assertTrue(person_ok(json.loads(c["message"]["content"])), c)
        st, _, j, data = self.s.post(C, {"prompt": ["JSON:", "Person:"], "n": 2, "max_tokens": 200,
                                         "temperature": 1.5, "seed": 8, "response_format": schema_format(PERSON)})
        self.assertEqual(st, 200, data[:500])
        self.assertEqual(len(j["choices"]), 4)
        for c in j["choices"]:
            self.assertEqual(c["finish_reason"], "stop", c)
            self.assertTrue(person_ok(json.loads(c["text"])), c)
        for seed in range(3):
            st, _, j, data = self.s.post("/v1/responses", {
                "input": "Give JSON.", "store": False, "max_output_tokens": 200, "temperature": 1.5, "seed": seed,
                "text": {"format": {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}}})
            self.assertEqual(st, 200, data[:500])
            self.assertEqual(j["status"], "completed", j)
            self.assertTrue(person_ok(json.loads(j["output"][0]["content"][0]["text"])), j)
        st, _, j, data = self.s.post("/v1/responses", {
            "input": "x", "store": False, "text": {"format": {"type": "json_schema", "name": "p",
                                                              "schema": {"type": "string", "contentEncoding": "b"}}}})
        self.assertEqual(st, 400, data[:500])
        self.assertIn("contentEncoding", j["error"]["message"])

    def test_with_orthorank(self):
        c = self.post_ok(CH, chat(seed=5, response_format=schema_format(PERSON),
                                  orthorank={"sparsity": 0.25, "token_ratio": 0.5}))
        self.assertEqual(c["finish_reason"], "stop", c)
        self.assertTrue(person_ok(json.loads(c["message"]["content"])), c)

    def test_json_object(self):
        finished = 0
        for seed in range(6):
            c = self.post_ok(CH, chat(seed=seed, max_tokens=300, response_format={"type": "json_object"}))
            text = c["message"]["content"]
            self.assertTrue(text.lstrip().startswith("{"), text)
            if c["finish_reason"] == "stop":
                self.assertIsInstance(json.loads(text), dict)
                finished += 1
        self.assertGreater(finished, 0)

    def test_grammar_field_stream_seed_logprobs(self):
        g = 'root ::= "<" [ab]{2,4} ">" ("!" | "?")'
        body = chat(grammar=g, logprobs=True, top_logprobs=3)
        a, b = self.post_ok(CH, body), self.post_ok(CH, body)
        self.assertEqual(a["message"]["content"], b["message"]["content"], "same seed, same output")
        self.assertRegex(a["message"]["content"], r"^<[ab]{2,4}>[!?]$")
        self.assertEqual(a["finish_reason"], "stop")
        for tok in a["logprobs"]["content"]:
            # a token the grammar bans has probability 0 (reported as the API's -9999 floor)
            mass = sum(math.exp(t["logprob"]) for t in tok["top_logprobs"] if t["logprob"] > -9000)
            self.assertLessEqual(mass, 1.0001)
            for t in tok["top_logprobs"]:
                if t["logprob"] > -9000:  # only tokens the grammar allows carry probability
                    self.assertRegex(t["token"], r"^[<ab>!?]+$", tok)
        st, _, raw = self.s.request("POST", CH, dict(body, stream=True))
        self.assertEqual(st, 200)
        text = ""
        for rec in parse_sse(raw)[:-1]:
            for ch in json.loads(rec)["choices"]:
                text += ch["delta"].get("content") or ""
        self.assertEqual(text, a["message"]["content"])

    def test_length_leaves_a_prefix_and_stop_strings(self):
        g = 'root ::= "[" "1" ("," "1")* "]"'
        c = self.post_ok(CH, chat(grammar=g, max_tokens=5))
        self.assertEqual(c["finish_reason"], "length")
        self.assertRegex(c["message"]["content"], r"^\[(1(,1)*(,|\])?)?$")
        c = self.post_ok(CH, chat(grammar='root ::= "ab" [c-e]{3} "fg"', stop=["d"]))
        self.assertEqual(c["finish_reason"], "stop")
        self.assertNotIn("d", c["message"]["content"])
        self.assertTrue("abcdefg".startswith(c["message"]["content"][:2]), c)

    def expect_400(self, body, param, *needles, path=CH):
        st, _, j, data = self.s.post(path, body)
        self.assertEqual(st, 400, data[:400])
        self.assertEqual(j["error"]["param"], param, j)
        for n in needles:
            self.assertIn(n, j["error"]["message"], j)
        return j

    def test_refusals_name_keyword_pointer_and_bound(self):
        bad = {"type": "object", "properties": {"a": {"type": "array", "uniqueItems": True}}}
        self.expect_400(chat(response_format=schema_format(bad)), "response_format.json_schema",
                        "/properties/a/uniqueItems", "uniqueItems")
        self.expect_400(chat(json_schema={"type": "string", "format": "hostname"}), "json_schema", "/format",
                        "hostname")
        self.expect_400(chat(response_format=schema_format({"type": "array", "maxItems": 51})),
                        "response_format.json_schema", "schema_max_count")
        self.expect_400(chat(grammar="root ::= root \"a\""), "grammar", "left-recursive")
        self.expect_400(chat(grammar="root ::= \"" + "a" * 5000 + "\""), "grammar", "grammar_max_bytes")
        big = {"type": "object", "properties": {"p%d" % i: {"enum": ["v%d" % i * 3]} for i in range(200)}}
        self.expect_400(chat(response_format=schema_format(big)), "response_format.json_schema",
                        "grammar_max_bytes")
        self.expect_400(chat(grammar="root ::= \"a\"", json_schema={"type": "string"}), "json_schema", "at most one")
        self.expect_400({"prompt": "x", "grammar": 5}, "grammar", "string", path=C)
        self.assertEqual(self.s.request("GET", "/health")[0], 200)

    def run_node(self, script, model, *args):
        if not os.path.isdir(os.path.join(NODE_DIR, "node_modules", "ajv")):
            self.fail("the npm packages are not installed in %s (e2e.sdk_setup)" % NODE_DIR)
        here = os.path.dirname(os.path.abspath(__file__))
        dst = os.path.join(NODE_DIR, script)
        with open(os.path.join(here, script)) as f, open(dst, "w") as g:
            g.write(f.read())  # next to node_modules so the imports resolve
        s = Server(*args, model=model)
        try:
            env = dict(os.environ, ORTHOSERVE_URL="http://127.0.0.1:%d/v1" % s.port,
                       ORTHOSERVE_MODEL=os.path.basename(model), E2E_REQUEST_TIMEOUT_MS=str(int(scaled(120) * 1000)))
            out = subprocess.run(["node", dst], env=env, capture_output=True, text=True, timeout=scaled(600))
            sys.stdout.write(out.stdout[-6000:])
            sys.stderr.write(out.stderr[-3000:])
            self.assertEqual(out.returncode, 0, out.stdout[-3000:] + out.stderr[-2000:])
        finally:
            self.assertEqual(s.stop(), 0)

    def test_property_ajv(self):
        self.run_node("structured_props.mjs", MODEL, "--parallel", "8")

    def test_client_libraries(self):
        self.run_node("structured_sdk.mjs", MODEL)


if __name__ == "__main__":
    unittest.main(verbosity=2)
