#!/usr/bin/env python3
"""The cost model of `mixq measure` (issue 16): per-stage coefficients fitted on one measurement of a
LLaMA-family model (its stage_seconds, tensors and settings), then the predicted wall time of the
same settings on larger models and core counts.

  bench/measure_cost_model.py MEASUREMENT.json N_LAYER N_EMBD N_FF N_KV_DIM N_VOCAB TIED THREADS [GROUP ERROR_ROWS [STRIDE CHUNKS]]

(the model's shape, as the measurement's; GROUP / ERROR_ROWS / STRIDE / CHUNKS: predict those settings
instead of the measurement's own, with its coefficients; ERROR_ROWS 0 = every row)

Stages (plan/measure.h):
  reference run   chunks x n_ctx tokens through the whole model, every row through the head
  errors          per tensor: min(rows, error_rows) x row length x candidates (quantize + dequantize)
  probe quantize  per probe run: its tensors quantized whole in one type (only the probed layers'
                  with --probe-stride)
  probe runs      per probe group: chunks x n_ctx tokens from the group's first layer, the head
                  on the scored half (n_ctx / 2 rows); a token-embedding probe starts at the tokens
  with --block-proxy (the measurement's "block_proxy"): probe runs are one gain probe per layer
                  (from that layer, as above) and the token embedding's; block runs, per tensor of
                  the layers, chunks x n_ctx tokens through its block alone
Times are assumed linear in work and in cores (both stages are parallel loops over rows / row
blocks); the coefficients carry the load of the machine they were measured on.
"""
import json
import re
import sys


def layer_macs(d, ff, kvd):
    return 2 * d * d + 2 * d * kvd + 3 * d * ff


def probe_groups(n_layer, group, stride=1, kinds=7):
    """(first layer, tensors) of every probe group of a LLaMA model (measure.cpp's probe_groups;
    with a stride above 1 only the probed layers 0, S, 2S, ..., the last)."""
    out = [(0, 1)]  # the token embedding (a full run from the tokens)
    for _ in range(kinds):
        if stride > 1:
            out += [(s, 1) for s in range(n_layer) if s % stride == 0 or s == n_layer - 1]
            continue
        out.append((0, 1))
        out.append((n_layer - 1, 1))
        for s in range(1, n_layer - 1, group):
            out.append((s, min(group, n_layer - 1 - s)))
    return out


def gain_probe_macs(n_layer, d, ff, kvd, vocab, chunks, n_ctx, tied):
    """--block-proxy: one probe per layer from that layer, the token embedding's from the tokens."""
    lm, head = layer_macs(d, ff, kvd), d * vocab
    total = chunks * (n_ctx * n_layer * lm + n_ctx * head)
    total += sum(chunks * (n_ctx * (n_layer - s) * lm + (n_ctx // 2) * head) for s in range(n_layer))
    if not tied:
        total += chunks * (n_ctx // 2) * head
    return total


def block_run_macs(n_layer, d, ff, kvd, chunks, n_ctx, kinds=7):
    """--block-proxy: every tensor of the layers, its block alone."""
    return kinds * n_layer * chunks * n_ctx * layer_macs(d, ff, kvd)


def probed_fraction(n_layer, stride):
    return sum(1 for s in range(n_layer) if s % stride == 0 or s == n_layer - 1) / n_layer


def probe_macs(n_layer, d, ff, kvd, vocab, chunks, n_ctx, group, tied, stride=1):
    lm, head = layer_macs(d, ff, kvd), d * vocab
    total = 0
    for i, (s, _) in enumerate(probe_groups(n_layer, group, stride)):
        rows = n_ctx if i == 0 else n_ctx // 2  # the embedding probe computes every row
        total += chunks * (n_ctx * (n_layer - s) * lm + rows * head)
    if not tied:  # output.weight: a run of the head alone
        total += chunks * (n_ctx // 2) * head
    return total


def error_work(n_layer, d, ff, kvd, vocab, error_rows, candidates, tied):
    # (rows, row length) of every matrix
    shapes = [(d, d), (kvd, d), (kvd, d), (d, d), (ff, d), (ff, d), (d, ff)] * n_layer
    shapes.append((vocab, d))
    if not tied:
        shapes.append((vocab, d))
    return sum(min(r, error_rows) * n * candidates for r, n in shapes)


def main():
    if len(sys.argv) not in (9, 11, 13):
        sys.exit(__doc__)
    m = json.load(open(sys.argv[1]))
    L, d, ff, kvd, V = (int(x) for x in sys.argv[2:7])
    tied = sys.argv[7] in ("1", "true", "yes")
    threads = int(sys.argv[8])
    st = m["stage_seconds"]
    chunks, n_ctx, R, G = m["chunks"], m["n_ctx"], m["error_rows"] or 10**9, m["probe_group"]
    S = m.get("probe_stride", 1)
    params = sum(t["shape"][0] * t["shape"][1] for t in m["tensors"] if "interpolated_from_layers" not in t)
    # measured work of this measurement
    err_work = sum(min(t["shape"][1], R) * t["shape"][0] * sum(1 for c in t["candidates"] if c["error"] > 0 or c["type"] != t["stored"])
                   for t in m["tensors"])
    base_macs = chunks * n_ctx * (L * layer_macs(d, ff, kvd) + d * V)
    bp = m.get("block_proxy", False)
    pm = gain_probe_macs(L, d, ff, kvd, V, chunks, n_ctx, tied) if bp else probe_macs(L, d, ff, kvd, V, chunks, n_ctx, G, tied, S)
    xm = block_run_macs(L, d, ff, kvd, chunks, n_ctx) if bp else 0
    k_base = st["base"] / base_macs
    k_err = st["quantize"] / err_work
    k_pq = st["probe_quantize"] / params
    k_run = st["probe_eval"] / pm
    k_block = st["proxy_eval"] / xm if bp else 0
    if len(sys.argv) >= 11:
        G, R = int(sys.argv[9]), int(sys.argv[10]) or 10**9
        if len(sys.argv) == 13:
            S, chunks = int(sys.argv[11]), int(sys.argv[12])
        print(f"predicting --probe-group {G} --error-rows {sys.argv[10]} --probe-stride {S} --chunks {chunks}")
    print(f"measured ({threads} threads): reference run {st['base']:.1f} s = {base_macs / 1e9:.0f} GMAC "
          f"({base_macs / st['base'] / 1e9:.2f} GMAC/s); errors {st['quantize']:.1f} s = {err_work / 1e9:.2f} G "
          f"element-quantizations ({err_work / st['quantize'] / 1e6:.1f} M/s); probe quantize {st['probe_quantize']:.1f} s "
          f"= {params / 1e6:.0f} M elements; probe runs {st['probe_eval']:.1f} s = {pm / 1e9:.0f} GMAC "
          f"({pm / st['probe_eval'] / 1e9:.2f} GMAC/s)" +
          (f"; block runs {st['proxy_eval']:.1f} s = {xm / 1e9:.0f} GMAC ({xm / st['proxy_eval'] / 1e9:.2f} GMAC/s)"
           if bp else ""))
    cand = 28  # 18 types + their outlier variants where they fit (SmolLM2 averages 22.7)
    models = {
        "SmolLM2-135M": (30, 576, 1536, 192, 49152, True),
        "Llama-3.2-1B": (16, 2048, 8192, 512, 128256, True),
        "Llama-3.1-8B": (32, 4096, 14336, 1024, 128256, False),
        "Llama-3.1-70B": (80, 8192, 28672, 1024, 128256, False),
    }
    print("| model | params | reference run | errors | probe quantize | probe runs | total, 2 cores | 16 cores | 64 cores |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, (l, dd, f, kv, v, ti) in models.items():
        p = l * layer_macs(dd, f, kv) + dd * v * (1 if ti else 2)
        b = k_base * chunks * n_ctx * (l * layer_macs(dd, f, kv) + dd * v)
        e = k_err * error_work(l, dd, f, kv, v, R, cand, ti)
        # the embedding and the head are always probed; the layers' tensors at the probed layers only
        emb = dd * v * (1 if ti else 2)
        q = k_pq * (emb + (p - emb) * probed_fraction(l, S))
        if bp:  # probe runs: the gain probes plus the block runs
            r = k_run * gain_probe_macs(l, dd, f, kv, v, chunks, n_ctx, ti) + k_block * block_run_macs(l, dd, f, kv, chunks, n_ctx)
        else:
            r = k_run * probe_macs(l, dd, f, kv, v, chunks, n_ctx, G, ti, S)
        tot = b + e + q + r
        cells = " | ".join(f"{tot * threads / c / 60:.0f} min" if tot * threads / c >= 600 else f"{tot * threads / c:.0f} s"
                           for c in (2, 16, 64))
        print(f"| {name} | {p / 1e9:.2f} B | {b:.0f} s | {e:.0f} s | {q:.0f} s | {r:.0f} s | {cells} |")


if __name__ == "__main__":
    main()
