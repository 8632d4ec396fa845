"""A folder of `<category>.npy` files as one labelled, memory-mapped dataset.

Drawings are addressed by global index (class offset + row). Nothing is copied
into RAM until a batch is gathered with `take`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .bitmaps import open_bitmaps
from .categories import category_path, resolve_categories
from .errors import QDError
from .split import SplitSpec, split_rows


class BitmapDataset:
    def __init__(self, data_dir: str | os.PathLike, categories: list[str] | None = None,
                 max_per_category: int | None = None):
        self.data_dir = Path(data_dir)
        self.classes: list[str] = resolve_categories(self.data_dir, categories)
        if max_per_category is not None and max_per_category < 1:
            raise QDError(f"max_per_category must be at least 1, got {max_per_category}")
        self.max_per_category = max_per_category
        self.arrays: list[np.ndarray] = []
        for name in self.classes:
            rows = open_bitmaps(category_path(self.data_dir, name))
            if len(rows) == 0:
                raise QDError(f"{category_path(self.data_dir, name)}: category {name!r} has no drawings")
            self.arrays.append(rows[:max_per_category] if max_per_category else rows)
        self.counts = np.array([len(a) for a in self.arrays], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def fingerprint(self) -> dict:
        """What the data was: enough to tell whether a checkpoint saw the same set."""
        return {
            "categories": list(self.classes),
            "counts": [int(c) for c in self.counts],
            "max_per_category": self.max_per_category,
        }

    def split_indices(self, spec: SplitSpec) -> dict[str, np.ndarray]:
        """Global indices (ascending) of each split."""
        parts: dict[str, list[np.ndarray]] = {}
        for cls, rows in enumerate(self.arrays):
            for name, idx in split_rows(rows, spec).items():
                parts.setdefault(name, []).append(idx + self.offsets[cls])
        return {name: np.concatenate(chunks) for name, chunks in parts.items()}

    def labels(self, indices: np.ndarray) -> np.ndarray:
        return (np.searchsorted(self.offsets, indices, side="right") - 1).astype(np.int64)

    def take(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Gather drawings (B, 784) uint8 and labels (B,) int64, in the order given."""
        indices = np.asarray(indices, dtype=np.int64)
        labels = self.labels(indices)
        out = np.empty((len(indices), self.arrays[0].shape[1]), dtype=np.uint8)
        for cls in np.unique(labels):
            where = np.flatnonzero(labels == cls)
            rows = indices[where] - self.offsets[cls]
            order = np.argsort(rows, kind="stable")  # ascending reads are kind to the page cache
            out[where[order]] = self.arrays[cls][rows[order]]
        return out, labels
