"""Calibration and the open-set rule: the metadata contract and how every backend applies it.

qd-export writes two metadata entries (ONNX metadata_props, Core ML user metadata, model.json):

  qd.temperature  a JSON number T > 0: the graph's "probabilities" are softmax(logits / T)
                  (temperature scaling fitted on the validation split; "logits" stay raw)
  qd.open_set     a JSON object {"rule": ..., "threshold": x, "kept": share, "validation": {...}}:
                  a drawing is unknown when SCORES[rule] of its outputs is below `threshold`;
                  `kept` is the share of known validation drawings the threshold keeps

A score is higher for drawings that look like the known classes. This module is the one
place the key names, the output names and the rules are written; qd-export, qd-infer,
qd-eval and the browser demo (infer/web/openset.js mirrors SCORES) all read them from here.
numpy only: no torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from qd.data.contract import DEFAULT_KEPT, LOGITS, META_OPEN_SET as OPEN_SET_KEY, META_TEMPERATURE as TEMPERATURE_KEY, PROBABILITIES  # noqa: E501,F401
from qd.command import QDError


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float32) / np.float32(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class Score:
    """A familiarity score of one graph output, (N, C) -> (N,), higher = more like the known classes."""

    name: str
    output: str
    fn: Callable[[np.ndarray], np.ndarray]
    description: str

    def __call__(self, values: np.ndarray) -> np.ndarray:
        return self.fn(np.asarray(values, dtype=np.float32))


def _logsumexp(z: np.ndarray) -> np.ndarray:
    top = z.max(axis=1)
    return top + np.log(np.exp(z - top[:, None]).sum(axis=1))


SCORES: dict[str, Score] = {s.name: s for s in (
    Score("max_probability", PROBABILITIES, lambda p: p.max(axis=1),
          "the top (calibrated) probability"),
    Score("max_logit", LOGITS, lambda z: z.max(axis=1), "the largest logit"),
    Score("energy", LOGITS, _logsumexp, "minus the energy: logsumexp of the logits (Liu et al., 2020)"),
)}


@dataclass(frozen=True)
class OpenSetRule:
    """'unknown' when the score of a drawing is below the threshold."""

    rule: str
    threshold: float
    kept: float = DEFAULT_KEPT           # share of known validation drawings kept at export
    validation: dict | None = None       # what the threshold was fitted on (drawings, measured share kept)

    @property
    def score(self) -> Score:
        return SCORES[self.rule]

    @property
    def output(self) -> str:
        return self.score.output

    def with_threshold(self, threshold: float) -> "OpenSetRule":
        return OpenSetRule(self.rule, check_threshold(threshold, "--unknown-threshold"), self.kept, self.validation)

    def scores(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        return self.score(outputs[self.output])

    def unknown(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        return self.scores(outputs) < self.threshold

    def to_json(self) -> str:
        record = {"rule": self.rule, "threshold": self.threshold, "kept": self.kept}
        if self.validation is not None:
            record["validation"] = self.validation
        return json.dumps(record)


def check_threshold(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise QDError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def parse_temperature(path: Path, meta: dict[str, str]) -> float:
    """qd.temperature, or 1.0 for models exported before calibration existed."""
    raw = meta.get(TEMPERATURE_KEY)
    if raw is None:
        return 1.0
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        value = raw
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise QDError(f"{path}: model metadata {TEMPERATURE_KEY} must be a finite number above 0, got {raw[:40]!r}")
    return float(value)


def parse_open_set(path: Path, meta: dict[str, str]) -> OpenSetRule | None:
    """The model's open-set rule, None for models exported without one; malformed ones are refused."""
    raw = meta.get(OPEN_SET_KEY)
    if raw is None:
        return None

    def bad(why: str) -> QDError:
        return QDError(f"{path}: model metadata {OPEN_SET_KEY} {why}")

    try:
        record = json.loads(raw)
    except (ValueError, RecursionError):
        raise bad("is not valid JSON") from None
    if not isinstance(record, dict):
        raise bad("must be a JSON object with rule and threshold")
    rule = record.get("rule")
    if not isinstance(rule, str) or rule not in SCORES:
        shown = repr(rule)[:40]
        raise bad(f"names rule {shown}, this version knows {', '.join(SCORES)}")
    threshold, kept = record.get("threshold"), record.get("kept", DEFAULT_KEPT)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise bad(f"threshold must be a finite number, got {str(threshold)[:40]!r}")
    if isinstance(kept, bool) or not isinstance(kept, (int, float)) or not 0 < kept < 1:
        raise bad(f"kept must be a share between 0 and 1, got {str(kept)[:40]!r}")
    validation = record.get("validation")
    return OpenSetRule(rule, float(threshold), float(kept), validation if isinstance(validation, dict) else None)
