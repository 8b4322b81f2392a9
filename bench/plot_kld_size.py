#!/usr/bin/env python3
"""Mean KL divergence against file size, as an SVG (no plotting library needed).

    bench/plot_kld_size.py RESULTS.csv OUT.svg [TITLE]

RESULTS.csv is what bench/plan_vs_llamacpp.sh writes (tool, config, bytes, mean_kld, ...).
mixq's plans are drawn as two curves (with and without --compat llama.cpp), llama.cpp's mixes as
points; the y axis is logarithmic.
"""
import csv
import math
import sys


def main() -> None:
    src, dst = sys.argv[1], sys.argv[2]
    title = sys.argv[3] if len(sys.argv) > 3 else ""
    rows = list(csv.DictReader(open(src)))
    series = {"mixq": {}, "mixq --compat llama.cpp": {}, "llama.cpp + imatrix": {}}
    for r in rows:
        x, y = int(r["bytes"]), float(r["mean_kld"])
        if r["tool"] == "llama.cpp":
            series["llama.cpp + imatrix"][x] = (y, r["config"].replace("+imatrix", ""))
        elif r["config"].endswith("compat"):
            series["mixq --compat llama.cpp"][x] = (y, "")
        else:
            series["mixq"][x] = (y, "")
    xs = [x for s in series.values() for x in s]
    ys = [v[0] for s in series.values() for v in s.values() if v[0] > 0]
    x0, x1 = min(xs), max(xs)
    pad = (x1 - x0) * 0.05 or 1
    x0, x1 = x0 - pad, x1 + pad
    ly0, ly1 = math.floor(math.log10(min(ys))), math.ceil(math.log10(max(ys)))
    W, H, L, R, T, B = 720, 460, 80, 20, 40, 60

    def px(x: float) -> float:
        return L + (x - x0) / (x1 - x0) * (W - L - R)

    def py(y: float) -> float:
        return T + (ly1 - math.log10(y)) / (ly1 - ly0) * (H - T - B)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="14">Mean KL divergence vs file size'
           f'{" - " + title if title else ""}</text>']
    for e in range(ly0, ly1 + 1):
        y = py(10 ** e)
        out.append(f'<line x1="{L}" y1="{y:.1f}" x2="{W - R}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{L - 6}" y="{y + 4:.1f}" text-anchor="end">1e{e}</text>')
    for i in range(6):
        x = x0 + (x1 - x0) * i / 5
        out.append(f'<line x1="{px(x):.1f}" y1="{T}" x2="{px(x):.1f}" y2="{H - B}" stroke="#eee"/>')
        out.append(f'<text x="{px(x):.1f}" y="{H - B + 16}" text-anchor="middle">{x / 1e6:.3g} MB</text>'
                   if x1 > 5e6 else
                   f'<text x="{px(x):.1f}" y="{H - B + 16}" text-anchor="middle">{x / 1e3:.0f} kB</text>')
    out.append(f'<text x="{(L + W - R) / 2}" y="{H - 20}" text-anchor="middle">file size (bytes)</text>')
    out.append(f'<text x="18" y="{(T + H - B) / 2}" text-anchor="middle" '
               f'transform="rotate(-90 18 {(T + H - B) / 2})">mean KLD vs reference (log)</text>')
    out.append(f'<rect x="{L}" y="{T}" width="{W - L - R}" height="{H - T - B}" fill="none" stroke="black"/>')
    colours = {"mixq": "#1f77b4", "mixq --compat llama.cpp": "#2ca02c", "llama.cpp + imatrix": "#d62728"}
    for k, (name, pts) in enumerate(series.items()):
        c = colours[name]
        ordered = sorted((x, v[0], v[1]) for x, v in pts.items() if v[0] > 0)
        if name.startswith("mixq") and len(ordered) > 1:
            path = " ".join(f"{'M' if i == 0 else 'L'}{px(x):.1f},{py(y):.1f}" for i, (x, y, _) in enumerate(ordered))
            out.append(f'<path d="{path}" fill="none" stroke="{c}" stroke-width="2"/>')
        for x, y, label in ordered:
            if name.startswith("llama"):
                out.append(f'<rect x="{px(x) - 5:.1f}" y="{py(y) - 5:.1f}" width="10" height="10" fill="{c}"/>')
                out.append(f'<text x="{px(x) + 8:.1f}" y="{py(y) - 6:.1f}" fill="{c}">{label}</text>')
            else:
                out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3.5" fill="{c}"/>')
        out.append(f'<rect x="{W - R - 210}" y="{T + 10 + 18 * k}" width="10" height="10" fill="{c}"/>')
        out.append(f'<text x="{W - R - 194}" y="{T + 19 + 18 * k}">{name}</text>')
    out.append("</svg>")
    with open(dst, "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
