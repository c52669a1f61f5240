"""Helpers for orthoserve's end-to-end tests: start the real binary on
127.0.0.1 (port chosen by the OS, read back from its log), talk HTTP with
http.client / raw sockets, parse SSE, validate bodies against openapi.yaml.
Python 3 standard library, plus PyYAML and jsonschema for the contract."""
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time

BIN = os.environ.get("ORTHOSERVE_BIN", "")
TESTDATA = os.environ.get("ORTHOSERVE_TESTDATA", "")
OPENAPI = os.environ.get("ORTHOSERVE_OPENAPI", "")
MODEL = os.path.join(TESTDATA, "models", "stories260K.gguf")
MODEL_ID = "stories260K.gguf"


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
        deadline = time.time() + 20
        while time.time() < deadline and self.port is None:
            m = re.search(r"listening on http://[^:]+:(\d+)", self.log_text())
            if m:
                self.port = int(m.group(1))
                break
            if self.proc.poll() is not None:
                raise RuntimeError("server exited: " + self.log_text())
            time.sleep(0.02)
        if self.port is None:
            self.stop()
            raise RuntimeError("server did not start: " + self.log_text())
        if wait_ready:
            self.wait_health()

    def log_text(self):
        with open(self.log.name, "r", errors="replace") as f:
            return f.read()

    def wait_health(self, timeout=20):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                st, _, _ = self.request("GET", "/health")
                if st == 200:
                    return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError("server never became healthy: " + self.log_text())

    def conn(self, timeout=30):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=None, timeout=30):
        """-> (status, headers dict (lower-case keys), body bytes)"""
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

    def post(self, path, obj, headers=None, timeout=60):
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

    def stop(self, timeout=20):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        try:
            if os.environ.get("E2E_KEEP_LOGS"): print(self.log_text())
            os.unlink(self.log.name)
        except OSError:
            pass
        return self.proc.returncode


def wait_for(fn, timeout=10, step=0.02):
    """Poll fn until it returns something truthy or timeout seconds pass; its last value."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(step)
    return fn()


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


def stream_post(server, path, obj, headers=None, timeout=60):
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
