"""The canvas models' graph: an app's canvas in, the classifier's answer out.

One torch module, CanvasClassifier, holds qd.data.images' clean-canvas preprocessing
(steps 1-4 and 6-12 of that module's docstring, on integer grey levels: polarity,
contrast stretch, ink bounding box, Google's framing, max-pooling to the working
resolution, thickening to the training line width, area-average resize to 28x28),
the model's input scaling, the classifier, the calibrated softmax and the open-set
logits. Both `onnx-canvas` and `coreml-canvas` are converted from it, so the two
cannot drift apart. Step 5 (uneven lighting) is left out: a canvas has clean paper;
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
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from qd.data.contract import BLANK_LOGIT, MAX_CANVAS_SIDE, SIDE
from qd.data.images import (FRAME_UNITS, INK_UNITS, LINE_UNITS, MIN_CONTRAST, SKELETON_UNITS, STRETCH_HI, STRETCH_LO,
                            TRIM, WORK_SIDE)

LEVELS = 256
MAX_FACTOR = math.floor(MAX_CANVAS_SIDE * FRAME_UNITS / SKELETON_UNITS / WORK_SIDE)  # 22
MAX_POOLED = 2 * WORK_SIDE + 1  # n when f = 1: ceil(frame + 1) with frame < 2 * WORK_SIDE
MAX_RADIUS = math.floor((MAX_POOLED * LINE_UNITS / FRAME_UNITS) / 2 + 0.5)  # 6


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
