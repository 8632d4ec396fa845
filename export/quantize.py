"""int8 ONNX: onnxruntime static quantization (QDQ), calibrated on training-split drawings.

Settings, chosen by measurement (docs/export.md has the table):
- QDQ, int8 activations with MinMax ranges from the calibration drawings, int8 weights per
  output channel; the softmax stays in float, so "probabilities" is a real softmax of the
  dequantized logits.
- reduce_range: weights use 7 bits. x86 CPUs without VNNI (AVX2, AVX-512 without VNNI)
  multiply u8 activations by s8 weights with VPMADDUBSW, which adds each pair of products
  into a saturating int16: 2 x 255 x 127 overflows it, and on such a CPU the int8 model then
  agreed with fp32 on only 92-94% of the test split. With weights within +-64 no pair can
  overflow (2 x 255 x 64 < 32767), so the model computes the same on every CPU. CPUs with
  VNNI, AMX or ARM dot products never saturate; the 7th bit costs them nothing measurable.

The validator compares int8 with fp32 twice: under this CPU's int8 kernels, and under exact
integer arithmetic (onnxruntime with graph optimizations off runs every DequantizeLinear ->
float op -> QuantizeLinear unfused, which is what a CPU with VNNI computes). A model that
passes is faithful on both kinds of CPU, whichever one exported it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from qd.command import QDError
from qd.data.contract import INPUT, INT8_PREPARED, PROBABILITIES
from qd.files import remove_temp, temp_path_for
from qd.infer.model import open_session
from qd.machine import cpu

from .checkpoint_source import ExportContext
from .formats import Check
from .onnx_export import check_contract, check_onnx_file, interleaved_throughput, onnx_outputs, quiet, set_metadata

QUANTIZATION = dict(
    quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
    per_channel=True, reduce_range=True, calibrate_method=CalibrationMethod.MinMax,
)
# What int8 promises is 8-bit weights: a quarter of the fp32 weights' bytes. The file as a whole shrinks
# less, by an amount that depends on the network (graph, metadata, per-channel scales and int32 biases
# are a larger share of a small network's file), so the rule is on the weights, not the file.
WEIGHT_BYTES_RATIO = 0.25
# The options that loosen the rule, named when int8 is refused (declared in export/cli.py).
TOLERANCE_OPTION, MAX_PROB_DIFF_OPTION = "--int8-tolerance", "--int8-max-dp"
BENCH_BATCH = 256
CALIBRATION_BATCH = 64
# Check name -> the onnxruntime graph optimization level that selects those kernels.
KERNEL_PATHS = {
    "this CPU's int8 kernels": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "exact int8 arithmetic (as CPUs with VNNI compute)": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}


class DrawingCalibrationReader(CalibrationDataReader):
    """Feeds preprocessed training-split drawings to the calibrator, a batch at a time."""

    def __init__(self, inputs: np.ndarray, batch: int = CALIBRATION_BATCH):
        self._batches = iter([{INPUT: inputs[i : i + batch]} for i in range(0, len(inputs), batch)])

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
    prepared = temp_path_for(path.with_name(INT8_PREPARED))
    try:
        with quiet():
            quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
            softmax = [n.name for n in onnx.load(str(prepared)).graph.node if n.op_type == "Softmax"]
            quantize_static(str(prepared), str(path), DrawingCalibrationReader(ctx.data.calibration),
                            nodes_to_exclude=softmax, **QUANTIZATION)
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
    checks.append(size_check(fp32_path, path))
    fp32_probs = onnx_outputs(fp32_path, ctx.data.inputs, BENCH_BATCH, threads=1)[PROBABILITIES]
    int8_probs = {kernels: onnx_outputs(path, ctx.data.inputs, BENCH_BATCH, threads=1, optimization=level)[PROBABILITIES]
                  for kernels, level in KERNEL_PATHS.items()}
    for kernels, probs in int8_probs.items():
        checks.append(agreement_check(kernels, fp32_probs, probs, ctx.options.int8_tolerance, ctx.options.int8_max_prob_diff))
    if ctx.data.labels is not None:
        on_this_cpu = int8_probs[next(iter(KERNEL_PATHS))]
        checks.append(top1_check(fp32_probs, on_this_cpu, ctx.data.labels, ctx.options.int8_tolerance))
    checks.append(speed_check(fp32_path, path, ctx.data.inputs))
    return checks


def weight_bytes(path: Path) -> tuple[int, int]:
    """(bytes, elements) of a model's weight tensors: its initializers of two or more dimensions (conv
    kernels, linear matrices); biases, scales, zero points and shapes are one-dimensional."""
    total_bytes = total_elements = 0
    for tensor in onnx.load(str(path)).graph.initializer:
        if len(tensor.dims) >= 2:
            elements = int(np.prod(tensor.dims))
            total_elements += elements
            total_bytes += elements * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return total_bytes, total_elements


def size_check(fp32_path: Path, int8_path: Path) -> Check:
    """Every weight is stored in 8 bits: the int8 model's weights take a quarter of the fp32 model's bytes."""
    fp32_bytes, fp32_elements = weight_bytes(fp32_path)
    int8_bytes, int8_elements = weight_bytes(int8_path)
    ratio = int8_bytes / max(fp32_bytes, 1)
    file_ratio = os.path.getsize(int8_path) / os.path.getsize(fp32_path)
    passed = int8_elements == fp32_elements and int8_bytes <= fp32_bytes * WEIGHT_BYTES_RATIO
    return Check(
        "size", passed,
        f"weights {ratio:.2f}× fp32's ({int8_bytes:,} of {fp32_bytes:,} bytes for {fp32_elements:,} weights; "
        f"limit {WEIGHT_BYTES_RATIO:.2f}×: 8 bits each); the file {file_ratio:.2f}× the fp32 file",
        {"weight_bytes_ratio": ratio, "weight_bytes_int8": int8_bytes, "weight_bytes_fp32": fp32_bytes,
         "weights": fp32_elements, "size_ratio": file_ratio})


def agreement_check(kernels: str, fp32: np.ndarray, int8: np.ndarray, tolerance: float,
                    max_prob_diff: float) -> Check:
    """Top-1 agreement with fp32 (the rule: allowed_changes) and the largest probability change."""
    drawings = len(fp32)
    changed = int((fp32.argmax(1) != int8.argmax(1)).sum())
    allowed = allowed_changes(drawings, tolerance)
    diff = float(np.abs(fp32 - int8).max())
    agreement = 1 - changed / drawings
    hints = []
    if changed > allowed:
        hints.append(f"{TOLERANCE_OPTION} SHARE accepts more changed drawings, now {tolerance}")
    if diff > max_prob_diff:
        hints.append(f"{MAX_PROB_DIFF_OPTION} P accepts larger changes, now {max_prob_diff}")
    return Check(
        f"vs fp32, {kernels}", not hints,
        f"top-1 agrees on {agreement:.2%} ({changed} of {drawings:,} differ, {allowed} allowed); "
        f"max |Δp| {diff:.3f} (≤ {max_prob_diff})",
        {"agreement": agreement, "top1_changed": changed, "top1_changes_allowed": allowed,
         "max_abs_prob_diff": diff, "drawings": drawings, "tolerance": tolerance, "max_prob_diff": max_prob_diff},
        hint="; ".join(hints))


def top1_check(fp32: np.ndarray, int8: np.ndarray, labels: np.ndarray, tolerance: float) -> Check:
    """Test-split accuracy: int8 may lose at most as many drawings as the agreement rule lets change."""
    right = {"fp32": fp32.argmax(1) == labels, "int8": int8.argmax(1) == labels}
    top1 = {name: float(r.mean()) for name, r in right.items()}
    lost = int(right["fp32"].sum()) - int(right["int8"].sum())
    allowed = allowed_changes(len(labels), tolerance)
    return Check(
        "top-1 (test split)", lost <= allowed,
        f"fp32 {top1['fp32']:.2%}, int8 {top1['int8']:.2%} ({lost:+d} drawings lost, {allowed} allowed)",
        {"top1_fp32": top1["fp32"], "top1_int8": top1["int8"], "drawings_lost": lost,
         "drawings_lost_allowed": allowed},
        hint=f"{TOLERANCE_OPTION} SHARE accepts more lost drawings, now {tolerance}")


def speed_check(fp32_path: Path, int8_path: Path, inputs: np.ndarray) -> Check:
    """Images/s of both models side by side, on this CPU, named: what int8 gains here, honestly."""
    sessions = {"fp32": open_session(fp32_path, threads=1), "int8": open_session(int8_path, threads=1)}
    speed = interleaved_throughput(sessions, inputs, BENCH_BATCH)
    speedup = speed["int8"] / speed["fp32"]
    if speedup >= 1.05:
        verdict = f"int8 is {speedup:.2f}× as fast"
    else:
        verdict = f"int8 is NOT faster ({speedup:.2f}×); keep it for its size"
    machine = cpu().summary()
    return Check(
        "speed (batch 256, 1 thread)", True,
        f"fp32 {speed['fp32']:,.0f} img/s, int8 {speed['int8']:,.0f} img/s: {verdict} on {machine}",
        {"images_per_s_fp32": speed["fp32"], "images_per_s_int8": speed["int8"], "speedup": speedup, "cpu": machine})


def allowed_changes(drawings: int, share: float, confidence: float = 0.95) -> int:
    """How many of `drawings` may change before the data show, at `confidence`, that more than `share` change.

    One-sided exact binomial test: k changes are refused when P(X >= k) < 1 - confidence
    for X ~ Binomial(drawings, share). On large splits this tends to share * drawings; on
    small ones it does not refuse a model over one or two unlucky drawings (on 142 drawings
    at a 1% share: up to 4, where "drop <= 1 point" allowed 1).
    """
    if drawings <= 0:
        return 0
    if share <= 0:
        return 0
    if share >= 1:
        return drawings
    log_p, log_q = math.log(share), math.log1p(-share)
    log_pmf = [math.lgamma(drawings + 1) - math.lgamma(k + 1) - math.lgamma(drawings - k + 1)
               + k * log_p + (drawings - k) * log_q for k in range(drawings + 1)]
    tail = 0.0  # P(X >= k), summed from the top
    for k in range(drawings, -1, -1):
        tail += math.exp(log_pmf[k])
        if tail >= 1 - confidence:
            return k
    return 0
