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
