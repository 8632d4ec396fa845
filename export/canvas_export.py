"""The canvas formats: onnx-canvas (model.canvas.onnx) and coreml-canvas (model.canvas.mlpackage).

Both are converted from export/canvas.py's CanvasClassifier. The contract (input,
outputs, limits, the blank answer) is qd.infer.model's. Validation renders the test
split as canvases (export/canvas_render.py) and compares each model's answer with what
qd-infer answers for the same canvas (qd.data.images' full preprocessing, then
model.onnx): top-1 agreement >= 99%, max |Δp| reported; and a blank canvas must give
all-zero probabilities, finite logits and the open-set flag.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import onnx
import torch

from qd.command import QDError
from qd.data.contract import BITMAP, CANVAS_INPUT, CANVAS_OUTPUTS, LOGITS, MAX_CANVAS_SIDE, MIN_CANVAS_SIDE, PROBABILITIES
from qd.data.images import BlankImageError, gray_to_bitmap
from qd.infer.model import CanvasModel, OnnxClassifier, canvas_metadata

from .canvas import CanvasClassifier
from .canvas_render import render_canvases
from .checkpoint_source import inputs_to_bitmaps
from .context import Check, ExportContext
from .onnx_export import DYNAMO_MIN_OPSET, quiet, set_metadata, strip_debug_info
from .validate import check_contract, check_onnx_file

MIN_AGREEMENT = 0.99
CANVAS_DRAWINGS = 200  # test drawings rendered as canvases (rendering and the reference cost ~50 ms each)
EXAMPLE_CANVAS = (1, 1, 96, 64)  # traced once; height and width stay symbolic
CANVAS_INPUT_SHAPE = (1, 1, "height", "width")


def canvas_module(ctx: ExportContext, dtype: torch.dtype) -> CanvasClassifier:
    source = ctx.source
    if source.preprocessing.get("polarity", "ink-high") != "ink-high":
        raise QDError(f"{source.path}: canvas models expect ink-high preprocessing")
    return CanvasClassifier(source.model, source.preprocessing, ctx.confidence.temperature, dtype).eval()


def canvas_model_metadata(ctx: ExportContext) -> dict[str, str]:
    return {**ctx.model_metadata("fp32"), **canvas_metadata()}


# ----------------------------------------------------------------------------- ONNX

def export_onnx_canvas(ctx: ExportContext, path: Path) -> None:
    if ctx.opset < DYNAMO_MIN_OPSET:
        raise QDError(f"{path}: onnx-canvas needs --opset {DYNAMO_MIN_OPSET} or newer (got {ctx.opset})")
    module = canvas_module(ctx, torch.float64)
    sides = {2: torch.export.Dim("height", min=MIN_CANVAS_SIDE, max=MAX_CANVAS_SIDE),
             3: torch.export.Dim("width", min=MIN_CANVAS_SIDE, max=MAX_CANVAS_SIDE)}
    with quiet():
        program = torch.onnx.export(module, (torch.full(EXAMPLE_CANVAS, 255.0),), None, dynamo=True,
                                    opset_version=ctx.opset, external_data=False, input_names=[CANVAS_INPUT],
                                    output_names=list(CANVAS_OUTPUTS), dynamic_shapes={"canvas": sides},
                                    verbose=False)
    model = program.model_proto
    strip_debug_info(model)
    model.producer_name = "quickdraw-edge"
    set_metadata(model, canvas_model_metadata(ctx))
    onnx.save_model(model, str(path))


def validate_onnx_canvas(ctx: ExportContext, path: Path) -> list[Check]:
    checks = [check_onnx_file(path), check_contract(path, canvas_model_metadata(ctx), CANVAS_INPUT, CANVAS_INPUT_SHAPE,
                                                    CANVAS_OUTPUTS)]
    if not all(c.passed for c in checks):
        return checks
    model = CanvasModel(path)
    run = lambda canvas: model.outputs(canvas)  # noqa: E731
    return checks + [check_against_infer(ctx, run), check_blank(run)]


# ----------------------------------------------------------------------------- the checks both formats share

def validation_canvases(ctx: ExportContext) -> tuple[list[np.ndarray], str]:
    """The test split (or the synthetic bitmaps) rendered as canvases, and what they are."""
    bitmaps = inputs_to_bitmaps(ctx.data.inputs, ctx.source.preprocessing)
    if len(bitmaps) > CANVAS_DRAWINGS:
        bitmaps = bitmaps[np.linspace(0, len(bitmaps) - 1, CANVAS_DRAWINGS).round().astype(np.int64)]
    canvases, _ = render_canvases(bitmaps)
    what = "test-split drawings" if not ctx.data.synthetic else "seeded random bitmaps (no test split)"
    return canvases, (f"{len(canvases)} {what} rendered as canvases (5 sizes 96-640 px, thin/as drawn/thick lines, "
                      "3 ink/paper greys, random offsets)")


def infer_reference(ctx: ExportContext, canvases: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What qd-infer answers for each canvas: qd.data.images, then model.onnx. (probs, unknown, blank)."""
    classifier = OnnxClassifier(ctx.written["onnx"])
    bitmaps, blank = [], []
    for canvas in canvases:
        try:
            bitmaps.append(gray_to_bitmap(canvas))
            blank.append(False)
        except BlankImageError:
            bitmaps.append(np.zeros((28, 28), np.uint8))
            blank.append(True)
    answer = classifier.predict(np.stack(bitmaps))
    unknown = answer.unknown if answer.unknown is not None else np.zeros(len(canvases), bool)
    probs = np.where(np.array(blank)[:, None], 0.0, answer.probabilities).astype(np.float32)
    return probs, unknown, np.array(blank)


def check_against_infer(ctx: ExportContext, run) -> Check:
    """`run(canvas) -> {output: array}` against qd-infer on the rendered canvases."""
    if "onnx" not in ctx.written:
        return Check("vs qd-infer", False, "needs model.onnx of this export to compare with (export onnx too)")
    if "canvas reference" not in ctx.shared:  # the same for both canvas formats: computed once per run
        canvases, described = validation_canvases(ctx)
        ctx.shared["canvas reference"] = canvases, described, infer_reference(ctx, canvases)
    canvases, described, (ref_probs, ref_unknown, ref_blank) = ctx.shared["canvas reference"]
    outputs = [run(canvas) for canvas in canvases]
    probs = np.concatenate([o[PROBABILITIES] for o in outputs])
    blank = ~probs.any(axis=1)
    rule = ctx.confidence.rule
    unknown = (rule.unknown({LOGITS: np.concatenate([o[LOGITS] for o in outputs]), PROBABILITIES: probs})
               if rule is not None else np.zeros(len(canvases), bool))
    same = np.where(ref_blank | blank, ref_blank == blank, probs.argmax(1) == ref_probs.argmax(1))
    agreement = float(same.mean())
    diff = float(np.abs(probs - ref_probs).max())
    bitmaps_same = _same_bitmaps(canvases, outputs)
    passed = agreement >= MIN_AGREEMENT and bool(np.isfinite(probs).all())
    detail = (f"{described}: top-1 agrees with qd-infer (qd.data.images + model.onnx) on {int(same.sum())} of "
              f"{len(same)} ({agreement:.1%}, ≥ {MIN_AGREEMENT:.0%}), max |Δp| {diff:.2g}, unknown flag differs on "
              f"{int((unknown != ref_unknown).sum())}, {bitmaps_same} of {len(same)} bitmaps identical to "
              "qd.data.images'")
    return Check("vs qd-infer on canvases", passed, detail,
                 {"drawings": len(same), "top1_agreement": agreement, "max_abs_prob_diff": diff,
                  "unknown_differs": int((unknown != ref_unknown).sum()), "bitmaps_identical": bitmaps_same,
                  "data": described})


def _same_bitmaps(canvases: list[np.ndarray], outputs: list[dict]) -> int:
    same = 0
    for canvas, out in zip(canvases, outputs):
        try:
            same += int(np.array_equal(gray_to_bitmap(canvas), out[BITMAP][0, 0].astype(np.uint8)))
        except BlankImageError:
            same += int(not out[BITMAP].any())
    return same


def blank_canvases() -> list[np.ndarray]:
    """No ink: white paper at the smallest size, grey paper with faint noise (below MIN_CONTRAST), black paper."""
    rng = np.random.default_rng(0)
    return [np.full((MIN_CANVAS_SIDE, MIN_CANVAS_SIDE), 255, np.uint8),
            (200 + rng.integers(0, 20, (384, 512))).astype(np.uint8),
            np.zeros((64, 48), np.uint8)]


def check_blank(run) -> Check:
    problems = []
    for canvas in blank_canvases():
        out = run(canvas)
        if any(not np.isfinite(v).all() for v in out.values()):
            problems.append(f"{canvas.shape[1]}x{canvas.shape[0]}: not finite")
        elif out[PROBABILITIES].any() or out[BITMAP].any() or not (out[LOGITS] < -1e3).all():
            problems.append(f"{canvas.shape[1]}x{canvas.shape[0]}: p max {out[PROBABILITIES].max():.2g}")
    detail = (f"{len(blank_canvases())} blank canvases → all-zero probabilities and bitmap, logits all "
              f"{float(run(blank_canvases()[0])[LOGITS].max()):g} (flagged unknown)")
    return Check("blank canvas", not problems, "; ".join(problems) if problems else detail)


# ----------------------------------------------------------------------------- Core ML

def export_coreml_canvas(ctx: ExportContext, path: Path) -> None:
    from .coreml import save_mlmodel, import_coremltools

    ct = import_coremltools()
    module = canvas_module(ctx, torch.float32)
    sides = ct.RangeDim(MIN_CANVAS_SIDE, MAX_CANVAS_SIDE, default=EXAMPLE_CANVAS[2])
    width = ct.RangeDim(MIN_CANVAS_SIDE, MAX_CANVAS_SIDE, default=EXAMPLE_CANVAS[3])
    with quiet(), contextlib.redirect_stderr(io.StringIO()), torch.no_grad():
        traced = torch.jit.trace(module, torch.full(EXAMPLE_CANVAS, 255.0))
        mlmodel = ct.convert(
            traced, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16,
            inputs=[ct.ImageType(name=CANVAS_INPUT, shape=ct.Shape((1, 1, sides, width)),
                                 color_layout=ct.colorlayout.GRAYSCALE)],
            outputs=[ct.TensorType(name=PROBABILITIES), ct.TensorType(name=LOGITS), ct.TensorType(name=BITMAP)],
            compute_precision=ct.precision.FLOAT32,
        )
    save_mlmodel(ctx, mlmodel, path, canvas_model_metadata(ctx), description=(
        f"Quick, Draw! doodle classifier ({len(ctx.source.classes)} classes) from an app's canvas: a grayscale image "
        f"of {MIN_CANVAS_SIDE}-{MAX_CANVAS_SIDE} px a side, dark ink on light paper"),
        inputs={CANVAS_INPUT: f"grayscale canvas, {MIN_CANVAS_SIDE}-{MAX_CANVAS_SIDE} px a side, dark ink on light"},
        outputs={PROBABILITIES: "probability of each class, in label order (all zero: no ink on the canvas)",
                 LOGITS: "raw logits; the drawing is unknown when the qd.open_set rule's score is below its threshold",
                 BITMAP: "the 28x28 ink-high bitmap the network saw (0-255)"})


def validate_coreml_canvas(ctx: ExportContext, path: Path) -> list[Check]:
    from .coreml import predictions_possible

    checks = check_coreml_canvas_spec(ctx, path)
    if not all(c.passed for c in checks):
        return checks
    if predictions_possible():
        run = coreml_runner(path)
        where = "Core ML (CPU)"
    else:
        run = torch_runner(canvas_module(ctx, torch.float32))
        where = "the float32 torch module it was converted from (Core ML predictions need macOS)"
    agreement, blank = check_against_infer(ctx, run), check_blank(run)
    agreement.detail = f"{where}: {agreement.detail}"
    return checks + [agreement, blank]


def torch_runner(module: CanvasClassifier):
    def run(canvas: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            values = module(torch.from_numpy(np.asarray(canvas, np.float32))[None, None])
        return {name: v.numpy() for name, v in zip(CANVAS_OUTPUTS, values)}
    return run


def coreml_runner(path: Path):
    from PIL import Image

    from .coreml import import_coremltools

    ct = import_coremltools()
    model = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.CPU_ONLY)

    def run(canvas: np.ndarray) -> dict[str, np.ndarray]:
        out = model.predict({CANVAS_INPUT: Image.fromarray(np.asarray(canvas, np.uint8))})
        return {name: np.asarray(out[name], np.float32) for name in CANVAS_OUTPUTS}
    return run


def check_coreml_canvas_spec(ctx: ExportContext, path: Path) -> list[Check]:
    from .coreml import MIN_SPEC_VERSION, import_coremltools, load_spec

    ct = import_coremltools()
    spec, failed = load_spec(path)
    if failed:
        return [failed]
    kind, version = spec.WhichOneof("Type"), spec.specificationVersion
    checks = [Check("ML Program, iOS 16+", kind == "mlProgram" and version >= MIN_SPEC_VERSION,
                    f"type {kind}, spec version {version} (≥ {MIN_SPEC_VERSION})")]
    desc = spec.description
    image = desc.input[0].type.imageType if len(desc.input) == 1 else None
    ranges = ([(r.lowerBound, r.upperBound) for r in (image.imageSizeRange.heightRange, image.imageSizeRange.widthRange)]
              if image is not None else [])
    wanted = [(MIN_CANVAS_SIDE, MAX_CANVAS_SIDE)] * 2
    ok_input = (image is not None and desc.input[0].name == CANVAS_INPUT and ranges == wanted
                and image.colorSpace == ct.proto.FeatureTypes_pb2.ImageFeatureType.GRAYSCALE)
    checks.append(Check("input", ok_input,
                        f"{CANVAS_INPUT}: grayscale image, {MIN_CANVAS_SIDE}-{MAX_CANVAS_SIDE} px a side"
                        if ok_input else f"unexpected input {str(desc.input)[:200]}"))
    outputs = [o.name for o in desc.output]
    checks.append(Check("outputs", outputs == list(CANVAS_OUTPUTS), ", ".join(outputs)))
    meta = dict(desc.metadata.userDefined)
    ok_meta = all(meta.get(k) == v for k, v in canvas_model_metadata(ctx).items())
    checks.append(Check("metadata", ok_meta and bool(desc.metadata.license),
                        "author, description, licence, labels, canvas limits, source checkpoint sha256"))
    return checks
