"""How long each qd-* --help and --version takes, side by side with `python -c pass`.

Goal: under 0.5 s each on an idle 2-core machine (torch, onnx and coremltools load only when a
command runs). Each command is run REPEATS times, interleaved with the bare interpreter, and the
median wall time is reported with its ratio to `python -c pass`, so a busy machine shows as a
slower baseline too. Exit code 1 if any median is over the goal.

    .venv/bin/python bench/cli_help.py [--repeats 5] [--goal 0.5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = ("qd-data", "qd-train", "qd-export", "qd-infer", "qd-eval", "qd-demo")
BIN = Path(sys.executable).parent


def wall(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} CPUs"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--goal", type=float, default=0.5)
    args = parser.parse_args()
    cases = [("python -c pass", [sys.executable, "-c", "pass"])]
    for command in COMMANDS:
        cases += [(f"{command} --help", [str(BIN / command), "--help"]),
                  (f"{command} --version", [str(BIN / command), "--version"])]
    times: dict[str, list[float]] = {name: [] for name, _ in cases}
    for _ in range(args.repeats):  # interleaved: a burst of load hits every case alike
        for name, argv in cases:
            times[name].append(wall(argv))
    base = statistics.median(times["python -c pass"])
    print(f"CPU: {cpu_name()}; load average {os.getloadavg()[0]:.2f}; median of {args.repeats}")
    print(f"{'command':<24} {'median s':>9} {'x python -c pass':>17}")
    over = []
    for name, _ in cases:
        median = statistics.median(times[name])
        print(f"{name:<24} {median:9.3f} {median / base:17.1f}")
        if name != "python -c pass" and median > args.goal:
            over.append(name)
    if over:
        print(f"over {args.goal} s: {', '.join(over)}")
        return 1
    print(f"every command under {args.goal} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
