"""Measure how closely qd.data.strokes renders match Google's real bitmaps.

For each category with strokes, drawing i of <cat>.ndjson is compared with the best
matching of the first 40 rows of <cat>.npy (they are the same drawings, in order, for
most categories; the few where they are not are skipped). Prints mean Pearson correlation and mean absolute error per
parameter set, so the defaults in qd.data.strokes can be checked or re-tuned:

    python bench/tune_strokes.py [--grid]
"""

from __future__ import annotations

import argparse
import itertools
import os
from pathlib import Path

import numpy as np

from qd.data.bitmaps import open_bitmaps
from qd.data.strokes import LINE_DIAMETER, PADDING, SUPERSAMPLE, parse_ndjson_line, render_strokes

# Measured: for these categories the stroke files are not the first rows of the bitmap
# files (HR-Shekhar's bitmaps and the clock file come from other row ranges), so
# renders are compared only where the drawings are the same.
NOT_SAME_DRAWINGS = {"circle", "clock", "crown", "skull", "smiley_face", "square", "star"}
SHARED = Path(os.environ.get("QD_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "quickdraw"


def load_pairs():
    pairs = []
    for path in sorted((SHARED / "strokes").glob("*.ndjson")):
        if path.stem in NOT_SAME_DRAWINGS:
            continue
        rows = np.asarray(open_bitmaps(SHARED / "bitmaps" / f"{path.stem}.npy")[:40], dtype=np.float64)
        for line in path.read_bytes().splitlines():
            if line.strip():
                pairs.append((path.stem, parse_ndjson_line(line)[1], rows))
    return pairs


def corr(a, b):
    a = a - a.mean()
    b = b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum() + 1e-12))


def score(pairs, **params):
    cs, maes = [], []
    for _, strokes, rows in pairs:
        r = render_strokes(strokes, **params).reshape(-1).astype(np.float64)
        c = [corr(r, row) for row in rows]
        best = int(np.argmax(c))
        cs.append(c[best])
        maes.append(float(np.abs(r - rows[best]).mean()))
    return np.array(cs), np.array(maes)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--grid", action="store_true")
    args = ap.parse_args()
    pairs = load_pairs()
    grid = [dict(line_diameter=LINE_DIAMETER, padding=PADDING, supersample=SUPERSAMPLE)]
    if args.grid:
        grid = [dict(line_diameter=l, padding=p, supersample=s)
                for l, p, s in itertools.product([14, 15, 16, 17, 18], [14, 16, 18], [4, 8, 16])]
    for params in grid:
        cs, maes = score(pairs, **params)
        print(f"{params}: drawings {len(cs)}  mean corr {cs.mean():.4f}  median {np.median(cs):.4f}  "
              f"min {cs.min():.3f}  >0.9: {(cs > 0.9).mean():.1%}  MAE {maes.mean():.2f}")


if __name__ == "__main__":
    main()
