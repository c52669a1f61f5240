#!/usr/bin/env python3
"""Summarise orthorank_study.sh's sweep tables (docs/ORTHORANK_RESULTS.md).

For every distinct OrthoRank configuration (token ratio k, layer list) of a
sweep: PPL of orthorank / random / inverse with the same layers, and the
layer-skipping PPL at the same FLOPs saved, interpolated log-linearly between
the achievable layer-skip points of the same sweep (0, 1, 2 ... layers removed).
usage: study_summary.py OUT_DIR
"""
import glob
import math
import os
import sys


def parse(path):
    rows = []
    for line in open(path):
        if not line.startswith("| ") or line.startswith("| method"):
            continue
        c = [x.strip() for x in line.strip().strip("|").split("|")]
        if c[4].startswith("error"):
            continue
        rows.append({"method": c[0], "s": float(c[1]), "k": c[2], "layers": c[3],
                     "ppl": float(c[4]), "seff": float(c[7]), "flops": float(c[8]),
                     "sel": c[11] if len(c) > 11 else None})
    return rows


def interp(points, x):
    pts = sorted(points)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            t = (x - x0) / (x1 - x0) if x1 > x0 else 0
            return math.exp((1 - t) * math.log(y0) + t * math.log(y1))
    return float("nan")


def summary(path):
    rows = parse(path)
    dense = [r for r in rows if r["method"] == "dense"][0]
    ls = {(r["flops"], r["ppl"]) for r in rows if r["method"] == "layer_skip"}
    ls.add((0.0, dense["ppl"]))
    seen = {}
    for r in rows:
        if r["method"] in ("orthorank", "random", "inverse"):
            seen.setdefault((r["k"], r["layers"]), {})[r["method"]] = r
    out = ["| k | layers | sparsity_eff | flops saved | orthorank | random | inverse "
           "| layer_skip at equal FLOPs (interp.) | orthorank vs layer_skip |",
           "|---|---|---|---|---|---|---|---|---|"]
    for (k, layers), d in seen.items():
        o = d.get("orthorank")
        if not o:
            continue
        ref = interp(ls, o["flops"])
        rel = "%+.1f%%" % (100 * (o["ppl"] / ref - 1)) if ref == ref else "n/a"
        f = lambda m: "%.3f" % d[m]["ppl"] if m in d else "-"
        out.append("| %s | %s | %.3f | %.3f | %.3f | %s | %s | %s | %s |" % (
            k, layers, o["seff"], o["flops"], o["ppl"], f("random"), f("inverse"),
            "%.3f" % ref if ref == ref else "beyond the layer-skip points", rel))
    return "\n".join(out)


if __name__ == "__main__":
    d = sys.argv[1]
    for p in sorted(glob.glob(os.path.join(d, "sweep_*.md"))):
        print("### " + os.path.basename(p) + "\n")
        print(summary(p) + "\n")
