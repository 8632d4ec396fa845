"""The canvas formats: onnx-canvas (model.canvas.onnx) and coreml-canvas (model.canvas.mlpackage).

Both are converted from one torch module, CanvasClassifier, so the two cannot drift
apart. The contract (input, outputs, limits, the blank answer) is qd.data.contract's.
Validation renders the test split as canvases and compares each model's answer with
what qd-infer answers for the same canvas (qd.data.images' full preprocessing, then
model.onnx): top-1 agreement >= 99%, max |Δp| reported; and a blank canvas must give
all-zero probabilities, finite logits and the open-set flag.

The graph. CanvasClassifier holds qd.data.images' clean-canvas preprocessing
(steps 1-4 and 6-12 of that module's docstring, on integer grey levels: polarity,
contrast stretch, ink bounding box, Google's framing, max-pooling to the working
resolution, thickening to the training line width, area-average resize to 28x28),
the model's input scaling, the classifier, the calibrated softmax and the open-set
logits. Step 5 (uneven lighting) is left out: a canvas has clean paper;
photos and scans still go through qd-infer's full preprocessing.

How a data-dependent crop and resize become a static graph:
- percentiles come from a 256-bin histogram (scatter-add), its cumulative sum and a
  count of the bins below q * N, which is step 3's definition;
- the crop + max-pool reads rows top + i*f + t for fixed ranges i < MAX_POOLED and
  t < MAX_FACTOR (gathers; indices past n, f or the image read a zero row), so the
  pooled array has a fixed size with zeros beyond its n x n corner;
- thickening is MAX_RADIUS passes of a 3x3 max, each kept only while below r;
- the 28x28 resize is Wy Q Wx^T with the weights built from the frame as tensors,
  exactly as images.py's area_weights (the weights past column n are zero).
The bounds follow from the largest canvas side (MAX_CANVAS_SIDE): frame <= side *
304 / 251, so f <= 22; n <= 225 (f = 1, frame < 224); r <= 6.

Frame geometry runs in float64 for ONNX, as images.py computes it, so the bitmap
matches qd.data.images up to the last bit of a float64 matrix product (a pixel
exactly on a rounding boundary may differ by one grey level). Core ML has no float64:
the same module runs there in float32.

A canvas without ink (or with less than MIN_CONTRAST grey levels of contrast) gives
all-zero probabilities, logits all BLANK_LOGIT (below any open-set threshold, so the
drawing reads as unknown) and an all-zero bitmap: defined, never NaN.

The validation canvases. Each 28x28 ink-high bitmap is scaled up (bilinear) to a drawing
of a few hundred pixels, its lines thinned or thickened, and painted with an ink grey
onto a canvas of another grey, at an offset. The variants cycle through sizes, line
widths, offsets and grey levels, so every kind is seen on a split of a few dozen drawings.
"""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from qd.command import QDError
from qd.data.contract import (BITMAP, BLANK_LOGIT, CANVAS_INPUT, CANVAS_OUTPUTS, LOGITS, MAX_CANVAS_SIDE,
                              MIN_CANVAS_SIDE, PROBABILITIES, SIDE)
from qd.data.images import (FRAME_UNITS, INK_UNITS, LINE_UNITS, MIN_CONTRAST, SKELETON_UNITS, STRETCH_HI, STRETCH_LO,
                            TRIM, WORK_SIDE, BlankImageError, gray_to_bitmap)
from qd.infer.model import CanvasModel, OnnxClassifier, canvas_metadata

from .checkpoint_source import ExportContext, inputs_to_bitmaps
from .formats import Check
from .onnx_export import DYNAMO_MIN_OPSET, check_contract, check_onnx_file, quiet, set_metadata, strip_debug_info

MIN_AGREEMENT = 0.99
CANVAS_DRAWINGS = 200  # test drawings rendered as canvases (rendering and the reference cost ~50 ms each)
EXAMPLE_CANVAS = (1, 1, 96, 64)  # traced once; height and width stay symbolic
CANVAS_INPUT_SHAPE = (1, 1, "height", "width")
LEVELS = 256
MAX_FACTOR = math.floor(MAX_CANVAS_SIDE * FRAME_UNITS / SKELETON_UNITS / WORK_SIDE)  # 22
MAX_POOLED = 2 * WORK_SIDE + 1  # n when f = 1: ceil(frame + 1) with frame < 2 * WORK_SIDE
MAX_RADIUS = math.floor((MAX_POOLED * LINE_UNITS / FRAME_UNITS) / 2 + 0.5)  # 6
CANVAS_SIZES = ((300, 300), (512, 384), (384, 640), (640, 480), (96, 128))  # (width, height)
DRAWING_SHARES = (0.8, 0.6, 0.5, 0.7)  # the drawing's side as a share of the canvas's shorter side
LINES = ("thin", "as drawn", "thick")
GREYS = ((0, 255), (60, 235), (110, 200))  # (ink, paper)


# ----------------------------------------------------------------------------- the graph

def select(condition: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """torch.where for 0-d tensors (as 1-element ones: Core ML's converter cannot broadcast scalars)."""
    return torch.where(condition.reshape(1), a.reshape(1), b.reshape(1)).reshape(())


def percentile(cumulative: torch.Tensor, q: float) -> torch.Tensor:
    """Step 3 on a cumulative histogram: the smallest v with cumsum[v] >= q * N (int64 scalar)."""
    return (cumulative < q * cumulative[-1]).sum()


def stroke_width(mask: torch.Tensor, area: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """images.stroke_width: 2 * area / boundary pixels of a float 0/1 mask (0 if no ink)."""
    padded = F.pad(mask, (1, 1, 1, 1))
    inner = (padded[1:-1, 1:-1] * padded[:-2, 1:-1] * padded[2:, 1:-1]
             * padded[1:-1, :-2] * padded[1:-1, 2:])
    boundary = area - inner.sum().to(dtype)
    return select(area > 0, 2.0 * area / boundary.clamp(min=1.0), torch.zeros_like(area))


def trimmed_bounds(mass: torch.Tensor, total: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """images._trimmed_bounds: first and last index holding more than TRIM of the ink from each side."""
    limit = TRIM * total
    first = (torch.cumsum(mass, 0).to(dtype) <= limit).sum()
    suffix = torch.flip(torch.cumsum(torch.flip(mass, (0,)), 0), (0,)).to(dtype)
    last = (suffix > limit).sum() - 1
    return first, torch.maximum(first, last)


def pooled_indices(start: torch.Tensor, factor: torch.Tensor, n: torch.Tensor, length: int) -> torch.Tensor:
    """(MAX_POOLED * MAX_FACTOR,) source indices start + i*f + t; `length` (a zero line) where unused."""
    i = torch.arange(MAX_POOLED).unsqueeze(1)
    t = torch.arange(MAX_FACTOR).unsqueeze(0)
    index = start + i * factor + t
    valid = torch.logical_and(torch.logical_and(t < factor, i < n), torch.logical_and(index >= 0, index < length))
    return torch.where(valid, index, torch.full_like(index, length)).reshape(-1).to(torch.int32)


def max_filter(q: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """images._max_filter with a data-dependent radius r <= MAX_RADIUS: r passes of a 3x3 max
    (squares compose; max_pool2d's padding never wins, so the window is clipped at the borders)."""
    x = q.reshape(1, 1, *q.shape)
    for step in range(MAX_RADIUS):
        x = torch.where(radius > step, F.max_pool2d(x, 3, stride=1, padding=1), x)
    return x.reshape(q.shape)


def area_weights(n_in: int, start: torch.Tensor, length: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """images.area_weights as tensors: (28, n_in) overlap of source pixel k with output cell i."""
    cell = length / SIDE
    starts = start + torch.arange(SIDE, dtype=dtype).unsqueeze(1) * cell
    k = torch.arange(n_in, dtype=dtype).unsqueeze(0)
    overlap = (torch.minimum(k + 1, starts + cell) - torch.maximum(k, starts)).clamp(min=0.0)
    return overlap / cell


class CanvasPreprocess(torch.nn.Module):
    """canvas float32 (1, 1, H, W), grey levels 0-255 -> (uint8-valued bitmap (28, 28) float, blank flag)."""

    def __init__(self, dtype: torch.dtype = torch.float64):
        super().__init__()
        self.dtype = dtype  # of the frame geometry and the resize (float64: as images.py)

    def forward(self, canvas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dt = self.dtype
        grey = canvas[0, 0]
        grey = torch.floor(torch.where(grey == grey, grey, torch.full_like(grey, 255.0)).clamp(0.0, 255.0) + 0.5)
        height, width = grey.shape
        flat = grey.reshape(-1)
        hist = torch.zeros(LEVELS).scatter_add(0, flat.long(), torch.ones_like(flat))
        # Step 4: polarity, then background b and span of the ink-high levels.
        cumulative = torch.cumsum(hist, 0).to(dt)
        median = percentile(cumulative, 0.5)
        dark = median - percentile(cumulative, 0.001) > percentile(cumulative, 0.999) - median
        ink = torch.where(dark, 255.0 - grey, grey)
        cumulative = torch.cumsum(torch.where(dark, torch.flip(hist, (0,)), hist), 0).to(dt)
        b = percentile(cumulative, 0.5)
        span = percentile(cumulative, 0.999) - b
        blank = span < MIN_CONTRAST
        # Step 6: the stretch as a 256-entry table (float32, as images.stretch_table).
        lo = b.float() + STRETCH_LO * span.float()
        hi = b.float() + STRETCH_HI * span.float()
        table = ((torch.arange(LEVELS, dtype=torch.float32) - lo) / select(blank, torch.ones_like(lo), hi - lo)).clamp(0.0, 1.0)
        strong = (table < 0.5).sum().float()  # S >= 0.5  <=>  I >= strong
        # Step 7: the ink's bounding box.
        mask = (ink >= strong).float()
        col, row = mask.sum(0), mask.sum(1)
        total = col.sum().to(dt)
        blank = torch.logical_or(blank, total == 0)
        x0, x1 = trimmed_bounds(col, total, dt)
        y0, y1 = trimmed_bounds(row, total, dt)
        # Step 8: the frame (float64 arithmetic in images.py's order).
        side = torch.maximum(x1 - x0 + 1, y1 - y0 + 1).to(dt)
        pen = torch.minimum(stroke_width(mask, total, dt), side * LINE_UNITS / INK_UNITS)
        frame = (side - pen) * FRAME_UNITS / SKELETON_UNITS
        frame_x = (x0 + x1 + 1).to(dt) / 2.0 - frame / 2.0
        frame_y = (y0 + y1 + 1).to(dt) / 2.0 - frame / 2.0
        factor = torch.floor(frame / WORK_SIDE).clamp(1.0, float(MAX_FACTOR))
        n = torch.ceil((frame + 1.0) / factor).clamp(max=float(MAX_POOLED))
        left, top = torch.floor(frame_x), torch.floor(frame_y)
        # Step 9: crop (zero outside the image) and max-pool f x f blocks, rows then columns.
        padded = F.pad(ink, (0, 1, 0, 1))
        f, count = factor.long(), n.long()
        rows = padded.index_select(0, pooled_indices(top.long(), f, count, height))
        rows = rows.reshape(MAX_POOLED, MAX_FACTOR, -1).amax(1)
        pooled = rows.index_select(1, pooled_indices(left.long(), f, count, width))
        pooled = pooled.reshape(MAX_POOLED, MAX_POOLED, MAX_FACTOR).amax(2)
        # Step 10: thicken thin strokes to the training line width.
        strong_pooled = (pooled >= strong).float()
        line = stroke_width(strong_pooled, strong_pooled.sum().to(dt), dt)
        target = (frame / factor) * LINE_UNITS / FRAME_UNITS
        radius = torch.floor((target - line) / 2.0 + 0.5)
        radius = select(torch.logical_and(line > 0, line < target), radius, torch.zeros_like(radius))
        pooled = max_filter(pooled, radius.clamp(max=float(MAX_RADIUS)).float())
        # Steps 11-12: area-average the frame to 28 x 28, round to grey levels.
        strength = table.index_select(0, pooled.reshape(-1).to(torch.int32)).reshape(MAX_POOLED, MAX_POOLED).to(dt)
        wy = area_weights(MAX_POOLED, (frame_y - top) / factor, frame / factor, dt)
        wx = area_weights(MAX_POOLED, (frame_x - left) / factor, frame / factor, dt)
        out = torch.matmul(torch.matmul(wy, strength), wx.transpose(0, 1))
        bitmap = torch.floor(out * 255.0 + 0.5).clamp(0.0, 255.0).float()
        return torch.where(blank, torch.zeros_like(bitmap), bitmap), blank


class CanvasClassifier(torch.nn.Module):
    """canvas (1, 1, H, W) 0-255 -> probabilities (1, C), logits (1, C), bitmap (1, 1, 28, 28) 0-255.

    probabilities = softmax(logits / temperature); the network sees the bitmap scaled as
    the model's preprocessing spec says (qd.data.contract.bitmaps_to_input)."""

    def __init__(self, net: torch.nn.Module, preprocessing: dict, temperature: float = 1.0,
                 dtype: torch.dtype = torch.float64):
        super().__init__()
        self.preprocess = CanvasPreprocess(dtype)
        self.net = net
        self.scale = float(preprocessing["scale"])
        self.mean = float(preprocessing.get("mean", 0.0))
        self.std = float(preprocessing.get("std", 1.0))
        self.temperature = float(temperature)

    def forward(self, canvas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        bitmap, blank = self.preprocess(canvas)
        x = bitmap.reshape(1, 1, SIDE, SIDE) * self.scale
        if self.mean != 0.0 or self.std != 1.0:
            x = (x - self.mean) / self.std
        logits = self.net(x)
        probs = torch.softmax(logits if self.temperature == 1.0 else logits / self.temperature, dim=1)
        probs = torch.where(blank, torch.zeros_like(probs), probs)
        logits = torch.where(blank, torch.full_like(logits, BLANK_LOGIT), logits)
        return probs, logits, bitmap.reshape(1, 1, SIDE, SIDE)


# ----------------------------------------------------------------------------- the validation canvases

@dataclass(frozen=True)
class CanvasVariant:
    size: tuple[int, int]
    share: float
    line: str
    ink: int
    paper: int


def variant(index: int) -> CanvasVariant:
    """The index-th variant: each property cycles with its own period, so combinations vary."""
    ink, paper = GREYS[index % len(GREYS)]
    return CanvasVariant(CANVAS_SIZES[index % len(CANVAS_SIZES)], DRAWING_SHARES[index % len(DRAWING_SHARES)],
                         LINES[(index // 2) % len(LINES)], ink, paper)


def render_canvas(bitmap: np.ndarray, spec: CanvasVariant, rng: np.random.Generator) -> np.ndarray:
    """A (28, 28) ink-high bitmap as a uint8 (H, W) canvas: dark ink on light paper, at a random offset."""
    width, height = spec.size
    side = max(28, int(min(width, height) * spec.share))
    drawing = Image.fromarray(np.asarray(bitmap, np.uint8).reshape(28, 28)).resize((side, side), Image.BILINEAR)
    if spec.line == "thin":
        drawing = drawing.filter(ImageFilter.MinFilter(3))
    elif spec.line == "thick":
        drawing = drawing.filter(ImageFilter.MaxFilter(5))
    coverage = np.asarray(drawing, dtype=np.float64) / 255.0
    canvas = np.full((height, width), float(spec.paper))
    top = int(rng.integers(0, height - side + 1))
    left = int(rng.integers(0, width - side + 1))
    region = canvas[top:top + side, left:left + side]
    region -= (spec.paper - spec.ink) * coverage
    return np.floor(canvas + 0.5).astype(np.uint8)


def render_canvases(bitmaps: np.ndarray, seed: int = 0) -> tuple[list[np.ndarray], list[CanvasVariant]]:
    rng = np.random.default_rng(seed)
    specs = [variant(i) for i in range(len(bitmaps))]
    return [render_canvas(b, s, rng) for b, s in zip(bitmaps, specs)], specs


# ----------------------------------------------------------------------------- the formats

def canvas_module(ctx: ExportContext, dtype: torch.dtype) -> CanvasClassifier:
    source = ctx.source
    if source.preprocessing.get("polarity", "ink-high") != "ink-high":
        raise QDError(f"{source.path}: canvas models expect ink-high preprocessing")
    return CanvasClassifier(source.model, source.preprocessing, ctx.confidence.temperature, dtype).eval()


def canvas_model_metadata(ctx: ExportContext) -> dict[str, str]:
    return {**ctx.model_metadata("fp32"), **canvas_metadata()}


# ----------------------------------------------------------------------------- ONNX

def export_onnx_canvas(ctx: ExportContext, path: Path) -> None:
    if ctx.options.opset < DYNAMO_MIN_OPSET:
        raise QDError(f"{path}: onnx-canvas needs --opset {DYNAMO_MIN_OPSET} or newer (got {ctx.options.opset})")
    module = canvas_module(ctx, torch.float64)
    sides = {2: torch.export.Dim("height", min=MIN_CANVAS_SIDE, max=MAX_CANVAS_SIDE),
             3: torch.export.Dim("width", min=MIN_CANVAS_SIDE, max=MAX_CANVAS_SIDE)}
    with quiet():
        program = torch.onnx.export(module, (torch.full(EXAMPLE_CANVAS, 255.0),), None, dynamo=True,
                                    opset_version=ctx.options.opset, external_data=False, input_names=[CANVAS_INPUT],
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
