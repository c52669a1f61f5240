"""Run tools_sdk_test.mjs (openai, LangChain and the AI SDK calling tools)
against a server whose model carries Qwen2.5's template (issue 20 parts 4-5).
The clients are installed by e2e.sdk_setup into ORTHOSERVE_NODE_DIR."""
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

from e2eutil import Server, scaled
from test_tools import write_model

NODE_DIR = os.environ.get("ORTHOSERVE_NODE_DIR", "")


class ToolsSdkTest(unittest.TestCase):
    def test_client_libraries(self):
        if not os.path.isdir(os.path.join(NODE_DIR, "node_modules", "openai")):
            self.fail("the npm clients are not installed in %s (e2e.sdk_setup)" % NODE_DIR)
        tmp = tempfile.mkdtemp(prefix="orthoserve-tools-sdk-")
        s = Server("--state-dir", os.path.join(tmp, "state"), model=write_model(tmp, "Qwen-Qwen2.5-7B-Instruct"))
        try:
            here = os.path.dirname(os.path.abspath(__file__))
            script = os.path.join(NODE_DIR, "tools_sdk_test.mjs")
            shutil.copyfile(os.path.join(here, "tools_sdk_test.mjs"), script)  # beside node_modules
            st, j = s.get_json("/v1/models")
            env = dict(os.environ, ORTHOSERVE_URL="http://127.0.0.1:%d/v1" % s.port, ORTHOSERVE_MODEL=j["data"][0]["id"],
                       E2E_REQUEST_TIMEOUT_MS=str(int(scaled(120) * 1000)))
            out = subprocess.run(["node", script], env=env, capture_output=True, text=True, timeout=scaled(600))
            sys.stdout.write(out.stdout)
            sys.stderr.write(out.stderr[-3000:])
            self.assertEqual(out.returncode, 0, out.stdout[-3000:] + out.stderr[-2000:])
        finally:
            self.assertEqual(s.stop(), 0)
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    unittest.main(verbosity=2)
