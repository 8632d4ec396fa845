"""int8 ONNX: onnxruntime static quantization (QDQ), calibrated on training-split drawings.

Weights are int8 per output channel, activations int8 with MinMax ranges from the
calibration drawings. The softmax stays in float, so "probabilities" is a real
softmax of the (dequantized) logits rather than a 1/256-step approximation.
The validator reports size ratio, top-1 of both models on the test split and
images/s of both at batch 256 measured side by side, and fails if top-1 drops by
more than one point.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from qd.data.errors import QDError

from .atomic import remove_temp, temp_path_for
from .context import Check, ExportContext
from .onnx_export import quiet, set_metadata
from .validate import INPUT_NAME, check_contract, check_onnx_file, interleaved_throughput, ort_session, run_batched, top1_accuracy

MAX_TOP1_DROP = 0.01  # one percentage point
BENCH_BATCH = 256
CALIBRATION_BATCH = 64


class DrawingCalibrationReader(CalibrationDataReader):
    """Feeds preprocessed training-split drawings to the calibrator, a batch at a time."""

    def __init__(self, inputs: np.ndarray, batch: int = CALIBRATION_BATCH):
        self._batches = iter([{INPUT_NAME: inputs[i : i + batch]} for i in range(0, len(inputs), batch)])

    def get_next(self) -> dict | None:
        return next(self._batches, None)


def _fp32_model(ctx: ExportContext) -> Path:
    try:
        return ctx.written["onnx"]
    except KeyError:
        raise QDError("onnx-int8 needs the fp32 model.onnx of this run, which was not written") from None


def export_int8(ctx: ExportContext, path: Path) -> None:
    if ctx.data.calibration is None:
        raise QDError(ctx.data.calibration_problem)
    fp32 = _fp32_model(ctx)
    prepared = temp_path_for(path.with_name("model.prep.onnx"))
    try:
        with quiet():
            quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
            softmax = [n.name for n in onnx.load(str(prepared)).graph.node if n.op_type == "Softmax"]
            quantize_static(
                str(prepared), str(path), DrawingCalibrationReader(ctx.data.calibration),
                quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                per_channel=True, calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=softmax,
            )
    finally:
        remove_temp(prepared)
    model = onnx.load(str(path))
    set_metadata(model, ctx.model_metadata("int8"))
    onnx.save_model(model, str(path))


def validate_int8(ctx: ExportContext, path: Path) -> list[Check]:
    checks = [check_onnx_file(path), check_contract(path, ctx.model_metadata("int8"))]
    if not all(c.passed for c in checks):
        return checks
    fp32_path = _fp32_model(ctx)
    ratio = os.path.getsize(path) / os.path.getsize(fp32_path)
    checks.append(Check("size", True, f"{ratio:.2f}× the fp32 file", {"size_ratio": ratio}))
    sessions = {"fp32": ort_session(fp32_path, threads=1), "int8": ort_session(path, threads=1)}
    if ctx.data.labels is not None:
        top1 = {name: top1_accuracy(run_batched(s, ctx.data.inputs, BENCH_BATCH)[0], ctx.data.labels)
                for name, s in sessions.items()}
        drop = top1["fp32"] - top1["int8"]
        checks.append(Check(
            "top-1 (test split)", drop <= MAX_TOP1_DROP + 1e-9,
            f"fp32 {top1['fp32']:.2%}, int8 {top1['int8']:.2%} (drop {drop * 100:.2f} points, limit 1.00)",
            {"top1_fp32": top1["fp32"], "top1_int8": top1["int8"]}))
    speed = interleaved_throughput(sessions, ctx.data.inputs, BENCH_BATCH)
    speedup = speed["int8"] / speed["fp32"]
    if speedup >= 1.05:
        verdict = f"int8 is {speedup:.2f}× as fast on this CPU"
    else:
        verdict = f"int8 is NOT faster on this CPU ({speedup:.2f}×); keep it for its size"
    checks.append(Check(
        "speed (batch 256, 1 thread)", True,
        f"fp32 {speed['fp32']:,.0f} img/s, int8 {speed['int8']:,.0f} img/s: {verdict}",
        {"images_per_s_fp32": speed["fp32"], "images_per_s_int8": speed["int8"], "speedup": speedup}))
    return checks
