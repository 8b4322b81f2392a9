#!/usr/bin/env python3
"""Mean KL divergence against file size for the tiny RWKV models, one panel per model, as an SVG
(no plotting library needed).

    bench/plot_rwkv_quality.py OUT.svg RESULTS.csv [RESULTS.csv ...] [--kld-json LOG]

RESULTS.csv is what bench/rwkv_quality.sh writes per model (model, config, bytes, mean_kld, ...).
Uniform types are drawn as labelled points, the documents' two boundary presets as labelled
squares, mixq's measured plans as a line through their points. KLD 0 (F32, and F16 where it
rounds to 0) cannot sit on a log axis and is left out. --kld-json: a log of `mixq kld --json`
reports (model path TAB json per line), whose unrounded means replace the CSV's 6-decimal ones.
"""
import csv
import json
import math
import os
import sys

COLOURS = {"uniform": "#555555", "preset": "#d62728", "plan": "#1f77b4"}


def load(paths, json_log):
    precise = {}
    if json_log:
        for line in open(json_log):
            path, _, j = line.rstrip("\n").partition("\t")
            try:
                precise[(os.path.basename(os.path.dirname(path)), os.path.basename(path))] = json.loads(j)["kld"]["mean"]
            except (ValueError, KeyError):
                pass
    models = {}
    for p in paths:
        for r in csv.DictReader(open(p)):
            cfg = r["config"]
            if cfg in ("f32", "rwkv.cpp FP16 file"):
                continue
            kind = "plan" if cfg.startswith("mixq plan") else "preset" if cfg.startswith("boundary") else "uniform"
            gguf = (cfg.replace("mixq plan at ", "plan-").replace(" size", "").replace(":", "-") + ".gguf")
            y = precise.get((r["model"], gguf), float(r["mean_kld"]))
            label = cfg.replace("mixq plan at ", "plan @ ").replace(" size", "")
            models.setdefault(r["model"], []).append((kind, int(r["bytes"]), y, label))
    return models


def panel(out, ox, W, H, name, pts):
    L, R, T, B = 70, 10, 40, 60
    good = [p for p in pts if p[2] > 0]
    xs = [p[1] for p in good]
    ys = [p[2] for p in good]
    x0, x1 = min(xs), max(xs)
    pad = (x1 - x0) * 0.08 or 1
    x0, x1 = x0 - pad, x1 + pad
    ly0, ly1 = math.floor(math.log10(min(ys))), math.ceil(math.log10(max(ys)))

    def px(x):
        return ox + L + (x - x0) / (x1 - x0) * (W - L - R)

    def py(y):
        return T + (ly1 - math.log10(y)) / (ly1 - ly0) * (H - T - B)

    out.append(f'<text x="{ox + W / 2}" y="24" text-anchor="middle" font-size="14">{name}</text>')
    for e in range(ly0, ly1 + 1):
        y = py(10 ** e)
        out.append(f'<line x1="{ox + L}" y1="{y:.1f}" x2="{ox + W - R}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{ox + L - 6}" y="{y + 4:.1f}" text-anchor="end">1e{e}</text>')
    for i in range(6):
        x = x0 + (x1 - x0) * i / 5
        out.append(f'<line x1="{px(x):.1f}" y1="{T}" x2="{px(x):.1f}" y2="{H - B}" stroke="#eee"/>')
        out.append(f'<text x="{px(x):.1f}" y="{H - B + 16}" text-anchor="middle">{x / 1e3:.0f} kB</text>')
    out.append(f'<text x="{ox + (L + W - R) / 2}" y="{H - 24}" text-anchor="middle">file size</text>')
    out.append(f'<text x="{ox + 16}" y="{(T + H - B) / 2}" text-anchor="middle" '
               f'transform="rotate(-90 {ox + 16} {(T + H - B) / 2})">mean KLD vs F32 (log)</text>')
    out.append(f'<rect x="{ox + L}" y="{T}" width="{W - L - R}" height="{H - T - B}" fill="none" stroke="black"/>')
    plans = sorted((x, y) for k, x, y, _ in good if k == "plan")
    if len(plans) > 1:
        d = " ".join(f"{'M' if i == 0 else 'L'}{px(x):.1f},{py(y):.1f}" for i, (x, y) in enumerate(plans))
        out.append(f'<path d="{d}" fill="none" stroke="{COLOURS["plan"]}" stroke-width="2"/>')
    placed = []  # label boxes already drawn: a label that would overlap one moves down a line
    for kind, x, y, label in sorted(good, key=lambda p: (p[1], p[2])):
        c = COLOURS[kind]
        if kind == "preset":
            out.append(f'<rect x="{px(x) - 5:.1f}" y="{py(y) - 5:.1f}" width="10" height="10" fill="{c}"/>')
        else:
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="4" fill="{c}"/>')
        if kind != "plan":
            tx, ty, w = px(x) + 7, py(y) - 6, 6.2 * len(label)
            if tx + w > ox + W - R:  # keep the label inside the panel
                tx = px(x) - 7 - w
            while any(abs(ty - b) < 12 and tx < a + aw and a < tx + w for a, b, aw in placed):
                ty += 13
            placed.append((tx, ty, w))
            out.append(f'<text x="{tx:.1f}" y="{ty:.1f}" fill="{c}" font-size="11">{label}</text>')
    zero = [p[3] for p in pts if p[2] <= 0]
    if zero:
        out.append(f'<text x="{ox + L + 6}" y="{H - B - 8}" font-size="11" fill="#555">KLD 0 (not drawn): '
                   f'{", ".join(zero)}</text>')


def main():
    args = sys.argv[1:]
    json_log = None
    if "--kld-json" in args:
        i = args.index("--kld-json")
        json_log = args[i + 1]
        del args[i:i + 2]
    dst, srcs = args[0], args[1:]
    models = load(srcs, json_log)
    W, H = 520, 440
    total = W * len(models)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{total}" height="{H + 30}" font-family="sans-serif" '
           f'font-size="12">', f'<rect width="{total}" height="{H + 30}" fill="white"/>']
    for i, (name, pts) in enumerate(models.items()):
        panel(out, i * W, W, H, name, pts)
    lx = 20
    for kind, text in (("uniform", "one type for every quantized matrix"), ("preset", "documents' boundary presets"),
                       ("plan", "mixq measured plan (imatrix + measurement on the calibration split)")):
        out.append(f'<rect x="{lx}" y="{H + 8}" width="10" height="10" fill="{COLOURS[kind]}"/>')
        out.append(f'<text x="{lx + 14}" y="{H + 17}">{text}</text>')
        lx += 40 + 7 * len(text)
    out.append("</svg>")
    with open(dst, "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
