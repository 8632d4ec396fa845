"""The one train/validation/test split, shared by training, export and evaluation.

Each drawing goes to a split by a hash of its 784 bytes (and the seed), so the
assignment is stable across runs, machines and file order, and the same drawing,
wherever it appears, always lands in the same split. Vectorised: one pass of
integer arithmetic over memory-mapped rows, in chunks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .bitmaps import PIXELS, release_mapped_pages
from .errors import QDError

SCHEME = "mulhash64-splitmix-v1"
SPLITS = ("train", "val", "test")
_WORDS = PIXELS // 8  # 98 little-endian uint64 words per drawing
_CHUNK_ROWS = 1 << 16


@dataclass(frozen=True)
class SplitSpec:
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    scheme: str = SCHEME

    def __post_init__(self):
        if self.scheme != SCHEME:
            raise QDError(f"unknown split scheme {self.scheme!r} (this version knows {SCHEME!r})")
        for name, value in (("val_fraction", self.val_fraction), ("test_fraction", self.test_fraction)):
            if not 0.0 <= value < 1.0:
                raise QDError(f"{name} must be in [0, 1), got {value}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise QDError("val_fraction + test_fraction must be below 1")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SplitSpec":
        return cls(**{k: d[k] for k in ("val_fraction", "test_fraction", "seed", "scheme") if k in d})


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _word_weights(seed: int) -> np.ndarray:
    counter = np.arange(_WORDS, dtype=np.uint64) + np.uint64(seed & 0xFFFFFFFF) * np.uint64(_WORDS)
    return _splitmix64(counter) | np.uint64(1)  # odd weights


def drawing_hashes(rows: np.ndarray, seed: int = 0) -> np.ndarray:
    """64-bit hash per drawing of a (N, 784) uint8 array (memmap-friendly: chunked, pages released)."""
    weights = _word_weights(seed)
    out = np.empty(len(rows), dtype=np.uint64)
    for start in range(0, len(rows), _CHUNK_ROWS):
        chunk = np.ascontiguousarray(rows[start : start + _CHUNK_ROWS], dtype=np.uint8)
        words = chunk.view("<u8").reshape(len(chunk), _WORDS)
        with np.errstate(over="ignore"):
            mixed = (words * weights).sum(axis=1, dtype=np.uint64)
        out[start : start + len(chunk)] = _splitmix64(mixed ^ np.uint64(seed & 0xFFFFFFFF))
        release_mapped_pages([rows])  # hashing 50M drawings must not leave them all resident
    return out


def assign_splits(rows: np.ndarray, spec: SplitSpec) -> np.ndarray:
    """Split id per drawing: 0 = train, 1 = val, 2 = test (indices into SPLITS)."""
    unit = (drawing_hashes(rows, spec.seed) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    ids = np.zeros(len(rows), dtype=np.int8)
    ids[unit < spec.test_fraction + spec.val_fraction] = 1
    ids[unit < spec.test_fraction] = 2
    return ids


def split_rows(rows: np.ndarray, spec: SplitSpec) -> dict[str, np.ndarray]:
    """Row indices (int64, ascending) of each split for one category's array."""
    ids = assign_splits(rows, spec)
    return {name: np.flatnonzero(ids == i).astype(np.int64) for i, name in enumerate(SPLITS)}
