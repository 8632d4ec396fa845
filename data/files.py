"""Reading files: `open_regular`, the one way every stage opens a file it did not write;
checksums, sizes, and the one folder walk. (Writing: qd.data.atomic.)

Untrusted inputs are opened only if they are regular files: a FIFO would block the
open (or the first read) forever, `/dev/zero` behind a `.ndjson` name would be read
without end. Those are refused with one line before a byte is read.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from .errors import QDError, reason_of


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_path(path: str | os.PathLike) -> str:
    """sha256 of a file; for a folder (a .mlpackage), of its sorted relative paths and file contents."""
    path = Path(path)
    if not path.is_dir():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        digest.update(bytes.fromhex(sha256_file(file)))
    return digest.hexdigest()


def path_size(path: str | os.PathLike) -> int:
    """Bytes of a file; for a folder (a .mlpackage), of every file in it."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)


class NotARegularFile(QDError):
    """An input that is a FIFO, a device, a socket or a folder where a file was expected."""


def _refuse_special(path, mode: int) -> None:
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "not a plain file")
        raise NotARegularFile(f"{path}: is {kind}, not a regular file; refused")


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """Open `path` (symlinks followed) for binary reading, only if it is a regular file.

    Checked by stat before opening (so a device is never opened) and again on the open
    descriptor (so a swap in between is caught); the open itself never blocks (O_NONBLOCK,
    cleared once the file is known to be regular). OSError for a missing or unreadable file.
    """
    _refuse_special(path, os.stat(path).st_mode)
    fd = os.open(path, _OPEN_FLAGS)
    try:
        _refuse_special(path, os.fstat(fd).st_mode)
        if _OPEN_FLAGS & getattr(os, "O_NONBLOCK", 0):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def count_lines(path: str | os.PathLike, block: int = 1 << 20) -> int:
    """Newlines in a regular file (a progress bar's total); 1 if it cannot be read (the reader will say why)."""
    try:
        with open_regular(path) as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(block), b""))
    except (OSError, QDError):
        return 1


def read_regular(path: str | os.PathLike, max_bytes: int, what: str = "file") -> bytes:
    """All bytes of a regular file of at most `max_bytes` (checked before reading, and while reading)."""
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise QDError(f"{path}: {size:,} bytes, more than a {what} may have ({max_bytes:,}); refused")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise QDError(f"{path}: grew past {max_bytes:,} bytes while being read; refused")
    return data


@dataclass(frozen=True)
class UnlistableFolder:
    """A folder `walk_files` could not list, and why (one line)."""

    path: Path
    reason: str


def walk_files(root: Path, recursive: bool = True) -> Iterator[Path | UnlistableFolder]:
    """The files under `root`, depth first in name order, the way every command reads a folder:
    hidden (dot) files and folders skipped (.git, macOS ._x.png resource forks), symlinked folders
    followed once (loops cut); with `recursive=False` only `root`'s own files. A folder that cannot
    be listed is yielded as an UnlistableFolder and the walk goes on."""
    seen: set[str] = set()
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
            yield UnlistableFolder(Path(folder), reason_of(exc))
            continue
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir():
                    if recursive:
                        subfolders.append(Path(entry.path))
                    continue
            except OSError:
                pass
            yield Path(entry.path)
        stack.extend(reversed(subfolders))  # depth first, in name order
