"""POST /v1/responses and the stored responses, over HTTP: the response
object and every stream event validated against openapi.yaml, the event
order and sequence numbers, the same text as the chat road, stored
responses (GET, DELETE, previous_response_id, the bound, the ttl, store
false, store_responses false), storage errors (500, database unharmed), and
SIGKILL in the middle of stored writes (after a restart every response a
client received is there, whole)."""
import json
import os
import shutil
import signal
import sqlite3
import tempfile
import threading
import time
import unittest

from e2eutil import MODEL_ID, OpenAPI, Deadline, Server, scaled

ORDER = ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
CLOSE = ["response.output_text.done", "response.content_part.done", "response.output_item.done"]


def parse_events(raw):
    """'event: <type>\\ndata: <json>\\n\\n' records -> list of event objects."""
    text = raw.decode("utf-8")
    assert text.endswith("\n\n"), text[-80:]
    out = []
    for rec in text.split("\n\n")[:-1]:
        lines = rec.split("\n")
        assert len(lines) == 2 and lines[0].startswith("event: ") and lines[1].startswith("data: "), rec[:120]
        ev = json.loads(lines[1][6:])
        assert ev["type"] == lines[0][7:], rec[:120]
        out.append(ev)
    return out


class ResponsesTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="orthoserve-resp-")
        cls.api = OpenAPI()
        cls.s = Server("-c", "512", "--state-dir", os.path.join(cls.dir, "state"))

    @classmethod
    def tearDownClass(cls):
        cls.s.stop()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def create(self, body, status=200):
        st, _, j, raw = self.s.post("/v1/responses", body)
        self.assertEqual(st, status, raw[:500])
        self.api.check(j, "/v1/responses", "post", status)
        return j

    def stream(self, body):
        st, h, raw = self.s.request("POST", "/v1/responses", dict(body, stream=True))
        self.assertEqual(st, 200, raw[:500])
        self.assertTrue(h["content-type"].startswith("text/event-stream"))
        events = parse_events(raw)
        for ev in events:
            self.api.validate(ev, "ResponseStreamEvent")
        return events

    def get(self, rid, status=200):
        st, body = self.s.get_json("/v1/responses/" + rid)
        self.assertEqual(st, status, body)
        self.api.check(body, "/v1/responses/{id}", "get", status)
        return body

    @staticmethod
    def text_of(resp):
        return "".join(p["text"] for it in resp["output"] if it["type"] == "message" for p in it["content"])

    def test_plain_equals_chat(self):
        r = self.create({"model": MODEL_ID, "input": "Once upon a time", "max_output_tokens": 24, "temperature": 0})
        self.assertRegex(r["id"], r"^resp_[0-9a-f]{48}$")
        self.assertEqual(r["object"], "response")
        self.assertIn(r["status"], ("completed", "incomplete"))
        u = r["usage"]
        self.assertEqual(u["total_tokens"], u["input_tokens"] + u["output_tokens"])
        self.assertGreater(u["output_tokens"], 0)
        self.assertEqual(r["orthorank"]["prefill"]["tokens"] + u["input_tokens_details"]["cached_tokens"],
                         u["input_tokens"])
        st, _, c, _ = self.s.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "Once upon a time"}],
                                                           "max_tokens": 24, "temperature": 0})
        self.assertEqual(st, 200)
        self.assertEqual(self.text_of(r), c["choices"][0]["message"]["content"], "one road: the same text as chat")
        self.assertEqual(u["input_tokens"], c["usage"]["prompt_tokens"])
        self.assertEqual(r["status"] == "incomplete", c["choices"][0]["finish_reason"] == "length")
        self.assertEqual(self.get(r["id"]), r, "the stored response is the one sent")

    def test_incomplete_at_max_output_tokens(self):
        r = self.create({"input": "Hi", "max_output_tokens": 3, "ignore_eos": True, "metadata": {"k": "v"},
                         "instructions": "Tell a story."})
        self.assertEqual(r["status"], "incomplete")
        self.assertEqual(r["incomplete_details"], {"reason": "max_output_tokens"})
        self.assertEqual(r["output"][0]["status"], "incomplete")
        self.assertEqual(r["usage"]["output_tokens"], 3)
        self.assertEqual(r["metadata"], {"k": "v"})
        self.assertEqual(r["instructions"], "Tell a story.")

    def test_stream_events(self):
        events = self.stream({"input": "Once upon a time", "max_output_tokens": 20, "seed": 5, "temperature": 0.8})
        self.assertEqual([e["sequence_number"] for e in events], list(range(len(events))))
        types = [e["type"] for e in events]
        self.assertEqual(types[:4], ORDER)
        self.assertIn(types[-1], ("response.completed", "response.incomplete"))
        self.assertEqual(types[-4:-1], CLOSE)
        self.assertTrue(all(t == "response.output_text.delta" for t in types[4:-4]), types)
        self.assertGreater(len(types), 8, "at least one delta")
        final = events[-1]["response"]
        deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
        self.assertEqual(deltas, events[-4]["text"])
        self.assertEqual(deltas, self.text_of(final))
        msg_id = events[2]["item"]["id"]
        self.assertTrue(all(e.get("item_id", msg_id) == msg_id for e in events))
        self.assertEqual(events[0]["response"]["status"], "in_progress")
        self.assertIsNone(events[0]["response"]["usage"])
        self.assertEqual(events[0]["response"]["id"], final["id"])
        self.assertEqual(self.get(final["id"]), final, "stored before response.completed was sent")
        # The same request unstreamed gives the same text.
        r = self.create({"input": "Once upon a time", "max_output_tokens": 20, "seed": 5, "temperature": 0.8})
        self.assertEqual(self.text_of(r), deltas)

    def test_previous_response_id(self):
        r1 = self.create({"input": "Tom had a dog.", "max_output_tokens": 8, "instructions": "Short."})
        r2 = self.create({"input": [{"role": "user", "content": [{"type": "input_text", "text": "What next?"}]}],
                          "previous_response_id": r1["id"], "max_output_tokens": 8})
        self.assertEqual(r2["previous_response_id"], r1["id"])
        self.assertIsNone(r2["instructions"], "instructions are not carried over")
        # The second prompt holds the first conversation (without its instructions) and its answer.
        self.assertGreater(r2["usage"]["input_tokens"], r1["usage"]["output_tokens"] + 5)
        self.assertGreater(r2["usage"]["input_tokens_details"]["cached_tokens"], 0)
        r3 = self.create({"input": "And then?", "previous_response_id": r2["id"], "max_output_tokens": 4})
        self.assertGreater(r3["usage"]["input_tokens"], r2["usage"]["input_tokens"] + r2["usage"]["output_tokens"])
        # An item_reference to r1's message is that message.
        msg = r1["output"][0]
        ref = self.create({"input": [{"role": "user", "content": "Tom had a dog."},
                                     {"type": "item_reference", "id": msg["id"]},
                                     {"role": "user", "content": "What next?"}], "max_output_tokens": 8,
                           "temperature": 0, "store": False})
        full = self.create({"input": [{"role": "user", "content": "Tom had a dog."},
                                      {"role": "assistant", "content": self.text_of(r1)},
                                      {"role": "user", "content": "What next?"}], "max_output_tokens": 8,
                            "temperature": 0, "store": False})
        self.assertEqual(self.text_of(ref), self.text_of(full))
        self.assertEqual(ref["usage"]["input_tokens"], full["usage"]["input_tokens"])
        st, _, e, _ = self.s.post("/v1/responses", {"input": [{"type": "item_reference", "id": "msg_" + "0" * 48}]})
        self.assertEqual((st, e["error"]["code"], e["error"]["param"]), (404, "item_not_found", "input[0]"))
        st, _, e, _ = self.s.post("/v1/responses", {"input": "x", "previous_response_id": "resp_nope"})
        self.assertEqual(st, 404)
        self.api.validate(e, "Error")
        self.assertEqual(e["error"]["param"], "previous_response_id")
        self.assertEqual(e["error"]["code"], "previous_response_not_found")

    def test_get_delete_and_404(self):
        r = self.create({"input": "Hello", "max_output_tokens": 4})
        self.get(r["id"])
        st, _, raw = self.s.request("DELETE", "/v1/responses/" + r["id"])
        self.assertEqual(st, 200)
        body = json.loads(raw)
        self.api.check(body, "/v1/responses/{id}", "delete", 200)
        self.assertEqual(body, {"id": r["id"], "object": "response", "deleted": True})
        e = self.get(r["id"], 404)
        self.assertEqual(e["error"]["code"], "response_not_found")
        st, _, raw = self.s.request("DELETE", "/v1/responses/" + r["id"])
        self.assertEqual(st, 404)
        self.get("resp_0123", 404)
        self.get("has%20space", 404)
        st, h, _ = self.s.request("PUT", "/v1/responses/" + r["id"], {})
        self.assertEqual(st, 405)

    def test_store_false(self):
        r = self.create({"input": "Hello", "max_output_tokens": 4, "store": False})
        self.assertFalse(r["store"])
        self.get(r["id"], 404)
        ev = self.stream({"input": "Hello", "max_output_tokens": 4, "store": False})
        self.get(ev[-1]["response"]["id"], 404)

    def test_errors_are_chats(self):
        st, _, e, _ = self.s.post("/v1/responses", {"input": "x", "max_output_tokens": 100000})
        self.assertEqual((st, e["error"]["param"]), (400, "max_output_tokens"))
        st, _, e, _ = self.s.post("/v1/responses", {"input": [{"role": "user", "content": 5}]})
        self.assertEqual((st, e["error"]["param"]), (400, "input[0].content"))
        st, _, e, _ = self.s.post("/v1/responses", {"input": "x", "model": "nope"})
        self.assertEqual((st, e["error"]["code"]), (404, "model_not_found"))
        st, _, e, _ = self.s.post("/v1/responses", {"input": "x", "background": True})
        self.assertEqual((st, e["error"]["code"]), (400, "not_supported"))
        # Structured output and function tools take the chat road: whatever chat answers today
        # (400 until those land), the Responses API answers the same.
        schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
        cases = [({"text": {"format": {"type": "json_schema", "name": "x", "schema": schema}}},
                  {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}),
                 ({"tools": [{"type": "function", "name": "f", "parameters": schema}]},
                  {"tools": [{"type": "function", "function": {"name": "f", "parameters": schema}}]})]
        for resp_extra, chat_extra in cases:
            st_r, _, er, _ = self.s.post("/v1/responses", dict({"input": "x", "max_output_tokens": 4}, **resp_extra))
            st_c, _, ec, _ = self.s.post("/v1/chat/completions",
                                         dict({"messages": [{"role": "user", "content": "x"}], "max_tokens": 4},
                                              **chat_extra))
            self.assertEqual(st_r, st_c, (er, ec))
            if st_c != 200:
                self.assertEqual(er["error"]["code"], ec["error"]["code"])
                self.assertEqual(er["error"]["type"], ec["error"]["type"])


class StoreLimitsTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="orthoserve-resp-")

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def post(self, s, body):
        st, _, j, raw = s.post("/v1/responses", body)
        return st, j

    def test_bound_and_ttl(self):
        s = Server("--state-dir", self.dir, "--max-stored-responses", "2", "--stored-response-ttl", "2")
        try:
            ids = [self.post(s, {"input": "Hi", "max_output_tokens": 2})[1]["id"] for _ in range(3)]
            self.assertEqual([s.get_json("/v1/responses/" + i)[0] for i in ids], [404, 200, 200], "oldest pruned")
            d = Deadline(scaled(30), "the ttl of 2 s to pass")
            while s.get_json("/v1/responses/" + ids[2])[0] == 200:
                self.assertFalse(d.expired(), "a response older than stored_response_ttl is still served")
                d.sleep(0.2)
            st, e = self.post(s, {"input": "x", "previous_response_id": ids[2]})
            self.assertEqual((st, e["error"]["code"]), (404, "previous_response_not_found"))
        finally:
            self.assertEqual(s.stop(), 0)

    def test_store_responses_false(self):
        s = Server("--state-dir", os.path.join(self.dir, "never"), "--store-responses=false")
        try:
            st, r = self.post(s, {"input": "Hi", "max_output_tokens": 2})
            self.assertEqual(st, 200)
            self.assertFalse(r["store"])
            self.assertEqual(s.get_json("/v1/responses/" + r["id"])[0], 404)
            st, e = self.post(s, {"input": "x", "previous_response_id": r["id"]})
            self.assertEqual((st, e["error"]["param"]), (400, "previous_response_id"))
            self.assertFalse(os.path.exists(os.path.join(self.dir, "never")), "nothing created")
        finally:
            self.assertEqual(s.stop(), 0)

    def test_storage_error_is_500(self):
        blocker = os.path.join(self.dir, "file")
        open(blocker, "w").close()
        s = Server("--state-dir", blocker)  # a file, not a directory: the database cannot be opened
        try:
            st, e = self.post(s, {"input": "Hi", "max_output_tokens": 2})
            self.assertEqual((st, e["error"]["type"], e["error"]["code"]), (500, "server_error", "storage_error"))
            OpenAPI().validate(e, "Error")
            st, _, raw = s.request("POST", "/v1/responses", {"input": "Hi", "max_output_tokens": 2, "stream": True})
            events = parse_events(raw)
            self.assertEqual(events[-1]["type"], "response.failed")
            self.assertEqual(events[-1]["response"]["error"]["code"], "storage_error")
            st, r = self.post(s, {"input": "Hi", "max_output_tokens": 2, "store": False})
            self.assertEqual(st, 200)
            self.assertEqual(s.get_json("/v1/responses/" + r["id"])[0], 500)
            self.assertIn("not stored", s.log_text())
        finally:
            self.assertEqual(s.stop(), 0)


class KillTest(unittest.TestCase):
    """SIGKILL while stored responses are being written: after a restart,
    every response a client was sent is there, byte for byte the same JSON,
    and the database is whole."""

    def test_sigkill_mid_writes(self):
        d = tempfile.mkdtemp(prefix="orthoserve-resp-kill-")
        try:
            self.run_kill(d)
        finally:
            shutil.rmtree(d, ignore_errors=True)

    def run_kill(self, d):
        s = Server("--state-dir", d, "--parallel", "4")
        got, lock, stop = {}, threading.Lock(), threading.Event()

        def client(k):
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    st, _, j, _ = s.post("/v1/responses", {"input": "Client %d request %d" % (k, i),
                                                           "max_output_tokens": 4, "metadata": {"k": str(k)}},
                                         timeout=30)
                except OSError:
                    return  # the server is gone
                if st == 200:
                    with lock:
                        got[j["id"]] = j

        threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        dl = Deadline(scaled(60), "20 stored responses before the kill")
        while len(got) < 20:
            self.assertFalse(dl.expired(), "only %d responses" % len(got))
            dl.sleep(0.05)
        s.proc.send_signal(signal.SIGKILL)
        s.proc.wait()
        stop.set()
        for t in threads:
            t.join(scaled(60))
        s.stop()
        db = sqlite3.connect(os.path.join(d, "responses.sqlite3"))
        self.assertEqual(db.execute("PRAGMA integrity_check").fetchone()[0], "ok")
        rows = db.execute("SELECT id, input, response FROM responses").fetchall()
        db.close()
        for rid, inp, resp in rows:  # no torn record: every row is whole JSON of a finished response
            r = json.loads(resp)
            self.assertEqual(r["id"], rid)
            self.assertIn(r["status"], ("completed", "incomplete"))
            self.assertIsInstance(json.loads(inp), list)
        s2 = Server("--state-dir", d)
        try:
            for rid, body in got.items():
                st, stored = s2.get_json("/v1/responses/" + rid)
                self.assertEqual(st, 200, "response %s was sent to its client but is lost" % rid)
                self.assertEqual(stored, body)
            self.assertGreaterEqual(len(rows), len(got))
        finally:
            self.assertEqual(s2.stop(), 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
