"""Batches straight from the memory-mapped bitmaps.

An epoch is a seeded permutation of one split's global indices, cut into batches;
each batch is gathered from the memmaps (`BitmapDataset.take`) and converted
uint8 -> float32 once, as a whole batch. Nothing else is held in RAM: the split's
index array (8 bytes a drawing) and a few batches in flight.

Under DDP every rank walks its own strided shard of the same permutation (padded
like `DistributedSampler` so all ranks take the same number of steps).

Two ways to overlap gathering with compute:
- `workers == 0`: one background thread prefetches batches (numpy's gather and the
  float conversion release the GIL), no extra processes;
- `workers > 0`: a torch DataLoader whose sampler hands out whole index batches, so
  each worker process gathers whole batches and no batch is produced twice.

Negatives (`qd-train --negatives`) come in batches of their own, one per step (`NegativeBatches`):
seeded permutations of the negatives' train split, one after another, as many as the steps need.

The training loop then warps each batch (`AffineAugment`): one random affine per drawing
(small rotation, scale, shift), applied to the whole batch in one `affine_grid` +
`grid_sample` call (torch only, no torchvision). Its randomness comes from an explicit
generator, so a run is reproducible and a resumed epoch replays exactly.
"""

from __future__ import annotations

import math
import queue
import threading
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from qd.data.bitmaps import BitmapDataset, release_mapped_pages
from qd.data.contract import bitmaps_to_input

PREFETCH_BATCHES = 3
# Mapped pages are released after every batch when the data is larger than this: on kernels
# with large page-cache folios (ext4, Linux 6.x) one random row read can map 2 MiB, so a few
# dozen batches would already pin gigabytes. Below it the whole set may stay mapped: releasing
# costs a madvise per file and a page fault per row of the next batch (measured: 1.3 ms vs
# 0.5 ms per batch of 256 from the 27 shared files, ~8% of a seed-architecture step).
RELEASE_ABOVE_BYTES = 512 * 2**20


def epoch_seed(seed: int, epoch: int, stream: int, rank: int = 0) -> int:
    """A distinct, reproducible 63-bit seed per (run seed, epoch, purpose, rank)."""
    mixed = np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, stream, rank]).generate_state(2, dtype=np.uint32)
    return int(mixed[0]) << 31 | int(mixed[1]) >> 1


def to_float_batch(bitmaps: np.ndarray, preprocessing: dict) -> torch.Tensor:
    """(B, 784) uint8 -> float32 (B, 1, S, S) torch tensor, by qd.data.contract.bitmaps_to_input itself.

    numpy does the conversion (one batch, single-threaded, GIL released) and torch
    wraps the result without a copy. Converting with torch ops instead woke the OpenMP
    pool from the prefetch thread; on 2 busy cores its spinning threads made each
    conversion ~500x slower (measured: 12 ms vs 0.02 ms for a batch of 100).
    """
    return torch.from_numpy(bitmaps_to_input(bitmaps, preprocessing))


@dataclass
class ShardedBatches:
    """Index batches of one split for one rank; iterable, reshuffled per `set_epoch`."""

    indices: np.ndarray
    batch_size: int
    shuffle: bool
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    epoch: int = 0
    max_batches: int | None = None  # stop each epoch early (the permutation still covers the whole split)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> np.ndarray:
        if not self.shuffle:
            order = self.indices
        else:
            rng = np.random.Generator(np.random.PCG64(epoch_seed(self.seed, self.epoch, 0)))
            order = self.indices[rng.permutation(len(self.indices))]
        if self.world_size > 1:
            per_rank = -(-len(order) // self.world_size)
            if self.shuffle:  # pad by wrapping so every rank takes the same number of steps
                padded = np.resize(order, per_rank * self.world_size)
                order = padded[self.rank :: self.world_size]
            else:  # evaluation: each drawing exactly once over all ranks
                order = order[self.rank :: self.world_size]
        return order

    def __len__(self) -> int:
        batches = -(-self._rank_size() // self.batch_size)
        return batches if self.max_batches is None else min(batches, self.max_batches)

    @property
    def samples(self) -> int:
        """Drawings this rank takes per epoch (only the last batch is short)."""
        n = self._rank_size()
        return n if self.max_batches is None else min(n, self.max_batches * self.batch_size)

    def _rank_size(self) -> int:
        n = len(self.indices)
        if self.world_size > 1:
            n = -(-n // self.world_size) if self.shuffle else len(range(self.rank, n, self.world_size))
        return n

    def __iter__(self) -> Iterator[np.ndarray]:
        order = self._order()
        for step, start in enumerate(range(0, len(order), self.batch_size)):
            if self.max_batches is not None and step >= self.max_batches:
                return
            yield order[start : start + self.batch_size]


@dataclass
class NegativeBatches:
    """`steps` index batches of `per_step` negatives per epoch, for one rank: the negatives' train split
    in seeded permutations, one after another (a small set is seen several times an epoch, a large one
    in part); reproducible per (seed, epoch, rank), like `ShardedBatches`."""

    indices: np.ndarray
    per_step: int
    steps: int
    seed: int = 0
    rank: int = 0
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps

    @property
    def samples(self) -> int:
        return self.steps * self.per_step

    def __iter__(self) -> Iterator[np.ndarray]:
        rng = np.random.Generator(np.random.PCG64(epoch_seed(self.seed, self.epoch, 3, self.rank)))
        rounds = -(-self.samples // len(self.indices))
        order = np.concatenate([self.indices[rng.permutation(len(self.indices))] for _ in range(rounds)])
        for step in range(self.steps):
            yield order[step * self.per_step : (step + 1) * self.per_step]


class _BatchGather(torch.utils.data.Dataset):
    """Map-style dataset whose 'index' is a whole batch of indices."""

    def __init__(self, dataset: BitmapDataset, preprocessing: dict):
        self.dataset = dataset
        self.preprocessing = preprocessing
        self.release_pages = sum(a.nbytes for a in dataset.arrays) > RELEASE_ABOVE_BYTES

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, batch_indices) -> tuple[torch.Tensor, torch.Tensor]:
        bitmaps, labels = self.dataset.take(np.asarray(batch_indices))
        if self.release_pages:  # keep the resident set bounded on huge datasets
            release_mapped_pages(self.dataset.arrays)
        return to_float_batch(bitmaps, self.preprocessing), torch.from_numpy(labels)


def _unwrap(batch):
    return batch


class BatchLoader:
    """Iterate (float32 images, int64 labels) batches for one split and rank."""

    def __init__(self, dataset: BitmapDataset, batches: ShardedBatches | NegativeBatches, preprocessing: dict,
                 workers: int = 0):
        self.gather = _BatchGather(dataset, preprocessing)
        self.batches = batches
        self.workers = workers
        self._loader = None
        if workers > 0:
            self._loader = torch.utils.data.DataLoader(
                # batch_size=None: each "index" the sampler yields is a whole batch of indices
                self.gather, sampler=_ListSampler(batches), batch_size=None, num_workers=workers,
                collate_fn=_unwrap, persistent_workers=True, prefetch_factor=2,
            )

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches)

    @property
    def num_samples(self) -> int:
        return self.batches.samples

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._loader is not None:
            yield from self._loader
        else:
            yield from _prefetched((self.gather[b] for b in self.batches), PREFETCH_BATCHES)


class _ListSampler(torch.utils.data.Sampler):
    """Adapts ShardedBatches (which reshuffles on set_epoch) to a DataLoader sampler of batches."""

    def __init__(self, batches: ShardedBatches | NegativeBatches):
        self.batches = batches

    def __iter__(self):
        return (b.tolist() for b in self.batches)

    def __len__(self) -> int:
        return len(self.batches)


_DONE = object()


def _prefetched(items: Iterator, depth: int) -> Iterator:
    """Run a generator in a background thread, `depth` items ahead; errors re-raised here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as exc:  # hand the failure to the consumer
            put(exc)

    thread = threading.Thread(target=produce, name="qd-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


# ---------------------------------------------------------------- augmentation

@dataclass(frozen=True)
class AffineAugment:
    max_rotation_deg: float = 10.0
    max_scale: float = 0.10        # scale in [1 - s, 1 + s]
    max_shift: float = 0.10        # fraction of the image half-width (0.1 ~ 1.4 px at 28 px)

    def __call__(self, x: torch.Tensor, generator: torch.Generator, background: float = 0.0) -> torch.Tensor:
        """Warp (B, C, H, W) `x`; pixels shifted in from outside take the value `background`."""
        b = x.shape[0]
        u = torch.rand(b, 4, generator=generator, device="cpu") * 2 - 1  # uniform in [-1, 1]
        angle = u[:, 0] * math.radians(self.max_rotation_deg)
        scale = 1 + u[:, 1] * self.max_scale
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([
            torch.stack([cos, -sin, u[:, 2] * self.max_shift], dim=1),
            torch.stack([sin, cos, u[:, 3] * self.max_shift], dim=1),
        ], dim=1).to(device=x.device, dtype=x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        if background == 0.0:
            return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        warped = F.grid_sample(x - background, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return warped + background
