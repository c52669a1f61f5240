"""Perplexity through the HTTP API equals `orthoserve perplexity` (issue 5):
the prompt log-probabilities of /v1/completions with echo + logprobs +
max_tokens 0 (how lm-evaluation-harness scores an OpenAI-style server), under
a request's orthorank settings - dense, a sparsity, and an explicit layers
list - give the CLI's mean NLL and PPL for the same windows."""
import math
import os
import re
import subprocess
import unittest

from e2eutil import BIN, MODEL, MODEL_ID, TESTDATA, Server, scaled

CORPUS = os.path.join(TESTDATA, "corpus", "tinystories_val.txt")
CTX, WINDOWS = 128, 3


def cli(orank):
    args = [BIN, "perplexity", "-m", MODEL, "-f", CORPUS, "-c", str(CTX), "--chunks", str(WINDOWS),
            "--mode", "full", "-t", "1"]
    if orank:
        args += ["--orthorank", orank]
    out = subprocess.run(args, capture_output=True, text=True, timeout=scaled(240))
    assert out.returncode == 0, out.stderr
    nll = float(re.search(r"mean NLL = ([0-9.]+)", out.stdout).group(1))
    ppl = float(re.search(r"PPL = ([0-9.]+)", out.stdout).group(1))
    eff = float(re.search(r"sparsity_effective = ([0-9.]+)", out.stdout).group(1))
    return nll, ppl, eff


class PerplexityHttpTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.s = Server("-c", "512", "--parallel", "2")
        # The CLI tokenizes the whole file once; the windows used here lie far
        # before the end of this prefix, so their tokens are the same.
        with open(CORPUS, encoding="utf-8") as f:
            text = f.read(20000)
        st, _, j, _ = cls.s.post("/tokenize", {"content": text, "add_special": True})
        assert st == 200
        toks = j["tokens"]
        assert len(toks) > (WINDOWS + 2) * CTX
        cls.windows = []
        for w in range(WINDOWS):
            win = toks[w * CTX:(w + 1) * CTX]
            win[0] = 1  # BOS replaces the first token of every window, as llama-perplexity does
            cls.windows.append(win)

    @classmethod
    def tearDownClass(cls):
        assert cls.s.stop() == 0

    def http_nll(self, orank):
        total, count, skipped, layers = 0.0, 0, 0, 0
        for win in self.windows:
            body = {"model": MODEL_ID, "prompt": win, "max_tokens": 0, "echo": True, "logprobs": 0,
                    "temperature": 0}
            if orank is not None:
                body["orthorank"] = orank
            st, _, j, _ = self.s.post("/v1/completions", body)
            self.assertEqual(st, 200, j)
            lps = j["choices"][0]["logprobs"]["token_logprobs"]
            self.assertIsNone(lps[0])
            self.assertEqual(len(lps), CTX)
            total -= sum(lps[1:])
            count += CTX - 1
            o = j["orthorank"]
            skipped += o["prefill"]["token_layers_skipped"]
            layers += o["prefill"]["token_layers_total"]
        return total / count, skipped / layers

    def check(self, orank_cli, orank_http):
        nll, ppl, eff = cli(orank_cli)
        hnll, heff = self.http_nll(orank_http)
        self.assertAlmostEqual(hnll, nll, delta=2e-6, msg="mean NLL over the same windows")
        self.assertEqual(round(math.exp(hnll), 4), ppl)
        self.assertAlmostEqual(heff, eff, places=4)
        return nll

    def test_dense(self):
        dense = self.check(None, None)
        self.assertGreater(dense, 0)

    def test_sparsity(self):
        dense = cli(None)[0]
        nll = self.check("sparsity=0.2,token_ratio=0.5", {"sparsity": 0.2, "token_ratio": 0.5})
        self.assertGreater(nll, dense, "sparsifying costs some likelihood")

    def test_explicit_layers(self):
        self.check("layers=3:1,token_ratio=0.5", {"layers": [3, 1], "token_ratio": 0.5})

    def test_layer_skip(self):
        self.check("sparsity=0.2,method=layer_skip", {"sparsity": 0.2, "method": "layer_skip"})


if __name__ == "__main__":
    unittest.main(verbosity=2)
