"""orthoserve serve under concurrency (continuous batching, issue 4):
  - 16 concurrent greedy requests each return exactly their single-request
    (golden) continuation;
  - a queue-full burst gets 429 + Retry-After, and clients that retry as told
    are all served;
  - a cancelled stream frees its KV at once (metrics);
  - a repeated prompt reuses the cached prefix and gives the same text;
  - SIGTERM during load: every in-flight request completes or ends with an
    error, none hangs, the server exits 0.
Every loop is bounded in count and time (e2eutil: deadlines in seconds,
scaled for slow builds, never counts of quick retries); only 127.0.0.1."""
import json
import signal
import threading
import unittest

from e2eutil import (MODEL_ID, Deadline, OpenAPI, Server, connect, load_golden, parse_sse, read_until, retry_busy,
                     run_threads, scaled, wait_for)

API = OpenAPI()
GOLDEN = load_golden()


def greedy_body(prompt_tokens, n, stream=False):
    return {"model": MODEL_ID, "prompt": prompt_tokens, "max_tokens": n, "temperature": 0, "ignore_eos": True,
            "stream": stream}



class ConcurrencyTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.s = Server("-c", "256", "--parallel", "16", "--batch-size", "64", "--max-queue", "64")

    @classmethod
    def tearDownClass(cls):
        assert cls.s.stop() == 0

    def test_16_concurrent_greedy_match_single(self):
        cases = GOLDEN["greedy"]
        results = [None] * 16

        def client(i):
            g = cases[i % len(cases)]
            # prompt as token ids: exactly the golden prompt tokens
            st, _, j, _ = self.s.post("/v1/completions", greedy_body(g["prompt_tokens"], g["n_predict"]))
            results[i] = (st, j, g)

        run_threads([lambda i=i: client(i) for i in range(16)], "16 concurrent greedy requests")
        for i, (st, j, g) in enumerate(results):
            self.assertEqual(st, 200, j)
            self.assertEqual(j["usage"]["completion_tokens"], g["n_predict"])
            self.assertEqual(j["choices"][0]["text"], g["text"], "request %d" % i)

    def test_prefix_reuse_same_text(self):
        g = GOLDEN["greedy"][3]  # the 35-token prompt
        st, _, a, _ = self.s.post("/v1/completions", greedy_body(g["prompt_tokens"], 20))
        st2, _, b, _ = self.s.post("/v1/completions", greedy_body(g["prompt_tokens"], 20))
        self.assertEqual((st, st2), (200, 200))
        self.assertEqual(b["choices"][0]["text"], a["choices"][0]["text"])
        self.assertEqual(b["usage"]["prompt_tokens_details"]["cached_tokens"], len(g["prompt_tokens"]) - 1)
        API.check(b, "/v1/completions", "POST", 200)


class CancelFreesKvTest(unittest.TestCase):
    """A long stream (4000 tokens on a 4096 context: seconds of work even for
    stories260K) is dropped mid-way: it is cancelled, its KV freed, and the
    next request is served without waiting for it (no token is generated
    for anyone else meanwhile)."""

    def test_cancelled_stream_frees_kv(self):
        s = Server("-c", "4096", "--parallel", "2")
        try:
            body = greedy_body([1, 403, 407, 261, 378], 4000, stream=True)
            data = json.dumps(body).encode()
            sock = connect(s.port)
            sock.sendall(("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          "Content-Length: %d\r\n\r\n" % len(data)).encode() + data)
            self.assertIn(b"data: {", read_until(sock, b"data: {", "the stream's first chunk"))
            m = lambda name: s.metrics().get(name, 0)
            used = lambda: m("orthoserve_kv_tokens_used")
            cancelled = lambda: m('orthoserve_requests_cancelled_total{reason="client_disconnect"}')
            wait_for(lambda: used() > 0, "the running stream to hold KV")
            before = cancelled()
            sock.close()
            wait_for(lambda: cancelled() >= before + 1, "the dropped stream to be cancelled")
            wait_for(lambda: used() == 0 and m("orthoserve_requests_running") == 0,
                     "KV and the slot freed after the disconnect")
            # Nothing generates any more: the 4-token request is the only one
            # that moves the token counter, so it did not wait behind the
            # 4000-token stream, however fast the machine.
            gen = 'orthoserve_generated_tokens_total{model="%s"}' % MODEL_ID
            g0 = m(gen)
            st, _, j, _ = s.post("/v1/completions", greedy_body([1, 403], 4))
            self.assertEqual(st, 200, j)
            self.assertEqual(m(gen) - g0, 4, "tokens generated while serving a 4-token request")
        finally:
            self.assertEqual(s.stop(), 0)


class QueueFullTest(unittest.TestCase):
    def test_burst_gets_429_then_everyone_is_served(self):
        s = Server("-c", "512", "--parallel", "2", "--max-queue", "2", "--retry-after", "1")
        try:
            n = 12
            status = [[] for _ in range(n)]
            texts = [None] * n
            body = greedy_body([1, 403, 407, 261, 378], 400)
            raw = json.dumps(body).encode()
            req = (b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                   b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(raw)) + raw
            # The burst: all 12 requests are on the wire before the first of
            # them (400 tokens) can finish, so at most 2 run and 2 wait and
            # the rest must be refused, whatever the engine's speed.
            socks = [connect(s.port) for _ in range(n)]
            for c in socks:
                c.sendall(req)
            for i, c in enumerate(socks):
                data = read_until(c, None, "burst request %d's whole response" % i)
                c.close()
                head, _, payload = data.partition(b"\r\n\r\n")
                st = int(head.split()[1])
                status[i].append(st)
                if st == 429:
                    self.assertIn(b"\r\nretry-after: 1", head.lower())
                    API.check(json.loads(payload), "/v1/completions", "POST", 429)
                elif st == 200:
                    texts[i] = json.loads(payload)["choices"][0]["text"]

            def refused(i, r):
                st, h, j, _ = r
                status[i].append(st)
                self.assertEqual(st, 429, j)
                self.assertEqual(h.get("retry-after"), "1")
                API.check(j, "/v1/completions", "POST", 429)

            def client(i):
                # Retries as a client should: after what Retry-After says,
                # until served; bounded by a deadline in seconds (scaled), not
                # by a count of tries, so a slow build still gets through.
                if status[i][-1] == 200:
                    return
                (st, _, j, _), _ = retry_busy(lambda: s.post("/v1/completions", body),
                                              "client %d to be served after 429" % i, 120,
                                              lambda r: refused(i, r))
                status[i].append(st)
                self.assertEqual(st, 200, j)
                texts[i] = j["choices"][0]["text"]

            run_threads([lambda i=i: client(i) for i in range(n)], "12 clients retrying after 429")
            first = [st[0] for st in status]
            # at most 2 running + 2 waiting are admitted (only 2 if the
            # scheduler had not yet moved the first ones into slots)
            self.assertIn(first.count(200), (2, 3, 4), first)
            self.assertEqual(first.count(200) + first.count(429), n, first)
            self.assertTrue(all(st[-1] == 200 for st in status), status)
            self.assertEqual(len(set(texts)), 1, "greedy: everyone gets the same text")
            golden = GOLDEN["greedy"][0]["text"]
            self.assertEqual(texts[0][:len(golden)], golden)
        finally:
            self.assertEqual(s.stop(), 0)


class SigtermUnderLoadTest(unittest.TestCase):
    def test_sigterm_during_load(self):
        # The drain: ample for the 30-token requests (they hold the slots at
        # the SIGTERM), short enough to cut the 1500-token ones on a slow build.
        s = Server("-c", "2048", "--parallel", "4", "--max-queue", "8", "--drain-timeout", str(scaled(3)))
        outcomes = [None] * 10

        def client(i):
            body = greedy_body([1, 403, 407, 261, 378], 1500 if i % 2 else 30, stream=bool(i % 3))
            try:
                st, h, raw = s.request("POST", "/v1/completions", body)
            except OSError as e:  # refused after the listener closed: an error, not a hang
                outcomes[i] = ("conn", str(e))
                return
            if st != 200:
                outcomes[i] = ("status", st)
            elif body["stream"]:
                recs = parse_sse(raw)  # asserts the framing ends with [DONE]
                last = json.loads(recs[-2])
                outcomes[i] = ("error" if "error" in last else "done", last.get("choices"))
            else:
                outcomes[i] = ("done", json.loads(raw)["choices"][0]["finish_reason"])

        def held():
            m = s.metrics()
            return (m.get("orthoserve_requests_running", 0) + m.get("orthoserve_requests_waiting", 0) +
                    m.get('orthoserve_requests_finished_total{model="%s",finish_reason="length"}' % MODEL_ID, 0))

        # The five short requests first, then the five long ones, each group
        # in the server's hands before the next: the order of admission, and
        # so what the drain finds, does not depend on the machine's speed.
        threads = []
        for group in (range(0, 10, 2), range(1, 10, 2)):
            for i in group:
                threads.append(threading.Thread(target=client, args=(i,), daemon=True))
                threads[-1].start()
            wait_for(lambda: held() >= len(threads), "the server to hold the %d requests sent" % len(threads))
        s.signal(signal.SIGTERM)
        d = Deadline(120, "every client's answer after SIGTERM")
        for t in threads:
            t.join(d.left())
        if any(t.is_alive() for t in threads):
            d.fail("a request hung: %r" % outcomes)
        s.proc.wait(scaled(60))
        self.assertEqual(s.proc.returncode, 0)
        self.assertTrue(all(o is not None for o in outcomes), outcomes)
        kinds = {o[0] for o in outcomes}
        self.assertTrue(kinds <= {"done", "error", "status", "conn"}, outcomes)
        self.assertTrue(all(outcomes[i][0] == "done" for i in range(0, 10, 2)),
                        "the short requests finish within the drain: %r" % outcomes)
        s.stop()


if __name__ == "__main__":
    unittest.main(verbosity=2)
