"""Core ML: an ML Program classifier (iOS 16 / macOS 13+) that takes the drawing as an image.

The input is a 28x28 grayscale image in the dataset's polarity: white ink on black,
as in Google's bitmaps (an app drawing dark strokes on white must invert first).
Core ML computes pixel * scale + bias, so scale = preprocessing scale / std and
bias = -mean / std reproduce training preprocessing exactly. The network ends in a
softmax of logits / T (the temperature fitted at export), so the classifier's
`classLabel_probs` are calibrated probabilities; a third output, `logits`, carries the
raw logits the open-set rule in the metadata (qd.open_set) reads.

Precision is float32 (`compute_precision=FLOAT32`) so the model stays faithful to
the checkpoint; the network is tiny, so float16's saving would not matter.

coremltools 9 is tested with torch up to 2.7; this project pins torch 2.13, so the
converted program is checked structurally (below) on every export. Predictions
need macOS: there they are compared with torch like the ONNX export; on Linux the
saved package is reloaded and its spec checked (type, input, outputs, labels,
input scaling, softmax head).
"""

from __future__ import annotations

import contextlib
import io
import logging
import platform
from pathlib import Path

import numpy as np
import torch

import qd
from qd.command import QDError, first_line
from qd.data.contract import INPUT, LICENSE_NOTE, LOGITS, META_SOURCE_CHECKPOINT

from .checkpoint_source import ExportContext, inputs_to_bitmaps
from .formats import Check
from .onnx_export import PROB_TOLERANCE, WithProbabilities, quiet

LABEL_OUTPUT = "classLabel"
PROBS_OUTPUT = "classLabel_probs"
MIN_SPEC_VERSION = 7  # iOS 16 / macOS 13


def import_coremltools():
    """coremltools, imported without its Linux-only 'Failed to load' and version chatter."""
    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            import coremltools as ct
    except ImportError:
        raise QDError("format coreml needs coremltools: pip install -c constraints.txt 'quickdraw-edge[export]'") from None
    finally:
        logger.setLevel(level)
    return ct


def load_spec(path: Path):
    """(the package's spec, None), or (None, a failed "reload" check) when coremltools cannot read it."""
    ct = import_coremltools()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            return ct.utils.load_spec(str(path)), None
    except Exception as exc:  # coremltools raises assorted types for an unreadable package
        return None, Check("reload", False, f"package does not reload: {first_line(exc)}")


def image_scaling(preprocessing: dict) -> tuple[float, float]:
    """(scale, bias) for Core ML's pixel * scale + bias, matching (p * s - mean) / std."""
    std = float(preprocessing.get("std", 1.0))
    return float(preprocessing["scale"]) / std, 0.0 - float(preprocessing.get("mean", 0.0)) / std


def export_coreml(ctx: ExportContext, path: Path) -> None:
    ct = import_coremltools()
    source = ctx.source
    if source.preprocessing.get("polarity", "ink-high") != "ink-high":
        raise QDError(f"{source.path}: Core ML export expects ink-high preprocessing")
    side = int(source.preprocessing["input_size"])
    scale, bias = image_scaling(source.preprocessing)
    wrapped = WithProbabilities(source.model, ctx.confidence.temperature).eval()
    with quiet(), contextlib.redirect_stderr(io.StringIO()), torch.no_grad():
        traced = torch.jit.trace(wrapped, torch.zeros(1, 1, side, side))
        mlmodel = ct.convert(
            traced, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16,
            inputs=[ct.ImageType(name=INPUT, shape=(1, 1, side, side), scale=scale, bias=[bias],
                                 color_layout=ct.colorlayout.GRAYSCALE)],
            classifier_config=ct.ClassifierConfig(source.classes),
            compute_precision=ct.precision.FLOAT32,
        )
    side_text = f"{side}x{side} grayscale drawing, white ink (255) on black (0)"
    save_mlmodel(ctx, mlmodel, path, ctx.model_metadata("fp32"), description=(
        f"Quick, Draw! doodle classifier ({len(source.classes)} classes). Input: a {side}x{side} grayscale "
        "drawing, white ink on black."), inputs={INPUT: side_text},
        outputs={LABEL_OUTPUT: "most likely class", PROBS_OUTPUT: "probability of each class",
                 LOGITS: ("raw logits, in label order; the drawing is unknown when the "
                          "qd.open_set rule's score of them is below its threshold")})


def save_mlmodel(ctx: ExportContext, mlmodel, path: Path, metadata: dict[str, str], description: str,
                 inputs: dict[str, str], outputs: dict[str, str]) -> None:
    """Author, licence, descriptions and the qd.* metadata, then the package at `path` (a temp folder)."""
    mlmodel.author = "quickdraw-edge"
    mlmodel.version = qd.__version__
    mlmodel.license = LICENSE_NOTE
    mlmodel.short_description = description
    for name, text in {**inputs, **outputs}.items():
        (mlmodel.input_description if name in inputs else mlmodel.output_description)[name] = text
    for key, value in metadata.items():
        mlmodel.user_defined_metadata[key] = value
    mlmodel.user_defined_metadata[META_SOURCE_CHECKPOINT] = ctx.source.path.name
    path.rmdir()  # coremltools writes the package folder itself
    with contextlib.redirect_stderr(io.StringIO()):
        mlmodel.save(str(path))


def _program_block(spec):
    main = spec.mlProgram.functions["main"]
    return main.block_specializations[main.opset]


def _const_floats(block, name: str) -> list[float]:
    for op in block.operations:
        if op.type == "const" and op.outputs[0].name == name:
            return list(op.attributes["val"].immediateValue.tensor.floats.values)
    return []


def spec_labels(block) -> list[str]:
    classify = [op for op in block.operations if op.type == "classify"]
    if len(classify) != 1:
        return []
    values = classify[0].inputs["classes"].arguments[0].value.immediateValue.list.values
    return [v.immediateValue.tensor.strings.values[0] for v in values]


def spec_input_scaling(block) -> tuple[float | None, float]:
    """(scale, bias) the program applies to the image input (scale None: no scaling op)."""
    scale, bias, scaled = None, 0.0, None
    for op in block.operations:
        if op.type == "mul" and op.inputs["x"].arguments[0].name == INPUT:
            values = _const_floats(block, op.inputs["y"].arguments[0].name)
            scale = values[0] if len(values) == 1 else None
            scaled = op.outputs[0].name
        elif op.type == "add" and scaled and op.inputs["x"].arguments[0].name == scaled:
            values = _const_floats(block, op.inputs["y"].arguments[0].name)
            bias = values[0] if len(values) == 1 else float("nan")
    return scale, bias


def check_spec(ctx: ExportContext, path: Path) -> list[Check]:
    ct = import_coremltools()
    source = ctx.source
    side = int(source.preprocessing["input_size"])
    spec, failed = load_spec(path)
    if failed:
        return [failed]
    checks = [Check("reload", True, f"spec reloads: {spec.WhichOneof('Type')}, spec version {spec.specificationVersion}")]
    ok_type = spec.WhichOneof("Type") == "mlProgram" and spec.specificationVersion >= MIN_SPEC_VERSION
    checks.append(Check("ML Program, iOS 16+", ok_type,
                        f"type {spec.WhichOneof('Type')}, spec version {spec.specificationVersion} (≥ {MIN_SPEC_VERSION})"))
    desc = spec.description
    image = desc.input[0].type.imageType if len(desc.input) == 1 else None
    ok_input = (image is not None and desc.input[0].name == INPUT and image.width == side
                and image.height == side and image.colorSpace == ct.proto.FeatureTypes_pb2.ImageFeatureType.GRAYSCALE)
    checks.append(Check("input", ok_input, f"image {side}x{side} grayscale" if ok_input else f"unexpected input {desc.input}"))
    outputs = [o.name for o in desc.output]
    ok_outputs = (outputs == [LABEL_OUTPUT, PROBS_OUTPUT, LOGITS] and desc.predictedFeatureName == LABEL_OUTPUT
                  and desc.predictedProbabilitiesName == PROBS_OUTPUT)
    checks.append(Check("outputs", ok_outputs, f"{', '.join(outputs)}"))
    block = _program_block(spec)
    labels = spec_labels(block)
    checks.append(Check("class labels", labels == source.classes,
                        f"{len(labels)} labels in checkpoint order" if labels == source.classes
                        else f"labels {labels[:5]}... differ from the checkpoint's"))
    want_scale, want_bias = image_scaling(source.preprocessing)
    got_scale, got_bias = spec_input_scaling(block)
    ok_scale = (got_scale is not None and abs(got_scale - want_scale) <= 1e-6 * abs(want_scale)
                and abs(got_bias - want_bias) <= 1e-6)
    checks.append(Check("input scaling", ok_scale,
                        f"pixel × {got_scale:.8g} + {got_bias:g} (training: × {want_scale:.8g} + {want_bias:g})"
                        if got_scale is not None else "no input scaling op found"))
    ops = [op.type for op in block.operations if op.type != "const"]
    ok_head = len(ops) >= 2 and ops[-2:] == ["softmax", "classify"]
    checks.append(Check("softmax head", ok_head, "softmax → classify" if ok_head else f"graph ends {ops[-3:]}"))
    meta = dict(spec.description.metadata.userDefined)
    ok_meta = all(meta.get(k) == v for k, v in ctx.model_metadata("fp32").items())
    checks.append(Check("metadata", ok_meta and bool(spec.description.metadata.license),
                        "author, description, licence, labels, source checkpoint sha256"))
    return checks


def predictions_possible() -> bool:
    return platform.system() == "Darwin"


def check_predictions(ctx: ExportContext, path: Path) -> list[Check]:
    """macOS only: Core ML (CPU) against torch on the validation drawings."""
    ct = import_coremltools()
    from PIL import Image

    model = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.CPU_ONLY)
    ref_probs, _ = ctx.reference
    classes = ctx.source.classes
    pixels = inputs_to_bitmaps(ctx.data.inputs, ctx.source.preprocessing)
    probs = np.empty_like(ref_probs)
    for i, bitmap in enumerate(pixels):
        out = model.predict({INPUT: Image.fromarray(bitmap)})
        probs[i] = [out[PROBS_OUTPUT][name] for name in classes]
    diff = float(np.abs(probs - ref_probs).max())
    disagree = int((probs.argmax(1) != ref_probs.argmax(1)).sum())
    return [Check("vs torch (Core ML, CPU)", diff <= PROB_TOLERANCE and disagree == 0,
                  f"max |Δp| {diff:.1e}, top-1 differs on {disagree} of {len(probs)}",
                  {"max_abs_prob_diff": diff, "top1_disagreements": disagree})]


def validate_coreml(ctx: ExportContext, path: Path) -> list[Check]:
    checks = check_spec(ctx, path)
    if predictions_possible():
        checks += check_predictions(ctx, path)
    else:
        checks.append(Check("predictions", True,
                            "skipped: Core ML predictions need macOS; compared with torch when exported on a Mac",
                            {"skipped": "needs macOS"}))
    return checks

