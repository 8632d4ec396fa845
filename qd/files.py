"""Files, read and written the one way every stage does it.

Writing: write-then-rename. A reader (or a run killed half-way) sees either the previous file
or the complete new one, never a partial one: the bytes go to a hidden temp path in the same
folder (`.<name>.<random>.tmp`), are fsynced, and only then moved onto the final name. A file
is replaced with `os.replace` (atomic on POSIX). A folder (a `.mlpackage`, an export folder)
is swapped in with Linux's `renameat2(RENAME_EXCHANGE)` where available (atomic too);
elsewhere the old folder is renamed aside first, leaving a moment with no folder at all, but
never a partial one.

Reading: `open_regular`, the one way every stage opens a file it did not write; checksums,
sizes, and the one folder walk. Untrusted inputs are opened only if they are regular files: a
FIFO would block the open (or the first read) forever, `/dev/zero` behind a `.ndjson` name
would be read without end. Those are refused with one line before a byte is read.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import shutil
import stat
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from qd.command import QDError, reason_of

# ----------------------------------------------------------------------------- writing

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
    hidden `.name.*.tmp`) and `path` keeps its previous content. The one-file case of
    atomic_targets, with the same errors (they name `path`, never the temp file).
    """
    with atomic_targets([path]) as temps:
        yield temps[Path(path)]


@contextmanager
def os_errors_name(path: str | os.PathLike):
    """Re-raise an OSError that names no file, or a temp file, as one naming `path` (the file the
    user knows: `error: I/O: No space left on device` says nothing)."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None and os.fsdecode(exc.filename) == os.fspath(path):
            raise
        raise type(exc)(exc.errno, exc.strerror or str(exc), os.fspath(path)) from None


@contextmanager
def atomic_targets(paths: list[str | os.PathLike], remove: list[str | os.PathLike] = ()) -> Iterator[dict[Path, Path]]:
    """atomic_target for files that change together: all of them, or none.

    Yields {final path: temp path beside it}. Before any temp is made, a final path held by a
    folder (or anything but a file) is refused; when the block succeeds, every temp is fsynced,
    each existing final is kept aside under a hidden hard link, and the temps are moved in. If a
    move fails, those already moved are put back, so the old files stay exactly as they were.
    On any failure the temps are removed, and OS errors name the final file, never a temp.
    `remove`: files of the old set that the new one has none of (a report's plots it no longer
    draws), removed with the change and put back with the rest if it fails.
    """
    finals = list(dict.fromkeys(Path(p) for p in paths))
    gone = [Path(p) for p in dict.fromkeys(remove) if Path(p) not in finals]
    temps: dict[Path, Path] = {}
    try:
        for final in finals:
            with os_errors_name(final):
                if final.exists() and not final.is_file():
                    raise IsADirectoryError(errno.EISDIR, "is in the way: a folder (or other non-file) where the "
                                                          "file goes")
                temps[final] = temp_path_for(final)
                os.chmod(temps[final], default_file_mode())
        yield temps
        for final, tmp in temps.items():
            with os_errors_name(final):
                fsync_file(tmp)
        _replace_all(temps, [path for path in gone if path.is_file() and not path.is_symlink()])
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)


def _replace_all(temps: dict[Path, Path], gone: list[Path] = ()) -> None:
    """os.replace each temp onto its final path, then unlink `gone`; on a failure, undo the ones done
    (see atomic_targets)."""
    kept: dict[Path, Path] = {}  # final -> a hard link to its previous file
    done: list[Path] = []
    try:
        if len(temps) + len(gone) > 1:
            for final in [*temps, *gone]:
                if final.exists():
                    with os_errors_name(final):
                        aside = final.with_name(f".{final.name}.{secrets.token_hex(6)}.old{TEMP_SUFFIX}")
                        os.link(final, aside)
                    kept[final] = aside
        for final, tmp in temps.items():
            with os_errors_name(final):
                os.replace(tmp, final)
            done.append(final)
        for final in gone:
            with os_errors_name(final):
                os.unlink(final)
            done.append(final)
        for folder in {final.parent for final in [*temps, *gone]}:
            fsync_dir(folder)
    except BaseException:
        for final in reversed(done):
            with contextlib.suppress(OSError):
                if final in kept:
                    os.replace(kept.pop(final), final)
                else:
                    final.unlink()
        raise
    finally:
        for aside in kept.values():
            with contextlib.suppress(OSError):
                aside.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_target(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def json_text(payload) -> str:
    """A JSON file's text as every JSON file qd writes has it: strict (no NaN), indented."""
    return json.dumps(payload, indent=2, allow_nan=False) + "\n"


def write_json_atomic(path: str | os.PathLike, payload) -> Path:
    return write_text_atomic(path, json_text(payload))


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2). False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes  # here, not above: qd-export's --help reads this module
    import ctypes.util

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


# ----------------------------------------------------------------------------- one writer per folder

class FolderBusy(QDError):
    """A folder another command is writing (folder_lock with wait=False)."""


@contextmanager
def folder_lock(folder: str | os.PathLike, on_wait: Callable[[str], None] = lambda message: None,
                wait: bool = True):
    """Hold the one writer lock of `folder` (made if missing) while the block runs: every command
    that writes a folder (qd-data fetch and import into a data folder, qd-train into its run
    folder) takes it for its whole run, so two never interleave. A second writer waits for the
    first, after `on_wait(one line)` says so; with `wait=False` it is refused at once instead
    (FolderBusy, one line naming the folder and the holder's pid).

    The lock is an exclusive flock on the folder itself: nothing is written into the folder for
    it, and the kernel releases it when its holder's process ends, however it ends (a SIGKILL
    leaves no stale lock). Only the process that took it holds it: a child forked meanwhile (a
    DataLoader worker, a decode pool) closes its copy at once. A file system without flock (some
    network mounts) goes unlocked; a platform without fcntl too."""
    folder = Path(folder)
    with os_errors_name(folder):
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a folder")
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    owner = os.getpid()
    _held_locks.add(fd)
    try:
        try:
            import fcntl
        except ImportError:
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _flock_holder(fd)
                who = f"{folder}: another command{f' (pid {holder})' if holder else ''} is writing this folder"
                if not wait:
                    raise FolderBusy(f"{who}; not started (wait for it to finish, or use another folder)") from None
                on_wait(f"{who}; waiting for it to finish (Ctrl-C to stop, or use another folder)")
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError:
                pass  # no locks on this file system
        yield
    finally:
        if os.getpid() == owner:  # a forked child that unwinds this block closed its copy already
            _held_locks.discard(fd)
            os.close(fd)  # releases the lock


_held_locks: set[int] = set()  # descriptors of the folder locks this process holds


def _drop_inherited_locks() -> None:
    """In a forked child: close the copies of the parent's lock descriptors (a flock lasts while any
    copy is open, so a worker outliving a killed parent would keep the folder locked)."""
    for fd in _held_locks:
        with contextlib.suppress(OSError):
            os.close(fd)
    _held_locks.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited_locks)


def _flock_holder(fd: int) -> int | None:
    """The pid holding a flock on the file open as `fd`, from Linux's /proc/locks (None elsewhere)."""
    st = os.fstat(fd)
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == key and fields[4].isdigit():
                    return int(fields[4])
    except OSError:
        pass
    return None


# ----------------------------------------------------------------------------- reading

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


class LinkOutside(UnlistableFolder):
    """A symlinked folder (or file) under a walked folder that leads out of it: not followed."""


def is_within(path: str | os.PathLike, root_real: str) -> bool:
    """Whether `path`, links resolved, is `root_real` (a realpath) or inside it."""
    real = os.path.realpath(path)
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def walk_files(root: Path, recursive: bool = True, within: Path | None = None) -> Iterator[Path | UnlistableFolder]:
    """The files under `root`, depth first in name order, the way every command reads a folder:
    hidden (dot) files and folders skipped (.git, macOS ._x.png resource forks), symlinked folders
    followed once (loops cut) only while they stay inside `within` (default `root`): a link to
    `/` is yielded as a LinkOutside, never walked. With `recursive=False` only `root`'s own files.
    A folder that cannot be listed is yielded as an UnlistableFolder and the walk goes on."""
    bound = os.path.realpath(within if within is not None else root)
    seen: set[str] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        real = os.path.realpath(folder)
        if real in seen:
            continue  # a symlink loop, or a folder reached twice
        seen.add(real)
        if not is_within(real, bound):
            yield LinkOutside(Path(folder), f"a link to a folder outside {within if within is not None else root} "
                                            f"({real}); not followed")
            continue
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
