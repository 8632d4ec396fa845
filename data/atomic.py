"""Write-then-rename: the one way every stage writes a finished file or folder.

A reader (or a run killed half-way) sees either the previous file or the complete new
one, never a partial one: the bytes go to a hidden temp path in the same folder
(`.<name>.<random>.tmp`), are fsynced, and only then moved onto the final name. A file
is replaced with `os.replace` (atomic on POSIX). A folder (a `.mlpackage`, an export
folder) is swapped in with Linux's `renameat2(RENAME_EXCHANGE)` where available (atomic
too); elsewhere the old folder is renamed aside first, leaving a moment with no folder
at all, but never a partial one.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

TEMP_SUFFIX = ".tmp"

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


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


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def temp_path_for(final: Path, directory: bool = False) -> Path:
    """A fresh hidden temp name next to `final` (same filesystem, so rename is atomic)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{final.name}."
    if directory:  # keeps the final suffix too: coremltools insists on saving to *.mlpackage
        return Path(tempfile.mkdtemp(prefix=prefix, suffix=TEMP_SUFFIX + final.suffix, dir=final.parent))
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=TEMP_SUFFIX, dir=final.parent)
    os.close(fd)
    return Path(name)


def remove_temp(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_stale_temps(folder: Path, names: list[str]) -> list[Path]:
    """Remove leftovers of an interrupted run (`.<name>.*.tmp[suffix]`) for the given final names."""
    removed = []
    if not folder.is_dir():
        return removed
    for name in names:
        for leftover in folder.glob(f".{name}.*{TEMP_SUFFIX}*"):
            remove_temp(leftover)
            removed.append(leftover)
    return removed


def commit_file(tmp: Path, final: Path) -> None:
    """Move the finished file `tmp` onto `final` (plain-open permissions, fsynced, atomic)."""
    os.chmod(tmp, default_file_mode())
    fsync_file(tmp)
    os.replace(tmp, final)
    fsync_dir(final.parent)


@contextmanager
def atomic_target(path: str | os.PathLike):
    """Yield a temp path beside `path`; when the block succeeds, move it onto `path` (commit_file).

    If the block raises (or the process dies), the temp file is removed (or left as a
    hidden `.name.*.tmp`) and `path` keeps its previous content.
    """
    path = Path(path)
    tmp = temp_path_for(path)
    try:
        os.chmod(tmp, default_file_mode())
        yield tmp
        commit_file(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_target(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike, payload) -> Path:
    return write_text_atomic(path, json.dumps(payload, indent=2, allow_nan=False) + "\n")


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2). False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0


def commit_dir(tmp: Path, final: Path) -> None:
    """Move the finished folder `tmp` onto `final`, replacing any previous one."""
    os.chmod(tmp, default_file_mode() | 0o111)  # mkdtemp gives 0o700
    for file in tmp.rglob("*"):
        if file.is_file():
            fsync_file(file)
    if not final.exists():
        os.rename(tmp, final)
    elif final.is_dir() and not final.is_symlink() and _exchange(tmp, final):
        shutil.rmtree(tmp)  # tmp now holds the previous version
    else:
        aside = temp_path_for(final, directory=True)
        aside.rmdir()
        os.rename(final, aside)
        os.rename(tmp, final)
        remove_temp(aside)
    fsync_dir(final.parent)
