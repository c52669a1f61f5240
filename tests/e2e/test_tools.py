"""Tool calling over HTTP (issue 20, parts 4-5), with models written by
mkmodel carrying real templates of ../shared/testdata/templates: forced
calls (tool_choice required / named) always come back as tool_calls whose
arguments validate against the tool's schema, streamed as OpenAI deltas
that add up to the non-streamed reply; auto / none / parallel_tool_calls;
reasoning_content of a thinking template; a malformed call stays content;
role "tool" round trips; n > 1; the Responses API's function_call items
(and an item_reference to one). Replies of a random-weight model are
steered with the "grammar" field where a test needs a given text."""
import json
import os
import shutil
import subprocess
import tempfile
import unittest

from e2eutil import TESTDATA, OpenAPI, Server, parse_sse

MKMODEL = os.environ.get("ORTHOSERVE_MKMODEL", "")
SUITE = os.path.join(TESTDATA, "templates")
API = OpenAPI()
CH = "/v1/chat/completions"
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8},
                                            "days": {"type": "integer", "minimum": 1, "maximum": 7}},
           "required": ["city", "days"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "parameters": {
             "type": "object", "properties": {"tz": {"enum": ["CET", "UTC"]}}, "required": ["tz"],
             "additionalProperties": False}}}]
MSGS = [{"role": "user", "content": "Weather in Paris for 3 days?"}]


def write_model(tmp, stem):
    out = os.path.join(tmp, stem + ".gguf")
    subprocess.run([MKMODEL, "-o", out, "--n-ctx", "4096", "--n-layer", "2", "--quiet",
                    "--chat-template", os.path.join(SUITE, stem + ".jinja")], check=True)
    return out


def gbnf_literal(text):
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def weather_ok(args):
    return (set(args) == {"city", "days"} and isinstance(args["city"], str) and len(args["city"]) <= 8 and
            isinstance(args["days"], int) and 1 <= args["days"] <= 7)


def args_ok(call):
    a = json.loads(call["function"]["arguments"])
    if call["function"]["name"] == "get_weather":
        return weather_ok(a)
    return call["function"]["name"] == "get_time" and a in ({"tz": "CET"}, {"tz": "UTC"})


class ToolsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="orthoserve-tools-")
        cls.s = Server("--max-n", "4", "--state-dir", os.path.join(cls.tmp, "state"),
                       model=write_model(cls.tmp, "Qwen-Qwen2.5-7B-Instruct"))

    @classmethod
    def tearDownClass(cls):
        cls.s.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def chat(self, body, status=200):
        st, _, j, raw = self.s.post(CH, dict({"messages": MSGS, "tools": TOOLS, "max_tokens": 400}, **body))
        self.assertEqual(st, status, raw[:800])
        if status == 200:
            API.validate(j, "ChatCompletion")
        return j

    def stream(self, body):
        body = dict({"messages": MSGS, "tools": TOOLS, "max_tokens": 400, "stream": True}, **body)
        st, _, raw = self.s.request("POST", CH, body)
        self.assertEqual(st, 200, raw[:500])
        chunks = [json.loads(r) for r in parse_sse(raw)[:-1]]
        for c in chunks:
            API.validate(c, "ChatCompletionChunk")
        return chunks

    def assemble(self, chunks):
        """The streamed message, as the SDKs rebuild it; checks each call's delta order."""
        content, reasoning, calls, finish = "", "", [], None
        for c in chunks:
            for ch in c["choices"]:
                d = ch["delta"]
                content += d.get("content", "")
                reasoning += d.get("reasoning_content", "")
                for tc in d.get("tool_calls", []):
                    if tc["index"] == len(calls):  # a new call: its header first
                        self.assertEqual((tc["type"], tc["function"]["arguments"]), ("function", ""), tc)
                        self.assertTrue(tc["id"].startswith("call_"), tc)
                        calls.append({"id": tc["id"], "type": "function",
                                      "function": {"name": tc["function"]["name"], "arguments": ""}})
                    else:
                        self.assertEqual(tc["index"], len(calls) - 1, tc)
                        self.assertNotIn("id", tc)
                        calls[tc["index"]]["function"]["arguments"] += tc["function"]["arguments"]
                finish = ch["finish_reason"] or finish
        return content, reasoning, calls, finish

    def test_required_is_always_a_valid_call(self):
        for seed in range(1, 7):
            j = self.chat({"tool_choice": "required", "seed": seed, "temperature": 1.5, "parallel_tool_calls": False})
            ch = j["choices"][0]
            self.assertEqual(ch["finish_reason"], "tool_calls", ch)
            self.assertIsNone(ch["message"]["content"])
            self.assertEqual(len(ch["message"]["tool_calls"]), 1)
            for c in ch["message"]["tool_calls"]:
                self.assertTrue(c["id"].startswith("call_") and len(c["id"]) == 29, c)
                self.assertTrue(args_ok(c), c)
        # parallel calls: one or more, each valid; a random model may go on
        # writing calls until max_tokens (then the cut one is content)
        for seed in range(1, 4):
            ch = self.chat({"tool_choice": "required", "seed": seed, "temperature": 1.5})["choices"][0]
            self.assertIn(ch["finish_reason"], ("tool_calls", "length"), ch)
            self.assertGreaterEqual(len(ch["message"]["tool_calls"]), 1)
            self.assertTrue(all(args_ok(c) for c in ch["message"]["tool_calls"]), ch)
            if ch["finish_reason"] == "tool_calls":
                self.assertIsNone(ch["message"]["content"])

    def test_named_and_single_call(self):
        for seed in range(1, 5):
            named = {"type": "function", "function": {"name": "get_time"}}
            j = self.chat({"tool_choice": named, "seed": seed, "temperature": 1.5, "parallel_tool_calls": False})
            calls = j["choices"][0]["message"]["tool_calls"]
            self.assertEqual(len(calls), 1)
            self.assertEqual(calls[0]["function"]["name"], "get_time")
            self.assertTrue(args_ok(calls[0]), calls)

    def test_stream_adds_up_to_the_reply(self):
        for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
            body = {"tool_choice": choice, "seed": 11, "temperature": 1.2, "parallel_tool_calls": False}
            whole = self.chat(body)["choices"][0]
            chunks = self.stream(dict(body, stream_options={"include_usage": True}))
            content, reasoning, calls, finish = self.assemble(chunks)
            self.assertEqual(finish, "tool_calls")
            self.assertEqual((content, reasoning), ("", ""))
            self.assertEqual([c["function"] for c in calls], [c["function"] for c in whole["message"]["tool_calls"]])
            self.assertTrue(all(args_ok(c) for c in calls), calls)

    def test_auto_parses_what_the_model_writes(self):
        call = '<tool_call>\n{"name": "get_time", "arguments": {"tz": "UTC"}}\n</tool_call>'
        g = "root ::= " + gbnf_literal("Let me look.\n" + call)
        j = self.chat({"grammar": g, "seed": 1})
        m = j["choices"][0]["message"]
        self.assertEqual(j["choices"][0]["finish_reason"], "tool_calls")
        self.assertEqual(m["content"], "Let me look.")
        self.assertEqual([(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in m["tool_calls"]],
                         [("get_time", {"tz": "UTC"})])
        content, _, calls, finish = self.assemble(self.stream({"grammar": g, "seed": 1}))
        self.assertEqual((content, finish), ("Let me look.", "tool_calls"))
        self.assertEqual(calls[0]["function"], m["tool_calls"][0]["function"])
        # none: the same text is content, nothing is parsed
        j = self.chat({"grammar": g, "seed": 1, "tool_choice": "none"})
        self.assertEqual(j["choices"][0]["message"]["content"], "Let me look.\n" + call)
        self.assertNotIn("tool_calls", j["choices"][0]["message"])
        self.assertEqual(j["choices"][0]["finish_reason"], "stop")
        # two calls; parallel_tool_calls false keeps the first
        g2 = "root ::= " + gbnf_literal(call + "\n" + call.replace("UTC", "CET"))
        self.assertEqual(len(self.chat({"grammar": g2})["choices"][0]["message"]["tool_calls"]), 2)
        one = self.chat({"grammar": g2, "parallel_tool_calls": False})["choices"][0]["message"]["tool_calls"]
        self.assertEqual([json.loads(c["function"]["arguments"]) for c in one], [{"tz": "UTC"}])

    def test_malformed_call_is_content(self):
        bad = '<tool_call>\n{"name": "get_time", "arguments": {"tz": }\n</tool_call>'
        g = "root ::= " + gbnf_literal(bad)
        for body in ({"grammar": g}, {"grammar": g, "stream": True}):
            if body.get("stream"):
                content, _, calls, finish = self.assemble(self.stream(body))
            else:
                m = self.chat(body)["choices"][0]
                content, calls, finish = m["message"]["content"], m["message"].get("tool_calls", []), m["finish_reason"]
            self.assertEqual((content, calls, finish), (bad, [], "stop"))

    def test_auto_on_random_weights_is_well_formed(self):
        for seed in (1, 2, 3):
            j = self.chat({"seed": seed, "max_tokens": 24})
            self.assertIn(j["choices"][0]["finish_reason"], ("stop", "length", "tool_calls"))
            self.assemble(self.stream({"seed": seed, "max_tokens": 24}))

    def test_tool_round_trip(self):
        j = self.chat({"tool_choice": "required", "seed": 5, "parallel_tool_calls": False})
        m = j["choices"][0]["message"]
        msgs = MSGS + [m] + [{"role": "tool", "tool_call_id": c["id"], "content": "21 C, sunny"} for c in m["tool_calls"]]
        st, _, p, raw = self.s.post("/apply-template", {"messages": msgs, "tools": TOOLS})
        self.assertEqual(st, 200, raw)
        self.assertIn("<tool_response>\n21 C, sunny\n</tool_response>", p["prompt"])
        self.assertIn('{"name": "%s", "arguments": ' % m["tool_calls"][0]["function"]["name"], p["prompt"])
        j = self.chat({"messages": msgs, "seed": 5, "max_tokens": 16})
        self.assertIn(j["choices"][0]["finish_reason"], ("stop", "length", "tool_calls"))

    def test_n_choices_each_a_call(self):
        j = self.chat({"tool_choice": "required", "n": 3, "seed": 2, "temperature": 1.3, "parallel_tool_calls": False})
        self.assertEqual(len(j["choices"]), 3)
        for ch in j["choices"]:
            self.assertEqual(ch["finish_reason"], "tool_calls")
            self.assertTrue(all(args_ok(c) for c in ch["message"]["tool_calls"]))
        chunks = self.stream({"tool_choice": "required", "n": 3, "seed": 2, "temperature": 1.3, "parallel_tool_calls": False})
        for i in range(3):
            one = [{"choices": [c for c in k["choices"] if c["index"] == i]} for k in chunks]
            _, _, calls, finish = self.assemble(one)
            self.assertEqual(finish, "tool_calls")
            self.assertEqual([c["function"] for c in calls],
                             [c["function"] for c in j["choices"][i]["message"]["tool_calls"]])

    def test_refusals(self):
        cases = [({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice.function.name"),
                 ({"tools": None, "tool_choice": "required"}, "tool_choice"),
                 ({"tool_choice": "sometimes"}, "tool_choice"),
                 ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0].function.name"),
                 ({"tool_choice": "required", "grammar": "root ::= \"x\""}, "tool_choice"),
                 ({"tool_choice": "required", "tools": [{"type": "function", "function": {
                     "name": "f", "parameters": {"type": "object", "patternProperties": {}}}}]},
                  "tools[0].function.parameters")]
        for body, param in cases:
            j = self.chat(body, status=400)
            self.assertEqual(j["error"]["param"], param, j)

    def test_responses_function_calls(self):
        body = {"input": "Weather in Paris?", "tools": [dict(t["function"], type="function") for t in TOOLS],
                "tool_choice": "required", "parallel_tool_calls": False, "seed": 3, "max_output_tokens": 400}
        st, _, r, raw = self.s.post("/v1/responses", body)
        self.assertEqual(st, 200, raw[:600])
        API.check(r, "/v1/responses", "post", 200)
        fcs = [o for o in r["output"] if o["type"] == "function_call"]
        self.assertTrue(fcs and all(o["type"] == "function_call" for o in r["output"]), r["output"])
        for o in fcs:
            self.assertTrue(o["id"].startswith("fc_") and o["call_id"].startswith("call_"), o)
            self.assertTrue(args_ok({"function": o}), o)
        st, _, raw = self.s.request("POST", "/v1/responses", dict(body, stream=True))
        self.assertEqual(st, 200)
        events = []
        for rec in raw.decode().split("\n\n")[:-1]:
            ev = json.loads(rec.split("\n")[1][6:])
            API.validate(ev, "ResponseStreamEvent")
            events.append(ev)
        self.assertEqual([e["sequence_number"] for e in events], list(range(len(events))))
        final = events[-1]["response"]
        self.assertEqual(events[-1]["type"], "response.completed")
        self.assertEqual([(o["name"], o["arguments"]) for o in final["output"]], [(o["name"], o["arguments"]) for o in fcs])
        types = [e["type"] for e in events]
        k = types.index("response.function_call_arguments.delta")
        self.assertEqual(types[k - 1:k + 3], ["response.output_item.added", "response.function_call_arguments.delta",
                                              "response.function_call_arguments.done", "response.output_item.done"])
        # the output round trip: the call and its result as input items
        nxt = {"input": [{"type": "message", "role": "user", "content": "Weather in Paris?"}, fcs[0],
                         {"type": "function_call_output", "call_id": fcs[0]["call_id"], "output": "21 C"}],
               "tools": body["tools"], "max_output_tokens": 8}
        st, _, r2, raw = self.s.post("/v1/responses", nxt)
        self.assertEqual(st, 200, raw[:600])
        st, _, r3, raw = self.s.post("/v1/responses", dict(nxt, input=[nxt["input"][0], {"type": "item_reference", "id": fcs[0]["id"]},
                                                                       nxt["input"][2]]))
        self.assertEqual(st, 200, raw[:600])
        self.assertEqual(r3["usage"]["input_tokens"], r2["usage"]["input_tokens"])


class ThinkingTest(unittest.TestCase):
    """Qwen3: the think block is reasoning_content; a forced call skips thinking."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="orthoserve-tools3-")
        cls.s = Server("--state-dir", os.path.join(cls.tmp, "state"), model=write_model(cls.tmp, "Qwen-Qwen3-0.6B"))

    @classmethod
    def tearDownClass(cls):
        cls.s.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_reasoning_content(self):
        text = '<think>\nParis, 3 days.\n</think>\n\nChecking.\n<tool_call>\n{"name": "get_time", "arguments": {"tz": "CET"}}\n</tool_call>'
        body = {"messages": MSGS, "tools": TOOLS, "grammar": "root ::= " + gbnf_literal(text), "max_tokens": 400}
        st, _, j, raw = self.s.post(CH, body)
        self.assertEqual(st, 200, raw[:500])
        API.validate(j, "ChatCompletion")
        m = j["choices"][0]["message"]
        self.assertEqual((m["reasoning_content"], m["content"]), ("Paris, 3 days.", "Checking."))
        self.assertEqual(m["tool_calls"][0]["function"]["name"], "get_time")
        st, _, raw = self.s.request("POST", CH, dict(body, stream=True))
        reasoning = content = ""
        for r in parse_sse(raw)[:-1]:
            c = json.loads(r)
            API.validate(c, "ChatCompletionChunk")
            for ch in c["choices"]:
                reasoning += ch["delta"].get("reasoning_content", "")
                content += ch["delta"].get("content", "")
        self.assertEqual((reasoning, content), ("Paris, 3 days.", "Checking."))
        # without tools the think block is still split off
        st, _, j, raw = self.s.post(CH, dict(body, tools=None, grammar="root ::= " + gbnf_literal("<think>\nx\n</think>\n\nHi")))
        self.assertEqual((j["choices"][0]["message"]["reasoning_content"], j["choices"][0]["message"]["content"]), ("x", "Hi"))
        # Responses: a reasoning item, then the message, then the call
        st, _, r, raw = self.s.post("/v1/responses", {"input": "Weather?", "tools": [dict(TOOLS[1]["function"], type="function")],
                                                     "grammar": body["grammar"], "max_output_tokens": 400})
        self.assertEqual(st, 200, raw[:500])
        API.check(r, "/v1/responses", "post", 200)
        self.assertEqual([o["type"] for o in r["output"]], ["reasoning", "message", "function_call"])

    def test_forced_call_with_thinking_on(self):
        for seed in (1, 2, 3):
            st, _, j, raw = self.s.post(CH, {"messages": MSGS, "tools": TOOLS, "tool_choice": "required", "seed": seed,
                                             "temperature": 1.5, "max_tokens": 400, "parallel_tool_calls": False})
            self.assertEqual(st, 200, raw[:500])
            ch = j["choices"][0]
            self.assertEqual(ch["finish_reason"], "tool_calls", ch)
            self.assertTrue(all(args_ok(c) for c in ch["message"]["tool_calls"]))


if __name__ == "__main__":
    unittest.main(verbosity=2)
