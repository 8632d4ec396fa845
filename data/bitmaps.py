"""Google's numpy_bitmap files: `<category>.npy`, a uint8 array shaped (N, 784).

Files are validated from their header and size alone, then opened memory-mapped:
the full dataset (345 categories, ~50M drawings) never has to fit in RAM.
Pickle is never allowed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import BitmapFileError

SIDE = 28
PIXELS = SIDE * SIDE  # 784
MAX_HEADER_BYTES = 64 * 1024


@dataclass(frozen=True)
class BitmapHeader:
    rows: int
    data_offset: int


def read_bitmap_header(path: str | os.PathLike) -> BitmapHeader:
    """Check that `path` is a uint8 (N, 784) `.npy` whose size matches its header."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            try:
                major, minor = np.lib.format.read_magic(f)
            except ValueError:
                raise BitmapFileError(path, "not a .npy file (bad magic bytes)") from None
            try:
                if major == 1:
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f, max_header_size=MAX_HEADER_BYTES)
                elif major in (2, 3):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f, max_header_size=MAX_HEADER_BYTES)
                else:
                    raise BitmapFileError(path, f"unsupported .npy version {major}.{minor}")
            except (ValueError, SyntaxError, TypeError) as exc:
                raise BitmapFileError(path, f"corrupt .npy header ({_first_line(exc)})") from None
            offset = f.tell()
    except BitmapFileError:
        raise
    except OSError as exc:
        raise BitmapFileError(path, exc.strerror or str(exc)) from None
    if dtype.hasobject:
        raise BitmapFileError(path, "array holds Python objects (pickle); refused")
    if dtype != np.uint8:
        raise BitmapFileError(path, f"dtype is {dtype}, expected uint8")
    if len(shape) != 2 or shape[1] != PIXELS:
        raise BitmapFileError(path, f"shape is {shape}, expected (N, {PIXELS})")
    if fortran and shape[0] > 1:
        raise BitmapFileError(path, "array is Fortran-ordered, expected C order")
    expected = offset + shape[0] * PIXELS
    if size != expected:
        raise BitmapFileError(path, f"size is {size} bytes, header promises {expected} (truncated or padded)")
    return BitmapHeader(rows=int(shape[0]), data_offset=offset)


def open_bitmaps(path: str | os.PathLike) -> np.ndarray:
    """Open a validated bitmap file as a read-only (N, 784) uint8 memmap."""
    header = read_bitmap_header(path)
    if header.rows == 0:
        # np.memmap cannot map zero bytes; an empty array behaves the same for callers.
        return np.zeros((0, PIXELS), dtype=np.uint8)
    return np.memmap(path, dtype=np.uint8, mode="r", offset=header.data_offset, shape=(header.rows, PIXELS))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:120] if text else type(exc).__name__
