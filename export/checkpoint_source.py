"""What an export starts from, and what it fits: the checkpoint (loaded safely), the
drawings to check with, the temperature and open-set threshold fitted on them, and
ExportContext, the state one run's formats share.

Classes, preprocessing, split and data location all come from the checkpoint.
Validation uses the checkpoint's own test split; int8 calibration its train split;
the temperature and the open-set threshold are fitted on its validation split.
If the data folder recorded in the checkpoint is gone (and no `--data` is given),
ONNX/Core ML fidelity is checked on seeded random bitmaps instead, and every report
says so; int8 calibration cannot be faked and fails with a clear message.

Temperature scaling (Guo et al., 2017): one T > 0 that minimises the negative log-likelihood
of the validation labels under softmax(logits / T). It changes no top-1 answer, only how
sure the probabilities say the model is. The NLL is convex in 1 / T, so a golden-section
search over 1 / T finds it. The threshold: the score below which a drawing is flagged
unknown, chosen so that a share `kept` of the known validation drawings stay at or above it.

A checkpoint trained with negatives (`qd-train --negatives`) records them: the threshold is fitted
with its validation negatives too (fit_open_set: the share of them flagged is recorded beside the
known drawings', and a note says when it is under half), and the export measures the share of its
held-out (validation and test) negatives the fitted rule flags, beside the share of known drawings
it flags (`ExportContext.negatives`, model.json "confidence").

torch_outputs() is the one place the checkpoint's network runs in torch, for the
validators and for qd-eval's torch backend.
"""


from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

import qd
from qd.command import QDError
from qd.data.bitmaps import BitmapDataset, SplitSpec
from qd.data.negatives import heldout_negatives
from qd.data.contract import (DEFAULT_KEPT, LICENSE_NOTE, LOGITS, META_ARCH, META_DATA, META_FORMAT, META_LABELS,
                              META_LICENSE, META_OPEN_SET, META_PRECISION, META_PREPROCESSING, META_SOURCE_SHA256,
                              META_SPLIT, META_TEMPERATURE, META_VERSION, MODEL_FORMAT, PROBABILITIES,
                              bitmaps_to_input, fit_threshold)
from qd.files import sha256_file
from qd.infer.model import SCORES, OpenSetRule, softmax
from qd.train.checkpoint import load_checkpoint, model_from_checkpoint

from .formats import ExportOptions

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
            META_FORMAT: MODEL_FORMAT,
            META_LABELS: json.dumps(self.classes),
            META_PREPROCESSING: json.dumps(self.preprocessing),
            META_ARCH: json.dumps({"name": p["arch"]["name"], "kwargs": p["arch"].get("kwargs", {})}),
            META_SPLIT: json.dumps(p["split"]),
            META_DATA: json.dumps(_data_record(p)),
            META_SOURCE_SHA256: self.sha256,
            META_VERSION: qd.__version__,
            META_LICENSE: LICENSE_NOTE,
            META_PRECISION: precision,
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
                         max_drawings: int = ExportOptions.max_drawings) -> ValidationData:
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


def torch_outputs(network: torch.nn.Module, inputs: np.ndarray, temperature: float = 1.0,
                  batch: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Reference (probabilities, logits) from a checkpoint's network: softmax(logits / temperature)."""
    probs, logits = [], []
    with torch.inference_mode():
        for start in range(0, len(inputs), batch):
            out = network(torch.from_numpy(inputs[start : start + batch]))
            logits.append(out.numpy())
            probs.append(torch.softmax(out / temperature, dim=1).numpy())
    return np.concatenate(probs), np.concatenate(logits)


def inputs_to_bitmaps(inputs: np.ndarray, preprocessing: dict) -> np.ndarray:
    """Undo bitmaps_to_input: the uint8 (N, 28, 28) ink-high bitmaps model inputs came from."""
    std = float(preprocessing.get("std", 1.0))
    pixels = (inputs[:, 0] * std + float(preprocessing.get("mean", 0.0))) / float(preprocessing["scale"])
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- fitted on the validation split

# The rule qd-export writes, chosen by measurement: bench/open_set.py, docs/open-set.md.
CHOSEN_RULE = "max_logit"

MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0
_GOLDEN = (math.sqrt(5) - 1) / 2


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = np.asarray(logits, dtype=np.float64) / temperature
    top = z.max(axis=1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(z)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, iterations: int = 40) -> float:
    """The T in [0.05, 20] with the lowest validation NLL (1.0 when there is nothing to fit on)."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return 1.0
    lo, hi = 1.0 / MAX_TEMPERATURE, 1.0 / MIN_TEMPERATURE  # over beta = 1 / T

    def nll(beta: float) -> float:
        return negative_log_likelihood(logits, labels, 1.0 / beta)

    a, b = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(iterations):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - _GOLDEN * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + _GOLDEN * (hi - lo)
            fb = nll(b)
    return float(round(1.0 / ((lo + hi) / 2), 6))


# Below this share of its validation negatives flagged, an export says the rule hardly tells them apart.
MIN_NEGATIVES_FLAGGED = 0.5


def fit_open_set(scores: np.ndarray, kept: float, negative_scores: np.ndarray | None = None,
                 rule: str = CHOSEN_RULE) -> OpenSetRule:
    """The rule's threshold, fitted on the validation split's scores, and what it was fitted on.

    The threshold is the largest that keeps `kept` of the known drawings (`scores`): at most 1 - kept
    of them are flagged. The validation negatives (`negative_scores`, a run trained with --negatives)
    are flagged when their score is below it; both shares flagged only grow with the threshold, so
    within that bound no other threshold flags more of the negatives (docs/open-set.md, "With real
    negatives"). Their count and the share flagged are recorded beside the known drawings'."""
    scores = np.asarray(scores, dtype=np.float64)
    threshold = fit_threshold(scores, kept)
    validation = {"drawings": int(len(scores)), "kept": round(float((scores >= threshold).mean()), 6)}
    if negative_scores is not None and len(negative_scores):
        negative_scores = np.asarray(negative_scores, dtype=np.float64)
        validation.update(negatives=int(len(negative_scores)),
                          negatives_flagged=round(float((negative_scores < threshold).mean()), 6))
    return OpenSetRule(rule, threshold, kept, validation)


@dataclass(frozen=True)
class Confidence:
    """What an export run fitted on the validation split, written into every model's metadata."""

    temperature: float
    rule: OpenSetRule | None      # None: not fitted (no validation drawings), the models cannot flag unknowns
    fitted_on: str                # which drawings, or why nothing was fitted
    figures: dict = field(default_factory=dict)  # NLL and ECE before / after, share kept: for model.json

    @property
    def fitted(self) -> bool:
        return self.rule is not None

    @property
    def weak_negatives(self) -> str | None:
        """A one-line warning when the rule flags under MIN_NEGATIVES_FLAGGED of the validation negatives."""
        validation = self.rule.validation if self.rule is not None else None
        if not validation or validation.get("negatives_flagged", 1.0) >= MIN_NEGATIVES_FLAGGED:
            return None
        return (f"the unknown threshold flags only {validation['negatives_flagged']:.1%} of the "
                f"{validation['negatives']:,} validation negatives (under {MIN_NEGATIVES_FLAGGED:.0%}): the model "
                "hardly tells them from its classes (train longer or with more negatives, or lower --kept)")

    def metadata(self) -> dict[str, str]:
        if not self.fitted:
            return {}
        return {META_TEMPERATURE: json.dumps(self.temperature), META_OPEN_SET: self.rule.to_json()}

    def card(self) -> dict:
        """model.json's "confidence" entry."""
        return {"temperature": self.temperature, "open_set": json.loads(self.rule.to_json()) if self.rule else None,
                "fitted_on": self.fitted_on, **self.figures}


def unfitted(why: str) -> Confidence:
    return Confidence(temperature=1.0, rule=None, fitted_on=why)


def fit_confidence(logits: np.ndarray, labels: np.ndarray, kept: float = DEFAULT_KEPT, rule: str = CHOSEN_RULE,
                   fitted_on: str = "", negative_logits: np.ndarray | None = None) -> Confidence:
    """Temperature first (it changes the probabilities a rule may score), then the threshold (fit_open_set),
    with the validation negatives' logits when the run was trained with negatives."""
    temperature = fit_temperature(logits, labels)

    def scores(raw: np.ndarray) -> np.ndarray:
        outputs = {PROBABILITIES: softmax(raw, temperature), LOGITS: np.asarray(raw, dtype=np.float32)}
        return SCORES[rule](outputs[SCORES[rule].output])

    figures = {
        "nll_before": negative_log_likelihood(logits, labels, 1.0),
        "nll_after": negative_log_likelihood(logits, labels, temperature),
    }
    negatives = None if negative_logits is None else scores(negative_logits)
    return Confidence(temperature, fit_open_set(scores(logits), kept, negatives, rule), fitted_on, figures)


# ----------------------------------------------------------------------------- one run's shared state

@dataclass
class ExportContext:
    source: CheckpointSource
    out_dir: Path  # where this run writes (the staging folder)
    previous_dir: Path | None = None  # the export folder being replaced (its previous set), if any
    options: ExportOptions = field(default_factory=ExportOptions)
    written: dict[str, Path] = field(default_factory=dict)  # format name -> committed file
    shared: dict = field(default_factory=dict)  # what one format's validation computed that another reuses

    @cached_property
    def data(self) -> ValidationData:
        return load_validation_data(self.source, self.options.data_dir, self.options.max_drawings)

    @cached_property
    def held_negatives(self) -> tuple[dict[str, np.ndarray], str] | None:
        """The checkpoint's held-out negatives ({"val", "test"} bitmaps, up to --max-drawings each) and '',
        or ({}, why not); None when the run saw no negatives."""
        saved = self.source.payload.get("negatives")
        if not isinstance(saved, dict) or not saved:
            return None
        try:  # negatives that cannot be read are a note, never a failed export
            return heldout_negatives(saved, SplitSpec.from_dict(self.source.payload["split"]),
                                     limit=self.options.max_drawings)
        except QDError as exc:
            return {}, str(exc)
        except OSError as exc:
            return {}, f"{saved.get('dir')}: {exc.strerror or exc}"

    @cached_property
    def confidence(self) -> Confidence:
        """Temperature and open-set threshold, fitted once per run on the validation split (its negatives too)."""
        data = self.data
        if data.synthetic or data.fit_inputs is None:
            return unfitted(data.fit_description)
        _, logits = torch_outputs(self.source.model, data.fit_inputs)
        negative_logits, fitted_on = None, data.fit_description
        held = self.held_negatives
        if held is not None and not held[1] and len(held[0]["val"]):
            _, negative_logits = torch_outputs(self.source.model,
                                               bitmaps_to_input(held[0]["val"], self.source.preprocessing))
            saved = self.source.payload["negatives"]
            fitted_on += (f", and {len(negative_logits):,} validation negatives ({len(saved['categories'])} "
                          f"categories) from {saved['dir']}")
        return fit_confidence(logits, data.fit_labels, self.options.kept, fitted_on=fitted_on,
                              negative_logits=negative_logits)

    def model_metadata(self, precision: str = "fp32") -> dict[str, str]:
        """Every exported model's metadata: the checkpoint's card plus what this run fitted."""
        return {**self.source.model_metadata(precision), **self.confidence.metadata()}

    @cached_property
    def reference(self) -> tuple[np.ndarray, np.ndarray]:
        """torch (calibrated probabilities, logits) on the validation inputs, computed once per run."""
        return torch_outputs(self.source.model, self.data.inputs, self.confidence.temperature)

    @cached_property
    def negatives(self) -> dict | None:
        """The share of the checkpoint's held-out negatives the fitted rule flags, beside the share of known
        drawings it flags (model.json's "confidence"."negatives"); None when the run saw no negatives."""
        if self.held_negatives is None:
            return None
        saved = self.source.payload["negatives"]
        entry = {key: saved.get(key) for key in ("dir", "categories", "counts", "splits", "sha256")}
        rule = self.confidence.rule
        if rule is None or self.data.synthetic:
            return {**entry, "available": False, "reason": f"no open-set rule fitted ({self.confidence.fitted_on})"}
        held, problem = self.held_negatives
        if problem:
            return {**entry, "available": False, "reason": problem}

        def flagged(bitmaps: np.ndarray) -> float | None:
            if not len(bitmaps):
                return None
            probabilities, logits = torch_outputs(self.source.model, bitmaps_to_input(bitmaps, self.source.preprocessing),
                                                  self.confidence.temperature)
            return float(rule.unknown({PROBABILITIES: probabilities, LOGITS: logits}).mean())

        probabilities, logits = self.reference
        return {**entry, "available": True, "rule": rule.rule, "threshold": rule.threshold,
                "validation": {"drawings": len(held["val"]), "flagged": flagged(held["val"])},
                "test": {"drawings": len(held["test"]), "flagged": flagged(held["test"])},
                "known": {"validation_flagged": round(1.0 - rule.validation["kept"], 6),
                          "test_flagged": float(rule.unknown({PROBABILITIES: probabilities, LOGITS: logits}).mean())}}
