#!/usr/bin/env python3
"""bench_vs_llamacpp.py - orthoserve against llama.cpp's llama-server on one
GGUF, through the HTTP API (tools/bench-vs-llamacpp.sh runs this).

    bench_vs_llamacpp.py LLAMA_BIN_DIR MODEL [ISA]

One server is up at a time; each round starts llama-server, measures, stops
it, then does the same with `orthoserve serve`. Per server and round:
  ttft    a fixed ~670-token prompt (token ids, so both servers see the same
          tokens), max_tokens 1, not streamed: client wall time. Each request
          starts with a different first token and asks for no prompt cache,
          so no prefix is reused.
  decode  a 16-token prompt, 128 tokens forced (ignore_eos + min_tokens):
          tok/s from the response's timings (predicted_n / predicted_ms) when
          both servers give them, else 128 / wall time.
  conc    8 clients at once, 64 forced tokens each: generated tokens / wall.
Both servers: 2 threads, 8 slots of 1024 positions (llama-server's -c is the
total: 8192), batch 512. Median of ROUNDS (default 3) rounds; prints the
three ratios ours/llama (> 1: orthoserve faster) and the CPU line. ISA sets
ORTHOSERVE_ISA for orthoserve. Every request bans the SentencePiece byte
tokens (ids 3-258, logit_bias -100; BAN_BYTES=0 keeps them): llama-server
answers HTTP 500 when a text is not valid UTF-8, which random-weight models
emit. Only 127.0.0.1 is used; every wait and request has a deadline; both
servers are stopped on any exit.
"""
import atexit
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
START_S = float(os.environ.get("START_TIMEOUT", "180"))  # per server start
REQ_S = float(os.environ.get("REQUEST_TIMEOUT", "300"))  # per request
PROMPT_TOKENS, DECODE_TOKENS, CONC, CONC_TOKENS = 670, 128, 8, 64
SLOT_CTX, BATCH, THREADS = 1024, 512, 2
ORTHOSERVE = os.environ.get("ORTHOSERVE_BIN", os.path.join(ROOT, "build", "server", "orthoserve"))
BAN = {} if os.environ.get("BAN_BYTES", "1") == "0" else {str(i): -100 for i in range(3, 259)}

_procs = []


def _stop(p):
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=15)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=15)


def _cleanup(*_):
    for p in list(_procs):
        _stop(p)
    _procs.clear()


def _forget(p):
    _stop(p)
    if p in _procs:
        _procs.remove(p)


def _on_signal(sig, _frame):
    _cleanup()
    sys.exit(128 + sig)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port, body, timeout=REQ_S):
    req = urllib.request.Request("http://127.0.0.1:%d/v1/completions" % port, json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=timeout) as r:
        data = json.loads(r.read())
    return time.perf_counter() - t0, data


def wait_ready(port, proc, log):
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/health" % port, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    log.seek(0)
    tail = log.read().decode(errors="replace")[-3000:]
    raise RuntimeError("server did not become ready within %.0f s (exit %s):\n%s" % (START_S, proc.poll(), tail))


def start(kind, llama_dir, model, isa):
    port = free_port()
    env = dict(os.environ)
    if kind == "llama":
        cmd = [os.path.join(llama_dir, "llama-server"), "-m", model, "--host", "127.0.0.1", "--port", str(port),
               "-t", str(THREADS), "-tb", str(THREADS), "-c", str(SLOT_CTX * CONC), "--parallel", str(CONC),
               "-b", str(BATCH), "-ub", str(BATCH)]
    else:
        cmd = [ORTHOSERVE, "serve", "-m", model, "--host", "127.0.0.1", "--port", str(port), "-t", str(THREADS),
               "-c", str(SLOT_CTX), "--parallel", str(CONC), "-b", str(BATCH), "--log-requests=false"]
        if isa:
            env["ORTHOSERVE_ISA"] = isa
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                            cwd=tempfile.gettempdir())  # llama-server writes llama.log into its cwd
    _procs.append(proc)
    try:
        wait_ready(port, proc, log)
    except BaseException:
        _forget(proc)
        raise
    return proc, port, log


def body(prompt, n):
    # ignore_eos + min_tokens (orthoserve, vLLM) / n_predict (llama-server):
    # both generate exactly n tokens; no prompt cache on either side.
    return {"prompt": prompt, "max_tokens": n, "n_predict": n, "min_tokens": n, "ignore_eos": True,
            "temperature": 0, "cache_prompt": False, "stream": False, "logit_bias": BAN}


def prompt_ids(first, n):
    # token ids well inside any 32000-entry vocabulary, no special tokens
    return [1000 + (first * 7919) % 20000] + [1000 + (i * 104729 + 17) % 25000 for i in range(1, n)]


def n_generated(data):
    return int(data.get("usage", {}).get("completion_tokens", 0))


def measure(port, salt):
    post(port, body(prompt_ids(salt + 99, 32), 4))  # warm-up
    ttft, _ = post(port, body(prompt_ids(salt, PROMPT_TOKENS), 1))
    wall, data = post(port, body(prompt_ids(salt + 1, 16), DECODE_TOKENS))
    got = n_generated(data)
    if got != DECODE_TOKENS:
        raise RuntimeError("decode generated %d tokens, not %d: %s" % (got, DECODE_TOKENS, json.dumps(data)[:500]))
    t = data.get("timings") or {}
    dec_t = t["predicted_n"] / t["predicted_ms"] * 1e3 if t.get("predicted_ms") else None
    res, errs = [None] * CONC, []

    def client(i):
        try:
            res[i] = n_generated(post(port, body(prompt_ids(salt + 10 + i, 16), CONC_TOKENS))[1])
        except urllib.error.HTTPError as e:  # reported below, with the server's reason
            errs.append("HTTP %d: %s" % (e.code, e.read()[:300].decode(errors="replace")))
        except Exception as e:
            errs.append(repr(e))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CONC)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join(REQ_S + 5)
    conc_wall = time.perf_counter() - t0
    if errs or any(r != CONC_TOKENS for r in res):
        raise RuntimeError("concurrent clients: %s %s" % (res, errs[:2]))
    return {"ttft": ttft, "decode_wall": DECODE_TOKENS / wall, "decode_timings": dec_t,
            "conc": CONC * CONC_TOKENS / conc_wall}


def cpu_line():
    model, flags = "?", ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "?":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    have = line.split(":", 1)[1].split()
                    flags = " ".join(x for x in ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
                                                 "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile") if x in have)
    except OSError:
        pass
    return "# cpu: %s; flags: %s; %d cpus" % (model, flags, os.cpu_count() or 0)


def main():
    if len(sys.argv) < 3:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    llama_dir, model = sys.argv[1], sys.argv[2]
    isa = sys.argv[3] if len(sys.argv) > 3 else ""
    for path in (os.path.join(llama_dir, "llama-server"), ORTHOSERVE, model):
        if not os.path.exists(path):
            print("bench-vs-llamacpp: %s not found" % path, file=sys.stderr)
            return 2
    atexit.register(_cleanup)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    print(cpu_line())
    print("# model %s; llama-server from %s; orthoserve ISA %s; %d threads, %d slots x %d, batch %d; %d rounds"
          % (os.path.basename(model), llama_dir, isa or "(best)", THREADS, CONC, SLOT_CTX, BATCH, ROUNDS))
    runs = {"llama": [], "ours": []}
    for rnd in range(ROUNDS):
        for kind in ("llama", "ours"):
            proc, port, log = start(kind, llama_dir, model, isa)
            try:
                r = measure(port, 1000 * rnd + (0 if kind == "llama" else 500))
            finally:
                _forget(proc)
                log.close()
            runs[kind].append(r)
            dec = r["decode_timings"] if r["decode_timings"] else r["decode_wall"]
            print("round %d %-5s ttft %7.1f ms  decode %6.1f tok/s (wall %6.1f)  %d x %d: %6.1f tok/s"
                  % (rnd + 1, kind, r["ttft"] * 1e3, dec, r["decode_wall"], CONC, CONC_TOKENS, r["conc"]),
                  flush=True)
    use_t = all(r["decode_timings"] for k in runs for r in runs[k])
    med = {k: {m: statistics.median(r[m] for r in runs[k]) for m in ("ttft", "decode_wall", "conc")}
           for k in runs}
    for k in runs:
        med[k]["decode"] = statistics.median(r["decode_timings"] for r in runs[k]) if use_t else med[k]["decode_wall"]
    print("\n%-24s %12s %12s %10s" % ("median of %d" % ROUNDS, "llama-server", "orthoserve", "ours/llama"))
    print("%-24s %12.1f %12.1f %9.2fx" % ("TTFT %d tok (ms)" % PROMPT_TOKENS, med["llama"]["ttft"] * 1e3,
                                         med["ours"]["ttft"] * 1e3, med["llama"]["ttft"] / med["ours"]["ttft"]))
    print("%-24s %12.1f %12.1f %9.2fx" % ("decode %d tok/s (%s)" % (DECODE_TOKENS, "timings" if use_t else "wall"),
                                         med["llama"]["decode"], med["ours"]["decode"],
                                         med["ours"]["decode"] / med["llama"]["decode"]))
    print("%-24s %12.1f %12.1f %9.2fx" % ("%d x %d tok/s" % (CONC, CONC_TOKENS), med["llama"]["conc"],
                                         med["ours"]["conc"], med["ours"]["conc"] / med["llama"]["conc"]))
    print("(ratios > 1: orthoserve faster; TTFT ratio = llama / ours)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (RuntimeError, OSError) as e:  # a server that did not start or answer
        _cleanup()
        print("bench-vs-llamacpp: %s" % e, file=sys.stderr)
        sys.exit(1)
