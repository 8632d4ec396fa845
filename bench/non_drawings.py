"""Does the model say "unknown" for what is no drawing, and for categories it never saw?

    python bench/non_drawings.py [--work artifacts/bench/non-drawings] [--per-kind 70]
                                 [--negatives 2,5,10] [--epochs 4] [--max-per-category 500]
                                 [--kept 0.93,0.95]

The 27 shared categories are split three ways (bench/open_set.py's category splits):
  - known (10): those outside both of its held-out splits with at least 2,000 drawings;
  - tune (7, open_set's tune split): held out; the only categories any choice below was made on
    (the weight of a combined score), and the pool of real negatives with the 3 small categories;
  - never-seen (7, open_set's test split): held out of everything, never tuned on, never negatives.
Models (qd-train's recipe, seed 0, `--max-per-category` drawings of each known category,
`--epochs` epochs) are trained once and cached under --work:
  - plain: outlier exposure off (--outlier-exposure 0);
  - default: qd-train's defaults;
  - negatives-N: the defaults plus `--negatives` with N categories of the pool (seeded pick).
The threshold keeps qd-export's default share of the known validation drawings (DEFAULT_KEPT); the
non-drawings table is printed once for each share of `--kept` (a comma-separated list).

Non-drawings come from a generator of their own (below; different code and parameters from
qd.train.outliers): 254 px PNGs, grey ink on white, read back through qd.data.images like a
user's files. Images it refuses as blank count as flagged ("unknown or refused").
Never-seen drawings: Google's bitmaps (up to 500 a category) and their stroke drawings drawn as
a person's PNGs (bench/open_set.py). Known drawings: the test split and the known categories'
stroke drawings drawn the same way.

Printed, side by side: non-drawings flagged by kind; the rules compared (max logit, energy,
calibrated max probability, feature-space scores and their combinations with max logit);
the share kept; how never-seen categories fare with the number of negative categories; and, for
the runs with negatives, the threshold qd-export fits (the largest keeping `kept` of the known
validation drawings) against the one within the same bound that maximises validation negatives
flagged minus known drawings flagged.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from open_set import (SHARED, Mahalanobis, Outputs, category_split, evenly_spaced_bitmaps, network_outputs,
                      png_renders)
from qd.data.bitmaps import BitmapDataset, SplitSpec, open_bitmaps
from qd.data.contract import DEFAULT_KEPT, fit_threshold
from qd.data.images import BlankImageError, load_image_bitmap
from qd.data.negatives import heldout_negatives
from qd.evaluate.metrics import auroc
from qd.export.checkpoint_source import fit_temperature
from qd.infer.model import SCORES, softmax
from qd.machine import cpu
from qd.train.checkpoint import load_checkpoint, model_from_checkpoint
from qd.train.cli import TrainConfig
from qd.train.loop import train

REPO = Path(__file__).resolve().parents[1]
KNOWN_MIN_DRAWINGS = 2000
NEVER_SEEN_PER_CATEGORY = 200     # Google bitmaps of each held-out category, evenly spaced
TUNE_PER_CATEGORY = 100
NEGATIVES_PER_CATEGORY = 1000
KEPT_SWEEP = (0.90, 0.93, 0.95, 0.97, 0.99)
SEED = 0

# ----------------------------------------------------------------------------- the second generator
# 254 px white paper, grey ink (40-150), pens 2-10 px, drawn with Pillow; nothing here is shared
# with qd.train.outliers.

CANVAS = 254
NON_DRAWING_KINDS = ("scribbles", "words", "dots", "hatching", "lines", "noise")
WORDS = ("hello", "Anna", "test", "cat", "Max", "2024", "qwerty", "Lukas", "hi!", "signature", "OK",
         "Sophie", "asdf", "draw", "yes", "NO", "12:30", "maria", "Tom & Jerry", "abc", "Zoë", "xyz",
         "fish", "dog", "banana", "Happy birthday", "ok cool", "PARIS", "john smith", "#1")
FONT_FOLDERS = (Path("/usr/share/fonts"), Path("/usr/local/share/fonts"), Path("/Library/Fonts"),
                Path("C:/Windows/Fonts"))


def system_fonts() -> list[Path]:
    """The machine's TrueType fonts (not the font Pillow bundles, which training uses)."""
    found = sorted(p for folder in FONT_FOLDERS if folder.is_dir() for p in folder.rglob("*.ttf"))
    return found


def _ink(rng) -> int:
    return int(rng.integers(40, 151))


def _pen(rng) -> int:
    return int(rng.integers(2, 11))


def draw_scribble(draw: ImageDraw.ImageDraw, rng) -> None:
    style = rng.integers(3)
    if style == 0:    # smooth curve through random control points (quadratic Bezier pieces)
        ctrl = rng.uniform(20, CANVAS - 20, (int(rng.integers(3, 10)), 2))
        pts = []
        for a, b, c in zip(ctrl[:-2], ctrl[1:-1], ctrl[2:]):
            p0, p2 = (a + b) / 2, (b + c) / 2
            for t in np.linspace(0, 1, 12):
                pts.append(tuple((1 - t) ** 2 * p0 + 2 * (1 - t) * t * b + t ** 2 * p2))
    elif style == 1:  # a tangle: momentum walk bouncing inside a box
        box = rng.uniform(60, CANVAS - 10)
        p, v = np.full(2, CANVAS / 2), rng.normal(0, 4, 2)
        pts = []
        for _ in range(int(rng.integers(150, 400))):
            v = 0.85 * v + rng.normal(0, 1.5, 2)
            p = p + v
            for i in range(2):
                if abs(p[i] - CANVAS / 2) > box / 2:
                    v[i] = -v[i]
                    p[i] = np.clip(p[i], CANVAS / 2 - box / 2, CANVAS / 2 + box / 2)
            pts.append(tuple(p))
    else:             # scribbling out: back and forth with a drift
        n = int(rng.integers(6, 30))
        angle = rng.uniform(0, math.pi)
        span = rng.uniform(30, 120)
        along, across = np.array([math.cos(angle), math.sin(angle)]), np.array([-math.sin(angle), math.cos(angle)])
        pts = [tuple(CANVAS / 2 + ((-1) ** i) * span * across + (i / n - 0.5) * rng.uniform(40, 200) * along
                     + rng.normal(0, 4, 2)) for i in range(n)]
    draw.line(pts, fill=_ink(rng), width=_pen(rng), joint="curve")


def draw_words(draw: ImageDraw.ImageDraw, rng, fonts: list[Path]) -> None:
    text = WORDS[int(rng.integers(len(WORDS)))]
    if rng.random() < 0.3:
        text += " " + WORDS[int(rng.integers(len(WORDS)))]
    path, size = fonts[int(rng.integers(len(fonts)))], int(rng.integers(18, 65))
    while True:  # the whole text on the paper
        font = ImageFont.truetype(str(path), size)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        if right - left <= CANVAS - 12 or size <= 8:
            break
        size -= 4
    x = rng.uniform(5, max(6, CANVAS - (right - left) - 5))
    y = rng.uniform(5, max(6, CANVAS - (bottom - top) - 5))
    draw.text((x - left, y - top), text, font=font, fill=_ink(rng))


def draw_dots(draw: ImageDraw.ImageDraw, rng) -> None:
    n = int(rng.integers(1, 41))
    x0, y0 = rng.uniform(10, 120, 2)
    x1, y1 = rng.uniform(134, 244, 2)
    grid = rng.random() < 0.25
    for i in range(n):
        if grid:
            k = int(math.ceil(math.sqrt(n)))
            x, y = x0 + (i % k) * (x1 - x0) / k, y0 + (i // k) * (y1 - y0) / k
        else:
            x, y = rng.uniform(x0, x1), rng.uniform(y0, y1)
        r = rng.uniform(1, 12)
        draw.ellipse((x - r, y - r * rng.uniform(0.7, 1.3), x + r, y + r), fill=_ink(rng))


def draw_hatching(image: Image.Image, rng) -> None:
    layer = Image.new("L", image.size, 0)
    d = ImageDraw.Draw(layer)
    width = _pen(rng)
    spacing = width * rng.uniform(2, 5) + 3
    for angle in [rng.uniform(0, math.pi)] + ([rng.uniform(0, math.pi)] if rng.random() < 0.3 else []):
        c, s = math.cos(angle), math.sin(angle)
        for k in np.arange(-CANVAS, CANVAS, spacing):
            mx, my = CANVAS / 2 - s * k, CANVAS / 2 + c * k
            d.line((mx - c * 400, my - s * 400, mx + c * 400, my + s * 400), fill=255, width=width)
    region = Image.new("L", image.size, 0)
    x0, y0 = rng.uniform(10, 110, 2)
    x1, y1 = rng.uniform(144, 244, 2)
    (ImageDraw.Draw(region).ellipse if rng.random() < 0.4 else ImageDraw.Draw(region).rectangle)((x0, y0, x1, y1), fill=255)
    mask = Image.fromarray((np.asarray(layer) // 255 * np.asarray(region) // 255 * 255).astype(np.uint8))
    image.paste(_ink(rng), mask=mask)


def draw_line(draw: ImageDraw.ImageDraw, rng) -> None:
    while True:
        a, b = rng.uniform(8, CANVAS - 8, 2), rng.uniform(8, CANVAS - 8, 2)
        if np.hypot(*(a - b)) >= 40:
            break
    draw.line((*a, *b), fill=_ink(rng), width=_pen(rng))


def paper_noise(rng) -> Image.Image:
    paper = rng.uniform(200, 250)
    grey = paper + rng.normal(0, rng.uniform(4, 25), (CANVAS, CANVAS))
    for _ in range(int(rng.integers(0, 300))):  # dust
        y, x = rng.integers(0, CANVAS, 2)
        grey[y:y + int(rng.integers(1, 3)), x:x + int(rng.integers(1, 3))] -= rng.uniform(30, 120)
    image = Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8))
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.5)))


def make_non_drawings(folder: Path, per_kind: int, seed: int = 1) -> dict[str, list[Path]]:
    """<folder>/<kind>/NNN.png for every kind; reused if already there."""
    rng = np.random.default_rng(seed)
    fonts = system_fonts()
    if not fonts:
        raise SystemExit("no TrueType fonts on this machine for the words (the training fonts are Pillow's own)")
    paths: dict[str, list[Path]] = {}
    for kind in NON_DRAWING_KINDS:
        (folder / kind).mkdir(parents=True, exist_ok=True)
        paths[kind] = []
        for i in range(per_kind):
            path = folder / kind / f"{i:03d}.png"
            paths[kind].append(path)
            if kind == "noise":
                image = paper_noise(rng)
            else:
                image = Image.new("L", (CANVAS, CANVAS), 255)
                draw = ImageDraw.Draw(image)
                if kind == "scribbles":
                    draw_scribble(draw, rng)
                elif kind == "words":
                    draw_words(draw, rng, fonts)
                elif kind == "dots":
                    draw_dots(draw, rng)
                elif kind == "hatching":
                    draw_hatching(image, rng)
                else:
                    draw_line(draw, rng)
            if not path.exists():
                image.save(path)
    return paths


def read_as_user_files(paths: list[Path]) -> tuple[np.ndarray, int]:
    """(bitmaps of the images read, number refused as blank)."""
    bitmaps, refused = [], 0
    for path in paths:
        try:
            bitmaps.append(load_image_bitmap(path).reshape(784))
        except BlankImageError:
            refused += 1
    return np.stack(bitmaps) if bitmaps else np.zeros((0, 784), np.uint8), refused


# ----------------------------------------------------------------------------- categories and runs


def partition() -> dict[str, list[str]]:
    categories = sorted(p.stem for p in (SHARED / "bitmaps").glob("*.npy"))
    _, tune = category_split(categories, "tune")
    _, never_seen = category_split(categories, "test")
    rest = [c for c in categories if c not in tune and c not in never_seen]
    known = [c for c in rest if len(open_bitmaps(SHARED / "bitmaps" / f"{c}.npy")) >= KNOWN_MIN_DRAWINGS]
    pool = [c for c in rest if c not in known] + tune
    order = np.random.default_rng(SEED).permutation(len(pool))
    return {"known": known, "tune": tune, "never-seen": never_seen, "pool": [pool[i] for i in order]}


def negatives_folder(work: Path, names: list[str]) -> Path:
    folder = work / f"negatives-{len(names)}-data"
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = folder / f"{name}.npy"
        if not path.exists():
            np.save(path, np.asarray(open_bitmaps(SHARED / "bitmaps" / f"{name}.npy")[:NEGATIVES_PER_CATEGORY]))
    return folder


def trained(work: Path, label: str, known: list[str], args, **options) -> Path:
    """The run's best.pt, trained unless a run with the same options is cached."""
    out = work / label
    best = out / "best.pt"
    if best.exists():
        hp = load_checkpoint(best)["hparams"]
        wanted = TrainConfig(data_dir=SHARED / "bitmaps", **options).hparams()
        same = [hp.get(k) == wanted[k] for k in ("outlier_exposure", *options)]
        same += [hp["epochs"] == args.epochs, hp["max_per_category"] == args.max_per_category,
                 hp["categories"] == known]
        if all(same):
            return best
    for name in ("best.pt", "last.pt"):
        (out / name).unlink(missing_ok=True)
    train(TrainConfig(data_dir=SHARED / "bitmaps", categories=known, max_per_category=args.max_per_category,
                      epochs=args.epochs, seed=SEED, device="cpu", patience=0, out=out, quiet=True, **options))
    return best


# ----------------------------------------------------------------------------- scores


class Knn:
    """Minus the cosine distance of the normalised features to their k-th nearest training drawing
    (Sun et al., 2022)."""

    def __init__(self, features: np.ndarray, k: int = 10):
        self.bank = features / np.linalg.norm(features, axis=1, keepdims=True).clip(1e-12)
        self.k = k

    def __call__(self, out: Outputs) -> np.ndarray:
        f = out.features / np.linalg.norm(out.features, axis=1, keepdims=True).clip(1e-12)
        similarity = f @ self.bank.T
        return np.partition(similarity, -self.k, axis=1)[:, -self.k]


def logit_score(rule: str, temperature: float):
    score = SCORES[rule]
    return lambda out: score(softmax(out.logits, temperature) if score.output == "probabilities" else out.logits)


def combined(first, second, val: Outputs, tune: Outputs, weights=(0.25, 0.5, 1.0, 2.0, 4.0)):
    """first + w * second, each standardised on the known validation drawings; w chosen for the
    best AUROC between the validation drawings and the tune categories."""
    def standard(score):
        s = score(val)
        mean, std = s.mean(), s.std() + 1e-12
        return lambda out: (score(out) - mean) / std

    a, b = standard(first), standard(second)
    best = max(weights, key=lambda w: auroc(a(val) + w * b(val), a(tune) + w * b(tune)))
    return (lambda out: a(out) + best * b(out)), best


# ----------------------------------------------------------------------------- the run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=REPO / "artifacts" / "bench" / "non-drawings")
    ap.add_argument("--per-kind", type=int, default=70, help="non-drawings of each kind")
    ap.add_argument("--negatives", default="2,5,10", help="numbers of negative categories ('' for none)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--max-per-category", type=int, default=500)
    ap.add_argument("--kept", default=f"{DEFAULT_KEPT}",
                    help="shares of known validation drawings the threshold keeps, one non-drawings table each "
                         "(e.g. 0.95,0.94,0.93)")
    args = ap.parse_args()
    kept = [float(k) for k in args.kept.split(",") if k.strip()]
    if not kept or not all(0 < k < 1 for k in kept):
        raise SystemExit(f"--kept: shares between 0 and 1, comma-separated, got {args.kept!r}")

    parts = partition()
    known = parts["known"]
    print(f"machine: {cpu().summary()}, load average {os.getloadavg()[0]:.1f}")
    print(f"known ({len(known)}): {', '.join(known)}\ntune ({len(parts['tune'])}): {', '.join(parts['tune'])}\n"
          f"never-seen ({len(parts['never-seen'])}): {', '.join(parts['never-seen'])}\n"
          f"negatives pool, in the order used: {', '.join(parts['pool'])}")
    fonts = system_fonts()
    print(f"non-drawings: {args.per_kind} of each of {', '.join(NON_DRAWING_KINDS)}; words in {len(fonts)} "
          f"system fonts ({', '.join(sorted({f.stem.split('-')[0] for f in fonts}))})")

    runs: dict[str, Path] = {
        "plain": trained(args.work, "plain", known, args, outlier_exposure=0.0),
        "default": trained(args.work, "default", known, args),
    }
    counts = [int(n) for n in args.negatives.split(",") if n.strip()]
    for n in counts:
        folder = negatives_folder(args.work, parts["pool"][:n])
        runs[f"negatives-{n}"] = trained(args.work, f"negatives-{n}", known, args, negatives_dir=folder)

    non_drawings = {}
    refused = {}
    for kind, paths in make_non_drawings(args.work / "non-drawings", args.per_kind).items():
        non_drawings[kind], refused[kind] = read_as_user_files(paths)
    sets = {"never-seen bitmaps": evenly_spaced_bitmaps(parts["never-seen"], NEVER_SEEN_PER_CATEGORY),
            "never-seen PNGs": png_renders(parts["never-seen"])[0],
            "tune": evenly_spaced_bitmaps(parts["tune"], TUNE_PER_CATEGORY), "known PNGs": png_renders(known)[0],
            **{f"non-drawing {k}": v for k, v in non_drawings.items()}}

    results = {label: evaluate(path, sets, known, with_train=label in ("plain", "default"))
               for label, path in runs.items()}
    for label, r in results.items():
        print(f"model {label}: test top-1 {r['top1']:.2%}, temperature {r['temperature']:.3f}, "
              f"{r['train_seconds']:.0f} s of training (epochs' wall time; runs side by side on a shared machine)")

    for share in kept:
        non_drawing_table(results, refused, args.per_kind, share)
    rule_table(results)
    kept_table(results["default"])
    negatives_table(results, counts, parts["pool"])
    negatives_fit_table(results, runs, counts, args.work, kept)


def evaluate(checkpoint: Path, sets: dict[str, np.ndarray], known: list[str], with_train: bool) -> dict:
    """The model's outputs on every set (cached beside the checkpoint, keyed by its size and time)."""
    ckpt = load_checkpoint(checkpoint)
    dataset = BitmapDataset(Path(ckpt["data"]["dir"]), ckpt["classes"], ckpt["hparams"]["max_per_category"])
    splits = dataset.split_indices(SplitSpec.from_dict(ckpt["split"]))
    drawings = {name: dataset.take(splits[name]) for name in ("train", "val", "test") if with_train or name != "train"}
    inputs = {**{name: bitmaps for name, (bitmaps, _) in drawings.items()}, **sets}
    stat = checkpoint.stat()
    cache = checkpoint.with_name(f"outputs-{stat.st_size}-{stat.st_mtime_ns}.npz")
    saved = dict(np.load(cache)) if cache.exists() else {}
    out = {}
    model = None
    for name, bitmaps in inputs.items():
        key = f"{name}|{len(bitmaps)}"
        if f"{key}|logits" not in saved:
            model = model or model_from_checkpoint(ckpt)
            o = network_outputs(model, bitmaps, ckpt["preprocessing"])
            saved[f"{key}|logits"], saved[f"{key}|features"] = o.logits, o.features
        out[name] = Outputs(saved[f"{key}|logits"], saved[f"{key}|features"])
    np.savez(cache, **saved)
    temperature = fit_temperature(out["val"].logits, drawings["val"][1])
    correct = out["test"].logits.argmax(1) == drawings["test"][1]
    return {"outputs": out, "correct": correct, "top1": correct.mean(), "temperature": temperature,
            "train_seconds": sum(m["seconds"] for m in ckpt["metrics"]),
            "train_labels": drawings["train"][1] if with_train else None, "classes": len(known)}


def flagged(score, r: dict, name: str, threshold: float) -> np.ndarray:
    return score(r["outputs"][name]) < threshold


def non_drawing_table(results: dict, refused: dict, per_kind: int, kept: float = DEFAULT_KEPT) -> None:
    score = logit_score("max_logit", 1.0)
    print(f"\nnon-drawings flagged unknown or refused (second generator, {per_kind} of each kind), max logit, "
          f"threshold keeping {kept:.0%} of known validation drawings\n")
    print("| model | " + " | ".join(NON_DRAWING_KINDS) + " | all | known flagged (test) | known flagged (PNG) | "
          "top-1 | top-1 accepted |")
    print("|---|" + "---:|" * (len(NON_DRAWING_KINDS) + 5))
    for label, r in results.items():
        threshold = fit_threshold(score(r["outputs"]["val"]), kept)
        shares, total = [], 0
        for kind in NON_DRAWING_KINDS:
            hits = int(flagged(score, r, f"non-drawing {kind}", threshold).sum()) + refused[kind]
            shares.append(hits / per_kind)
            total += hits
        accepted = ~flagged(score, r, "test", threshold)
        print(f"| {label} | " + " | ".join(f"{s:.0%}" for s in shares)
              + f" | **{total / (per_kind * len(NON_DRAWING_KINDS)):.1%}** | {(~accepted).mean():.1%} | "
              f"{flagged(score, r, 'known PNGs', threshold).mean():.1%} | {r['top1']:.1%} | "
              f"{r['correct'][accepted].mean():.1%} |")


def rule_table(results: dict) -> None:
    print(f"\nrules on never-seen categories (no choice made on them), threshold keeping {DEFAULT_KEPT:.0%}; "
          "AUROC: known test drawings against never-seen bitmaps\n")
    print("| model | rule | AUROC tune | AUROC never-seen | never-seen flagged (bitmaps) | never-seen flagged (PNG) | "
          "non-drawings flagged | known flagged (test) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for label in ("plain", "default"):
        r = results[label]
        out = r["outputs"]
        mahalanobis = Mahalanobis(out["train"].features, r["train_labels"], r["classes"])
        knn = Knn(out["train"].features)
        max_logit = logit_score("max_logit", 1.0)
        rules = [("max logit", max_logit), ("energy", logit_score("energy", 1.0)),
                 ("max probability (calibrated)", logit_score("max_probability", r["temperature"])),
                 ("Mahalanobis", mahalanobis), ("kNN cosine (k=10)", knn)]
        for name, second in (("Mahalanobis", mahalanobis), ("kNN", knn)):
            score, w = combined(max_logit, second, out["val"], out["tune"])
            rules.append((f"max logit + {w:g} x {name}", score))
        for name, score in rules:
            threshold = fit_threshold(score(out["val"]), DEFAULT_KEPT)
            test = score(out["test"])
            non = np.concatenate([score(v) for k, v in out.items() if k.startswith("non-drawing ")])
            print(f"| {label} | {name} | {auroc(score(out['val']), score(out['tune'])):.3f} | "
                  f"{auroc(test, score(out['never-seen bitmaps'])):.3f} | "
                  f"{(score(out['never-seen bitmaps']) < threshold).mean():.1%} | "
                  f"{(score(out['never-seen PNGs']) < threshold).mean():.1%} | {(non < threshold).mean():.1%} | "
                  f"{(test < threshold).mean():.1%} |")


def kept_table(r: dict) -> None:
    score = logit_score("max_logit", 1.0)
    out = r["outputs"]
    non = np.concatenate([score(v) for k, v in out.items() if k.startswith("non-drawing ")])
    print("\nthe share kept (--kept), default model, max logit\n")
    print("| kept | known flagged (test) | known flagged (PNG) | never-seen flagged (bitmaps) | "
          "never-seen flagged (PNG) | non-drawings flagged (read) | top-1 accepted |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for kept in KEPT_SWEEP:
        threshold = fit_threshold(score(out["val"]), kept)
        accepted = score(out["test"]) >= threshold
        print(f"| {kept:.2f} | {(~accepted).mean():.1%} | {(score(out['known PNGs']) < threshold).mean():.1%} | "
              f"{(score(out['never-seen bitmaps']) < threshold).mean():.1%} | "
              f"{(score(out['never-seen PNGs']) < threshold).mean():.1%} | {(non < threshold).mean():.1%} | "
              f"{r['correct'][accepted].mean():.1%} |")


def negatives_table(results: dict, counts: list[int], pool: list[str]) -> None:
    score = logit_score("max_logit", 1.0)
    print(f"\nnever-seen categories with real negatives (default + --negatives, {NEGATIVES_PER_CATEGORY} drawings "
          f"a category), max logit, threshold keeping {DEFAULT_KEPT:.0%}\n")
    print("| negatives | categories | AUROC never-seen | never-seen flagged (bitmaps) | never-seen flagged (PNG) | "
          "known flagged (test) | top-1 | top-1 accepted |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for n, label in [(0, "default")] + [(n, f"negatives-{n}") for n in counts]:
        r = results[label]
        out = r["outputs"]
        threshold = fit_threshold(score(out["val"]), DEFAULT_KEPT)
        test = score(out["test"])
        accepted = test >= threshold
        print(f"| {n} | {', '.join(pool[:n]) or '-'} | {auroc(test, score(out['never-seen bitmaps'])):.3f} | "
              f"{(score(out['never-seen bitmaps']) < threshold).mean():.1%} | "
              f"{(score(out['never-seen PNGs']) < threshold).mean():.1%} | {(~accepted).mean():.1%} | "
              f"{r['top1']:.1%} | {r['correct'][accepted].mean():.1%} |")



def negatives_fit_table(results: dict, runs: dict, counts: list[int], work: Path, kept_shares: list[float]) -> None:
    """qd-export's threshold (the bound on known validation drawings flagged, 1 - kept) against the threshold
    within that bound with the largest (validation negatives flagged - known validation drawings flagged)."""
    if not counts:
        return
    score = logit_score("max_logit", 1.0)
    print("\nthe threshold with the validation negatives: qd-export's (largest within the bound) against the "
          "largest (negatives flagged - known flagged) within it; max logit\n")
    print("| negatives | kept | threshold | validation: known / negatives flagged | known flagged (test) | "
          "negatives flagged (test) | never-seen flagged (bitmaps) | never-seen flagged (PNG) | "
          "non-drawings flagged (read) |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for n in counts:
        label = f"negatives-{n}"
        ckpt = load_checkpoint(runs[label])
        held, problem = heldout_negatives(ckpt["negatives"], SplitSpec.from_dict(ckpt["split"]),
                                          folder=work / f"{label}-data")
        if problem:
            raise SystemExit(problem)
        model = model_from_checkpoint(ckpt)
        negatives = {split: score(network_outputs(model, held[split], ckpt["preprocessing"])) for split in held}
        out = results[label]["outputs"]
        known = score(out["val"])
        non = np.concatenate([score(v) for k, v in out.items() if k.startswith("non-drawing ")])
        for kept in kept_shares:
            bound = fit_threshold(known, kept)
            candidates = np.unique(np.concatenate([known, negatives["val"], [bound]]))
            candidates = candidates[candidates <= bound]
            gain = [(negatives["val"] < t).mean() - (known < t).mean() for t in candidates]
            for name, t in (("qd-export's", bound), ("max (negatives - known)", candidates[int(np.argmax(gain))])):
                print(f"| {n} | {kept:.2f} | {name} | {(known < t).mean():.1%} / {(negatives['val'] < t).mean():.1%} | "
                      f"{(score(out['test']) < t).mean():.1%} | {(negatives['test'] < t).mean():.1%} | "
                      f"{(score(out['never-seen bitmaps']) < t).mean():.1%} | "
                      f"{(score(out['never-seen PNGs']) < t).mean():.1%} | {(non < t).mean():.1%} |")


if __name__ == "__main__":
    main()
