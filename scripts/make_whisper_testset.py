#!/usr/bin/env python3
"""A spoken test set for Whisper (issue 14): sentences of wikitext-2's evaluation split read by
Debian's espeak-ng with a fixed voice and rate, resampled to 16 kHz mono 16-bit WAV, with the
sentences as the reference texts.

    make_whisper_testset.py OUT_DIR [-n 100] [--split evaluation|calibration] [--wiki .../wiki.test.raw]

Writes OUT_DIR/NNN.wav and OUT_DIR/list.tsv (`NNN.wav<TAB>sentence` per line: the input of
`mixq kld MODEL.bin --base F16.bin -f OUT_DIR/list.tsv`). Deterministic: the same sentences, voice
(en-us), rate (165 words per minute) and resampler on every machine with espeak-ng 1.51.

Sentences: the evaluation split is the text after the first 40% of the file's bytes, cut at a line
boundary (the project's calibration/evaluation convention, ../shared/data/README.md; `--split
calibration` reads the first 40% instead, for `mixq imatrix MODEL.bin -f LIST.tsv`). Its lines are
split at " . "; a sentence is kept when it has 6 to 24 words and holds only letters, spaces, commas,
apostrophes and hyphens between letters, so no number, symbol or wikitext escape (" @-@ ") has to be
spelled out and the reference is what was spoken. Of the K kept sentences (1,900 in wiki.test.raw),
N spread evenly over the split are read: numbers i * K // N for i < N, so the test set spans many
articles rather than the first few."""
import argparse
import pathlib
import re
import subprocess
import sys
import tempfile
import wave

import numpy as np

VOICE, RATE_WPM = "en-us", 165


def sentences(wiki: pathlib.Path, split: str = "evaluation"):
    raw = wiki.read_bytes()
    cut = raw.index(b"\n", int(len(raw) * 0.4)) + 1
    part = raw[cut:] if split == "evaluation" else raw[:cut]
    for line in part.decode("utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("="):
            continue
        for s in line.split(" . "):
            s = s.strip().rstrip(" .")
            s = s.replace(" @-@ ", "-").replace(" , ", ", ").replace(" 's", "'s").replace(" n't", "n't")
            if not re.fullmatch(r"[A-Za-z][A-Za-z ,']*(?:-[A-Za-z][A-Za-z ,']*)*", s):
                continue
            if " ," in s or ",," in s or "''" in s or s.endswith(","):
                continue
            if 6 <= len(s.split()) <= 24:
                yield s + "."


def resample_to_16k(x: np.ndarray, rate: int) -> np.ndarray:
    """Windowed-sinc interpolation (Blackman window, 32 taps each side, cut-off 0.95 x 8 kHz)."""
    if rate == 16000:
        return x
    ratio = 16000 / rate
    fc = 0.95 * min(1.0, ratio)
    n_out = int(len(x) * ratio)
    pos = np.arange(n_out) / ratio
    base = np.floor(pos).astype(np.int64)
    taps = np.arange(-31, 33)
    idx = base[:, None] + taps[None, :]
    d = pos[:, None] - idx
    h = fc * np.sinc(fc * d) * (0.42 + 0.5 * np.cos(np.pi * d / 32) + 0.08 * np.cos(2 * np.pi * d / 32))
    h[np.abs(d) >= 32] = 0
    xs = np.where((idx >= 0) & (idx < len(x)), x[np.clip(idx, 0, len(x) - 1)], 0.0)
    return (xs * h).sum(axis=1)


def synthesize(text: str, out: pathlib.Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        raw = pathlib.Path(tmp) / "espeak.wav"
        subprocess.run(["espeak-ng", "-v", VOICE, "-s", str(RATE_WPM), "-w", str(raw), text], check=True)
        with wave.open(str(raw)) as w:
            if w.getsampwidth() != 2 or w.getnchannels() != 1:
                raise SystemExit(f"espeak-ng wrote {w.getnchannels()} channels of {8 * w.getsampwidth()} bits")
            rate = w.getframerate()
            x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64) / 32768.0
    y = np.clip(np.round(resample_to_16k(x, rate) * 32768.0), -32768, 32767).astype("<i2")
    part = out.with_suffix(".part")
    with wave.open(str(part), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(y.tobytes())
    part.rename(out)


def main() -> int:
    here = pathlib.Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=pathlib.Path)
    ap.add_argument("-n", type=int, default=100, help="utterances (default 100)")
    ap.add_argument("--split", choices=["evaluation", "calibration"], default="evaluation",
                    help="the part of the file to read from (calibration: the first 40%%, for mixq imatrix)")
    ap.add_argument("--wiki", type=pathlib.Path, default=here.parent / "shared/data/wikitext-2-raw/wiki.test.raw")
    a = ap.parse_args()
    if a.n < 1:
        ap.error("-n must be at least 1")
    if not a.wiki.is_file():
        print(f"make_whisper_testset: no wikitext file at {a.wiki} (set --wiki)", file=sys.stderr)
        return 1
    a.out_dir.mkdir(parents=True, exist_ok=True)
    kept = list(sentences(a.wiki, a.split))
    if len(kept) < a.n:
        print(f"make_whisper_testset: only {len(kept)} sentences qualify", file=sys.stderr)
        return 1
    lines = []
    for i in range(a.n):
        s = kept[i * len(kept) // a.n]
        wav = a.out_dir / f"{i:03d}.wav"
        if not wav.exists():
            synthesize(s, wav)
        lines.append(f"{wav.name}\t{s}\n")
    (a.out_dir / "list.tsv").write_text("".join(lines), encoding="utf-8")
    print(a.out_dir / "list.tsv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
