#!/usr/bin/env python3
"""request_seeds.py OUTDIR E2EDIR - seed corpus for fuzz_request: the request
bodies the end-to-end tests send, one JSON file each.

The tests are read, not run: every dict literal holding "prompt" or
"messages", every call of a body builder (a function that starts from a dict
literal, updates it with its keyword arguments and returns it, like chat()
and comp() in test_bad_input.py), and every bytes literal that looks like a
JSON object (the malformed bodies). Values the reader cannot work out
(variables, calls) are left out of their dict, which still makes a seed.
A few bodies that reach the rarer fields are added by hand.
"""
import ast
import hashlib
import json
import os
import sys

UNKNOWN = object()


class Reader:
    def __init__(self, tree):
        self.env = {}
        self.builders = {}
        for node in tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                v = self.ev(node.value)
                if v is not UNKNOWN:
                    self.env[node.targets[0].id] = v
            elif isinstance(node, ast.FunctionDef):
                base = self.builder_base(node)
                if base is not None:
                    self.builders[node.name] = base

    def builder_base(self, fn):
        """The dict a body builder starts from: d = {...}; d.update(kw); return d."""
        if len(fn.body) != 3 or not fn.args.kwarg:
            return None
        first = fn.body[0]
        if not (isinstance(first, ast.Assign) and isinstance(first.value, ast.Dict)):
            return None
        base = self.ev(first.value)
        return base if isinstance(base, dict) else None

    def ev(self, node):
        try:
            return ast.literal_eval(node)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            pass
        if isinstance(node, ast.Dict):
            d = {}
            for k, v in zip(node.keys, node.values):
                if k is None:
                    continue
                kk, vv = self.ev(k), self.ev(v)
                if kk is UNKNOWN or vv is UNKNOWN:
                    continue
                try:
                    d[kk] = vv
                except TypeError:
                    continue
            return d
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [self.ev(e) for e in node.elts]
            return [e for e in items if e is not UNKNOWN]
        if isinstance(node, ast.Name):
            return self.env.get(node.id, UNKNOWN)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            v = self.ev(node.operand)
            return -v if isinstance(v, (int, float)) else UNKNOWN
        if isinstance(node, ast.BinOp):
            a, b = self.ev(node.left), self.ev(node.right)
            if a is UNKNOWN or b is UNKNOWN:
                return UNKNOWN
            try:
                if isinstance(node.op, ast.Mult) and (not isinstance(a, int) or b < 10000):
                    return a * b
                if isinstance(node.op, ast.Add):
                    return a + b
                if isinstance(node.op, ast.Sub):
                    return a - b
                if isinstance(node.op, ast.Pow) and abs(b) < 400:
                    return a ** b
                if isinstance(node.op, ast.LShift) and b < 200:
                    return a << b
            except (TypeError, ValueError, OverflowError):
                return UNKNOWN
            return UNKNOWN
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in self.builders:
            d = json.loads(json.dumps(self.builders[node.func.id]))
            for kw in node.keywords:
                if kw.arg is None:
                    continue
                v = self.ev(kw.value)
                if v is not UNKNOWN:
                    d[kw.arg] = v
            return d
        return UNKNOWN


def bodies(path):
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    r = Reader(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict) or (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                                          and node.func.id in r.builders):
            v = r.ev(node)
            if isinstance(v, dict) and ("prompt" in v or "messages" in v):
                try:
                    yield json.dumps(v).encode()
                except (TypeError, ValueError):
                    pass
        elif isinstance(node, ast.Constant) and isinstance(node.value, bytes):
            b = node.value
            if b.startswith(b"{") and len(b) < 65536 and (b'"prompt"' in b or b'"messages"' in b):
                yield b


EXTRA = [
    {"messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": [
        {"type": "text", "text": "Once"}, {"type": "text", "text": "upon"}]}, {"role": "assistant", "content": None},
        {"role": "user", "content": "a time"}], "max_completion_tokens": 4, "stream": True,
     "stream_options": {"include_usage": True}, "logprobs": True, "top_logprobs": 3, "stop": ["\n", "The"],
     "seed": 7, "user": "u", "response_format": {"type": "text"}, "tools": [], "functions": None},
    {"prompt": [1, 2, 3, 511], "max_tokens": 0, "echo": True, "logprobs": 5, "best_of": 1, "n": 1},
    {"prompt": [[1, 400, 300]], "echo": True, "logprobs": 0, "stream": True},
    {"prompt": ["Once upon a time"], "max_tokens": 3, "temperature": 0.7, "top_p": 0.9, "top_k": 40,
     "min_p": 0.05, "presence_penalty": 0.5, "frequency_penalty": -0.5, "repetition_penalty": 1.1,
     "repeat_last_n": 64, "min_tokens": 2, "ignore_eos": True, "logit_bias": {"13": -100, "0": 100, "511": 0.5}},
    {"prompt": "Hi", "orthorank": {"sparsity": 0.4, "token_ratio": 0.5, "decode": "threshold",
                                   "method": "orthorank"}},
    {"prompt": "Hi", "orthorank": {"layers": [1, 3], "method": "layer_skip", "decode": "full"}},
    {"prompt": "Hi", "orthorank": {"sparsity": 0.2, "method": "random", "decode": "off"}},
    {"prompt": "Hi", "orthorank": None, "model": "stories260K.gguf", "temperature": 2, "top_p": 1e-50},
    {"messages": [{"role": "user", "content": "x" * 600}], "max_tokens": 1},
    {"prompt": "Hi", "repetition_penalty": 1e-50, "stop": "\u00e9", "seed": -1},
]


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    out, e2e = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    seen = set()
    found = []
    for name in sorted(os.listdir(e2e)):
        if name.endswith(".py"):
            for b in bodies(os.path.join(e2e, name)):
                found.append((name[:-3], b))
    for d in EXTRA:
        found.append(("extra", json.dumps(d).encode()))
    n = 0
    for stem, b in found:
        h = hashlib.sha1(b).hexdigest()[:12]
        if h in seen:
            continue
        seen.add(h)
        with open(os.path.join(out, "%s-%s.json" % (stem, h)), "wb") as f:
            f.write(b)
        n += 1
    print("request_seeds: %d bodies in %s" % (n, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
