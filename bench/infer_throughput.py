"""qd-infer throughput, side by side in one run (the machine is shared: compare ratios).

Prints:
  1. raw onnxruntime images/s on pre-batched float32 tensors (the limit);
  2. qd-infer end to end on a .npy of N drawings (default 100,000), as a fraction of (1);
  3. qd-infer on a folder of PNGs (default 2,000) with --workers 1 vs 2;
  4. torch eager vs onnxruntime fp32 vs onnxruntime int8 (torch only if importable and the
     export's source checkpoint exists);
  5. cold start of `qd-infer --help`;
  6. peak RSS of qd-infer over N drawings and over 10,000 small PNGs;
  7. images/s over the first vs the last 10% of the 10,000-PNG run (no slow-down over time).

    python bench/infer_throughput.py [--model artifacts/exports/<run>] [--drawings 100000]
                                     [--pngs 2000] [--rss-pngs 10000] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("QD_SHARED", REPO.parent / "shared")) / "quickdraw"
QD_INFER = [sys.executable, "-m", "qd.infer.cli"]
BATCH = 512  # qd-infer's default --batch-size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model.onnx or export folder (default: newest export)")
    ap.add_argument("--drawings", type=int, default=100_000)
    ap.add_argument("--pngs", type=int, default=2_000)
    ap.add_argument("--rss-pngs", type=int, default=10_000)
    ap.add_argument("--work", type=Path, default=REPO / "artifacts" / "bench-infer")
    args = ap.parse_args()

    from qd.infer.model import OnnxClassifier, resolve_model_path

    model_path = resolve_model_path(args.model)
    classifier = OnnxClassifier(model_path)
    print(f"model: {model_path} ({len(classifier.labels)} classes, {classifier.metadata.get('qd.arch', '?')})")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    args.work.mkdir(parents=True, exist_ok=True)
    rows = real_rows(args.drawings)
    npy = args.work / f"drawings-{args.drawings}.npy"
    np.save(npy, rows)

    # The limit is measured just before and just after the end-to-end run (the machine is shared).
    before = raw_onnxruntime_rate(classifier, rows)
    e2e = run_qd_infer([npy, "--model", model_path, "--csv", "--batch-size", BATCH])
    after = raw_onnxruntime_rate(classifier, rows)
    limit = (before + after) / 2
    print(f"\n1. raw onnxruntime, batch {BATCH}, pre-batched tensors: {limit:,.0f} images/s (the limit; "
          f"{before:,.0f} before and {after:,.0f} after run 2)")
    print(f"2. qd-infer on {args.drawings:,} drawings (.npy, --csv > /dev/null): "
          f"{e2e['rate']:,.0f} images/s inside the command, {args.drawings / e2e['wall']:,.0f} images/s "
          f"including start-up ({e2e['wall']:.1f} s wall) -> {e2e['rate'] / limit:.0%} of the limit "
          f"(target >= 80%); peak RSS {e2e['rss_mib']:.0f} MiB")

    folder = make_pngs(args.work / f"pngs-{args.pngs}", rows, args.pngs, sizes=(128, 256, 512))
    print(f"3. qd-infer on a folder of {args.pngs:,} PNGs (128-512 px):")
    rates = {}
    for workers in (1, 2):
        run = run_qd_infer([folder, "--model", model_path, "--csv", "--workers", workers])
        rates[workers] = run["rate"]
        print(f"   --workers {workers}: {run['rate']:,.0f} images/s ({run['wall']:.1f} s wall)")
    print(f"   speed-up of 2 workers over 1: {rates[2] / rates[1]:.2f}x")

    print("4. backends, batch 256, same drawings:")
    compare_backends(model_path, rows[:20_000])

    cold = cold_start()
    print(f"5. cold start of `qd-infer --help`: median {cold:.2f} s over 5 runs (target < 1 s)")

    small = make_pngs(args.work / f"pngs-small-{args.rss_pngs}", rows, args.rss_pngs, sizes=(64,))
    run = run_qd_infer([small, "--model", model_path, "--csv"])
    print(f"6. peak RSS: {e2e['rss_mib']:.0f} MiB for {args.drawings:,} drawings (.npy); "
          f"{run['rss_mib']:.0f} MiB for {args.rss_pngs:,} PNGs ({run['rate']:,.0f} images/s)")

    first, last = steadiness(model_path, [small])
    print(f"7. no slow-down over time ({args.rss_pngs:,} PNGs, in process): first 10% {first:,.0f} images/s, "
          f"last 10% {last:,.0f} images/s (ratio {last / first:.2f})")


def steadiness(model_path: Path, inputs: list) -> tuple[float, float]:
    """images/s over the first and the last 10% of a qd-infer run (batch timestamps)."""
    from qd.infer.output import Writer
    from qd.infer.run import run_inference

    class Clock(Writer):
        def __init__(self):
            self.marks = [(time.perf_counter(), 0)]

        def rows(self, names, index, probs):
            self.marks.append((time.perf_counter(), self.marks[-1][1] + len(names)))

        def failure(self, message):
            pass

        def finish(self, summary):
            pass

    clock = Clock()
    run_inference(inputs, model=model_path, writer=clock, workers=2)
    marks = clock.marks
    tenth = max(1, (len(marks) - 1) // 10)

    def rate(a, b):
        (t0, n0), (t1, n1) = marks[a], marks[b]
        return (n1 - n0) / (t1 - t0)

    return rate(0, tenth), rate(len(marks) - 1 - tenth, len(marks) - 1)


def real_rows(n: int) -> np.ndarray:
    """n real drawings: every shared category, cycled (memory-mapped reads)."""
    from qd.data.bitmaps import open_bitmaps

    files = sorted((SHARED / "bitmaps").glob("*.npy"))
    parts = [np.asarray(open_bitmaps(f)) for f in files]
    allrows = np.concatenate(parts)
    reps = -(-n // len(allrows))
    return np.tile(allrows, (reps, 1))[:n]


def raw_onnxruntime_rate(classifier, rows: np.ndarray, seconds: float = 5.0) -> float:
    from qd.data.preprocess import bitmaps_to_input

    batches = [bitmaps_to_input(rows[i:i + BATCH], classifier.preprocessing) for i in range(0, 8 * BATCH, BATCH)]
    classifier.probabilities(batches[0])  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for batch in batches:
            classifier.probabilities(batch)
            done += len(batch)
    return done / (time.perf_counter() - started)


def run_qd_infer(args: list) -> dict:
    """Run qd-infer in a child; wall time, its own images/s (closing line) and peak RSS."""
    wrapper = ("import resource, subprocess, sys\n"
               "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)\n"
               "print(r.returncode); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); print(r.stderr)")
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", wrapper, *QD_INFER, *map(str, args)], capture_output=True,
                         text=True, check=True)
    wall = time.perf_counter() - started
    code, rss_kib, stderr = out.stdout.split("\n", 2)
    match = re.search(r"([\d,]+) drawings? classified in ([\d.]+) s", stderr)
    if code.strip() != "0" or not match:
        sys.exit(f"qd-infer failed ({code.strip()}): {stderr.strip()[-500:]}")
    count, seconds = int(match.group(1).replace(",", "")), float(match.group(2))
    return {"wall": wall, "rate": count / seconds, "rss_mib": int(rss_kib) / 1024}


def make_pngs(folder: Path, rows: np.ndarray, n: int, sizes=(256,)) -> Path:
    """n black-on-white PNG drawings of the given sizes (reused between runs)."""
    done = folder / ".complete"
    if done.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        size = sizes[i % len(sizes)]
        image = Image.fromarray(255 - rows[i % len(rows)].reshape(28, 28)).resize((size, size), Image.BILINEAR)
        image.save(folder / f"{i:05d}.png", optimize=False)
    done.touch()
    return folder


def compare_backends(model_path: Path, rows: np.ndarray) -> None:
    from qd.infer.model import OnnxClassifier

    results = {}
    fp32 = OnnxClassifier(model_path)
    results["onnxruntime fp32"] = time_backend(lambda x: fp32.predict_bitmaps(x, batch_size=256), rows)
    int8_path = model_path.with_name("model.int8.onnx")
    if int8_path.exists():
        int8 = OnnxClassifier(int8_path)
        results["onnxruntime int8"] = time_backend(lambda x: int8.predict_bitmaps(x, batch_size=256), rows)
    else:
        print(f"   onnxruntime int8: skipped ({int8_path.name} not found)")
    torch_predict = torch_backend(model_path, fp32.preprocessing)
    if torch_predict is not None:
        results["torch eager"] = time_backend(torch_predict, rows)
    reference = results["onnxruntime fp32"][1]
    for name, (rate, probs) in results.items():
        agree = (probs.argmax(1) == reference.argmax(1)).mean()
        print(f"   {name:18s} {rate:9,.0f} images/s  ({rate / results['onnxruntime fp32'][0]:.2f}x fp32; "
              f"top-1 agreement with fp32 {agree:.2%})")


def time_backend(predict, rows: np.ndarray, repeats: int = 2):
    predict(rows[:256])
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        probs = predict(rows)
        best = min(best, time.perf_counter() - started)
    return len(rows) / best, probs


def torch_backend(model_path: Path, preprocessing: dict):
    try:
        import torch

        from qd.train.checkpoint import load_checkpoint, model_from_checkpoint
    except ImportError:
        print("   torch eager: skipped (torch not installed: the edge install)")
        return None
    card = model_path.with_name("model.json")
    try:
        checkpoint = Path(json.loads(card.read_text())["source"]["checkpoint"])
    except (OSError, ValueError, KeyError):
        checkpoint = None
    if checkpoint is None or not checkpoint.exists():
        print(f"   torch eager: skipped (source checkpoint not found via {card})")
        return None
    model = model_from_checkpoint(load_checkpoint(checkpoint)).eval()
    from qd.data.preprocess import bitmaps_to_input

    def predict(rows):
        out = []
        with torch.inference_mode():
            for i in range(0, len(rows), 256):
                x = torch.from_numpy(bitmaps_to_input(rows[i:i + 256], preprocessing))
                out.append(torch.softmax(model(x), dim=1).numpy())
        return np.concatenate(out)

    return predict


def cold_start(runs: int = 5) -> float:
    exe = Path(sys.executable).with_name("qd-infer")
    command = [str(exe)] if exe.exists() else QD_INFER
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([*command, "--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


if __name__ == "__main__":
    main()
