"""serve configuration: --help, precedence (defaults < file < env < flags),
unknown keys and bad values are start-up errors naming the key; every
start-up error (config/README.md's list) is run here."""
import json
import os
import re
import socket
import subprocess
import tempfile
import unittest

from e2eutil import BIN, MODEL, MODEL_ID, Server, scaled

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def run(args, env=None):
    e = {k: v for k, v in os.environ.items() if not k.startswith("ORTHOSERVE_")}
    e.update(env or {})
    return subprocess.run([BIN, "serve"] + args, capture_output=True, text=True, env=e, timeout=scaled(60))


def config_file(obj):
    f = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
    json.dump(obj, f)
    f.close()
    return f.name


class ConfigTest(unittest.TestCase):
    def test_help_lists_flags(self):
        out = run(["--help"])
        self.assertEqual(out.returncode, 0)
        for flag in ("-m, --model", "--host", "--port", "-t, --threads", "-c, --ctx-size", "--alias", "--api-key",
                     "--config", "--max-body-bytes", "--max-connections", "--max-queue", "--max-tokens", "--timeout",
                     "--idle-timeout", "--cors-origin", "--chat-template", "--drain-timeout"):
            self.assertIn(flag, out.stdout)

    def test_shipped_config_is_valid(self):
        shipped = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "config", "orthoserve.json")
        with open(shipped) as f:
            keys = set(json.load(f))
        out = run(["--help"])
        for k in keys:
            self.assertIn("[%s]" % k, out.stdout)

    def test_unknown_key(self):
        p = config_file({"port": 1, "prot": 2})
        out = run(["-m", MODEL, "--config", p])
        os.unlink(p)
        self.assertEqual(out.returncode, 2)
        self.assertIn("'prot'", out.stderr)

    def test_bad_values_name_the_key(self):
        for obj, key in (({"port": "x"}, "port"), ({"max_queue": -1}, "max_queue"), ({"api_keys": [1]}, "api_keys"),
                         ({"log_requests": "yes"}, "log_requests")):
            p = config_file(obj)
            out = run(["-m", MODEL, "--config", p])
            os.unlink(p)
            self.assertEqual(out.returncode, 2, obj)
            self.assertIn("'%s'" % key, out.stderr)
        out = run(["-m", MODEL], {"ORTHOSERVE_PORT": "banana"})
        self.assertEqual(out.returncode, 2)
        self.assertIn("ORTHOSERVE_PORT", out.stderr)
        out = run(["-m", MODEL, "--threads", "0"])
        self.assertEqual(out.returncode, 2)
        self.assertIn("threads", out.stderr)
        out = run([])
        self.assertEqual(out.returncode, 2)

    def test_precedence(self):
        p = config_file({"alias": "from-file", "max_tokens": 7})
        # file < env
        s = Server("--config", p, env={"ORTHOSERVE_ALIAS": "from-env"})
        try:
            st, j = s.get_json("/v1/models")
            self.assertEqual(j["data"][0]["id"], "from-env")
            st, _, j, _ = s.post("/v1/completions", {"prompt": "Hi", "max_tokens": 8})
            self.assertEqual(st, 400)  # max_tokens 7 from the file
        finally:
            s.stop()
        # env < flag
        s = Server("--config", p, "--alias", "from-flag", env={"ORTHOSERVE_ALIAS": "from-env"})
        try:
            st, j = s.get_json("/v1/models")
            self.assertEqual(j["data"][0]["id"], "from-flag")
        finally:
            s.stop()
        os.unlink(p)
        s = Server()
        try:
            st, j = s.get_json("/v1/models")
            self.assertEqual(j["data"][0]["id"], MODEL_ID)
        finally:
            s.stop()

    def test_top_level_help_lists_every_flag_with_default(self):
        top = subprocess.run([BIN, "--help"], capture_output=True, text=True, timeout=scaled(60))
        self.assertEqual(top.returncode, 0)
        serve = run(["--help"]).stdout
        keys = re.findall(r"^ .*\[([a-z_]+)\]$", serve, re.M)
        self.assertGreaterEqual(len(keys), 30)
        for line in serve.splitlines():
            m = re.search(r"\[([a-z_]+)\]$", line)
            if not m or not line.startswith(" "):
                continue
            self.assertIn(line, top.stdout)  # the top-level help includes serve's
            self.assertRegex(line, r"\(default |default: |\(required\)", line)
        with open(os.path.join(ROOT, "config", "orthoserve.json")) as f:
            shipped = json.load(f)
        self.assertEqual(sorted(shipped), sorted(keys), "config/orthoserve.json names every key")
        with open(os.path.join(ROOT, "config", "README.md")) as f:
            readme = f.read()
        for k in keys:
            self.assertIn("| `%s` |" % k, readme, "config/README.md documents " + k)

    def test_shipped_config_starts(self):
        s = Server("--config", os.path.join(ROOT, "config", "orthoserve.json"))
        try:
            st, j = s.get_json("/v1/models")
            self.assertEqual((st, j["data"][0]["id"]), (200, MODEL_ID))
        finally:
            self.assertEqual(s.stop(), 0)

    def expect_error(self, args, env=None, rc=2, says=()):
        out = run(args, env)
        self.assertEqual(out.returncode, rc, (args, env, out.stderr))
        for frag in says:
            self.assertIn(frag, out.stderr, (args, env))
        return out

    def test_every_startup_error(self):
        tmp = tempfile.mkdtemp()
        path = lambda name, text: (open(os.path.join(tmp, name), "w").write(text), os.path.join(tmp, name))[1]
        m = ["-m", MODEL]
        # The file itself.
        self.expect_error(m + ["--config", os.path.join(tmp, "missing.json")], says=["missing.json"])
        self.expect_error(m, {"ORTHOSERVE_CONFIG": os.path.join(tmp, "missing.json")}, says=["missing.json"])
        self.expect_error(m + ["--config", path("bad.json", "{\"port\": ")], says=["bad.json", "line"])
        self.expect_error(m + ["--config", path("arr.json", "[1]")], says=["expected a JSON object"])
        self.expect_error(m + ["--config", path("dup.json", '{"port": 1, "port": 2}')], says=["dup.json"])
        self.expect_error(m + ["--config", path("unk.json", '{"log_levle": "info"}')], says=["unknown key 'log_levle'"])
        # Wrong types and ranges, file.
        for obj, key in (({"host": 5}, "host"), ({"port": "x"}, "port"), ({"port": 70000}, "port"),
                         ({"threads": 0}, "threads"), ({"request_timeout": "x"}, "request_timeout"),
                         ({"request_timeout": 0}, "request_timeout"), ({"verbose": 1}, "verbose"),
                         ({"cors_origins": {}}, "cors_origins"), ({"orthorank_sparsity": 0.95}, "orthorank_sparsity"),
                         ({"max_tokens": 1.5}, "max_tokens"), ({"log_format": ["json"]}, "log_format"),
                         ({"api_keys_file": False}, "api_keys_file"), ({"max_n": 0}, "max_n"),
                         ({"max_embedding_inputs": 0}, "max_embedding_inputs"), ({"max_prompts": 0}, "max_prompts")):
            self.expect_error(m + ["--config", config_file(obj)], says=["'%s'" % key])
        # Environment.
        for var, val in (("ORTHOSERVE_PORT", "banana"), ("ORTHOSERVE_THREADS", "0"),
                         ("ORTHOSERVE_LOG_REQUESTS", "maybe"), ("ORTHOSERVE_REQUEST_TIMEOUT", "-1"),
                         ("ORTHOSERVE_MAX_QUEUE", "1e3")):
            self.expect_error(m, {var: val}, says=[var])
        # Flags.
        self.expect_error(m + ["--threads", "0"], says=["--threads", "'threads'"])
        self.expect_error(m + ["--port", "x"], says=["--port", "'port'"])
        self.expect_error(m + ["--log-requests=maybe"], says=["'log_requests'"])
        self.expect_error(m + ["--timeout", "nan"], says=["'request_timeout'"])
        self.expect_error(m + ["--no-such-flag"], says=["--help"])
        self.expect_error(m + ["stray"], says=["unexpected argument 'stray'"])
        self.expect_error(m + ["--port"], says=["--port"])
        # Required and enumerated values.
        self.expect_error([], says=["'model'"])
        self.expect_error(["-m", ""], says=["'model'"])
        for flag, val, key in (("--orthorank-decode", "sometimes", "orthorank_decode"),
                               ("--orthorank-method", "magic", "orthorank_method"),
                               ("--log-format", "xml", "log_format"), ("--log-level", "loud", "log_level"),
                               ("--chat-template", "nope", "chat_template"), ("--pooling", "max", "pooling")):
            self.expect_error(m + [flag, val], says=["'%s'" % key, val])
        self.expect_error(m + ["--orthorank-sparsity", "0.3", "--orthorank-token-ratio", "1"],
                          says=["'orthorank_token_ratio'"])
        self.expect_error(m, {"ORTHOSERVE_LOG_FORMAT": "yaml"}, says=["'log_format'"])
        # The API keys file.
        self.expect_error(m + ["--api-keys-file", os.path.join(tmp, "nokeys")], says=["'api_keys_file'", "nokeys"])
        self.expect_error(m + ["--api-keys-file", path("empty.keys", "# only a comment\n\n   \n")],
                          says=["'api_keys_file'", "holds no key"])
        self.expect_error(m + ["--api-keys-file", tmp], says=["'api_keys_file'"])  # a directory
        # Start-up failures after the configuration: exit 1.
        self.expect_error(["-m", os.path.join(tmp, "no.gguf"), "--port", "0"], rc=1, says=["cannot load model"])
        self.expect_error(["-m", path("junk.gguf", "not a gguf file"), "--port", "0"], rc=1,
                          says=["cannot load model"])
        self.expect_error(m + ["--port", "0", "--orthorank-plan", path("plan.json", "{}")], rc=1,
                          says=["OrthoRank plan"])
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        try:
            self.expect_error(m + ["--host", "127.0.0.1", "--port", str(busy.getsockname()[1])], rc=1,
                              says=["cannot listen"])
        finally:
            busy.close()
        self.expect_error(m + ["--host", "no-such-host.invalid", "--port", "0"], rc=1, says=["no-such-host.invalid"])

    def test_precedence_every_kind(self):
        """defaults < file < environment < flags, for a number, a boolean, a
        list, a string; --config beats ORTHOSERVE_CONFIG; api_keys_file adds
        to api_keys."""
        f1 = config_file({"max_tokens": 5, "api_keys": ["file-key"], "log_requests": False, "alias": "a-file"})
        f2 = config_file({"max_tokens": 9, "alias": "b-file"})
        keys = tempfile.NamedTemporaryFile("w", suffix=".keys", delete=False)
        keys.write("# keys\n  keyfile-1  \n\nkeyfile-2\n")
        keys.close()
        cases = [
            # (args, env, want max_tokens, want alias, accepted keys, rejected keys, request lines logged)
            ([], {}, 4096, MODEL_ID, [None], [], True),
            (["--config", f1], {}, 5, "a-file", ["file-key"], [None, "x"], False),
            ([], {"ORTHOSERVE_CONFIG": f1}, 5, "a-file", ["file-key"], [None], False),
            (["--config", f2], {"ORTHOSERVE_CONFIG": f1}, 9, "b-file", [None], [], True),
            (["--config", f1], {"ORTHOSERVE_MAX_TOKENS": "6", "ORTHOSERVE_API_KEYS": "env-1,env-2",
                                "ORTHOSERVE_LOG_REQUESTS": "on"}, 6, "a-file", ["env-1", "env-2"], ["file-key"], True),
            (["--config", f1, "--max-tokens", "7", "--api-key", "flag-key", "--log-requests=off", "-a", "c-flag"],
             {"ORTHOSERVE_MAX_TOKENS": "6", "ORTHOSERVE_API_KEYS": "env-1", "ORTHOSERVE_LOG_REQUESTS": "on",
              "ORTHOSERVE_ALIAS": "c-env"}, 7, "c-flag", ["flag-key"], ["env-1", "file-key"], False),
            (["--api-key", "flag-key", "--api-keys-file", keys.name], {}, 4096, MODEL_ID,
             ["flag-key", "keyfile-1", "keyfile-2"], [None, "# keys", "keyfile"], True),
            ([], {"ORTHOSERVE_API_KEYS_FILE": keys.name}, 4096, MODEL_ID, ["keyfile-1"], [None], True),
        ]
        for args, env, mt, alias, ok_keys, bad_keys, logged in cases:
            s = Server(*args, env=env)
            try:
                hdr = lambda k: {"Authorization": "Bearer " + k} if k else {}
                for k in ok_keys:
                    st, j = s.get_json("/v1/models", hdr(k))
                    self.assertEqual(st, 200, (args, env, k))
                    self.assertEqual(j["data"][0]["id"], alias, (args, env))
                for k in bad_keys:
                    self.assertEqual(s.get_json("/v1/models", hdr(k))[0], 401, (args, env, k))
                h = hdr(ok_keys[0])
                self.assertEqual(s.post("/v1/completions", {"prompt": "Hi", "max_tokens": mt}, h)[0], 200)
                self.assertEqual(s.post("/v1/completions", {"prompt": "Hi", "max_tokens": mt + 1}, h)[0], 400)
            finally:
                self.assertEqual(s.stop(), 0)
            # The whole log: complete once the server has exited.
            self.assertEqual("POST /v1/completions 200" in s.final_log, logged, (args, env))
        for p in (f1, f2, keys.name):
            os.unlink(p)


if __name__ == "__main__":
    unittest.main(verbosity=2)
