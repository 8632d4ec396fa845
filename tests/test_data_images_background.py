"""Step 5's background map, as qd.data.images computes it (medians counted against the paper's
level, selected only where they can be a window's minimum, the image left as it is when the map
is 0), equals the spec's: every cell's median, then the minimum over each cell's window."""

import numpy as np
import pytest
from PIL import Image, ImageDraw

import images_reference as reference
from qd.data.images import LOCAL_RADIUS, BlankImageError, CellGrid, gray_to_bitmap, percentile


def spec_background(levels: np.ndarray) -> np.ndarray:
    grid = CellGrid(levels.shape)
    c, r = grid.cell, LOCAL_RADIUS
    medians = np.array([[percentile(np.bincount(levels[i * c:(i + 1) * c, j * c:(j + 1) * c].ravel(), minlength=256), 0.5)
                         for j in range(grid.cols)] for i in range(grid.rows)])
    return np.array([[medians[max(0, i - r):i + r + 1, max(0, j - r):j + r + 1].min() for j in range(grid.cols)]
                     for i in range(grid.rows)])


def cells_around(rng, shape: tuple[int, int], likely: int) -> np.ndarray:
    """Each cell mostly at `likely`, or mostly below it, or mostly above it, or anything, often
    mixed with `likely` near the half that decides a median."""
    grid = CellGrid(shape)
    levels = np.empty(shape, dtype=np.uint8)
    share_above = rng.random()
    c = grid.cell
    for i in range(grid.rows):
        for j in range(grid.cols):
            cell = levels[i * c:(i + 1) * c, j * c:(j + 1) * c]
            kind = rng.choice(4, p=[0.4, 0.2, 0.4 * share_above, 0.4 * (1 - share_above)])
            lo, hi = [(likely, likely), (0, 255), (min(likely + 1, 255), 255), (0, max(likely - 1, 0))][kind]
            cell[...] = rng.integers(lo, hi + 1, cell.shape)
            if rng.random() < 0.5:
                cell[rng.random(cell.shape) < rng.random()] = likely
    return levels


@pytest.mark.parametrize("seed", range(4))
def test_the_background_map_is_the_spec_one(seed):
    rng = np.random.default_rng(seed)
    for _ in range(40):
        shape = tuple(int(v) for v in rng.integers(1, 300, 2))
        likely = int(rng.choice([0, 255, int(rng.integers(0, 256))]))
        levels = cells_around(rng, shape, likely)
        assert np.array_equal(CellGrid(shape).background(levels, likely), spec_background(levels)), (shape, likely)


def shadowed_paper(rng, clean: bool) -> np.ndarray:
    """Strokes on white (clean) or grey noisy paper, with cell-sized shadows here and there."""
    w, h = (int(v) for v in rng.integers(128, 420, 2))
    paper = np.full((h, w), 255.0 if clean else float(rng.integers(120, 256)))
    cell = CellGrid((h, w)).cell
    shadows = rng.integers(-150, 40, (h // cell + 1, w // cell + 1)) * (rng.random((h // cell + 1, w // cell + 1)) < 0.3)
    paper += np.kron(shadows, np.ones((cell, cell)))[:h, :w]
    image = Image.fromarray(np.clip(paper, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 6))):
        points = [tuple(p) for p in (rng.random((5, 2)) * [w, h]).tolist()]
        draw.line(points, fill=int(rng.integers(0, 100)), width=int(rng.integers(1, max(w, h) // 4)))
    gray = np.asarray(image, dtype=np.float64)
    if not clean:
        gray = gray + rng.normal(0, rng.uniform(1, 15), gray.shape)
    return np.clip(gray, 0, 255).astype(np.uint8)


def outcome(fn, gray):
    try:
        return fn(gray)
    except BlankImageError as exc:
        return str(exc)


@pytest.mark.parametrize("seed", range(12))
def test_shadows_on_clean_and_on_noisy_paper_give_the_spec_bitmap(seed):
    rng = np.random.default_rng(100 + seed)
    gray = shadowed_paper(rng, clean=seed % 2 == 0)
    for image in (gray, 255 - gray):
        fast, spec = outcome(gray_to_bitmap, image), outcome(reference.gray_to_bitmap, image)
        assert type(fast) is type(spec) and (np.array_equal(fast, spec) if isinstance(spec, np.ndarray) else fast == spec)
