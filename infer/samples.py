"""Sample drawings for the demo: real Quick, Draw! drawings saved the way people save theirs.

    python -m qd.infer.samples [--shared DIR] [--out artifacts/demo/drawings]

Writes black-on-white PNGs and JPEGs of several sizes and pen widths (some off-centre,
one white-on-black, one "photo" of grey paper under uneven light), a few dataset
bitmaps as upscaled PNGs, and a small .npy, all named <category>-<how>.<ext> so the
true label is visible next to qd-infer's answer. Uses only qd.data (no model).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from PIL import Image

from qd.data.bitmaps import open_bitmaps
from qd.data.strokes import draw_strokes_image, parse_ndjson_line
from qd.files import atomic_target

DEFAULT_SHARED = Path(os.environ.get("QD_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "quickdraw"
STROKE_CATEGORIES = ["apple", "bicycle", "cat", "fish", "house", "star", "tree", "clock"]
BITMAP_CATEGORIES = ["airplane", "circle", "crown", "skull"]
STYLES = [  # (suffix, canvas px, pen px, where)
    ("pen3-1024", 1024, 3, "centre"),
    ("pen12-512", 512, 12, "corner"),
    ("pen2-300", 300, 2, "centre"),
]


def write_samples(shared: Path, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for n, category in enumerate(STROKE_CATEGORIES):
        lines = [l for l in (shared / "strokes" / f"{category}.ndjson").read_bytes().splitlines() if l.strip()]
        strokes = parse_ndjson_line(lines[-1])[1]  # the last of 25: not among the first training rows
        suffix, size, pen, where = STYLES[n % len(STYLES)]
        offset = None if where == "centre" else (size * 0.05, size * 0.35)
        side = size * (0.8 if where == "centre" else 0.55)
        image = draw_strokes_image(strokes, size=size, line_width=pen, drawing_side=side, offset=offset)
        written.append(_save(image, out / f"{category}-{suffix}.png"))
        if category == "cat":
            inverted = Image.fromarray(255 - np.asarray(image))
            written.append(_save(inverted, out / "cat-white-on-black.png"))
        if category == "house":
            written.append(_save(_photo(draw_strokes_image(strokes, size=900, line_width=5)), out / "house-photo.jpg",
                                 quality=70))
    rows = []
    for category in BITMAP_CATEGORIES:
        row = np.asarray(open_bitmaps(shared / "bitmaps" / f"{category}.npy")[-1]).reshape(28, 28)
        rows.append(row)
        paper = Image.fromarray(255 - row).resize((280, 280), Image.BILINEAR)
        written.append(_save(paper, out / f"{category}-bitmap-280.png"))
    path = out / "bitmaps.npy"  # rows: airplane, circle, crown, skull
    np.save(path, np.stack(rows).reshape(-1, 784))
    written.append(path)
    return written


def _photo(ink_on_white: Image.Image, seed: int = 0) -> Image.Image:
    """Grey paper, a lighting gradient, pencil-grey ink and sensor noise, in colour."""
    rng = np.random.default_rng(seed)
    a = np.asarray(ink_on_white, dtype=np.float64) / 255.0
    h, w = a.shape
    yy, xx = np.mgrid[0:h, 0:w]
    paper = 175 + 45 * (xx / w) - 25 * (yy / h)
    grey = paper * a + (paper - 70) * (1 - a) + rng.normal(0, 4, a.shape)
    rgb = np.stack([grey + 8, grey + 2, grey - 12], axis=-1)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")


def _save(image: Image.Image, path: Path, **options) -> Path:
    with atomic_target(path) as tmp:
        image.save(tmp, format=Image.registered_extensions()[path.suffix.lower()], **options)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description="Write demo drawings for qd-infer.")
    ap.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="the shared quickdraw folder")
    ap.add_argument("--out", type=Path, default=Path("artifacts/demo/drawings"))
    args = ap.parse_args()
    written = write_samples(args.shared, args.out)
    print(f"wrote {len(written)} sample inputs to {args.out}")


if __name__ == "__main__":
    main()
