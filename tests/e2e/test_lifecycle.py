"""orthoserve serve: API keys, CORS, disconnect cancellation, queue full (429),
request timeout, context overflow, SIGTERM drain."""
import json
import signal
import unittest

from e2eutil import MODEL_ID, OpenAPI, Server, connect, parse_sse, read_until, scaled, wait_for

API = OpenAPI()
LONG = {"prompt": "Once upon a time", "max_tokens": 4000, "temperature": 0, "ignore_eos": True}


def raw_post(port, path, obj, extra_headers=""):
    """Send a POST on a raw socket and return the socket (response unread)."""
    body = json.dumps(obj).encode()
    s = connect(port)
    s.sendall(("POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
               % (path, len(body), extra_headers)).encode() + body)
    return s


def tail(data, n=600):
    """The end of a long response, for a failure message."""
    return data if len(data) <= n else b"..." + data[-n:]


class AuthCorsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.s = Server("--api-key", "k1", "--api-key", "k2", "--cors-origin", "http://a.example")

    @classmethod
    def tearDownClass(cls):
        assert cls.s.stop() == 0

    def test_keys(self):
        st, j = self.s.get_json("/v1/models")
        self.assertEqual(st, 401)
        API.check(j, "/v1/models", "GET", 401)
        self.assertEqual(j["error"]["code"], "invalid_api_key")
        st, _ = self.s.get_json("/v1/models", {"Authorization": "Bearer k3"})
        self.assertEqual(st, 401)
        st, _ = self.s.get_json("/v1/models", {"Authorization": "Bearer k"})
        self.assertEqual(st, 401)
        st, _ = self.s.get_json("/v1/models", {"Authorization": "k1"})
        self.assertEqual(st, 401)
        for k in ("k1", "k2"):
            st, _ = self.s.get_json("/v1/models", {"Authorization": "Bearer " + k})
            self.assertEqual(st, 200)
        st, _, j, _ = self.s.post("/v1/completions", {"prompt": "Hi", "max_tokens": 1},
                                  {"Authorization": "Bearer k2"})
        self.assertEqual(st, 200)
        st, _, j, _ = self.s.post("/v1/completions", {"prompt": "Hi", "max_tokens": 1})
        self.assertEqual(st, 401)
        self.assertEqual(self.s.request("GET", "/health")[0], 200)
        self.assertEqual(self.s.request("GET", "/metrics")[0], 200)
        self.assertEqual(self.s.request("GET", "/ready")[0], 200)  # public by default: probes send no key (issue 15, D2)

    def test_cors(self):
        st, h, _ = self.s.request("OPTIONS", "/v1/chat/completions", headers={
            "Origin": "http://a.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        self.assertEqual(st, 204)
        self.assertEqual(h["access-control-allow-origin"], "http://a.example")
        self.assertIn("POST", h["access-control-allow-methods"])
        self.assertEqual(h["access-control-allow-headers"], "authorization, content-type")
        st, h, _ = self.s.request("GET", "/v1/models", headers={"Origin": "http://a.example",
                                                               "Authorization": "Bearer k1"})
        self.assertEqual(st, 200)
        self.assertEqual(h["access-control-allow-origin"], "http://a.example")
        st, h, _ = self.s.request("GET", "/v1/models", headers={"Origin": "http://evil.example",
                                                               "Authorization": "Bearer k1"})
        self.assertEqual(st, 200)
        self.assertNotIn("access-control-allow-origin", h)
        # errors carry CORS headers too, so browsers can read them
        st, h, _ = self.s.request("GET", "/v1/models", headers={"Origin": "http://a.example"})
        self.assertEqual(st, 401)
        self.assertEqual(h["access-control-allow-origin"], "http://a.example")


class CancelQueueTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.s = Server("-c", "4096", "--parallel", "1", "--max-queue", "1", "--retry-after", "2")

    @classmethod
    def tearDownClass(cls):
        assert cls.s.stop() == 0

    def metric(self, name):
        return self.s.metrics().get(name, 0)

    def cancelled(self):
        return self.metric('orthoserve_requests_cancelled_total{reason="client_disconnect"}')

    def served_alone_after_cancel(self, before):
        """The dropped request is cancelled and its slot freed; the next one
        (the only slot: --parallel 1) is served without waiting behind it:
        it is the only request that generates, however fast the machine."""
        wait_for(lambda: self.cancelled() >= before + 1,
                 lambda: "a client_disconnect cancellation; server log: " + self.s.log_text())
        wait_for(lambda: self.metric("orthoserve_requests_running") == 0, "the cancelled request's slot")
        gen = 'orthoserve_generated_tokens_total{model="%s"}' % MODEL_ID
        g0 = self.metric(gen)
        st, _, j, _ = self.s.post("/v1/completions", {"prompt": "Hi", "max_tokens": 4, "ignore_eos": True})
        self.assertEqual(st, 200, j)
        self.assertEqual(self.metric(gen) - g0, 4, "tokens generated while serving a 4-token request")

    def test_disconnect_stream_cancels(self):
        before = self.cancelled()
        sock = raw_post(self.s.port, "/v1/completions", dict(LONG, stream=True))
        got = read_until(sock, b"data: {", "the stream's first chunk")
        self.assertIn(b"200 OK", got)
        sock.close()
        self.served_alone_after_cancel(before)
        wait_for(lambda: "cancelled=client_disconnect" in self.s.log_text(), "the cancelled request's log line")

    def test_disconnect_nonstream_cancels(self):
        before = self.cancelled()
        sock = raw_post(self.s.port, "/v1/completions", LONG)
        # Dropped while it runs (not before the server has read it).
        wait_for(lambda: self.metric("orthoserve_requests_running") == 1, "the request to run")
        sock.close()
        self.served_alone_after_cancel(before)

    def test_queue_full_429(self):
        socks = []
        try:
            # One request running, then one waiting (each in the server's
            # hands before the next is sent): the queue is full.
            socks.append(raw_post(self.s.port, "/v1/completions", LONG))
            wait_for(lambda: self.metric("orthoserve_requests_running") == 1, "the first request to run")
            socks.append(raw_post(self.s.port, "/v1/completions", LONG))
            wait_for(lambda: self.metric("orthoserve_requests_waiting") == 1, "the second request to wait")
            st, h, j, _ = self.s.post("/v1/completions", LONG)
            self.assertEqual(st, 429, j)
            self.assertEqual(h["retry-after"], "2")
            API.check(j, "/v1/completions", "POST", 429)
            self.assertEqual(j["error"]["code"], "queue_full")
            st, _, _ = self.s.request("GET", "/ready")
            self.assertEqual(st, 503)
        finally:
            for s in socks:
                s.close()
        wait_for(lambda: self.s.request("GET", "/ready")[0] == 200, "/ready 200 once the clients left")


class TimeoutContextTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.s = Server("-c", "4096", "--timeout", "0.3")

    @classmethod
    def tearDownClass(cls):
        assert cls.s.stop() == 0

    def test_timeout(self):
        st, _, j, _ = self.s.post("/v1/completions", LONG)
        self.assertEqual(st, 504, j)
        API.check(j, "/v1/completions", "POST", 504)
        m = self.s.metrics()
        self.assertGreaterEqual(m['orthoserve_requests_cancelled_total{reason="timeout"}'], 1)
        st, _, raw = self.s.request("POST", "/v1/completions", dict(LONG, stream=True))
        recs = parse_sse(raw)
        self.assertIn("error", json.loads(recs[-2]))


class ContextTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.s = Server("-c", "32")

    @classmethod
    def tearDownClass(cls):
        assert cls.s.stop() == 0

    def test_context_length_exceeded(self):
        st, _, j, _ = self.s.post("/v1/completions", {"prompt": "Once upon a time " * 20})
        self.assertEqual(st, 400)
        API.check(j, "/v1/completions", "POST", 400)
        self.assertEqual(j["error"]["code"], "context_length_exceeded")
        self.assertEqual(j["error"]["param"], "prompt")
        st, _, j, _ = self.s.post("/v1/chat/completions",
                                  {"messages": [{"role": "user", "content": "Once upon a time " * 20}]})
        self.assertEqual(st, 400)
        self.assertEqual(j["error"]["code"], "context_length_exceeded")
        # generation stops at the context end with finish_reason length
        st, _, j, _ = self.s.post("/v1/completions", {"prompt": "Once", "max_tokens": 100, "ignore_eos": True})
        self.assertEqual(st, 200)
        self.assertEqual(j["choices"][0]["finish_reason"], "length")
        self.assertLessEqual(j["usage"]["total_tokens"], 32)


class DrainTest(unittest.TestCase):
    def test_sigterm_drains_then_exits_0(self):
        # A drain long enough for the 1500-token stream on any machine: the
        # server exits as soon as it is done, so a fast one does not wait.
        s = Server("-c", "2048", "--drain-timeout", str(scaled(120)))
        try:
            sock = raw_post(s.port, "/v1/completions", dict(LONG, max_tokens=1500, stream=True))
            self.assertIn(b"data: {", read_until(sock, b"data: {", "the stream's first chunk"))
            s.signal(signal.SIGTERM)
            wait_for(lambda: "draining" in s.log_text(), "'draining' in the server log")
            st, _, _ = s.request("GET", "/ready")
            self.assertEqual(st, 503)
            st, _, j, _ = s.post("/v1/completions", {"prompt": "Hi"})
            self.assertEqual(st, 503)
            rest = read_until(sock, b"data: [DONE]\n\n", "the drained stream's end", 150)
            self.assertIn(b'"finish_reason":"length"', rest, tail(rest))
            sock.close()
            s.proc.wait(scaled(60))
            self.assertEqual(s.proc.returncode, 0)
        finally:
            s.stop()

    def test_drain_timeout_cancels_and_exits_0(self):
        s = Server("-c", "4096", "--drain-timeout", "0.2")
        try:
            sock = raw_post(s.port, "/v1/completions", dict(LONG, stream=True))
            self.assertIn(b"data: {", read_until(sock, b"data: {", "the stream's first chunk"))
            s.signal(signal.SIGTERM)
            rest = read_until(sock, b"data: [DONE]\n\n", "the cut stream's end")
            self.assertIn(b'"error"', rest, tail(rest))
            self.assertTrue(rest.rstrip(b"\r\n0").endswith(b"data: [DONE]"), tail(rest))
            sock.close()
            s.proc.wait(scaled(60))
            self.assertEqual(s.proc.returncode, 0)
        finally:
            s.stop()


if __name__ == "__main__":
    unittest.main(verbosity=2)
