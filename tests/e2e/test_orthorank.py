"""OrthoRank over HTTP (issue #16): what a request asks for is what it gets.
- the README's example, on the repository's own models/stories260K.gguf and
  the plan beside it, reports the sparsity it asked for (non-zero);
- sparsity 0.1 to 0.5: sparsity_target is within 0.02 of the request and
  sparsity_effective within 0.03 of the target; the report matches the
  contract (openapi.yaml);
- the prefix cache reuses a sparsified prompt's K/V only for the same
  prompt and settings, and the output is the same as without reuse;
- "decode_grouping": "batch" is accepted, reported and validated, grouped
  requests decoded side by side still get their sparsity, and a request that
  did not opt in gets the same text beside them as alone."""
import os
import threading
import unittest

from e2eutil import MODEL, OpenAPI, Server

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
REPO_MODEL = os.path.join(REPO, "models", "stories260K.gguf")


def corpus_prompt(words):
    with open(os.path.join(os.path.dirname(MODEL), "..", "corpus", "tinystories_val.txt")) as f:
        return " ".join(f.read().split()[:words])


class ReadmeExampleTest(unittest.TestCase):
    """The README's first two commands serve the repository's model (no
    ../shared needed: the server is started from the repository's files
    alone, with every ORTHOSERVE_ variable cleared)."""

    def test_readme_example_gets_its_sparsity(self):
        s = Server(model=REPO_MODEL)
        try:
            body = {"prompt": "Once upon a time", "max_tokens": 48, "temperature": 0,
                    "orthorank": {"sparsity": 0.2}}
            st, _, j, _ = s.post("/v1/completions", body)
            self.assertEqual(st, 200, j)
            OpenAPI().check(j, "/v1/completions", "POST", 200)
            o = j["orthorank"]
            self.assertEqual(o["layer_order_source"], "calibrated", "the plan beside the model is used")
            self.assertAlmostEqual(o["sparsity_target"], 0.2, delta=0.02)
            self.assertGreater(o["sparsity_effective"], 0)
            self.assertAlmostEqual(o["sparsity_effective"], o["sparsity_target"], delta=0.03, msg=o)
            self.assertTrue(j["choices"][0]["text"].strip(), "real text")
        finally:
            self.assertEqual(s.stop(), 0)


class SparsityTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.s = Server("-c", "512", "--parallel", "2")
        cls.api = OpenAPI()

    @classmethod
    def tearDownClass(cls):
        rc = cls.s.stop()
        assert rc == 0, "server exit code %r" % rc

    def complete(self, prompt, orthorank, max_tokens=64):
        body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
                "orthorank": orthorank}
        st, _, j, _ = self.s.post("/v1/completions", body)
        self.assertEqual(st, 200, j)
        self.api.check(j, "/v1/completions", "POST", 200)
        return j

    def test_requested_target_effective(self):
        for words in (3, 25, 130):  # 5, about 70 and 340 tokens
            prompt = corpus_prompt(words)
            for req in (0.1, 0.2, 0.3, 0.4, 0.5):
                o = self.complete(prompt, {"sparsity": req})["orthorank"]
                where = "%d words, sparsity %.1f: %r" % (words, req, o)
                self.assertEqual(o["sparsity_requested"], req, where)
                self.assertAlmostEqual(o["sparsity_target"], req, delta=0.02 + 1e-9, msg=where)
                self.assertAlmostEqual(o["sparsity_effective"], o["sparsity_target"], delta=0.03, msg=where)
                self.assertEqual(o["decode"]["tokens"], 63, where)

    def test_prefix_cache_same_settings_only(self):
        prompt = corpus_prompt(300)[-400:]  # text no other test sends
        settings = {"sparsity": 0.3}

        def run(orank):
            body = {"prompt": prompt, "max_tokens": 24, "temperature": 0, "ignore_eos": True, "orthorank": orank}
            st, _, j, _ = self.s.post("/v1/completions", body)
            self.assertEqual(st, 200, j)
            return j["choices"][0]["text"], j["usage"]["prompt_tokens_details"]["cached_tokens"], j

        first, c1, j1 = run(settings)
        second, c2, j2 = run(settings)
        self.assertEqual(c1, 0, "a new prompt")
        self.assertEqual(c2, j2["usage"]["prompt_tokens"] - 1, "all but the last prompt token reused")
        self.assertEqual(second, first, "the same output as without reuse")
        self.assertEqual(j2["orthorank"]["prefill"]["tokens"], 1)
        _, c3, _ = run({"sparsity": 0.3, "token_ratio": 0.5})
        self.assertEqual(c3, 0, "other settings reuse nothing")
        _, c4, _ = run({"sparsity": 0})
        self.assertEqual(c4, 0, "a dense request does not reuse a sparsified prefix")

    def test_decode_grouping(self):
        st, _, j, _ = self.s.post("/v1/completions", {"prompt": "Hi", "max_tokens": 2,
                                                       "orthorank": {"decode_grouping": "together"}})
        self.assertEqual(st, 400, j)
        self.assertEqual(j["error"]["param"], "orthorank.decode_grouping")
        st, j = self.s.get_json("/v1/orthorank")
        self.assertEqual(j["defaults"]["decode_grouping"], "none")
        words = corpus_prompt(400).split()
        prompts = [" ".join(words[40 * i + 200:40 * i + 208]) for i in range(3)]
        grouped = {"sparsity": 0.2, "decode_grouping": "batch"}
        alone = self.complete(prompts[2], {"sparsity": 0.2})
        out = [None] * 3

        def run(i):  # two grouped requests and one that is not, side by side (--parallel 2: queued otherwise)
            out[i] = self.complete(prompts[i], grouped if i < 2 else {"sparsity": 0.2})

        th = [threading.Thread(target=run, args=(i,)) for i in range(3)]
        for t in th:
            t.start()
        for t in th:
            t.join()
        for i in range(2):
            o = out[i]["orthorank"]
            self.assertEqual(o["decode_grouping"], "batch")
            self.assertAlmostEqual(o["sparsity_effective"], o["sparsity_target"], delta=0.03, msg=o)
        self.assertEqual(out[2]["orthorank"]["decode_grouping"], "none")
        self.assertEqual(out[2]["choices"][0]["text"], alone["choices"][0]["text"],
                         "a request that did not opt in does not depend on its batch")
        self.assertEqual(out[2]["orthorank"]["decode"], alone["orthorank"]["decode"])

    def test_dense_target_is_zero(self):
        o = self.complete("Once upon a time", {"sparsity": 0}, max_tokens=4)["orthorank"]
        self.assertEqual((o["sparsity_target"], o["sparsity_effective"]), (0, 0))


if __name__ == "__main__":
    unittest.main(verbosity=2)
