"""Quick, Draw! drawings as files: Google's numpy_bitmap `<category>.npy` (a uint8 array shaped
(N, 784)), the category names they go by, the one train/validation/test split, and a folder of
them as one labelled dataset.

Bitmap files. Validated from their header and size alone, then opened memory-mapped: the full
dataset (345 categories, ~50M drawings) never has to fit in RAM. Pickle is never allowed.

Categories. A category's name is its file stem, exactly as Google spells it (spaces allowed,
e.g. `The Eiffel Tower`). The class list is always sorted, so class indices do not depend on
directory listing order; checkpoints and models store the list itself.

The split, shared by training, export and evaluation. Each drawing goes to a split by a hash of
its 784 bytes (and the seed), so the assignment is stable across runs, machines and file order,
and the same drawing, wherever it appears, always lands in the same split. Vectorised: one pass
of integer arithmetic over memory-mapped rows, in chunks.

The dataset. A folder of `<category>.npy` files, drawings addressed by global index (class
offset + row). Nothing is copied into RAM until a batch is gathered with `take`.
"""

from __future__ import annotations

import difflib
import io
import math
import mmap
import os
import unicodedata
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from qd.command import BitmapFileError, QDError, first_line
from qd.files import open_regular

from .contract import MAX_CATEGORY_NAME_BYTES, MAX_LABELS, MAX_LABEL_CHARS, MAX_NPY_HEADER_BYTES, MAX_NPY_ROWS, PIXELS

# ----------------------------------------------------------------------------- bitmap files

@dataclass(frozen=True)
class NpyHeader:
    """A checked `.npy` header: every dimension a non-negative int, no Python objects."""

    shape: tuple[int, ...]
    fortran: bool
    dtype: np.dtype
    data_offset: int

    @property
    def data_bytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize  # Python ints: never overflows


@dataclass(frozen=True)
class BitmapHeader:
    rows: int
    data_offset: int

    @property
    def file_size(self) -> int:
        """Bytes a complete file with this header must have."""
        return self.data_offset + self.rows * PIXELS


def parse_npy_header(f: BinaryIO, name: object) -> NpyHeader:
    """Parse a `.npy` header from a binary stream at byte 0, the one way every reader does it.

    Hostile headers (any bytes, any shape, any dtype) give one BitmapFileError naming `name`;
    nothing is allocated from what the header declares. Pickled object arrays are refused.
    """
    try:
        major, minor = np.lib.format.read_magic(f)
    except ValueError:
        raise BitmapFileError(name, "not a .npy file (bad magic bytes)") from None
    try:
        if major == 1:
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f, max_header_size=MAX_NPY_HEADER_BYTES)
        elif major in (2, 3):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f, max_header_size=MAX_NPY_HEADER_BYTES)
        else:
            raise BitmapFileError(name, f"unsupported .npy version {major}.{minor}")
    except BitmapFileError:
        raise
    except Exception as exc:  # numpy parses the header with tokenize/ast: hostile bytes raise many types
        raise BitmapFileError(name, f"corrupt .npy header ({first_line(exc, 120)})") from None
    # type() is int, not isinstance: True and False are ints to Python, not dimensions
    if not isinstance(shape, tuple) or any(type(d) is not int or not 0 <= d <= MAX_NPY_ROWS for d in shape):
        raise BitmapFileError(name, f"corrupt .npy header (shape {_short_repr(shape)})")
    if dtype.hasobject:
        raise BitmapFileError(name, "array holds Python objects (needs pickle); refused")
    return NpyHeader(shape=shape, fortran=bool(fortran), dtype=dtype, data_offset=f.tell())


@contextmanager
def _bitmap_file(path: Path):
    """(open file, checked header) of a bitmap file; every failure a BitmapFileError naming it."""
    try:
        with open_regular(path) as f:
            yield f, parse_bitmap_header(f, path, size=os.fstat(f.fileno()).st_size)
    except BitmapFileError:
        raise
    except QDError as exc:  # not a regular file
        raise BitmapFileError(path, str(exc).removeprefix(f"{path}: ")) from None
    except OSError as exc:
        raise BitmapFileError(path, exc.strerror or str(exc)) from None


def read_bitmap_header(path: str | os.PathLike) -> BitmapHeader:
    """Check that `path` is a uint8 (N, 784) `.npy` whose size matches its header."""
    with _bitmap_file(Path(path)) as (_, header):
        return header


def parse_bitmap_header(f: BinaryIO, name: object, size: int | None = None) -> BitmapHeader:
    """Parse and check a bitmap `.npy` header from a binary stream positioned at byte 0.

    `name` only labels errors (a path, a URL). With `size` (the whole file's length),
    the size must match the header exactly; without it only the header is checked,
    which is how a download is vetted from its first bytes before the rest arrives.
    """
    npy = parse_npy_header(f, name)
    shape, dtype = npy.shape, npy.dtype
    if dtype != np.uint8:
        raise BitmapFileError(name, f"dtype is {dtype}, expected uint8")
    if len(shape) != 2 or shape[1] != PIXELS:
        raise BitmapFileError(name, f"shape is {shape}, expected (N, {PIXELS})")
    if npy.fortran and shape[0] > 1:
        raise BitmapFileError(name, "array is Fortran-ordered, expected C order")
    header = BitmapHeader(rows=shape[0], data_offset=npy.data_offset)
    if size is not None and size != header.file_size:
        raise BitmapFileError(
            name, f"size is {size} bytes, header promises {header.file_size} (truncated or padded)")
    return header


def bitmap_header_bytes(rows: int) -> bytes:
    """The `.npy` (version 1.0) header of a C-ordered uint8 (rows, 784) array."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": (rows, PIXELS)})
    return buf.getvalue()


def open_bitmaps(path: str | os.PathLike) -> np.ndarray:
    """Open a validated bitmap file as a read-only (N, 784) uint8 memmap (of the file that was checked)."""
    with _bitmap_file(Path(path)) as (f, header):
        if header.rows == 0:
            # np.memmap cannot map zero bytes; an empty array behaves the same for callers.
            return np.zeros((0, PIXELS), dtype=np.uint8)
        return np.memmap(f, dtype=np.uint8, mode="r", offset=header.data_offset, shape=(header.rows, PIXELS))


def _short_repr(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def release_mapped_pages(arrays: list[np.ndarray]) -> None:
    """Unmap the pages of memory-mapped arrays that this process has touched.

    Pages read through a memmap stay in the process's resident set (as file-backed
    RSS) until the kernel needs the memory; after hashing or an epoch of random reads
    that is the whole dataset. MADV_DONTNEED drops them from this process only: the data
    stays in the page cache, so the next read of the same rows is still a memory copy.
    On kernels with large page-cache folios one random row read can map 2 MiB.
    """
    if not hasattr(mmap, "MADV_DONTNEED"):
        return
    for array in arrays:
        mapping = getattr(array, "_mmap", None)
        if mapping is not None and not mapping.closed:
            mapping.madvise(mmap.MADV_DONTNEED)


# ----------------------------------------------------------------------------- categories

SUFFIX = ".npy"
_UNSEEN = {"Cc", "Cf", "Cs", "Zl", "Zp"}  # controls, format (bidi, zero-width), surrogates, line/paragraph separators
_LINE_BREAKS = set("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")  # str.splitlines() breaks at each
# What to do when a data folder is missing or empty: one hint, the same in every command.
FETCH_HINT = "get drawings with: qd-data fetch CATEGORY... or point --data at a folder of <category>.npy files"


def check_labels(labels) -> list[str]:
    """The one check of a class list as a checkpoint or a model stores it (names in output order):
    a non-empty list of distinct names within qd.data.contract's bounds. Returns it; ValueError with a
    one-line reason otherwise (the caller names the file and the field)."""
    if (not isinstance(labels, list) or not 0 < len(labels) <= MAX_LABELS
            or not all(isinstance(name, str) and 0 < len(name) <= MAX_LABEL_CHARS for name in labels)):
        raise ValueError(f"must be a non-empty list of names (at most {MAX_LABELS:,}, each 1 to {MAX_LABEL_CHARS} "
                         "characters)")
    if len(set(labels)) != len(labels):
        raise ValueError("has duplicate names")
    return labels


def check_category_name(category: str) -> str:
    """The one rule for a category name, used wherever a name comes in: `qd-data fetch` and
    `qd-data import`, `qd-data list` and every dataset (`list_categories`, `resolve_categories`).

    A name becomes a file stem and one line of a label list, so it must be non-empty, at most
    MAX_CATEGORY_NAME_BYTES of UTF-8, without leading or trailing spaces, without a path
    separator, and must not start with a dot (which also rules out `.` and `..`). It may hold no
    character that breaks a line or cannot be seen: line separators, C0/C1 controls and DEL
    (Unicode category Cc), bidi controls and other invisible format characters (Cf, e.g.
    U+200B-U+200F, U+202A-U+202E, U+2066-U+2069, U+FEFF) or surrogates (Cs: bytes that were not
    UTF-8). Returns the name in Unicode NFC, so names that differ only
    by normalisation (`café` composed or decomposed) are one category; QDError (one line) otherwise."""
    name, problem = _checked_name(category)
    if problem:
        raise QDError(f"{category!r}: {problem}")
    return name


def category_key(name: str) -> str:
    """What two names of one category share, for telling whether data and negatives overlap: Google's
    `house plant` is a folder's `House_Plant`."""
    return name.casefold().replace("_", " ")


def _checked_name(category: str) -> tuple[str, str]:
    """(the name in NFC, "") or (category, what is wrong with it)."""
    if not isinstance(category, str) or not category or category != category.strip():
        return category, "category names cannot be empty or start/end with spaces"
    bad = next((c for c in category if unicodedata.category(c) in _UNSEEN or c in _LINE_BREAKS), None)
    if bad is not None:
        return category, f"not a category name (holds the invisible or line-breaking character U+{ord(bad):04X})"
    name = unicodedata.normalize("NFC", category)
    if "/" in name or "\\" in name or name.startswith("."):
        return category, "not a category name (no slashes, no leading dot)"
    size = len(name.encode("utf-8"))
    if size > MAX_CATEGORY_NAME_BYTES:
        return category, f"category name too long ({size} bytes of UTF-8, at most {MAX_CATEGORY_NAME_BYTES})"
    return name, ""


def category_path(data_dir: str | os.PathLike, category: str) -> Path:
    return Path(data_dir) / f"{category}{SUFFIX}"


def category_stems(data_dir: str | os.PathLike) -> list[str]:
    """Sorted stems of the visible `<stem>.npy` files in `data_dir`, as spelt on disk, unchecked
    (what a source folder offers, what `qd-data list` shows: each is checked where it is used)."""
    data_dir = Path(data_dir)
    if not data_dir.exists():
        raise QDError(f"{data_dir}: data directory does not exist ({FETCH_HINT})")
    if not data_dir.is_dir():
        raise QDError(f"{data_dir}: not a directory")
    # Hidden names are never categories: partial downloads (`.cat.npy.part`) and
    # macOS resource forks (`._cat.npy`) live beside the real files.
    return sorted(p.name[: -len(SUFFIX)] for p in data_dir.iterdir()
                  if p.name.endswith(SUFFIX) and not p.name.startswith(".") and p.is_file())


def category_file_problem(data_dir: str | os.PathLike, stem: str) -> str:
    """Why the file `<stem>.npy` cannot be a category ('' if it can): its stem must pass
    check_category_name as it is spelt, NFC included (qd-data writes no other form), so a class
    list never holds a name that breaks a label file or looks like another."""
    name, problem = _checked_name(stem)
    if not problem and name != stem:
        problem = f"the category name is not in Unicode NFC form (as {name!r} it would be another file that looks " \
                  "the same)"
    return f"{category_path(data_dir, stem)}: {problem}; rename or remove it" if problem else ""


def list_categories(data_dir: str | os.PathLike) -> list[str]:
    """Sorted category names of the `<category>.npy` files in `data_dir`; QDError (one line
    naming the file) if one of them has a name that is not a category name."""
    stems = category_stems(data_dir)
    problem = next(filter(None, (category_file_problem(data_dir, stem) for stem in stems)), "")
    if problem:
        raise QDError(problem)
    return stems


def resolve_categories(data_dir: str | os.PathLike, requested: list[str] | None) -> list[str]:
    """The sorted class list: every category in `data_dir`, or the requested ones (checked)."""
    available = list_categories(data_dir)
    if not available:
        raise QDError(f"{data_dir}: no <category>.npy files found ({FETCH_HINT})")
    if not requested:
        return available
    wanted = [check_category_name(name.strip()) for name in requested if name.strip()]
    unknown = sorted(set(wanted) - set(available))
    if unknown:
        raise QDError(f"{data_dir}: unknown categor{'y' if len(unknown) == 1 else 'ies'} "
                      + ", ".join(name + did_you_mean(name, available) for name in unknown))
    return sorted(set(wanted))


def did_you_mean(name: str, known: list[str]) -> str:
    """' (did you mean 'x'?)' for a close match among `known`, else ''."""
    lowered = {k.lower().replace("_", " "): k for k in known}
    key = name.lower().replace("_", " ")
    if key in lowered and lowered[key] != name:
        return f" (did you mean {lowered[key]!r}?)"
    close = difflib.get_close_matches(key, list(lowered), n=1, cutoff=0.75)
    return f" (did you mean {lowered[close[0]]!r}?)" if close else ""


# ----------------------------------------------------------------------------- the split

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


# ----------------------------------------------------------------------------- the dataset

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
