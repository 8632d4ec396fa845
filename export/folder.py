"""The export folder is replaced as a whole: every file in it comes from one export run
(one checkpoint), or the folder is still the previous set.

A run writes into a hidden staging folder beside the export folder
(`.<name>.<random>.tmp`), carries over what stays (files of formats not re-exported,
if provably from the same checkpoint, and any file that is not ours), and then swaps
the staging folder with the export folder in one atomic step (qd.files.commit_dir:
renameat2(RENAME_EXCHANGE) on Linux). A run killed at any moment leaves the previous
folder untouched plus a staging leftover, which the next run removes.

Where the staging folder cannot sit beside the export folder (the parent is not
writable, or the export folder is a mount point), it sits inside it and files are
moved in one by one, model.json last: readers then tell a mixed set from its
checksums (qd.evaluate.backends), and the report says so.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from qd.files import TEMP_SUFFIX, clean_stale_temps, commit_dir, commit_file, fsync_dir, remove_temp

STAGING_PREFIX = ".staging"  # in-place staging folder, inside the export folder


@dataclass
class Staging:
    final: Path  # the export folder (symlinks resolved)
    work: Path  # where this run writes
    in_place: bool  # the fallback: `work` is inside `final` and files move one by one
    managed: tuple[str, ...] = ()  # the names qd-export writes; anything else in the folder is the user's

    @property
    def note(self) -> str:
        if not self.in_place:
            return ""
        return (f"{self.final.parent} does not allow a staging folder beside {self.final.name}, so files were "
                "replaced one by one (readers still detect a mixed set from model.json)")


def begin(out_dir: Path, managed: list[str]) -> Staging:
    """A fresh staging folder for replacing `out_dir`, after removing leftovers of killed runs."""
    final = out_dir.resolve() if out_dir.is_symlink() else out_dir
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(final, managed)
    if not final.exists() or _same_filesystem(final, final.parent):
        try:
            work = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=TEMP_SUFFIX, dir=final.parent))
            return Staging(final=final, work=work, in_place=False, managed=tuple(managed))
        except OSError:
            pass  # a parent we may not write to
    final.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}.", suffix=TEMP_SUFFIX, dir=final))
    return Staging(final=final, work=work, in_place=True, managed=tuple(managed))


def remove_leftovers(final: Path, managed: list[str]) -> None:
    """Staging folders and temp files of runs that were killed before they finished."""
    if final.parent.is_dir():
        for leftover in final.parent.glob(f".{final.name}.*{TEMP_SUFFIX}"):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
    if final.is_dir():
        for leftover in final.glob(f"{STAGING_PREFIX}.*{TEMP_SUFFIX}"):
            remove_temp(leftover)
        clean_stale_temps(final, managed)


def carry(staging: Staging, keep: list[str]) -> None:
    """Bring what stays into the staging folder: the named files, and every entry that is not ours
    (hard links where the filesystem allows, else copies). In place, everything already is there."""
    if staging.in_place or not staging.final.is_dir():
        return
    for entry in staging.final.iterdir():
        if entry.name in keep or (entry.name not in staging.managed and not _is_temp(entry.name)):
            _link_or_copy(entry, staging.work / entry.name)


def commit(staging: Staging, order: list[str], remove: list[str]) -> None:
    """Make the staging folder the export folder. In place: drop `remove` and the card first,
    then move the files in `order` (the card last)."""
    for entry in staging.work.iterdir():  # nothing half-written travels with the set
        if _is_temp(entry.name):
            remove_temp(entry)
    if not staging.in_place:
        commit_dir(staging.work, staging.final)
        return
    card = order[-1]
    (staging.final / card).unlink(missing_ok=True)
    for name in remove:
        remove_temp(staging.final / name)
    for name in order:
        source = staging.work / name
        if source.is_dir() and not source.is_symlink():
            commit_dir(source, staging.final / name)
        elif source.exists():
            commit_file(source, staging.final / name)
    remove_temp(staging.work)
    fsync_dir(staging.final)


def abandon(staging: Staging) -> None:
    remove_temp(staging.work)


def _same_filesystem(a: Path, b: Path) -> bool:
    return os.stat(a).st_dev == os.stat(b).st_dev


def _is_temp(name: str) -> bool:
    return name.startswith(".") and TEMP_SUFFIX in name


def _link_or_copy(source: Path, target: Path) -> None:
    if source.is_symlink():
        os.symlink(os.readlink(source), target)
    elif source.is_dir():
        shutil.copytree(source, target, symlinks=True, copy_function=_link_file)
    else:
        _link_file(source, target)


def _link_file(source, target) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
