"""CPU time of the preprocessing's steps per small image, now and at an earlier revision, side by side.

The images: `--count` 254 px PNGs of thin grey strokes on white (bench/image_folder.py's
make_stroke_folder, made in `--folder` if missing), decoded once; then, in one process and in
alternating rounds, gray_to_bitmap of each (steps 2-12) under the module as it is and as it was
at `--before` (loaded as bench/images_identity.py does). Each step's time is the CPU time
(time.process_time_ns, so other processes on a loaded machine do not count) spent in the
module function that does it, summed over the images; "rest of 7-12" is levels_to_bitmap's
own lines (masks, counts' bookkeeping, frame arithmetic, the area average's matrix products and
the rounding). Minimum over rounds, microseconds per image, BLAS on one thread as in the decode
workers; and the minor page faults per image (an allocation pattern that makes glibc hand memory
back and fault it in again costs as much as a step).

    python bench/images_profile.py [--folder DIR] [--count N] [--rounds R] [--before REV]
"""

from __future__ import annotations

import argparse
import collections
import os
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from image_folder import make_stroke_folder  # noqa: E402
from images_identity import BEFORE, module_at  # noqa: E402
from qd.data import images as now  # noqa: E402

# (label, module functions): the first of them a revision has is timed.
STEPS = (
    ("2-4 histogram, polarity", "ink_high"),
    ("5 uneven lighting", "subtract_local_background"),
    ("6 stretch table", "stretch_table"),
    ("7 counts per column/row", "_count"),
    ("7 trimmed bounds", "_trimmed_bounds"),
    ("8,10 stroke widths", "stroke_width"),
    ("8-9 crop", "_crop_zero_padded"),
    ("9 max-pool", "_max_pool"),
    ("10 thickening", "_thicken"),
    ("11 area weights", "_area_weights_yx"),
)


def instrument(module, spent: collections.Counter) -> None:
    """Wrap each step's function (and levels_to_bitmap) in `module` to add its CPU time to `spent`
    (time inside a nested wrapped call counts for the inner step only)."""
    stack = []

    def wrap(key, fn):
        def timed(*args, **kwargs):
            started = time.process_time_ns()
            stack.append(0)
            try:
                return fn(*args, **kwargs)
            finally:
                took = time.process_time_ns() - started
                inner = stack.pop()
                spent[key] += took - inner
                if stack:
                    stack[-1] += took
        return timed

    for name, key in timed_names(module).items():
        setattr(module, name, wrap(key, getattr(module, name)))


def timed_names(module) -> dict[str, str]:
    """{module function: its key in the table} of the steps `module` has."""
    names = {}
    for _, key in STEPS + (("", "levels_to_bitmap"),):
        found = next((n for n in ((key,) if isinstance(key, str) else key) if hasattr(module, n)), None)
        if found:
            names[found] = key
    return names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", type=Path, default=REPO / "artifacts" / "bench-images" / "strokes")
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--before", default=BEFORE)
    args = ap.parse_args()
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")  # as the decode workers run
    folder = make_stroke_folder(args.folder, args.count)
    grays = [now.image_to_gray(now.open_image(p)) for p in sorted(folder.glob("*.png"))[:args.count]]
    modules = {"now": now, args.before: module_at(args.before)}
    best: dict[str, dict[str, float]] = {name: {} for name in modules}
    for _ in range(args.rounds):
        for name, module in modules.items():
            spent: collections.Counter = collections.Counter()
            saved = {n: getattr(module, n) for n in timed_names(module)}
            instrument(module, spent)
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            started = time.process_time_ns()
            for gray in grays:
                module.gray_to_bitmap(gray)
            spent["total"] = time.process_time_ns() - started
            spent["faults"] = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) * 1000
            for n, fn in saved.items():
                setattr(module, n, fn)
            for key, ns in spent.items():
                best[name][key] = min(best[name].get(key, float("inf")), ns / len(grays) / 1e3)
    load = os.getloadavg()[0]
    print(f"steps 2-12 per {grays[0].shape[1]}x{grays[0].shape[0]} grey image, {len(grays):,} images, CPU us "
          f"(min of {args.rounds} rounds; load {load:.1f}, {os.cpu_count()} CPUs)")
    print(f"  {'step':28s} {args.before:>10s} {'now':>10s}")
    rows = [(label, key) for label, key in STEPS] + [("rest of 7-12", "levels_to_bitmap"), ("total", "total"),
                                                     ("(minor page faults)", "faults")]
    for label, key in rows:
        b, n = best[args.before].get(key, 0.0), best["now"].get(key, 0.0)
        print(f"  {label:28s} {b:10.1f} {n:10.1f}")
    print(f"  now / {args.before}: {best['now']['total'] / best[args.before]['total']:.2f}x CPU")


if __name__ == "__main__":
    main()
