"""Fitting on the validation split at export: the temperature and the open-set threshold.

Temperature scaling (Guo et al., 2017): one T > 0 that minimises the negative log-likelihood
of the validation labels under softmax(logits / T). It changes no top-1 answer, only how
sure the probabilities say the model is. The NLL is convex in 1 / T, so a golden-section
search over 1 / T finds it.

The threshold: the score below which a drawing is flagged unknown, chosen so that a share
`kept` of the known validation drawings stay at or above it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from qd.command import QDError
from qd.data.contract import DEFAULT_KEPT, LOGITS, META_OPEN_SET, META_TEMPERATURE, PROBABILITIES
from qd.infer.model import SCORES, OpenSetRule, softmax

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


def fit_threshold(scores: np.ndarray, kept: float) -> float:
    """The largest threshold that keeps at least `kept` of `scores` (unknown = score < threshold)."""
    if not 0 < kept < 1:
        raise QDError(f"--kept must be a share between 0 and 1 (e.g. 0.95), got {kept}")
    scores = np.sort(np.asarray(scores, dtype=np.float64))
    if len(scores) == 0:
        raise QDError("no validation drawings to fit the open-set threshold on")
    flagged = int(math.floor((1.0 - kept) * len(scores) + 1e-9))
    return float(scores[flagged])


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
                   fitted_on: str = "") -> Confidence:
    """Temperature first (it changes the probabilities a rule may score), then the threshold."""
    temperature = fit_temperature(logits, labels)
    outputs = {PROBABILITIES: softmax(logits, temperature), LOGITS: np.asarray(logits, dtype=np.float32)}
    scores = SCORES[rule](outputs[SCORES[rule].output])
    threshold = fit_threshold(scores, kept)
    measured = float((scores >= threshold).mean())
    figures = {
        "nll_before": negative_log_likelihood(logits, labels, 1.0),
        "nll_after": negative_log_likelihood(logits, labels, temperature),
    }
    validation = {"drawings": int(len(labels)), "kept": round(measured, 6)}
    return Confidence(temperature, OpenSetRule(rule, threshold, kept, validation), fitted_on, figures)

