#!/usr/bin/env python3
"""Tiny OpenAI-compatible mock for testing orthoserve-loadgen.

Serves /health, /v1/completions and /v1/chat/completions on 127.0.0.1 only.
Each request "generates" max_tokens fake tokens, one SSE chunk per token with
--token-delay seconds between them (streaming), or one JSON body at the end.
Bad JSON / wrong types get the OpenAI 400 error shape; --api-key adds 401s;
--error-every K answers every K-th valid request with 503 so the load
generator's HTTP-error accounting can be checked. Counters are printed to
stderr on SIGTERM/SIGINT. Standard library only.
"""
import argparse
import json
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
STATS = {"requests": 0, "ok": 0, "bad": 0, "errors503": 0, "client_gone": 0}


def bump(key):
    with LOCK:
        STATS[key] += 1
        return STATS[key]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "mock-openai/0.1"
    disable_nagle_algorithm = True  # else Nagle + delayed ACK batch the SSE chunks

    def log_message(self, fmt, *args):  # quiet
        pass

    def send_json(self, status, obj):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def error(self, status, msg, typ="invalid_request_error"):
        self.send_json(status, {"error": {"message": msg, "type": typ, "param": None, "code": None}})

    def do_GET(self):
        if self.path == "/health":
            self.send_json(200, {"status": "ok"})
        else:
            self.error(404, "not found", "not_found_error")

    def chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n > 0 else b""
        bump("requests")
        chat = self.path == "/v1/chat/completions"
        if not chat and self.path != "/v1/completions":
            self.error(404, "not found", "not_found_error")
            return
        key = self.server.opts.api_key
        if key and self.headers.get("Authorization") != "Bearer " + key:
            bump("bad")
            self.error(401, "bad api key", "authentication_error")
            return
        try:
            req = json.loads(raw.decode("utf-8"))
            if not isinstance(req, dict):
                raise ValueError("body must be an object")
            if chat:
                msgs = req.get("messages")
                if not isinstance(msgs, list) or not msgs:
                    raise ValueError("'messages' must be a non-empty array")
            elif not isinstance(req.get("prompt"), str):
                raise ValueError("'prompt' must be a string")
            mt = req.get("max_tokens", 16)
            if not isinstance(mt, int) or isinstance(mt, bool) or mt < 1:
                raise ValueError("'max_tokens' must be a positive integer")
            temp = req.get("temperature", 1.0)
            if not isinstance(temp, (int, float)) or isinstance(temp, bool):
                raise ValueError("'temperature' must be a number")
        except (ValueError, UnicodeDecodeError) as e:
            bump("bad")
            self.error(400, str(e))
            return
        every = self.server.opts.error_every
        if every and bump("errors503") % every == 0:
            self.error(503, "mock overload", "server_error")
            return
        ptoks = len(req.get("prompt", "").split()) if not chat else sum(
            len(str(m.get("content", "")).split()) for m in req["messages"] if isinstance(m, dict))
        usage = {"prompt_tokens": ptoks, "completion_tokens": mt, "total_tokens": ptoks + mt}
        obj = "chat.completion" if chat else "text_completion"
        delay = self.server.opts.token_delay
        if not req.get("stream"):
            time.sleep(delay * mt)
            if chat:
                choice = {"index": 0, "message": {"role": "assistant", "content": " tok" * mt},
                          "finish_reason": "length"}
            else:
                choice = {"index": 0, "text": " t\x00k" + " tok" * (mt - 1), "finish_reason": "length"}
            self.send_json(200, {"id": "x", "object": obj, "created": 0, "model": "mock",
                                 "choices": [choice], "usage": usage})
            bump("ok")
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        obj += ".chunk" if chat else ""
        try:
            if chat:  # role-only first delta, as OpenAI sends it
                self.chunk(b"data: " + json.dumps({"object": obj, "choices": [
                    {"index": 0, "delta": {"role": "assistant"}}]}).encode() + b"\n\n")
            for i in range(mt):
                time.sleep(delay)
                fin = "length" if i == mt - 1 else None
                # some tokens hold a NUL, which JSON carries as \u0000 (a byte
                # token <0x00> does that in real models)
                tok = " t\x00k" if i % 5 == 2 else " tok"
                c = ({"index": 0, "delta": {"content": tok}, "finish_reason": fin} if chat
                     else {"index": 0, "text": tok, "finish_reason": fin})
                data = b"data: " + json.dumps({"object": obj, "choices": [c]}).encode() + b"\n\n"
                # Split some events across writes to exercise incremental parsing.
                if i % 3 == 1:
                    self.chunk(data[:7])
                    self.chunk(data[7:])
                else:
                    self.chunk(data)
            so = req.get("stream_options") or {}
            if so.get("include_usage"):
                self.chunk(b"data: " + json.dumps({"object": obj, "choices": [], "usage": usage}).encode()
                           + b"\n\n")
            self.chunk(b": keep-alive comment\n\ndata: [DONE]\n\n")
            self.chunk(b"")
            bump("ok")
        except (BrokenPipeError, ConnectionResetError):
            bump("client_gone")
            self.close_connection = True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0, help="0 = pick a free port")
    ap.add_argument("--port-file", help="write the bound port here once listening")
    ap.add_argument("--token-delay", type=float, default=0.002)
    ap.add_argument("--api-key")
    ap.add_argument("--error-every", type=int, default=0)
    opts = ap.parse_args()
    srv = ThreadingHTTPServer(("127.0.0.1", opts.port), Handler)
    srv.daemon_threads = True
    srv.opts = opts

    def stop(*_):
        print("mock stats: " + json.dumps(STATS), file=sys.stderr, flush=True)
        threading.Thread(target=srv.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    port = srv.server_address[1]
    if opts.port_file:
        with open(opts.port_file + ".tmp", "w") as f:
            f.write(str(port))
        import os
        os.replace(opts.port_file + ".tmp", opts.port_file)
    print(f"mock listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
