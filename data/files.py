"""Write-then-rename and checksums: the one way every stage writes a finished file;
`open_regular`: the one way every stage opens a file it did not write.

A reader (or a run killed half-way) sees either the previous file or the complete new
one, never a partial one: the bytes go to a hidden temp file in the same folder, are
fsynced, and `os.replace` moves them onto the final name (atomic on POSIX).

Untrusted inputs are opened only if they are regular files: a FIFO would block the
open (or the first read) forever, `/dev/zero` behind a `.ndjson` name would be read
without end. Those are refused with one line before a byte is read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from .errors import QDError

TEMP_SUFFIX = ".tmp"


def default_file_mode() -> int:
    """0o666 less the umask: what a plain open() would give (mkstemp gives 0o600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (best effort: not every filesystem allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextmanager
def atomic_target(path: str | os.PathLike):
    """Yield a temp path beside `path`; when the block succeeds, fsync it and move it onto `path`.

    If the block raises (or the process dies), the temp file is removed (or left as a
    hidden `.name.*.tmp`) and `path` keeps its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, default_file_mode())
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_target(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike, payload) -> Path:
    return write_text_atomic(path, json.dumps(payload, indent=2, allow_nan=False) + "\n")


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
