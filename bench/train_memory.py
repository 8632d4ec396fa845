"""Peak memory while training from a memory-mapped set of millions of drawings.

    python bench/train_memory.py [--drawings 10000000] [--dir /tmp/qd-train-memory] [--steps 300]

Writes (once, then reuses) a synthetic dataset of `--drawings` rows, ~784 bytes each
(10 million = 7.8 GB): real shared drawings tiled, each row made unique by writing its
number into four corner pixels, so the hash split spreads them like real data. Then a
fresh child process runs a short qd-train (the default architecture, --steps-per-epoch
steps, 0.1% validation and test splits) while a thread samples /proc/self/status.

Reported: VmHWM (peak resident set, what `ru_maxrss` reports), and the peaks of its two
parts, anonymous memory (the process's own heap: index arrays, batches, model) and
file-backed pages (memory-mapped .npy pages, which the kernel can drop at any time).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from qd.machine import cpu

SHARED = Path(os.environ.get("QD_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "quickdraw" / "bitmaps"
ROW_BYTES = 784
LIMIT_BYTES = 2 * 1024**3


def write_synthetic(folder: Path, drawings: int, categories: int) -> None:
    from qd.data.bitmaps import BitmapDataset

    base, _ = BitmapDataset(SHARED).take(np.arange(len(BitmapDataset(SHARED))))
    folder.mkdir(parents=True, exist_ok=True)
    per_category = drawings // categories
    for c in range(categories):
        path = folder / f"synthetic_{c:02d}.npy"
        if path.exists() and path.stat().st_size >= per_category * ROW_BYTES:
            continue
        tmp = path.with_suffix(".tmp")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(per_category, ROW_BYTES))
        chunk = 1 << 16
        for start in range(0, per_category, chunk):
            n = min(chunk, per_category - start)
            rows = base[(np.arange(start, start + n) * 7 + c * 1009) % len(base)]
            number = np.arange(c * per_category + start, c * per_category + start + n, dtype="<u4")
            rows[:, [0, 27, 756, 783]] = number.view(np.uint8).reshape(n, 4)
            out[start : start + n] = rows
        out.flush()
        del out
        os.replace(tmp, path)
        print(f"  wrote {path} ({per_category:,} rows)", flush=True)


class StatusSampler(threading.Thread):
    """Peak of each /proc/self/status memory field, sampled every 20 ms."""

    FIELDS = ("VmHWM", "VmRSS", "RssAnon", "RssFile")

    def __init__(self):
        super().__init__(daemon=True)
        self.peaks = dict.fromkeys(self.FIELDS, 0)
        self.done = threading.Event()

    def sample(self) -> None:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in self.peaks:
                self.peaks[key] = max(self.peaks[key], int(value.split()[0]) * 1024)

    def run(self) -> None:
        while not self.done.wait(0.02):
            self.sample()


def child(args) -> None:
    from qd.train.cli import TrainConfig
    from qd.train.loop import train

    sampler = StatusSampler()
    sampler.start()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="qd-train-memory-run-") as run_dir:
        config = TrainConfig(data_dir=args.dir, epochs=1, steps_per_epoch=args.steps, batch_size=256,
                             val_fraction=0.001, test_fraction=0.001, device="cpu", out=Path(run_dir) / "run",
                             quiet=True)
        train(config)
    sampler.sample()
    sampler.done.set()
    peaks = dict(sampler.peaks, ru_maxrss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                 seconds=time.perf_counter() - start, steps=args.steps)
    print("RESULT " + json.dumps(peaks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drawings", type=int, default=10_000_000)
    parser.add_argument("--categories", type=int, default=10)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/qd-train-memory"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    args.dir.mkdir(parents=True, exist_ok=True)
    have = sum(p.stat().st_size for p in args.dir.glob("*.npy"))
    free = shutil.disk_usage(args.dir).free
    wanted = args.drawings * ROW_BYTES
    if wanted - have > free - 2 * 1024**3:
        fit = (free - 2 * 1024**3 + have) // ROW_BYTES
        print(f"only {free / 1e9:.1f} GB free at {args.dir}: using {fit:,} drawings instead of {args.drawings:,}")
        args.drawings = int(fit)
    print(f"CPU: {cpu().summary()}")
    print(f"synthetic set: {args.drawings:,} drawings in {args.categories} files under {args.dir} "
          f"({args.drawings * ROW_BYTES / 1e9:.1f} GB)")
    t0 = time.perf_counter()
    write_synthetic(args.dir, args.drawings, args.categories)
    print(f"  ready in {time.perf_counter() - t0:.0f} s")

    cmd = [sys.executable, __file__, "--child", "--dir", str(args.dir), "--steps", str(args.steps)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"training child failed:\n{result.stderr[-3000:]}")
    peaks = json.loads(result.stdout.split("RESULT ", 1)[1])
    gib = lambda b: f"{b / 1024**3:.2f} GiB"  # noqa: E731
    print(f"\ntraining: {peaks['steps']} steps of 256 from {args.drawings:,} memory-mapped drawings "
          f"(split + train + eval) in {peaks['seconds']:.0f} s")
    print(f"  peak RSS (VmHWM):           {gib(peaks['VmHWM'])}  (ru_maxrss {gib(peaks['ru_maxrss'])})")
    print(f"  peak anonymous memory:      {gib(peaks['RssAnon'])}")
    print(f"  peak file-backed (mmap):    {gib(peaks['RssFile'])}")
    verdict = "PASS" if peaks["VmHWM"] < LIMIT_BYTES else "FAIL"
    print(f"  target peak RSS < 2 GiB:    {verdict}")


if __name__ == "__main__":
    main()
