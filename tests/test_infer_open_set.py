"""The open-set contract and the fitting behind it, on small hand-made numbers (no model)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qd.data.errors import QDError
from qd.evaluate.metrics import auroc, reliability
from qd.export.confidence import fit_confidence, fit_temperature, fit_threshold, negative_log_likelihood, unfitted
from qd.infer.openset import (LOGITS, OPEN_SET_KEY, PROBABILITIES, SCORES, TEMPERATURE_KEY, OpenSetRule,
                              parse_open_set, parse_temperature, softmax)

MODEL = Path("some/model.onnx")


def rule_json(**fields) -> dict[str, str]:
    record = {"rule": "max_logit", "threshold": 2.5, "kept": 0.95, **fields}
    return {OPEN_SET_KEY: json.dumps(record)}


# ----------------------------------------------------------------------------- metadata


def test_a_rule_round_trips_through_its_metadata():
    rule = OpenSetRule("energy", 3.25, 0.9, {"drawings": 10, "kept": 0.9})
    parsed = parse_open_set(MODEL, {OPEN_SET_KEY: rule.to_json()})
    assert parsed == rule and parsed.output == LOGITS


def test_models_without_open_set_metadata_have_no_rule_and_temperature_one():
    assert parse_open_set(MODEL, {}) is None
    assert parse_temperature(MODEL, {}) == 1.0


@pytest.mark.parametrize("meta,reason", [
    ({OPEN_SET_KEY: "{not json"}, "is not valid JSON"),
    ({OPEN_SET_KEY: "[1, 2]"}, "must be a JSON object"),
    (rule_json(rule="mahalanobis"), "names rule 'mahalanobis'"),
    (rule_json(rule=None), "names rule None"),
    (rule_json(threshold="2.5"), "threshold must be a finite number"),
    (rule_json(threshold=True), "threshold must be a finite number"),
    (rule_json(threshold=[2.5]), "threshold must be a finite number"),
    ({OPEN_SET_KEY: '{"rule": "max_logit", "threshold": NaN}'}, "threshold must be a finite number"),
    ({OPEN_SET_KEY: '{"rule": "max_logit", "threshold": Infinity}'}, "threshold must be a finite number"),
    (rule_json(kept=1.5), "kept must be a share"),
    (rule_json(kept=0), "kept must be a share"),
])
def test_malformed_open_set_metadata_is_refused_naming_the_file(meta, reason):
    with pytest.raises(QDError, match=reason) as error:
        parse_open_set(MODEL, meta)
    message = str(error.value)
    assert message.startswith(f"{MODEL}: model metadata {OPEN_SET_KEY}") and "\n" not in message


@pytest.mark.parametrize("raw", ["0", "-1.5", "NaN", "Infinity", '"1.2"', "true", "[1]", "hot"])
def test_malformed_temperature_is_refused_naming_the_file(raw):
    with pytest.raises(QDError, match=f"{MODEL}: model metadata {TEMPERATURE_KEY} must be a finite number above 0"):
        parse_temperature(MODEL, {TEMPERATURE_KEY: raw})


def test_threshold_override_must_be_finite():
    rule = OpenSetRule("max_logit", 1.0)
    assert rule.with_threshold(-3).threshold == -3.0
    for bad in (math.nan, math.inf, "1"):
        with pytest.raises(QDError, match="--unknown-threshold must be a finite number"):
            rule.with_threshold(bad)


# ----------------------------------------------------------------------------- scores


def test_scores_by_hand():
    logits = np.array([[2.0, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype=np.float32)
    assert SCORES["max_logit"](logits).tolist() == [2.0, 1.0]
    np.testing.assert_allclose(SCORES["energy"](logits), [np.log(np.exp(2) + 2), 1 + np.log(3)], rtol=1e-6)
    probs = softmax(logits)
    np.testing.assert_allclose(SCORES["max_probability"](probs), [np.exp(2) / (np.exp(2) + 2), 1 / 3], rtol=1e-6)
    rule = OpenSetRule("max_logit", 1.5)
    assert rule.unknown({PROBABILITIES: probs, LOGITS: logits}).tolist() == [False, True]


def test_softmax_with_temperature():
    logits = np.array([[4.0, 2.0]], dtype=np.float32)
    np.testing.assert_allclose(softmax(logits, 2.0), softmax(logits / 2), rtol=1e-6)
    assert softmax(np.array([[1000.0, 0.0]]))[0, 0] == 1.0  # no overflow


# ----------------------------------------------------------------------------- fitting


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


# ----------------------------------------------------------------------------- evaluation metrics


def test_auroc_by_hand_and_against_all_pairs():
    assert auroc([3, 4, 5], [1, 2]) == 1.0
    assert auroc([1, 2], [3, 4]) == 0.0
    assert auroc([1, 1], [1, 1]) == 0.5
    assert auroc([2, 1], [1, 0]) == 0.875  # pairs: 2>1, 2>0, 1=1 (half), 1>0
    assert math.isnan(auroc([], [1.0]))
    rng = np.random.default_rng(0)
    known, unknown = rng.integers(0, 20, 300).astype(float), rng.integers(0, 15, 200).astype(float)
    pairs = (known[:, None] > unknown[None]).mean() + 0.5 * (known[:, None] == unknown[None]).mean()
    assert auroc(known, unknown) == pytest.approx(pairs)


def test_reliability_and_ece_by_hand():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.95, 0.05]])
    labels = np.array([0, 1, 1, 0])
    r = reliability(probs, labels, bins=10)
    assert r.counts.sum() == 4 and r.counts[5] == 1 and r.counts[7] == 1 and r.counts[8] == 1 and r.counts[9] == 1
    # bins: 0.6 wrong, 0.8 right, 0.9 right, 0.95 right
    assert r.ece == pytest.approx((0.6 + 0.2 + 0.1 + 0.05) / 4)
    assert r.accuracy[5] == 0.0 and r.confidence[9] == pytest.approx(0.95)
    perfect = reliability(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 1]))
    assert perfect.ece == 0.0
