"""How far the probabilities can be trusted: calibration, and the open-set rule at work.

Calibration: the expected calibration error (ECE) of the raw softmax(logits) ("before")
and of the model's calibrated probabilities ("after", softmax(logits / T) with the T
qd-export fitted), on the held-out drawings, and their reliability curves.

The open-set rule (the model's own, from its metadata): the share of known held-out
drawings it flags unknown, the top-1 of all of them and of those it accepts, and with
`--unknown` drawings of other categories the share of those it flags and the AUROC of
its score between the two.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qd.infer.openset import PROBABILITIES, OpenSetRule, softmax

from . import metrics

CALIBRATION_BINS = 15


@dataclass
class Calibration:
    temperature: float
    before: metrics.Reliability | None   # None when the backend gives no logits
    after: metrics.Reliability

    def to_dict(self) -> dict:
        return {"temperature": self.temperature, "bins": CALIBRATION_BINS,
                "ece_before": None if self.before is None else self.before.ece, "ece_after": self.after.ece,
                "reliability_after": _curve(self.after),
                "reliability_before": None if self.before is None else _curve(self.before)}


def _curve(r: metrics.Reliability) -> dict:
    return {"confidence": r.confidence.tolist(), "accuracy": r.accuracy.tolist(), "counts": r.counts.tolist()}


def measure_calibration(run, labels: np.ndarray, temperature: float) -> Calibration:
    before = None if run.logits is None else metrics.reliability(softmax(run.logits), labels, CALIBRATION_BINS)
    return Calibration(temperature, before, metrics.reliability(run.probabilities, labels, CALIBRATION_BINS))


@dataclass
class OpenSetFigures:
    rule: OpenSetRule
    known_count: int
    known_flagged: float        # share of the known held-out drawings flagged unknown
    top1_all: float
    top1_accepted: float        # top-1 of the known drawings the rule accepts (nan if it accepts none)
    unknown_count: int = 0
    unknown_flagged: float | None = None
    auroc: float | None = None  # known held-out vs --unknown drawings, by the rule's score

    def to_dict(self) -> dict:
        return {"rule": self.rule.rule, "threshold": self.rule.threshold, "kept_at_export": self.rule.kept,
                "known": {"count": self.known_count, "flagged": self.known_flagged,
                          "top1_all": self.top1_all, "top1_accepted": self.top1_accepted},
                "unknown": None if not self.unknown_count else
                {"count": self.unknown_count, "flagged": self.unknown_flagged, "auroc": self.auroc}}


def open_set_figures(rule: OpenSetRule, known_outputs: dict, labels: np.ndarray,
                     unknown_outputs: dict | None = None) -> OpenSetFigures:
    scores = rule.scores(known_outputs)
    flagged = scores < rule.threshold
    correct = known_outputs[PROBABILITIES].argmax(axis=1) == labels
    figures = OpenSetFigures(rule, len(labels), float(flagged.mean()), float(correct.mean()),
                             float(correct[~flagged].mean()) if (~flagged).any() else float("nan"))
    if unknown_outputs is not None:
        unknown_scores = rule.scores(unknown_outputs)
        figures.unknown_count = len(unknown_scores)
        figures.unknown_flagged = float((unknown_scores < rule.threshold).mean())
        figures.auroc = metrics.auroc(scores, unknown_scores)
    return figures
