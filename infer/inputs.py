"""What qd-infer reads: folders, images, .npy arrays and .ndjson drawings, mixed freely.

Every input becomes either drawings (names + 28x28 ink-high uint8 bitmaps, handed
on in chunks) or a Failure (one line: "path: reason"). A bad file never stops the
others. Images are decoded by qd.data.decode (worker processes, in order, a bounded
look-ahead so memory stays flat on huge folders), the path every command shares.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from qd.data.bitmaps import PIXELS, SIDE
from qd.data.errors import QDError
from qd.data.decode import ImageDecoder
from qd.data.images import IMAGE_SUFFIXES, is_image_path
from qd.data.strokes import iter_ndjson

NPY_SUFFIX = ".npy"
NDJSON_SUFFIX = ".ndjson"
SUPPORTED_SUFFIXES = IMAGE_SUFFIXES + (NPY_SUFFIX, NDJSON_SUFFIX)
MAX_NPY_HEADER = 64 * 1024
NPY_CHUNK_ROWS = 4096
FLOAT_DTYPES = (np.float16, np.float32, np.float64)


@dataclass
class Drawings:
    """A run of classified-to-be drawings: names[i] goes with bitmaps[i] ((n, 784), uint8 ink-high)."""

    names: list[str]
    bitmaps: np.ndarray


@dataclass
class Failure:
    """One input that could not be used; `message` is "path: reason" on one line."""

    message: str


Event = Drawings | Failure


# ----------------------------------------------------------------------------- discovery

def discover(paths: Iterable[str | os.PathLike], recursive: bool = True) -> Iterator[Path | Failure]:
    """Files to read, in the order given (folders sorted), or a Failure per unusable path."""
    for raw in paths:
        path = Path(raw)
        try:
            is_dir = path.is_dir()
            exists = is_dir or path.exists()
        except OSError as exc:
            yield Failure(f"{path}: {exc.strerror or exc}")
            continue
        if not exists:
            yield Failure(f"{path}: no such file or directory" if not path.is_symlink()
                          else f"{path}: broken symbolic link")
        elif is_dir:
            yield from _walk(path, recursive)
        elif path.name.lower().endswith(SUPPORTED_SUFFIXES):
            yield path
        else:
            yield Failure(f"{path}: unsupported file type (expected {', '.join(SUPPORTED_SUFFIXES)})")


def _walk(root: Path, recursive: bool) -> Iterator[Path | Failure]:
    """Supported files under `root`, sorted; symlinked folders followed once (loops cut);
    hidden (dot) files and folders skipped."""
    seen: set[str] = set()
    found = 0
    stack = [root]
    while stack:
        folder = stack.pop()
        real = os.path.realpath(folder)
        if real in seen:
            continue  # a symlink loop, or a folder reached twice
        seen.add(real)
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            yield Failure(f"{folder}: {exc.strerror or exc}")
            continue
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue  # hidden files and folders (.git, macOS ._x.png resource forks)
            try:
                if entry.is_dir():
                    if recursive:
                        subfolders.append(Path(entry.path))
                    continue
            except OSError:
                pass
            if entry.name.lower().endswith(SUPPORTED_SUFFIXES):
                found += 1
                yield Path(entry.path)
        stack.extend(reversed(subfolders))  # depth first, in name order
    if found == 0:
        where = "" if recursive else " (not searched recursively)"
        yield Failure(f"{root}: no images, .npy or .ndjson files found{where}")


# ----------------------------------------------------------------------------- reading

@dataclass
class Plan:
    """Everything discovery found, in order, with the number of images among it."""

    items: list[Path | Failure]
    images: int

    @classmethod
    def of(cls, paths: Iterable[str | os.PathLike], recursive: bool = True) -> "Plan":
        items = list(discover(paths, recursive))
        return cls(items, sum(1 for i in items if isinstance(i, Path) and is_image_path(i)))

    def drawings(self) -> int:
        """How many drawings the inputs hold (for a progress bar): images, .npy rows from their
        headers, .ndjson lines; unreadable files count as one."""
        total = 0
        for item in self.items:
            if isinstance(item, Failure) or is_image_path(item):
                total += 1
            elif item.name.lower().endswith(NPY_SUFFIX):
                try:
                    total += npy_layout(item)[-1]
                except QDError:
                    total += 1
            else:
                total += max(1, _count_lines(item))
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
        elif item.name.lower().endswith(NPY_SUFFIX):
            yield from read_npy(item, chunk_rows)
        else:
            yield from read_ndjson(item)
    if pending_images:
        yield from read_images(pending_images, decoder)


def read_images(paths: list[Path], decoder: ImageDecoder, group: int = 64) -> Iterator[Event]:
    """Decoded and preprocessed images, yielded in order, in groups."""
    names: list[str] = []
    bitmaps: list[np.ndarray] = []
    for path, result in decoder.decode(paths):
        if isinstance(result, str):
            yield Failure(result)
            continue
        names.append(str(path))
        bitmaps.append(result)
        if len(names) >= group:
            yield Drawings(names, np.stack(bitmaps).reshape(-1, PIXELS))
            names, bitmaps = [], []
    if names:
        yield Drawings(names, np.stack(bitmaps).reshape(-1, PIXELS))


def _count_lines(path: Path, block: int = 1 << 20) -> int:
    try:
        with open(path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(block), b""))
    except OSError:
        return 1


def read_ndjson(path: Path, chunk: int = 1024) -> Iterator[Event]:
    """One drawing per line, in chunks; a broken line is one Failure ("path:line: reason")."""
    names: list[str] = []
    bitmaps: list[np.ndarray] = []
    total = 0
    try:
        for number, _word, bitmap, error in iter_ndjson(path):
            if error is not None:
                yield Failure(f"{path}:{number}: {error}")
                continue
            names.append(f"{path}:{number}")
            bitmaps.append(bitmap)
            if len(names) >= chunk:
                total += len(names)
                yield Drawings(names, np.stack(bitmaps).reshape(-1, PIXELS))
                names, bitmaps = [], []
    except QDError as exc:
        yield Failure(str(exc))
        return
    except OSError as exc:
        yield Failure(f"{path}: {exc.strerror or exc}")
        return
    if names:
        total += len(names)
        yield Drawings(names, np.stack(bitmaps).reshape(-1, PIXELS))
    if total == 0:
        yield Failure(f"{path}: no drawings in the file")


def read_npy(path: Path, chunk_rows: int = NPY_CHUNK_ROWS) -> Iterator[Event]:
    """Rows of a validated drawing array, memory-mapped, in chunks converted to uint8."""
    try:
        rows, single = open_drawing_array(path)
    except QDError as exc:
        yield Failure(str(exc))
        return
    for start in range(0, len(rows), chunk_rows):
        chunk = np.asarray(rows[start:start + chunk_rows])
        if chunk.dtype != np.uint8:
            chunk = np.floor(chunk.astype(np.float32) * np.float32(255) + np.float32(0.5)).astype(np.uint8)
        yield Drawings(row_names(path, start, len(chunk), single), np.ascontiguousarray(chunk))


def row_names(path: Path, start: int, count: int, single: bool = False) -> list[str]:
    """"path[i]" for rows start.. of a .npy (just "path" for a file of one bare drawing)."""
    name = str(path)
    if single:
        return [name]
    return [f"{name}[{i}]" for i in range(start, start + count)]


def open_drawing_array(path: Path) -> tuple[np.ndarray, bool]:
    """A `.npy` of drawings as an (N, 784) array (memmap), checked from header and size; never pickle.

    The flag is True for a file holding one bare drawing ((28, 28) or (784,)).
    """
    shape, fortran, dtype, offset, rows = npy_layout(path)
    try:
        array = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=tuple(shape),
                          order="F" if fortran else "C")
    except (OSError, ValueError) as exc:
        raise QDError(f"{path}: cannot map the array ({_first_line(exc)})") from None
    flat = array.reshape(rows, PIXELS) if not fortran else np.ascontiguousarray(array).reshape(rows, PIXELS)
    if dtype != np.uint8:
        _check_float_range(path, flat)
    return flat, (len(shape) < 2 or shape == (SIDE, SIDE))


def npy_layout(path: Path) -> tuple[tuple, bool, np.dtype, int, int]:
    """(shape, fortran order, dtype, data offset, drawings) of a `.npy`, from its header, checked
    against the file's size; a QDError for anything that is not an array of drawings."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            try:
                version = np.lib.format.read_magic(f)
            except ValueError:
                raise QDError(f"{path}: not a .npy file (bad magic bytes)") from None
            try:
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f, max_header_size=MAX_NPY_HEADER)
                elif version in ((2, 0), (3, 0)):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f, max_header_size=MAX_NPY_HEADER)
                else:
                    raise QDError(f"{path}: unsupported .npy version {version[0]}.{version[1]}")
            except QDError:
                raise
            except Exception as exc:  # numpy's header parser raises many types on hostile headers
                raise QDError(f"{path}: corrupt .npy header ({_first_line(exc)})") from None
            offset = f.tell()
    except QDError:
        raise
    except OSError as exc:
        raise QDError(f"{path}: {exc.strerror or exc}") from None
    if dtype.hasobject:
        raise QDError(f"{path}: array holds Python objects (needs pickle); refused")
    if not (dtype == np.uint8 or dtype.type in FLOAT_DTYPES) or dtype.fields is not None:
        raise QDError(f"{path}: dtype is {dtype}, expected uint8 (0-255) or float (0-1)")
    rows = _rows_of(shape)
    if rows is None:
        raise QDError(f"{path}: shape is {shape}, expected (N, 784), (N, 28, 28), (28, 28) or (784,)")
    if any(not isinstance(d, int) or d < 0 for d in shape):
        raise QDError(f"{path}: corrupt .npy header (shape {shape})")
    expected = offset + math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    if size != expected:
        raise QDError(f"{path}: size is {size} bytes, header promises {expected} (truncated or padded)")
    if rows == 0:
        raise QDError(f"{path}: the array holds no drawings")
    return shape, fortran, dtype, offset, rows


def _rows_of(shape: tuple) -> int | None:
    if shape in ((SIDE, SIDE), (PIXELS,)):
        return 1
    if len(shape) == 2 and shape[1] == PIXELS:
        return int(shape[0])
    if len(shape) == 3 and shape[1:] == (SIDE, SIDE):
        return int(shape[0])
    return None


def _check_float_range(path: Path, flat: np.ndarray) -> None:
    for start in range(0, len(flat), 65536):
        chunk = np.asarray(flat[start:start + 65536], dtype=np.float64)
        if not np.isfinite(chunk).all():
            raise QDError(f"{path}: float array holds NaN or infinity")
        low, high = float(chunk.min()), float(chunk.max())
        if low < 0.0 or high > 1.0:
            raise QDError(f"{path}: float values must be in 0..1 (found {low:g}..{high:g}); "
                          "save uint8 0-255 or divide by 255")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__
