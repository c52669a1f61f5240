"""Faults (issue 7, item 4): the model file deleted or truncated while serving,
allocation failures during load and generation, slowloris clients, partial
requests abandoned by their clients, and connection floods. Every case is
bounded in time and uses only 127.0.0.1.
docs/SECURITY.md ("Faults") describes the behaviours checked here.

Run one class: python3 test_faults.py AllocFailureTest (ctest runs the
allocation loop as its own test, e2e.faults_alloc, so the sanitizer stage
can run it alone)."""
import json
import os
import resource
import select
import shutil
import subprocess
import tempfile
import threading
import time
import unittest

from e2eutil import BIN, MODEL, Server, connect, connection_sockets, fd_count, run_threads, scaled, wait_for

REQ = {"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0}


def stop_ok(tc, s):
    """Stop the server (SIGTERM) and assert a clean exit 0."""
    log = s.log_text()
    rc = s.stop()
    tc.assertEqual(rc, 0, log[-3000:])


def raise_nofile(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < want:
        raise unittest.SkipTest("RLIMIT_NOFILE hard limit %d < %d" % (hard, want))
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


class ModelFileTest(unittest.TestCase):
    """The model file changes while it is served."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="orthoserve-faults-")
        self.path = os.path.join(self.dir, "model.gguf")
        shutil.copyfile(MODEL, self.path)
        self.size = os.path.getsize(self.path)

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def completion(self, s, **kw):
        st, _, j, raw = s.post("/v1/completions", dict(REQ, **kw))
        self.assertEqual(st, 200, raw)
        return j["choices"][0]["text"]

    def test_unlink_keeps_serving(self):
        # The mapping keeps the inode alive: serving continues unchanged.
        s = Server(model=self.path)
        try:
            before = self.completion(s)
            os.unlink(self.path)
            for _ in range(5):
                self.assertEqual(self.completion(s), before)
            st, _, raw = s.request("POST", "/v1/completions", dict(REQ, stream=True))
            self.assertEqual(st, 200)
            self.assertTrue(raw.endswith(b"data: [DONE]\n\n"))
            self.assertEqual(s.request("GET", "/health")[0], 200)
        finally:
            stop_ok(self, s)

    def test_rename_over_keeps_serving(self):
        # Replacing the file by rename (the documented way) is as safe.
        s = Server(model=self.path)
        try:
            before = self.completion(s)
            tmp = self.path + ".new"
            with open(tmp, "wb") as f:
                f.write(b"GGUF but not a model" * 100)
            os.rename(tmp, self.path)
            self.assertEqual(self.completion(s), before)
        finally:
            stop_ok(self, s)

    def truncate_mmap(self, *args):
        s = Server(*args, model=self.path)
        try:
            self.completion(s)
            os.truncate(self.path, self.size // 3)
            # The next forward pass touches weights past the new end.
            try:
                s.post("/v1/completions", REQ)
            except OSError:
                pass
            try:
                s.proc.wait(scaled(60))
            except subprocess.TimeoutExpired:
                self.fail("the server kept running on a truncated mapping: " + s.log_text())
            log = s.log_text()
            self.assertEqual(s.proc.returncode, 70, log)
            self.assertIn(self.path, log)
            self.assertIn("truncated or changed underneath the server", log)
            return log
        finally:
            s.stop()

    def test_truncate_mmap_exits_70_with_message(self):
        log = self.truncate_mmap()
        line = [l for l in log.splitlines() if "SIGBUS" in l]
        self.assertEqual(len(line), 1, log)
        self.assertTrue(line[0].startswith("orthoserve: fatal: SIGBUS: the model file "), line[0])

    def test_truncate_mmap_json_log(self):
        log = self.truncate_mmap("--log-format", "json")
        line = [l for l in log.splitlines() if "SIGBUS" in l]
        self.assertEqual(len(line), 1, log)
        o = json.loads(line[0])
        self.assertEqual(o["level"], "fatal")
        self.assertEqual(o["exit_code"], 70)

    def test_truncate_no_mmap_keeps_serving(self):
        s = Server("--mmap=false", model=self.path)
        try:
            before = self.completion(s)
            os.truncate(self.path, self.size // 3)
            self.assertEqual(self.completion(s), before)
            os.truncate(self.path, 0)
            with open(self.path, "r+b") as f:
                f.write(b"\0" * 4096)
            for _ in range(3):
                self.assertEqual(self.completion(s), before)
            st, _, raw = s.request("POST", "/v1/completions", dict(REQ, stream=True))
            self.assertEqual(st, 200)
        finally:
            stop_ok(self, s)

    def test_no_mmap_same_output(self):
        a = Server(model=self.path)
        b = Server("--mmap=false", model=self.path)
        try:
            for p in ("Once upon a time", "The little dog", "Hi"):
                self.assertEqual(self.completion(a, prompt=p, max_tokens=24),
                                 self.completion(b, prompt=p, max_tokens=24))
        finally:
            a.stop()
            b.stop()


class AllocFailureTest(unittest.TestCase):
    """ORTHOSERVE_FAIL_ALLOC_AT=N for every engine allocation of a model load
    plus a short generation: each run ends in a clean error (exit 1 and a
    message) or, where the allocation was optional, in the right output;
    never a crash, and under the sanitizer builds never a leak."""

    TAIL = 40        # this many successes in a row after the last failure: every allocation was covered
    MAX_N = 3000     # bound

    def run_at(self, n, model=MODEL):
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORTHOSERVE_")}
        if n:
            env["ORTHOSERVE_FAIL_ALLOC_AT"] = str(n)
        args = ["generate", "-m", model, "-p", "Once upon a time", "-n", "8", "--temp", "0"]
        return subprocess.run([BIN] + args, env=env, capture_output=True, timeout=scaled(60))

    def test_every_allocation(self):
        self.walk(MODEL)

    def test_every_allocation_repacked(self):
        # A Q4_K/Q6_K model whose weights are repacked at load (AVX-512): the
        # repacking allocations are optional, and without them the model
        # keeps the file layout with the same output.
        self.walk(os.path.join(os.path.dirname(MODEL), "tiny256-Q4_K_M.gguf"))

    def walk(self, model):
        run_at = lambda n: self.run_at(n, model)
        base = run_at(0)
        self.assertEqual(base.returncode, 0, base.stderr)
        self.assertTrue(base.stdout)
        last_fail, n, fails = 0, 0, 0
        t0 = time.time()
        while n - last_fail <= self.TAIL:
            n += 1
            self.assertLessEqual(n, self.MAX_N, "more engine allocations than the bound")
            r = run_at(n)
            err = r.stderr.decode(errors="replace")
            self.assertNotIn("Sanitizer", err, "N=%d: %s" % (n, err))
            self.assertNotIn("runtime error", err, "N=%d: %s" % (n, err))
            self.assertIn(r.returncode, (0, 1), "N=%d: exit %d: %s" % (n, r.returncode, err))
            if r.returncode == 1:
                last_fail, fails = n, fails + 1
                msg = [l for l in err.splitlines() if l.startswith("orthoserve: ")]
                self.assertTrue(msg, "N=%d: exit 1 without a message: %r" % (n, err))
            else:
                self.assertEqual(r.stdout, base.stdout, "N=%d: a survived allocation failure changed the output" % n)
        print("\nallocation failure: %d engine allocations walked, %d ended in a clean error, %.1f s"
              % (last_fail, fails, time.time() - t0))
        self.assertGreater(fails, 10)

    def test_serve_load_failure(self):
        # The server: an allocation failure while loading is exit 1 with a message.
        # N picks required allocations (GGUF tables, model, tokenizer, scheduler);
        # optional ones (weight repacking, the OrthoRank fallback plan: 8-10 here)
        # let the load go on, as test_every_allocation shows.
        for n in (1, 3, 7, 11, 25):
            env = {"ORTHOSERVE_FAIL_ALLOC_AT": str(n)}
            log = tempfile.TemporaryFile()
            self.addCleanup(log.close)
            p = subprocess.Popen([BIN, "serve", "-m", MODEL, "--host", "127.0.0.1", "--port", "0"],
                                 stdout=subprocess.DEVNULL, stderr=log,
                                 env=dict({k: v for k, v in os.environ.items() if not k.startswith("ORTHOSERVE_")},
                                          **env))
            rc = p.wait(scaled(60))
            log.seek(0)
            text = log.read().decode(errors="replace")
            self.assertEqual(rc, 1, "N=%d: %s" % (n, text))
            self.assertIn("cannot", text)
            self.assertNotIn("Sanitizer", text)


class SlowClientTest(unittest.TestCase):
    """50 slowloris connections (25 trickling headers, 25 trickling a body)
    are closed after idle_timeout while normal requests are served at once:
    each in less than half the idle_timeout, so none waited for a slowloris
    connection to be timed out. (The idle_timeout is 2 s on a plain build,
    more on a slow one: see e2eutil.TIME_SCALE.)"""

    IDLE = max(2, round(scaled(2)))

    @classmethod
    def setUpClass(cls):
        cls.s = Server("--idle-timeout", str(cls.IDLE), "--max-connections", "256")

    @classmethod
    def tearDownClass(cls):
        assert cls.s.stop() == 0

    def test_slowloris(self):
        body = json.dumps(dict(REQ, max_tokens=4)).encode() + b" " * 400
        head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body))
        closed_at = {}
        lock = threading.Lock()

        def trickle(i):
            # A byte every 0.25 s until the server closes, for at most
            # idle_timeout + 13 s (scaled); then what the server sent.
            t0 = time.monotonic()
            s = connect(self.s.port)
            data = head + body
            if i % 2:  # body phase: the headers arrive at once
                s.sendall(head)
                data = body
            try:
                for k in range(len(data)):
                    s.send(data[k:k + 1])
                    time.sleep(0.25)
                    if time.monotonic() - t0 > self.IDLE + scaled(13):
                        break
            except OSError:
                pass
            # Closed by the server: EOF or a reset, never data.
            try:
                s.settimeout(scaled(3))
                got = s.recv(100)
            except OSError:
                got = b""
            with lock:
                closed_at[i] = (time.monotonic() - t0, got)
            s.close()

        lat = []

        def normal_requests():
            time.sleep(0.5)  # the slowloris connections are open
            for _ in range(10):
                t0 = time.monotonic()
                st, _, j, _ = self.s.post("/v1/completions", REQ)
                lat.append(time.monotonic() - t0)
                self.assertEqual(st, 200)
                time.sleep(0.1)

        run_threads([lambda i=i: trickle(i) for i in range(50)] + [normal_requests],
                    "50 slowloris connections to be closed", self.IDLE + 60)
        self.assertEqual(len(closed_at), 50)
        worst = max(v[0] for v in closed_at.values())
        print("\nslowloris: 50 closed after %.1f s at most (idle_timeout %d); normal requests meanwhile: max %.0f ms"
              % (worst, self.IDLE, 1e3 * max(lat)))
        self.assertLess(max(lat), self.IDLE / 2, lat)
        self.assertLess(worst, self.IDLE + scaled(3), closed_at)
        self.assertTrue(all(v[1] == b"" for v in closed_at.values()), closed_at)
        m = self.s.metrics()
        self.assertGreaterEqual(m.get('orthoserve_http_requests_total{endpoint="completions",status="408"}', 0), 25)
        self.assertEqual(self.s.request("GET", "/health")[0], 200)


class AbandonedRequestTest(unittest.TestCase):
    """Clients that send part of a request and close at once (the FIN rides
    with the data) are released within a sweep, not after idle_timeout:
    libmicrohttpd 0.9.75 in epoll mode misses that end of stream (see
    server/http.c, http_sweep). Before the sweep checked for it, each such
    socket stayed in CLOSE_WAIT for idle_timeout, and one whose headers were
    in held a request slot, so a few dozen of them kept every other client
    out (503) for a minute."""

    def test_partial_request_then_close(self):
        idle = scaled(60)  # the release must come well before it
        s = Server("--idle-timeout", str(idle), "--max-connections", "16")
        try:
            pid = s.proc.pid
            wait_for(lambda: not connection_sockets(pid), "the health check's connection to be gone")
            base = fd_count(pid)
            body = json.dumps(REQ).encode()
            head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(body))
            n = 40
            t0 = time.time()
            for i in range(n):
                k = connect(s.port)
                # Even: headers and half the body (a request in progress); odd: half the headers.
                k.sendall(head + body[:len(body) // 2] if i % 2 == 0 else head[:len(head) // 2])
                k.close()

            def released():
                return fd_count(pid) == base and s.metrics().get("orthoserve_http_requests_active") == 1

            wait_for(released, lambda: "the %d partial requests' connections and slots to be released "
                     "(well before idle_timeout %g s): server fds %s (%d before), metrics %s" % (
                         n, idle, os.listdir("/proc/%d/fd" % pid), base,
                         {k: v for k, v in s.metrics().items() if "http_requests" in k}), 20)
            dt = time.time() - t0
            # Served, not refused (503) for want of a request slot.
            st, _, j, _ = s.post("/v1/completions", REQ)
            self.assertEqual(st, 200, j)
            # The ones whose headers were in (those not refused at max_connections) end as 499.
            self.assertGreater(s.metrics().get('orthoserve_http_requests_total{endpoint="completions",status="499"}', 0), 0)
            print("\n%d partial requests closed by their clients: all released %.2f s after the first "
                  "(idle_timeout %g)" % (n, dt, idle))
        finally:
            stop_ok(self, s)


class ConnectionFloodTest(unittest.TestCase):
    """1000 idle connections do not starve active ones; beyond
    max_connections connections are refused cleanly."""

    def open_idle(self, port, n):
        return [connect(port) for _ in range(n)]

    def timed_request(self, s):
        t0 = time.monotonic()
        st, _, _, _ = s.post("/v1/completions", REQ)
        return st, time.monotonic() - t0

    def test_1000_idle_connections(self):
        raise_nofile(4096)
        # The server starts with a soft limit too low for max_connections and raises it itself.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        try:
            s = Server("--max-connections", "1100", "--idle-timeout", "60", "--max-connections-per-ip", "1100")
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        socks = []
        try:
            with open("/proc/%d/limits" % s.proc.pid) as f:
                lim = [l for l in f if l.startswith("Max open files")][0].split()
            self.assertGreaterEqual(int(lim[3]), 1200, lim)
            self.assertNotIn("open-file limit", s.log_text())
            base = fd_count(s.proc.pid)
            socks = self.open_idle(s.port, 1000)
            wait_for(lambda: fd_count(s.proc.pid) >= base + 995,
                     lambda: "the server to hold the 1000 connections: %d fds, %d before" % (fd_count(s.proc.pid), base))
            lat = []
            for _ in range(10):
                st, dt = self.timed_request(s)
                self.assertEqual(st, 200)
                lat.append(dt)
            st, _, raw = s.request("POST", "/v1/completions", dict(REQ, stream=True))
            self.assertEqual(st, 200)
            print("\n1000 idle connections: server fds %d -> %d; 10 requests meanwhile: max %.0f ms"
                  % (base, fd_count(s.proc.pid), 1e3 * max(lat)))
            self.assertLess(max(lat), scaled(1.0), lat)
            for k in socks:
                k.close()
            socks = []
            wait_for(lambda: fd_count(s.proc.pid) <= base + 2,
                     lambda: "the closed connections' fds to be released: %d vs %d" % (fd_count(s.proc.pid), base))
        finally:
            for k in socks:
                k.close()
            stop_ok(self, s)

    def test_beyond_max_connections_idle_ones_evicted(self):
        # Past max_connections the connection idle the longest is closed, so
        # an idle flood cannot keep an active client out.
        raise_nofile(2048)
        s = Server("--max-connections", "32", "--idle-timeout", "60")
        socks = []
        try:
            base = fd_count(s.proc.pid)
            socks = self.open_idle(s.port, 300)
            closed = set()

            def n_closed():
                # An idle connection the server closed reads as EOF or a reset.
                p = select.poll()
                for k in socks:
                    if k not in closed:
                        p.register(k, select.POLLIN)
                for fd, _ in p.poll(0):
                    k = next(x for x in socks if x.fileno() == fd)
                    try:
                        if k.recv(1) == b"":
                            closed.add(k)
                    except OSError:
                        closed.add(k)
                return len(closed) >= 300 - 32

            wait_for(n_closed, lambda: "the server to close the idle connections past 32: %d closed" % len(closed))
            self.assertLessEqual(fd_count(s.proc.pid), base + 32 + 2)
            lat = []
            for _ in range(5):
                st, dt = self.timed_request(s)
                self.assertEqual(st, 200)
                lat.append(dt)
            self.assertLess(max(lat), scaled(1.0), lat)
            self.assertIn("max_connections (32) reached", s.log_text())
            print("\nflood of 300 idle connections past max_connections 32: %d closed at once; requests "
                  "meanwhile: max %.0f ms" % (len(closed), 1e3 * max(lat)))
        finally:
            for k in socks:
                k.close()
            stop_ok(self, s)

    def test_beyond_max_connections_busy_refused_503(self):
        # When every connection holds a request, a new one gets 503 at once.
        s = Server("--max-connections", "3", "-c", "4096")
        socks = []
        try:
            body = json.dumps({"prompt": "Once", "max_tokens": 3000, "ignore_eos": True, "stream": True}).encode()
            for _ in range(3):
                k = connect(s.port)
                k.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n" % len(body) + body)
                self.assertIn(b"200 OK", k.recv(4096))
                socks.append(k)
            t0 = time.monotonic()
            st, h, _ = s.request("GET", "/health")
            self.assertEqual(st, 503)
            self.assertEqual(h.get("retry-after"), "1")
            self.assertLess(time.monotonic() - t0, scaled(1.0), "refused at once, not queued")
        finally:
            for k in socks:
                k.close()
        try:
            wait_for(lambda: s.request("GET", "/health")[0] == 200, "/health 200 once the 3 streams are gone")
        finally:
            stop_ok(self, s)


if __name__ == "__main__":
    unittest.main(verbosity=2)
