"""Quick, Draw! drawings (`.ndjson`, simplified or raw) rendered to 28x28 like Google's bitmaps.

A simplified drawing is a list of strokes `[[x0, x1, ...], [y0, y1, ...]]` with
coordinates in 0..255, aligned to the top-left and scaled so the longer side spans
0..255. Google's `numpy_bitmap` files were made by drawing those strokes with cairo:
the drawing is centred in the 256x256 frame, a padding plus half a line width is
added on every side, the strokes are drawn as polylines with round caps and joins
(line width 16 in 256-space), anti-aliased, and read back as ink-high uint8.

A raw drawing (Google's `raw` files: strokes `[[xs], [ys], [times]]` in canvas pixels)
is first brought into the simplified space as Google did: aligned to the top-left
corner and scaled uniformly so the longer side spans 0..255 (Google then also resampled
and simplified each stroke, Ramer-Douglas-Peucker with epsilon 2; that moves points by
at most 2 of 256 units, well under one 28x28 pixel, so it is not repeated here).

Here the same geometry is drawn with Pillow at SUPERSAMPLE times the final size
(polyline segments plus a disc at every vertex = round caps and joins) and
box-downscaled, which approximates cairo's exact-coverage anti-aliasing. The
parameters were chosen by measurement against the first rows of the real bitmap
files (see tests/test_data_strokes.py and bench/tune_strokes.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw

from qd.command import QDError, reason_of
from qd.files import open_regular

from .contract import MAX_COORDINATE, MAX_NDJSON_LINE_BYTES, MAX_RAW_COORDINATE, MAX_STROKE_POINTS, SIDE

NDJSON_SUFFIX = ".ndjson"
ORIGINAL_SIDE = 256.0
LINE_DIAMETER = 16.0  # in the 256-unit drawing space
PADDING = 16.0  # per side, in the 256-unit drawing space
SUPERSAMPLE = 16
MAX_LINE_BYTES = MAX_NDJSON_LINE_BYTES
MAX_POINTS = MAX_STROKE_POINTS


def render_strokes(strokes, side: int = SIDE, line_diameter: float = LINE_DIAMETER,
                   padding: float = PADDING, supersample: int = SUPERSAMPLE) -> np.ndarray:
    """Strokes `[[xs], [ys]], ...` (0..255 space) -> uint8 (side, side) ink-high bitmap."""
    strokes = validate_strokes(strokes)
    big = side * supersample
    total_padding = 2.0 * padding + line_diameter
    scale = big / (ORIGINAL_SIDE + total_padding)
    canvas = Image.new("L", (big, big), 0)
    if not strokes:
        return np.zeros((side, side), dtype=np.uint8)
    xs = np.concatenate([s[0] for s in strokes])
    ys = np.concatenate([s[1] for s in strokes])
    # Centre the drawing's bounding box (from the origin to its max) in the frame.
    off_x = (ORIGINAL_SIDE - xs.max()) / 2.0 + total_padding / 2.0
    off_y = (ORIGINAL_SIDE - ys.max()) / 2.0 + total_padding / 2.0
    width = line_diameter * scale
    radius = width / 2.0
    draw = ImageDraw.Draw(canvas)
    for sx, sy in strokes:
        px = (sx + off_x) * scale
        py = (sy + off_y) * scale
        points = list(zip(px.tolist(), py.tolist()))
        if len(points) > 1:
            draw.line(points, fill=255, width=max(1, int(round(width))))
        for x, y in points:
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=255)
    small = canvas.resize((side, side), Image.BOX)
    return np.asarray(small, dtype=np.uint8).copy()


def render_drawing(drawing, side: int = SIDE) -> np.ndarray:
    """A `.ndjson` record's `drawing`, simplified or raw -> uint8 (side, side) bitmap."""
    return render_strokes(simplify_raw(drawing) if is_raw(drawing) else drawing, side=side)


def is_raw(drawing) -> bool:
    """Raw drawings carry a time list per stroke: `[[xs], [ys], [times]]`."""
    return isinstance(drawing, list) and any(isinstance(s, list) and len(s) >= 3 for s in drawing)


def simplify_raw(drawing) -> list[list[list[float]]]:
    """A raw drawing in the simplified space: top-left aligned, longer side scaled to 0..255."""
    strokes = validate_strokes(drawing, raw=True)
    if not strokes:
        return []
    xs = np.concatenate([s[0] for s in strokes])
    ys = np.concatenate([s[1] for s in strokes])
    extent = max(xs.max() - xs.min(), ys.max() - ys.min())
    scale = ORIGINAL_SIDE - 1.0 if extent == 0 else (ORIGINAL_SIDE - 1.0) / extent
    return [[((sx - xs.min()) * scale).tolist(), ((sy - ys.min()) * scale).tolist()] for sx, sy in strokes]


def validate_strokes(strokes, raw: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
    """Check the `drawing` structure; return float arrays per stroke (raises ValueError).

    Simplified coordinates must lie near 0..255; raw ones (canvas pixels) within
    +-MAX_RAW_COORDINATE."""
    low, high = (-MAX_RAW_COORDINATE, MAX_RAW_COORDINATE) if raw else (-1, MAX_COORDINATE)
    if not isinstance(strokes, list):
        raise ValueError("'drawing' is not a list of strokes")
    out = []
    total = 0
    for i, stroke in enumerate(strokes):
        if not isinstance(stroke, list) or len(stroke) < 2:
            raise ValueError(f"stroke {i} is not [[x...], [y...]]")
        xs, ys = stroke[0], stroke[1]
        if not isinstance(xs, list) or not isinstance(ys, list) or len(xs) != len(ys):
            raise ValueError(f"stroke {i} has x and y lists of different lengths")
        if not xs:
            continue
        total += len(xs)
        if total > MAX_POINTS:
            raise ValueError(f"more than {MAX_POINTS} points")
        if not all(_is_number(v) for v in xs) or not all(_is_number(v) for v in ys):
            raise ValueError(f"stroke {i} has non-numeric coordinates")
        # Checked on the Python numbers, before numpy: a 400-digit integer is a number too,
        # and would overflow float64 (comparisons of ints with floats are exact).
        if any(v != v or v in _INFINITIES for v in (*xs, *ys)):
            raise ValueError(f"stroke {i} has non-finite coordinates")
        if not all(low <= v <= high for v in (*xs, *ys)):
            where = f"+-{MAX_RAW_COORDINATE:g}" if raw else "the simplified 0..255 range"
            raise ValueError(f"stroke {i} has coordinates outside {where}")
        out.append((np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)))
    return out


_INFINITIES = (float("inf"), float("-inf"))


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def parse_ndjson_line(line: str | bytes):
    """One ndjson line -> (word or None, strokes). Raises ValueError with a short reason."""
    if len(line) > MAX_LINE_BYTES:
        raise ValueError(f"line longer than {MAX_LINE_BYTES} bytes")
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON ({exc.msg if hasattr(exc, 'msg') else exc})") from None
    except RecursionError:
        raise ValueError("not JSON (nested too deeply)") from None
    if not isinstance(record, dict) or "drawing" not in record:
        raise ValueError("no 'drawing' key")
    word = record.get("word")
    return (word if isinstance(word, str) else None), record["drawing"]


def iter_ndjson(path: str | os.PathLike) -> Iterator[tuple[int, str | None, np.ndarray | None, str | None]]:
    """Yield (line_number, word, bitmap, error) per non-blank line of a .ndjson file (simplified or raw).

    A broken line yields an error string instead of a bitmap; the rest are still rendered.
    Only a regular file is read, and only as many bytes as it had when it was opened.
    """
    for number, word, drawing, error in iter_ndjson_records(path):
        if error is None:
            try:
                yield number, word, render_drawing(drawing), None
                continue
            except ValueError as exc:
                error = str(exc)
        yield number, None, None, error


def iter_ndjson_records(path: str | os.PathLike) -> Iterator[tuple[int, str | None, object, str | None]]:
    """Yield (line_number, word, drawing, error) per non-blank line, parsed but not rendered
    (render with render_drawing, which checks the drawing)."""
    path = Path(path)
    try:
        f = open_regular(path)
    except OSError as exc:
        raise QDError(f"{path}: {reason_of(exc)}") from None
    with f:
        for number, raw in enumerate(_bounded_lines(f, os.fstat(f.fileno()).st_size), start=1):
            if raw is None:
                yield number, None, None, f"line longer than {MAX_LINE_BYTES} bytes"
                continue
            if not raw.strip():
                continue
            try:
                word, drawing = parse_ndjson_line(raw)
            except ValueError as exc:
                yield number, None, None, str(exc)
                continue
            yield number, word, drawing, None


def _bounded_lines(f, size: int) -> Iterator[bytes | None]:
    """Lines of the first `size` bytes of a binary file, never holding more than MAX_LINE_BYTES;
    None for an over-long line."""
    left = size
    while left > 0:
        line = f.readline(min(MAX_LINE_BYTES + 1, left))
        if not line:
            return
        left -= len(line)
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n") and left > 0:  # skip the rest of the monster line
                line = f.readline(min(MAX_LINE_BYTES, left))
                left -= len(line)
            yield None
            continue
        yield line


def load_ndjson(path: str | os.PathLike) -> tuple[np.ndarray, list[str | None]]:
    """All drawings of a .ndjson file as (N, 28, 28) uint8 and their words; any broken line is an error."""
    bitmaps, words = [], []
    for number, word, bitmap, error in iter_ndjson(path):
        if error is not None:
            raise QDError(f"{path}:{number}: {error}")
        bitmaps.append(bitmap)
        words.append(word)
    if not bitmaps:
        return np.zeros((0, SIDE, SIDE), dtype=np.uint8), []
    return np.stack(bitmaps), words


def draw_strokes_image(strokes, size: int = 512, line_width: float = 4.0, drawing_side: float | None = None,
                       offset: tuple[float, float] | None = None, ink: int = 0, paper: int = 255) -> Image.Image:
    """Draw strokes as a person's drawing would look: dark ink on paper, any size and line width.

    The drawing (0..255 space) is scaled to `drawing_side` px (default 80% of `size`) and
    placed with its top-left corner at `offset` (default: centred). Used for tests, demos
    and benchmarks of the real-image preprocessing (qd.data.images).
    """
    strokes = validate_strokes(strokes)
    drawing_side = 0.8 * size if drawing_side is None else drawing_side
    scale = drawing_side / ORIGINAL_SIDE
    if offset is None:
        offset = ((size - drawing_side) / 2.0, (size - drawing_side) / 2.0)
    image = Image.new("L", (size, size), paper)
    draw = ImageDraw.Draw(image)
    radius = line_width / 2.0
    for sx, sy in strokes:
        points = list(zip((sx * scale + offset[0]).tolist(), (sy * scale + offset[1]).tolist()))
        if len(points) > 1:
            draw.line(points, fill=ink, width=max(1, int(round(line_width))))
        if line_width > 2:
            for x, y in points:
                draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=ink)
    return image
