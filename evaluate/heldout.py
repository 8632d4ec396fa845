"""Held-out drawings to evaluate on, labelled with the model's class indices.

Three sources:
- the model's own training data (metadata qd.data: dir, categories,
  max_per_category) cut with its split (metadata qd.split) -- by default the test split;
- `--data DIR` of `<category>.npy` files: every row (or one split of them, with --split);
- `--data DIR` of class-named subfolders of drawings, read as qd-infer reads them:
  images through qd.data.images (the shared preprocessing), .npy arrays, .ndjson strokes.

Data categories are matched to the model's labels by name, ignoring case and
treating spaces, hyphens and underscores alike ("House Plant" = "house_plant").
A category the model does not know is an error unless ignore_unknown is set.

Drawings of categories outside the model (`--unknown PATH`: folders, images, .npy,
.ndjson) are read the same way, unlabelled: the open-set rule should flag them. So should
the held-out (validation and test) negatives of a model trained with `qd-train --negatives`,
found from its export's model.json (`load_negatives`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qd.command import ProgressBar, QDError
from qd.data.bitmaps import SPLITS, SUFFIX, BitmapDataset, SplitSpec, category_path, list_categories
from qd.data.negatives import heldout_negatives
from qd.machine import usable_cpus

ALL = "all"
MAX_DRAWINGS = 500_000  # held in memory with one probability row per backend; ~2 GB at 345 classes
SPLIT_CHOICES = (*SPLITS, ALL)


@dataclass
class HeldOut:
    bitmaps: np.ndarray        # (N, 784) uint8, ink high on 0
    labels: np.ndarray         # (N,) int64 indices into the model's labels
    source: dict               # what was evaluated, for report.json
    origins: list[str] = field(default_factory=list)  # per drawing: "star.npy#12" or "Apple/0.png"
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def describe(self) -> str:
        s = self.source
        where = s.get("dir", "?")
        if s["kind"] == "class-folders":
            return f"{len(self):,} drawings in {len(s['categories'])} class folders of {where}"
        part = "all rows" if s["split"] == ALL else f"{s['split']} split"
        return f"{part} of {where} ({len(s['categories'])} categories, {len(self):,} drawings)"


def canonical(name: str) -> str:
    return re.sub(r"[\s_\-]+", "_", name.strip().lower())


def map_to_model(categories: list[str], labels: list[str], where: str, ignore_unknown: bool) -> tuple[dict[str, int], list[str]]:
    """Data category -> model class index, and the categories the model does not know."""
    index = {canonical(name): i for i, name in enumerate(labels)}
    known = {c: index[canonical(c)] for c in categories if canonical(c) in index}
    unknown = [c for c in categories if canonical(c) not in index]
    if unknown and not ignore_unknown:
        listed = ", ".join(unknown[:8]) + (f" and {len(unknown) - 8} more" if len(unknown) > 8 else "")
        raise QDError(f"{where}: the model does not know categor{'y' if len(unknown) == 1 else 'ies'} "
                      f"{listed} (pass --ignore-unknown to skip {'it' if len(unknown) == 1 else 'them'})")
    if not known:
        raise QDError(f"{where}: none of its categories is one of the model's {len(labels)} classes")
    return known, unknown


def from_training_data(model, split: str, ignore_unknown: bool) -> HeldOut:
    """The given split of the data the model was trained on, as its metadata describes it."""
    data = model.data
    if not data or not data.get("dir"):
        raise QDError(f"{model.path}: metadata does not say which data the model was trained on (qd.data); pass --data DIR")
    data_dir = Path(data["dir"])
    if not data_dir.is_dir():
        raise QDError(f"{data_dir}: the model's training data is not there any more; pass --data DIR")
    gone = [c for c in data.get("categories") or [] if not category_path(data_dir, c).is_file()]
    if gone:
        raise QDError(f"{data_dir}: training categor{'y' if len(gone) == 1 else 'ies'} {', '.join(gone[:8])} "
                      "no longer there; pass --data DIR")
    held = from_npy_dir(data_dir, model, split, ignore_unknown, data.get("categories"), data.get("max_per_category"))
    held.source["kind"] = "training-data"
    if split in ("train", ALL):
        held.notes.append(f"the {split} split holds drawings the model learned from: expect flattering figures")
    expected = data.get("counts")
    if expected is not None and list(expected) != held.source["counts"]:
        held.notes.append(f"{data_dir}: category sizes differ from training time; split by drawing hash, so trained drawings stay out")
    return held


def from_npy_dir(data_dir: Path, model, split: str, ignore_unknown: bool,
                 categories: list[str] | None = None, max_per_category: int | None = None) -> HeldOut:
    if split != ALL and not model.split:
        raise QDError(f"{model.path}: metadata has no split (qd.split), so --split {split} cannot be cut")
    present = categories or list_categories(data_dir)
    known, unknown = map_to_model(present, model.labels, str(data_dir), ignore_unknown)
    dataset = BitmapDataset(data_dir, sorted(known), max_per_category)
    if split == ALL:
        indices = np.arange(len(dataset), dtype=np.int64)
    else:
        indices = dataset.split_indices(SplitSpec.from_dict(model.split))[split]
    if not len(indices):
        raise QDError(f"{data_dir}: the {split} split is empty")
    if len(indices) > MAX_DRAWINGS:
        raise QDError(f"{data_dir}: {len(indices):,} drawings to evaluate, more than {MAX_DRAWINGS:,} fit comfortably "
                      "in memory; pass --max-per-category N")
    bitmaps, data_labels = dataset.take(indices)
    to_model = np.array([known[c] for c in dataset.classes], dtype=np.int64)
    rows = indices - dataset.offsets[data_labels]
    origins = [f"{dataset.classes[c]}{SUFFIX}#{r}" for c, r in zip(data_labels.tolist(), rows.tolist())]
    notes = [f"skipped categories the model does not know: {', '.join(unknown)}"] if unknown else []
    source = {"kind": "npy", "dir": str(data_dir.resolve()), "split": split, "categories": dataset.classes,
              "counts": [int(c) for c in dataset.counts], "max_per_category": max_per_category,
              "ignored_categories": unknown}
    return HeldOut(bitmaps.reshape(-1, 784), to_model[data_labels], source, origins, notes)


def from_class_folders(data_dir: Path, model, ignore_unknown: bool, workers: int | None = None,
                       progress: ProgressBar | None = None) -> HeldOut:
    """Class-named subfolders of drawings, read exactly as qd-infer reads them (images through
    qd.data.decode, the shared parallel path; also .npy arrays and .ndjson strokes), all folders
    in one pass; unreadable files become notes."""
    from qd.infer.inputs import Drawings, Plan, read_inputs

    folders = sorted(p for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    known, unknown = map_to_model([p.name for p in folders], model.labels, str(data_dir), ignore_unknown)
    plan = Plan.of([data_dir / f.name for f in folders if f.name in known], recursive=True)
    if progress is not None and progress.active:
        progress.step(f"reading {data_dir}", total=plan.drawings())
    bitmaps, labels, origins, failed = [], [], [], []
    prefix = f"{data_dir}{os.sep}"
    for event in read_inputs(plan, workers=workers or usable_cpus()):
        if isinstance(event, Drawings):
            names = [name[len(prefix):] if name.startswith(prefix) else name for name in event.names]
            bitmaps.append(event.bitmaps.reshape(-1, 784))
            labels += [known[name.split(os.sep, 1)[0]] for name in names]
            origins += names
            if len(labels) > MAX_DRAWINGS:
                raise QDError(f"{data_dir}: more than {MAX_DRAWINGS:,} drawings in its class folders, more than "
                              "fit comfortably in memory; evaluate a sample of them")
        else:
            failed.append(event.message)
        if progress is not None:
            progress.advance(len(event.names) if isinstance(event, Drawings) else 1)
    if not labels:
        raise QDError(f"{data_dir}: no readable drawings in its class folders")
    labels = np.array(labels, dtype=np.int64)
    categories = sorted(known, key=lambda c: known[c])
    notes = [f"skipped folders the model does not know: {', '.join(unknown)}"] if unknown else []
    notes += [f"skipped: {line}" for line in failed]
    source = {"kind": "class-folders", "dir": str(data_dir.resolve()), "split": ALL, "categories": categories,
              "counts": [int((labels == known[c]).sum()) for c in categories], "ignored_categories": unknown,
              "unreadable": len(failed)}
    return HeldOut(np.concatenate(bitmaps).astype(np.uint8, copy=False), labels, source, origins, notes)


def load_heldout(model, data_dir: str | None, split: str | None, ignore_unknown: bool,
                 max_per_category: int | None = None, progress: ProgressBar | None = None,
                 workers: int | None = None) -> HeldOut:
    """Pick the source: the model's own data (default: test split) or --data DIR.

    max_per_category caps a --data folder of .npy files at its first N rows per category
    (the model's own data is always read with the cap it was trained with)."""
    if split is not None and split not in SPLIT_CHOICES:
        raise QDError(f"--split must be one of {', '.join(SPLIT_CHOICES)}, got {split!r}")
    if max_per_category is not None and max_per_category < 1:
        raise QDError(f"--max-per-category must be at least 1, got {max_per_category}")
    if data_dir is None:
        if max_per_category is not None:
            raise QDError("--max-per-category applies to --data; the model's own data is read as it was trained")
        return from_training_data(model, split or "test", ignore_unknown)
    data_dir = Path(data_dir)
    if not data_dir.exists():
        raise QDError(f"{data_dir}: data directory does not exist")
    if not data_dir.is_dir():
        raise QDError(f"{data_dir}: not a directory")
    if any(p.name.endswith(SUFFIX) and p.is_file() for p in data_dir.iterdir()):
        held = from_npy_dir(data_dir, model, split or ALL, ignore_unknown, max_per_category=max_per_category)
        trained_on = (model.data or {}).get("dir")
        if (split or ALL) in (ALL, "train", "val") and trained_on and _same_dir(trained_on, data_dir):
            held.notes.append(f"{data_dir} is the model's training data: these rows include drawings it learned "
                              "from (leave out --data for its test split)")
        return held
    if any(p.is_dir() and not p.name.startswith(".") for p in data_dir.iterdir()):
        if split not in (None, ALL):
            raise QDError(f"{data_dir}: --split applies to a folder of <category>.npy files; class folders are evaluated whole")
        return from_class_folders(data_dir, model, ignore_unknown, workers=workers, progress=progress)
    raise QDError(f"{data_dir}: no <category>.npy files and no class-named subfolders of drawings")


def _same_dir(a: str, b: Path) -> bool:
    try:
        return Path(a).resolve() == b.resolve()
    except OSError:
        return False


@dataclass
class UnknownDrawings:
    """Drawings of categories outside the model (--unknown): what the open-set rule should flag."""

    bitmaps: np.ndarray        # (N, 784) uint8, ink high on 0
    origins: list[str]         # per drawing: its file (and row or line)
    paths: list[str]
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.bitmaps)

    def describe(self) -> str:
        where = ", ".join(self.paths[:3]) + (f" and {len(self.paths) - 3} more" if len(self.paths) > 3 else "")
        return f"{len(self):,} drawings from {where}"


def load_unknown(paths: list[str | os.PathLike], workers: int | None = None,
                 progress: ProgressBar | None = None) -> UnknownDrawings:
    """Folders, images, .npy and .ndjson files read exactly as qd-infer reads them; unreadable ones become notes."""
    from qd.infer.inputs import Drawings, Plan, read_inputs

    paths = [str(p) for p in paths]
    for path in paths:
        if not os.path.exists(path):
            raise QDError(f"--unknown {path}: no such file or directory")
    plan = Plan.of(paths, recursive=True)
    if progress is not None and progress.active:
        progress.step("reading the --unknown drawings", total=plan.drawings())
    bitmaps, origins, notes = [], [], []
    for event in read_inputs(plan, workers=workers or usable_cpus()):
        if isinstance(event, Drawings):
            bitmaps.append(event.bitmaps.reshape(-1, 784))
            origins += event.names
            if len(origins) > MAX_DRAWINGS:
                raise QDError(f"{', '.join(paths)}: more than {MAX_DRAWINGS:,} unknown drawings, more than fit "
                              "comfortably in memory; evaluate a sample of them")
        else:
            notes.append(f"skipped (--unknown): {event.message}")
        if progress is not None:
            progress.advance(len(event.names) if isinstance(event, Drawings) else 1)
    if not bitmaps:
        raise QDError(f"--unknown {' '.join(paths)}: no readable drawings")
    return UnknownDrawings(np.concatenate(bitmaps).astype(np.uint8, copy=False), origins, paths, notes)


@dataclass
class Negatives:
    """The held-out negatives a model was trained with (qd-train --negatives), per split, or why there are none."""

    bitmaps: dict[str, np.ndarray]   # "val", "test" -> (N, 784) uint8; empty when unavailable
    source: dict                     # for report.json: dir, categories, and a note when unavailable

    @property
    def available(self) -> bool:
        return bool(self.bitmaps)


def load_negatives(model) -> Negatives | None:
    """The validation and test negatives recorded in the model's card ("confidence"."negatives"), split as the
    model's data was; None when the model was trained without negatives (or has no card)."""
    card = model.card if isinstance(model.card, dict) else {}
    confidence = card.get("confidence") if isinstance(card.get("confidence"), dict) else {}
    saved = confidence.get("negatives")
    if not isinstance(saved, dict) or not isinstance(saved.get("categories"), list) or not model.split:
        return None
    source = {"dir": saved.get("dir"), "categories": saved["categories"]}
    try:
        held, problem = heldout_negatives(saved, SplitSpec.from_dict(model.split), limit=MAX_DRAWINGS // 2)
    except QDError as exc:
        held, problem = {}, str(exc)
    if problem:
        return Negatives({}, {**source, "note": f"held-out negatives not evaluated: {problem}"})
    return Negatives(held, {**source, "counts": {split: len(rows) for split, rows in held.items()}})
