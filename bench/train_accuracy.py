"""Test top-1 of `--arch seed` vs the default architecture at the same time budget.

    python bench/train_accuracy.py [--epochs 6] [--max-per-category 1500] [--budget wall|cpu] [--variants ...]

All runs use the shared categories (27 today), the one split, batch 256 and --seed 0.
The budget is wall-clock time (the issue's measure; run it on otherwise idle cores) or,
with --budget cpu, CPU time of this process (user + system, all threads), which a
busy shared machine disturbs less.

  1. the default architecture trains for --epochs epochs      -> its time T
  2. the seed architecture is probed for 1 and for 3 epochs    -> time per epoch t and
     fixed cost f (opening the data, the split, the final test pass)
  3. the seed architecture trains round((T - f) / t) epochs    -> same budget as (1)
     (our recipe; with --seed-recipe also the seed script's: constant LR, no augmentation)
Extra --variants (e.g. compact:width=24, compact:augment=0) run at --epochs epochs.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

from qd.machine import cpu
from qd.train.checkpoint import load_checkpoint
from qd.train.cli import DEFAULT_ARCH, TrainConfig
from qd.train.loop import train
from qd.train.models import build_model, count_parameters

SHARED = Path(os.environ.get("QD_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "quickdraw" / "bitmaps"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(args, workdir: Path, label: str, **overrides) -> dict:
    settings = dict(data_dir=args.data_dir, max_per_category=args.max_per_category, epochs=args.epochs,
                    batch_size=256, seed=0, device="cpu", patience=0, quiet=True,
                    out=workdir / label.replace(" ", "_").replace(":", "_").replace(",", "_"))
    settings.update(overrides)
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    ckpt = load_checkpoint(train(TrainConfig(**settings)))
    result = {"label": label, "epochs": settings["epochs"], "cpu_s": cpu_seconds() - cpu0,
              "wall_s": time.perf_counter() - wall0, "test_top1": ckpt["test"]["top1"],
              "test_top3": ckpt["test"]["top3"], "params": ckpt["params"]}
    print(f"  {label:<38} {result['epochs']:>3} ep  cpu {result['cpu_s']:7.1f} s  wall {result['wall_s']:7.1f} s  "
          f"test top-1 {100 * result['test_top1']:6.2f}%  top-3 {100 * result['test_top3']:6.2f}%", flush=True)
    return result


def parse_variant(text: str) -> tuple[str, dict]:
    """'compact:width=24,augment=0' -> label and TrainConfig overrides."""
    arch, _, rest = text.partition(":")
    overrides: dict = {"arch": arch, "arch_kwargs": {}}
    for item in filter(None, rest.split(",")):
        key, value = item.split("=")
        if key in ("augment",):
            overrides[key] = value not in ("0", "false", "no")
        elif key in ("schedule",):
            overrides[key] = value
        elif key in ("lr", "weight_decay"):
            overrides[key] = float(value)
        elif key in ("epochs", "batch_size"):
            overrides[key] = int(value)
        else:
            overrides["arch_kwargs"][key] = float(value) if "." in value else int(value)
    return text, overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=SHARED)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--max-per-category", type=int, default=1500)
    parser.add_argument("--variants", nargs="*", default=[], help="extra runs, e.g. compact:width=24")
    parser.add_argument("--budget", choices=["wall", "cpu"], default="wall", help="what 'same budget' measures")
    parser.add_argument("--keep", type=Path, help="keep the run folders here (default: a temporary folder)")
    parser.add_argument("--skip-seed", action="store_true", help="only the --variants (architecture search)")
    parser.add_argument("--seed-recipe", action="store_true",
                        help="also the seed arch with the seed script's recipe (constant LR 1e-3, no augmentation)")
    args = parser.parse_args()

    print(f"CPU: {cpu().summary()}")
    print(f"data {args.data_dir}, max {args.max_per_category} per category, budget = {args.budget} time of "
          f"{DEFAULT_ARCH} x {args.epochs} epochs")
    with tempfile.TemporaryDirectory(prefix="qd-train-accuracy-") as tmp:
        workdir = args.keep or Path(tmp)
        results = [run(args, workdir, label, **overrides) for label, overrides in map(parse_variant, args.variants)]
        if not args.skip_seed:
            default = run(args, workdir, f"{DEFAULT_ARCH} (default)")
            key = "wall_s" if args.budget == "wall" else "cpu_s"
            probe1 = run(args, workdir, "seed probe 1", arch="seed", epochs=1)
            probe3 = run(args, workdir, "seed probe 3", arch="seed", epochs=3)
            per_epoch = max((probe3[key] - probe1[key]) / 2, 1e-3)
            fixed = max(probe1[key] - per_epoch, 0.0)
            seed_epochs = max(1, round((default[key] - fixed) / per_epoch))
            seed = run(args, workdir, "seed arch, our recipe", arch="seed", epochs=seed_epochs)
            seed_same_epochs = run(args, workdir, "seed arch, our recipe, equal epochs", arch="seed")
            results += [default, seed, seed_same_epochs]
            if args.seed_recipe:
                results.append(run(args, workdir, "seed arch, seed recipe", arch="seed", epochs=seed_epochs,
                                   augment=False, schedule="constant", lr=1e-3, weight_decay=0.0))

    print("\n| run | epochs | wall s | CPU s | test top-1 | test top-3 | top-1 error | params |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['label']} | {r['epochs']} | {r['wall_s']:.0f} | {r['cpu_s']:.0f} | {100 * r['test_top1']:.2f}% | "
              f"{100 * r['test_top3']:.2f}% | {100 * (1 - r['test_top1']):.2f}% | {r['params']:,} |")
    if not args.skip_seed:
        ratio = (1 - default["test_top1"]) / (1 - seed["test_top1"])
        print(f"\ndefault top-1 error / seed-arch top-1 error at equal {args.budget} time: {ratio:.2f} (target <= 0.50)")
    print(f"params: seed {count_parameters(build_model('seed', 27)):,}, "
          f"{DEFAULT_ARCH} {count_parameters(build_model(DEFAULT_ARCH, 27)):,} (27 classes)")


if __name__ == "__main__":
    main()
