#!/usr/bin/env python3
"""The include graph of server/: one node per module (x.c and x.h are one
node), one edge per `#include "..."` of another server/ file. Fails when the
graph has a cycle, or an edge goes up the layer order below, or a module is
not in it, or a header declares a function that another module's .c defines
(one header per module: otherwise a shared header hides the real
dependencies, as server.h once did for seven modules). `--print` lists the
edges.

The layers, top to bottom (a module includes only modules below it):
"""
import os
import re
import sys

LAYERS = [
    ["serve"],                                     # cli_serve: loop, loading, signals, drain
    ["routes"],                                    # the route table
    ["api_responses"],                             # /v1/responses (submits through api_openai)
    ["api_openai", "api_ops", "api_template", "api_embeddings"],  # route handlers
    ["api_choices"],                               # several choices (n > 1, prompt lists) as one response
    ["tool_reply"],                                # a chat reply's tool calls / reasoning as message and deltas
    ["stream"],                                    # SSE records of a job
    ["job"],                                       # a generation's state and lifetime
    ["orthorank_json"],                            # the orthorank object; GET /v1/orthorank
    ["server"],                                    # struct srv
    ["http"],                                      # MHD in libuv, routing by table, hooks
    ["srv_metrics", "log"],                        # the server's metrics; log lines
    ["resp_request"],                              # /v1/responses bodies -> chat bodies
    ["request", "plan", "resp_reply", "tc_stream"],  # request bodies -> engine parameters; plan files; Responses JSON; reply deltas
    ["rformat", "grammar_cache", "tool_grammar"],  # structured-output fields -> GBNF; compiled grammars; forced tool calls
    ["schema_gbnf"],                               # JSON Schema -> GBNF
    ["regex_gbnf"],                                # "pattern" -> GBNF
    ["reply"],                                     # JSON bodies, errors, eng_status -> HTTP
    ["metrics", "bridge", "textbuf", "config", "resp_store", "chat_tmpl"],
    ["toolcall", "tool_request"],
    ["sbuf", "jsoncount", "jinja_json"],
]
__doc__ += "".join("  %d. %s\n" % (i, ", ".join(l)) for i, l in enumerate(LAYERS))


def graph(root):
    files = [f for f in os.listdir(root) if f.endswith((".c", ".h"))]
    stems = {os.path.splitext(f)[0] for f in files}
    edges = set()
    for f in files:
        src = os.path.splitext(f)[0]
        with open(os.path.join(root, f), errors="replace") as fh:
            for line in fh:
                m = re.match(r'\s*#\s*include\s+"([^"/]+)\.[ch]"', line)
                if m and m.group(1) in stems and m.group(1) != src:
                    edges.add((src, m.group(1)))
    return stems, edges


def strip(text):
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    return re.sub(r"^\s*#[^\n]*(\\\n[^\n]*)*", " ", text, flags=re.M)


def declared(path):
    """Function names a header declares (outside struct/enum bodies and typedefs)."""
    text = strip(open(path, errors="replace").read())
    while True:
        t = re.sub(r"\{[^{}]*\}", " ", text)
        if t == text:
            break
        text = t
    names = []
    for stmt in text.split(";"):
        stmt = stmt.strip()
        if not stmt or stmt.startswith(("typedef", "extern")):
            continue
        m = re.match(r"[A-Za-z_][\w\s\*]*?\b(\w+)\s*\(", stmt)
        if m:
            names.append(m.group(1))
    return names


def defined(path):
    """Non-static function names a .c file defines (at column 0)."""
    names = []
    for line in open(path, errors="replace"):
        if not line[:1].isalpha() or line.startswith(("static", "typedef", "struct", "extern")):
            continue
        if "(" in line and not line.rstrip().endswith(";") and "=" not in line.split("(")[0]:
            names.append(line.split("(")[0].split()[-1].lstrip("*"))
    return names


def ownership(root, stems):
    owner = {}
    for f in os.listdir(root):
        if f.endswith(".c"):
            for n in defined(os.path.join(root, f)):
                owner[n] = os.path.splitext(f)[0]
    bad = []
    for f in sorted(os.listdir(root)):
        h = os.path.splitext(f)[0]
        if not f.endswith(".h"):
            continue
        for n in declared(os.path.join(root, f)):
            o = owner.get(n)
            if o and o != h:
                bad.append("%s declares %s, which %s.c defines: declare it in %s.h" % (f, n, o, o))
    return bad


def cycles(stems, edges):
    """Strongly connected components with more than one module (Tarjan)."""
    out = {s: sorted(b for a, b in edges if a == s) for s in stems}
    index, low, stack, on, comps, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in out[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(stems):
        if v not in index:
            visit(v)
    return comps


def main():
    args = [a for a in sys.argv[1:] if a != "--print"]
    root = args[0] if args else os.path.join(os.path.dirname(__file__), "..", "..", "..", "server")
    stems, edges = graph(root)
    if "--print" in sys.argv:
        for a, b in sorted(edges):
            print("%s -> %s" % (a, b))
    layer = {m: i for i, l in enumerate(LAYERS) for m in l}
    bad = []
    for comp in cycles(stems, edges):
        bad.append("include cycle: " + " <-> ".join(comp))
    for s in sorted(stems - set(layer)):
        bad.append("module %s is not in a layer of %s: place it" % (s, os.path.basename(__file__)))
    for a, b in sorted(edges):
        if a in layer and b in layer and layer[b] <= layer[a]:
            bad.append("%s includes %s: up or across the layer order" % (a, b))
    bad += ownership(root, stems)
    for m in bad:
        print("check_includes: " + m, file=sys.stderr)
    if not bad:
        print("check_includes: %d modules, %d edges, no cycle, layers respected" % (len(stems), len(edges)))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
