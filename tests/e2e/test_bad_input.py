"""At least 60 distinct malformed requests: each gets the right 4xx and an
OpenAI error body, and the server keeps serving."""
import json
import unittest

from e2eutil import OpenAPI, Server, connect, read_until

API = OpenAPI()
C = "/v1/completions"
CH = "/v1/chat/completions"
MSG = [{"role": "user", "content": "Hi"}]


def chat(**kw):
    d = {"messages": MSG, "max_tokens": 2}
    d.update(kw)
    return d


def comp(**kw):
    d = {"prompt": "Hi", "max_tokens": 2}
    d.update(kw)
    return d


# (name, method, path, body (dict/str/bytes/None), headers, status, param or None)
CASES = [
    ("invalid json", "POST", C, b'{"prompt": "Hi",', None, 400, None),
    ("not an object", "POST", C, b'[1,2,3]', None, 400, None),
    ("empty body", "POST", C, b"", None, 400, None),
    ("json string body", "POST", C, b'"hello"', None, 400, None),
    ("trailing garbage", "POST", C, b'{"prompt":"Hi"} x', None, 400, None),
    ("NaN literal", "POST", C, b'{"prompt":"Hi","temperature":NaN}', None, 400, None),
    ("Infinity literal", "POST", C, b'{"prompt":"Hi","temperature":Infinity}', None, 400, None),
    ("duplicate keys", "POST", C, b'{"prompt":"Hi","prompt":"Ho"}', None, 400, None),
    ("huge integer", "POST", C, b'{"prompt":"Hi","max_tokens":99999999999999999999999}', None, 400, None),
    ("huge real", "POST", C, b'{"prompt":"Hi","temperature":1e999}', None, 400, None),
    ("deep nesting", "POST", C, b'{"prompt":' + b"[" * 5000 + b"]" * 5000 + b"}", None, 400, None),
    ("invalid utf-8 in string", "POST", C, b'{"prompt":"\xff\xfe"}', None, 400, None),
    ("overlong utf-8", "POST", C, b'{"prompt":"\xc0\xaf"}', None, 400, None),
    ("lone surrogate escape", "POST", C, b'{"prompt":"\\ud800"}', None, 400, None),
    ("NUL escape", "POST", C, b'{"prompt":"a\\u0000b"}', None, 400, None),
    ("missing prompt", "POST", C, {"max_tokens": 2}, None, 400, "prompt"),
    ("null prompt", "POST", C, {"prompt": None}, None, 400, "prompt"),
    ("prompt number", "POST", C, comp(prompt=42), None, 400, "prompt"),
    ("prompt object", "POST", C, comp(prompt={"a": 1}), None, 400, "prompt"),
    ("prompt empty array", "POST", C, comp(prompt=[]), None, 400, "prompt"),
    ("prompt list with a number", "POST", C, comp(prompt=["a", 7]), None, 400, "prompt[1]"),
    ("prompt bad token id", "POST", C, comp(prompt=[1, 99999]), None, 400, "prompt"),
    ("prompt negative token", "POST", C, comp(prompt=[1, -5]), None, 400, "prompt"),
    ("prompt float tokens", "POST", C, comp(prompt=[1.5, 2]), None, 400, "prompt"),
    ("max_tokens string", "POST", C, comp(max_tokens="10"), None, 400, "max_tokens"),
    ("max_tokens negative", "POST", C, comp(max_tokens=-1), None, 400, "max_tokens"),
    ("max_tokens over limit", "POST", C, comp(max_tokens=10 ** 9), None, 400, "max_tokens"),
    ("max_tokens fractional", "POST", C, comp(max_tokens=2.5), None, 400, "max_tokens"),
    ("temperature string", "POST", C, comp(temperature="hot"), None, 400, "temperature"),
    ("temperature NaN string", "POST", C, comp(temperature="NaN"), None, 400, "temperature"),
    ("temperature negative", "POST", C, comp(temperature=-0.5), None, 400, "temperature"),
    ("temperature too high", "POST", C, comp(temperature=5), None, 400, "temperature"),
    ("top_p too high", "POST", C, comp(top_p=1.5), None, 400, "top_p"),
    ("top_p negative", "POST", C, comp(top_p=-0.1), None, 400, "top_p"),
    ("top_k bool", "POST", C, comp(top_k=True), None, 400, "top_k"),
    ("top_k very negative", "POST", C, comp(top_k=-7), None, 400, "top_k"),
    ("min_p too high", "POST", C, comp(min_p=2), None, 400, "min_p"),
    ("presence_penalty range", "POST", C, comp(presence_penalty=3), None, 400, "presence_penalty"),
    ("frequency_penalty range", "POST", C, comp(frequency_penalty=-3), None, 400, "frequency_penalty"),
    ("repetition_penalty zero", "POST", C, comp(repetition_penalty=0), None, 400, "repetition_penalty"),
    ("n above max_n", "POST", C, comp(n=9), None, 400, "n"),
    ("n=0", "POST", C, comp(n=0), None, 400, "n"),
    ("best_of 3", "POST", C, comp(best_of=3), None, 400, "best_of"),
    ("stop number", "POST", C, comp(stop=5), None, 400, "stop"),
    ("stop array of numbers", "POST", C, comp(stop=[1, 2]), None, 400, "stop"),
    ("stop too many", "POST", C, comp(stop=["a"] * 17), None, 400, "stop"),
    ("seed string", "POST", C, comp(seed="42"), None, 400, "seed"),
    ("seed float", "POST", C, comp(seed=1.5), None, 400, "seed"),
    ("logit_bias array", "POST", C, comp(logit_bias=[1, 2]), None, 400, "logit_bias"),
    ("logit_bias bad key", "POST", C, comp(logit_bias={"abc": 1}), None, 400, "logit_bias"),
    ("logit_bias id out of range", "POST", C, comp(logit_bias={"100000": 1}), None, 400, "logit_bias"),
    ("logit_bias value range", "POST", C, comp(logit_bias={"5": 1000}), None, 400, "logit_bias"),
    ("logprobs too many", "POST", C, comp(logprobs=50), None, 400, "logprobs"),
    ("logprobs bool", "POST", C, comp(logprobs=True), None, 400, "logprobs"),
    ("echo string", "POST", C, comp(echo="yes"), None, 400, "echo"),
    ("suffix", "POST", C, comp(suffix="end"), None, 400, "suffix"),
    ("stream string", "POST", C, comp(stream="true"), None, 400, "stream"),
    ("stream_options without stream", "POST", C, comp(stream_options={"include_usage": True}), None, 400,
     "stream_options"),
    ("include_usage string", "POST", C, comp(stream=True, stream_options={"include_usage": "y"}), None, 400,
     "stream_options.include_usage"),
    ("ignore_eos number", "POST", C, comp(ignore_eos=1), None, 400, "ignore_eos"),
    ("min_tokens negative", "POST", C, comp(min_tokens=-2), None, 400, "min_tokens"),
    ("user number", "POST", C, comp(user=5), None, 400, "user"),
    ("model number", "POST", C, comp(model=5), None, 400, "model"),
    ("unknown model", "POST", C, comp(model="gpt-4o"), None, 404, "model"),
    ("orthorank string", "POST", C, comp(orthorank="fast"), None, 400, "orthorank"),
    ("orthorank unknown key", "POST", C, comp(orthorank={"speed": 2}), None, 400, "orthorank"),
    ("orthorank sparsity negative", "POST", C, comp(orthorank={"sparsity": -0.1}), None, 400, "orthorank.sparsity"),
    ("orthorank token_ratio > 1", "POST", C, comp(orthorank={"token_ratio": 1.5}), None, 400,
     "orthorank.token_ratio"),
    ("orthorank layers not array", "POST", C, comp(orthorank={"layers": 3}), None, 400, "orthorank.layers"),
    ("orthorank layers negative", "POST", C, comp(orthorank={"layers": [-1]}), None, 400, "orthorank.layers"),
    ("orthorank method unknown", "POST", C, comp(orthorank={"method": "magic"}), None, 400, "orthorank.method"),
    ("missing messages", "POST", CH, {"max_tokens": 2}, None, 400, "messages"),
    ("messages string", "POST", CH, {"messages": "Hi"}, None, 400, "messages"),
    ("messages empty", "POST", CH, {"messages": []}, None, 400, "messages"),
    ("message not object", "POST", CH, {"messages": ["Hi"]}, None, 400, "messages[0]"),
    ("message missing role", "POST", CH, {"messages": [{"content": "Hi"}]}, None, 400, "messages[0].role"),
    ("message bad role", "POST", CH, {"messages": [{"role": "wizard", "content": "Hi"}]}, None, 400,
     "messages[0].role"),
    ("tool role", "POST", CH, {"messages": [{"role": "tool", "content": "Hi"}]}, None, 400, "messages[0].role"),
    ("content number", "POST", CH, {"messages": [{"role": "user", "content": 5}]}, None, 400,
     "messages[0].content"),
    ("user content null", "POST", CH, {"messages": [{"role": "user", "content": None}]}, None, 400,
     "messages[0].content"),
    ("image part", "POST", CH, {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": "x"}}]}]}, None, 400, "messages[0].content"),
    ("text part without text", "POST", CH, {"messages": [{"role": "user", "content": [{"type": "text"}]}]}, None,
     400, "messages[0].content"),
    ("chat max_tokens 0", "POST", CH, chat(max_tokens=0), None, 400, "max_tokens"),
    ("chat max_completion_tokens string", "POST", CH, chat(max_completion_tokens="5"), None, 400,
     "max_completion_tokens"),
    ("top_logprobs without logprobs", "POST", CH, chat(top_logprobs=3), None, 400, "top_logprobs"),
    ("top_logprobs too many", "POST", CH, chat(logprobs=True, top_logprobs=21), None, 400, "top_logprobs"),
    ("logprobs int in chat", "POST", CH, chat(logprobs=1), None, 400, "logprobs"),
    ("response_format unknown type", "POST", CH, chat(response_format={"type": "yaml"}), None, 400,
     "response_format.type"),
    ("response_format json_schema without schema", "POST", CH,
     chat(response_format={"type": "json_schema", "json_schema": {}}), None, 400,
     "response_format.json_schema.schema"),
    ("response_format unsupported keyword", "POST", CH,
     chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {
         "type": "object", "properties": {"a": {"type": "string", "contentMediaType": "text/html"}}}}}),
     None, 400, "response_format.json_schema"),
    ("grammar syntax error", "POST", CH, chat(grammar="root ::= \"a"), None, 400, "grammar"),
    ("response_format string", "POST", CH, chat(response_format="json"), None, 400, "response_format"),
    ("tools", "POST", CH, chat(tools=[{"type": "function", "function": {"name": "f"}}]), None, 400, "tools"),
    ("tokenize missing content", "POST", "/tokenize", {"text": "x"}, None, 400, "content"),
    ("tokenize add_special string", "POST", "/tokenize", {"content": "x", "add_special": "yes"}, None, 400,
     "add_special"),
    ("detokenize not array", "POST", "/detokenize", {"tokens": "1 2"}, None, 400, "tokens"),
    ("detokenize bad id", "POST", "/detokenize", {"tokens": [1, 1 << 40]}, None, 400, "tokens"),
    ("unknown route", "GET", "/v2/nothing", None, None, 404, None),
    ("unknown model route", "GET", "/v1/models/gpt-4", None, None, 404, "model"),
    ("GET on completions", "GET", C, None, None, 405, None),
    ("PUT on chat", "PUT", CH, chat(), None, 405, None),
    ("DELETE on models", "DELETE", "/v1/models", None, None, 405, None),
    ("POST on health", "POST", "/health", {}, None, 405, None),
    ("text/plain body", "POST", C, b'{"prompt":"Hi"}', {"Content-Type": "text/plain"}, 415, None),
    ("multipart body", "POST", CH, b'--x\r\n', {"Content-Type": "multipart/form-data; boundary=x"}, 415, None),
    ("body over limit", "POST", C, b'{"prompt":"' + b"a" * 70000 + b'"}', None, 413, None),
]


class BadInputTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.s = Server("-c", "256", "--max-body-bytes", "65536", "--max-tokens", "1000")

    @classmethod
    def tearDownClass(cls):
        assert cls.s.stop() == 0

    def test_cases(self):
        self.assertGreaterEqual(len({c[0] for c in CASES}), 60)
        for name, method, path, body, headers, status, param in CASES:
            with self.subTest(name):
                h = dict(headers or {})
                if isinstance(body, dict):
                    body = json.dumps(body).encode()
                if body is not None:
                    h.setdefault("Content-Type", "application/json")
                st, rh, data = self.s.request(method, path, body, h)
                self.assertEqual(st, status, "%s: %r" % (name, data[:300]))
                j = json.loads(data)
                API.validate(j, "Error")
                self.assertTrue(j["error"]["message"])
                if param is not None:
                    self.assertEqual(j["error"]["param"], param, name)
                if status == 405:
                    self.assertIn("allow", rh)
        # still serving
        st, _, j, _ = self.s.post(C, comp(temperature=0))
        self.assertEqual(st, 200)
        self.assertEqual(self.s.request("GET", "/health")[0], 200)

    def test_body_over_limit_chunked(self):
        """No Content-Length: the body is counted as it arrives."""
        sock = connect(self.s.port)
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"a" * 16384
        for _ in range(6):
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        sock.sendall(b"0\r\n\r\n")
        resp = read_until(sock, b"}}", "the 413 answer to a chunked body over the limit")
        sock.close()
        self.assertTrue(resp.startswith(b"HTTP/1.1 413"), resp[:200])

    def test_body_over_limit_expect_continue(self):
        sock = connect(self.s.port)
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 10000000\r\nExpect: 100-continue\r\n\r\n")
        resp = sock.recv(65536)
        sock.close()
        self.assertTrue(resp.startswith(b"HTTP/1.1 413"), resp[:200])

    def test_invalid_utf8_keeps_connection_usable(self):
        c = self.s.conn()
        for body in (b'{"prompt":"\xff"}', b'{"prompt":"ok","max_tokens":1}'):
            c.request("POST", C, body=body, headers={"Content-Type": "application/json"})
            r = c.getresponse()
            r.read()
        self.assertEqual(r.status, 200)
        c.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
