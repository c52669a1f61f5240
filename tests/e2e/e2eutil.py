"""Helpers for orthoserve's end-to-end tests: start the real binary on
127.0.0.1 (port chosen by the OS, read back from its log), talk HTTP with
http.client / raw sockets, parse SSE, validate bodies against openapi.yaml.
Python 3 standard library, plus PyYAML and jsonschema for the contract.

Time: a test never assumes a fast machine. Every wait is a deadline in
seconds (Deadline, wait_for, read_until, run_threads, retry_busy), never a
count of quick retries, and fails saying what it waited for and how long.
The seconds the tests give here are what a fast machine needs with a wide
margin; they are multiplied by TIME_SCALE: $E2E_TIME_SCALE if set, else
chosen from the server binary (ThreadSanitizer and AddressSanitizer builds
run several times slower). A generous deadline costs nothing when the
machine is fast: every wait ends as soon as what it waits for is there.
tools/slow-ci.sh runs a suite on one CPU shared with busy loops to check it."""
import http.client
import json
import mmap
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time

BIN = os.environ.get("ORTHOSERVE_BIN", "")
TESTDATA = os.environ.get("ORTHOSERVE_TESTDATA", "")
OPENAPI = os.environ.get("ORTHOSERVE_OPENAPI", "")
MODEL = os.path.join(TESTDATA, "models", "stories260K.gguf")
MODEL_ID = "stories260K.gguf"

# How much slower than a plain build each sanitizer runs, at most (the
# runtime's init symbol the binary refers to marks the build).
SANITIZER_SLOWDOWN = ((b"__tsan_init", 10.0), (b"__asan_init", 4.0), (b"__ubsan_handle_", 2.0))


def _time_scale():
    env = os.environ.get("E2E_TIME_SCALE")
    if env:
        v = float(env)
        if not 0 < v < 1000:
            raise ValueError("E2E_TIME_SCALE=%r: want a factor between 0 and 1000" % env)
        return v
    try:
        with open(BIN, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return max([k for sym, k in SANITIZER_SLOWDOWN if m.find(sym) >= 0] or [1.0])
    except (OSError, ValueError):
        return 1.0


TIME_SCALE = _time_scale()


def scaled(seconds):
    """A fast machine's generous seconds -> the seconds allowed here."""
    return seconds * TIME_SCALE


class Deadline:
    """A wait bounded in time: `seconds` (scaled) from now, for `what` (a
    string, or a function giving one, for the failure message)."""

    def __init__(self, seconds, what):
        self.base, self.what = seconds, what
        self.t0 = time.monotonic()
        self.end = self.t0 + scaled(seconds)

    def left(self):
        return max(0.0, self.end - time.monotonic())

    def expired(self):
        return time.monotonic() >= self.end

    def sleep(self, seconds):
        time.sleep(max(0.0, min(seconds, self.left())))

    def fail(self, detail=""):
        what = self.what() if callable(self.what) else self.what
        raise AssertionError("gave up after %.1f s (%g s x time scale %g) waiting for %s%s"
                             % (time.monotonic() - self.t0, self.base, TIME_SCALE, what,
                                "; " + detail if detail else ""))


def wait_for(fn, what, timeout=30):
    """Poll fn until it returns something truthy, and return that. Polls
    every 10 ms at first, backing off to 0.25 s (a slow server is not kept
    busy answering); fails after timeout seconds (scaled) with what and fn's
    last value."""
    d = Deadline(timeout, what)
    step = 0.01
    while True:
        v = fn()
        if v:
            return v
        if d.expired():
            d.fail("last value %r" % (v,))
        d.sleep(step)
        step = min(step * 1.5, 0.25)


def retry_busy(send, what, timeout=120, on_refused=None):
    """send() -> (status, headers, ...) until the status is neither 429 nor
    503, sleeping what each refusal's Retry-After says (1 s if it has none,
    capped so the deadline holds). on_refused(result) checks each refusal.
    Fails after timeout seconds (scaled). -> (the last result, refusals)."""
    d = Deadline(timeout, what)
    refusals = 0
    while True:
        r = send()
        if r[0] not in (429, 503):
            return r, refusals
        refusals += 1
        if on_refused:
            on_refused(r)
        if d.expired():
            d.fail("still %d after %d tries" % (r[0], refusals))
        d.sleep(max(0.05, float(r[1].get("retry-after", 1))))


def run_threads(fns, what, timeout=120):
    """Run each fn on its own thread; all must end within timeout seconds
    (scaled). The first exception a thread raised is raised here."""
    errors = []

    def wrap(fn):
        try:
            fn()
        except BaseException as e:  # noqa: B902 (re-raised below)
            errors.append(e)

    th = [threading.Thread(target=wrap, args=(f,), daemon=True) for f in fns]
    d = Deadline(timeout, what)
    for t in th:
        t.start()
    for t in th:
        t.join(d.left())
    alive = sum(t.is_alive() for t in th)
    if alive:
        d.fail("%d of %d threads still running" % (alive, len(th)))
    if errors:
        raise errors[0]


def connect(port, timeout=60):
    """A TCP connection to 127.0.0.1:port whose blocking calls time out after
    timeout seconds (scaled)."""
    return socket.create_connection(("127.0.0.1", port), timeout=scaled(timeout))


def read_until(sock, marker, what, timeout=120, limit=1 << 24):
    """Read from sock until marker arrives (None: none does), the peer
    closes, or limit bytes: what was read. Fails if none of these happens
    within timeout seconds (scaled)."""
    d = Deadline(timeout, what)
    buf = b""
    while (marker is None or marker not in buf) and len(buf) < limit:
        if d.expired():
            d.fail("%d bytes read so far" % len(buf))
        sock.settimeout(max(0.01, d.left()))
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        if not chunk:
            break
        buf += chunk
    return buf


def fd_count(pid):
    """How many file descriptors process pid holds."""
    return len(os.listdir("/proc/%d/fd" % pid))


def tcp_states():
    """inode -> (local, remote, state) for every TCP socket (/proc/net/tcp{,6})."""
    out = {}
    for f in ("/proc/net/tcp", "/proc/net/tcp6"):
        if os.path.exists(f):
            for line in open(f).read().splitlines()[1:]:
                t = line.split()
                out[t[9]] = (t[1], t[2], "state " + t[3])
    return out


def connection_sockets(pid):
    """Process pid's TCP sockets other than listening ones (state 0A)."""
    st = tcp_states()
    out = []
    for d in os.listdir("/proc/%d/fd" % pid):
        try:
            link = os.readlink("/proc/%d/fd/%s" % (pid, d))
        except OSError:
            continue
        if link.startswith("socket:["):
            ino = link[8:-1]
            if ino in st and st[ino][2] != "state 0A":
                out.append((d,) + st[ino])
    return out


class Server:
    """The orthoserve binary as a child process ('serve' with args)."""

    def __init__(self, *args, env=None, wait_ready=True, model=MODEL):
        self.log = tempfile.NamedTemporaryFile(prefix="orthoserve-e2e-", suffix=".log", delete=False)
        cmd = [BIN, "serve", "-m", model, "--host", "127.0.0.1", "--port", "0"] + list(args)
        e = {k: v for k, v in os.environ.items() if not k.startswith("ORTHOSERVE_")}
        if env:
            e.update(env)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log, env=e)
        self.port = None
        self.final_log = None

        def listening():
            if self.proc.poll() is not None:
                raise RuntimeError("server exited: " + self.log_text())
            m = re.search(r"listening on http://[^:]+:(\d+)", self.log_text())
            return m and int(m.group(1))

        try:
            self.port = wait_for(listening, lambda: "'listening on' in the server log: " + self.log_text(), 60)
        except AssertionError:
            self.stop()
            raise
        if wait_ready:
            self.wait_health()

    def log_text(self):
        with open(self.log.name, "r", errors="replace") as f:
            return f.read()

    def wait_health(self, timeout=60):
        def healthy():
            if self.proc.poll() is not None:
                raise RuntimeError("server exited %d: %s" % (self.proc.returncode, self.log_text()))
            try:
                return self.request("GET", "/health", timeout=10)[0] == 200
            except OSError:
                return False
        wait_for(healthy, lambda: "GET /health 200; server log: " + self.log_text(), timeout)

    def conn(self, timeout=60):
        """A keep-alive connection; timeout in seconds, scaled."""
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=scaled(timeout))

    def request(self, method, path, body=None, headers=None, timeout=120):
        """-> (status, headers dict (lower-case keys), body bytes). timeout
        (seconds, scaled) bounds each blocking socket call."""
        c = self.conn(timeout)
        h = {} if headers is None else dict(headers)
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        elif isinstance(body, str):
            body = body.encode()
        try:
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            data = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        finally:
            c.close()

    def post(self, path, obj, headers=None, timeout=120):
        st, h, data = self.request("POST", path, obj, headers, timeout)
        try:
            j = json.loads(data) if data else None
        except ValueError:
            j = None
        return st, h, j, data

    def get_json(self, path, headers=None):
        st, h, data = self.request("GET", path, None, headers)
        return st, json.loads(data) if data and h.get("content-type", "").startswith("application/json") else data

    def metrics(self):
        st, _, data = self.request("GET", "/metrics")
        assert st == 200
        out = {}
        for line in data.decode().splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
        return out

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, timeout=60):
        """SIGTERM, then SIGKILL if it has not exited within timeout seconds
        (scaled): its exit code. The whole log is kept in final_log."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(scaled(timeout))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.final_log is None:
            try:
                self.final_log = self.log_text()
                if os.environ.get("E2E_KEEP_LOGS"):
                    print(self.final_log)
                os.unlink(self.log.name)
            except OSError:
                pass
        return self.proc.returncode


def parse_sse(raw):
    """Split an SSE body into records; asserts the exact framing
    'data: <payload>\\n\\n' ... 'data: [DONE]\\n\\n'. -> list of payload strings."""
    text = raw.decode("utf-8")
    assert text.endswith("data: [DONE]\n\n"), "stream must end with data: [DONE]: %r" % text[-80:]
    records = text.split("\n\n")
    assert records[-1] == "", "trailing bytes after the last record"
    out = []
    for rec in records[:-1]:
        assert rec.startswith("data: "), "record without 'data: ': %r" % rec[:80]
        assert "\n" not in rec, "multi-line record: %r" % rec[:80]
        out.append(rec[6:])
    assert out[-1] == "[DONE]" and "[DONE]" not in out[:-1]
    return out


def stream_post(server, path, obj, headers=None, timeout=120):
    st, h, data = server.request("POST", path, obj, headers, timeout)
    return st, h, data


class OpenAPI:
    """Validate JSON bodies against openapi.yaml's components."""

    def __init__(self, path=OPENAPI):
        import yaml  # python3-yaml
        import jsonschema  # python3-jsonschema
        with open(path) as f:
            self.spec = yaml.safe_load(f)
        self.js = jsonschema

    def validate(self, obj, schema_name):
        schema = {"$ref": "#/components/schemas/" + schema_name, "components": self.spec["components"]}
        self.js.Draft202012Validator(schema).validate(obj)

    def response_schema(self, path, method, status, ctype="application/json"):
        p = self.spec["paths"][path][method.lower()]
        r = p["responses"][str(status)]
        if "$ref" in r:
            r = self.spec["components"]["responses"][r["$ref"].rsplit("/", 1)[1]]
        return r["content"][ctype]["schema"]["$ref"].rsplit("/", 1)[1]

    def check(self, obj, path, method, status, ctype="application/json"):
        self.validate(obj, self.response_schema(path, method, status, ctype))


def load_golden():
    with open(os.path.join(TESTDATA, "golden", "stories260K.json")) as f:
        return json.load(f)
