"""What qd-infer reads: folders, images, .npy arrays and .ndjson drawings, mixed freely.

Every input becomes either drawings (names + 28x28 ink-high uint8 bitmaps, handed
on in chunks) or a Failure (one line: "path: reason"). A bad file never stops the
others. Images are decoded by qd.data.decode (worker processes, in order, a bounded
look-ahead so memory stays flat on huge folders), the path every command shares.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from qd.command import QDError, describe_unexpected, reason_of
from qd.data.bitmaps import SUFFIX, parse_npy_header
from qd.data.contract import IMAGE_SUFFIXES, PIXELS, SIDE
from qd.data.decode import ImageDecoder
from qd.data.images import is_image_path
from qd.data.strokes import NDJSON_SUFFIX, iter_ndjson
from qd.files import UnlistableFolder, count_lines, open_regular, walk_files

SUPPORTED_SUFFIXES = IMAGE_SUFFIXES + (SUFFIX, NDJSON_SUFFIX)
NPY_CHUNK_ROWS = 4096
FLOAT_CHECK_ROWS = 65536
FLOAT_DTYPES = (np.float16, np.float32, np.float64)


@dataclass
class Drawings:
    """A run of classified-to-be drawings: names[i] goes with bitmaps[i] ((n, 784), uint8 ink-high)."""

    names: list[str]
    bitmaps: np.ndarray


@dataclass
class Failure:
    """One input that could not be used; `message` is "path: reason" on one line, `input` the path
    (or "path:line" of an .ndjson drawing) that machine formats name in the failure's record."""

    message: str
    input: str


Event = Drawings | Failure


@dataclass(frozen=True)
class NpyRows:
    """Rows [start, stop) of a `.npy` drawing array: the share of a big file one Ray worker reads
    (qd.infer.ray). Its drawings are named as when the whole file is read."""

    path: Path
    start: int
    stop: int


# ----------------------------------------------------------------------------- discovery

def discover(paths: Iterable[str | os.PathLike], recursive: bool = True) -> Iterator[Path | Failure]:
    """Files to read, in the order given (folders sorted), or a Failure per unusable path."""
    for raw in paths:
        path = Path(raw)
        try:
            is_dir = path.is_dir()
            exists = is_dir or path.exists()
        except OSError as exc:
            yield Failure(f"{path}: {reason_of(exc)}", str(path))
            continue
        if not exists:
            yield Failure(f"{path}: no such file or directory" if not path.is_symlink()
                          else f"{path}: broken symbolic link", str(path))
        elif is_dir:
            yield from _walk(path, recursive)
        elif path.name.lower().endswith(SUPPORTED_SUFFIXES):
            yield path
        else:
            yield Failure(unsupported_type(path), str(path))


def unsupported_type(path) -> str:
    return f"{path}: unsupported file type (expected {', '.join(SUPPORTED_SUFFIXES)})"


def nothing_found(root, recursive: bool) -> str:
    where = "" if recursive else " (not searched recursively)"
    return f"{root}: no images, .npy or .ndjson files found{where}"


def _walk(root: Path, recursive: bool) -> Iterator[Path | Failure]:
    """Supported files under `root`, sorted; symlinked folders followed once (loops cut);
    hidden (dot) files and folders skipped."""
    found = 0
    for item in walk_files(root, recursive):
        if isinstance(item, UnlistableFolder):
            yield Failure(f"{item.path}: {item.reason}", str(item.path))
        elif item.name.lower().endswith(SUPPORTED_SUFFIXES):
            found += 1
            yield item
    if found == 0:
        yield Failure(nothing_found(root, recursive), str(root))


# ----------------------------------------------------------------------------- reading

@dataclass
class Plan:
    """Everything discovery found, in order, with the number of images among it."""

    items: list[Path | NpyRows | Failure]
    images: int

    @classmethod
    def of(cls, paths: Iterable[str | os.PathLike], recursive: bool = True) -> "Plan":
        return cls.from_items(list(discover(paths, recursive)))

    @classmethod
    def from_items(cls, items: list[Path | NpyRows | Failure]) -> "Plan":
        return cls(items, sum(1 for i in items if isinstance(i, Path) and is_image_path(i)))

    def drawings(self) -> int:
        """How many drawings the inputs hold (for a progress bar): images, .npy rows from their
        headers, .ndjson lines; unreadable files count as one."""
        total = 0
        for item in self.items:
            if isinstance(item, Failure) or is_image_path(item):
                total += 1
            elif item.name.lower().endswith(SUFFIX):
                try:
                    with DrawingArray.open(item) as array:
                        total += array.rows
                except QDError:
                    total += 1
            else:
                total += max(1, count_lines(item))
        return total


def read_inputs(paths: Iterable[str | os.PathLike] | Plan, recursive: bool = True, workers: int = 1,
                chunk_rows: int = NPY_CHUNK_ROWS, decoder: ImageDecoder | None = None) -> Iterator[Event]:
    """Drawings and Failures from every input, in input order.

    Images go through qd.data.decode's ImageDecoder (`workers` processes), or through
    `decoder` when the caller has one open (its pool then serves several calls)."""
    plan = paths if isinstance(paths, Plan) else Plan.of(paths, recursive)
    if decoder is None:
        with ImageDecoder(workers, expected=plan.images) as own:
            yield from _read_plan(plan, own, chunk_rows)
    else:
        yield from _read_plan(plan, decoder, chunk_rows)


def _read_plan(plan: Plan, decoder: ImageDecoder, chunk_rows: int) -> Iterator[Event]:
    pending_images: list[Path] = []
    for item in plan.items:
        if isinstance(item, Path) and is_image_path(item):
            pending_images.append(item)
            continue
        # Keep input order: flush queued images before any other kind of input.
        if pending_images:
            yield from read_images(pending_images, decoder)
            pending_images = []
        if isinstance(item, Failure):
            yield item
        elif isinstance(item, NpyRows):
            yield from guarded(item.path, read_npy(item.path, chunk_rows, item.start, item.stop))
        elif item.name.lower().endswith(SUFFIX):
            yield from guarded(item, read_npy(item, chunk_rows))
        else:
            yield from guarded(item, read_ndjson(item))
    if pending_images:
        yield from read_images(pending_images, decoder)


def guarded(path: Path, events: Iterator[Event]) -> Iterator[Event]:
    """The events of one input; anything unexpected it raises (a bug, a library failing on
    hostile bytes, memory) ends that input with one Failure line, and the next input goes on."""
    try:
        yield from events
    except QDError as exc:
        yield Failure(str(exc), str(path))
    except OSError as exc:
        yield Failure(f"{path}: {reason_of(exc)}", str(path))
    except Exception as exc:  # MemoryError included
        yield Failure(f"{path}: unexpected error ({describe_unexpected(exc)})", str(path))


def read_images(paths: list[Path], decoder: ImageDecoder, group: int = 64) -> Iterator[Event]:
    """Decoded and preprocessed images, yielded in order, in groups."""
    names: list[str] = []
    bitmaps: list[np.ndarray] = []
    for path, result in decoder.decode(paths):
        if isinstance(result, str):
            yield Failure(result, str(path))
            continue
        names.append(str(path))
        bitmaps.append(result)
        if len(names) >= group:
            yield Drawings(names, np.stack(bitmaps).reshape(-1, PIXELS))
            names, bitmaps = [], []
    if names:
        yield Drawings(names, np.stack(bitmaps).reshape(-1, PIXELS))


def read_ndjson(path: Path, chunk: int = 1024) -> Iterator[Event]:
    """One drawing per line, in chunks; a broken line is one Failure ("path:line: reason")."""
    names: list[str] = []
    bitmaps: list[np.ndarray] = []
    total = 0
    try:
        for number, _word, bitmap, error in iter_ndjson(path):
            if error is not None:
                yield Failure(f"{path}:{number}: {error}", f"{path}:{number}")
                continue
            names.append(f"{path}:{number}")
            bitmaps.append(bitmap)
            if len(names) >= chunk:
                total += len(names)
                yield Drawings(names, np.stack(bitmaps).reshape(-1, PIXELS))
                names, bitmaps = [], []
    except QDError as exc:
        yield Failure(str(exc), str(path))
        return
    except OSError as exc:
        yield Failure(f"{path}: {reason_of(exc)}", str(path))
        return
    if names:
        total += len(names)
        yield Drawings(names, np.stack(bitmaps).reshape(-1, PIXELS))
    if total == 0:
        yield Failure(f"{path}: no drawings in the file", str(path))


def read_npy(path: Path, chunk_rows: int = NPY_CHUNK_ROWS, first: int = 0, stop: int | None = None) -> Iterator[Event]:
    """Rows [first, stop) (default: all) of a validated drawing array, read in chunks (never mapped) and
    converted to uint8; float arrays are range-checked over those rows before any is used."""
    try:
        array = DrawingArray.open(path)
    except QDError as exc:
        yield Failure(str(exc), str(path))
        return
    with array:
        stop = array.rows if stop is None else min(stop, array.rows)
        try:
            if array.dtype != np.uint8:
                for start in range(first, stop, FLOAT_CHECK_ROWS):
                    check_float_range(path, array.read(start, min(stop, start + FLOAT_CHECK_ROWS)))
            for start in range(first, stop, chunk_rows):
                chunk = array.read(start, min(stop, start + chunk_rows))
                if chunk.dtype != np.uint8:
                    chunk = floats_to_uint8(chunk)
                names = [str(path)] if array.single else [f"{path}[{i}]" for i in range(start, start + len(chunk))]
                yield Drawings(names, chunk)
        except QDError as exc:
            yield Failure(str(exc), str(path))


class DrawingArray:
    """A `.npy` of drawings, checked from its header and size, read row chunk by row chunk with
    pread: never pickle, never a memory map (so a file truncated while it is read is one error
    line, not SIGBUS, and resident memory stays at one chunk however big the file is).

    C-ordered rows are one read per chunk; a Fortran-ordered array, one read per pixel column.
    """

    def __init__(self, path: Path, f, header, rows: int, single: bool):
        self.path, self._f, self.header = path, f, header
        self.rows, self.single = rows, single
        self.dtype = header.dtype
        # The array as (rows, *trailing): a bare drawing ((28, 28) or (784,)) is one row.
        self._trailing = tuple(header.shape[1:]) if not single else tuple(header.shape)

    @classmethod
    def open(cls, path: Path) -> "DrawingArray":
        try:
            f = open_regular(path)
        except OSError as exc:
            raise QDError(f"{path}: {reason_of(exc)}") from None
        try:
            size = os.fstat(f.fileno()).st_size
            header = parse_npy_header(f, path)
            rows, single = _check_drawing_header(path, header, size)
            return cls(path, f, header, rows, single)
        except BaseException:
            f.close()
            raise

    def __enter__(self) -> "DrawingArray":
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as a fresh C-ordered (n, 784) array of the file's dtype."""
        stop = min(stop, self.rows)
        n, item = stop - start, self.dtype.itemsize
        if not self.header.fortran:
            out = np.empty((n, PIXELS), dtype=self.dtype)
            self._read_into(out, self.header.data_offset + start * PIXELS * item)
            return out
        # Fortran order: pixel column m holds all rows, contiguous; take rows [start, stop) of each.
        columns = np.empty((PIXELS, n), dtype=self.dtype)
        for m in range(PIXELS):
            self._read_into(columns[m], self.header.data_offset + (m * self.rows + start) * item)
        block = columns.reshape(-1).reshape((n, *self._trailing), order="F")
        return np.ascontiguousarray(block).reshape(n, PIXELS)

    def _read_into(self, out: np.ndarray, offset: int) -> None:
        """Fill `out` with the file's bytes from `offset` (straight into it: no second copy)."""
        view = memoryview(out).cast("B")
        fd = self._f.fileno()
        got = 0
        while got < len(view):
            if hasattr(os, "preadv"):
                part = os.preadv(fd, [view[got:]], offset + got)
            else:  # macOS: no preadv; this reader is used by one thread at a time
                os.lseek(fd, offset + got, os.SEEK_SET)
                part = os.readv(fd, [view[got:]])
            if not part:
                raise QDError(f"{self.path}: the file shrank while it was read (no bytes at offset "
                              f"{offset + got:,} of the {self.header.data_offset + self.header.data_bytes:,} "
                              "its header promises)")
            got += part


def _check_drawing_header(path: Path, header, size: int) -> tuple[int, bool]:
    """(rows, single drawing?) for a drawing array's header, or one QDError naming the file."""
    dtype, shape = header.dtype, header.shape
    if not (dtype == np.uint8 or dtype.type in FLOAT_DTYPES) or dtype.fields is not None:
        raise QDError(f"{path}: dtype is {dtype}, expected uint8 (0-255) or float (0-1)")
    rows = _rows_of(shape)
    if rows is None:
        raise QDError(f"{path}: shape is {shape}, expected (N, 784), (N, 28, 28), (28, 28) or (784,)")
    expected = header.data_offset + header.data_bytes
    if size != expected:
        raise QDError(f"{path}: size is {size} bytes, header promises {expected} (truncated or padded)")
    if rows == 0:
        raise QDError(f"{path}: the array holds no drawings")
    return rows, (len(shape) < 2 or shape == (SIDE, SIDE))


def _rows_of(shape: tuple) -> int | None:
    if shape in ((SIDE, SIDE), (PIXELS,)):
        return 1
    if len(shape) == 2 and shape[1] == PIXELS:
        return int(shape[0])
    if len(shape) == 3 and shape[1:] == (SIDE, SIDE):
        return int(shape[0])
    return None


def floats_to_uint8(values: np.ndarray) -> np.ndarray:
    """Float drawings in 0..1 (checked by check_float_range) -> uint8 0..255, rounded half up."""
    return np.floor(values.astype(np.float32) * np.float32(255) + np.float32(0.5)).astype(np.uint8)


def check_float_range(path: Path | str, flat: np.ndarray) -> None:
    chunk = np.asarray(flat, dtype=np.float64)
    if not np.isfinite(chunk).all():
        raise QDError(f"{path}: float array holds NaN or infinity")
    low, high = float(chunk.min()), float(chunk.max())
    if low < 0.0 or high > 1.0:
        raise QDError(f"{path}: float values must be in 0..1 (found {low:g}..{high:g}); "
                      "save uint8 0-255 or divide by 255")


