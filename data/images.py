"""Real images -> 28x28 ink-high bitmaps like Google's Quick, Draw! bitmaps.

This is THE preprocessing for photos, scans and exported drawings: `qd-infer`,
`qd-eval`, the tests and the browser demo (JavaScript) all use exactly this
algorithm. It is written so that it can be re-implemented bit for bit: integer
arithmetic up to step 5, then IEEE float arithmetic (float32 here; float64 in
JavaScript differs by at most one grey level in rare pixels).

Target geometry. Google drew each drawing (longer side spanning 256 units) with
a 16-unit line and 16 units of padding per side, i.e. the ink's bounding box
(256 + 16 = 272 units) sits centred in a 304-unit frame, and the line is 16/304
of the frame wide. Steps 7-11 reproduce that framing and line width.

Algorithm (W x H image; arrays row-major; constants as defined below and in
qd.data.contract: MAX_PIXELS = 50,000,000, WORK_PIXELS = 2048 * 2048,
MIN_CONTRAST = 32, STRETCH_LO = 0.25, STRETCH_HI = 0.75, TRIM = 0.0005,
WORK_SIDE = 112; "P(q)" is defined in step 3):

 0. Decode, through the gate: a regular file whose suffix names one of the
    formats in IMAGE_FORMATS, decoded by that format's decoder only (content of
    any other kind is refused, never sniffed and decoded). Refuse images with
    W*H > MAX_PIXELS before decoding any pixel (decompression bombs) and W or H
    of 0. Apply the EXIF orientation tag (as browsers do). Animated images: the
    first frame only. An image of more than WORK_PIXELS pixels is box-averaged
    over k x k blocks (Pillow's Image.reduce), k the smallest integer that
    brings it to at most WORK_PIXELS; palette, 1-bit and CMYK-like modes are
    converted to L, RGB or RGBA first, so colours are averaged, not indices.
    This bounds memory per image (about 25 bytes a pixel below); W and H below
    are the reduced ones.
 1. Grey levels G (integers 0..255). Colour modes are converted to RGB(A) by
    Pillow (palette, CMYK, ...). 16-bit grey (and 32-bit integer images with
    values over 255) are divided by 257; float images whose maximum is <= 1 are
    multiplied by 255; then clipped to 0..255 and rounded (floor(x + 0.5)).
    Otherwise, with L1000 = 299*R + 587*G + 114*B (0..255000) and alpha A (255
    if the image has none; for plain grey images G is the grey value itself,
    which is what the formula gives):
        G = floor((L1000*A + 255000*(255 - A) + 127500) / 255000)
    i.e. ITU-R 601 luma with the image flattened onto WHITE. If A is not
    constant and that G has no contrast (span < MIN_CONTRAST, computed as in
    step 4), the image is light ink on transparency: flatten onto BLACK instead,
        G = floor((L1000*A + 127500) / 255000).
 2. Histogram: count[v] = number of pixels with G == v, N = W*H.
 3. Percentile P(q) = the smallest v in 0..255 with cumsum(count)[v] >= q*N
    (q*N in float64).
 4. Polarity. m = P(0.5) is the background (drawings are mostly paper). Ink is
    the far tail: if m - P(0.001) > P(0.999) - m the ink is dark on light paper
    and I = 255 - G; otherwise I = G (already ink-high). From I's histogram:
    b = P(0.5), t = P(0.999), span = t - b.
 5. Uneven lighting (only if span >= MIN_CONTRAST and max(W, H) >= 128).
    Cells of c = ceil(max(W, H) / 16) pixels: cell (i, j) holds rows
    [i*c, (i+1)*c) and columns [j*c, (j+1)*c), clipped to the image.
    med[i, j] = P(0.5) over the cell's own histogram (step 3's definition with
    N = the cell's pixel count). bg[i, j] = min of med over cells i-2..i+2,
    j-2..j+2 (clipped to the grid). Every pixel becomes
    I = max(I - bg[its cell], 0), and b, t, span are recomputed from the new
    I's histogram as in step 4.
 6. Blank check: span < MIN_CONTRAST -> refused (BlankImageError), never
    classified as noise. Contrast stretch (faint pencil becomes full-strength
    ink; paper texture, grey paper and JPEG noise become 0), in float32:
        lo = b + STRETCH_LO * span,  hi = b + STRETCH_HI * span
        S = clip((I - lo) / (hi - lo), 0, 1)
 7. Ink bounding box, robust to specks: M = S >= 0.5; colcount[x] = number
    of M pixels in column x, rowcount[y] likewise, total = count(M) (0 ->
    blank). x0 = the first x with cumsum(colcount)[x] > TRIM * total; x1 = the
    last x whose suffix sum (colcount[x] + ... + colcount[W-1]) > TRIM * total
    (and x1 = max(x1, x0)); same for y0, y1 (inclusive bounds).
 8. Frame. side = max(x1 - x0 + 1, y1 - y0 + 1); pen width
    w = min(stroke_width(M), side * 16 / 272) (stroke_width: step 10);
    L = (side - w) * 304 / 251 (the drawing's skeleton spans about 256 of the
    304 frame units whatever the pen width; 251 was measured to match best).
    The frame is the square of side L centred on the box, top-left corner
    fx = (x0 + x1 + 1) / 2 - L / 2, fy = (y0 + y1 + 1) / 2 - L / 2
    (pixel-edge coordinates, fractional). Pooling factor
    f = max(1, floor(L / WORK_SIDE)); n = ceil((L + 1) / f); the region is
    n*f pixels square with top-left corner (left, top) = (floor(fx), floor(fy));
    pixels outside the image are 0.
 9. Max-pool the region in f x f blocks -> Q (n x n). Thin strokes survive as
    full-strength lines at the working resolution (about WORK_SIDE px).
10. Thicken thin strokes to the dataset's line width. stroke_width(mask):
    A = count(mask); B = count of mask pixels with at least one 4-neighbour
    not in the mask (outside the array counts as not in it); 2*A/B, or 0 if
    A == 0. Here w = stroke_width(Q >= 0.5), target = (L / f) * 16 / 304.
    If 0 < w < target: r = floor((target - w) / 2 + 0.5); if r > 0, Q = max
    filter of Q over a (2r+1) x (2r+1) square window (clipped at the borders).
11. Area-average the frame to 28 x 28 (float64). In Q's coordinates the frame
    starts at sx = (fx - left) / f, sy = (fy - top) / f and has side
    l = L / f; output cell (i, j) covers rows [sy + i*l/28, sy + (i+1)*l/28)
    and columns [sx + j*l/28, sx + (j+1)*l/28); its value is the
    overlap-weighted mean of Q there: out = Wy Q Wx^T with
    Wy[i, k] = overlap([k, k+1), row interval i) / (l/28), Wx likewise.
12. bitmap = floor(255 * out + 0.5), clipped to 0..255, as uint8 (ink-high on
    a 0 background, like Google's bitmaps).

The model then sees qd.data.contract.bitmaps_to_input(bitmap, spec) with the
model's own preprocessing spec.
"""

from __future__ import annotations

import functools
import math
import os
import re
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from qd.command import QDError, first_line
from qd.files import open_regular

from .contract import IMAGE_FORMATS, IMAGE_SUFFIXES, MAX_PIXELS, SIDE, WORK_PIXELS

MIN_CONTRAST = 32  # grey levels between background and ink, else "blank"
STRETCH_LO = 0.25
STRETCH_HI = 0.75
TRIM = 0.0005  # fraction of ink mass ignored at each side of the bounding box
LOCAL_MIN_SIDE = 128  # images with a longer side below this skip step 5a
LOCAL_CELLS = 16  # background cells along the longer side
LOCAL_RADIUS = 2  # background = min of cell medians over a (2*2+1)^2 cell window
WORK_SIDE = 112  # working resolution for stroke thickening (4 x 28)
FRAME_UNITS = 304.0  # Google's frame: 256 + 2*16 padding + 16 line width
INK_UNITS = 272.0  # the ink's extent in that frame: 256 + 16 line width
# The drawing's extent through the stroke centres is nominally 256 frame units;
# 251 matches Google's renders best, measured on real drawings drawn with thin
# and thick pens (correlation 0.985-0.99 against the true bitmaps).
SKELETON_UNITS = 251.0
LINE_UNITS = 16.0
# First bytes of common image (and not-image) files, only to say what a refused file is.
CONTENT_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
    (b"BM", "BMP"), (b"RIFF", "WEBP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"%!", "PostScript"),
    (b"\xc5\xd0\xd3\xc6", "PostScript"), (b"%PDF", "PDF"), (b"\x00\x00\x01\x00", "ICO"), (b"\x00\x00\x02\x00", "CUR"),
    (b"8BPS", "PSD"), (b"qoif", "QOI"), (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (b"\xffO\xffQ", "JPEG 2000"),
    (b"DDS ", "DDS"), (b"icns", "ICNS"), (b"Image type", "IM"), (b"#define", "XBM"), (b"\x01\xda", "SGI"), (b"P1", "PNM"), (b"P2", "PNM"),
    (b"P3", "PNM"), (b"P4", "PNM"), (b"P5", "PNM"), (b"P6", "PNM"), (b"P7", "PNM"), (b"\x0a\x05\x01", "PCX"),
    (b"<?xml", "XML"), (b"<svg", "SVG"), (b"<!DOCTYPE", "HTML"), (b"<html", "HTML"),
)

# Images over MAX_PIXELS are refused by our own check before decoding; Pillow's own
# warning (at 89M pixels) would only duplicate that.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)


class ImageError(QDError):
    """An image that cannot be used: unreadable, refused, or blank."""


class BlankImageError(ImageError):
    """No drawing in the image (blank or too little contrast)."""


# ----------------------------------------------------------------------------- decoding

def open_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open and fully decode an image file through the gate: only a regular file, only the
    decoder its suffix names (IMAGE_FORMATS), refusing bombs by pixel count before decoding,
    and reduced to at most WORK_PIXELS after decoding."""
    path = Path(path)
    expected = image_format(path)
    if expected is None:
        raise ImageError(f"{path}: not an image name (expected {', '.join(IMAGE_SUFFIXES)})")
    try:
        with open_regular(path) as f:
            image = _open_as(f, path, expected, max_pixels)
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(f"{path}: refused, {width}x{height} = {width * height:,} pixels is over the "
                                 f"limit of {max_pixels:,} (decompression bomb?)")
            if width == 0 or height == 0:
                raise ImageError(f"{path}: image has zero size ({width}x{height})")
            try:
                image.load()
                ImageOps.exif_transpose(image, in_place=True)  # in place: no second copy of a big image
                return reduce_to_work_size(image)
            except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError,
                    struct.error, Image.DecompressionBombError, MemoryError) as exc:
                raise ImageError(f"{path}: cannot decode image ({first_line(exc)})") from None
    except QDError:
        raise
    except OSError as exc:
        raise ImageError(f"{path}: {exc.strerror or first_line(exc)}") from None


def image_format(path: str | os.PathLike) -> str | None:
    """The one Pillow format a file of this name may be decoded as, or None."""
    return IMAGE_FORMATS.get(os.path.splitext(str(path))[1].lower())


def _open_as(f, path: Path, expected: str, max_pixels: int) -> Image.Image:
    """Image.open restricted to the expected format: no other decoder is even asked."""
    try:
        return Image.open(f, formats=[expected])
    except Image.DecompressionBombError as exc:  # Pillow's own limit fired first, at open
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        raise ImageError(f"{path}: refused, {size} is over the limit of {max_pixels:,} "
                         "(decompression bomb?)") from None
    except UnidentifiedImageError:
        f.seek(0)
        raise ImageError(f"{path}: {_content_mismatch(f.read(64), expected, path)}") from None


def _content_mismatch(head: bytes, expected: str, path: Path) -> str:
    """Why a file was refused: what its first bytes look like (read as bytes, never decoded)."""
    found = _looks_like(head)
    suffix = path.suffix.lower()
    if found == expected:
        return f"cannot decode image (the {expected} header is damaged)"
    if found in IMAGE_FORMATS.values():
        better = next(s for s, name in IMAGE_FORMATS.items() if name == found)
        return f"content is {found}, not {expected} as the name {suffix} says; refused (rename it to {better})"
    if found is not None:
        return (f"content is {found}, not {expected} as the name {suffix} says; refused "
                f"(only {', '.join(sorted(set(IMAGE_FORMATS.values())))} are decoded)")
    return f"not a recognised image file (expected {expected} content for {suffix})"


def _looks_like(head: bytes) -> str | None:
    if head[4:8] == b"ftyp":  # ISO media: AVIF, HEIC, MP4...
        return "AVIF/HEIF" if head[8:12] in (b"avif", b"avis", b"heic", b"heix", b"mif1") else "ISO media"
    found = next((name for signature, name in CONTENT_SIGNATURES if head.startswith(signature)), None)
    if found == "WEBP" and head[8:12] != b"WEBP":
        return "RIFF"
    return found


def reduce_to_work_size(image: Image.Image, work_pixels: int | None = None) -> Image.Image:
    """Step 0's memory bound: an image of more than `work_pixels` (default WORK_PIXELS) pixels,
    box-averaged by the smallest integer factor that brings it under (in a mode whose average
    means something)."""
    work_pixels = WORK_PIXELS if work_pixels is None else work_pixels
    width, height = image.size
    if width * height <= work_pixels:
        return image
    factor = math.ceil(math.sqrt(width * height / work_pixels))
    while math.ceil(width / factor) * math.ceil(height / factor) > work_pixels:
        factor += 1
    mode = image.mode
    if mode.startswith("I;16"):  # Pillow reduces 32-bit integers, not 16-bit: go there and back
        return image.convert("I").reduce(factor).convert(mode)
    if mode in ("L", "RGB") and "transparency" not in image.info or mode in ("LA", "RGBA", "I", "F"):
        return image.reduce(factor)
    if mode == "1":
        return image.convert("L").reduce(factor)
    has_alpha = "A" in mode or "a" in mode or "transparency" in image.info
    return image.convert("RGBA" if has_alpha else "RGB").reduce(factor)


def image_to_gray(image: Image.Image) -> np.ndarray:
    """Step 1: grey levels G as uint8 (H, W), alpha flattened as the module docstring says."""
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _wide_gray(image)
    has_alpha = "A" in mode or "a" in mode or "transparency" in image.info
    if mode == "L" and not has_alpha:
        return np.asarray(image)  # the formula below gives G = L exactly (read-only: never written)
    try:
        rgb = np.asarray(image.convert("RGBA" if has_alpha else "RGB"))
    except (OSError, ValueError) as exc:
        raise ImageError(f"cannot convert {mode} image ({first_line(exc)})") from None
    # int32 is exact: the largest intermediate is 255000 * 255 + 255000 * 255 + 127500.
    luma = rgb[..., 0].astype(np.int32) * 299
    luma += rgb[..., 1].astype(np.int32) * 587
    luma += rgb[..., 2].astype(np.int32) * 114
    if not has_alpha:
        luma += 500
        luma //= 1000
        return luma.astype(np.uint8)
    alpha = rgb[..., 3].astype(np.int32)
    on_white = ((luma * alpha + 255000 * (255 - alpha) + 127500) // 255000).astype(np.uint8)
    if alpha.min() != alpha.max() and ink_high(on_white)[2] < MIN_CONTRAST:
        # Light ink on transparency vanishes on white: flatten onto black instead.
        return ((luma * alpha + 127500) // 255000).astype(np.uint8)
    return on_white


def _wide_gray(image: Image.Image) -> np.ndarray:
    values = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16") or (image.mode == "I" and values.size and values.max() > 255):
        values = values / 257.0
    elif image.mode == "F" and values.size and values.max() <= 1.0:
        values = values * 255.0
    return np.floor(np.clip(values, 0, 255) + 0.5).astype(np.uint8)


# ----------------------------------------------------------------------------- the algorithm
#
# How it runs (the same results as the steps above, with fewer passes over the pixels;
# tests/test_data_images_exact.py checks it bit for bit against a direct transcription):
# S is a monotone function of I (a 256-entry table), so S >= 0.5 is I >= a threshold
# level, and max-pooling and max-filtering commute with the table. Steps 7-10 therefore
# run on uint8 levels; only the pooled n x n array becomes float, through the table.
# Step 5 counts, per cell, the pixels at or below the paper's level, which tells on which
# side of that level each cell's median lies; a median is selected exactly (np.partition)
# only where it can be a window's minimum. Where the whole map is 0 (clean paper), step 5
# changes no pixel, and b and span stand.
# Small clean images (issue 29: most saved doodles are a few hundred pixels of thin grey
# strokes on white, and there the steps' own work, not the decoding, was the cost): the
# histogram counts the paper's level apart; steps 7-10 look only inside the ink's tight
# box (the trimmed bounds and stroke widths cannot change outside it) and reuse the stroke
# width when the frame holds the whole box at factor 1; steps 9-11 see only the frame's blocks
# that hold a pixel with S > 0, grown by the thickening radius (elsewhere S is 0 and adds
# nothing); S of the pooled levels is computed with the table's own float32 operations; the
# area weights are built from their bands.
# Per image, nothing is recomputed that an earlier image of the same (b, span) or size gave
# (the stretch table and its threshold level, step 5's cell sizes).
# bench/images_identity.py compares every bitmap with the module as it was before.

def percentile(hist: np.ndarray, q: float) -> int:
    """Step 3: the smallest grey level v with cumsum(hist)[v] >= q * N."""
    cum = np.cumsum(hist)
    return int(np.searchsorted(cum, q * float(cum[-1]), side="left"))


def percentiles(hist: np.ndarray, qs: tuple[float, ...]) -> list[int]:
    """Step 3 for several q at once (one cumulative sum): [P(q) for q in qs]."""
    cum = hist.cumsum()
    return np.searchsorted(cum, np.array(qs, dtype=np.float64) * float(cum[-1]), side="left").tolist()


# Images of at least this many pixels are counted as "one level, and the rest" when one level
# fills at least half of them (clean paper): see histogram().
_RUN_COUNTING_PIXELS = 4096


def histogram(levels: np.ndarray) -> np.ndarray:
    """Step 2: count[v] for v in 0..255 of a 2-D uint8 array, int64 (256,).

    Pillow's counting loop (twice numpy's bincount) stalls on long runs of one level, each
    count waiting for the one before: on clean paper, where one level (the first pixel's,
    usually) fills most of the image, that level is counted by comparison, eight pixels at
    a time (as 64-bit words), and only the words holding another level go through bincount."""
    levels = np.ascontiguousarray(levels)
    flat = levels.reshape(-1)
    if flat.size >= _RUN_COUNTING_PIXELS:
        paper = int(flat[0])
        whole = flat.size - flat.size % 8
        words = flat[:whole].view(np.uint64)
        mixed = words[words != paper * 0x0101010101010101]  # words not all paper
        if 2 * mixed.size <= words.size:
            hist = np.bincount(np.concatenate((mixed.view(np.uint8), flat[whole:])), minlength=256)
            hist[paper] += 8 * (words.size - mixed.size)
            return hist.astype(np.int64, copy=False)
    return np.asarray(Image.fromarray(levels).histogram(), dtype=np.int64)


def dark_on_light(hist: np.ndarray) -> bool:
    """Step 4's polarity test: is the far tail dark (ink darker than the paper)?"""
    m, low, high = percentiles(hist, (0.5, 0.001, 0.999))
    return m - low > high - m


def background_and_span(hist: np.ndarray) -> tuple[int, int]:
    """Step 4: b = P(0.5) and span = P(0.999) - b of an ink-high histogram."""
    b, top = percentiles(hist, (0.5, 0.999))
    return b, top - b


def ink_high(gray: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Step 4: orient so ink is high; return (I, background b, span)."""
    hist = histogram(gray)
    m, low, high = percentiles(hist, (0.5, 0.001, 0.999))
    if m - low > high - m:  # dark_on_light
        return (255 - gray, *background_and_span(hist[::-1]))
    return gray, m, high - m


class CellGrid:
    """Step 5's cells: c = ceil(max(W, H) / 16) pixels square, clipped to the image."""

    def __init__(self, shape: tuple[int, int]):
        self.height, self.width = shape
        self.cell = -(-max(shape) // LOCAL_CELLS)
        self.rows, self.cols = -(-self.height // self.cell), -(-self.width // self.cell)

    def background(self, levels: np.ndarray, likely: int) -> np.ndarray:
        """(rows, cols) int32: bg, the minimum of the cell medians P(0.5) over each cell's
        (2R+1)^2 window, of a uint8 (H, W) array.

        `likely` is the level most cells are expected to have as median (the paper's). Counting
        tells each cell's median's side of it; a median is selected exactly only where it can
        be a window's minimum: below `likely`, or above it in a window with no cell at or below.
        """
        above = self.counts(levels <= likely) < self.half
        below = self.counts(levels < likely) >= self.half if likely > 0 else None
        # A window is all above only if some cell is (each window holds its own cell).
        windows_all_above = ~_max_filter(~above, LOCAL_RADIUS) if above.any() else None
        if ((below is None or not below.any())
                and (windows_all_above is None or not windows_all_above.any())):
            return np.full((self.rows, self.cols), likely, dtype=np.int32)  # each window's minimum is `likely`
        exact = above & _max_filter(windows_all_above, LOCAL_RADIUS) if windows_all_above is not None else None
        if below is not None:
            exact = below if exact is None else exact | below
        # An unselected cell above `likely` shares every window with a lower one: any level over
        # `likely` stands in for its median without changing a minimum.
        medians = np.where(above, 255, likely).astype(np.int32)
        if exact.any():
            for (i, j), cells in self._blocks(levels):
                rows, cols = np.nonzero(exact[i:i + cells.shape[0], j:j + cells.shape[2]])
                if rows.size:
                    medians[i + rows, j + cols] = _medians(cells[rows, :, cols, :])
        return _min_filter(medians, LOCAL_RADIUS)

    @property
    def half(self) -> np.ndarray:
        """(rows, cols) float64: half of each cell's pixel count (the last row and column clipped);
        read-only."""
        return _half_cells(self.height, self.width, self.cell)

    def counts(self, mask: np.ndarray) -> np.ndarray:
        """(rows, cols): the True pixels of each cell of a boolean (H, W) mask: each column's
        count within each row of cells (one pass over the mask, no copy of it), laid on a
        zero grid of whole cells, whose added columns count nothing, then summed per cell."""
        c, height, width = self.cell, self.height, self.width
        if self.rows * self.cols * c * c > 2 * height * width:  # a thin strip: block by block
            out = np.empty((self.rows, self.cols), dtype=np.int64)
            for (i, j), cells in self._blocks(mask):
                out[i:i + cells.shape[0], j:j + cells.shape[2]] = _cell_counts(cells)
            return out
        flat = mask.view(np.uint8)
        full = height // c  # rows of cells with c pixel rows each; a clipped one may follow
        # Column counts within a cell fit the narrowest type: no casts in the big sum.
        per_column = np.zeros((self.rows, self.cols * c), dtype=np.uint8 if c <= 255 else _counter(c))
        flat[:full * c].reshape(full, c, width).sum(axis=1, dtype=per_column.dtype, out=per_column[:full, :width])
        if full < self.rows:
            flat[full * c:].sum(axis=0, dtype=per_column.dtype, out=per_column[full, :width])
        return per_column.reshape(self.rows, self.cols, c).sum(axis=2, dtype=np.int64)

    def _blocks(self, levels: np.ndarray):
        """((first cell row, first cell column), (nr, ch, nc, cw) view) for each rectangle of
        equal-sized cells: the full ones, then the clipped last row/column."""
        def spans(length):
            full = length // self.cell
            out = [(0, full * self.cell, full)] if full else []
            if length % self.cell:
                out.append((full * self.cell, length, 1))
            return out
        for r0, r1, nr in spans(self.height):
            for c0, c1, nc in spans(self.width):
                cells = levels[r0:r1, c0:c1].reshape(nr, (r1 - r0) // nr, nc, (c1 - c0) // nc)
                yield (r0 // self.cell, c0 // self.cell), cells

    def per_pixel(self, values: np.ndarray) -> np.ndarray:
        """A (rows, cols) map of levels 0..255 spread over the (H, W) pixels of each cell, as uint8."""
        spread = np.repeat(np.repeat(values.astype(np.uint8), self.cell, axis=0), self.cell, axis=1)
        return spread[:self.height, :self.width]


@functools.lru_cache(maxsize=256)  # images of one size share it
def _half_cells(height: int, width: int, cell: int) -> np.ndarray:
    rows, cols = -(-height // cell), -(-width // cell)
    heights = np.full(rows, cell, dtype=np.float64)
    heights[-1] = height - (rows - 1) * cell
    widths = np.full(cols, cell, dtype=np.float64)
    widths[-1] = width - (cols - 1) * cell
    half = 0.5 * heights[:, None] * widths[None, :]
    half.flags.writeable = False
    return half


def _cell_counts(mask: np.ndarray) -> np.ndarray:
    """(nr, nc) int64: the True pixels of each cell of a (nr, ch, nc, cw) boolean array."""
    per_column = mask.view(np.uint8).sum(axis=1, dtype=_counter(mask.shape[1]))  # narrow sums vectorise
    return per_column.sum(axis=2, dtype=np.int64)


def _count(mask: np.ndarray, axis: int) -> np.ndarray:
    """The True pixels of a 2-D boolean array along `axis`, in the narrowest type that holds them."""
    length = mask.shape[axis]
    return mask.view(np.uint8).sum(axis=axis, dtype=np.uint8 if length <= 255 else _counter(length))


def _counter(length: int):
    """The narrowest unsigned type that counts up to `length` (numpy sums those many times faster)."""
    return np.uint16 if length <= np.iinfo(np.uint16).max else np.int64


def _medians(cells: np.ndarray) -> np.ndarray:
    """P(0.5) of each of k uint8 (ch, cw) cells, (k, ch, cw) -> (k,) int32."""
    flat = cells.reshape(len(cells), -1)
    k = -(-flat.shape[1] // 2) - 1  # P(0.5) of N sorted values is the one at index ceil(N / 2) - 1
    return np.partition(flat, k, axis=1)[:, k].astype(np.int32)


def subtract_local_background(ink: np.ndarray, b: int) -> np.ndarray:
    """Step 5: remove uneven lighting (shadows, gradients) with a coarse background map.

    `b` is the whole image's background level, the likely median of most cells. Returns `ink`
    itself when the map is 0 everywhere (max(I - 0, 0) = I), as on clean paper.
    """
    grid = CellGrid(ink.shape)
    cells = grid.background(ink, likely=b)
    if not cells.any():
        return ink
    lit = np.minimum(ink, grid.per_pixel(cells))
    return np.subtract(ink, lit, out=lit)  # max(I - bg, 0) in uint8


def _min_filter(a: np.ndarray, radius: int) -> np.ndarray:
    return -_max_filter(-a, radius)


def gray_to_bitmap(gray: np.ndarray) -> np.ndarray:
    """Steps 2-12: uint8 grey levels (H, W) -> uint8 (28, 28) ink-high bitmap."""
    gray = np.ascontiguousarray(gray, dtype=np.uint8)
    if gray.ndim != 2 or gray.size == 0:
        raise BlankImageError(f"expected a non-empty 2-D grey image, got shape {gray.shape}")
    ink, b, span = ink_high(gray)
    if span >= MIN_CONTRAST and max(ink.shape) >= LOCAL_MIN_SIDE:
        lit = subtract_local_background(ink, b)
        if lit is not ink:  # when nothing was subtracted, b and span stand as they are
            ink = lit
            b, span = background_and_span(histogram(ink))
    if span < MIN_CONTRAST:
        raise BlankImageError(f"no drawing found (blank image or too little contrast: {span} grey levels)")
    table, bounds, strong = _stretch_of(b, span)
    return levels_to_bitmap(ink, table, stretch=bounds, strong=strong)


@functools.lru_cache(maxsize=1024)  # (b, span) repeat from image to image: ~1 KiB each
def _stretch_of(b: int, span: int) -> tuple[np.ndarray, tuple[np.float32, np.float32], int]:
    """stretch_table(b, span) (read-only), its (lo, hi) and its strong level (_strong_level)."""
    table = stretch_table(b, span)
    table.flags.writeable = False
    return table, _stretch_bounds(b, span), _strong_level(table)


def _strong_level(table: np.ndarray) -> int:
    """The least level whose S (table) is >= 0.5 (256 if none): S >= 0.5  <=>  I >= it (S rises)."""
    return int(np.argmax(table >= 0.5)) if table[-1] >= 0.5 else 256


def _stretch_bounds(b: int, span: int) -> tuple[np.float32, np.float32]:
    """Step 6's lo and hi, float32."""
    return np.float32(b + STRETCH_LO * span), np.float32(b + STRETCH_HI * span)


def stretch_table(b: int, span: int) -> np.ndarray:
    """Step 6 for every level: S = clip((I - lo) / (hi - lo), 0, 1) in float32, (256,)."""
    return _stretch(np.arange(256, dtype=np.float32), *_stretch_bounds(b, span))


def _stretch(levels: np.ndarray, lo: np.float32, hi: np.float32) -> np.ndarray:
    """Step 6 on an array of levels (float32, changed in place; or uint8, levels unchanged),
    float32: the same float32 operations for a table of all 256 levels and for an image's
    levels, so either gives S bit for bit (a uint8 level becomes float32 exactly)."""
    out = np.subtract(levels, lo, dtype=np.float32, out=levels if levels.dtype == np.float32 else None)
    np.divide(out, hi - lo, out=out)
    return np.clip(out, np.float32(0), np.float32(1), out=out)  # no NaN here


def levels_to_bitmap(ink: np.ndarray, table: np.ndarray,
                     stretch: tuple[np.float32, np.float32] | None = None, strong: int | None = None) -> np.ndarray:
    """Steps 7-12 on uint8 ink levels I (H, W) whose strength is S = table[I]. `stretch`:
    the (lo, hi) `table` was made from (stretch_table), to compute S of the pooled levels
    with the table's float32 operations rather than look it up (faster, and no index array
    as large as the float64 result); `strong`: the table's _strong_level, if known."""
    strong = _strong_level(table) if strong is None else strong  # S >= 0.5  <=>  I >= strong
    height, width = ink.shape
    mask = ink >= strong
    # Counts per column, then per row of the columns that hold ink; the ink's tight box
    # [ya, yb) x [xa, xb) holds every mask pixel, and the steps below see only that box
    # (zero counts outside it move no trimmed bound and no stroke width).
    col = _count(mask, axis=0)
    inked = col.nonzero()[0]
    if inked.size == 0:
        raise BlankImageError("no drawing found (no ink after contrast stretch)")
    xa, xb = int(inked[0]), int(inked[-1]) + 1
    box = mask[:, xa:xb]
    row = _count(box, axis=1)
    inked = row.nonzero()[0]
    ya, yb = int(inked[0]), int(inked[-1]) + 1
    box = box[ya:yb]
    col, row = col[xa:xb].astype(np.int64), row[ya:yb].astype(np.int64)
    total = int(col.sum())
    x0, x1 = (xa + v for v in _trimmed_bounds(col, total))
    y0, y1 = (ya + v for v in _trimmed_bounds(row, total))
    side = max(x1 - x0 + 1, y1 - y0 + 1)
    # The frame is fitted to the drawing's skeleton (ink extent minus one line
    # width), so thin and thick pens give the same framing as Google's renders.
    line = stroke_width(box, area=total)
    pen = min(line, side * LINE_UNITS / INK_UNITS)
    frame = (side - pen) * FRAME_UNITS / SKELETON_UNITS
    frame_x = (x0 + x1 + 1) / 2.0 - frame / 2.0
    frame_y = (y0 + y1 + 1) / 2.0 - frame / 2.0
    factor = max(1, int(math.floor(frame / WORK_SIDE)))
    n = int(math.ceil((frame + 1.0) / factor))
    left, top = int(math.floor(frame_x)), int(math.floor(frame_y))
    # Only pixels with S > 0 reach the output: the steps below see the frame's blocks that hold
    # one (the faint box, pooled), grown by the thickening radius. Outside that region S is 0
    # before thickening and stays 0 after it, and its weights would only add zeros.
    faint = _faint_box(ink, _faint_level(table))
    rows = _pooled_span(faint[0], faint[1], top, factor, n)
    cols = _pooled_span(faint[2], faint[3], left, factor, n)
    pooled = _max_pool(_crop_zero_padded(ink, top + rows[0] * factor, left + cols[0] * factor,
                                          (rows[1] - rows[0]) * factor, (cols[1] - cols[0]) * factor), factor)
    if factor == 1 and top <= ya and left <= xa and yb <= top + n and xb <= left + n:
        pooled_line = line  # the region is the image's pixels and holds the whole box: the same mask
    else:
        pooled_line = stroke_width(pooled >= strong)
    pooled, rows, cols = _thicken(pooled, rows, cols, n, pooled_line,
                                  target=(frame / factor) * LINE_UNITS / FRAME_UNITS)
    if stretch is None:
        strength = table.astype(np.float64)[pooled]
    else:
        strength = _stretch(pooled, *stretch).astype(np.float64)
    wy, wx = _area_weights_yx(n, (frame_y - top) / factor, (frame_x - left) / factor, frame / factor)
    wy, wx = wy[:, rows[0]:rows[1]], wx[:, cols[0]:cols[1]]
    out = wy @ strength @ wx.T
    out *= 255.0
    out += 0.5
    # Already within 0..255, so step 12's clip changes nothing: out is a mean of S in [0, 1]
    # (weights >= 0 summing to 1 within a few ulps), and floor(255 * (1 + 1e-15) + 0.5) = 255.
    return np.floor(out, out=out).astype(np.uint8)


def _trimmed_bounds(mass: np.ndarray, total: int) -> tuple[int, int]:
    """The first index whose prefix sum, and the last whose suffix sum, is over TRIM * total
    (both sums of integers, exact: prefix sums rise and suffix sums fall, so counting tells)."""
    limit = TRIM * total
    prefix = mass.cumsum()
    first = int(np.count_nonzero(prefix <= limit))
    suffix = total - prefix + mass
    last = int(np.count_nonzero(suffix > limit)) - 1
    return first, max(first, last)


def _faint_level(table: np.ndarray) -> int:
    """The least level whose S (table) is over 0: S > 0  <=>  I >= it (S rises from table[0] = 0)."""
    return int(np.count_nonzero(table == 0))


def _faint_box(ink: np.ndarray, level: int) -> tuple[int, int, int, int]:
    """(first row, end row, first column, end column) of the pixels at or above `level` (some are:
    every ink pixel is)."""
    faint = ink >= level
    inked = faint.any(axis=0).nonzero()[0]
    x0, x1 = int(inked[0]), int(inked[-1]) + 1
    inked = faint[:, x0:x1].any(axis=1).nonzero()[0]
    return int(inked[0]), int(inked[-1]) + 1, x0, x1


def _pooled_span(first: int, end: int, origin: int, factor: int, n: int) -> tuple[int, int]:
    """The pooled blocks [i0, i1) of a frame starting at `origin` that pixels [first, end) fall in,
    within the frame's n blocks (at least one)."""
    i0 = min(max((first - origin) // factor, 0), n - 1)
    return i0, max(min((end - 1 - origin) // factor + 1, n), i0 + 1)


def _crop_zero_padded(a: np.ndarray, top: int, left: int, height: int, width: int) -> np.ndarray:
    """a[top:top + height, left:left + width], 0 where it is outside a."""
    h, w = a.shape
    if top >= 0 and left >= 0 and top + height <= h and left + width <= w:
        return a[top:top + height, left:left + width]  # read only from here on
    out = np.zeros((height, width), dtype=a.dtype)
    sy0, sx0 = max(top, 0), max(left, 0)
    sy1, sx1 = min(top + height, h), min(left + width, w)
    if sy1 > sy0 and sx1 > sx0:
        out[sy0 - top: sy1 - top, sx0 - left: sx1 - left] = a[sy0:sy1, sx0:sx1]
    return out


def _max_pool(a: np.ndarray, factor: int) -> np.ndarray:
    """Maximum over factor x factor blocks of a square array (side a multiple of factor)."""
    if factor == 1:
        return a
    # Strided maxima (many times faster than a 4-D reshape reduction): whole rows first,
    # which reads the array once in order, then columns of the factor-times smaller result.
    rows = a[0::factor].copy()
    for k in range(1, factor):
        np.maximum(rows, a[k::factor], out=rows)
    out = rows[:, 0::factor].copy()
    for k in range(1, factor):
        np.maximum(out, rows[:, k::factor], out=out)
    return out


def stroke_width(mask: np.ndarray, area: int | None = None) -> float:
    """2 * area / boundary pixels of a boolean ink mask: the width of its strokes (0 if no ink).
    `area`: the mask's count of True pixels, if known."""
    area = int(np.count_nonzero(mask)) if area is None else area
    if area == 0:
        return 0.0
    # Pixels on the array's edge always have a neighbour outside it: only inner ones can be interior.
    inner = mask[1:-1, 1:-1] & mask[:-2, 1:-1]
    for neighbour in (mask[2:, 1:-1], mask[1:-1, :-2], mask[1:-1, 2:]):
        inner &= neighbour
    boundary = area - int(np.count_nonzero(inner))
    return 2.0 * area / boundary


def _thicken(q: np.ndarray, rows: tuple[int, int], cols: tuple[int, int], n: int, width: float,
             target: float) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    """Step 10 on uint8 levels q, the blocks [rows) x [cols) of the n x n pooled frame, whose mask
    S >= 0.5 has stroke width `width`: (q thickened, its rows, its columns), q grown by the radius
    within the frame (the blocks around it have S = 0, as the pads here)."""
    if width == 0.0 or width >= target:
        return q, rows, cols
    radius = int(math.floor((target - width) / 2.0 + 0.5))
    if radius <= 0:
        return q, rows, cols
    grown_rows = max(rows[0] - radius, 0), min(rows[1] + radius, n)
    grown_cols = max(cols[0] - radius, 0), min(cols[1] + radius, n)
    grown = np.zeros((grown_rows[1] - grown_rows[0], grown_cols[1] - grown_cols[0]), dtype=q.dtype)
    grown[rows[0] - grown_rows[0]:rows[1] - grown_rows[0], cols[0] - grown_cols[0]:cols[1] - grown_cols[0]] = q
    return _max_filter(grown, radius), grown_rows, grown_cols


def _max_filter(a: np.ndarray, radius: int) -> np.ndarray:
    """Separable (2r+1)-square max filter, window clipped at the borders (bool or integers)."""
    for axis in (0, 1):
        a = _window_max(a, min(radius, a.shape[axis] - 1), axis)
    return a


def _window_max(a: np.ndarray, radius: int, axis: int) -> np.ndarray:
    """out[i] = max(a[i - r .. i + r]) along `axis`, the window clipped at the ends: a padded
    with r of its type's least value each side, then maxima of runs of 1, 2, 4, ... k
    elements, and the window (2r + 1 elements) as two overlapping runs of k."""
    if radius <= 0:
        return a
    n, width = a.shape[axis], 2 * radius + 1

    def along(array, start, stop):
        return array[start:stop] if axis == 0 else array[:, start:stop]

    shape = list(a.shape)
    shape[axis] = n + 2 * radius
    if a.dtype == bool or a.dtype.kind == "u":  # the least value is 0
        padded = np.zeros(shape, dtype=a.dtype)
    else:
        padded = np.full(shape, np.iinfo(a.dtype).min, dtype=a.dtype)
    along(padded, radius, radius + n)[...] = a
    runs, k = padded, 1
    while 2 * k <= width:
        runs = np.maximum(along(runs, 0, -k), along(runs, k, None))
        k *= 2
    if k == width:
        return along(runs, 0, n)
    return np.maximum(along(runs, 0, n), along(runs, width - k, width - k + n))


def area_weights(n_in: int, n_out: int, start: float, length: float) -> np.ndarray:
    """(n_out, n_in): overlap of source pixel [k, k+1) with output cell i, over the cell width.

    Output cell i covers [start + i*cell, start + (i+1)*cell) with cell = length / n_out.
    """
    cell = length / n_out
    starts = start + np.arange(n_out, dtype=np.float64)[:, None] * cell
    k = np.arange(n_in, dtype=np.float64)[None, :]
    overlap = np.clip(np.minimum(k + 1, starts + cell) - np.maximum(k, starts), 0.0, None)
    return overlap / cell


def _area_weights_yx(n_in: int, start_y: float, start_x: float, length: float) -> tuple[np.ndarray, np.ndarray]:
    """area_weights(n_in, SIDE, start_y, length) and (..., start_x, ...), bit for bit: each
    weight that can be non-zero (source pixels from floor(cell start) to the cell's end) with
    area_weights' float64 operations; the others are 0 there too (a clipped overlap)."""
    cell = length / SIDE
    starts = np.array([start_y, start_x], dtype=np.float64)[:, None] + np.arange(SIDE, dtype=np.float64) * cell
    band = int(math.ceil(cell)) + 2  # source pixels a cell can overlap
    k = np.floor(starts).astype(np.intp)[..., None] + np.arange(band)  # (2, SIDE, band), k >= 0
    source = k.astype(np.float64)
    starts = starts[..., None]
    overlap = np.minimum(source + 1, starts + cell)
    overlap -= np.maximum(source, starts)
    np.maximum(overlap, 0.0, out=overlap)  # clip(overlap, 0, None)
    overlap /= cell
    wide = n_in + band  # room for the band past the last source pixel (cut off below)
    weights = np.zeros((2, SIDE, wide), dtype=np.float64)
    rows = np.arange(2 * SIDE).reshape(2, SIDE, 1) * wide
    weights.reshape(-1)[rows + k] = overlap
    return np.ascontiguousarray(weights[0, :, :n_in]), np.ascontiguousarray(weights[1, :, :n_in])


# ----------------------------------------------------------------------------- entry points

def image_to_bitmap(image: Image.Image) -> np.ndarray:
    """A decoded PIL image -> uint8 (28, 28) ink-high bitmap (the whole algorithm)."""
    return gray_to_bitmap(image_to_gray(image))


def load_image_bitmap(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an image file -> uint8 (28, 28) ink-high bitmap; one-line ImageError naming the file."""
    image = open_image(path, max_pixels=max_pixels)
    try:
        return image_to_bitmap(image)
    except ImageError as exc:
        raise type(exc)(f"{path}: {exc}") from None
    except MemoryError:
        raise ImageError(f"{path}: out of memory while preprocessing") from None


def is_image_path(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMAGE_SUFFIXES)


