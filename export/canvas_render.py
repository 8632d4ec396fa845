"""Test drawings as an app's canvas would hold them: the canvas formats' validation inputs.

Each 28x28 ink-high bitmap is scaled up (bilinear) to a drawing of a few hundred pixels,
its lines thinned or thickened, and painted with an ink grey onto a canvas of another
grey, at an offset. The variants cycle through sizes, line widths, offsets and grey
levels, so every kind is seen on a split of a few dozen drawings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

CANVAS_SIZES = ((300, 300), (512, 384), (384, 640), (640, 480), (96, 128))  # (width, height)
DRAWING_SHARES = (0.8, 0.6, 0.5, 0.7)  # the drawing's side as a share of the canvas's shorter side
LINES = ("thin", "as drawn", "thick")
GREYS = ((0, 255), (60, 235), (110, 200))  # (ink, paper)


@dataclass(frozen=True)
class CanvasVariant:
    size: tuple[int, int]
    share: float
    line: str
    ink: int
    paper: int

    def describe(self) -> str:
        return f"{self.size[0]}x{self.size[1]}, {self.line} lines, ink {self.ink} on {self.paper}"


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
