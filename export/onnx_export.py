"""fp32 ONNX: the checkpoint's network plus a softmax head, with the model card in metadata.

Exporter choice (torch 2.13): the `torch.export`-based exporter (`dynamo=True`) for
opset 18 and newer. It is the supported path (the TorchScript exporter is deprecated
and slated for removal) and gives a clean graph here: batch norm folded into the
convolutions, no shape-computation noise. It cannot target opsets below 18 (it
silently keeps 18), so `--opset 13..17`, for older runtimes, uses the TorchScript
exporter, which emits the same operators. Both go through the same validation.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from qd import __version__ as QD_VERSION
from qd.command import QDError
from qd.data.contract import LOGITS, PROBABILITIES

from .context import Check, ExportContext
from .validate import INPUT_NAME, OUTPUT_NAMES, check_contract, check_fidelity, check_onnx_file, onnx_outputs

MIN_OPSET = 13
DYNAMO_MIN_OPSET = 18
DECISION_MARGIN = 1e-4  # open-set scores this close to the threshold may fall either side between runtimes


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
                input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch")}}, verbose=False,
            )
            model = program.model_proto
        else:
            buffer = io.BytesIO()
            torch.onnx.export(
                wrapped, example, buffer, dynamo=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)},
            )
            model = onnx.load_from_string(buffer.getvalue())
    got = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if got != opset:
        raise QDError(f"--opset {opset}: the exporter produced opset {got}")
    strip_debug_info(model)
    model.producer_name, model.producer_version = "quickdraw-edge", QD_VERSION
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
    model = to_onnx_proto(ctx.source.model, ctx.opset, int(ctx.source.preprocessing["input_size"]),
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
    detail = (f"{rule.rule} < {rule.threshold:.4g} flags {flagged:.1%} of the test split (validation: "
              f"{1 - rule.validation['kept']:.1%}); temperature {confidence.temperature:.3f}; "
              f"decisions differ from torch on {differ} of {len(ours)}")
    return Check("open set", differ == 0, detail,
                 {"rule": rule.rule, "threshold": rule.threshold, "test_flagged": flagged, "decisions_differ": differ})
