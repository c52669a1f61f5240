"""Run responses_sdk_test.mjs (the openai SDK's responses API and the AI
SDK's default provider) against a real server, then restart the server on
the same state_dir and continue a stored response with
previous_response_id. The packages are installed by e2e.sdk_setup into
ORTHOSERVE_NODE_DIR."""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

from e2eutil import MODEL_ID, Server, scaled

NODE_DIR = os.environ.get("ORTHOSERVE_NODE_DIR", "")


class ResponsesSdkTest(unittest.TestCase):
    def run_node(self, script, port, **env):
        e = dict(os.environ, ORTHOSERVE_URL="http://127.0.0.1:%d/v1" % port, ORTHOSERVE_MODEL=MODEL_ID,
                 E2E_REQUEST_TIMEOUT_MS=str(int(scaled(60) * 1000)), **env)
        out = subprocess.run(["node", script], env=e, capture_output=True, text=True, timeout=scaled(240))
        sys.stdout.write(out.stdout)
        sys.stderr.write(out.stderr[-3000:])
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr[-2000:])
        return out.stdout

    def test_sdks_and_restart(self):
        for pkg in ("openai", "ai", "@ai-sdk/openai"):
            if not os.path.isdir(os.path.join(NODE_DIR, "node_modules", pkg)):
                self.fail("the %s npm package is not installed in %s (e2e.sdk_setup)" % (pkg, NODE_DIR))
        here = os.path.dirname(os.path.abspath(__file__))
        script = os.path.join(NODE_DIR, "responses_sdk_test.mjs")
        with open(os.path.join(here, "responses_sdk_test.mjs")) as f, open(script, "w") as g:
            g.write(f.read())  # next to node_modules so the imports resolve
        state = tempfile.mkdtemp(prefix="orthoserve-resp-sdk-")
        try:
            s = Server("-c", "1024", "--state-dir", state)
            try:
                out = self.run_node(script, s.port, PHASE="before")
            finally:
                self.assertEqual(s.stop(), 0)
            m = re.search(r"^PREV (\S+) (.*)$", out, re.M)
            self.assertTrue(m, out)
            s = Server("-c", "1024", "--state-dir", state)
            try:
                self.run_node(script, s.port, PHASE="after", PREV_ID=m.group(1), PREV_TEXT=m.group(2))
            finally:
                self.assertEqual(s.stop(), 0)
        finally:
            shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    unittest.main(verbosity=2)
