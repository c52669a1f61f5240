"""The model's own chat template over HTTP (issue 20, part 3): models written
by mkmodel with real templates of ../shared/testdata/templates embedded as
tokenizer.chat_template; POST /apply-template renders exactly what the
conformance suite expects; chat completions take tools, role "tool",
chat_template_kwargs and content parts through the template; a template's
raise_exception is a 400 with its text; --chat-template-file overrides."""
import json
import os
import shutil
import subprocess
import tempfile
import unittest

from e2eutil import BIN, MODEL, TESTDATA, OpenAPI, Server

MKMODEL = os.environ.get("ORTHOSERVE_MKMODEL", "")
SUITE = os.path.join(TESTDATA, "templates")
API = OpenAPI()
CH = "/v1/chat/completions"
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def load(name):
    with open(os.path.join(SUITE, name), encoding="utf-8") as f:
        return json.load(f)


def write_model(tmp, stem):
    out = os.path.join(tmp, stem + ".gguf")
    subprocess.run([MKMODEL, "-o", out, "--n-ctx", "4096", "--n-layer", "2", "--quiet",
                    "--chat-template", os.path.join(SUITE, stem + ".jinja")], check=True)
    return out


class TemplateTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="orthoserve-templates-")
        cls.cases = load("cases.json")["cases"]

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def conformance(self, stem):
        """Every case the server can express (no documents, no content
        parts: those it flattens; not string tool-call arguments: those it
        gives the template as objects) matches the reference byte for byte."""
        exp = load(os.path.join("expected", stem + ".json"))
        srv = Server(model=write_model(self.tmp, stem))
        try:
            checked = 0
            for c in self.cases:
                parts = any(isinstance(m.get("content"), list) for m in c["messages"])
                if c["documents"] is not None or parts or c["id"] == "tool_call_string_arguments":
                    continue
                body = {"messages": c["messages"], "add_generation_prompt": c["add_generation_prompt"],
                        "chat_template_kwargs": c["kwargs"]}
                if c["tools"] is not None:
                    body["tools"] = c["tools"]
                st, _, j, raw = srv.post("/apply-template", body)
                want = exp["cases"][c["id"]]
                if isinstance(want, str):
                    self.assertEqual(st, 200, "%s: %s" % (c["id"], raw))
                    self.assertEqual(j["prompt"], want, c["id"])
                elif want["raised_by_template"]:
                    self.assertEqual(st, 400, "%s: %s" % (c["id"], raw))
                    self.assertEqual(j["error"]["param"], "messages")
                    self.assertEqual(j["error"]["message"], want["error"])
                else:  # a null content the server retries as "" may then render
                    self.assertIn(st, (200, 400), "%s: %s" % (c["id"], raw))
                checked += 1
            self.assertGreaterEqual(checked, 15)
        finally:
            self.assertEqual(srv.stop(), 0)

    def test_qwen25_matches_reference(self):
        self.conformance("Qwen-Qwen2.5-7B-Instruct")

    def test_qwen3_matches_reference(self):
        self.conformance("Qwen-Qwen3-0.6B")

    def test_chat_with_tools_and_kwargs(self):
        srv = Server(model=write_model(self.tmp, "Qwen-Qwen3-0.6B"))
        try:
            st, j = srv.get_json("/v1/models")
            self.assertEqual(j["data"][0]["meta"]["chat_template"], "jinja")
            msgs = [{"role": "user", "content": [{"type": "text", "text": "Weather"}, {"type": "text", "text": "in Paris?"}]},
                    {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
                    {"role": "tool", "tool_call_id": "c1", "content": "21 C"}]
            body = {"messages": msgs, "tools": TOOLS, "chat_template_kwargs": {"enable_thinking": False}}
            st, _, j, raw = srv.post("/apply-template", body)
            self.assertEqual(st, 200, raw)
            API.check(j, "/apply-template", "POST", 200)
            p = j["prompt"]
            self.assertIn("<|im_start|>user\nWeather\nin Paris?<|im_end|>", p)
            self.assertIn('{"name": "get_weather", "arguments": {"city": "Paris"}}', p)
            self.assertIn("<tool_response>\n21 C\n</tool_response>", p)
            self.assertTrue(p.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n"), p[-80:])
            # the completion's prompt is that text, tokenized
            st, _, tok, raw = srv.post("/tokenize", {"content": p, "add_special": True})
            self.assertEqual(st, 200, raw)
            st, _, r, raw = srv.post(CH, dict(body, max_tokens=2))
            self.assertEqual(st, 200, raw)
            API.validate(r, "ChatCompletion")
            self.assertEqual(r["usage"]["prompt_tokens"], len(tok["tokens"]))
            # (tool calling itself: test_tools.py)
            st, _, j, raw = srv.post(CH, dict(body, max_tokens=2, tool_choice="sometimes"))
            self.assertEqual((st, j["error"]["param"]), (400, "tool_choice"), raw)
            st, _, j, raw = srv.post(CH, dict(body, max_tokens=2, chat_template_kwargs=[1]))
            self.assertEqual((st, j["error"]["param"]), (400, "chat_template_kwargs"), raw)
        finally:
            self.assertEqual(srv.stop(), 0)

    def test_raise_exception_is_a_400_with_its_text(self):
        srv = Server(model=write_model(self.tmp, "google-gemma-2-2b-it"))
        try:
            msgs = [{"role": "system", "content": "x"}, {"role": "user", "content": "hi"}]
            for path in ("/apply-template", CH):
                st, _, j, raw = srv.post(path, {"messages": msgs, "max_tokens": 2})
                self.assertEqual(st, 400, raw)
                self.assertEqual(j["error"]["message"], "System role not supported")
                self.assertEqual(j["error"]["param"], "messages")
            st, _, j, raw = srv.post(CH, {"messages": msgs[1:], "max_tokens": 2})
            self.assertEqual(st, 200, raw)
        finally:
            self.assertEqual(srv.stop(), 0)

    def test_template_file_overrides(self):
        path = os.path.join(SUITE, "google-gemma-2-2b-it.jinja")
        srv = Server("--chat-template-file", path)
        try:
            st, _, j, raw = srv.post("/apply-template", {"messages": [{"role": "user", "content": "hi"}]})
            self.assertEqual(st, 200, raw)
            self.assertEqual(j["prompt"], "<s><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n")
        finally:
            self.assertEqual(srv.stop(), 0)
        # without a template: the built-in family, and tools refused
        srv = Server()
        try:
            st, _, j, raw = srv.post("/apply-template", {"messages": [{"role": "user", "content": "hi"}]})
            self.assertEqual(st, 200, raw)
            self.assertEqual(j["prompt"], "user: hi\nassistant:")
            st, _, j, raw = srv.post("/apply-template", {"messages": [{"role": "user", "content": "hi"}], "tools": TOOLS})
            self.assertEqual((st, j["error"]["param"]), (400, "tools"), raw)
        finally:
            self.assertEqual(srv.stop(), 0)

    def test_bad_template_file_is_refused_at_start(self):
        bad = os.path.join(self.tmp, "bad.jinja")
        with open(bad, "w") as f:
            f.write("{% for m in messages %}{{ m.content }")
        r = subprocess.run([BIN, "serve", "-m", MODEL, "--port", "0", "--chat-template-file", bad],
                           capture_output=True, timeout=60)
        self.assertEqual(r.returncode, 2)
        self.assertIn(b"chat-template-file", r.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
