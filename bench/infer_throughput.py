"""qd-infer against the bare loops it must keep up with, side by side in one run (compare the ratios).

Every figure is the wall time of a whole process (start-up included), the two sides of a
ratio run alternately, `--rounds` times after one untimed warm-up run each, and each keeps
its median (the range is printed too), so load on a shared machine hits both alike. The
commands run with Python's bytecode cache on (in the work folder), as in any installed
environment: where PYTHONDONTWRITEBYTECODE is set, every process would otherwise compile
every module it imports, a second or so per qd-infer start on a 2-core machine
(`--no-bytecode-cache` measures that case).

  1. `.npy` path, per model: qd-infer --json and --csv (stdout to /dev/null) against a bare
     onnxruntime loop over the same array (memory-mapped rows -> float32 batches of 512 ->
     session.run, onnxruntime's default session options, as qd-infer's on this input), for N
     drawings (default 100,000); the three run in turn. Target >= 0.9x.
  2. Image folders: qd-infer --csv --workers P against a bare Pillow loop in P processes
     (open, decode, convert to L, resize to 28x28) over the same files, for P = 1 and P =
     every CPU. The folder: the shared bitmaps as 254 px and 1024 px grey-on-white PNGs
     (bench/image_folder.py). Target >= 0.5x with every CPU.
     Then small images on their own: qd-infer --json (every CPU) against the bare loop over
     254 px PNGs of thin grey strokes on white (the shared .ndjson drawings, anti-aliased,
     8-bit grey: bench/image_folder.py's make_stroke_folder), for each count in
     --small-pngs (default 2,000 and 10,000) and each model. Targets >= 0.5x and >= 0.6x.
     Beside the wall times, the CPU seconds of each side per image (user + system of the
     whole process tree, workers and fork server included: load on a shared machine
     disturbs them less than wall times).
  3. Peak memory: qd-infer over N drawings (.npy) and over 10,000 PNGs, as the largest
     sampled sum of resident memory over qd-infer and its decode workers (and the main
     process's own peak).
  4. Every command that reads images (qd-infer, qd-eval --data, qd-data import: one decode
     path) over the same PNGs in class folders, against the bare Pillow loop, every CPU;
     qd-eval with --no-plots (the report alone), then with its plots (matplotlib's import and
     three figures: a fixed few seconds whatever the folder's size).
  5. Cold start of `qd-infer --help` (target < 1 s).

    python bench/infer_throughput.py --model artifacts/exports/<default> --model artifacts/exports/<seed>
                                     [--drawings 100000] [--pngs 2000] [--rss-pngs 10000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path


from image_folder import drawings_file, make_class_folders, make_folder, make_stroke_folder
from qd.machine import cpu, usable_cpus

REPO = Path(__file__).resolve().parents[1]
# The console script, as people run it (next to this Python when the project is installed in its environment).
_SCRIPT = Path(sys.executable).with_name("qd-infer")
QD_INFER = [_SCRIPT] if _SCRIPT.exists() else [sys.executable, "-m", "qd.infer.cli"]
QD_EVAL = [_SCRIPT.with_name("qd-eval")] if _SCRIPT.exists() else [sys.executable, "-m", "qd.evaluate.cli"]
QD_DATA = [_SCRIPT.with_name("qd-data")] if _SCRIPT.exists() else [sys.executable, "-m", "qd.data.cli"]
BATCH = 512  # qd-infer's default --batch-size
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h

BARE_ONNXRUNTIME = """
import sys, numpy as np, onnxruntime as ort
rows = np.load(sys.argv[2], mmap_mode="r")
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
for start in range(0, len(rows), 512):
    batch = np.asarray(rows[start:start + 512]).reshape(-1, 1, 28, 28).astype(np.float32) / np.float32(255)
    session.run(["probabilities"], {"image": batch})
"""

BARE_PILLOW = """
import os, sys
from multiprocessing import Pool
from PIL import Image

def load(path):
    with Image.open(path) as image:
        return image.convert("L").resize((28, 28)).tobytes()

if __name__ == "__main__":
    folder, processes = sys.argv[1], int(sys.argv[2])
    paths = sorted(os.path.join(root, n) for root, _, names in os.walk(folder) for n in names if n.endswith(".png"))
    if processes == 1:
        out = [load(p) for p in paths]
    else:
        with Pool(processes) as pool:
            out = pool.map(load, paths, chunksize=8)
    assert len(out) == len(paths)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", type=Path, required=True,
                    help="export folder or model.onnx (repeat: the default network and the seed one)")
    ap.add_argument("--drawings", type=int, default=100_000)
    ap.add_argument("--pngs", type=int, default=2_000)
    ap.add_argument("--small-pngs", default="2000,10000", help="comma-separated sizes of the small-image folders")
    ap.add_argument("--rss-pngs", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip", default="", help="comma-separated sections to skip: npy, images, small, memory, commands")
    ap.add_argument("--work", type=Path, default=REPO / "artifacts" / "bench-infer")
    ap.add_argument("--no-bytecode-cache", action="store_true",
                    help="leave PYTHONDONTWRITEBYTECODE as it is (each process compiles what it imports)")
    args = ap.parse_args()
    adopt_orphans()
    if not args.no_bytecode_cache:
        use_bytecode_cache(args.work / "pycache")
    skip = set(filter(None, args.skip.split(",")))
    models = [m / "model.onnx" if m.is_dir() else m for m in args.model]
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"CPU: {cpu().summary()}; {usable_cpus()} usable; load average {os.getloadavg()[0]:.1f} "
          f"(shared machine: compare the ratios)")
    npy = drawings_file(args.work / f"drawings-{args.drawings}.npy", args.drawings)

    if "npy" not in skip:
        print(f"\n1. .npy path, {args.drawings:,} drawings, batch {BATCH} (wall s, start-up included: median "
              f"and range of {args.rounds} rounds):")
        for model in models:
            bare = [sys.executable, "-c", BARE_ONNXRUNTIME, model, npy]
            modes = ("--json", "--csv")
            cpu_s: list[list[float]] = [[] for _ in range(1 + len(modes))]
            times = in_turn([bare, *([*QD_INFER, npy, "--model", model, mode] for mode in modes)], args.rounds, cpu_s)
            for mode, ours, ours_cpu in zip(modes, times[1:], cpu_s[1:]):
                pair = SideBySide(times[0], ours, cpu_s[0], ours_cpu)
                print(f"   {arch_of(model):8s} {mode:6s}  {pair.line('bare onnxruntime', args.drawings, 'drawings', 0.9)}")

    if "images" not in skip:
        folder = make_folder(args.work / f"pngs-{args.pngs}", args.pngs, sizes=(254, 1024))
        print(f"\n2. a folder of {args.pngs:,} PNGs (254 px and 1024 px, grey on white), model {arch_of(models[0])}:")
        for processes in sorted({1, usable_cpus()}):
            bare = [sys.executable, "-c", BARE_PILLOW, folder, processes]
            ours = [*QD_INFER, folder, "--model", models[0], "--csv", "--workers", processes]
            timed = side_by_side(bare, ours, args.rounds)
            print(f"   {processes} process{'es' if processes > 1 else '  '}  "
                  f"{timed.line('bare Pillow loop', args.pngs, 'images', 0.5)}")

    if "small" not in skip:
        processes = usable_cpus()
        counts = [int(c) for c in args.small_pngs.split(",") if c]
        print(f"\n2b. small images: 254 px PNGs of thin grey strokes on white (8-bit grey), {processes} processes, "
              f"qd-infer --json (CPU: user + system seconds of the process tree per image):")
        for count, target in zip(counts, (0.5, 0.6, 0.6)):
            folder = make_stroke_folder(args.work / f"strokes-{count}", count)
            for model in models:
                bare = [sys.executable, "-c", BARE_PILLOW, folder, processes]
                ours = [*QD_INFER, folder, "--model", model, "--json", "--workers", processes]
                timed = side_by_side(bare, ours, args.rounds)
                print(f"   {count:6,} PNGs  {arch_of(model):8s} {timed.line('bare Pillow loop', count, 'images', target)}"
                      f"\n{'':27s}{timed.cpu_line(count)}; load average {os.getloadavg()[0]:.1f}")

    if "memory" not in skip:
        small = make_folder(args.work / f"pngs-{args.rss_pngs}", args.rss_pngs, sizes=(254,))
        print("\n3. peak memory (resident, sampled every 20 ms; workers included):")
        for label, target in ((f"{args.drawings:,} drawings (.npy)", npy), (f"{args.rss_pngs:,} PNGs (254 px)", small)):
            total, main_peak, wall = peak_memory([*QD_INFER, target, "--model", models[0], "--csv"])
            print(f"   {label:28s} {total / 2**20:6.0f} MiB in all, main process {main_peak / 2**20:5.0f} MiB "
                  f"({wall:.1f} s)")

    if "commands" not in skip:
        every_command_reading_images(args.work, args.pngs, models[0], args.rounds)

    print(f"\n5. cold start of `qd-infer --help`: median {cold_start():.2f} s over 5 runs (target < 1 s)")


def every_command_reading_images(work: Path, count: int, model: Path, rounds: int) -> None:
    """qd-infer, qd-eval --data and qd-data import over one folder of class-named subfolders,
    each against the bare Pillow loop over the same files, every CPU."""
    folder = make_class_folders(work / f"classes-{count}", count, sizes=(254, 1024))
    files = sum(1 for _ in folder.rglob("*.png"))
    processes = usable_cpus()
    imported, report = work / "imported", work / "eval"
    qd_eval = [*QD_EVAL, "--model", model, "--data", folder, "--backend", "onnx", "--no-speed", "--out", report]
    commands = {
        "bare Pillow loop": [sys.executable, "-c", BARE_PILLOW, folder, processes],
        "qd-infer --csv": [*QD_INFER, folder, "--model", model, "--csv", "--workers", processes],
        "qd-eval --no-plots": [*qd_eval, "--no-plots"],
        "qd-eval (plots)": qd_eval,
        "qd-data import": ["sh", "-c", 'rm -rf "$0" && exec "$@"', imported, *QD_DATA, "import", folder,
                           "--data", imported, "--workers", processes],
    }
    print(f"\n4. every command that reads images: {files:,} PNGs (254 px and 1024 px) in class folders, "
          f"{processes} processes, model {arch_of(model)} (qd-eval: --data, its report; then with its three plots):")
    times = in_turn(list(commands.values()), rounds)
    bare = statistics.median(times[0])
    for (name, _), timed in zip(commands.items(), times):
        ours = statistics.median(timed)
        print(f"   {name:18s} {_spread(timed)} ({files / ours:,.0f} images/s)"
              + ("" if timed is times[0] else f" | {bare / ours:.2f}x the bare loop"))


def use_bytecode_cache(folder: Path) -> None:
    """Let the timed commands (this process's children) read and write compiled modules in `folder`."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(folder)


def cold_start(runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([*QD_INFER, "--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def arch_of(model: Path) -> str:
    import json

    from qd.infer.model import OnnxClassifier

    arch = OnnxClassifier(model).metadata.get("qd.arch", "?")
    try:
        return json.loads(arch)["name"]
    except (ValueError, KeyError, TypeError):
        return arch


@dataclass
class SideBySide:
    """Wall seconds of the bare loop and of qd-infer, round by round (each round runs one, then the
    other), and the CPU seconds of each run's process tree."""

    bare: list[float]
    ours: list[float]
    bare_cpu: list[float]
    ours_cpu: list[float]

    def cpu_line(self, count: int) -> str:
        bare, ours = statistics.median(self.bare_cpu), statistics.median(self.ours_cpu)
        return (f"CPU: bare {bare:.2f} s ({bare / count * 1e3:.2f} ms/image) | qd-infer {ours:.2f} s "
                f"({ours / count * 1e3:.2f} ms/image) | {bare / ours:.2f}x")

    def line(self, bare_name: str, count: int, unit: str, target: float) -> str:
        bare, ours = statistics.median(self.bare), statistics.median(self.ours)
        rounds = [b / o for b, o in zip(self.bare, self.ours)]
        return (f"{bare_name} {_spread(self.bare)} ({count / bare:,.0f} {unit}/s) | qd-infer {_spread(self.ours)} "
                f"({count / ours:,.0f} {unit}/s) | {bare / ours:.2f}x (rounds {min(rounds):.2f}-{max(rounds):.2f}; "
                f"target >= {target}x)")


def _spread(times: list[float]) -> str:
    return f"{statistics.median(times):.2f} s [{min(times):.2f}-{max(times):.2f}]"


def side_by_side(a: list, b: list, rounds: int) -> SideBySide:
    cpu: list[list[float]] = [[], []]
    return SideBySide(*in_turn([a, b], rounds, cpu), *cpu)


def in_turn(commands: list[list], rounds: int, cpu: list[list[float]] | None = None) -> list[list[float]]:
    """Wall seconds of each command, run one after the other `rounds` times, after one untimed
    run of each (bytecode and page caches warm for all); into `cpu`, if given, the CPU seconds
    of each run's whole process tree."""
    times: list[list[float]] = [[] for _ in commands]
    for round_ in range(rounds + 1):
        for side, command in enumerate(commands):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            done = subprocess.run([str(c) for c in command], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True)
            wall = time.perf_counter() - started
            reap_orphans()
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if round_:
                times[side].append(wall)
                if cpu is not None:
                    cpu[side].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
            if done.returncode != 0:
                sys.exit(f"{' '.join(map(str, command))[:200]} failed: {done.stderr.strip()[-500:]}")
    return times


def adopt_orphans() -> None:
    """Linux: become the subreaper of every process the commands start, so that processes which
    outlive their parent (a fork server, the workers it reaped) end as this process's children
    and their CPU time is counted in RUSAGE_CHILDREN. Elsewhere their CPU time may be missed."""
    try:
        ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def reap_orphans(timeout: float = 10.0) -> None:
    """Wait for the adopted processes of the last command (they exit once it has)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.005)


def peak_memory(command: list) -> tuple[int, int, float]:
    """(peak of the summed RSS of the process and its descendants, peak of the process alone, wall s)."""
    started = time.perf_counter()
    proc = subprocess.Popen([str(c) for c in command], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peaks = [0, 0]

    def sample():
        while proc.poll() is None:
            tree = _descendants(proc.pid)
            sizes = {pid: _rss(pid) for pid in tree}
            peaks[0] = max(peaks[0], sum(sizes.values()))
            peaks[1] = max(peaks[1], sizes.get(proc.pid, 0))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    _, err = proc.communicate()
    sampler.join()
    reap_orphans()
    if proc.returncode != 0:
        sys.exit(f"qd-infer failed: {err.decode()[-500:]}")
    return peaks[0], peaks[1], time.perf_counter() - started


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, stack = {root}, [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    main()
