"""Outlier exposure with synthetic negatives: drawings of nothing the model knows, made per batch.

Outlier exposure (Hendrycks et al., ICLR 2019) adds a second term to the loss: on
drawings that belong to no class, the network is pushed towards a flat softmax
(cross-entropy against the uniform distribution), so its confidence on unfamiliar
drawings drops. No real drawings of other categories are needed here: the negatives
are made from each (already augmented) training batch, on tensors, seeded:

- "halves": the top (or left) part of one drawing joined to the rest of a drawing of
  another class, cut at a random row (column) near the middle: familiar strokes in an
  unfamiliar whole;
- "overlay": two drawings of different classes drawn over each other;
- "scribble": 1-3 random polylines, framed and stroked like Google's bitmaps
  (bounding box 272/304 of the frame, line 16/304 of it).

`exposure_loss` is the term added to the classification loss, weighted by
TrainConfig.outlier_exposure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from qd.data.images import FRAME_UNITS, INK_UNITS, LINE_UNITS  # Google's framing of a drawing

KINDS = ("halves", "overlay", "scribble")


def exposure_loss(logits: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy between softmax(logits) and the uniform distribution, minus its minimum
    log C: 0 for a flat softmax, growing as the network grows sure of any class."""
    return (torch.logsumexp(logits, dim=1) - logits.mean(dim=1)).mean() - math.log(logits.shape[1])


@dataclass(frozen=True)
class SyntheticOutliers:
    share: float = 0.25            # negatives per known drawing in a batch
    max_strokes: int = 3
    max_points: int = 8            # per stroke

    def count(self, batch: int) -> int:
        return max(1, int(round(batch * self.share)))

    def __call__(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator,
                 background: float = 0.0, ink: float = 1.0) -> torch.Tensor:
        """`count(len(x))` negatives shaped like `x` ((B, 1, S, S), model input space, ink-high).

        `background` and `ink` are the input values of an empty and a fully inked pixel."""
        m = self.count(len(x))
        kind = torch.randint(len(KINDS), (m,), generator=generator)
        first, second = _pairs(y, m, generator)
        out = torch.empty((m, *x.shape[1:]), dtype=x.dtype)
        for k, name in enumerate(KINDS):
            where = torch.nonzero(kind == k).flatten()
            if len(where) == 0:
                continue
            if name == "halves":
                out[where] = _halves(x[first[where]], x[second[where]], generator)
            elif name == "overlay":
                out[where] = torch.maximum(x[first[where]], x[second[where]])
            else:
                side = x.shape[-1]
                strokes = scribbles(len(where), side, generator, self.max_strokes, self.max_points)
                out[where] = (background + strokes * (ink - background)).to(x.dtype)[:, None]
        return out.to(x.device)


def _pairs(y: torch.Tensor, m: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """m index pairs into the batch, of different classes wherever the batch allows."""
    b = len(y)
    labels = y.cpu()
    first = torch.randint(b, (m,), generator=generator)
    second = torch.randint(b, (m,), generator=generator)
    for _ in range(4):  # redraw partners of the same class; a few rounds leave almost none
        same = labels[first] == labels[second]
        if not same.any():
            break
        second[same] = torch.randint(b, (int(same.sum()),), generator=generator)
    return first, second


def _halves(a: torch.Tensor, b: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per row: a's part above (or left of) a random cut near the middle, b's part after it."""
    n, side = len(a), a.shape[-1]
    cut = torch.randint(side * 3 // 8, side * 5 // 8 + 1, (n, 1, 1), generator=generator)
    position = torch.arange(side).view(1, side, 1)
    vertical = torch.rand(n, generator=generator) < 0.5
    rows = (position < cut).expand(n, side, side)
    mask = torch.where(vertical.view(n, 1, 1), rows.transpose(1, 2), rows)
    return torch.where(mask[:, None], a.cpu(), b.cpu())


def scribbles(n: int, side: int, generator: torch.Generator, max_strokes: int = 3,
              max_points: int = 8) -> torch.Tensor:
    """(n, side, side) float ink in [0, 1]: random polylines framed and stroked like Google's bitmaps."""
    segments = max_strokes * (max_points - 1)
    points = torch.rand(n, max_strokes, max_points, 2, generator=generator)
    strokes = torch.randint(1, max_strokes + 1, (n, 1), generator=generator)
    lengths = torch.randint(2, max_points + 1, (n, max_strokes), generator=generator)
    live = (torch.arange(max_strokes).view(1, -1) < strokes)[..., None] & \
           (torch.arange(max_points - 1).view(1, 1, -1) < (lengths - 1)[..., None])
    start, end = points[:, :, :-1].reshape(n, segments, 2), points[:, :, 1:].reshape(n, segments, 2)
    live = live.reshape(n, segments)
    # Frame every scribble's bounding box (over live segments) like Google's: centred, 272/304 of the side.
    big = torch.tensor(float("inf"))
    lo = torch.where(live[..., None], torch.minimum(start, end), big).amin(dim=1, keepdim=True)
    hi = torch.where(live[..., None], torch.maximum(start, end), -big).amax(dim=1, keepdim=True)
    extent = (hi - lo).amax(dim=2, keepdim=True).clamp_min(1e-3)
    box = side * (INK_UNITS - LINE_UNITS) / FRAME_UNITS
    scale = box / extent
    centre = (lo + hi) / 2

    def to_pixels(p):
        return (p - centre) * scale + side / 2

    start, end = to_pixels(start), to_pixels(end)
    grid = torch.stack(torch.meshgrid(torch.arange(side) + 0.5, torch.arange(side) + 0.5, indexing="xy"), dim=-1)
    pixels = grid.reshape(1, 1, -1, 2)  # (1, 1, P, 2) as (x, y)
    d = end - start
    t = ((pixels - start[:, :, None]) * d[:, :, None]).sum(-1) / (d * d).sum(-1).clamp_min(1e-9)[..., None]
    nearest = start[:, :, None] + t.clamp(0, 1)[..., None] * d[:, :, None]
    distance = (pixels - nearest).norm(dim=-1)  # (n, segments, P)
    distance = torch.where(live[..., None], distance, torch.tensor(float("inf"))).amin(dim=1)
    half_line = side * LINE_UNITS / FRAME_UNITS / 2
    return (half_line + 0.5 - distance).clamp(0, 1).reshape(n, side, side)
