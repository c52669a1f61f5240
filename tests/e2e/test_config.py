"""serve configuration: --help, precedence (defaults < file < env < flags),
unknown keys and bad values are start-up errors naming the key."""
import json
import os
import subprocess
import tempfile
import unittest

from e2eutil import BIN, MODEL, MODEL_ID, Server


def run(args, env=None):
    e = {k: v for k, v in os.environ.items() if not k.startswith("ORTHOSERVE_")}
    e.update(env or {})
    return subprocess.run([BIN, "serve"] + args, capture_output=True, text=True, env=e, timeout=30)


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


if __name__ == "__main__":
    unittest.main(verbosity=2)
