#!/usr/bin/env python3
"""Whisper quality per byte as an SVG: mean teacher-forced KLD against the F16 model (log scale)
and word error rate, each against file size, one labelled point per file.

    bench/plot_whisper_quality.py whisper_quality.csv OUT.svg

The CSV is what bench/whisper_quality.sh writes (config, bytes, wer, mean_kld, ...). Uniform
types are blue circles, --tensor-type mixes orange squares, mixq's measured plans (config
"plan@FILE": planned at FILE's size) green diamonds; the F16 base (KLD 0) is left out of the KLD panel.
"""
import csv
import math
import sys


def panel(rows, key, log, top, height, width, label, fmt_tick):
    L, R = 80, 20
    xs = [r["bytes"] for r in rows]
    x0, x1 = min(xs), max(xs)
    pad = (x1 - x0) * 0.06 or 1
    x0, x1 = x0 - pad, x1 + pad
    vals = [r[key] for r in rows if not log or r[key] > 0]
    if log:
        y0, y1 = math.floor(math.log10(min(vals))), math.ceil(math.log10(max(vals)))
        ticks = [10 ** e for e in range(y0, y1 + 1)]
        f = math.log10
    else:
        y0, y1 = 0.0, max(vals) * 1.15
        ticks = [y1 * i / 4 for i in range(5)]
        f = float
    T, B = top + 10, top + height - 40

    def px(x):
        return L + (x - x0) / (x1 - x0) * (width - L - R)

    def py(y):
        return B - (f(y) - y0) / (y1 - y0) * (B - T)

    out = [f'<rect x="{L}" y="{T}" width="{width - L - R}" height="{B - T}" fill="none" stroke="black"/>']
    for t in ticks:
        out.append(f'<line x1="{L}" y1="{py(t):.1f}" x2="{width - R}" y2="{py(t):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{L - 6}" y="{py(t) + 4:.1f}" text-anchor="end">{fmt_tick(t)}</text>')
    for i in range(6):
        x = x0 + (x1 - x0) * i / 5
        out.append(f'<text x="{px(x):.1f}" y="{B + 16}" text-anchor="middle">{x / 1e6:.1f} MB</text>')
    out.append(f'<text x="18" y="{(T + B) / 2}" text-anchor="middle" transform="rotate(-90 18 {(T + B) / 2})">'
               f'{label}</text>')
    for r in rows:
        if log and r[key] <= 0:
            continue
        x, y = px(r["bytes"]), py(r[key])
        planned = r["config"].startswith("plan@")
        mixed = "+" in r["config"] and not planned
        c = "#2ca02c" if planned else "#ff7f0e" if mixed else "#1f77b4"
        if planned:
            shape = (f'<polygon points="{x:.1f},{y - 5:.1f} {x + 5:.1f},{y:.1f} {x:.1f},{y + 5:.1f} {x - 5:.1f},{y:.1f}" '
                     f'fill="{c}"/>')
        elif mixed:
            shape = f'<rect x="{x - 4:.1f}" y="{y - 4:.1f}" width="8" height="8" fill="{c}"/>'
        else:
            shape = f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{c}"/>'

        out.append(shape)
        out.append(f'<text x="{x + 7:.1f}" y="{y - 5:.1f}" fill="{c}" font-size="10">{r["config"]}</text>')
    return out


def main() -> None:
    src, dst = sys.argv[1], sys.argv[2]
    rows = []
    for r in csv.DictReader(open(src)):
        rows.append({"config": r["config"], "bytes": int(r["bytes"]), "wer": 100 * float(r["wer"]),
                     "mean_kld": float(r["mean_kld"])})
    quant = [r for r in rows if r["mean_kld"] > 0]
    W, H = 760, 620
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="14">Whisper tiny.en: quality vs file size</text>']
    out += panel(quant, "mean_kld", True, 30, 300, W, "mean KLD vs F16 (log)", lambda t: f"1e{round(math.log10(t))}")
    out += panel(rows, "wer", False, 330, 290, W, "WER (%)", lambda t: f"{t:.1f}")
    out.append("</svg>")
    with open(dst, "w") as fh:
        fh.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
