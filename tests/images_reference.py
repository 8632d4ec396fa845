"""A direct transcription of qd.data.images' steps 2-12, as the module docstring states them.

The test oracle for the fast implementation (tests/test_data_images_exact.py): every pixel's
strength S as float32, per-cell histograms, float max-pooling and max-filtering, exactly
as specified. Slow on purpose: it is the spec, not the product. Steps 0-1 (decoding, grey
levels) and the small shared helpers come from the module itself.
"""

from __future__ import annotations

import math

import numpy as np

from qd.data.contract import SIDE
from qd.data.images import (FRAME_UNITS, INK_UNITS, LINE_UNITS, LOCAL_CELLS, LOCAL_MIN_SIDE, LOCAL_RADIUS, MIN_CONTRAST,
                            SKELETON_UNITS, STRETCH_HI, STRETCH_LO, TRIM, WORK_SIDE, BlankImageError, area_weights,
                            percentile)


def ink_high(gray):
    hist = np.bincount(gray.reshape(-1), minlength=256)
    m = percentile(hist, 0.5)
    if m - percentile(hist, 0.001) > percentile(hist, 0.999) - m:
        gray = 255 - gray
        hist = hist[::-1]
    b = percentile(hist, 0.5)
    return gray, b, percentile(hist, 0.999) - b


def subtract_local_background(ink):
    h, w = ink.shape
    cell = -(-max(h, w) // LOCAL_CELLS)
    rows, cols = -(-h // cell), -(-w // cell)
    medians = np.zeros((rows, cols), dtype=np.int32)
    for i in range(rows):
        for j in range(cols):
            block = ink[i * cell:(i + 1) * cell, j * cell:(j + 1) * cell]
            medians[i, j] = percentile(np.bincount(block.reshape(-1), minlength=256), 0.5)
    background = np.zeros_like(medians)
    for i in range(rows):
        for j in range(cols):
            background[i, j] = medians[max(0, i - LOCAL_RADIUS):i + LOCAL_RADIUS + 1,
                                       max(0, j - LOCAL_RADIUS):j + LOCAL_RADIUS + 1].min()
    per_pixel = np.repeat(np.repeat(background, cell, axis=0), cell, axis=1)[:h, :w]
    return np.maximum(ink.astype(np.int32) - per_pixel, 0).astype(np.uint8)


def gray_to_bitmap(gray):
    gray = np.asarray(gray, dtype=np.uint8)
    ink, b, span = ink_high(gray)
    if span >= MIN_CONTRAST and max(ink.shape) >= LOCAL_MIN_SIDE:
        ink = subtract_local_background(ink)
        hist = np.bincount(ink.reshape(-1), minlength=256)
        b = percentile(hist, 0.5)
        span = percentile(hist, 0.999) - b
    if span < MIN_CONTRAST:
        raise BlankImageError(f"no drawing found (blank image or too little contrast: {span} grey levels)")
    lo = np.float32(b + STRETCH_LO * span)
    hi = np.float32(b + STRETCH_HI * span)
    strength = np.clip((ink.astype(np.float32) - lo) / (hi - lo), np.float32(0), np.float32(1))
    return strength_to_bitmap(strength)


def strength_to_bitmap(strength):
    mask = strength >= 0.5
    col, row = mask.sum(axis=0), mask.sum(axis=1)
    total = int(col.sum())
    if total == 0:
        raise BlankImageError("no drawing found (no ink after contrast stretch)")
    x0, x1 = trimmed_bounds(col, total)
    y0, y1 = trimmed_bounds(row, total)
    side = max(x1 - x0 + 1, y1 - y0 + 1)
    width = min(stroke_width(mask), side * LINE_UNITS / INK_UNITS)
    frame = (side - width) * FRAME_UNITS / SKELETON_UNITS
    frame_x = (x0 + x1 + 1) / 2.0 - frame / 2.0
    frame_y = (y0 + y1 + 1) / 2.0 - frame / 2.0
    factor = max(1, int(math.floor(frame / WORK_SIDE)))
    n = int(math.ceil((frame + 1.0) / factor))
    left, top = int(math.floor(frame_x)), int(math.floor(frame_y))
    region = np.zeros((n * factor, n * factor), dtype=np.float32)
    h, w = strength.shape
    for y in range(max(top, 0), min(top + n * factor, h)):
        region[y - top, max(left, 0) - left:min(left + n * factor, w) - left] = strength[y, max(left, 0):min(left + n * factor, w)]
    pooled = region.reshape(n, factor, n, factor).max(axis=(1, 3))
    target = (frame / factor) * LINE_UNITS / FRAME_UNITS
    w_pooled = stroke_width(pooled >= 0.5)
    if 0 < w_pooled < target:
        r = int(math.floor((target - w_pooled) / 2.0 + 0.5))
        if r > 0:
            padded = np.pad(pooled, r, constant_values=-np.inf)
            windows = np.lib.stride_tricks.sliding_window_view(padded, (2 * r + 1, 2 * r + 1))
            pooled = windows.max(axis=(2, 3))
    wy = area_weights(n, SIDE, (frame_y - top) / factor, frame / factor)
    wx = area_weights(n, SIDE, (frame_x - left) / factor, frame / factor)
    out = wy @ pooled.astype(np.float64) @ wx.T
    return np.floor(out * 255.0 + 0.5).clip(0, 255).astype(np.uint8)


def trimmed_bounds(mass, total):
    limit = TRIM * total
    cum = np.cumsum(mass)
    first = int(np.argmax(cum > limit))
    suffix = np.cumsum(mass[::-1])[::-1]
    last = int(np.nonzero(suffix > limit)[0][-1])
    return first, max(first, last)


def stroke_width(mask):
    area = int(mask.sum())
    if area == 0:
        return 0.0
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return 2.0 * area / (area - int((mask & interior).sum()))
