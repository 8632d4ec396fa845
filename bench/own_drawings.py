"""Training on one's own drawings: `qd-data import` + `qd-train` with default options.

A stand-in for a user's own drawings: shared categories' bitmaps drawn again by another
renderer (scaled up to 96..384 px, thresholded at random levels so the line width
varies, softened, placed off-centre on tinted paper, saved as PNGs in L, RGB or RGBA),
a small count per category. Every number is measured on other drawings of the same
categories, drawn the same way, never trained on.

  small  14 categories x 300 PNGs: the previous defaults (batch 256, 10 epochs) and the
         current ones (batch size and epochs fitted to the data), side by side.
  tiny   3 categories x 500, --epochs 2 (a newcomer's first run): batch 256 and the default.
New categories from a few drawings and --init-from: bench/few_shot.py.

    nice -n 19 python bench/own_drawings.py [--parts small,tiny] [--work DIR]

Prints one table per part, the ratios side by side (same machine, same run); name the CPU
when quoting them.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "quickdraw" / "bitmaps"
SMALL = ["airplane", "apple", "banana", "bicycle", "bird", "book", "cat", "clock", "crown", "dog", "eye", "fish",
         "flower", "house"]
TINY = ["cat", "dog", "apple"]
TEST_START = 800  # test drawings come from rows 800.. (train ones from row 0): never the same drawings


def render_foreign(bitmap: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A 28x28 ink-high bitmap drawn the way another tool might: big, a different line width,
    soft edges, dark ink on tinted paper, off-centre, in a random image mode."""
    size = int(rng.choice([96, 128, 192, 256, 384]))
    side = int(size * rng.uniform(0.5, 0.85))
    big = Image.fromarray(bitmap.reshape(28, 28)).resize((side, side), Image.BICUBIC)
    level = int(rng.uniform(50, 190))  # low: thick lines, high: thin ones
    mask = big.point(lambda v: 255 if v >= level else 0).filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5)))
    paper = int(rng.uniform(200, 255))
    ink = int(rng.uniform(0, 70))
    canvas = Image.new("L", (size, size), paper)
    offset = (int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1)))
    canvas.paste(Image.new("L", (side, side), ink), offset, mask)
    mode = rng.choice(["L", "RGB", "RGBA"])
    if mode == "RGB":
        return Image.merge("RGB", [canvas, canvas.point(lambda v: max(0, v - 10)), canvas])
    if mode == "RGBA":
        rgba = canvas.convert("RGBA")
        rgba.putalpha(255)
        return rgba
    return canvas


def write_pngs(root: Path, categories: list[str], start: int, count: int, seed: int) -> Path:
    """root/<category>/<i>.png for rows start..start+count of each shared category."""
    from qd.data.bitmaps import open_bitmaps

    if (root / ".done").exists():
        return root
    rng = np.random.default_rng(seed)
    for name in categories:
        rows = open_bitmaps(SHARED / f"{name}.npy")[start:start + count]
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i, row in enumerate(rows):
            render_foreign(np.asarray(row), rng).save(folder / f"{i:04d}.png")
    (root / ".done").touch()
    return root


def imported(pngs: Path, out: Path) -> Path:
    from qd.data.importer import ImportOptions, import_drawings

    if not (out / ".done").exists():
        report = import_drawings([pngs], out, ImportOptions(workers=2))
        assert report.ok, report.failures[:3]
        (out / ".done").touch()
    return out


def top1(checkpoint: Path, data_dir: Path) -> float:
    """Top-1 of a checkpoint on every drawing of `data_dir` (its own classes, by name)."""
    import torch

    from qd.data.bitmaps import open_bitmaps
    from qd.data.contract import bitmaps_to_input
    from qd.train.checkpoint import load_checkpoint, model_from_checkpoint

    payload = load_checkpoint(checkpoint)
    model = model_from_checkpoint(payload)
    correct = total = 0
    with torch.no_grad():
        for label, name in enumerate(payload["classes"]):
            rows = np.asarray(open_bitmaps(data_dir / f"{name}.npy"))
            logits = model(torch.from_numpy(bitmaps_to_input(rows, payload["preprocessing"])))
            correct += int((logits.argmax(1) == label).sum())
            total += len(rows)
    return correct / total


def run(out: Path, **options) -> tuple[Path, float, dict]:
    from qd.train.checkpoint import load_checkpoint
    from qd.train.cli import TrainConfig
    from qd.train.loop import train

    best = out / "best.pt"
    started = time.perf_counter()
    if not best.exists() or "test" not in load_checkpoint(best) or not load_checkpoint(best)["test"]:
        train(TrainConfig(out=out, device="cpu", quiet=True, **options))
    hparams = load_checkpoint(best)["hparams"]
    return best, time.perf_counter() - started, hparams


def table(title: str, rows: list[tuple[str, float, float, dict]], reference: float) -> None:
    print(f"\n{title}")
    print(f"  {'run':<44} {'top-1':>7} {'vs first':>9} {'batch':>6} {'epochs':>7} {'train s':>8}")
    for name, accuracy, seconds, hp in rows:
        print(f"  {name:<44} {100 * accuracy:6.1f}% {accuracy / reference:8.2f}x {hp['batch_size']:>6} "
              f"{hp['epochs']:>7} {seconds:8.0f}")


def part_small(work: Path) -> None:
    train_dir = imported(write_pngs(work / "small-png-train", SMALL, 0, 300, seed=1), work / "small-train")
    test_dir = imported(write_pngs(work / "small-png-test", SMALL, TEST_START, 100, seed=2), work / "small-test")
    rows = []
    for name, options in (("previous defaults (batch 256, 10 epochs)", dict(batch_size=256, epochs=10)),
                          ("defaults", {})):
        best, seconds, hp = run(work / f"small-{'old' if options else 'new'}", data_dir=train_dir, **options)
        rows.append((name, top1(best, test_dir), seconds, hp))
    table("14 categories x 300 PNGs, test on 100 other PNGs each", rows, rows[0][1])


def part_tiny(work: Path) -> None:
    from qd.data.fetch import FetchOptions, fetch_categories
    from qd.data.sources import FolderSource

    data = work / "tiny-data"
    if not (data / ".done").exists():
        fetch_categories(FolderSource(SHARED), TINY, data, FetchOptions(max_rows=500))
        (data / ".done").touch()
    rows = []
    for name, options in (("--epochs 2 --batch-size 256 (previous default)", dict(batch_size=256)),
                          ("--epochs 2", {})):
        best, seconds, hp = run(work / f"tiny-{'old' if options else 'new'}", data_dir=data, epochs=2, **options)
        from qd.train.checkpoint import load_checkpoint
        rows.append((name, load_checkpoint(best)["test"]["top1"], seconds, hp))
    table("3 categories x 500 drawings, 2 epochs, test split top-1", rows, rows[0][1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="small,tiny")
    parser.add_argument("--work", type=Path, default=REPO / "artifacts" / "bench-own-drawings")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    print(f"CPU: {platform.processor() or platform.machine()}, torch threads {args.threads}; python {sys.version.split()[0]}")
    for part in args.parts.split(","):
        {"small": part_small, "tiny": part_tiny}[part](args.work)


if __name__ == "__main__":
    main()
