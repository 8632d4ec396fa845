"""A folder of test PNGs: the shared Quick, Draw! bitmaps rendered grey-on-white at several sizes.

Used by bench/infer_throughput.py (never committed: the folder lands under artifacts/).
`make_stroke_folder` makes the other kind: small doodles as people save them, the shared
`.ndjson` drawings drawn with a thin grey pen on white at 254 px (anti-aliased).

    python bench/image_folder.py OUT_DIR [--count 2000] [--sizes 254,1024] [--strokes]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("QD_SHARED", REPO.parent / "shared")) / "quickdraw"
INK_GREY = 60  # grey ink on white paper, like a pencil scan


def shared_rows(n: int) -> np.ndarray:
    """n real drawings (N, 784) uint8: every shared category, cycled."""
    from qd.data.bitmaps import open_bitmaps

    files = sorted((SHARED / "bitmaps").glob("*.npy"))
    if not files:
        raise SystemExit(f"no shared bitmaps in {SHARED / 'bitmaps'} (set QD_SHARED)")
    allrows = np.concatenate([np.asarray(open_bitmaps(f)) for f in files])
    return np.tile(allrows, (-(-n // len(allrows)), 1))[:n]


def drawings_file(path: Path, n: int) -> Path:
    """`path`, a .npy of shared_rows(n), written once and reused by later runs."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, shared_rows(n))
    return path


def grey_on_white(bitmap: np.ndarray, size: int) -> Image.Image:
    """An ink-high 28x28 bitmap as a size x size grey-on-white picture."""
    ink = bitmap.reshape(28, 28).astype(np.float32) / 255.0
    paper = np.round(255.0 - ink * (255.0 - INK_GREY)).astype(np.uint8)
    return Image.fromarray(paper).resize((size, size), Image.BILINEAR)


def make_folder(folder: Path, count: int, sizes=(254, 1024)) -> Path:
    """count PNGs, sizes cycled; reused when a complete folder of the same recipe is there."""
    stamp = folder / ".complete"
    recipe = f"{count} {','.join(map(str, sizes))} {INK_GREY}\n"
    if stamp.exists() and stamp.read_text() == recipe:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rows = shared_rows(count)
    for i in range(count):
        size = sizes[i % len(sizes)]
        grey_on_white(rows[i], size).save(folder / f"{i:05d}-{size}.png", optimize=False)
    stamp.write_text(recipe)
    return folder


STROKE_SIZE = 254
STROKE_PENS = (2.0, 2.5, 3.0)  # px at 254 px: thin pens
STROKE_INKS = (40, 80, 120)  # grey ink levels on white (255)


def shared_drawings() -> list:
    """Every drawing of the shared `.ndjson` files (simplified strokes), categories in order."""
    from qd.data.strokes import parse_ndjson_line

    files = sorted((SHARED / "strokes").glob("*.ndjson"))
    drawings = [parse_ndjson_line(line)[1] for f in files for line in f.read_bytes().splitlines() if line.strip()]
    if not drawings:
        raise SystemExit(f"no shared strokes in {SHARED / 'strokes'} (set QD_SHARED)")
    return drawings


def thin_grey_strokes(strokes, i: int, size: int = STROKE_SIZE) -> Image.Image:
    """Drawing i of a corpus as a small saved doodle: a thin grey pen on white, anti-aliased
    (drawn at twice the size and box-averaged), at 60-85% of the frame, somewhat off-centre."""
    from qd.data.strokes import draw_strokes_image

    rng = np.random.default_rng(i)
    side = size * rng.uniform(0.6, 0.85)
    offset = tuple(float(v) for v in rng.uniform(0.02, 0.98 - side / size, 2) * size)
    pen, ink = STROKE_PENS[i % len(STROKE_PENS)], STROKE_INKS[(i // len(STROKE_PENS)) % len(STROKE_INKS)]
    big = draw_strokes_image(strokes, size=2 * size, line_width=2 * pen, drawing_side=2 * side,
                             offset=(2 * offset[0], 2 * offset[1]), ink=ink, paper=255)
    return big.reduce(2)


def make_stroke_folder(folder: Path, count: int) -> Path:
    """count 254 px PNGs of thin grey strokes on white (8-bit grey), the shared drawings cycled
    (pen, ink and placement vary); reused like make_folder's."""
    stamp = folder / ".complete"
    recipe = f"{count} strokes {STROKE_SIZE} {STROKE_PENS} {STROKE_INKS}\n"
    if stamp.exists() and stamp.read_text() == recipe:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    drawings = shared_drawings()
    for i in range(count):
        thin_grey_strokes(drawings[i % len(drawings)], i).save(folder / f"{i:05d}.png", optimize=False)
    stamp.write_text(recipe)
    return folder


def make_class_folders(folder: Path, count: int, sizes=(254, 1024)) -> Path:
    """At least count PNGs as folder/<category>/*.png (the layout qd-eval --data and qd-data
    import read), as many per shared category, sizes cycled; reused like make_folder's."""
    from qd.data.bitmaps import open_bitmaps

    files = sorted((SHARED / "bitmaps").glob("*.npy"))
    if not files:
        raise SystemExit(f"no shared bitmaps in {SHARED / 'bitmaps'} (set QD_SHARED)")
    per_category = -(-count // len(files))
    stamp = folder / ".complete"
    recipe = f"{per_category} per category {','.join(map(str, sizes))} {INK_GREY}\n"
    if stamp.exists() and stamp.read_text() == recipe:
        return folder
    for file in files:
        (folder / file.stem).mkdir(parents=True, exist_ok=True)
        for i, row in enumerate(np.asarray(open_bitmaps(file)[:per_category])):
            size = sizes[i % len(sizes)]
            grey_on_white(row, size).save(folder / file.stem / f"{i:05d}-{size}.png", optimize=False)
    stamp.write_text(recipe)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--sizes", default="254,1024")
    ap.add_argument("--strokes", action="store_true", help="254 px thin grey strokes from the shared .ndjson files")
    args = ap.parse_args()
    if args.strokes:
        folder = make_stroke_folder(args.out, args.count)
    else:
        folder = make_folder(args.out, args.count, tuple(int(s) for s in args.sizes.split(",")))
    print(f"{folder}: {args.count:,} PNGs")


if __name__ == "__main__":
    main()
