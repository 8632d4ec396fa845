"""Category names and where their files live.

A category's name is its file stem, exactly as Google spells it (spaces allowed,
e.g. `The Eiffel Tower`). The class list is always sorted, so class indices do not
depend on directory listing order; checkpoints and models store the list itself.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from .errors import QDError
from .limits import MAX_LABEL_CHARS, MAX_LABELS

SUFFIX = ".npy"
# What to do when a data folder is missing or empty: one hint, the same in every command.
FETCH_HINT = "get drawings with: qd-data fetch CATEGORY... or point --data at a folder of <category>.npy files"


def check_labels(labels) -> list[str]:
    """The one check of a class list as a checkpoint or a model stores it (names in output order):
    a non-empty list of distinct names within qd.data.limits' bounds. Returns it; ValueError with a
    one-line reason otherwise (the caller names the file and the field)."""
    if (not isinstance(labels, list) or not 0 < len(labels) <= MAX_LABELS
            or not all(isinstance(name, str) and 0 < len(name) <= MAX_LABEL_CHARS for name in labels)):
        raise ValueError(f"must be a non-empty list of names (at most {MAX_LABELS:,}, each 1 to {MAX_LABEL_CHARS} "
                         "characters)")
    if len(set(labels)) != len(labels):
        raise ValueError("has duplicate names")
    return labels


def check_category_name(category: str) -> str:
    """The one rule for a category name, used by `qd-data fetch` and `qd-data import`: the name
    becomes a file stem, so it must be non-empty, without leading or trailing spaces, without a
    slash, backslash or NUL, and must not start with a dot (which also rules out `.` and `..`).
    Returns the name; QDError (one line) otherwise."""
    if not category or category != category.strip():
        raise QDError(f"{category!r}: category names cannot be empty or start/end with spaces")
    if "/" in category or "\\" in category or category.startswith(".") or "\0" in category:
        raise QDError(f"{category!r}: not a category name (no slashes, no leading dot)")
    return category


def category_path(data_dir: str | os.PathLike, category: str) -> Path:
    return Path(data_dir) / f"{category}{SUFFIX}"


def list_categories(data_dir: str | os.PathLike) -> list[str]:
    """Sorted category names of the `<category>.npy` files in `data_dir`."""
    data_dir = Path(data_dir)
    if not data_dir.exists():
        raise QDError(f"{data_dir}: data directory does not exist ({FETCH_HINT})")
    if not data_dir.is_dir():
        raise QDError(f"{data_dir}: not a directory")
    # Hidden names are never categories: partial downloads (`.cat.npy.part`) and
    # macOS resource forks (`._cat.npy`) live beside the real files.
    return sorted(p.name[: -len(SUFFIX)] for p in data_dir.iterdir()
                  if p.name.endswith(SUFFIX) and not p.name.startswith(".") and p.is_file())


def resolve_categories(data_dir: str | os.PathLike, requested: list[str] | None) -> list[str]:
    """The sorted class list: every category in `data_dir`, or the requested ones (checked)."""
    available = list_categories(data_dir)
    if not available:
        raise QDError(f"{data_dir}: no <category>.npy files found ({FETCH_HINT})")
    if not requested:
        return available
    wanted = [name.strip() for name in requested if name.strip()]
    unknown = sorted(set(wanted) - set(available))
    if unknown:
        raise QDError(f"{data_dir}: unknown categor{'y' if len(unknown) == 1 else 'ies'} "
                      + ", ".join(name + did_you_mean(name, available) for name in unknown))
    return sorted(set(wanted))


def did_you_mean(name: str, known: list[str]) -> str:
    """' (did you mean 'x'?)' for a close match among `known`, else ''."""
    lowered = {k.lower().replace("_", " "): k for k in known}
    key = name.lower().replace("_", " ")
    if key in lowered and lowered[key] != name:
        return f" (did you mean {lowered[key]!r}?)"
    close = difflib.get_close_matches(key, list(lowered), n=1, cutoff=0.75)
    return f" (did you mean {lowered[close[0]]!r}?)" if close else ""
