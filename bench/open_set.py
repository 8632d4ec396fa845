"""Which open-set rule: candidates measured side by side on categories held out of training.

    python bench/open_set.py [--split test|tune] [--max-per-category 1000] [--epochs 5] [--kept 0.95]
                             [--work artifacts/bench/open-set] [--retrain]

Categories: every fourth of the 27 shared ones (sorted) is held out of training, starting
at the third for `--split test` (the figures reported) and at the first for `--split tune`
(a disjoint set, the only one any choice was tried on). The known categories are trained on
rows 25 onwards of their bitmap files, so their 25 stroke drawings (rows 0-24 of Google's
files) are never seen in training either.

Two models are trained on the known categories with qd-train's recipe: a plain one
(--outlier-exposure 0), and one with qd-train's defaults (outlier exposure on synthetic
non-drawings, qd.train.outliers). Candidates score each
drawing (higher = more like the known classes); the threshold keeps `--kept` of the known
validation drawings. Unknown drawings come from two sources:
  - bitmaps: the held-out categories' Google bitmaps (up to 500 per category, evenly spaced);
  - PNG renders: the held-out categories' stroke drawings, drawn as a person's PNG would be
    (dark ink on white, three canvas sizes and pen widths) and read back through qd.data.images.
Known drawings: the test split (the share flagged there is "known flagged") and the known
categories' stroke drawings rendered the same way (a new source of known drawings).

Printed: AUROC (test split vs unknown), share of unknown flagged, share of known flagged (test
split and PNG renders), top-1 of all test drawings and of those accepted, and the cost of the
score per drawing (median of interleaved repeats, numpy on the model's outputs; outlier exposure
adds no inference cost, its training cost is printed as the ratio of training times).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from qd.data.bitmaps import BitmapDataset, SplitSpec, open_bitmaps
from qd.data.contract import bitmaps_to_input, fit_threshold
from qd.data.images import image_to_bitmap
from qd.data.strokes import draw_strokes_image, parse_ndjson_line
from qd.evaluate.metrics import auroc
from qd.export.checkpoint_source import fit_temperature
from qd.infer.model import SCORES, softmax
from qd.machine import cpu
from qd.train.checkpoint import load_checkpoint, model_from_checkpoint
from qd.train.cli import TrainConfig
from qd.train.loop import train

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("QD_SHARED", REPO.parent / "shared")) / "quickdraw"
STROKE_ROWS = 25          # rows 0-24 of Google's files are the shared stroke drawings
UNSEEN_PER_CATEGORY = 500
PNG_STYLES = ((1024, 3, "centre"), (512, 12, "corner"), (300, 2, "centre"))  # canvas px, pen px, where


def category_split(categories: list[str], split: str) -> tuple[list[str], list[str]]:
    start = {"tune": 0, "test": 2}[split]
    unseen = categories[start::4]
    return [c for c in categories if c not in unseen], unseen


def prepare_data(work: Path, known: list[str], per_category: int) -> Path:
    """<work>/data: rows 25..25+N of each known category (never the stroke drawings' rows)."""
    folder = work / "data"
    folder.mkdir(parents=True, exist_ok=True)
    for name in known:
        path = folder / f"{name}.npy"
        rows = np.asarray(open_bitmaps(SHARED / "bitmaps" / f"{name}.npy")[STROKE_ROWS:STROKE_ROWS + per_category])
        if not path.exists() or np.load(path, mmap_mode="r").shape != rows.shape:
            np.save(path, rows)
    for stale in folder.glob("*.npy"):
        if stale.stem not in known:
            stale.unlink()
    return folder


def train_model(work: Path, data_dir: Path, label: str, epochs: int, retrain: bool, **options) -> tuple[Path, float]:
    out = work / label
    best = out / "best.pt"
    if best.exists() and not retrain:
        return best, float("nan")
    for name in ("best.pt", "last.pt"):
        (out / name).unlink(missing_ok=True)
    started = time.perf_counter()
    train(TrainConfig(data_dir=data_dir, epochs=epochs, seed=0, device="cpu", patience=0, out=out, quiet=True,
                      **options))
    return best, time.perf_counter() - started


# ---------------------------------------------------------------- drawings


def png_renders(categories: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Each category's stroke drawings drawn as PNG-like images, read back by qd.data.images."""
    bitmaps, labels = [], []
    for index, name in enumerate(categories):
        path = SHARED / "strokes" / f"{name}.ndjson"
        if not path.is_file():
            continue
        lines = [line for line in path.read_bytes().splitlines() if line.strip()]
        for n, line in enumerate(lines):
            size, pen, where = PNG_STYLES[n % len(PNG_STYLES)]
            offset = None if where == "centre" else (size * 0.05, size * 0.35)
            side = size * (0.8 if where == "centre" else 0.55)
            image = draw_strokes_image(parse_ndjson_line(line)[1], size=size, line_width=pen,
                                       drawing_side=side, offset=offset)
            bitmaps.append(image_to_bitmap(image).reshape(784))
            labels.append(index)
    return np.stack(bitmaps), np.array(labels)


def evenly_spaced_bitmaps(categories: list[str], per_category: int) -> np.ndarray:
    """Up to `per_category` of each category's Google bitmaps, evenly spaced through its file."""
    rows = []
    for name in categories:
        data = open_bitmaps(SHARED / "bitmaps" / f"{name}.npy")
        pick = np.linspace(0, len(data) - 1, min(per_category, len(data))).round().astype(np.int64)
        rows.append(np.asarray(data[pick]))
    return np.concatenate(rows)


# ---------------------------------------------------------------- model outputs


@dataclass
class Outputs:
    logits: np.ndarray    # (N, C)
    features: np.ndarray  # (N, D): the input of the last linear layer


def network_outputs(model: torch.nn.Module, bitmaps: np.ndarray, preprocessing: dict, batch: int = 512) -> Outputs:
    last_linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    captured = []
    hook = last_linear.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0].detach()))
    logits = []
    try:
        with torch.inference_mode():
            for start in range(0, len(bitmaps), batch):
                x = torch.from_numpy(bitmaps_to_input(bitmaps[start:start + batch], preprocessing))
                logits.append(model(x).numpy())
    finally:
        hook.remove()
    return Outputs(np.concatenate(logits), torch.cat(captured).numpy())


# ---------------------------------------------------------------- candidates


@dataclass
class Candidate:
    name: str
    model: str                                      # which trained model it scores
    score: Callable[[Outputs], np.ndarray]          # higher = more like the known classes


class Mahalanobis:
    """-min over classes of the Mahalanobis distance of the features to the class mean
    (class means and one shared covariance from the training split; Lee et al., 2018)."""

    def __init__(self, features: np.ndarray, labels: np.ndarray, classes: int):
        self.means = np.stack([features[labels == c].mean(0) for c in range(classes)]).astype(np.float32)
        centred = features - self.means[labels]
        covariance = centred.T @ centred / len(features)
        self.precision = np.linalg.pinv(covariance).astype(np.float32)
        # |f - m|^2_P = f'Pf - 2 f'Pm + m'Pm: one (N, D) x (D, C) product per batch
        self.pm = self.precision @ self.means.T
        self.mpm = np.einsum("cd,dc->c", self.means, self.pm)

    def __call__(self, out: Outputs) -> np.ndarray:
        f = out.features
        fpf = np.einsum("nd,nd->n", f @ self.precision, f)
        distances = fpf[:, None] - 2 * f @ self.pm + self.mpm[None]
        return -distances.min(axis=1)


def candidates(temperature: dict[str, float], mahalanobis: Mahalanobis) -> list[Candidate]:
    def from_logits(rule: str, model: str) -> Callable[[Outputs], np.ndarray]:
        score = SCORES[rule]
        t = temperature[model]
        return lambda out: score(softmax(out.logits, t) if score.output == "probabilities" else out.logits)

    return [
        Candidate("max probability (calibrated)", "plain", from_logits("max_probability", "plain")),
        Candidate("max logit", "plain", from_logits("max_logit", "plain")),
        Candidate("energy", "plain", from_logits("energy", "plain")),
        Candidate("Mahalanobis, penultimate features", "plain", mahalanobis),
        Candidate("outlier exposure + max probability", "outlier-exposure", from_logits("max_probability", "outlier-exposure")),
        Candidate("outlier exposure + max logit", "outlier-exposure", from_logits("max_logit", "outlier-exposure")),
        Candidate("outlier exposure + energy", "outlier-exposure", from_logits("energy", "outlier-exposure")),
    ]


def cost_per_drawing(cands: list[Candidate], outputs: dict[str, Outputs], rounds: int = 15) -> dict[str, float]:
    """Microseconds per drawing to score a batch of model outputs, interleaved, median of rounds."""
    times: dict[str, list[float]] = {c.name: [] for c in cands}
    for c in cands:
        c.score(outputs[c.model])  # warm-up
    for _ in range(rounds):
        for c in cands:
            start = time.perf_counter()
            c.score(outputs[c.model])
            times[c.name].append(time.perf_counter() - start)
    n = len(next(iter(outputs.values())).logits)
    return {name: 1e6 * statistics.median(t) / n for name, t in times.items()}


# ---------------------------------------------------------------- the run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", choices=("test", "tune"), default="test")
    ap.add_argument("--max-per-category", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--kept", type=float, default=0.95, help="share of known validation drawings kept")
    ap.add_argument("--work", type=Path, default=REPO / "artifacts" / "bench" / "open-set")
    ap.add_argument("--retrain", action="store_true", help="train again even if the work folder has the models")
    args = ap.parse_args()

    categories = sorted(p.stem for p in (SHARED / "bitmaps").glob("*.npy"))
    known, unseen = category_split(categories, args.split)
    work = args.work / f"{args.split}-{args.max_per_category}-{args.epochs}ep"
    print(f"machine: {cpu().summary()}, load average {os.getloadavg()[0]:.1f}")
    print(f"split {args.split}: {len(known)} known categories; held out of training: {', '.join(unseen)}")
    data_dir = prepare_data(work, known, args.max_per_category)
    checkpoints, train_seconds = {}, {}
    for label, options in (("plain", {"outlier_exposure": 0.0}), ("outlier-exposure", {})):
        checkpoints[label], train_seconds[label] = train_model(work, data_dir, label, args.epochs, args.retrain, **options)

    payload = load_checkpoint(checkpoints["plain"])
    dataset = BitmapDataset(data_dir, payload["classes"])
    splits = dataset.split_indices(SplitSpec.from_dict(payload["split"]))
    drawings = {name: dataset.take(splits[name]) for name in ("train", "val", "test")}
    known_png, known_png_labels = png_renders(known)
    unseen_sets = {"bitmaps": evenly_spaced_bitmaps(unseen, UNSEEN_PER_CATEGORY), "PNG renders": png_renders(unseen)[0]}
    print(f"known: {len(drawings['val'][1]):,} val / {len(drawings['test'][1]):,} test drawings, "
          f"{len(known_png)} PNG renders; unseen: {len(unseen_sets['bitmaps']):,} bitmaps, "
          f"{len(unseen_sets['PNG renders'])} PNG renders")

    outputs: dict[str, dict[str, Outputs]] = {}
    temperature = {}
    for label, path in checkpoints.items():
        ckpt = load_checkpoint(path)
        model = model_from_checkpoint(ckpt)
        prep = ckpt["preprocessing"]
        sets = {"val": drawings["val"][0], "test": drawings["test"][0], "known PNG": known_png, **unseen_sets}
        if label == "plain":
            sets["train"] = drawings["train"][0]
        outputs[label] = {name: network_outputs(model, bitmaps, prep) for name, bitmaps in sets.items()}
        temperature[label] = fit_temperature(outputs[label]["val"].logits, drawings["val"][1])
        test_top1 = (outputs[label]["test"].logits.argmax(1) == drawings["test"][1]).mean()
        print(f"model {label}: test top-1 {test_top1:.2%}, temperature {temperature[label]:.3f}"
              + (f", trained in {train_seconds[label]:.0f} s" if np.isfinite(train_seconds[label]) else ""))

    mahalanobis = Mahalanobis(outputs["plain"]["train"].features, drawings["train"][1], len(known))
    cands = candidates(temperature, mahalanobis)
    print_table(cands, outputs, drawings, known_png_labels, args.kept)
    cost = cost_per_drawing(cands, {label: sets["test"] for label, sets in outputs.items()})
    print("\ncost of the score per drawing (µs, numpy on the model's outputs, median of 15 interleaved rounds):")
    for c in cands:
        print(f"  {c.name:<40} {cost[c.name]:7.3f}")
    if all(np.isfinite(list(train_seconds.values()))):
        print(f"training time, outlier exposure / plain: {train_seconds['outlier-exposure'] / train_seconds['plain']:.2f}x "
              "(sequential runs on a shared machine: rough)")


def print_table(cands: list[Candidate], outputs, drawings, known_png_labels, kept: float) -> None:
    test_labels = drawings["test"][1]
    print(f"\nthreshold: keeps {kept:.0%} of the known validation drawings\n")
    print("| rule | unseen source | AUROC | unseen flagged | known flagged (test) | known flagged (PNG) | "
          "top-1 all | top-1 accepted |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for c in cands:
        sets = outputs[c.model]
        threshold = fit_threshold(c.score(sets["val"]), kept)
        test_scores = c.score(sets["test"])
        accepted = test_scores >= threshold
        correct = sets["test"].logits.argmax(1) == test_labels
        png_flagged = (c.score(sets["known PNG"]) < threshold).mean()
        for source in ("bitmaps", "PNG renders"):
            unseen_scores = c.score(sets[source])
            print(f"| {c.name} | {source} | {auroc(test_scores, unseen_scores):.3f} | "
                  f"{(unseen_scores < threshold).mean():.1%} | {(~accepted).mean():.1%} | {png_flagged:.1%} | "
                  f"{correct.mean():.1%} | {correct[accepted].mean():.1%} |")


if __name__ == "__main__":
    main()
