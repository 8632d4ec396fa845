"""What an export starts from: the checkpoint (loaded safely) and the drawings to check with.

Classes, preprocessing, split and data location all come from the checkpoint.
Validation uses the checkpoint's own test split; int8 calibration its train split;
the temperature and the open-set threshold are fitted on its validation split.
If the data folder recorded in the checkpoint is gone (and no `--data` is given),
ONNX/Core ML fidelity is checked on seeded random bitmaps instead, and every report
says so; int8 calibration cannot be faked and fails with a clear message.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from qd import __version__ as QD_VERSION
from qd.command import QDError
from qd.data import contract as C
from qd.data.bitmaps import BitmapDataset, SplitSpec
from qd.data.contract import LICENSE_NOTE, MODEL_FORMAT as ONNX_FORMAT_TAG, bitmaps_to_input
from qd.files import sha256_file
from qd.train.checkpoint import load_checkpoint, model_from_checkpoint

from .defaults import DEFAULT_MAX_DRAWINGS  # noqa: F401 (imported from here too)

CALIBRATION_DRAWINGS = 512
SYNTHETIC_DRAWINGS = 512


@dataclass
class CheckpointSource:
    path: Path
    payload: dict
    sha256: str
    model: torch.nn.Module

    @property
    def classes(self) -> list[str]:
        return list(self.payload["classes"])

    @property
    def preprocessing(self) -> dict:
        return dict(self.payload["preprocessing"])

    @property
    def run_name(self) -> str:
        return self.path.resolve().parent.name

    def model_metadata(self, precision: str = "fp32") -> dict[str, str]:
        """The metadata every exported model carries (docs/contracts.md), all strings."""
        p = self.payload
        return {
            C.META_FORMAT: ONNX_FORMAT_TAG,
            C.META_LABELS: json.dumps(self.classes),
            C.META_PREPROCESSING: json.dumps(self.preprocessing),
            C.META_ARCH: json.dumps({"name": p["arch"]["name"], "kwargs": p["arch"].get("kwargs", {})}),
            C.META_SPLIT: json.dumps(p["split"]),
            C.META_DATA: json.dumps(_data_record(p)),
            C.META_SOURCE_SHA256: self.sha256,
            C.META_VERSION: QD_VERSION,
            C.META_LICENSE: LICENSE_NOTE,
            C.META_PRECISION: precision,
        }


def _data_record(payload: dict) -> dict:
    data = payload.get("data", {}) or {}
    return {k: data.get(k) for k in ("dir", "categories", "counts", "max_per_category")}


def load_source(path: str | os.PathLike) -> CheckpointSource:
    """Load a checkpoint with weights_only=True; qd.train.checkpoint refuses pickle and damaged fields."""
    path = Path(path)
    payload = load_checkpoint(path)
    try:
        model = model_from_checkpoint(payload)
    except QDError as exc:
        raise QDError(f"{path}: {exc}") from None
    return CheckpointSource(path=path, payload=payload, sha256=sha256_file(path), model=model)


@dataclass
class ValidationData:
    """Model inputs to check exports with, and where they came from."""

    inputs: np.ndarray  # float32 (N, 1, 28, 28), already preprocessed
    labels: np.ndarray | None  # int64 (N,), None for synthetic inputs
    description: str
    synthetic: bool
    calibration: np.ndarray | None = None  # float32 train-split inputs for int8
    calibration_problem: str = ""
    fit_inputs: np.ndarray | None = None  # float32 validation-split inputs: temperature and open-set threshold
    fit_labels: np.ndarray | None = None
    fit_description: str = ""
    notes: list[str] = field(default_factory=list)


def _evenly_spaced(indices: np.ndarray, limit: int) -> np.ndarray:
    if len(indices) <= limit:
        return indices
    return indices[np.linspace(0, len(indices) - 1, limit).round().astype(np.int64)]


def load_validation_data(source: CheckpointSource, data_dir: str | os.PathLike | None = None,
                         max_drawings: int = DEFAULT_MAX_DRAWINGS) -> ValidationData:
    if data_dir and not Path(data_dir).is_dir():
        raise QDError(f"{data_dir}: --data folder does not exist (give the folder of <category>.npy files "
                      "the checkpoint was trained on, or leave --data out)")
    record = _data_record(source.payload)
    folder = Path(data_dir) if data_dir else (Path(record["dir"]) if record.get("dir") else None)
    spec = SplitSpec.from_dict(source.payload["split"])
    prep = source.preprocessing
    if folder is None or not folder.is_dir():
        return _synthetic(source, f"data folder {folder} not found" if folder else "checkpoint records no data folder")
    categories = record.get("categories") or source.classes
    dataset = BitmapDataset(folder, categories, record.get("max_per_category"))
    if dataset.classes != source.classes:
        raise QDError(f"{folder}: categories {dataset.classes} do not match the checkpoint's classes {source.classes}")
    notes = []
    if record.get("counts") and [int(c) for c in dataset.counts] != list(record["counts"]):
        notes.append(f"drawing counts in {folder} differ from the checkpoint's record (files changed since training)")
    splits = dataset.split_indices(spec)
    test = splits["test"]
    if len(test) == 0:
        return _synthetic(source, f"the test split of {folder} is empty")
    chosen = _evenly_spaced(test, max_drawings)
    bitmaps, labels = dataset.take(chosen)
    described = f"{len(chosen)} of {len(test)} test-split drawings from {folder}"
    calibration, problem = None, ""
    train = splits["train"]
    if len(train):
        calib_bitmaps, _ = dataset.take(_evenly_spaced(train, CALIBRATION_DRAWINGS))
        calibration = bitmaps_to_input(calib_bitmaps, prep)
    else:
        problem = f"the train split of {folder} is empty"
    fit_inputs = fit_labels = None
    val = _evenly_spaced(splits["val"], max_drawings)
    if len(val):
        fit_bitmaps, fit_labels = dataset.take(val)
        fit_inputs = bitmaps_to_input(fit_bitmaps, prep)
    return ValidationData(inputs=bitmaps_to_input(bitmaps, prep), labels=labels, description=described,
                          synthetic=False, calibration=calibration, calibration_problem=problem, notes=notes,
                          fit_inputs=fit_inputs, fit_labels=fit_labels,
                          fit_description=(f"{len(val)} of {len(splits['val'])} validation-split drawings from {folder}"
                                           if len(val) else f"the validation split of {folder} is empty"))


def _synthetic(source: CheckpointSource, why: str) -> ValidationData:
    """Seeded random sparse 'ink' bitmaps: enough to check numerical fidelity, not accuracy."""
    rng = np.random.default_rng(0)
    side = int(source.preprocessing["input_size"])
    ink = rng.random((SYNTHETIC_DRAWINGS, side * side)) < 0.15
    bitmaps = np.where(ink, rng.integers(64, 256, ink.shape), 0).astype(np.uint8)
    return ValidationData(
        inputs=bitmaps_to_input(bitmaps, source.preprocessing), labels=None,
        description=f"{SYNTHETIC_DRAWINGS} seeded random bitmaps ({why}; pass --data DIR to check on real drawings)",
        synthetic=True, calibration=None,
        calibration_problem=f"int8 calibration needs the checkpoint's training drawings: {why} (pass --data DIR)",
        fit_description=f"no validation drawings: {why}",
    )


def torch_outputs(source: CheckpointSource, inputs: np.ndarray, temperature: float = 1.0,
                  batch: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Reference (probabilities, logits) from the checkpoint's own network: softmax(logits / temperature)."""
    probs, logits = [], []
    with torch.inference_mode():
        for start in range(0, len(inputs), batch):
            out = source.model(torch.from_numpy(inputs[start : start + batch]))
            logits.append(out.numpy())
            probs.append(torch.softmax(out / temperature, dim=1).numpy())
    return np.concatenate(probs), np.concatenate(logits)


def inputs_to_bitmaps(inputs: np.ndarray, preprocessing: dict) -> np.ndarray:
    """Undo bitmaps_to_input: the uint8 (N, 28, 28) ink-high bitmaps model inputs came from."""
    std = float(preprocessing.get("std", 1.0))
    pixels = (inputs[:, 0] * std + float(preprocessing.get("mean", 0.0))) / float(preprocessing["scale"])
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
