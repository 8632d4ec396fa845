"""`qd-data import`: a person's own drawings -> Google-layout `<category>.npy` files.

Sources, mixed freely:
- a folder of class-named subfolders of images (`SRC/<category>/*.png`, searched
  recursively, never out of SRC: links leading out of it are not followed, only noted; every
  format qd-infer reads), decoded by qd.data.decode, the one parallel
  path through the one image preprocessing (qd.data.images) qd-infer uses, so training
  sees exactly what qd-infer will see;
- `.ndjson` files (Google's simplified or raw format), given directly or lying in a
  source folder, drawn by the one stroke renderer (qd.data.strokes) in the same worker
  pool; each line's category is its `word`, else the file's name (`full_raw_` and
  `full_simplified_` prefixes dropped).

Category names follow qd.data.bitmaps.check_category_name, the rule `qd-data fetch`
uses. Within a category, identical drawings (the same 784 bytes after preprocessing) are
kept once. Drawings are taken in a fixed order (sources as given, folders and files in
name order, lines in file order) and `max_per_category` keeps the first N distinct ones,
so the same sources always give the same files. Every file that cannot be read is one
failure line and is skipped. Nothing is written before every source has been read, and
then the `<category>.npy` files are written all or none (each replaces one already there).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from qd.command import BitmapFileError, QDError, reason_of
from qd.files import (LinkOutside, UnlistableFolder, atomic_targets, count_lines, folder_lock, is_within, os_errors_name,
                      walk_files)

from .bitmaps import (bitmap_header_bytes, category_file_problem, category_path, category_stems, check_category_name,
                      read_bitmap_header)
from .decode import ImageDecoder
from .images import is_image_path
from .strokes import NDJSON_SUFFIX, iter_ndjson_records

NDJSON_PREFIXES = ("full_simplified_", "full_raw_", "simplified_", "raw_")  # Google's file names
CHUNK = 256  # files or drawings handed to the decoder at a time (a capped category stops early)


@dataclass
class ImportOptions:
    max_per_category: int | None = None
    workers: int = 1


@dataclass
class CategoryResult:
    category: str
    path: Path
    rows: int
    duplicates: int = 0         # identical drawings dropped
    unread: int = 0             # files or lines of this category that could not be used
    capped: bool = False        # --max-per-category stopped it
    replaced: int | None = None  # drawings in the file this one replaced


@dataclass
class ImportReport:
    results: list[CategoryResult] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)  # files that are neither images nor .ndjson
    outside: list[Path] = field(default_factory=list)  # links leading out of a source folder: not followed
    shared: int = 0  # drawings found in more than one category (kept in each)

    @property
    def ok(self) -> bool:
        return not self.failures


@dataclass
class _Plan:
    """What the sources hold, in import order: ("images", category, paths) or ("ndjson", path)."""

    steps: list[tuple] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)
    outside: list[Path] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)  # real paths already planned: a file given twice is read once

    def first_time(self, path: Path) -> bool:
        real = os.path.realpath(path)
        if real in self.seen:
            return False
        self.seen.add(real)
        return True

    @property
    def units(self) -> int:
        """Files plus .ndjson lines: the progress bar's total."""
        return sum(len(step[2]) if step[0] == "images" else count_lines(step[1]) for step in self.steps)


class _Category:
    """One category's drawings as they are read: distinct ones only, up to the cap."""

    def __init__(self, name: str, cap: int | None):
        self.name, self.cap = name, cap
        self.rows: list[bytes] = []
        self.seen: set[bytes] = set()
        self.duplicates = self.unread = 0

    @property
    def full(self) -> bool:
        return self.cap is not None and len(self.rows) >= self.cap

    def add(self, bitmap: np.ndarray) -> bytes | None:
        """Keep a drawing unless it is a repeat (or the cap is reached); its digest if kept."""
        if self.full:
            return None
        row = np.ascontiguousarray(bitmap, dtype=np.uint8).tobytes()
        digest = hashlib.blake2b(row, digest_size=16).digest()
        if digest in self.seen:
            self.duplicates += 1
            return None
        self.seen.add(digest)
        self.rows.append(row)
        return digest


def import_drawings(sources: list[str | os.PathLike], out_dir: str | os.PathLike,
                    options: ImportOptions = ImportOptions(), advance: Callable[[int], None] = lambda n: None,
                    on_failure: Callable[[str], None] = lambda message: None,
                    planned: Callable[[int], None] = lambda units: None,
                    on_wait: Callable[[str], None] = lambda message: None) -> ImportReport:
    """Read every source, then write one `<category>.npy` per category found.

    `planned(units)` is told the number of files and lines to read, `advance(n)` how many
    were just read, `on_failure(line)` each file or line that failed, as it happens. The
    folder's writer lock (qd.files.folder_lock) is held for the whole run: another qd-data
    command writing the same folder waits for it, or makes this one wait (`on_wait(line)`).
    QDError (nothing written) when the sources hold fewer than two categories in all."""
    if options.max_per_category is not None and options.max_per_category < 1:
        raise QDError(f"--max-per-category must be at least 1, got {options.max_per_category}")
    if not sources:
        raise QDError("name at least one source: a folder of class-named subfolders, or .ndjson files")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise QDError(f"{out_dir}: output folder is a file, not a directory")
    with folder_lock(out_dir, on_wait):
        return _import_locked([Path(s) for s in sources], out_dir, options, advance, on_failure, planned)


def _import_locked(sources: list[Path], out_dir: Path, options: ImportOptions, advance, on_failure,
                   planned) -> ImportReport:
    plan = plan_sources(sources)
    report = ImportReport(ignored=plan.ignored, outside=plan.outside)

    def failed(message: str) -> None:
        report.failures.append(message)
        on_failure(message)

    for message in plan.failures:
        failed(message)
    planned(plan.units)
    categories: dict[str, _Category] = {}
    owners: dict[bytes, str] = {}

    def category(name: str) -> _Category:
        if name not in categories:
            categories[name] = _Category(name, options.max_per_category)
        return categories[name]

    def keep(cat: _Category, bitmap: np.ndarray) -> None:
        digest = cat.add(bitmap)
        if digest is not None and owners.setdefault(digest, cat.name) != cat.name:
            report.shared += 1

    with ImageDecoder(options.workers, expected=plan.units) as decoder:
        for step in plan.steps:
            if step[0] == "images":
                _read_images(decoder, category(step[1]), step[2], keep, failed, advance)
            else:
                _read_ndjson(decoder, step[1], category, keep, failed, advance)

    found = [c for c in categories.values() if c.rows]
    for cat in categories.values():
        if not cat.rows:
            failed(f"{cat.name}: no readable drawing ({cat.unread} unreadable); {category_path(out_dir, cat.name)} "
                   "not written")
    if found or not report.failures:  # with nothing readable, the failure lines have said why
        _check_enough_categories(found, out_dir, sources)
    report.results = _write_all(found, out_dir)
    return report


# ----------------------------------------------------------------------------- planning

def plan_sources(sources: list[Path]) -> _Plan:
    plan = _Plan()
    for source in sources:
        try:
            is_dir, exists = source.is_dir(), source.exists()
        except OSError as exc:
            plan.failures.append(f"{source}: {reason_of(exc)}")
            continue
        if not exists:
            plan.failures.append(f"{source}: no such file or directory")
        elif is_dir:
            _plan_folder(source, plan)
        elif source.name.lower().endswith(NDJSON_SUFFIX):
            if plan.first_time(source):
                plan.steps.append(("ndjson", source))
        else:
            plan.failures.append(f"{source}: not a folder of class folders or a .ndjson file")
    return plan


def _plan_folder(root: Path, plan: _Plan) -> None:
    """A source folder: each subfolder is a category; .ndjson files beside them are read too."""
    entries = _entries(root, plan)
    if entries is None:
        return
    loose_images = 0
    found = False
    root_real = os.path.realpath(root)
    for entry in entries:
        if not is_within(entry, root_real):  # a walk never leaves the folder given
            plan.outside.append(entry)
        elif entry.is_dir():
            found = True
            if plan.first_time(entry):
                _plan_class_folder(entry, root, plan)
        elif entry.name.lower().endswith(NDJSON_SUFFIX):
            found = True
            if plan.first_time(entry):
                plan.steps.append(("ndjson", entry))
        elif is_image_path(entry):
            loose_images += 1
        else:
            plan.ignored.append(entry)
    if loose_images:
        plan.failures.append(f"{root}: {loose_images} image(s) outside class folders, not imported (put each "
                             f"category's images in its own subfolder: {root / '<category>'})")
    elif not found:
        plan.failures.append(f"{root}: no class folders or .ndjson files found (expected {root / '<category>'}/"
                             "*.png or *.ndjson)")


def _plan_class_folder(folder: Path, root: Path, plan: _Plan) -> None:
    try:
        name = check_category_name(folder.name)
    except QDError as exc:
        plan.failures.append(f"{folder}: {exc}")
        return
    images: list[Path] = []
    root_real = os.path.realpath(root)
    for path in _files_under(folder, root, plan):
        if not is_within(path, root_real):
            plan.outside.append(path)
        else:
            (images if is_image_path(path) else plan.ignored).append(path)
    if images:
        plan.steps.append(("images", name, images))
    else:
        plan.failures.append(f"{folder}: no images in this class folder; category {name!r} not imported")


def _entries(folder: Path, plan: _Plan) -> list[Path] | None:
    """A folder's visible entries in name order (hidden names, like .DS_Store, skipped)."""
    try:
        with os.scandir(folder) as it:
            return [Path(e.path) for e in sorted(it, key=lambda e: e.name) if not e.name.startswith(".")]
    except OSError as exc:
        plan.failures.append(f"{folder}: {reason_of(exc)}")
        return None


def _files_under(folder: Path, root: Path, plan: _Plan) -> Iterator[Path]:
    """Files under `folder` (qd.files.walk_files, never leaving the source folder `root`); folders
    that cannot be listed become failures, links out of `root` notes."""
    for item in walk_files(folder, within=root):
        if isinstance(item, LinkOutside):
            plan.outside.append(item.path)
        elif isinstance(item, UnlistableFolder):
            plan.failures.append(f"{item.path}: {item.reason}")
        else:
            yield item


def category_of_file(path: Path) -> str:
    """The category of a .ndjson line without a `word`: the file's name, Google's prefixes dropped."""
    stem = path.name[: -len(NDJSON_SUFFIX)]
    for prefix in NDJSON_PREFIXES:
        if stem.startswith(prefix) and len(stem) > len(prefix):
            return stem[len(prefix):]
    return stem


# ----------------------------------------------------------------------------- reading

def _read_images(decoder: ImageDecoder, cat: _Category, paths: list[Path], keep, failed, advance) -> None:
    for start in range(0, len(paths), CHUNK):
        if cat.full:
            advance(len(paths) - start)
            return
        for _path, result in decoder.decode(paths[start:start + CHUNK]):
            if isinstance(result, str):
                cat.unread += 1
                failed(result)
            else:
                keep(cat, result)
            advance(1)


def _read_ndjson(decoder: ImageDecoder, path: Path, category, keep, failed, advance) -> None:
    fallback = category_of_file(path)
    pending: list[tuple[int, object, object]] = []  # (line number, category, drawing)
    read = 0

    def flush() -> None:
        for (number, cat, _), (_, result) in zip(pending, decoder.render([d for _, _, d in pending])):
            if isinstance(result, str):
                cat.unread += 1
                failed(f"{path}:{number}: {result}")
            else:
                keep(cat, result)
        advance(len(pending))
        pending.clear()

    try:
        for number, word, drawing, error in iter_ndjson_records(path):
            read += 1
            if error is not None:
                failed(f"{path}:{number}: {error}")
                advance(1)
                continue
            try:
                cat = category(check_category_name(word if word is not None else fallback))
            except QDError as exc:
                failed(f"{path}:{number}: {exc}")
                advance(1)
                continue
            if cat.full:
                advance(1)
                continue
            pending.append((number, cat, drawing))
            if len(pending) >= CHUNK:
                flush()
        flush()
    except QDError as exc:
        failed(str(exc))
    except OSError as exc:
        failed(f"{path}: {reason_of(exc)}")
    if read == 0:
        failed(f"{path}: no drawings in the file")


# ----------------------------------------------------------------------------- writing

def _check_enough_categories(found: list[_Category], out_dir: Path, sources) -> None:
    """A classifier needs two classes: refuse (before writing) an import that leaves fewer."""
    names = {c.name for c in found}
    others = set()
    if out_dir.is_dir():
        others = {stem for stem in category_stems(out_dir) if not category_file_problem(out_dir, stem)} - names
    if len(names | others) >= 2:
        return
    where = ", ".join(str(s) for s in sources)
    if not names:
        raise QDError(f"{where}: no readable drawings found; nothing written")
    raise QDError(f"{where}: only one category ({next(iter(names))}) found, and a classifier needs at least two; "
                  "nothing written (give a folder with one subfolder per category)")


def _write_all(found: list[_Category], out_dir: Path) -> list[CategoryResult]:
    """Write every category's file, all or none (qd.files.atomic_targets): on any failure the
    folder's old files are left exactly as they were, and the error names the file it hit."""
    cats = sorted(found, key=lambda c: c.name)
    dests = [category_path(out_dir, cat.name) for cat in cats]
    results = [CategoryResult(cat.name, dest, len(cat.rows), duplicates=cat.duplicates, unread=cat.unread,
                              capped=cat.full, replaced=_rows_in(dest)) for cat, dest in zip(cats, dests)]
    try:
        with atomic_targets(dests) as temps:
            for cat, dest in zip(cats, dests):
                with os_errors_name(dest), open(temps[dest], "wb") as f:
                    f.write(bitmap_header_bytes(len(cat.rows)))
                    f.write(b"".join(cat.rows))
    except OSError as exc:
        where = os.fsdecode(exc.filename) if exc.filename is not None else out_dir
        raise QDError(f"{where}: {reason_of(exc)}; nothing written (the files already in "
                      f"{out_dir} are as they were)") from None
    return results


def _rows_in(dest: Path) -> int | None:
    """Drawings in the file an import replaces (0 if it is broken, None if there is none)."""
    if not dest.is_file():
        return None
    try:
        return read_bitmap_header(dest).rows
    except BitmapFileError:
        return 0
