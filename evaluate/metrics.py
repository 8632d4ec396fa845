"""Classification figures from predictions, in plain numpy, and how far the probabilities can be trusted.

Everything here takes class indices and probability rows, so it is easy to check
by hand; tests/test_eval_metrics.py does exactly that on tiny cases.

Conventions (the ones scikit-learn uses with zero_division=0, made explicit):
- precision of a class nobody predicted is 0.0 when the class has examples, and
  None (undefined) when it has none either;
- recall of a class without examples is None;
- F1 is 0.0 when precision + recall is 0, None when either is None.

How far the probabilities can be trusted (below the figures): calibration, and the open-set rule at work.

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

from qd.data.contract import PROBABILITIES
from qd.infer.model import OpenSetRule, softmax, top_k


def top_k_accuracy(probabilities: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of rows whose true class is among the k most probable."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        return float("nan")
    hits = (top_k(probabilities, k)[0] == labels[:, None]).any(axis=1)
    return float(hits.mean())


def map_at_k(probabilities: np.ndarray, labels: np.ndarray, k: int = 3) -> float:
    """Mean average precision at k for one true label per row (Kaggle's Quick, Draw! metric):
    1/rank of the true class when it is in the top k, else 0, averaged over rows."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        return float("nan")
    hit = top_k(probabilities, k)[0] == labels[:, None]  # at most one True per row
    rank = np.argmax(hit, axis=1) + 1
    return float(np.where(hit.any(axis=1), 1.0 / rank, 0.0).mean())


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts: row = true class, column = predicted class."""
    labels = np.asarray(labels, dtype=np.int64)
    predicted = np.asarray(predicted, dtype=np.int64)
    flat = np.bincount(labels * num_classes + predicted, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def normalize_rows(matrix: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (rows without examples stay 0)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    sums = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, sums, out=np.zeros_like(matrix), where=sums > 0)


@dataclass(frozen=True)
class ClassScore:
    index: int
    name: str
    precision: float | None
    recall: float | None
    f1: float | None
    support: int      # true examples of the class
    predicted: int    # rows predicted as the class

    def to_dict(self) -> dict:
        return {"class": self.name, "index": self.index, "precision": self.precision, "recall": self.recall,
                "f1": self.f1, "support": self.support, "predicted": self.predicted}


def per_class_scores(confusion: np.ndarray, classes: list[str]) -> list[ClassScore]:
    """Precision, recall and F1 of every class, in class order."""
    confusion = np.asarray(confusion)
    true_pos = np.diag(confusion)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    scores = []
    for i, name in enumerate(classes):
        recall = float(true_pos[i] / support[i]) if support[i] else None
        if predicted[i]:
            precision = float(true_pos[i] / predicted[i])
        else:
            precision = 0.0 if support[i] else None
        scores.append(ClassScore(i, name, precision, recall, _f1(precision, recall), int(support[i]), int(predicted[i])))
    return scores


def _f1(precision: float | None, recall: float | None) -> float | None:
    if precision is None or recall is None:
        return None
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def worst_first(scores: list[ClassScore]) -> list[ClassScore]:
    """Classes that have examples, lowest F1 first (then lowest recall, then name)."""
    present = [s for s in scores if s.support > 0]
    return sorted(present, key=lambda s: (s.f1, s.recall, s.name))


def macro_f1(scores: list[ClassScore]) -> float:
    """Unweighted mean F1 over the classes that have examples."""
    values = [s.f1 for s in scores if s.support > 0]
    return float(np.mean(values)) if values else float("nan")


@dataclass(frozen=True)
class ConfusedPair:
    true: str
    predicted: str
    count: int
    share: float  # of the true class's examples

    def to_dict(self) -> dict:
        return {"true": self.true, "predicted": self.predicted, "count": self.count, "share": self.share}


def most_confused(confusion: np.ndarray, classes: list[str], limit: int = 10) -> list[ConfusedPair]:
    """The largest off-diagonal cells, biggest count first (ties: larger share, then names)."""
    confusion = np.asarray(confusion)
    support = confusion.sum(axis=1)
    pairs = [
        ConfusedPair(classes[t], classes[p], int(confusion[t, p]), float(confusion[t, p] / support[t]))
        for t, p in zip(*np.nonzero(confusion))
        if t != p
    ]
    pairs.sort(key=lambda c: (-c.count, -c.share, c.true, c.predicted))
    return pairs[:limit]


@dataclass(frozen=True)
class OverallScores:
    """Top-1, top-3 and MAP@3 over `count` drawings (qd-eval's overall figures)."""

    count: int
    top1: float
    top3: float
    map3: float

    def to_dict(self) -> dict:
        return {"count": self.count, "top1": self.top1, "top3": self.top3, "map3": self.map3}


def summarize(probabilities: np.ndarray, labels: np.ndarray) -> OverallScores:
    return OverallScores(
        count=int(len(labels)),
        top1=top_k_accuracy(probabilities, labels, 1),
        top3=top_k_accuracy(probabilities, labels, 3),
        map3=map_at_k(probabilities, labels, 3),
    )


def agreement(predicted_a: np.ndarray, predicted_b: np.ndarray) -> float:
    """Share of rows where two models pick the same top-1 class."""
    predicted_a, predicted_b = np.asarray(predicted_a), np.asarray(predicted_b)
    if len(predicted_a) == 0:
        return float("nan")
    return float((predicted_a == predicted_b).mean())


# ---------------------------------------------------------------- open set and calibration


def auroc(known_scores: np.ndarray, unknown_scores: np.ndarray) -> float:
    """Area under the ROC curve of telling known from unknown drawings by a score that is
    higher for known ones: P(known score > unknown score), ties counting half (Mann-Whitney U)."""
    known = np.asarray(known_scores, dtype=np.float64)
    unknown = np.asarray(unknown_scores, dtype=np.float64)
    if len(known) == 0 or len(unknown) == 0:
        return float("nan")
    both = np.concatenate([known, unknown])
    _, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0  # ranks from 1, ties share their mean rank
    ranks = average_rank[inverse]
    u = ranks[: len(known)].sum() - len(known) * (len(known) + 1) / 2.0
    return float(u / (len(known) * len(unknown)))


@dataclass(frozen=True)
class Reliability:
    """Confidence vs accuracy in equal-width confidence bins (for the reliability diagram)."""

    edges: np.ndarray       # (bins + 1,)
    confidence: np.ndarray  # (bins,) mean top-1 probability per bin (nan where empty)
    accuracy: np.ndarray    # (bins,) share correct per bin (nan where empty)
    counts: np.ndarray      # (bins,)
    ece: float              # expected calibration error: sum over bins of count/N * |accuracy - confidence|


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> Reliability:
    """Top-1 confidence binned into `bins` equal-width bins over (0, 1] (Guo et al., 2017)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels)
    confidence = probabilities.max(axis=1) if len(labels) else np.zeros(0)
    correct = (probabilities.argmax(axis=1) == labels) if len(labels) else np.zeros(0, dtype=bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, weights=confidence, minlength=bins) / counts
        mean_acc = np.bincount(which, weights=correct.astype(np.float64), minlength=bins) / counts
    filled = counts > 0
    ece = float(np.sum(counts[filled] * np.abs(mean_acc[filled] - mean_conf[filled])) / max(len(labels), 1)) \
        if len(labels) else float("nan")
    return Reliability(edges, mean_conf, mean_acc, counts, ece)


# ----------------------------------------------------------------------------- calibration and the open-set rule

CALIBRATION_BINS = 15


@dataclass
class Calibration:
    temperature: float
    before: Reliability | None   # None when the backend gives no logits
    after: Reliability

    def to_dict(self) -> dict:
        return {"temperature": self.temperature, "bins": CALIBRATION_BINS,
                "ece_before": None if self.before is None else self.before.ece, "ece_after": self.after.ece,
                "reliability_after": _curve(self.after),
                "reliability_before": None if self.before is None else _curve(self.before)}


def _curve(r: Reliability) -> dict:
    return {"confidence": r.confidence.tolist(), "accuracy": r.accuracy.tolist(), "counts": r.counts.tolist()}


def measure_calibration(run, labels: np.ndarray, temperature: float) -> Calibration:
    before = None if run.logits is None else reliability(softmax(run.logits), labels, CALIBRATION_BINS)
    return Calibration(temperature, before, reliability(run.probabilities, labels, CALIBRATION_BINS))


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
    negatives: dict | None = None  # per split ("val", "test"): {count, flagged} of the held-out negatives

    def to_dict(self) -> dict:
        return {"rule": self.rule.rule, "threshold": self.rule.threshold, "kept_at_export": self.rule.kept,
                "known": {"count": self.known_count, "flagged": self.known_flagged,
                          "top1_all": self.top1_all, "top1_accepted": self.top1_accepted},
                "unknown": None if not self.unknown_count else
                {"count": self.unknown_count, "flagged": self.unknown_flagged, "auroc": self.auroc},
                "negatives": self.negatives}


def flagged_share(rule: OpenSetRule, outputs: dict) -> float | None:
    """The share of drawings whose outputs the rule flags (None for no drawings)."""
    flagged = rule.unknown(outputs)
    return float(flagged.mean()) if len(flagged) else None


def open_set_figures(rule: OpenSetRule, known_outputs: dict, labels: np.ndarray,
                     unknown_outputs: dict | None = None, negative_outputs: dict | None = None) -> OpenSetFigures:
    scores = rule.scores(known_outputs)
    flagged = scores < rule.threshold
    correct = known_outputs[PROBABILITIES].argmax(axis=1) == labels
    figures = OpenSetFigures(rule, len(labels), float(flagged.mean()), float(correct.mean()),
                             float(correct[~flagged].mean()) if (~flagged).any() else float("nan"))
    if unknown_outputs is not None:
        unknown_scores = rule.scores(unknown_outputs)
        figures.unknown_count = len(unknown_scores)
        figures.unknown_flagged = float((unknown_scores < rule.threshold).mean())
        figures.auroc = auroc(scores, unknown_scores)
    if negative_outputs is not None:
        figures.negatives = {split: {"count": len(outputs[PROBABILITIES]), "flagged": flagged_share(rule, outputs)}
                             for split, outputs in negative_outputs.items()}
    return figures
