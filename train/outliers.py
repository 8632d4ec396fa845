"""Outlier exposure with synthetic non-drawings, made per batch.

Outlier exposure (Hendrycks et al., ICLR 2019) adds a second term to the loss: on
inputs that belong to no class, the network is pushed towards a flat softmax
(cross-entropy against the uniform distribution), so its largest logit drops and the
open-set rule (qd.infer.model) answers "unknown" for them. The negatives here are what
people put in front of a doodle classifier that is no drawing at all, made in model
input space on tensors, seeded by the batch's generator, framed and stroked the way
qd.data.images frames a user's image (the ink's bounding box centred, 272/304 of the
frame, the line 16/304 of it):

- "scribble": 1-3 random polylines of 2-8 points;
- "walk": one long pen walk (12-40 steps of a heading that turns at random, never
  steadily enough to close a circle);
- "words": written words and letter strings, from a bank rendered once with the
  fonts Pillow bundles (load_default at several sizes, bold and slanted, and its
  bitmap font) and read through qd.data.images;
- "dots": 1-12 round marks of random sizes;
- "hatching": 3-12 parallel strokes, sometimes crossed by a second set;
- "line": one straight stroke;
- "noise": specks of paper noise over the whole frame.

Halves and overlays of real drawings are deliberately not among them: they look too
much like drawings, and training the network to doubt them costs known accuracy
(docs/open-set.md). Real drawings of other categories enter through --negatives.

`exposure_loss` is the term added to the classification loss, weighted by
TrainConfig.outlier_exposure. Known drawings and negatives go through the network in one
batch whose batch norm uses the known drawings' statistics alone (`known_batch_norm`): with
statistics of mixed batches, the running statistics of the deeper layers drift from what the
known drawings need and in eval mode the network is unsure of everything; with negatives
normalised differently from the known drawings (a pass of their own on the running
statistics), the network learns to tell the two normalisations apart instead of the inputs.
The training loop warps the negatives with the drawings' random affine augmentation: crisp,
unwarped negatives would be told apart from the drawings by their edges alone.
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from qd.data.images import FRAME_UNITS, INK_UNITS, LINE_UNITS, image_to_bitmap  # Google's framing of a drawing

KINDS = ("scribble", "walk", "words", "dots", "hatching", "line", "noise")
WORD_BANK = 256          # words rendered once per process
WORD_BANK_SEED = 20240530


def exposure_loss(logits: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy between softmax(logits) and the uniform distribution, minus its minimum
    log C: 0 for a flat softmax, growing as the network grows sure of any class."""
    return (torch.logsumexp(logits, dim=1) - logits.mean(dim=1)).mean() - math.log(logits.shape[1])


@contextlib.contextmanager
def known_batch_norm(model: torch.nn.Module, known: int):
    """Within the block, `model`'s training-mode batch-norm layers normalise the whole batch with the
    statistics of its first `known` samples, and update their running statistics from those alone:
    known drawings are normalised exactly as in a batch of their own, and negatives alike."""
    layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training]

    def forward(layer, x):
        part = x[:known]
        dims = [0, *range(2, x.dim())]
        mean, var = part.mean(dims), part.var(dims, unbiased=False)
        with torch.no_grad():
            n = part.numel() / part.shape[1]
            m = layer.momentum
            layer.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            layer.running_var.mul_(1 - m).add_(var.detach() * (n / max(n - 1, 1)), alpha=m)
            layer.num_batches_tracked.add_(1)
        shape = (1, -1, *([1] * (x.dim() - 2)))
        scale = torch.rsqrt(var + layer.eps).view(shape)
        if layer.affine:
            return (x - mean.view(shape)) * scale * layer.weight.view(shape) + layer.bias.view(shape)
        return (x - mean.view(shape)) * scale

    for layer in layers:
        layer.forward = functools.partial(forward, layer)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


@dataclass(frozen=True)
class SyntheticOutliers:
    share: float = 1.0             # negatives per known drawing in a batch (docs/open-set.md measures 0.25-1)
    kinds: tuple[str, ...] = KINDS

    def count(self, batch: int) -> int:
        return max(1, int(round(batch * self.share)))

    def __call__(self, x: torch.Tensor, generator: torch.Generator,
                 background: float = 0.0, ink: float = 1.0) -> torch.Tensor:
        """`count(len(x))` negatives shaped like `x` ((B, 1, S, S), model input space, ink-high).

        `background` and `ink` are the input values of an empty and a fully inked pixel."""
        m, side = self.count(len(x)), x.shape[-1]
        kind = torch.randint(len(self.kinds), (m,), generator=generator)
        out = torch.empty((m, side, side))
        for k, name in enumerate(self.kinds):
            where = torch.nonzero(kind == k).flatten()
            if len(where):
                out[where] = make(name, len(where), side, generator)
        return (background + out * (ink - background)).to(x.dtype)[:, None].to(x.device)


def make(kind: str, n: int, side: int, generator: torch.Generator) -> torch.Tensor:
    """(n, side, side) float ink in [0, 1] of one kind."""
    return MAKERS[kind](n, side, generator)


# ----------------------------------------------------------------------------- strokes


def draw_marks(start: torch.Tensor, end: torch.Tensor, live: torch.Tensor, side: int,
               radius: torch.Tensor | None = None) -> torch.Tensor:
    """(n, side, side) ink of n sets of straight marks, framed like Google's bitmaps.

    start, end: (n, M, 2) end points in any unit; live: (n, M) which marks exist; radius: (n, M)
    how much wider than the pen each mark is, in the same unit (0: a pen stroke). The bounding box
    of the live marks (widths included) is centred and scaled so that the ink spans 272/304 of the
    frame; every mark is drawn with the pen's 16/304 line plus its own radius."""
    n = len(start)
    radius = torch.zeros(live.shape) if radius is None else radius
    big = torch.tensor(float("inf"))
    r = radius[..., None]
    lo = torch.where(live[..., None], torch.minimum(start, end) - r, big).amin(dim=1, keepdim=True)
    hi = torch.where(live[..., None], torch.maximum(start, end) + r, -big).amax(dim=1, keepdim=True)
    extent = (hi - lo).amax(dim=2, keepdim=True).clamp_min(1e-3)
    line = side * LINE_UNITS / FRAME_UNITS
    scale = (side * INK_UNITS / FRAME_UNITS - line) / extent            # (n, 1, 1)
    centre = (lo + hi) / 2
    start, end = (start - centre) * scale + side / 2, (end - centre) * scale + side / 2
    width = line / 2 + radius * scale[..., 0]                             # (n, M) half-widths in pixels
    centres = torch.arange(side, dtype=torch.float32) + 0.5
    px, py = centres.repeat(side).view(1, 1, -1), centres.repeat_interleave(side).view(1, 1, -1)  # (1, 1, P)
    sx, sy = start[..., 0:1], start[..., 1:2]                             # (n, M, 1)
    dx, dy = end[..., 0:1] - sx, end[..., 1:2] - sy
    vx, vy = px - sx, py - sy
    t = ((vx * dx + vy * dy) / (dx * dx + dy * dy).clamp_min(1e-9)).clamp(0, 1)
    distance = torch.sqrt((vx - t * dx) ** 2 + (vy - t * dy) ** 2)      # (n, M, P) to the nearest point
    coverage = (width[..., None] + 0.5 - distance).clamp(0, 1)
    coverage = torch.where(live[..., None], coverage, torch.tensor(0.0))
    return coverage.amax(dim=1).reshape(n, side, side)


def polylines(points: torch.Tensor, strokes: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(start, end, live) marks of polylines: points (n, S, P, 2); the first `strokes` (n, 1) of each
    set, stroke s using its first lengths[:, s] points."""
    n, s, p, _ = points.shape
    live = (torch.arange(s).view(1, -1) < strokes)[..., None] & \
           (torch.arange(p - 1).view(1, 1, -1) < (lengths - 1)[..., None])
    start, end = points[:, :, :-1].reshape(n, -1, 2), points[:, :, 1:].reshape(n, -1, 2)
    return start, end, live.reshape(n, -1)


def scribbles(n: int, side: int, generator: torch.Generator, max_strokes: int = 3,
              max_points: int = 8) -> torch.Tensor:
    """Random polylines: 1-max_strokes strokes of 2-max_points uniform random points."""
    points = torch.rand(n, max_strokes, max_points, 2, generator=generator)
    strokes = torch.randint(1, max_strokes + 1, (n, 1), generator=generator)
    lengths = torch.randint(2, max_points + 1, (n, max_strokes), generator=generator)
    return draw_marks(*polylines(points, strokes, lengths), side)


def walks(n: int, side: int, generator: torch.Generator, max_steps: int = 40) -> torch.Tensor:
    """A pen wandering: equal steps whose heading turns by a random amount each step
    (a steady turn per walk plus noise), from gentle curves to tight tangles."""
    steps = torch.randint(12, max_steps + 1, (n, 1), generator=generator)
    drift = (torch.rand(n, 1, generator=generator) * 2 - 1) * 0.15  # small: a steady turn would close a circle
    wobble = 0.3 + torch.rand(n, 1, generator=generator) * 0.9
    turns = drift + wobble * torch.randn(n, max_steps, generator=generator)
    heading = torch.rand(n, 1, generator=generator) * 2 * math.pi + torch.cumsum(turns, dim=1)
    moves = torch.stack([torch.cos(heading), torch.sin(heading)], dim=-1)
    points = torch.cat([torch.zeros(n, 1, 2), torch.cumsum(moves, dim=1)], dim=1)[:, None]
    return draw_marks(*polylines(points, torch.ones(n, 1, dtype=torch.long), steps + 1), side)


def dots(n: int, side: int, generator: torch.Generator, max_dots: int = 12) -> torch.Tensor:
    """1-max_dots round marks at uniform random places, radius 0-8% of the spread."""
    centres = torch.rand(n, max_dots, 2, generator=generator)
    count = torch.randint(1, max_dots + 1, (n, 1), generator=generator)
    live = torch.arange(max_dots).view(1, -1) < count
    radius = torch.rand(n, max_dots, generator=generator) * 0.08
    return draw_marks(centres, centres, live, side, radius)


def hatching(n: int, side: int, generator: torch.Generator, max_strokes: int = 12) -> torch.Tensor:
    """3-max_strokes parallel strokes at one angle, evenly spaced with jitter; half of them crossed
    by a second set at another angle."""
    sets = []
    crossed = torch.rand(n, generator=generator) < 0.5
    for second in (False, True):
        count = torch.randint(3, max_strokes + 1, (n, 1), generator=generator)
        angle = torch.rand(n, 1, generator=generator) * math.pi
        along = torch.stack([torch.cos(angle), torch.sin(angle)], dim=-1)   # (n, 1, 2)
        across = torch.stack([-torch.sin(angle), torch.cos(angle)], dim=-1)
        k = torch.arange(max_strokes).view(1, -1)
        offset = k / count + torch.rand(n, max_strokes, generator=generator) * 0.3 / count
        half = 0.3 + torch.rand(n, 1, generator=generator) * 0.7 + torch.rand(n, max_strokes, generator=generator) * 0.1
        shift = (torch.rand(n, max_strokes, generator=generator) - 0.5) * 0.2
        middle = offset[..., None] * across + shift[..., None] * along
        live = k < count
        if second:
            live = live & crossed[:, None]
        sets.append((middle - half[..., None] * along, middle + half[..., None] * along, live))
    return draw_marks(*(torch.cat(parts, dim=1) for parts in zip(*sets)), side)


def lines(n: int, side: int, generator: torch.Generator) -> torch.Tensor:
    """One straight stroke at a random angle."""
    angle = torch.rand(n, 1, generator=generator) * math.pi
    end = torch.stack([torch.cos(angle), torch.sin(angle)], dim=-1)
    return draw_marks(-end, end, torch.ones(n, 1, dtype=torch.bool), side)


def noise(n: int, side: int, generator: torch.Generator) -> torch.Tensor:
    """Specks of paper noise over the whole frame, 5-40% of it, grown to pen-sized blots."""
    density = 0.05 + torch.rand(n, 1, 1, 1, generator=generator) * 0.35
    specks = (torch.rand(n, 1, side, side, generator=generator) < density).float()
    blots = F.max_pool2d(specks, 3, stride=1, padding=1) * 0.5 + specks * 0.5
    return F.avg_pool2d(blots, 2, stride=1, padding=1)[:, 0, :side, :side].clamp(0, 1)


def words(n: int, side: int, generator: torch.Generator) -> torch.Tensor:
    """Picks from the word bank; half of them turned a quarter (text written upwards)."""
    bank = word_bank(side)
    pick = torch.randint(len(bank), (n,), generator=generator)
    turned = torch.rand(n, generator=generator) < 0.5
    chosen = bank[pick]
    return torch.where(turned[:, None, None], chosen.transpose(1, 2).flip(1), chosen)


@functools.cache
def word_bank(side: int) -> torch.Tensor:
    """(WORD_BANK, side, side) ink of written words and letter strings, in the fonts Pillow bundles
    (the same on every install), read through qd.data.images like a photo of them."""
    rng = np.random.default_rng(WORD_BANK_SEED)
    letters = "abcdefghijklmnopqrstuvwxyz"
    out = np.empty((WORD_BANK, 28, 28), dtype=np.float32)
    for i in range(WORD_BANK):
        length = int(rng.integers(3, 13))  # no single letters: an o is a circle
        text = "".join(rng.choice(list(letters), length))
        case = rng.integers(4)
        text = text.upper() if case == 0 else text.capitalize() if case == 1 else text
        if rng.random() < 0.15:
            text = "".join(rng.choice(list("0123456789"), int(rng.integers(3, 9))))
        if rng.random() < 0.2:
            text = text[: len(text) // 2] + "\n" + text[len(text) // 2:]
        if rng.random() < 0.15:
            font = ImageFont.load_default_imagefont()   # the bundled bitmap font
        else:
            font = ImageFont.load_default(float(rng.integers(12, 33)))
        bold = int(rng.integers(0, 2)) if isinstance(font, ImageFont.FreeTypeFont) else 0
        left, top, right, bottom = ImageDraw.Draw(Image.new("L", (1, 1))).multiline_textbbox(
            (0, 0), text, font=font, stroke_width=bold)
        image = Image.new("L", (right - left + 24, bottom - top + 24), 255)
        ImageDraw.Draw(image).multiline_text((12 - left, 12 - top), text, font=font, fill=int(rng.integers(0, 90)),
                                             stroke_width=bold, stroke_fill=int(rng.integers(0, 90)))
        if rng.random() < 0.4:  # slanted like italics or handwriting
            shear = float(rng.uniform(-0.35, 0.35))
            width = image.width + int(abs(shear) * image.height) + 1
            image = image.transform((width, image.height), Image.Transform.AFFINE,
                                    (1, shear, -max(shear, 0) * image.height, 0, 1, 0), fillcolor=255)
        out[i] = image_to_bitmap(image) / np.float32(255)
    bank = torch.from_numpy(out)
    if side != 28:
        bank = F.interpolate(bank[:, None], size=(side, side), mode="area")[:, 0]
    return bank


MAKERS = {"scribble": scribbles, "walk": walks, "words": words, "dots": dots, "hatching": hatching,
          "line": lines, "noise": noise}
