"""qd-infer against qd-infer --ray (1 and 2 local Ray workers) on the same inputs, side by side in one run.

Every figure is the wall time of a whole `qd-infer` process, start-up included: for --ray that
is starting a local Ray, Ray Data's own actors, the workers and their onnxruntime sessions, and
renaming the output folder into place. The commands of a section run alternately, `--rounds`
times, and each keeps its median, so load on a shared machine hits them alike.

  1. N drawings in one .npy (default 100,000): qd-infer --json (stdout to /dev/null) and
     qd-infer --ray --out DIR with --workers 1 and 2.
  2. A folder of P PNGs (default 5,000; 254 px grey on white, bench/image_folder.py): the same.
  3. The fixed cost of a --ray run: one drawing through each command.

Each --ray output is checked to hold one record per drawing. On a machine with few cores the
point is Ray's overhead, not a speed-up: the figures say how large it is.

    python bench/ray_infer.py --model artifacts/exports/<name> [--drawings 100000] [--pngs 5000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from image_folder import drawings_file, make_folder
from qd.machine import cpu, usable_cpus

REPO = Path(__file__).resolve().parents[1]
QD_INFER = [sys.executable, "-m", "qd.infer.cli"]
WORKERS = (1, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="export folder or model.onnx")
    ap.add_argument("--drawings", type=int, default=100_000)
    ap.add_argument("--pngs", type=int, default=5_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--work", type=Path, default=REPO / "artifacts" / "bench-ray")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"CPU: {cpu().summary()}; {usable_cpus()} usable; load average {os.getloadavg()[0]:.1f} "
          f"(shared machine: compare the ratios)")
    npy = drawings_file(args.work / f"drawings-{args.drawings}.npy", args.drawings)
    one = drawings_file(args.work / "one.npy", 1)
    pngs = make_folder(args.work / f"pngs-{args.pngs}", args.pngs, sizes=(254,))
    sections = [(f"{args.drawings:,} drawings in one .npy", npy, args.drawings),
                (f"{args.pngs:,} PNGs (254 px)", pngs, args.pngs),
                ("fixed cost: 1 drawing", one, 1)]
    for number, (title, target, count) in enumerate(sections, start=1):
        print(f"\n{number}. {title} (median wall s of {args.rounds}, start-up included):")
        runs = {"qd-infer --json": ([*QD_INFER, target, "--model", args.model, "--json"], None)}
        for workers in WORKERS:
            out = args.work / f"out-{workers}"
            runs[f"qd-infer --ray, {workers} worker{'s' if workers > 1 else ''}"] = (
                [*QD_INFER, target, "--model", args.model, "--ray", "--out", out, "--overwrite", "--workers", workers],
                out)
        times = alternately(runs, args.rounds, count)
        plain = times["qd-infer --json"]
        for name, seconds in times.items():
            ratio = f"  -> {plain / seconds:.2f}x the speed of plain qd-infer" if runs[name][1] else ""
            rate = f" ({count / seconds:9,.0f} drawings/s)" if count > 1 else ""
            print(f"   {name:28s} {seconds:7.2f} s{rate}{ratio}")
    for workers in WORKERS:
        shutil.rmtree(args.work / f"out-{workers}", ignore_errors=True)


def alternately(runs: dict[str, tuple[list, Path | None]], rounds: int, records: int) -> dict[str, float]:
    """Median wall seconds of each command, run in turn `rounds` times; each --ray output folder
    must hold `records` JSON lines."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (command, out) in runs.items():
            started = time.perf_counter()
            done = subprocess.run([str(c) for c in command], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True)
            times[name].append(time.perf_counter() - started)
            if done.returncode != 0:
                sys.exit(f"{name} failed: {done.stderr.strip()[-800:]}")
            if out is not None:
                written = sum(len(p.read_bytes().splitlines()) for p in out.glob("*.jsonl"))
                if written != records:
                    sys.exit(f"{name}: {written:,} records written, expected {records:,}")
    return {name: statistics.median(values) for name, values in times.items()}


if __name__ == "__main__":
    main()
