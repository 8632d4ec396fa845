"""The open-set contract (qd.infer.model), on small hand-made numbers (no model): a rule round-trips
through its metadata; models without it have no rule and temperature 1; malformed rules and
temperatures are refused naming the file; a threshold override must be finite; the scores and the
tempered softmax by hand."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from qd.command import QDError
from qd.data.contract import LOGITS, META_OPEN_SET as OPEN_SET_KEY, META_TEMPERATURE as TEMPERATURE_KEY, PROBABILITIES
from qd.infer.model import SCORES, OpenSetRule, parse_open_set, parse_temperature, softmax

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
