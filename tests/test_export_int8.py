"""int8 ONNX that is faithful on every CPU: the saturation-safe weights, both kernel paths, the sample-size rule."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import numpy_helper

from fixtures_export import run_export_cli
from qd.data.bitmaps import BitmapDataset, SplitSpec
from qd.data.contract import bitmaps_to_input
from qd.export.run import export_checkpoint
from qd.export.quantize import KERNEL_PATHS
from qd.export.quantize import allowed_changes
from qd.train.checkpoint import load_checkpoint

# x86 CPUs without VNNI add each pair of u8 x s8 products into a saturating int16.
INT16_MAX = 32767
U8_MAX = 255


def test_allowed_changes_on_small_and_large_splits():
    assert allowed_changes(142, 0.01) == 4  # "drop <= 1 point" allowed 1 drawing of 142
    assert allowed_changes(2656, 0.01) == 35
    assert allowed_changes(0, 0.01) == 0
    assert allowed_changes(500, 0.0) == 0
    assert allowed_changes(500, 1.0) == 500


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5000), st.floats(0.001, 0.2))
def test_allowed_changes_never_refuses_a_model_that_meets_the_share(drawings, share):
    allowed = allowed_changes(drawings, share)
    assert int(share * drawings) <= allowed <= drawings  # an observed share at the limit always passes
    assert allowed_changes(drawings + 1, share) >= allowed  # more drawings never allow fewer changes
    assert allowed_changes(drawings, share * 2) >= allowed


def _int8_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """int8 weight initializers that feed a Conv or Gemm/MatMul through DequantizeLinear."""
    inits = {t.name: t for t in model.graph.initializer}
    consumers = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    weights = {}
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            continue
        tensor = inits[node.input[0]]
        feeds = {c.op_type for c in consumers.get(node.output[0], [])}
        if tensor.data_type == onnx.TensorProto.INT8 and feeds & {"Conv", "Gemm", "MatMul"}:
            weights[tensor.name] = numpy_helper.to_array(tensor).astype(np.int32)
    return weights


def test_no_pair_of_int8_weights_can_saturate_an_int16_on_cpus_without_vnni(exported_int8_model):
    weights = _int8_weights(onnx.load(str(exported_int8_model)))
    assert weights, "expected int8 conv/linear weights"
    for name, w in weights.items():
        flat = np.abs(w.reshape(w.shape[0], -1))  # per output channel
        worst_pair = np.sort(flat, axis=1)[:, -2:].sum(axis=1).max()
        assert U8_MAX * worst_pair <= INT16_MAX, f"{name}: weights up to {flat.max()} can saturate"


@pytest.mark.parametrize("kernels", list(KERNEL_PATHS))
def test_int8_agrees_with_fp32_under_both_kernel_paths(exported_model, exported_int8_model, trained_checkpoint, kernels):
    """The CPU's own int8 kernels and exact integer arithmetic (what VNNI CPUs compute) give fp32's answers."""
    x = _test_split(trained_checkpoint)
    options = ort.SessionOptions()
    options.graph_optimization_level = KERNEL_PATHS[kernels]
    int8 = ort.InferenceSession(str(exported_int8_model), options, providers=["CPUExecutionProvider"])
    fp32 = ort.InferenceSession(str(exported_model / "model.onnx"), providers=["CPUExecutionProvider"])
    p8, p32 = int8.run(["probabilities"], {"image": x})[0], fp32.run(["probabilities"], {"image": x})[0]
    changed = int((p8.argmax(1) != p32.argmax(1)).sum())
    assert changed <= allowed_changes(len(x), 0.01)
    assert np.abs(p8 - p32).max() <= 0.25


def _test_split(checkpoint_path) -> np.ndarray:
    checkpoint = load_checkpoint(checkpoint_path)
    data = checkpoint["data"]
    dataset = BitmapDataset(data["dir"], data["categories"], data["max_per_category"])
    bitmaps, _ = dataset.take(dataset.split_indices(SplitSpec.from_dict(checkpoint["split"]))["test"])
    return bitmaps_to_input(bitmaps, checkpoint["preprocessing"])


def test_export_records_both_kernel_paths_and_the_cpu(exported_model):
    card = json.loads((exported_model / "model.json").read_text())
    checks = {c["check"]: c for c in card["files"]["onnx-int8"]["validation"]}
    for kernels in KERNEL_PATHS:
        entry = checks[f"vs fp32, {kernels}"]
        assert entry["passed"] and entry["top1_changed"] <= entry["top1_changes_allowed"]
        assert entry["agreement"] >= 0.99
    speed = checks["speed (batch 256, 1 thread)"]
    assert speed["cpu"] and speed["cpu"] in speed["detail"]


class _ZeroCalibration:
    """Calibrates every activation range on blank drawings: an int8 model that is wrong on any CPU."""

    def __init__(self, inputs, batch=64):
        self._batches = iter([{"image": np.zeros_like(inputs[:batch])}])

    def get_next(self):
        return next(self._batches, None)


def test_an_unfaithful_int8_is_refused_with_the_option_that_loosens_it(trained_checkpoint, tmp_path, monkeypatch,
                                                                       capsys):
    monkeypatch.setattr("qd.export.quantize.DrawingCalibrationReader", _ZeroCalibration)
    code, _, err = run_export_cli(monkeypatch, capsys, trained_checkpoint, "--format", "onnx-int8", "--out", tmp_path)
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "model.int8.onnx: validation failed, not written" in errors[0]
    assert "--int8-tolerance" in errors[0] or "--int8-max-dp" in errors[0]
    assert (tmp_path / "model.onnx").exists() and not (tmp_path / "model.int8.onnx").exists()
    assert not list(tmp_path.glob(".*"))  # no temp file left

    loose = export_checkpoint(trained_checkpoint, "onnx-int8", out=tmp_path, int8_tolerance=0.99,
                              int8_max_prob_diff=1.0)
    assert loose.ok and (tmp_path / "model.int8.onnx").exists()  # the user's looser rule is honoured


@pytest.mark.parametrize("option, value", [("--int8-tolerance", "1.5"), ("--int8-max-dp", "0")])
def test_out_of_range_tolerances_are_one_line(trained_checkpoint, tmp_path, option, value, monkeypatch, capsys):
    code, _, err = run_export_cli(monkeypatch, capsys, trained_checkpoint, "--format", "onnx-int8", "--out", tmp_path,
                           option, value)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and option in lines[0] and "Traceback" not in err
