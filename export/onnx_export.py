"""fp32 ONNX: the checkpoint's network plus a softmax head, with the model card in metadata.

Exporter choice (torch 2.13): the `torch.export`-based exporter (`dynamo=True`) for
opset 18 and newer. It is the supported path (the TorchScript exporter is deprecated
and slated for removal) and gives a clean graph here: batch norm folded into the
convolutions, no shape-computation noise. It cannot target opsets below 18 (it
silently keeps 18), so `--opset 13..17`, for older runtimes, uses the TorchScript
exporter, which emits the same operators. Both go through the same validation.

The checks an exported ONNX model must pass before it is declared done (the canvas and
int8 formats share the first two, with their own contract):
1. `onnx.checker` (full check, with shape inference).
2. The I/O contract: input "image" float32 (batch, 1, 28, 28) with a symbolic batch
   axis; outputs "probabilities" and "logits"; metadata exactly as docs/contracts.md says.
3. Fidelity: onnxruntime against torch on the checkpoint's test split at batch 1 and
   64: max |p_onnx - p_torch| <= 1e-4 and the same top-1 on every drawing.
4. The open-set decisions: onnxruntime flags the same drawings as torch.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

import qd
from qd.command import QDError, first_line
from qd.data.contract import INPUT, LOGITS, OUTPUTS, PROBABILITIES, SIDE
from qd.infer.model import call_seconds, open_session, run_batched, session_outputs

from .checkpoint_source import ExportContext
from .formats import Check

MIN_OPSET = 13
DYNAMO_MIN_OPSET = 18
DECISION_MARGIN = 1e-4  # open-set scores this close to the threshold may fall either side between runtimes
INPUT_SHAPE = ("batch", 1, SIDE, SIDE)  # symbolic batch axis
PROB_TOLERANCE = 1e-4
FIDELITY_BATCHES = (1, 64)


class WithProbabilities(torch.nn.Module):
    """(probabilities, logits) from a logits network, as the ONNX contract names them:
    probabilities = softmax(logits / temperature), the temperature fitted at export."""

    def __init__(self, net: torch.nn.Module, temperature: float = 1.0):
        super().__init__()
        self.net = net
        self.temperature = float(temperature)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(image)
        scaled = logits if self.temperature == 1.0 else logits / self.temperature
        return torch.softmax(scaled, dim=1), logits


@contextlib.contextmanager
def quiet():
    """Silence the exporters' progress prints, deprecation warnings and log lines."""
    # onnxruntime's quantizer logs its own failures with a traceback (to stderr); we report them in one line
    names = ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript", "onnxruntime")
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def check_opset(opset: int) -> int:
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise QDError(f"--opset {opset}: supported opsets are {MIN_OPSET}..{newest}")
    return opset


def to_onnx_proto(net: torch.nn.Module, opset: int, side: int = 28, temperature: float = 1.0) -> onnx.ModelProto:
    wrapped = WithProbabilities(net, temperature).eval()
    example = (torch.zeros(2, 1, side, side),)
    with quiet():
        if opset >= DYNAMO_MIN_OPSET:
            program = torch.onnx.export(
                wrapped, example, None, dynamo=True, opset_version=opset, external_data=False,
                input_names=[INPUT], output_names=list(OUTPUTS),
                dynamic_shapes={INPUT: {0: torch.export.Dim("batch")}}, verbose=False,
            )
            model = program.model_proto
        else:
            buffer = io.BytesIO()
            torch.onnx.export(
                wrapped, example, buffer, dynamo=False, opset_version=opset,
                input_names=[INPUT], output_names=list(OUTPUTS),
                dynamic_axes={name: {0: "batch"} for name in (INPUT, *OUTPUTS)},
            )
            model = onnx.load_from_string(buffer.getvalue())
    got = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if got != opset:
        raise QDError(f"--opset {opset}: the exporter produced opset {got}")
    strip_debug_info(model)
    model.producer_name, model.producer_version = "quickdraw-edge", qd.__version__
    return model


def strip_debug_info(model: onnx.ModelProto) -> None:
    """Drop the exporter's per-node debug records (stack traces with this machine's paths,
    FX node dumps, name scopes): noise in every viewer, and nobody else's business."""
    graph = model.graph
    for item in (*graph.node, *graph.input, *graph.output, *graph.value_info, *graph.initializer):
        if hasattr(item, "metadata_props"):  # onnx >= 1.16
            del item.metadata_props[:]
        item.doc_string = ""
    graph.doc_string = ""


def set_metadata(model: onnx.ModelProto, metadata: dict[str, str]) -> None:
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)


def export_onnx(ctx: ExportContext, path: Path) -> None:
    model = to_onnx_proto(ctx.source.model, ctx.options.opset, int(ctx.source.preprocessing["input_size"]),
                          ctx.confidence.temperature)
    set_metadata(model, ctx.model_metadata("fp32"))
    onnx.save_model(model, str(path))


def validate_onnx(ctx: ExportContext, path: Path) -> list:
    checks = [check_onnx_file(path), check_contract(path, ctx.model_metadata("fp32"))]
    if not all(c.passed for c in checks):
        return checks
    return checks + check_fidelity(ctx, path) + [check_open_set(ctx, path)]


def check_open_set(ctx: ExportContext, path: Path) -> Check:
    """onnxruntime flags the same test-split drawings as torch (calibrated as the metadata says)."""
    confidence = ctx.confidence
    if not confidence.fitted:
        return Check("open set", True, f"not fitted ({confidence.fitted_on}): the model cannot flag unknown "
                     "drawings", {"skipped": "no validation drawings"})
    rule = confidence.rule
    ref_probs, ref_logits = ctx.reference
    ours = rule.scores(onnx_outputs(path, ctx.data.inputs, 256))
    torch_scores = rule.scores({PROBABILITIES: ref_probs, LOGITS: ref_logits})
    clear = np.abs(torch_scores - rule.threshold) > DECISION_MARGIN * max(1.0, abs(rule.threshold))
    differ = int(((ours < rule.threshold) != (torch_scores < rule.threshold))[clear].sum())
    flagged = float((ours < rule.threshold).mean())
    validation = rule.validation
    negatives = (f", {validation['negatives_flagged']:.1%} of {validation['negatives']:,} negatives"
                 if "negatives" in validation else "")
    detail = (f"{rule.rule} < {rule.threshold:.4g} flags {flagged:.1%} of the test split (validation: "
              f"{1 - validation['kept']:.1%}{negatives}); temperature {confidence.temperature:.3f}; "
              f"decisions differ from torch on {differ} of {len(ours)}")
    return Check("open set", differ == 0, detail,
                 {"rule": rule.rule, "threshold": rule.threshold, "test_flagged": flagged, "decisions_differ": differ})


def check_onnx_file(path: Path) -> Check:
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        return Check("onnx.checker", False, first_line(exc, 200))
    return Check("onnx.checker", True, "full check with shape inference passed")


def check_contract(path: Path, expected_metadata: dict[str, str], input_name: str = INPUT,
                   input_shape: tuple[str | int, ...] = INPUT_SHAPE, output_names: tuple[str, ...] = OUTPUTS,
                   ) -> Check:
    """The I/O contract of an exported ONNX file: one float32 input named `input_name` shaped like
    `input_shape` (a string is a symbolic axis, a number a fixed one), exactly `output_names`, and
    exactly `expected_metadata`. The canvas formats check theirs with their own names and shape."""
    model = onnx.load(str(path), load_external_data=False)
    problems = []
    inputs = [i for i in model.graph.input]
    shape_text = f"[{', '.join(map(str, input_shape))}]"
    if [i.name for i in inputs] != [input_name]:
        problems.append(f"inputs are {[i.name for i in inputs]}, expected ['{input_name}']")
    else:
        tensor = inputs[0].type.tensor_type
        dims = [d.dim_param or d.dim_value for d in tensor.shape.dim]
        if tensor.elem_type != onnx.TensorProto.FLOAT:
            problems.append("input is not float32")
        if not _shape_matches(dims, input_shape):
            problems.append(f"input shape is {dims}, expected {shape_text}")
    outputs = [o.name for o in model.graph.output]
    if outputs != list(output_names):
        problems.append(f"outputs are {outputs}, expected {list(output_names)}")
    metadata = {p.key: p.value for p in model.metadata_props}
    if metadata != expected_metadata:
        wrong = sorted(k for k in set(metadata) | set(expected_metadata) if metadata.get(k) != expected_metadata.get(k))
        problems.append(f"metadata differs at {', '.join(wrong)}")
    if problems:
        return Check("contract", False, "; ".join(problems))
    return Check("contract", True, f"{input_name}{shape_text.replace(' ', '')} → {', '.join(output_names)}; "
                                   "metadata complete")


def _shape_matches(dims: list[str | int], expected: tuple[str | int, ...]) -> bool:
    return len(dims) == len(expected) and all(
        isinstance(d, str) if isinstance(want, str) else d == want for d, want in zip(dims, expected))


def check_fidelity(ctx: ExportContext, path: Path, tolerance: float = PROB_TOLERANCE) -> list[Check]:
    """onnxruntime vs torch at each batch size: probability difference and top-1 agreement."""
    ref_probs, _ = ctx.reference
    checks = []
    for batch in FIDELITY_BATCHES:
        probs = onnx_outputs(path, ctx.data.inputs, batch)[PROBABILITIES]
        diff = float(np.abs(probs - ref_probs).max())
        disagree = int((probs.argmax(1) != ref_probs.argmax(1)).sum())
        passed = diff <= tolerance and disagree == 0
        detail = (f"max |Δp| {diff:.1e} (≤ {tolerance:.0e}), top-1 differs on "
                  f"{disagree} of {len(probs)}")
        checks.append(Check(f"vs torch, batch {batch}", passed, detail,
                            {"batch": batch, "max_abs_prob_diff": diff, "top1_disagreements": disagree,
                             "drawings": len(probs)}))
    return checks


def onnx_outputs(path: Path, inputs: np.ndarray, batch: int, threads: int | None = None,
                 optimization: ort.GraphOptimizationLevel | None = None) -> dict[str, np.ndarray]:
    """Probabilities and logits of the ONNX file at `path` on `inputs`, `batch` at a time, through
    qd-infer's session and batch loop (a row that fails is NaN, and fails the checks)."""
    session = open_session(path, threads, optimization=optimization)
    outputs, failures = run_batched(session_outputs(session, OUTPUTS), inputs, batch)
    if failures and not outputs:
        raise QDError(f"{path}: validation drawing {failures[0]}")
    return outputs


def interleaved_throughput(sessions: dict[str, ort.InferenceSession], inputs: np.ndarray,
                           batch: int = 256, rounds: int = 15) -> dict[str, float]:
    """Images/s of each session at a fixed batch, measured side by side by qd.infer's call_seconds
    (runs alternate between the sessions, each keeps its median), so background load on a shared
    machine hits all of them alike."""
    x = np.ascontiguousarray(np.resize(inputs, (batch, *inputs.shape[1:])))
    seconds = call_seconds({name: partial(session.run, None, {INPUT: x}) for name, session in sessions.items()},
                           min_rounds=rounds)
    return {name: batch / value for name, value in seconds.items()}
