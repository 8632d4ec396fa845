"""Fetch `<category>.npy` bitmap files from a source into a data folder, safely.

For each category:
1. probe the source: the first bytes must be a uint8 (N, 784) `.npy` header, else the
   category fails at once with nothing written (an HTML error page never lands on disk);
2. skip it if the destination already holds a valid file with the wanted drawings;
3. stream the needed bytes into `.<category>.npy.part` beside the destination. An
   interrupted download stays there, with the version it belongs to (ETag, Last-Modified)
   in `.<category>.npy.part.json`, and the next run resumes it with an HTTP Range request
   and If-Range, only if the source still serves that version (else it starts over: a
   file that changed is never spliced; a server that ignores Range is detected and the
   file restarted);
4. verify the finished part (header, dtype, 784 columns, exact size), and only then
   rename it into place atomically. `--max-per-category N` downloads just the header and
   the first N rows, and writes a valid (N, 784) file with a rewritten header.

So `<category>.npy` is always either absent or complete and valid; a crash or SIGKILL
at any moment leaves at most a hidden `.part` (resumed later) or `.tmp` (removed later).

Negatives (`qd-data fetch --negatives N`): `negative_candidates` puts every category the source
offers that the data folder lacks in a seeded random order, and `fetch_categories(..., pick=N)`
walks it until N are fetched, passing over the names a mirror does not have (a URL offers Google's
list; a mirror may hold only part of it).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Protocol

from rich.filesize import decimal as human_size

from qd.command import BitmapFileError, QDError
from qd.files import commit_file, folder_lock, read_regular, write_json_atomic

import numpy as np

from .bitmaps import (bitmap_header_bytes, category_key, category_path, check_category_name, list_categories,
                      parse_bitmap_header, read_bitmap_header)
from .contract import DEFAULT_RETRIES, PIXELS
from .sources import (Body, CategoryNotFound, FolderSource, Remote, RemoteChanged, SourceUnreachable, TransientError,
                      UrlSource, Version)

CHUNK_BYTES = 1 << 20
# Out of disk or quota: every later category would fail the same way.
FATAL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


@dataclass(frozen=True)
class FetchOptions:
    max_rows: int | None = None  # --max-per-category
    retries: int = DEFAULT_RETRIES  # further attempts per file after a network failure (each one resumes)
    retry_wait: float = 1.0  # seconds before the first retry; doubles each time


@dataclass
class FetchResult:
    category: str
    path: Path
    rows: int
    size: int
    action: str  # "downloaded", "resumed", "copied", "skipped"
    resumed_from: int = 0  # bytes already in the .part file when this run started
    note: str = ""


@dataclass
class FetchReport:
    results: list[FetchResult] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (category, one-line message)
    missing: list[str] = field(default_factory=list)  # with `pick`: names the source does not have, passed over
    stopped_early: bool = False  # a fatal error (disk full, source unreachable) ended the run

    @property
    def ok(self) -> bool:
        return not self.failures


class ProgressHook(Protocol):
    def begin(self, category: str, total: int, completed: int) -> None: ...
    def advance(self, nbytes: int) -> None: ...
    def end(self) -> None: ...


class DiskError(QDError):
    """Writing the data folder failed (disk full, read-only, permissions)."""

    def __init__(self, message: str, fatal: bool):
        super().__init__(message)
        self.fatal = fatal


def part_path(out_dir: str | os.PathLike, category: str) -> Path:
    """Where an unfinished download waits to be resumed."""
    return Path(out_dir) / f".{category}.npy.part"


def version_path(part: Path) -> Path:
    """Which version of the source file an unfinished download holds the start of."""
    return part.with_name(part.name + ".json")


def tmp_path(out_dir: str | os.PathLike, category: str) -> Path:
    """Scratch file for a capped (`--max-per-category`) file before its rename."""
    return Path(out_dir) / f".{category}.npy.tmp"


def fetch_categories(source: FolderSource | UrlSource, categories: Iterable[str], out_dir: str | os.PathLike,
                     options: FetchOptions = FetchOptions(), progress: ProgressHook | None = None,
                     on_result: Callable[[FetchResult], None] | None = None,
                     on_failure: Callable[[str, str], None] | None = None,
                     on_wait: Callable[[str], None] = lambda message: None, pick: int | None = None) -> FetchReport:
    """Fetch each category; one failing category does not stop the others. With `pick`, walk
    `categories` in order until `pick` of them are fetched or failed, passing over (report.missing)
    those the source does not have.

    Two failures do stop the run, because every later category would fail the same way
    (after its own retries): a full disk, and a source that cannot be reached at all.
    The folder's writer lock (qd.files.folder_lock) is held for the whole run: another
    qd-data command writing the same folder waits for it, or makes this one wait (`on_wait`).
    """
    report = FetchReport()
    with folder_lock(out_dir, on_wait):
        for category in categories:
            if pick is not None and len(report.results) + len(report.failures) >= pick:
                break
            try:
                result = _fetch_one(source, category, out_dir, options, progress)
            except CategoryNotFound as exc:
                if pick is None:
                    if _record_failure(report, category, exc, on_failure):
                        break
                else:
                    report.missing.append(category)
                continue
            except Exception as exc:  # one category's failure, expected or not, must not end the others
                if not isinstance(exc, QDError):
                    exc = QDError(f"{category}: unexpected error ({_describe_unexpected(exc)})")
                if _record_failure(report, category, exc, on_failure):
                    break
                continue
            report.results.append(result)
            if on_result:
                on_result(result)
    return report


def negative_candidates(source: FolderSource | UrlSource, data_dir: str | os.PathLike, seed: int) -> list[str]:
    """Every category `source` offers that `data_dir` does not hold (`category_key`: `House_Plant` holds
    `house plant`), in a random order fixed by `seed`."""
    held = {category_key(name) for name in list_categories(data_dir)}
    names = sorted(name for name in set(source.list_categories()) if category_key(name) not in held)
    return [names[i] for i in np.random.default_rng(seed).permutation(len(names)).tolist()]


def _record_failure(report: FetchReport, category: str, exc: QDError, on_failure) -> bool:
    """Note a failed category; True if the run must stop (a full disk, a source that cannot be reached)."""
    report.failures.append((category, str(exc)))
    if on_failure:
        on_failure(category, str(exc))
    fatal = (isinstance(exc, DiskError) and exc.fatal) or isinstance(exc, SourceUnreachable)
    report.stopped_early = report.stopped_early or fatal
    return fatal


def _describe_unexpected(exc: BaseException) -> str:
    from qd.command import describe_unexpected

    return describe_unexpected(exc)


def fetch_category(source: FolderSource | UrlSource, category: str, out_dir: str | os.PathLike,
                   options: FetchOptions = FetchOptions(), progress: ProgressHook | None = None) -> FetchResult:
    """Make `<out_dir>/<category>.npy` a verified copy of the source's file (or its first rows),
    holding the folder's writer lock (a second writer waits, then skips what the first finished)."""
    with folder_lock(out_dir):
        return _fetch_one(source, category, out_dir, options, progress)


def _fetch_one(source: FolderSource | UrlSource, category: str, out_dir: str | os.PathLike,
                    options: FetchOptions, progress: ProgressHook | None) -> FetchResult:
    """fetch_category, the folder's lock held by the caller."""
    if options.max_rows is not None and options.max_rows < 1:
        raise QDError(f"--max-per-category must be at least 1, got {options.max_rows}")
    category = check_category_name(category)
    out_dir = Path(out_dir)
    try:
        return _fetch_locked(source, category, out_dir, options, progress)
    except RemoteChanged:
        # The file changed under the download: its part is gone; start again from a new probe.
        try:
            return _fetch_locked(source, category, out_dir, options, progress, restarted_because="changed")
        except RemoteChanged as exc:
            raise QDError(f"{exc} (twice in a row; try again later)") from None


def _fetch_locked(source, category: str, out_dir: Path, options: FetchOptions,
                  progress: ProgressHook | None, restarted_because: str = "") -> FetchResult:
    dest, part, tmp = category_path(out_dir, category), part_path(out_dir, category), tmp_path(out_dir, category)
    with _disk_errors(category, out_dir):
        tmp.unlink(missing_ok=True)  # left by a run killed while finishing a capped file

    try:
        remote = _with_retries(lambda: source.probe(category), options)
    except TransientError:
        present = _valid_rows(dest)
        if present is None or (options.max_rows is not None and present < options.max_rows):
            raise
        # Offline rerun: a verified file is already there; say it was not re-checked.
        return FetchResult(category, dest, present, dest.stat().st_size, "skipped",
                           note="source unreachable, not re-checked")
    want_rows = remote.header.rows if options.max_rows is None else min(options.max_rows, remote.header.rows)
    capped = want_rows < remote.header.rows
    want_bytes = remote.header.data_offset + want_rows * PIXELS

    present = _valid_rows(dest)
    if present is not None and (present == want_rows or (capped and present > want_rows)):
        note = f"has more than --max-per-category {options.max_rows}" if present > want_rows else ""
        return FetchResult(category, dest, present, dest.stat().st_size, "skipped", note=note)

    with _disk_errors(category, out_dir):
        resumed_from, discarded = _usable_part(part, remote, capped, want_bytes)
        _check_free_space(category, out_dir, want_bytes - min(resumed_from, want_bytes)
                          + (remote.header.data_offset + want_rows * PIXELS if capped else 0))
        if not resumed_from:
            write_json_atomic(version_path(part), {"source": source.location(category),
                                                   "version": remote.version.to_dict()})
        restarted = _download(source, category, part, want_bytes, options, progress, remote.version)
        if restarted:
            resumed_from = 0  # the server ignored Range: the kept bytes were fetched again
        if capped:
            _finish_capped(category, part, tmp, dest, remote, want_rows)
            if resumed_from <= want_bytes:  # a longer part belongs to an unfinished full download
                _discard_part(part)
        else:
            _finish_whole(category, part, dest, remote)
    action = "copied" if isinstance(source, FolderSource) else ("resumed" if resumed_from else "downloaded")
    notes = [f"first {want_rows} of {remote.header.rows} drawings" if capped else "",
             "restarted: the source file changed during the download" if restarted_because else "",
             discarded]
    note = "; ".join(n for n in notes if n)
    return FetchResult(category, dest, want_rows, dest.stat().st_size, action,
                       resumed_from=min(resumed_from, want_bytes), note=note)


def _check_free_space(category: str, out_dir: Path, needed: int) -> None:
    """Refuse up front, rather than fill the disk and fail part-way."""
    try:
        free = shutil.disk_usage(out_dir).free
    except OSError:
        return  # unknown: the write itself will say
    if needed > free:
        raise DiskError(f"{category}: needs {human_size(needed)} but {out_dir} has only {human_size(free)} free; "
                        "files already fetched are intact", fatal=True)


def _valid_rows(path: Path) -> int | None:
    if not path.is_file():
        return None
    try:
        return read_bitmap_header(path).rows
    except BitmapFileError:
        return None  # a broken file is replaced, never trusted


def _usable_part(part: Path, remote: Remote, capped: bool, want_bytes: int) -> tuple[int, str]:
    """(bytes of `part` that can be kept, why any were discarded). A part is kept only if it
    provably belongs to the version the source serves now: same ETag (or Last-Modified)
    as recorded when it was started, same header bytes, not too long."""
    if not part.is_file():
        _discard_part(part)  # a stray version record
        return 0, ""
    size = part.stat().st_size
    kept = human_size(size)
    recorded = _recorded_version(part)
    why = ""
    if not remote.version.known:
        why = f"the {kept} kept could not be verified (the source sends no ETag or Last-Modified)"
    elif recorded is None:
        why = f"no record of which version of the file the {kept} kept belong to"
    elif not recorded.same_as(remote.version):
        why = f"the source file changed since the {kept} were kept"
    elif size > remote.size or (size > want_bytes and not capped):
        why = f"the {kept} kept are longer than the file"
    elif size >= remote.header.data_offset:
        with open(part, "rb") as f:
            if f.read(remote.header.data_offset) != remote.header_bytes:
                why = f"the {kept} kept belong to another file"
    elif remote.header_bytes[:size] != part.read_bytes():
        why = f"the {kept} kept belong to another file"
    if why:
        _discard_part(part)
        return 0, f"restarted: {why}" if size else ""
    return size, ""


def _recorded_version(part: Path) -> Version | None:
    """The version recorded for an unfinished download; None without a readable record."""
    try:
        record = json.loads(read_regular(version_path(part), 64 * 1024))
    except (OSError, QDError, ValueError):
        return None
    return Version.from_dict(record.get("version") if isinstance(record, dict) else None)


def _discard_part(part: Path) -> None:
    """Remove an unfinished download and the record of its version."""
    part.unlink(missing_ok=True)
    version_path(part).unlink(missing_ok=True)


def _download(source, category: str, part: Path, want_bytes: int, options: FetchOptions,
              progress: ProgressHook | None, version: Version = Version()) -> bool:
    """Grow `part` to at least `want_bytes` with bytes of `version` of the file, resuming and retrying.
    RemoteChanged (with the part discarded) if the source serves another version.

    Returns whether the server ignored a Range request and restarted the file.
    """
    have = part.stat().st_size if part.exists() else 0
    failures = 0
    restarted = False
    if have >= want_bytes:
        return False
    if progress:
        progress.begin(category, want_bytes, have)
    try:
        while have < want_bytes:
            before = have
            try:
                with source.open(category, have, want_bytes, version) as body:
                    if version.contradicts(body.version):  # sent whole, but it is another version
                        raise RemoteChanged(f"{category}: {source.location(category)} changed since it was "
                                            "first probed")
                    if body.start != have:  # Range ignored: the server restarted the file
                        have = body.start
                        restarted = True
                        if progress:
                            progress.begin(category, want_bytes, have)
                    have = _append(body, part, have, want_bytes, progress)
                if have < want_bytes:
                    raise TransientError(f"{category}: {source.location(category)}: connection closed "
                                         f"after {have} of {want_bytes} bytes")
            except RemoteChanged:
                _discard_part(part)
                raise
            except TransientError as exc:
                # Bytes written before a mid-chunk failure are a valid prefix too: keep them.
                have = part.stat().st_size if part.exists() else 0
                failures += 1
                if failures > options.retries:
                    kept = f"{have} bytes kept, rerun to resume" if have else ""
                    if not have:
                        _discard_part(part)
                    why = "; ".join(filter(None, [_gave_up(options), kept]))
                    raise type(exc)(f"{exc} ({why})" if why else str(exc)) from None
                # Back off only when the last attempt got nowhere; a drop mid-file resumes at once.
                time.sleep(0 if have > before else options.retry_wait * 2 ** (failures - 1))
    finally:
        if progress:
            progress.end()
    return restarted


def _append(body: Body, part: Path, have: int, want_bytes: int, progress: ProgressHook | None) -> int:
    """Write the body into `part` from offset `body.start`; returns the bytes now in part."""
    mode = "r+b" if part.exists() else "wb"
    with open(part, mode) as f:
        f.seek(have)
        f.truncate()
        while have < want_bytes:
            chunk = body.read(min(CHUNK_BYTES, want_bytes - have))
            if not chunk:
                break
            _write(f, chunk, part)
            have += len(chunk)
            if progress:
                progress.advance(len(chunk))
        f.flush()
        os.fsync(f.fileno())
    return have


def _finish_whole(category: str, part: Path, dest: Path, remote: Remote) -> None:
    try:
        header = read_bitmap_header(part)
        with open(part, "rb") as f:
            same_header = f.read(header.data_offset) == remote.header_bytes
    except BitmapFileError as exc:
        _discard_part(part)  # never resume from a poisoned part
        raise QDError(f"{category}: downloaded file failed verification ({exc.problem}); discarded it") from None
    if not same_header or header.rows != remote.header.rows:
        _discard_part(part)
        raise QDError(f"{category}: downloaded file's header differs from the one first served; discarded it")
    commit_file(part, dest)
    version_path(part).unlink(missing_ok=True)


def _finish_capped(category: str, part: Path, tmp: Path, dest: Path, remote: Remote, rows: int) -> None:
    """Write `dest` as a valid (rows, 784) array: a new header, then the first rows of `part`."""
    offset = remote.header.data_offset
    with open(part, "rb") as src:
        try:
            header = parse_bitmap_header(src, part)
        except BitmapFileError as exc:
            _discard_part(part)
            raise QDError(f"{category}: downloaded data failed verification ({exc.problem}); discarded it") from None
        if header != remote.header:
            _discard_part(part)
            raise QDError(f"{category}: downloaded file's header differs from the one first served; discarded it")
        src.seek(offset)
        try:
            with open(tmp, "wb") as out:
                _write(out, bitmap_header_bytes(rows), tmp)
                left = rows * PIXELS
                while left:
                    chunk = src.read(min(CHUNK_BYTES, left))
                    if not chunk:
                        break
                    _write(out, chunk, tmp)
                    left -= len(chunk)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    try:
        written = read_bitmap_header(tmp)
    except BitmapFileError as exc:
        tmp.unlink(missing_ok=True)
        raise QDError(f"{category}: capped file failed verification ({exc.problem})") from None
    if written.rows != rows:
        tmp.unlink(missing_ok=True)
        raise QDError(f"{category}: capped file has {written.rows} drawings, expected {rows}")
    commit_file(tmp, dest)


def _gave_up(options: FetchOptions) -> str:
    """'gave up after 2 retries' (empty when retrying was switched off)."""
    if not options.retries:
        return ""
    return f"gave up after {options.retries} retr{'y' if options.retries == 1 else 'ies'}"


def _write(f, data: bytes, path: Path) -> None:
    """f.write, with the file named in the error (a full disk must say where)."""
    try:
        f.write(data)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None


def _with_retries(call: Callable[[], Remote], options: FetchOptions) -> Remote:
    for attempt in range(options.retries + 1):
        try:
            return call()
        except TransientError as exc:
            if attempt == options.retries:
                raise type(exc)(f"{exc} ({_gave_up(options)})" if options.retries else str(exc)) from None
            time.sleep(options.retry_wait * 2 ** attempt)
    raise AssertionError("unreachable")


class _disk_errors:
    """Turn OS errors while writing `out_dir` into one-line DiskErrors naming the category."""

    def __init__(self, category: str, out_dir: Path):
        self.category, self.out_dir = category, out_dir

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None or not issubclass(exc_type, OSError) or isinstance(exc, QDError):
            return False
        where = exc.filename or self.out_dir
        reason = exc.strerror or str(exc)
        fatal = exc.errno in FATAL_ERRNOS
        hint = "; files already fetched are intact" if fatal else ""
        raise DiskError(f"{self.category}: cannot write {where}: {reason}{hint}", fatal=fatal) from None
