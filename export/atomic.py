"""Write-then-rename, for files and for directories (a `.mlpackage` is a folder).

Every export is first written to a hidden temp path in the destination folder,
validated there, and only then moved onto its final name, so a reader (or a run
killed half-way) never sees a half-written model where a finished one belongs.
A file is replaced with `os.replace` (atomic on POSIX). A directory is swapped in
with Linux's `renameat2(RENAME_EXCHANGE)` where available (atomic too); elsewhere
the old folder is renamed aside first, leaving a moment with no folder at all,
but never a partial one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

from qd.data.files import TEMP_SUFFIX, default_file_mode, fsync_dir

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


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


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def commit_file(tmp: Path, final: Path) -> None:
    os.chmod(tmp, default_file_mode())
    fsync_file(tmp)
    os.replace(tmp, final)
    fsync_dir(final.parent)


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
