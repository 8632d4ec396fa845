"""int8 vs fp32 ONNX from one qd-export folder, side by side in one run (compare the ratios).

For batch sizes 1, 64 and 256, with 1 onnxruntime thread and with onnxruntime's default
threads, runs alternate between the two models and each keeps its median run time, so
background load on a shared machine hits both alike. Inputs are seeded random sparse
bitmaps: this network's speed does not depend on pixel values (accuracy is checked by
qd-export itself, on the test split).

    python bench/export_int8.py [artifacts/exports/<run>] [--rounds 30]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx

from qd.data.contract import META_PREPROCESSING, MODEL_INT8_ONNX, MODEL_ONNX, bitmaps_to_input, exports_dir
from qd.export.onnx_export import interleaved_throughput
from qd.infer.model import open_session
from qd.machine import cpu


def newest_export() -> Path:
    root = exports_dir()
    folders = sorted((p.parent for p in root.glob(f"*/{MODEL_INT8_ONNX}")), key=lambda p: p.stat().st_mtime)
    if not folders:
        raise SystemExit(f"no export with model.int8.onnx under {root}: run qd-export --format onnx-int8 first")
    return folders[-1]


def inputs_for(model_path: Path, count: int = 512) -> np.ndarray:
    meta = {p.key: p.value for p in onnx.load(str(model_path), load_external_data=False).metadata_props}
    prep = json.loads(meta[META_PREPROCESSING])
    rng = np.random.default_rng(0)
    bitmaps = np.where(rng.random((count, 784)) < 0.15, rng.integers(64, 256, (count, 784)), 0).astype(np.uint8)
    return bitmaps_to_input(bitmaps, prep)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", nargs="?", type=Path, default=None)
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    folder = args.folder or newest_export()
    fp32, int8 = folder / MODEL_ONNX, folder / MODEL_INT8_ONNX
    x = inputs_for(fp32)
    print(f"{folder}: int8 file is {int8.stat().st_size / fp32.stat().st_size:.2f}x the fp32 file")
    print(f"CPU: {cpu().summary()} (shared machine: compare ratios)")
    print(f"{'threads':>8} {'batch':>6} {'fp32 img/s':>12} {'int8 img/s':>12} {'int8/fp32':>10}")
    for threads in (1, None):
        sessions = {"fp32": open_session(fp32, threads=threads), "int8": open_session(int8, threads=threads)}
        for batch in (1, 64, 256):
            speed = interleaved_throughput(sessions, x, batch=batch, rounds=args.rounds)
            print(f"{threads or 'default':>8} {batch:>6} {speed['fp32']:>12,.0f} {speed['int8']:>12,.0f} "
                  f"{speed['int8'] / speed['fp32']:>9.2f}x")


if __name__ == "__main__":
    main()
