"""Google's numpy_bitmap files: `<category>.npy`, a uint8 array shaped (N, 784).

Files are validated from their header and size alone, then opened memory-mapped:
the full dataset (345 categories, ~50M drawings) never has to fit in RAM.
Pickle is never allowed.
"""

from __future__ import annotations

import io
import math
import mmap
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .errors import BitmapFileError, QDError, first_line
from .files import open_regular
from .limits import MAX_NPY_HEADER_BYTES, MAX_NPY_ROWS

SIDE = 28
PIXELS = SIDE * SIDE  # 784
MAX_HEADER_BYTES = MAX_NPY_HEADER_BYTES


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
