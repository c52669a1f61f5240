"""Run embed_sdk_test.mjs (openai embeddings.create and n: 3, the AI SDK's
embed / embedMany) against a real server. The packages are installed by the
e2e.sdk_setup test into ORTHOSERVE_NODE_DIR."""
import os
import subprocess
import sys
import unittest

from e2eutil import MODEL_ID, Server, scaled

NODE_DIR = os.environ.get("ORTHOSERVE_NODE_DIR", "")


class EmbedSdkTest(unittest.TestCase):
    def test_embeddings_and_choices_through_the_sdks(self):
        for pkg in ("openai", "ai", "@ai-sdk/openai"):
            if not os.path.isdir(os.path.join(NODE_DIR, "node_modules", pkg)):
                self.fail("the %s npm package is not installed in %s (e2e.sdk_setup)" % (pkg, NODE_DIR))
        s = Server("-c", "512")
        try:
            here = os.path.dirname(os.path.abspath(__file__))
            script = os.path.join(NODE_DIR, "embed_sdk_test.mjs")
            with open(os.path.join(here, "embed_sdk_test.mjs")) as f, open(script, "w") as g:
                g.write(f.read())  # next to node_modules so the imports resolve
            env = dict(os.environ, ORTHOSERVE_URL="http://127.0.0.1:%d/v1" % s.port, ORTHOSERVE_MODEL=MODEL_ID,
                       E2E_REQUEST_TIMEOUT_MS=str(int(scaled(60) * 1000)))
            out = subprocess.run(["node", script], env=env, capture_output=True, text=True, timeout=scaled(240))
            sys.stdout.write(out.stdout)
            sys.stderr.write(out.stderr[-3000:])
            self.assertEqual(out.returncode, 0, out.stdout + out.stderr[-2000:])
        finally:
            self.assertEqual(s.stop(), 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
