"""The fast qd.data.images gives exactly the bitmaps of a direct transcription of its spec.

The speed-ups (a strength table instead of per-pixel floats, pooling uint8 levels, cell
medians selected rather than counted) must not move a single grey level.
"""

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

import images_reference as reference
from images_synth import bitmap_as_paper, off_centre, photo_of_paper
from qd.data.bitmaps import open_bitmaps
from qd.data.images import BlankImageError, gray_to_bitmap, image_to_gray
from qd.data.strokes import draw_strokes_image, parse_ndjson_line


def strokes_images(shared_strokes):
    out = []
    for i, category in enumerate(["cat", "bicycle", "house"]):
        line = next(l for l in (shared_strokes / f"{category}.ndjson").read_bytes().splitlines() if l.strip())
        strokes = parse_ndjson_line(line)[1]
        size, pen = [(256, 2), (1024, 3), (1024, 12)][i]
        out.append(draw_strokes_image(strokes, size=size, line_width=pen, offset=(size * 0.05, size * 0.2),
                                      drawing_side=size * 0.6))
    return out


def cases(shared_bitmaps, shared_strokes):
    rows = open_bitmaps(shared_bitmaps / "star.npy")[:4]
    paper = [bitmap_as_paper(row, size) for row, size in zip(rows, (254, 300, 1024, 127))]
    images = paper + [off_centre(paper[1], canvas=(900, 700), at=(40, 380)), photo_of_paper(paper[2], seed=1),
                      Image.fromarray(255 - np.asarray(paper[0])), Image.fromarray(np.asarray(rows[0]).reshape(28, 28))]
    images += strokes_images(shared_strokes)
    grey_paper = Image.new("L", (333, 517), 180)  # odd sizes: clipped cells on both edges
    ImageDraw.Draw(grey_paper).line([(20, 30), (300, 480), (40, 470)], fill=120, width=5)
    images.append(grey_paper)
    gradient = Image.fromarray(np.tile(np.linspace(90, 250, 640), (200, 1)).astype(np.uint8))
    ImageDraw.Draw(gradient).ellipse((200, 40, 400, 160), outline=30, width=3)
    images.append(gradient)  # shadow as strong as the ink: most cells' medians are not the paper's
    rng = np.random.default_rng(7)
    images.append(Image.fromarray(np.where(rng.random((150, 150)) < 0.6, 0, 255).astype(np.uint8)))  # mostly ink
    images.append(Image.fromarray(np.where(rng.random((3, 700)) < 0.2, 0, 255).astype(np.uint8)))  # a strip
    images.append(Image.new("L", (200, 200), 255))  # blank
    return images


def outcome(fn, gray):
    try:
        return fn(gray)
    except BlankImageError as exc:
        return str(exc)


def test_fast_preprocessing_equals_the_direct_transcription(shared_bitmaps, shared_strokes):
    for i, image in enumerate(cases(shared_bitmaps, shared_strokes)):
        gray = image_to_gray(image)
        fast, spec = outcome(gray_to_bitmap, gray), outcome(reference.gray_to_bitmap, gray)
        if isinstance(spec, str):
            assert fast == spec, i
        else:
            assert isinstance(fast, np.ndarray) and np.array_equal(fast, spec), (i, image.size)


@pytest.mark.parametrize("seed", range(6))
def test_random_scribbles_on_random_paper_are_identical(seed):
    rng = np.random.default_rng(seed)
    w, h = (int(v) for v in rng.integers(20, 700, 2))
    image = Image.new("L", (w, h), int(rng.integers(120, 256)))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 5))):
        points = [tuple(p) for p in (rng.random((5, 2)) * [w, h]).tolist()]
        draw.line(points, fill=int(rng.integers(0, 110)), width=int(rng.integers(1, 1 + max(w, h) // 20)))
    gray = np.clip(np.asarray(image, np.float64) + rng.normal(0, rng.uniform(0, 12), (h, w)), 0, 255).astype(np.uint8)
    fast, spec = outcome(gray_to_bitmap, gray), outcome(reference.gray_to_bitmap, gray)
    assert type(fast) is type(spec) and (np.array_equal(fast, spec) if isinstance(spec, np.ndarray) else fast == spec)


def small_doodles(shared_strokes, count=24):
    """Saved doodles as most people have them: 254 px, a thin grey pen on white, anti-aliased
    (drawn at twice the size and box-averaged), placed anywhere (bench/image_folder.py's kind)."""
    lines = [l for f in sorted(shared_strokes.glob("*.ndjson")) for l in f.read_bytes().splitlines()[:2] if l.strip()]
    rng = np.random.default_rng(29)
    out = []
    for i, line in enumerate(lines[:count]):
        side = 254 * rng.uniform(0.3, 0.9)
        at = tuple(float(v) for v in rng.uniform(0, 254 - side, 2))
        big = draw_strokes_image(parse_ndjson_line(line)[1], size=508, line_width=2 * (2 + i % 3 * 0.5),
                                 drawing_side=2 * side, offset=(2 * at[0], 2 * at[1]), ink=40 * (1 + i % 3))
        out.append(big.reduce(2))
    return out


def test_small_grey_doodles_are_identical(shared_strokes):
    """The fast paths of small clean images (the paper's level counted apart, step 5 skipped
    when no cell can be above the paper, the pooled stroke width reused, S computed rather
    than looked up, banded area weights) give the spec's bitmaps."""
    for i, image in enumerate(small_doodles(shared_strokes)):
        for gray in (np.asarray(image), 255 - np.asarray(image), np.asarray(image)[::-1, 7:].copy()):
            fast, spec = outcome(gray_to_bitmap, gray), outcome(reference.gray_to_bitmap, gray)
            assert isinstance(fast, np.ndarray) and np.array_equal(fast, spec), i


def test_the_helpers_equal_their_plain_forms():
    from qd.data import images

    rng = np.random.default_rng(3)
    for _ in range(200):
        n = int(rng.integers(2, 300))
        length = float(rng.uniform(1, n - 1))
        sy, sx = (float(v) for v in rng.uniform(0, n - length, 2))
        wy, wx = images._area_weights_yx(n, sy, sx, length)
        assert np.array_equal(wy, images.area_weights(n, 28, sy, length)) and wy.flags.c_contiguous
        assert np.array_equal(wx, images.area_weights(n, 28, sx, length)) and wx.flags.c_contiguous
    for shape, radius in (((7, 9), 1), ((40, 33), 4), ((3, 50), 6), ((1, 1), 2), ((60, 2), 3)):
        a = rng.integers(0, 256, shape).astype(np.uint8)
        padded = np.pad(a.astype(np.int32), radius, constant_values=-1)
        plain = np.lib.stride_tricks.sliding_window_view(padded, (2 * radius + 1,) * 2).max(axis=(2, 3))
        assert np.array_equal(images._max_filter(a, radius), plain)
        assert np.array_equal(images._max_filter(a > 128, radius), plain > 128)
        assert np.array_equal(images._max_filter(a.astype(np.int32) - 200, radius), plain - 200)  # pads below 0
    for levels in (np.full((90, 90), 255, np.uint8), rng.integers(0, 256, (70, 80)).astype(np.uint8),
                   np.where(rng.random((64, 100)) < 0.1, 3, 250).astype(np.uint8)):
        assert np.array_equal(images.histogram(levels), np.bincount(levels.ravel(), minlength=256))
    for b, span in ((0, 255), (3, 40), (100, 150), (20, 32)):
        levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
        table = images.stretch_table(b, span)
        for levels_in in (levels.astype(np.float32), levels):  # float32 levels in place; uint8 ones left as they are
            computed = images._stretch(levels_in, *images._stretch_bounds(b, span))
            assert computed.dtype == np.float32 and np.array_equal(computed, table[levels])
        assert np.array_equal(levels, np.arange(256).reshape(16, 16))


@settings(max_examples=150, deadline=None)
@given(height=st.integers(1, 160), width=st.integers(1, 160), paper=st.integers(0, 255),
       share=st.one_of(st.floats(0.0, 1.0), st.floats(0.97, 1.0)), seed=st.integers(0, 2**32 - 1))
def test_histogram_and_cell_counts_equal_plain_counting(height, width, paper, share, seed):
    """Step 2's histogram (the paper's level counted eight pixels at a time, any size, any share
    of paper, at most 7 pixels past the last whole word) and step 5's per-cell counts (clipped last row and column of cells) equal counting
    every pixel."""
    from qd.data import images

    rng = np.random.default_rng(seed)
    levels = np.where(rng.random((height, width)) < share, paper, rng.integers(0, 256, (height, width))).astype(np.uint8)
    assert np.array_equal(images.histogram(levels), np.bincount(levels.ravel(), minlength=256))
    grid = images.CellGrid(levels.shape)
    mask = levels == paper
    c = grid.cell
    plain = [[np.count_nonzero(mask[i * c:(i + 1) * c, j * c:(j + 1) * c]) for j in range(grid.cols)]
             for i in range(grid.rows)]
    assert np.array_equal(grid.counts(mask), np.array(plain))


@settings(max_examples=300, deadline=None)
@example(mass=[1, 1998, 1])  # TRIM * total is 1.0: a prefix and a suffix sum exactly at the limit are not over it
@example(mass=[2, 3996, 2])
@given(mass=st.lists(st.integers(0, 5000), min_size=1, max_size=300).filter(lambda m: m[0] > 0 and m[-1] > 0))
def test_trimmed_bounds_are_the_spec_ones(mass):
    """Step 7's trimmed bounds: x0 the first index whose prefix sum is over TRIM * total, x1 the last
    whose suffix sum is (and x1 = max(x1, x0)), for any counts along a box's side."""
    from qd.data import images

    counts = np.array(mass, dtype=np.int64)
    total = int(counts.sum())
    limit = images.TRIM * total
    x0 = next(x for x in range(len(mass)) if sum(mass[:x + 1]) > limit)
    x1 = max(x for x in range(len(mass)) if sum(mass[x:]) > limit)
    assert images._trimmed_bounds(counts, total) == (x0, max(x1, x0))
