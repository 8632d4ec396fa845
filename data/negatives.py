"""Negatives: a folder of `<category>.npy` files whose drawings belong to none of a model's classes.

`qd-train --negatives DIR` shows them to the network with the outlier-exposure term; qd-export
and qd-eval report the share of the held-out ones the open-set rule flags. The folder is read
like a data folder (the same file checks and category-name rule: `BitmapDataset`) and cut with
the same split (`SplitSpec`, by each drawing's bytes), so a negative drawing is in the same split
wherever it appears, and the validation and test negatives are never trained on.

Refused, each in one line naming the file: an empty folder, an invalid file or name, a category
that is one of the classes, and a drawing (an identical 784-byte row) that is also one of the
data's drawings. The checkpoint keeps `negatives_record()` (folder, names, counts per split, sha256 of each
file), so a resumed run, qd-export and qd-eval can tell the folder changed (`negatives_changed()`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from qd.command import QDError
from qd.files import sha256_file

from .bitmaps import (SPLITS, BitmapDataset, SplitSpec, category_key, category_path, drawing_hashes,
                      list_categories)
from .contract import artifacts_root

FETCH_NEGATIVES_HINT = "get some with: qd-data fetch --negatives N"


def default_negatives_dir() -> Path:
    """Where `qd-data fetch --negatives N` puts negatives by default: <artifacts>/negatives."""
    return artifacts_root() / "negatives"


def open_negatives(folder: str | os.PathLike, data: BitmapDataset) -> BitmapDataset:
    """The negatives folder as a dataset (its categories in place of classes), checked against `data`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise QDError(f"{folder}: negatives folder does not exist or is not a folder ({FETCH_NEGATIVES_HINT})")
    names = list_categories(folder)  # a bad name: one line naming the file
    if not names:
        raise QDError(f"{folder}: negatives folder holds no <category>.npy files ({FETCH_NEGATIVES_HINT})")
    classes = {category_key(c): c for c in data.classes}
    shared = sorted((name, classes[category_key(name)]) for name in names if category_key(name) in classes)
    if shared:
        name, cls = shared[0]
        raise QDError(f"{category_path(folder, name)}: category {name!r} is one of the classes trained on "
                      f"({category_path(data.data_dir, cls)}); negatives must belong to none of them")
    negatives = BitmapDataset(folder)  # an invalid or empty file: one line naming it
    _refuse_shared_drawings(negatives, data)
    return negatives


def _refuse_shared_drawings(negatives: BitmapDataset, data: BitmapDataset) -> None:
    """One line naming the first negative file and row that is also a drawing of the data."""
    known = [drawing_hashes(rows) for rows in data.arrays]
    all_known = np.concatenate(known) if known else np.zeros(0, dtype=np.uint64)
    for name, rows in zip(negatives.classes, negatives.arrays):
        hashes = drawing_hashes(rows)
        for row in np.flatnonzero(np.isin(hashes, all_known)).tolist():
            for cls, data_hashes in enumerate(known):  # a hash match is checked byte for byte
                for data_row in np.flatnonzero(data_hashes == hashes[row]).tolist():
                    if np.array_equal(rows[row], data.arrays[cls][data_row]):
                        raise QDError(
                            f"{category_path(negatives.data_dir, name)}: row {row} is the same drawing as row "
                            f"{data_row} of {category_path(data.data_dir, data.classes[cls])}; negatives must "
                            "not hold drawings of the classes trained on")


def negatives_record(negatives: BitmapDataset, splits: dict[str, np.ndarray]) -> dict:
    """What a checkpoint keeps of the negatives it saw (`splits`: their `split_indices`)."""
    return {
        "dir": str(negatives.data_dir.resolve()),
        "categories": list(negatives.classes),
        "counts": [int(c) for c in negatives.counts],
        "splits": {name: int(len(splits[name])) for name in SPLITS},
        "sha256": {name: sha256_file(category_path(negatives.data_dir, name)) for name in negatives.classes},
    }


def negatives_changed(saved: dict, folder: str | os.PathLike) -> str:
    """Why `folder` is not the negatives folder `saved` describes ('' if it is): a category added,
    removed or with other bytes (by sha256)."""
    folder = Path(folder)
    if not folder.is_dir():
        return f"{folder}: the negatives folder is not there any more"
    names = list_categories(folder)
    if names != list(saved.get("categories", [])):
        added = sorted(set(names) - set(saved.get("categories", [])))
        removed = sorted(set(saved.get("categories", [])) - set(names))
        what = "; ".join(filter(None, (f"added {', '.join(added)}" if added else "",
                                       f"removed {', '.join(removed)}" if removed else "")))
        return f"{folder}: the negatives' categories changed ({what})"
    for name in names:
        if sha256_file(category_path(folder, name)) != saved.get("sha256", {}).get(name):
            return f"{category_path(folder, name)}: changed since training (sha256 differs)"
    return ""


def heldout_negatives(saved: dict, spec: SplitSpec, folder: str | os.PathLike | None = None,
                      limit: int | None = None) -> tuple[dict[str, np.ndarray], str]:
    """({"val": bitmaps, "test": bitmaps} (N, 784) uint8, evenly spaced up to `limit` per split, '') from the
    negatives a checkpoint recorded (in `folder`, default the recorded one), or ({}, why not)."""
    if not (folder or saved.get("dir")):
        return {}, "the checkpoint's record of its negatives names no folder"
    folder = Path(folder or saved["dir"])
    problem = negatives_changed(saved, folder)
    if problem:
        return {}, problem
    negatives = BitmapDataset(folder, list(saved["categories"]))
    splits = negatives.split_indices(spec)
    out = {}
    for name in ("val", "test"):
        indices = splits[name]
        if limit is not None and len(indices) > limit:
            indices = indices[np.linspace(0, len(indices) - 1, limit).round().astype(np.int64)]
        out[name] = negatives.take(indices)[0]
    return out, ""
