"""What qd-export fits on the validation split (qd.export.checkpoint_source), on small hand-made numbers:
the temperature is recovered from labels drawn at it and stays within its bounds; the open-set
threshold keeps at least the share asked and is the largest that does; fitted with validation
negatives, it keeps the same bound, flags the most negatives within it, records them and says when
it flags under half; the fitted rule and temperature are written as metadata that qd.infer.model
parses back.
"""

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qd.command import QDError
from qd.data.contract import LOGITS, META_OPEN_SET as OPEN_SET_KEY, META_TEMPERATURE as TEMPERATURE_KEY, fit_threshold
from qd.export.checkpoint_source import (MIN_NEGATIVES_FLAGGED, fit_confidence, fit_open_set, fit_temperature,
                                        negative_log_likelihood, unfitted)
from qd.export.run import _data_notes
from qd.infer.model import parse_open_set, parse_temperature, softmax

MODEL = Path("some/model.onnx")


def test_temperature_is_recovered_from_labels_drawn_at_that_temperature():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(4_000, 10))
    for true in (0.5, 2.5):
        p = softmax(logits, true).astype(np.float64)
        labels = (p.cumsum(1) > rng.random((len(p), 1))).argmax(1)
        fitted = fit_temperature(logits, labels)
        assert fitted == pytest.approx(true, rel=0.1)
        assert negative_log_likelihood(logits, labels, fitted) <= negative_log_likelihood(logits, labels, 1.0) + 1e-12



def test_temperature_stays_in_bounds_and_defaults_to_one():
    logits = np.array([[10.0, 0.0], [0.0, 10.0]])
    assert fit_temperature(logits, np.array([0, 1])) == pytest.approx(0.05, rel=1e-3)  # always right: sharpen
    assert fit_temperature(logits, np.array([1, 0])) == pytest.approx(20.0, rel=1e-3)  # always wrong: flatten
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=np.int64)) == 1.0



@settings(max_examples=60, deadline=None)
@given(scores=st.lists(st.floats(-100, 100, allow_nan=False), min_size=1, max_size=200),
       kept=st.floats(0.01, 0.99))
def test_threshold_keeps_at_least_the_share_asked_and_is_the_largest_that_does(scores, kept):
    scores = np.asarray(scores)
    threshold = fit_threshold(scores, kept)
    assert (scores >= threshold).mean() >= kept - 1e-12
    higher = scores[scores > threshold]
    if len(higher):  # any larger threshold would keep fewer than asked
        assert (scores >= higher.min()).mean() < kept



def test_threshold_refuses_bad_shares_and_empty_scores():
    for bad in (0, 1, 1.2, math.nan):
        with pytest.raises(QDError, match="--kept must be a share"):
            fit_threshold(np.ones(3), bad)
    with pytest.raises(QDError, match="no validation drawings"):
        fit_threshold(np.zeros(0), 0.95)



def test_fit_confidence_writes_a_rule_that_parses_back():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, size=(500, 5)).astype(np.float32)
    labels = logits.argmax(1)
    confidence = fit_confidence(logits, labels, kept=0.9, rule="max_logit", fitted_on="test")
    meta = confidence.metadata()
    assert set(meta) == {TEMPERATURE_KEY, OPEN_SET_KEY}
    rule = parse_open_set(MODEL, meta)
    assert parse_temperature(MODEL, meta) == confidence.temperature
    assert rule.threshold == confidence.rule.threshold and rule.kept == 0.9
    assert not rule.unknown({LOGITS: logits}).mean() > 0.1
    assert confidence.rule.validation == {"drawings": 500, "kept": pytest.approx(0.9, abs=0.002)}
    assert confidence.figures["nll_after"] <= confidence.figures["nll_before"]
    assert unfitted("no data").metadata() == {} and not unfitted("no data").fitted


@settings(max_examples=80, deadline=None)
@given(scores=st.lists(st.floats(-100, 100, allow_nan=False), min_size=1, max_size=200),
       negatives=st.lists(st.floats(-100, 100, allow_nan=False), max_size=200),
       kept=st.floats(0.01, 0.99))
def test_the_rule_fitted_with_negatives_keeps_the_bound_and_flags_the_most_negatives_within_it(scores, negatives,
                                                                                                kept):
    scores, negatives = np.asarray(scores), np.asarray(negatives)
    rule = fit_open_set(scores, kept, negatives)
    assert (scores < rule.threshold).mean() <= 1 - kept + 1e-12  # the bound on known drawings flagged always holds
    assert rule.threshold == fit_open_set(scores, kept).threshold
    flagged = (negatives < rule.threshold).mean() if len(negatives) else None
    for threshold in np.unique(np.concatenate([scores, negatives])):  # every threshold that changes a decision
        if (scores < threshold).mean() <= 1 - kept + 1e-12:
            assert flagged is None or (negatives < threshold).mean() <= flagged
    record = {"drawings": len(scores), "kept": pytest.approx((scores >= rule.threshold).mean(), abs=1e-6)}
    if len(negatives):
        record.update(negatives=len(negatives), negatives_flagged=pytest.approx(flagged, abs=1e-6))
    assert rule.validation == record and rule.kept == kept and rule.rule == "max_logit"


def test_the_validation_negatives_are_recorded_and_a_rule_flagging_under_half_of_them_is_said():
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 2, size=(400, 4)).astype(np.float32)
    labels = logits.argmax(1)
    known = logits.max(1)
    doubted = fit_confidence(logits, labels, kept=0.95, negative_logits=logits[:100] - 10)  # all far below
    assert doubted.rule.validation["negatives"] == 100 and doubted.rule.validation["negatives_flagged"] == 1.0
    assert doubted.weak_negatives is None
    assert parse_open_set(MODEL, doubted.metadata()).validation == doubted.rule.validation
    trusted = fit_confidence(logits, labels, kept=0.95, negative_logits=logits[known > np.median(known)][:60])
    assert trusted.rule.validation["negatives_flagged"] == 0.0
    assert trusted.rule.threshold == doubted.rule.threshold == fit_confidence(logits, labels, kept=0.95).rule.threshold
    assert trusted.weak_negatives == (f"the unknown threshold flags only 0.0% of the 60 validation negatives (under "
                                      f"{MIN_NEGATIVES_FLAGGED:.0%}): the model hardly tells them from its classes "
                                      "(train longer or with more negatives, or lower --kept)")
    assert fit_confidence(logits, labels).weak_negatives is None and unfitted("no data").weak_negatives is None
    exported = SimpleNamespace(data=SimpleNamespace(notes=[]), written={"onnx": MODEL}, confidence=trusted)
    assert _data_notes(exported) == [trusted.weak_negatives]  # qd-export prints it as a note
