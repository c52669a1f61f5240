#!/usr/bin/env python3
"""Security defects of configuration, deployment and loading (issue 15):
D2 the shipped probes are answered with API keys on; D5 an empty key list
is refused; D4 the prefix cache is partitioned per API key (and cache_salt);
D12 a generation failure is a 500; D13 a model path that is not a regular
file is refused, and a signal during a load stops the server at once.
Talks only to 127.0.0.1; every wait is bounded."""
import json
import os
import re
import struct
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2eutil import BIN, MODEL, Server, parse_sse, scaled  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
DOCKER = os.path.join(ROOT, "docker")


def run_serve(args, env=None, timeout=20):
    """orthoserve serve ARGS to completion (it must exit by itself within
    timeout seconds, scaled for slow builds)."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("ORTHOSERVE_")}
    e.update(env or {})
    return subprocess.run([BIN, "serve", "--host", "127.0.0.1", "--port", "0"] + args, env=e,
                          capture_output=True, text=True, timeout=scaled(timeout))


def keys_file(*keys):
    f = tempfile.NamedTemporaryFile("w", prefix="orthoserve-keys-", delete=False)
    f.write("".join(k + "\n" for k in keys))
    f.close()
    return f.name


def auth(key):
    return {"Authorization": "Bearer " + key}


class EmptyKeyListTest(unittest.TestCase):
    """D5: an explicitly empty key list stops the server instead of turning
    authentication off; the log says whether authentication is on."""

    def test_empty_lists_are_refused(self):
        cases = ((["--api-key", ""], {}), (["--api-key", " , "], {}), ([], {"ORTHOSERVE_API_KEYS": ""}),
                 ([], {"ORTHOSERVE_API_KEYS": " "}))
        for args, env in cases:
            out = run_serve(["-m", MODEL] + args, env)
            self.assertEqual(out.returncode, 2, (args, env, out.stderr))
            self.assertIn("an empty key list would turn authentication off", out.stderr, (args, env))
            self.assertNotIn("listening on", out.stderr)

    def test_start_line_says_whether_authentication_is_on(self):
        s = Server("--api-key", "k1,k2")
        try:
            self.assertIn("authentication: on (2 keys)", s.log_text())
            self.assertEqual(s.request("GET", "/v1/models")[0], 401)
        finally:
            s.stop()
        s = Server()
        try:
            self.assertIn("authentication: off", s.log_text())
        finally:
            s.stop()



class PrefixCacheTenancyTest(unittest.TestCase):
    """D4: the prefix cache is partitioned by API key (and cache_salt), so
    usage.prompt_tokens_details.cached_tokens tells a key only about its own
    earlier prompts (REDTEAM's alice / mallory reproduction)."""

    SECRET = "The secret code is 4 7 1 9. Once upon a time"
    GUESS = "The secret code is 4 7 1 9"

    def cached(self, s, key, prompt, **extra):
        body = dict({"prompt": prompt, "max_tokens": 1}, **extra)
        st, _, j, raw = s.post("/v1/completions", body, headers=auth(key))
        self.assertEqual(st, 200, raw)
        return j["usage"]["prompt_tokens_details"]["cached_tokens"]

    def test_keys_do_not_share_prefixes(self):
        s = Server("--api-key", "alice,mallory")
        try:
            self.assertEqual(self.cached(s, "alice", self.SECRET), 0)
            self.assertEqual(self.cached(s, "mallory", self.GUESS), 0, "mallory reads alice's prefix")
            self.assertGreater(self.cached(s, "alice", self.GUESS), 5, "a key still reuses its own prefixes")
            # cache_salt partitions a key's cache further.
            self.assertEqual(self.cached(s, "alice", self.GUESS, cache_salt="user-1"), 0)
            self.assertGreater(self.cached(s, "alice", self.GUESS, cache_salt="user-1"), 5)
            self.assertEqual(self.cached(s, "alice", self.GUESS, cache_salt="user-2"), 0)
            st, _, j, raw = s.post("/v1/completions", {"prompt": "Hi", "cache_salt": ""}, headers=auth("alice"))
            self.assertEqual((st, j["error"]["param"], j["error"]["code"]), (400, "cache_salt", "invalid_value"), raw)
        finally:
            s.stop()


def k8s_containers():
    """(file, container) for every container spec in docker/k8s/*.yaml."""
    import glob
    import yaml  # python3-yaml

    def walk(node, found):
        if isinstance(node, dict):
            for c in node.get("containers") or []:
                found.append(c)
            for v in node.values():
                walk(v, found)
        elif isinstance(node, list):
            for v in node:
                walk(v, found)
        return found

    out = []
    for path in sorted(glob.glob(os.path.join(DOCKER, "k8s", "*.yaml"))):
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                out += [(os.path.basename(path), c) for c in walk(doc, [])]
    return out


def expand_compose(v):
    """${NAME:-default} -> default (the variables are not set in the test)."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(v))


class ProbeTest(unittest.TestCase):
    """D2: start the server with each shipped deployment's settings (API
    keys on, the model and key file replaced by test ones) and send every
    probe exactly as the deployment sends it: each must get a 2xx."""

    def serve_with(self, env, args=()):
        env = dict(env)
        env["ORTHOSERVE_MODEL"] = MODEL
        env["ORTHOSERVE_THREADS"] = "1"
        env.pop("ORTHOSERVE_HOST", None)  # 127.0.0.1, port 0: Server's flags
        env.pop("ORTHOSERVE_PORT", None)
        self.keys = keys_file("probe-test-key")
        self.addCleanup(os.unlink, self.keys)
        env["ORTHOSERVE_API_KEYS_FILE"] = self.keys
        s = Server(*args, env=env)
        self.addCleanup(s.stop)
        self.assertEqual(s.request("GET", "/v1/models")[0], 401, "keys must be on for this test to mean anything")
        return s

    def check_probe(self, s, name, path, headers=None):
        st, _, body = s.request("GET", path, headers=headers or {}, timeout=10)
        self.assertTrue(200 <= st < 300, "%s probe GET %s -> %d %r" % (name, path, st, body[:200]))

    def test_kubernetes_probes(self):
        containers = k8s_containers()
        self.assertTrue(containers, "docker/k8s/*.yaml holds a container")
        n_probes = 0
        for name, c in containers:
            env = {e["name"]: str(e["value"]) for e in c.get("env", []) if "value" in e}
            self.assertIn("ORTHOSERVE_API_KEYS_FILE", env, name + ": the manifest turns keys on")
            s = self.serve_with(env, c.get("args", []))
            for p in ("startupProbe", "livenessProbe", "readinessProbe"):
                if p not in c:
                    continue
                g = c[p]["httpGet"]
                self.assertIn(g["port"], ("http", 8080))
                hdrs = {h["name"]: h["value"] for h in g.get("httpHeaders", [])}
                self.check_probe(s, "%s %s" % (name, p), g["path"], hdrs)
                n_probes += 1
            s.stop()
        self.assertGreaterEqual(n_probes, 3)

    def test_compose_and_dockerfile_healthcheck(self):
        import yaml
        with open(os.path.join(DOCKER, "compose.yaml")) as f:
            svc = yaml.safe_load(f)["services"]["orthoserve"]
        env = {k: expand_compose(v) for k, v in svc.get("environment", {}).items()}
        with open(os.path.join(DOCKER, "Dockerfile")) as f:
            text = f.read().replace("\\\n", " ")
        for line in text.splitlines():  # ENV A=1 B=2 (the image's settings, under compose's)
            if line.startswith("ENV "):
                for kv in line[4:].split():
                    k, _, v = kv.partition("=")
                    env.setdefault(k, v)
        checks = re.findall(r"^HEALTHCHECK .*? CMD (.*)$", text, re.M)
        self.assertEqual(len(checks), 1)
        s = self.serve_with(env)  # compose's commented-out key file, turned on
        paths = re.findall(r"http://127\.0\.0\.1:\$\{ORTHOSERVE_PORT\}(/[a-z]+)", checks[0])
        self.assertEqual(len(paths), 1, checks[0])
        self.check_probe(s, "HEALTHCHECK", paths[0])
        if "healthcheck" in svc:
            for p in re.findall(r"http://[^/\"' ]+(/[a-z]+)", str(svc["healthcheck"])):
                self.check_probe(s, "compose healthcheck", p)



def gguf_tensors(path):
    """{name: (type, dims, absolute offset)} of a GGUF file."""
    with open(path, "rb") as f:
        b = f.read()
    pos = 0
    def rd(fmt):
        nonlocal pos
        v = struct.unpack_from("<" + fmt, b, pos)
        pos += struct.calcsize("<" + fmt)
        return v[0]
    def rstr():
        nonlocal pos
        n = rd("Q"); s = b[pos:pos + n].decode(); pos += n; return s
    scal = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
    def rval(t):
        if t == 8: return rstr()
        if t == 9:
            et = rd("I"); n = rd("Q"); return [rval(et) for _ in range(n)]
        return rd(scal[t])
    assert b[:4] == b"GGUF"
    pos = 4
    rd("I"); nt = rd("Q"); nkv = rd("Q")
    kv = {}
    for _ in range(nkv):
        k = rstr(); kv[k] = rval(rd("I"))
    infos = []
    for _ in range(nt):
        name = rstr(); nd = rd("I"); dims = [rd("Q") for _ in range(nd)]; t = rd("I"); off = rd("Q")
        infos.append((name, t, dims, off))
    al = kv.get("general.alignment", 32)
    start = (pos + al - 1) // al * al
    return kv, {n: (t, d, start + o) for n, t, d, o in infos}


class CorruptModelTest(unittest.TestCase):
    """D12: corrupt weights are the server's fault, never the client's. A
    model whose logits are all NaN is refused at load; one that passes the
    load check (only some embedding rows NaN) and then fails a generation
    answers 500 server_error (streamed: an error record saying so)."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="orthoserve-corrupt-")
        self.addCleanup(shutil.rmtree, self.dir)

    def corrupt_copy(self, name, spans):
        """A copy of the test model with each (offset, length) span 0xff (NaN as F32)."""
        path = os.path.join(self.dir, name)
        shutil.copyfile(MODEL, path)
        with open(path, "r+b") as f:
            for off, n in spans:
                f.seek(off)
                f.write(b"\xff" * n)
        return path

    def test_nan_weights_are_refused_at_load(self):
        n = os.path.getsize(MODEL)
        path = self.corrupt_copy("nan.gguf", [(n // 2, n - n // 2)])  # REDTEAM's corruption
        try:
            out = run_serve(["-m", path], timeout=20)
        except subprocess.TimeoutExpired:
            self.fail("the server served a model whose logits are NaN")
        self.assertEqual(out.returncode, 1, out.stderr)
        self.assertIn("logits are not finite", out.stderr)
        self.assertIn("weights are corrupt", out.stderr)

    def test_generation_failure_is_500(self):
        kv, tensors = gguf_tensors(MODEL)
        t, (n_embd, n_vocab), off = tensors["token_embd.weight"]
        self.assertEqual(t, 0, "F32 embeddings")
        bos = kv["tokenizer.ggml.bos_token_id"]
        self.assertLess(bos, 2)
        # Rows 2.. NaN: BOS (the load check's token) stays finite, any text is NaN.
        path = self.corrupt_copy("rows.gguf", [(off + 2 * n_embd * 4, (n_vocab - 2) * n_embd * 4)])
        s = Server(model=path)
        try:
            body = {"prompt": "Once upon a time", "max_tokens": 4}
            st, _, j, raw = s.post("/v1/completions", body)
            self.assertEqual(st, 500, raw)
            self.assertEqual(j["error"]["type"], "server_error", raw)
            self.assertEqual(j["error"]["code"], "generation_failed", raw)
            st, _, raw = s.request("POST", "/v1/chat/completions",
                                   {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "stream": True})
            self.assertEqual(st, 200)
            err = [json.loads(r) for r in parse_sse(raw)[:-1] if r.startswith('{"error"')]
            self.assertEqual(len(err), 1, raw)
            self.assertEqual((err[0]["error"]["type"], err[0]["error"]["code"]), ("server_error", "generation_failed"))
            # The server stays up and says so.
            self.assertEqual(s.request("GET", "/health")[0], 200)
        finally:
            s.stop()


class ModelPathTest(unittest.TestCase):
    """D13: a model path whose open() would block: a FIFO is refused at
    once; a signal while open() blocks (a file another process holds a
    lease on) stops the server at once instead of after the load."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="orthoserve-modelpath-")
        self.addCleanup(shutil.rmtree, self.dir)

    def test_fifo_is_refused(self):
        fifo = os.path.join(self.dir, "m.gguf")
        os.mkfifo(fifo)
        t = time.time()
        try:
            out = run_serve(["-m", fifo], timeout=10)
        except subprocess.TimeoutExpired:
            self.fail("a FIFO model path hangs start-up")
        self.assertLess(time.time() - t, scaled(10))
        self.assertEqual(out.returncode, 1, out.stderr)
        self.assertIn("is not a regular file (it is a FIFO)", out.stderr)
        for path, kind in ((self.dir, "directory"), ("/dev/null", "character device")):
            out = run_serve(["-m", path], timeout=10)
            self.assertEqual(out.returncode, 1, out.stderr)
            self.assertIn("(it is a %s)" % kind, out.stderr)

    def test_signal_while_open_blocks(self):
        import fcntl
        path = os.path.join(self.dir, "m.gguf")
        shutil.copyfile(MODEL, path)
        # A write lease: any other open() of the file blocks until we let go
        # (or the kernel's lease-break-time, 45 s by default, passes).
        old = signal.signal(signal.SIGIO, signal.SIG_IGN)  # the lease-break notice
        self.addCleanup(signal.signal, signal.SIGIO, old)
        fd = os.open(path, os.O_RDONLY)
        self.addCleanup(os.close, fd)
        try:
            fcntl.fcntl(fd, 1024, fcntl.F_WRLCK)  # F_SETLEASE
        except OSError as e:
            self.skipTest("no file leases here: %s" % e)
        for sig in (signal.SIGTERM, signal.SIGINT):
            s = Server(model=path, wait_ready=False)
            try:
                time.sleep(scaled(0.5))  # the loader reaches the blocked open()
                self.assertEqual(s.request("GET", "/health", timeout=5)[0], 503, "still loading")
                t = time.time()
                s.signal(sig)
                try:
                    rc = s.proc.wait(scaled(5))
                except subprocess.TimeoutExpired:
                    self.fail("%s during the load was not honoured within %g s: %s"
                              % (sig.name, scaled(5), s.log_text()))
                self.assertLess(time.time() - t, scaled(5))
                self.assertEqual(rc, 0)
                self.assertIn("exiting now", s.log_text())
            finally:
                s.stop()


if __name__ == "__main__":
    unittest.main(verbosity=2)
