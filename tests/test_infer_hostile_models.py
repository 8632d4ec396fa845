"""Models and runs that go wrong in qd-infer end in one line, and the rest goes on: malformed
preprocessing metadata (a 400-digit scale, NaN, Infinity) names the model; batches onnxruntime cannot
run are split down to the drawings that fail; NaN from a model becomes a failure record, never a bare
NaN in --json; --workers, --threads and --batch-size are bounded.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures_data import invoke_cli
from onnx_synth import tiny_model
from qd.command import QDError

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# ----------------------------------------------------------------------------- model metadata

@pytest.mark.parametrize("raw", ['{"input_size": 28, "scale": ' + "9" * 400 + "}",
                                 '{"input_size": 28, "scale": NaN}', '{"input_size": 28, "scale": 1, "std": Infinity}'])
def test_huge_nan_and_infinite_preprocessing_metadata_is_one_line(tmp_path, raw):
    from qd.infer.cli import main

    model = tiny_model(tmp_path / "model.onnx", ["a", "b"], preprocessing=raw)
    np.save(tmp_path / "x.npy", np.zeros((2, 784), np.uint8))
    result = invoke_cli(main, tmp_path / "x.npy", "--model", model, "--json")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith(f"error: {model}: model metadata qd.preprocessing ") and result.stderr.count("\n") == 1


# ----------------------------------------------------------------------------- batches, NaN, bounds


class Collect:
    """A qd-infer writer that keeps what it is given."""

    def __init__(self):
        self.names, self.failures = [], []

    def rows(self, names, index, probs, unknown=None):
        assert np.isfinite(probs).all()
        self.names += names

    def failure(self, message, input):
        self.failures.append(message)

    def finish(self, summary):
        self.summary = summary


@SETTINGS
@given(n=st.integers(1, 90), bad=st.sets(st.integers(0, 89), max_size=4), batch=st.integers(1, 64),
       limit=st.one_of(st.none(), st.integers(1, 40)), nan=st.booleans(), lanes=st.integers(1, 3))
def test_batches_onnxruntime_cannot_run_are_split_down_to_the_drawings_that_fail(tmp_path, monkeypatch, n, bad,
                                                                                 batch, limit, nan, lanes):
    """In input order, however many batches run side by side."""
    from qd.infer import model as model_module
    from qd.infer import run as run_module
    from qd.infer.run import run_inference

    bad = {i for i in bad if i < n}
    rows = np.zeros((n, 784), np.uint8)
    rows[:, 0] = np.arange(n) % 200
    rows[sorted(bad), 1] = 255  # marks the drawings the "runtime" fails on
    np.save(tmp_path / "rows.npy", rows)
    model = tiny_model(tmp_path / "model.onnx", ["a", "b", "c"])
    real = model_module.OnnxClassifier.outputs

    def flaky(self, inputs, names=None):
        marked = inputs[:, 0, 0, 1] > 0.5
        if limit is not None and len(inputs) > limit:
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory")
        if marked.any() and not nan:
            raise RuntimeError("kernel failed")
        outputs = real(self, inputs, names)
        outputs["probabilities"][marked] = np.nan
        return outputs

    with monkeypatch.context() as patch:
        patch.setattr(model_module.OnnxClassifier, "outputs", flaky)
        patch.setattr(run_module, "usable_cpus", lambda: lanes)  # one batch lane per CPU
        writer = Collect()
        summary = run_inference([tmp_path / "rows.npy"], model=model, batch_size=batch, writer=writer)
    expected_bad = [f"{tmp_path / 'rows.npy'}[{i}]" for i in sorted(bad)]
    assert writer.names == [f"{tmp_path / 'rows.npy'}[{i}]" for i in range(n) if i not in bad]
    assert [m.split(": ")[0] for m in writer.failures] == expected_bad
    assert all("not classified" in m and "\n" not in m for m in writer.failures)
    assert summary.classified == n - len(bad) and summary.failed == len(bad)


def test_json_output_is_strict_even_when_a_model_gives_nan(tmp_path, monkeypatch):
    from qd.infer import model as model_module
    from qd.infer.cli import main

    model = tiny_model(tmp_path / "model.onnx", ["a", "b"])
    np.save(tmp_path / "x.npy", np.zeros((4, 784), np.uint8))
    real = model_module.OnnxClassifier.outputs

    def half_nan(self, inputs, names=None):
        outputs = real(self, inputs, names)
        outputs["probabilities"][::2] = np.nan
        return outputs

    monkeypatch.setattr(model_module.OnnxClassifier, "outputs", half_nan)
    result = invoke_cli(main, tmp_path / "x.npy", "--model", model, "--json")
    records = [json.loads(line) for line in result.stdout.splitlines()]  # strict: json.loads refuses nothing here
    assert [r["input"] for r in records] == [f"{tmp_path / 'x.npy'}[{i}]" for i in range(4)]  # in input order
    assert [r["error"] is None for r in records] == [False, True, False, True]  # NaN rows: records with an error
    assert all("NaN or infinite" in r["error"] and r["probability"] is None for r in records[::2])
    assert all(math.isfinite(r["probability"]) for r in records[1::2])

    def refuse(constant):
        raise AssertionError(f"non-strict JSON constant {constant}")

    for line in result.stdout.splitlines():
        json.loads(line, parse_constant=refuse)  # no NaN/Infinity value anywhere (the errors only name them)
    assert result.stderr.count("the model gave NaN or infinite probabilities") == 2


@pytest.mark.parametrize("option,value", [("--workers", "65"), ("--threads", "257"), ("--batch-size", "4097")])
def test_worker_thread_and_batch_options_are_bounded(tmp_path, option, value):
    from qd.infer.cli import main
    from qd.infer.run import run_inference

    np.save(tmp_path / "x.npy", np.zeros((1, 784), np.uint8))
    model = tiny_model(tmp_path / "model.onnx", ["a", "b"])
    result = invoke_cli(main, tmp_path / "x.npy", "--model", model, option, value)
    assert result.exit_code == 2 and f"Invalid value for '{option}'" in result.stderr
    name = option[2:].replace("-", "_")
    with pytest.raises(QDError, match=f"{option} must be 1 to"):
        run_inference([tmp_path / "x.npy"], model=model, **{name: int(value)})


# ----------------------------------------------------------------------------- every metadata number

# JSON numbers and what a tamperer puts where one belongs: huge integers (a float cannot hold them),
# 1e400 (inf once parsed), -0, Python's NaN and Infinity tokens, bools, strings, null, containers.
JSON_NUMBERS = st.one_of(
    st.integers(-10**420, 10**420).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(json.dumps),
    st.sampled_from(["9" * 401, "-" + "9" * 401, "1e400", "-1e400", "1e-400", "-0", "-0.0", "0", "1", "0.5",
                     "NaN", "-Infinity", "true", "false", "null", '"0.5"', "[]", "{}", "[1e400]"]),
    st.text(max_size=8).map(json.dumps),
)
# where a number goes: metadata key -> the metadata value around it
PLACES = {
    "qd.temperature": "%s",
    "qd.open_set": '{"rule": "max_logit", "threshold": %s, "kept": 0.95}',
    "qd.open_set kept": '{"rule": "energy", "threshold": -1000000.0, "kept": %s}',
    "qd.preprocessing": '{"input_size": 28, "scale": %s}',
    "qd.preprocessing std": '{"input_size": 28, "scale": 1, "mean": 0.5, "std": %s}',
    "qd.preprocessing input_size": '{"input_size": %s, "scale": 1}',
    "qd.split": '{"val_fraction": %s, "test_fraction": 0.1, "seed": 0}',
    "qd.split test_fraction": '{"val_fraction": 0.1, "test_fraction": %s}',
    "qd.split seed": '{"seed": %s}',
    "qd.data": '{"dir": "/data", "categories": ["a", "b"], "max_per_category": %s}',
    "qd.data counts": '{"dir": "/data", "counts": [%s, 3]}',
}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(place=st.sampled_from(sorted(PLACES)), number=JSON_NUMBERS)
def test_any_metadata_number_loads_or_is_one_line_naming_the_model(tmp_path_factory, place, number):
    """Through the one loader qd-infer and qd-eval share: a model that loads can be used (its split cut,
    its numbers floats); one that does not is one QDError line naming the model file."""
    from qd.data.bitmaps import SplitSpec
    from qd.evaluate.backends import load_model_info

    key = place.split()[0]
    value = PLACES[place] % number
    path = tmp_path_factory.mktemp("model") / "model.onnx"
    if key == "qd.preprocessing":
        model = tiny_model(path, ["a", "b"], preprocessing=value)
    else:
        model = tiny_model(path, ["a", "b"], **{key.replace("qd.", "qd_"): value})
    try:
        info = load_model_info(model)
    except QDError as exc:
        message = str(exc)
        assert message.startswith(f"{model}: model metadata {key} ") and "\n" not in message, message
        return
    classifier = info.classifier
    assert all(math.isfinite(v) for v in (classifier.temperature, *classifier.preprocessing.values()) if
               isinstance(v, float))
    if classifier.open_set is not None:
        assert math.isfinite(classifier.open_set.threshold) and 0 < classifier.open_set.kept < 1
    if info.split is not None:
        SplitSpec.from_dict(info.split)  # what qd-eval cuts the held-out drawings with
    if info.data is not None:
        assert info.data.get("max_per_category") is None or type(info.data["max_per_category"]) is int


@pytest.mark.parametrize("key,value", [("qd_temperature", "9" * 401),
                                       ("qd_open_set", '{"rule": "max_logit", "threshold": ' + "9" * 401 + "}")])
def test_a_401_digit_temperature_or_threshold_is_one_line_naming_the_model(tmp_path, key, value):
    from qd.infer.cli import main

    model = tiny_model(tmp_path / "model.onnx", ["a", "b"], **{key: value})
    np.save(tmp_path / "x.npy", np.zeros((2, 784), np.uint8))
    result = invoke_cli(main, tmp_path / "x.npy", "--model", model, "--json")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith(f"error: {model}: model metadata {key.replace('_', '.', 1)} ")
    assert result.stderr.count("\n") == 1 and "OverflowError" not in result.stderr


def test_a_card_with_a_number_for_a_checksum_is_one_line_naming_it(tmp_path):
    from qd.evaluate.backends import load_model_info

    model = tiny_model(tmp_path / "model.onnx", ["a", "b"])
    (tmp_path / "model.json").write_text('{"source": {"sha256": ' + "9" * 401 + '}, "files": {}}')
    with pytest.raises(QDError, match=f"^{tmp_path / 'model.json'}: source.sha256 is not a string$"):
        load_model_info(model)
