"""Byte identity of qd.data.images against an earlier revision of it, on many images.

The preprocessing may get faster, never different: this runs the module as it is and the
module as it was at `--before` (a git revision; its data/images.py is loaded from git into the
qd.data package, beside the current one) over the same images, and counts the bitmaps that
differ (and the refusals whose messages differ). Exit status 1 if any does.

The images: every PNG under each `--folder` (through load_image_bitmap, decoding included),
then a generated corpus in memory (through image_to_bitmap): the shared `.ndjson` drawings
as small doodles (254 px, thin grey pens, anti-aliased, as bench/image_folder.py draws them)
and at other sizes and pens; the shared bitmaps as paper; "photos" (grey paper, lighting
gradients, noise, JPEG, colour); grey paper; white on black; transparent PNGs (dark and
light ink); RGB and palette colour; random scribbles on random paper at random sizes;
sparse noise; blanks.

    python bench/images_identity.py [--before REV] [--folder DIR ...] [--count N]
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from image_folder import SHARED, shared_drawings, thin_grey_strokes  # noqa: E402
from images_synth import bitmap_as_paper, off_centre, photo_of_paper  # noqa: E402
from qd.data import images as now  # noqa: E402
from qd.data.bitmaps import open_bitmaps  # noqa: E402
from qd.data.strokes import draw_strokes_image  # noqa: E402

# The revision compared with by default: the module before its latest speed-up. (1b8b057, the
# last commit before issue 29's changes, no longer imports against today's package; every
# later revision was checked identical to the one before it.)
BEFORE = "acc058f"


def module_at(revision: str):
    """data/images.py as it was at `revision`, imported as qd.data._images_at_<revision>."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{revision}:data/images.py"], check=True,
                            capture_output=True, text=True).stdout
    name = f"qd.data._images_at_{revision.replace('-', '_').replace('~', '_').replace('^', '_')}"
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "qd.data"
    sys.modules[name] = module
    exec(compile(source, f"{revision}:data/images.py", "exec"), module.__dict__)
    return module


def generated(count: int, seed: int = 0):
    """(label, PIL image): about `count` images of every kind the module docstring names."""
    rng = np.random.default_rng(seed)
    drawings = shared_drawings()
    rows = np.concatenate([np.asarray(open_bitmaps(f)[:40]) for f in sorted((SHARED / "bitmaps").glob("*.npy"))])
    kinds = ("doodle", "strokes", "paper", "photo", "grey paper", "white on black", "alpha dark", "alpha light",
             "colour", "palette", "scribble", "noise", "blank")
    for i in range(count):
        kind = kinds[i % len(kinds)] if i % 3 else "doodle"  # a third are small doodles
        strokes = drawings[int(rng.integers(len(drawings)))]
        row = rows[int(rng.integers(len(rows)))]
        if kind == "doodle":
            yield kind, thin_grey_strokes(strokes, i)
        elif kind == "strokes":
            size = int(rng.integers(40, 1400))
            pen = float(rng.uniform(1, max(2, size / 40)))
            side = size * float(rng.uniform(0.2, 0.9))
            at = tuple(float(v) for v in rng.uniform(0, size - side, 2))
            yield kind, draw_strokes_image(strokes, size=size, line_width=pen, drawing_side=side, offset=at,
                                           ink=int(rng.integers(0, 150)), paper=int(rng.integers(170, 256)))
        elif kind == "paper":
            paper = bitmap_as_paper(row, int(rng.integers(28, 1100)))
            yield kind, (off_centre(paper, canvas=(900, 700), at=(40, 300)) if i % 2 else paper)
        elif kind == "photo":
            yield kind, photo_of_paper(bitmap_as_paper(row, int(rng.integers(100, 900))), seed=i,
                                       quality=int(rng.integers(40, 95)))
        elif kind == "grey paper":
            w, h = (int(v) for v in rng.integers(60, 900, 2))
            image = Image.new("L", (w, h), int(rng.integers(120, 230)))
            ImageDraw.Draw(image).line([tuple(p) for p in (rng.random((6, 2)) * [w, h]).tolist()],
                                       fill=int(rng.integers(0, 90)), width=int(rng.integers(1, 12)))
            yield kind, image
        elif kind == "white on black":
            yield kind, Image.fromarray(255 - np.asarray(thin_grey_strokes(strokes, i)))
        elif kind in ("alpha dark", "alpha light"):
            coverage = 255 - np.asarray(thin_grey_strokes(strokes, i, size=int(rng.integers(64, 600))))
            ink = 20 if kind == "alpha dark" else 240
            rgba = np.zeros(coverage.shape + (4,), np.uint8)
            rgba[..., :3] = ink
            rgba[..., 3] = coverage
            yield kind, Image.fromarray(rgba, "RGBA")
        elif kind == "colour":
            grey = np.asarray(thin_grey_strokes(strokes, i, size=int(rng.integers(100, 700)))).astype(np.int32)
            tint = rng.integers(-40, 40, 3)
            yield kind, Image.fromarray(np.clip(grey[..., None] + tint, 0, 255).astype(np.uint8), "RGB")
        elif kind == "palette":
            yield kind, thin_grey_strokes(strokes, i).convert("RGB").convert("P", palette=Image.ADAPTIVE, colors=16)
        elif kind == "scribble":
            w, h = (int(v) for v in rng.integers(20, 700, 2))
            image = Image.new("L", (w, h), int(rng.integers(120, 256)))
            draw = ImageDraw.Draw(image)
            for _ in range(int(rng.integers(1, 5))):
                draw.line([tuple(p) for p in (rng.random((5, 2)) * [w, h]).tolist()],
                          fill=int(rng.integers(0, 110)), width=int(rng.integers(1, 1 + max(w, h) // 20)))
            noisy = np.asarray(image, np.float64) + rng.normal(0, rng.uniform(0, 12), (h, w))
            yield kind, Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
        elif kind == "noise":
            w, h = (int(v) for v in rng.integers(3, 500, 2))
            yield kind, Image.fromarray(np.where(rng.random((h, w)) < rng.uniform(0, 0.7), 0, 255).astype(np.uint8))
        else:
            w, h = (int(v) for v in rng.integers(1, 600, 2))
            yield kind, Image.new("L", (w, h), int(rng.integers(0, 256)))


def outcome(fn, arg):
    try:
        return fn(arg)
    except now.ImageError as exc:  # the same class in both modules (qd.command is shared)
        return f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - a refusal of another class is a difference too
        return f"{type(exc).__name__}: {exc}"


def same(a, b) -> bool:
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return a.dtype == b.dtype and np.array_equal(a, b)
    return type(a) is type(b) and a == b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default=BEFORE, help=f"git revision of the reference (default {BEFORE})")
    ap.add_argument("--folder", type=Path, action="append", default=[], help="PNG folders to compare, file by file")
    ap.add_argument("--count", type=int, default=2000, help="generated images")
    args = ap.parse_args()
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")  # as the decode workers run
    before = module_at(args.before)
    print(f"qd.data.images now against {args.before}:")
    failed = 0
    for folder in args.folder:
        paths = sorted(folder.rglob("*.png"))
        t_now = t_before = 0.0
        differ = []
        for path in paths:
            started = time.perf_counter()
            a = outcome(now.load_image_bitmap, path)
            t_now += time.perf_counter() - started
            started = time.perf_counter()
            b = outcome(before.load_image_bitmap, path)
            t_before += time.perf_counter() - started
            if not same(a, b):
                differ.append(path.name)
        failed += len(differ)
        print(f"  {folder}: {len(paths):,} files, {len(differ)} differ {differ[:5]} "
              f"(ms per file: now {t_now / max(1, len(paths)) * 1e3:.2f}, before {t_before / max(1, len(paths)) * 1e3:.2f})")
    kinds: dict[str, list[int]] = {}
    for i, (kind, image) in enumerate(generated(args.count)):
        image.load()
        a, b = outcome(now.image_to_bitmap, image), outcome(before.image_to_bitmap, image)
        counts = kinds.setdefault(kind, [0, 0, 0])
        counts[0] += 1
        counts[1] += not same(a, b)
        counts[2] += not isinstance(b, np.ndarray)
        if not same(a, b) and counts[1] <= 3:
            print(f"  differs: generated #{i} ({kind}, {image.mode} {image.size})")
    for kind, (n, differ, refused) in kinds.items():
        print(f"  generated {kind:15s} {n:5,} images, {differ} differ ({refused} refused by both)")
        failed += differ
    total = sum(n for n, _, _ in kinds.values())
    print(f"{'FAIL' if failed else 'OK'}: {failed} of {total:,} generated images and the folders' files differ")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
