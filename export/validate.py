"""Checks an exported ONNX model must pass before it is declared done.

1. `onnx.checker` (full check, with shape inference).
2. The I/O contract: input "image" float32 (batch, 1, 28, 28) with a symbolic batch
   axis; outputs "probabilities" and "logits"; metadata exactly as docs/contracts.md says.
3. Fidelity: onnxruntime against torch on the checkpoint's test split at batch 1 and
   64: max |p_onnx - p_torch| <= 1e-4 and the same top-1 on every drawing.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from qd.command import QDError, first_line
from qd.data.contract import INPUT as INPUT_NAME, OUTPUTS as OUTPUT_NAMES, PROBABILITIES, SIDE
from qd.infer.model import call_seconds, open_session, run_batched, session_outputs

from .context import Check, ExportContext

INPUT_SHAPE = ("batch", 1, SIDE, SIDE)  # symbolic batch axis
PROB_TOLERANCE = 1e-4
FIDELITY_BATCHES = (1, 64)


def onnx_outputs(path: Path, inputs: np.ndarray, batch: int, threads: int | None = None,
                 optimization: ort.GraphOptimizationLevel | None = None) -> dict[str, np.ndarray]:
    """Probabilities and logits of the ONNX file at `path` on `inputs`, `batch` at a time, through
    qd-infer's session and batch loop (a row that fails is NaN, and fails the checks)."""
    session = open_session(path, threads, optimization=optimization)
    outputs, failures = run_batched(session_outputs(session, OUTPUT_NAMES), inputs, batch)
    if failures and not outputs:
        raise QDError(f"{path}: validation drawing {failures[0]}")
    return outputs


def check_onnx_file(path: Path) -> Check:
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        return Check("onnx.checker", False, first_line(exc, 200))
    return Check("onnx.checker", True, "full check with shape inference passed")


def check_contract(path: Path, expected_metadata: dict[str, str], input_name: str = INPUT_NAME,
                   input_shape: tuple[str | int, ...] = INPUT_SHAPE, output_names: tuple[str, ...] = OUTPUT_NAMES,
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


def top1_accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((probs.argmax(1) == labels).mean())


def interleaved_throughput(sessions: dict[str, ort.InferenceSession], inputs: np.ndarray,
                           batch: int = 256, rounds: int = 15) -> dict[str, float]:
    """Images/s of each session at a fixed batch, measured side by side by qd.infer's call_seconds
    (runs alternate between the sessions, each keeps its median), so background load on a shared
    machine hits all of them alike."""
    x = np.ascontiguousarray(np.resize(inputs, (batch, *inputs.shape[1:])))
    seconds = call_seconds({name: partial(session.run, None, {INPUT_NAME: x}) for name, session in sessions.items()},
                           min_rounds=rounds)
    return {name: batch / value for name, value in seconds.items()}
