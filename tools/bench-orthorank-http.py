#!/usr/bin/env python3
"""OrthoRank's speed through the HTTP API, dense next to sparsified in the
same run (docs/BENCHMARKS.md, "OrthoRank through the HTTP API").

Against a running `orthoserve serve` (loopback), for each concurrency C and
each setting (dense, then {"sparsity": S}), one wave of C simultaneous
non-streaming /v1/completions requests, twice:
  prefill: prompts of about P tokens (distinct per request, so nothing comes
           from the prefix cache), max_tokens 1; aggregate prefill tok/s =
           prompt tokens / wall time of the wave;
  decode:  8-word prompts, max_tokens N, ignore_eos; aggregate decode tok/s
           = completion tokens / wall time of the wave.
Each measurement is repeated R times, alternating dense and sparsified; the
table gives medians and the median of the per-repeat speedups, with the
skipped fractions the responses reported (token_layers_skipped / total).
--grouping adds a third setting in the same alternation, the sparsity with
"decode_grouping": "batch" (docs/ORTHORANK.md, "Batched decode grouping"),
and its own columns; --phases picks prefill, decode or both. With
--server-pid (a local server) each wave also reads the server's CPU time
(/proc/PID/stat), and a second table gives tokens per CPU-second: on a
shared, loaded machine wall time also measures the neighbours, CPU time
mostly the server's own work.
Python 3 standard library only.

usage: tools/bench-orthorank-http.py --port 8080 [--concurrency 1,4,8] [--sparsity 0.2]
       [--prompt-words 180] [--decode-tokens 64] [--repeats 3] [--text FILE]
       [--grouping] [--phases prefill,decode] [--server-pid PID]
"""
import argparse
import sys
import http.client
import json
import statistics
import threading
import time


def post(port, body, timeout=600):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    c.close()
    if r.status != 200:
        raise RuntimeError("HTTP %d: %s" % (r.status, data[:300]))
    return json.loads(data)


def cpu_seconds(pid):
    """utime + stime of process pid (0 without a pid)."""
    if not pid:
        return 0.0
    import os
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wave(port, bodies):
    """Send all bodies at once; (wall seconds, responses)."""
    out = [None] * len(bodies)
    start = threading.Barrier(len(bodies) + 1)

    def run(i):
        start.wait()
        out[i] = post(port, bodies[i])

    th = [threading.Thread(target=run, args=(i,)) for i in range(len(bodies))]
    for t in th:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in th:
        t.join()
    return time.perf_counter() - t0, out


def skipped(resps, phase):
    tot = sum(r["orthorank"][phase]["token_layers_total"] for r in resps)
    sk = sum(r["orthorank"][phase]["token_layers_skipped"] for r in resps)
    return sk / tot if tot else 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--concurrency", default="1,4,8")
    ap.add_argument("--sparsity", type=float, default=0.2)
    ap.add_argument("--prompt-words", type=int, default=180)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--text", default="../shared/testdata/corpus/tinystories_val.txt")
    ap.add_argument("--grouping", action="store_true", help="also measure decode_grouping=batch")
    ap.add_argument("--phases", default="prefill,decode")
    ap.add_argument("--server-pid", type=int, default=0, help="also measure tokens per server CPU-second")
    a = ap.parse_args()
    words = open(a.text).read().split()
    serial = [0]

    def prompt(n):  # a fresh stretch of text per request: no prefix reuse
        serial[0] += 1
        i = (serial[0] * 977) % (len(words) - n - 1)
        return " ".join(words[i:i + n])

    settings = [("dense", {"sparsity": 0}), ("orthorank", {"sparsity": a.sparsity})]
    if a.grouping:
        settings.append(("grouped", {"sparsity": a.sparsity, "decode_grouping": "batch"}))
    gh = " grouped tok/s | grouped speedup | grouped skipped (decode) |" if a.grouping else ""
    print("| concurrency | phase | dense tok/s | OrthoRank tok/s | speedup | skipped (prefill / decode) | "
          "target | k | layers |" + gh)
    print("|---|---|---|---|---|---|---|---|---|" + ("---|---|---|" if a.grouping else ""))
    cpu_rows = []
    for c in [int(x) for x in a.concurrency.split(",")]:
        for phase in a.phases.split(","):
            rates = {name: [] for name, _ in settings}
            cpu_rates = {name: [] for name, _ in settings}
            ratios, gratios, info, ginfo = [], [], {}, 0.0
            for _ in range(a.repeats):
                got = {}
                for name, orank in settings:
                    if phase == "prefill":
                        bodies = [{"prompt": prompt(a.prompt_words), "max_tokens": 1, "temperature": 0,
                                   "orthorank": orank} for _ in range(c)]
                    else:
                        bodies = [{"prompt": prompt(8), "max_tokens": a.decode_tokens, "temperature": 0,
                                   "ignore_eos": True, "orthorank": orank} for _ in range(c)]
                    c0 = cpu_seconds(a.server_pid)
                    wall, resps = wave(a.port, bodies)
                    cpu = cpu_seconds(a.server_pid) - c0
                    key = "prompt_tokens" if phase == "prefill" else "completion_tokens"
                    got[name] = sum(r["usage"][key] for r in resps) / wall
                    if cpu > 0:
                        cpu_rates[name].append(sum(r["usage"][key] for r in resps) / cpu)
                    rates[name].append(got[name])
                    if name == "orthorank":
                        o = resps[0]["orthorank"]
                        info = {"pf": skipped(resps, "prefill"), "dc": skipped(resps, "decode"),
                                "target": o["sparsity_target"], "k": o["token_ratio"], "layers": len(o["layers"])}
                    if name == "grouped":
                        ginfo = skipped(resps, "decode")
                ratios.append(got["orthorank"] / got["dense"])
                if a.grouping:
                    gratios.append(got["grouped"] / got["dense"])
            gcols = ""
            if a.grouping:
                gcols = " %.1f | **%.3fx** | %.3f |" % (statistics.median(rates["grouped"]),
                                                        statistics.median(gratios), ginfo)
            print("| %d | %s | %.1f | %.1f | **%.3fx** | %.3f / %.3f | %.3f | %.4f | %d |%s" % (
                c, phase, statistics.median(rates["dense"]), statistics.median(rates["orthorank"]),
                statistics.median(ratios), info["pf"], info["dc"], info["target"], info["k"], info["layers"],
                gcols), flush=True)
            if a.server_pid:
                med = {n: statistics.median(v) for n, v in cpu_rates.items()}
                cpu_rows.append("| %d | %s | %s |" % (c, phase, " | ".join(
                    "%.1f%s" % (med[n], "" if n == "dense" else " (%.3fx)" % (med[n] / med["dense"]))
                    for n, _ in settings)))
                print("cpu: " + cpu_rows[-1], file=sys.stderr, flush=True)
    if cpu_rows:
        print("\ntokens per server CPU-second (median; in brackets vs dense)\n")
        print("| concurrency | phase | " + " | ".join(n for n, _ in settings) + " |")
        print("|---|---|" + "---|" * len(settings))
        for r in cpu_rows:
            print(r)


if __name__ == "__main__":
    main()
