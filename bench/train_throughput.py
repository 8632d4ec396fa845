"""Training throughput (samples/s), every variant measured side by side in one run.

    python bench/train_throughput.py [--samples 4096] [--rounds 3] [--compile]

Train step = forward + cross-entropy + backward + Adam, on the train split of the shared
categories. The issue's comparison uses the seed architecture for both sides:
  seed-style   an IterableDataset yielding one float tensor per drawing, category after
               category, batch 100, float32 in the default layout (the seed script's
               pipeline, minus its 4 workers: on an IterableDataset each worker would
               repeat the whole dataset)
  ours         as qd-train runs: qd.train.batches (seeded shuffled index batches gathered
               from the memmaps, converted uint8 -> float once per batch, prefetched by a
               thread), batch 256, and qd.train.loop's step (channels_last, bf16
               autocast where the CPU has it natively)
  compute-only the same batch reused every step (no data pipeline at all)
Then what each part gives (pipeline alone at batch 100 in fp32, channels_last alone), the
default architecture against compute-only (with and without augmentation), and the knobs:
batch size, layout, precision, threads, torch.compile, a worker process instead of the thread.

The machine is shared, so variants run interleaved in rounds and each figure is the
median over rounds; ratios are between figures of the same run.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from qd.data.bitmaps import BitmapDataset, SplitSpec
from qd.data.contract import DEFAULT_PREPROCESSING
from qd.machine import cpu
from qd.train.batches import AffineAugment, BatchLoader, ShardedBatches
from qd.train.cli import DEFAULT_ARCH
from qd.train.loop import autocast, input_layout, resolve_precision, to_device_layout
from qd.train.models import build_model

SHARED = Path(os.environ.get("QD_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "quickdraw" / "bitmaps"


class SeedStyleDrawings(torch.utils.data.IterableDataset):
    """The seed script's pipeline: one tensor built per drawing, categories in file order."""

    def __init__(self, dataset: BitmapDataset, indices: np.ndarray):
        self.dataset, self.indices = dataset, indices

    def __iter__(self):
        labels = self.dataset.labels(self.indices)
        for index, label in zip(self.indices, labels):
            rows = self.dataset.arrays[label]
            x = torch.tensor(np.asarray(rows[index - self.dataset.offsets[label]]), dtype=torch.float32)
            yield x.reshape(1, 28, 28) / 255.0, int(label)


def endless(make_iter):
    while True:
        yield from make_iter()


def time_steps(model, batches, samples: int, augment=None, fast: bool = True, precision: str | None = None) -> float:
    """samples/s over about `samples` drawings of training steps (after 3 warm-up steps).

    fast=True runs the step the way qd-train does (qd.train.loop: channels_last, bf16
    autocast where native); fast=False is plain float32 in the default layout, as the seed
    script ran. `precision` overrides the precision alone (for the knob table)."""
    cpu = torch.device("cpu")
    precision = precision or (resolve_precision("auto", cpu) if fast else "fp32")
    if fast:
        model = to_device_layout(model, cpu)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()

    def step(x, y):
        if augment is not None:
            x = augment(x, gen)
        if fast:
            x = input_layout(x)
        with autocast(precision, cpu):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        x, y = next(batches)
        step(x, y)
    steps = max(5, samples // len(y))
    seen, start = 0, time.perf_counter()
    for _ in range(steps):
        x, y = next(batches)
        step(x, y)
        seen += len(y)
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=SHARED)
    parser.add_argument("--samples", type=int, default=4096, help="drawings timed per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also try torch.compile (slow to compile)")
    parser.add_argument("--core", action="store_true",
                        help="only the variants behind the two targets (about 4x quicker on a slow CPU)")
    args = parser.parse_args()
    # Reusing one batch drives its loss, and then the gradients, into denormal floats that
    # run 10x slower on x86 (measured here: "compute-only" was 10x slower than training);
    # flush them to zero for every variant, so compute-only really is the upper bound.
    torch.set_flush_denormal(True)

    dataset = BitmapDataset(args.data_dir)
    train_idx = dataset.split_indices(SplitSpec())["train"]
    n_classes = dataset.num_classes
    print(f"CPU: {cpu().summary()}")
    print(f"{len(train_idx):,} train drawings, {n_classes} classes, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} cpus")

    def ours(batch, workers=0):
        loader = BatchLoader(dataset, ShardedBatches(train_idx, batch, shuffle=True, seed=0), DEFAULT_PREPROCESSING,
                             workers=workers)
        epoch = iter(range(10**9))

        def one_epoch():
            loader.set_epoch(next(epoch))
            return iter(loader)
        return endless(one_epoch)

    def seed_style(batch):
        loader = torch.utils.data.DataLoader(SeedStyleDrawings(dataset, train_idx), batch_size=batch, num_workers=0)
        return endless(lambda: iter(loader))

    def compute_only(batch):
        x, y = next(ours(batch))
        return endless(lambda: iter([(x, y)]))

    def model(arch, channels_last=False):
        torch.manual_seed(0)
        m = build_model(arch, n_classes)
        return m.to(memory_format=torch.channels_last) if channels_last else m

    aug = AffineAugment()
    d = DEFAULT_ARCH
    variants = {
        # the comparison: the seed network, seed-style pipeline vs ours (as qd-train runs it)
        "seed arch, b100: seed-style pipeline, fp32": lambda s: time_steps(model("seed"), seed_style(100), s, fast=False),
        "seed arch, b256: ours": lambda s: time_steps(model("seed"), ours(256), s),
        "seed arch, b256: compute-only": lambda s: time_steps(model("seed"), compute_only(256), s),
        # what each part gives
        "seed arch, b100: ours, fp32 default layout": lambda s: time_steps(model("seed"), ours(100), s, fast=False),
        "seed arch, b100: compute-only, fp32 default layout":
            lambda s: time_steps(model("seed"), compute_only(100), s, fast=False),
        "seed arch, b100: ours": lambda s: time_steps(model("seed"), ours(100), s),
        "seed arch, b256: ours, channels_last fp32": lambda s: time_steps(model("seed"), ours(256), s, precision="fp32"),
        "seed arch, b256: ours + augment": lambda s: time_steps(model("seed"), ours(256), s, aug),
        # the default architecture
        f"{d}, b256: ours": lambda s: time_steps(model(d), ours(256), s),
        f"{d}, b256: compute-only": lambda s: time_steps(model(d), compute_only(256), s),
        f"{d}, b256: ours + augment": lambda s: time_steps(model(d), ours(256), s, aug),
        f"{d}, b256: compute-only + augment": lambda s: time_steps(model(d), compute_only(256), s, aug),
        f"{d}, b256: ours, 1 worker process": lambda s: time_steps(model(d), ours(256, workers=1), s),
        f"{d}, b256: compute-only, fp32 default layout": lambda s: time_steps(model(d), compute_only(256), s, fast=False),
        f"{d}, b256: compute-only, channels_last fp32":
            lambda s: time_steps(model(d), compute_only(256), s, precision="fp32"),
        f"{d}, b64: compute-only": lambda s: time_steps(model(d), compute_only(64), s),
        f"{d}, b1024: compute-only": lambda s: time_steps(model(d), compute_only(1024), s),
        f"{d}, b256: compute-only, 1 thread": lambda s: with_threads(1, lambda: time_steps(
            model(d), compute_only(256), s)),
    }
    if args.core:
        core = ("seed arch, b100: seed-style pipeline, fp32", "seed arch, b256: ours", "seed arch, b256: compute-only",
                f"{d}, b256: ours", f"{d}, b256: compute-only")
        variants = {name: variants[name] for name in core}
    if args.compile:
        variants[f"{d}, b256: compute-only, torch.compile"] = lambda s: time_steps(
            torch.compile(model(d)), compute_only(256), s)

    results: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(args.rounds):
        for name, run in variants.items():
            try:
                results[name].append(run(args.samples))
            except Exception as exc:  # e.g. torch.compile without a working C++ toolchain
                print(f"  {name}: failed: {str(exc).strip().splitlines()[0][:200]}")
                results[name].append(float("nan"))
            print(f"  round {r + 1}/{args.rounds}  {name:<48} {results[name][-1]:>8,.0f} samples/s", flush=True)

    med = {name: statistics.median(v) for name, v in results.items()}
    width = max(map(len, med))
    print(f"\n{'variant':<{width}}  samples/s (median of {args.rounds})")
    for name, value in med.items():
        print(f"{name:<{width}}  {value:>10,.0f}")
    print(f"\nratios (bf16 autocast where native: {resolve_precision('auto', torch.device('cpu'))} on this CPU)")
    m = collections.defaultdict(lambda: float("nan"), med)  # --core leaves some variants out

    def ratio(a, b):
        return m[a] / m[b]
    print(f"  ours (b256) / seed-style pipeline (b100), seed arch:   {ratio('seed arch, b256: ours', 'seed arch, b100: seed-style pipeline, fp32'):.2f}x  (target >= 1.5x)")
    print(f"    same batch 100:                                      {ratio('seed arch, b100: ours', 'seed arch, b100: seed-style pipeline, fp32'):.2f}x")
    print(f"    pipeline alone (both fp32, default layout, b100):    {ratio('seed arch, b100: ours, fp32 default layout', 'seed arch, b100: seed-style pipeline, fp32'):.2f}x")
    print(f"    channels_last alone (b256, fp32):                    {ratio('seed arch, b256: ours, channels_last fp32', 'seed arch, b100: seed-style pipeline, fp32'):.2f}x")
    print(f"    with augmentation (qd-train's default):              {ratio('seed arch, b256: ours + augment', 'seed arch, b100: seed-style pipeline, fp32'):.2f}x")
    print(f"  pipeline overhead vs compute-only, seed arch b256:     {1 - ratio('seed arch, b256: ours', 'seed arch, b256: compute-only'):+.1%}  (target <= 10%)")
    print(f"  pipeline overhead vs compute-only, {d} b256:      {1 - ratio(f'{d}, b256: ours', f'{d}, b256: compute-only'):+.1%}  (target <= 10%)")
    print(f"  pipeline overhead, {d} with augment:              {1 - ratio(f'{d}, b256: ours + augment', f'{d}, b256: compute-only + augment'):+.1%}")
    print(f"  augment cost ({d}, compute-only):                 {1 - ratio(f'{d}, b256: compute-only + augment', f'{d}, b256: compute-only'):+.1%}")
    print(f"  {d}: ours step / fp32 default-layout step:        {ratio(f'{d}, b256: compute-only', f'{d}, b256: compute-only, fp32 default layout'):.2f}x")
    print(f"  {d}: channels_last fp32 / fp32 default layout:    {ratio(f'{d}, b256: compute-only, channels_last fp32', f'{d}, b256: compute-only, fp32 default layout'):.2f}x")
    print(f"  1 worker process / prefetch thread:                    {ratio(f'{d}, b256: ours, 1 worker process', f'{d}, b256: ours'):.2f}x")
    print(f"  batch 64 / 256 / 1024 (compute-only):                  {m[f'{d}, b64: compute-only']:,.0f} / {m[f'{d}, b256: compute-only']:,.0f} / {m[f'{d}, b1024: compute-only']:,.0f}")
    print(f"  1 thread / {torch.get_num_threads()} threads:                                    {ratio(f'{d}, b256: compute-only, 1 thread', f'{d}, b256: compute-only'):.2f}x")
    if args.compile:
        print(f"  torch.compile / eager:                                 {ratio(f'{d}, b256: compute-only, torch.compile', f'{d}, b256: compute-only'):.2f}x")


def with_threads(n: int, fn):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


if __name__ == "__main__":
    main()
