"""New categories from 30 drawings each: `qd-train --init-from BASE` against training from scratch.

The stand-in for a user's few drawings of new things (issue 28): shared categories held out
of the base model, drawn as third-party doodles are saved (254 px PNGs, thin grey ink on
white, off-centre) and imported with `qd.data.importer` (`qd-data import`). The 30 training
drawings of a category are its rows 0..29, the 100 test drawings rows 800..899: never the same.

Two partitions of the 27 shared categories, rendered the same way:
  tune    base: 12 categories (the issue's 14 but banana and house), new: the 13 others:
          every method and hyperparameter was chosen here.
  report  new: the issue's 14 categories, base: 12 of the tune partition's new ones (not
          tree): no choice was made on these. The base and the new categories swap roles.
Each base: the default network, default options, 3 epochs, on Google's bitmaps (the first 1,000
rows per category), trained once and kept under --work.

Runs, each with the same 30 drawings per category, in this process (one torch thread: --threads):
  scratch              qd-train with default options (no --init-from)
  init                 qd-train --init-from BASE, default options (a few-shot run: 300 steps)
  tune-...             (tune partition only) one change from the defaults: new rows imprinted (then
                       300 or 150 steps, or stronger augmentation), 600 steps, seeds 1 and 2 (and scratch's),
                       the backbone at 0.1x or 0.3x the output layer's learning rate, label smoothing, mixup,
                       LP-FT (the output layer alone first), a base trained with label smoothing, other
                       outlier-exposure settings (off, 0.5 with half a batch, 4.0, two batches; scratch
                       without it); some also never stopped early (--patience 0)
  tune-<base>-base...  (tune partition only) a base trained for better embeddings (better_bases: rotations
                       as extra classes, a supervised contrastive term), then init, frozen and prototypes
                       from it (and from the rotations base, rotations_variants)
  frozen               qd-train --init-from BASE --freeze-backbone (a linear probe)
  old                  qd-train --init-from BASE --no-few-shot (the usual schedule)
  prototypes           no training: the base's backbone, the new output rows imprinted
                       (imprint_new_classes below: normalised class means of centred features)
  kept                 --init-from BASE with the base's 12 categories in the data too (30 drawings
                       each, from the base's own training rows); tested on the new categories and on the
                       base's (its test split, rendered the same way)
  300                  (part `300`) default options on 300 drawings per category of the issue's 14

Every run is kept under --work with its wall seconds, CPU seconds and the load average around it
(timing.json), so a rerun prints the table without training again; --only runs some of them.

    nice -n 10 python bench/few_shot.py [--parts tune,report,300] [--only init,...] [--work DIR]

Name the CPU and the load when quoting the seconds: they are wall time on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from own_drawings import SHARED, top1  # noqa: E402

ISSUE_14 = ["airplane", "apple", "banana", "bicycle", "bird", "book", "cat", "clock", "crown", "dog", "eye", "fish",
            "flower", "house"]
OTHERS_13 = ["boomerang", "cloud", "diamond", "horse", "house_plant", "rainbow", "skull", "smiley_face", "square",
             "star", "train", "tree", "circle"]
PARTITIONS = {
    "tune": {"base": [c for c in ISSUE_14 if c not in ("banana", "house")], "new": OTHERS_13},
    "report": {"base": [c for c in OTHERS_13 if c != "tree"], "new": ISSUE_14},
}
BASE_ROWS = 1000
FEW = 30
TEST_START, TEST_COUNT = 800, 100
SIZE = 254


def thin_grey_ink(bitmap: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A 28x28 ink-high bitmap as a saved doodle: 254 px, thin grey lines (the upscaled strokes
    thresholded high), slightly soft, on white, at 55-85% of the frame, off-centre; 8-bit grey."""
    side = int(SIZE * rng.uniform(0.55, 0.85))
    big = Image.fromarray(bitmap.reshape(28, 28)).resize((side, side), Image.BICUBIC)
    level = int(rng.uniform(150, 215))  # high: thin lines
    mask = big.point(lambda v: 255 if v >= level else 0).filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 0.9)))
    canvas = Image.new("L", (SIZE, SIZE), 255)
    offset = (int(rng.integers(0, SIZE - side + 1)), int(rng.integers(0, SIZE - side + 1)))
    canvas.paste(Image.new("L", (side, side), int(rng.uniform(50, 140))), offset, mask)
    return canvas


def write_pngs(root: Path, rows_by_category: dict[str, np.ndarray], seed: int) -> Path:
    """root/<category>/<i>.png, one per row; written once (a `.done` stamp)."""
    if (root / ".done").exists():
        return root
    rng = np.random.default_rng(seed)
    for name, rows in rows_by_category.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i, row in enumerate(rows):
            thin_grey_ink(np.asarray(row), rng).save(root / name / f"{i:04d}.png")
    (root / ".done").touch()
    return root


def imported(pngs: Path, out: Path) -> Path:
    """`qd-data import` of a PNG folder; a drawing the renderer left blank (a tiny bitmap drawn with thin
    lines) is skipped, as the import skips it for a user, and nothing else may fail."""
    from qd.data.importer import ImportOptions, import_drawings

    if not (out / ".done").exists():
        report = import_drawings([pngs], out, ImportOptions(workers=2))
        failures = [f for f in report.failures if "no drawing found" not in str(f)]
        assert not failures, failures[:3]
        (out / ".done").touch()
    return out


def shared_rows(name: str, start: int, count: int) -> np.ndarray:
    from qd.data.bitmaps import open_bitmaps

    return np.asarray(open_bitmaps(SHARED / f"{name}.npy")[start:start + count])


def pngs(work: Path, tag: str, categories: list[str], start: int, count: int, seed: int) -> Path:
    """The categories' rows start..start+count drawn as PNGs and imported: a data folder."""
    rows = {name: shared_rows(name, start, count) for name in categories}
    return imported(write_pngs(work / f"{tag}-png", rows, seed), work / tag)


def base_model(work: Path, part: str) -> tuple[Path, Path]:
    """The base checkpoint (trained once, then reused) and its data folder (Google's bitmaps)."""
    from qd.data.fetch import FetchOptions, fetch_categories
    from qd.data.sources import FolderSource

    data = work / f"{part}-base-data"
    if not (data / ".done").exists():
        fetch_categories(FolderSource(SHARED), PARTITIONS[part]["base"], data, FetchOptions(max_rows=BASE_ROWS))
        (data / ".done").touch()
    best, _ = train_run(work / f"{part}-base", data_dir=data, epochs=3)
    return best, data


def base_test_pngs(work: Path, part: str, base_data: Path) -> Path:
    """The base's own test split (drawings it never trained on), drawn like the new ones."""
    from qd.data.bitmaps import BitmapDataset, SplitSpec

    dataset = BitmapDataset(base_data)
    test = dataset.split_indices(SplitSpec())["test"]
    labels = dataset.labels(test)
    rows = {name: dataset.take(test[labels == i][:TEST_COUNT])[0] for i, name in enumerate(dataset.classes)}
    return imported(write_pngs(work / f"{part}-base-test-png", rows, seed=7), work / f"{part}-base-test")


def train_run(out: Path, **options) -> tuple[Path, float]:
    """qd-train as the Python API runs it; the wall seconds of the whole call (set-up included), measured
    when the run was trained (kept in out/timing.json with the load average then, so a rerun of the
    bench reuses the run)."""
    from qd.train.cli import TrainConfig
    from qd.train.loop import train

    timing = out / "timing.json"
    if not timing.exists():
        shutil.rmtree(out, ignore_errors=True)
        load = os.getloadavg()[0]
        started, cpu_started = time.perf_counter(), time.process_time()
        train(TrainConfig(out=out, device="cpu", quiet=True, **options))
        timing.write_text(json.dumps({"seconds": time.perf_counter() - started, "load": [load, os.getloadavg()[0]],
                                      "cpu_seconds": time.process_time() - cpu_started}))
    return out / "best.pt", json.loads(timing.read_text())["seconds"]


def merged(folder: Path, *sources: Path) -> Path:
    """A data folder holding every <category>.npy of the sources (symbolic links)."""
    folder.mkdir(parents=True, exist_ok=True)
    for source in sources:
        for file in source.glob("*.npy"):
            link = folder / file.name
            if not link.exists():
                link.symlink_to(file.resolve())
    return folder


# ---------------------------------------------------------------- imprinted output rows (prototypes)

def head_inputs(model, x, batch: int = 256):
    """What the output layer sees for each drawing of `x` (model in eval mode, no gradients)."""
    import torch

    from qd.train.models import head_name

    head = dict(model.named_modules())[head_name(model)]
    seen = []
    hook = head.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].detach().float()))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(x), batch):
                model(x[start:start + batch])
    finally:
        hook.remove()
        model.train(was_training)
    return torch.cat(seen)


def imprint_new_classes(model, payload: dict, rows: np.ndarray, labels: np.ndarray, mapping: dict) -> None:
    """Weight imprinting (Qi et al. 2018) as an ordinary Linear layer: each new class's row becomes the
    normalised mean of its drawings' normalised, centred features (SimpleShot's CL2N), at the parent's mean
    row length; its bias is the parent's mean bias minus the row times the centre. A feature vector's own
    length scales every row alike, so among the new rows the argmax is the nearest class mean by cosine."""
    import torch
    import torch.nn.functional as F

    from qd.data.contract import bitmaps_to_input
    from qd.train.models import head_name

    head_key = head_name(model)
    head = dict(model.named_modules())[head_key]
    parent_weight = payload["state_dict"][f"{head_key}.weight"].float()
    parent_bias = payload["state_dict"][f"{head_key}.bias"].float()
    labels = torch.from_numpy(np.asarray(labels))
    features = head_inputs(model, torch.from_numpy(bitmaps_to_input(rows, payload["preprocessing"])))
    centre = features.mean(0)
    unit = F.normalize(features - centre, dim=1)
    with torch.no_grad():
        for row, parent_row in enumerate(mapping.values()):
            if parent_row is None and bool((labels == row).any()):
                head.weight[row] = parent_weight.norm(dim=1).mean() * F.normalize(unit[labels == row].mean(0), dim=0)
                head.bias[row] = parent_bias.mean() - head.weight[row] @ centre


def imprinting(data_dir: Path):
    """qd.train.checkpoint.init_from, then the new rows imprinted from the training split of `data_dir`."""
    from qd.data.bitmaps import BitmapDataset, SplitSpec
    from qd.train.checkpoint import init_from

    def init_and_imprint(model, path, payload, classes, freeze_backbone):
        record = init_from(model, path, payload, classes, freeze_backbone)
        dataset = BitmapDataset(data_dir)
        imprint_new_classes(model, payload, *dataset.take(dataset.split_indices(SplitSpec())["train"]),
                            record["class_mapping"])
        return record
    return init_and_imprint


def prototypes(base: Path, data_dir: Path, out: Path) -> tuple[Path, float]:
    """No training: the base's backbone, and output rows imprinted from the new drawings."""
    from qd.data.bitmaps import BitmapDataset
    from qd.train.checkpoint import load_checkpoint, save_checkpoint
    from qd.train.models import build_model

    started = time.perf_counter()
    parent = load_checkpoint(base)
    model = build_model(parent["arch"]["name"], len(BitmapDataset(data_dir).classes), **parent["arch"]["kwargs"])
    imprinting(data_dir)(model, base, parent, BitmapDataset(data_dir).classes, False)
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint({**parent, "classes": list(BitmapDataset(data_dir).classes), "state_dict": model.state_dict()},
                    out / "best.pt")
    return out / "best.pt", time.perf_counter() - started


# ---------------------------------------------------------------- few-shot training variants (tune partition)
# Each a subclass of qd.train.loop.Trainer, swapped in for one run by `patched({"Trainer": ...})`.

def discriminative_lr(factor: float):
    """The backbone at `factor` x the output layer's learning rate (the one-cycle schedule scaled alike)."""
    import torch

    from qd.train.loop import Trainer
    from qd.train.models import head_name

    class DiscriminativeLR(Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            head = head_name(self.model) + "."
            named = list(self.model.named_parameters())
            lr = self.config.lr
            self.optimizer = torch.optim.AdamW(
                [{"params": [p for n, p in named if not n.startswith(head)], "lr": factor * lr},
                 {"params": [p for n, p in named if n.startswith(head)], "lr": lr}],
                weight_decay=self.config.weight_decay)
            total = self.config.epochs * len(self.train_loader)
            self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
                self.optimizer, max_lr=[factor * lr, lr], total_steps=total, pct_start=max(0.25, 2 / total))
    return DiscriminativeLR


def soft_targets(smoothing: float = 0.0, mixup: float = 0.0):
    """Label smoothing and/or mixup (Beta(mixup, mixup) weights) on the known drawings: the loss takes
    class probabilities instead of labels (the synthetic outliers' term is unchanged)."""
    import torch
    import torch.nn.functional as F

    from qd.train.loop import Trainer

    class SoftTargets(Trainer):
        def _loss(self, x, y, rng, background, ink):
            n, classes = len(y), self.dataset.num_classes
            target = F.one_hot(y, classes).float()
            if mixup > 0:
                weight = float(np.random.default_rng(int(torch.randint(2**31, (1,), generator=rng))).beta(mixup, mixup))
                order = torch.randperm(n, generator=rng)
                x = torch.cat([weight * x[:n] + (1 - weight) * x[:n][order], x[n:]])
                target = weight * target + (1 - weight) * target[order]
            target = (1 - smoothing) * target + smoothing / classes
            return super()._loss(x, target, rng, background, ink)
    return SoftTargets


def head_first(steps: int, lr_factor: float):
    """LP-FT (Kumar et al. 2022): `steps` steps training the output layer alone (backbone and its batch-norm
    statistics kept, constant learning rate `lr_factor` x --lr), then the usual few-shot run of the whole network."""
    import torch

    from qd.train.batches import epoch_seed
    from qd.train.checkpoint import freeze, keep_batch_norm
    from qd.train.loop import Trainer

    class HeadFirst(Trainer):
        def run(self):
            cfg, model = self.config, self.model
            freeze(model)
            head = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(head, lr=lr_factor * cfg.lr, weight_decay=cfg.weight_decay)
            background, ink = self.paper_and_ink()
            model.train()
            keep_batch_norm(model)
            done, epoch = 0, 10**6
            while done < steps:
                self.train_loader.set_epoch(epoch)  # shuffles the run's own epochs (1, 2, ...) never use
                rng = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch, 2, 0))
                for x, y in self.train_loader:
                    if done == steps:
                        break
                    if self.augment is not None:
                        x = self.augment(x, rng, background)
                    loss = self._loss(x, y, rng, background, ink)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    done += 1
                epoch += 1
            for p in model.parameters():
                p.requires_grad_(True)
            return super().run()
    return HeadFirst


# ---------------------------------------------------------------- bases for better embeddings (tune partition)

def rotated_data(base_data: Path, folder: Path) -> Path:
    """Self-supervised label augmentation (Lee et al. 2020): each category's drawings at 0, 90, 180 and 270
    degrees as four classes, <category>_r<degrees>.npy; written once. The turned copies leave out the
    drawings of the upright test split (the split follows a drawing's content, so a turned test drawing
    would land in any split), so that split stays unseen in every orientation."""
    from qd.data.bitmaps import SplitSpec, assign_splits, list_categories, open_bitmaps

    if not (folder / ".done").exists():
        folder.mkdir(parents=True, exist_ok=True)
        for name in list_categories(base_data):
            rows = np.asarray(open_bitmaps(base_data / f"{name}.npy"))
            seen = rows[assign_splits(rows, SplitSpec()) != 2].reshape(-1, 28, 28)
            np.save(folder / f"{name}_r0.npy", rows)
            for turns in (1, 2, 3):
                np.save(folder / f"{name}_r{90 * turns}.npy",
                        np.ascontiguousarray(np.rot90(seen, turns, axes=(1, 2))).reshape(-1, 28 * 28))
        (folder / ".done").touch()
    return folder


def upright_top1(checkpoint: Path, base_data: Path) -> float:
    """A rotations base's top-1 on the upright base's test split, choosing among the <category>_r0 classes."""
    import torch

    from qd.data.bitmaps import BitmapDataset, SplitSpec
    from qd.data.contract import bitmaps_to_input
    from qd.train.checkpoint import load_checkpoint, model_from_checkpoint

    payload = load_checkpoint(checkpoint)
    dataset = BitmapDataset(base_data)
    rows, labels = dataset.take(dataset.split_indices(SplitSpec())["test"])
    upright = [payload["classes"].index(f"{name}_r0") for name in dataset.classes]
    with torch.no_grad():
        logits = model_from_checkpoint(payload)(torch.from_numpy(bitmaps_to_input(rows, payload["preprocessing"])))
    return float((logits[:, upright].argmax(1).numpy() == labels).mean())


def supervised_contrastive(weight: float, temperature: float = 0.1):
    """The usual loss plus `weight` x SupCon (Khosla et al. 2020) on the normalised features the output layer
    sees: the batch's drawings in two views (as the loop augmented them, and augmented once more), each
    drawing pulled towards every view of its class and pushed from the others."""
    import torch
    import torch.nn.functional as F

    from qd.train.loop import Trainer, input_layout
    from qd.train.models import head_name

    def supcon(features, labels):
        unit = F.normalize(features.float(), dim=1)
        itself = torch.eye(len(unit), dtype=torch.bool)
        similarity = (unit @ unit.T / temperature).masked_fill(itself, float("-inf"))
        log_p = similarity - similarity.logsumexp(dim=1, keepdim=True)
        positive = (labels[:, None] == labels[None, :]) & ~itself  # every drawing's other view at least
        return -(log_p.masked_fill(~positive, 0).sum(1) / positive.sum(1)).mean()

    class SupCon(Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            head = dict(self.model.named_modules())[head_name(self.model)]
            head.register_forward_hook(lambda module, inputs, output: setattr(self, "seen", inputs[0]))
            augment = self.augment

            def remembered(x, rng, background):  # the loop augments the batch just before calling _loss
                self.plain = x
                return augment(x, rng, background)
            self.augment, self.again = remembered, augment

        def _loss(self, x, y, rng, background, ink):
            plain = self.plain[:len(y)]  # before super()._loss augments its synthetic outliers
            loss = super()._loss(x, y, rng, background, ink)
            first = self.seen[:len(y)]
            self.net(input_layout(self.again(plain, rng, background)))
            return loss + weight * supcon(torch.cat([first, self.seen]), torch.cat([y, y]))
    return SupCon


def better_bases(work: Path, part: str, base_data: Path) -> dict[str, tuple[str, Path, dict]]:
    """Bases trained (3 epochs, default options) to give better embeddings for unseen classes: a name, the
    data folder, the names patched for the run."""
    return {
        "rotations": ("a base with rotations as classes (4 x 12)",
                      rotated_data(base_data, work / f"{part}-base-rotations-data"), {}),
        "supcon-0.5": ("a base with SupCon 0.5 (temperature 0.1)", base_data, {"Trainer": supervised_contrastive(0.5)}),
        "supcon-1": ("a base with SupCon 1 (temperature 0.1)", base_data, {"Trainer": supervised_contrastive(1.0)}),
    }


# The rotations base's features carry further than the default base's (its linear probe and prototypes):
# the few-shot run from it, one change at a time, each meant to keep more of them.
def rotations_variants(few: Path) -> dict[str, tuple[dict, dict]]:
    return {
        "linear probe, 900 steps": ({"freeze_backbone": True}, {"FEW_SHOT_STEPS": 900}),
        "LP-FT: 60 steps head only (3x --lr), then 300": ({}, {"Trainer": head_first(60, 3.0)}),
        "LP-FT: 60 steps head only (3x --lr), then 300, --seed 1": ({"seed": 1}, {"Trainer": head_first(60, 3.0)}),
        "LP-FT: 60 steps head only (3x --lr), then 300, --seed 2": ({"seed": 2}, {"Trainer": head_first(60, 3.0)}),
        "LP-FT: 300 steps head only (3x --lr), then 300": ({}, {"Trainer": head_first(300, 3.0)}),
        "new rows imprinted, then 300 steps": ({}, {"init_from": imprinting(few)}),
        "backbone at 0.1x the head's learning rate": ({}, {"Trainer": discriminative_lr(0.1)}),
        "never stopped early (--patience 0)": ({"patience": 0}, {}),
    }


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.strip())


def report(title: str, rows: list[tuple[str, float, float, str]]) -> None:
    print(f"\n{title}")
    if not rows:
        return
    print(f"  {'run':<52} {'top-1':>7} {'vs scratch':>11} {'train s':>8}  note")
    reference = rows[0][1]
    for name, accuracy, seconds, note in rows:
        print(f"  {name:<52} {100 * accuracy:6.1f}% {100 * (accuracy - reference):+10.1f}p {seconds:8.1f}  {note}")


def epochs_note(best: Path) -> str:
    from qd.train.checkpoint import load_checkpoint

    payload = load_checkpoint(best)
    hp = payload["hparams"]
    timing = json.loads((best.parent / "timing.json").read_text())
    cpu = f", {timing['cpu_seconds']:.0f} CPU s" if "cpu_seconds" in timing else ""
    return (f"batch {hp['batch_size']}, best epoch {payload['best']['epoch']} of {len(payload['metrics'])}, "
            f"load {timing['load'][0]:.1f}-{timing['load'][1]:.1f}{cpu}")


# The few-shot path's choices, one change at a time from the defaults, tried on the tune partition only.
def tune_variants(few: Path) -> dict[str, tuple[dict, dict]]:
    from qd.train.batches import AffineAugment
    from qd.train.outliers import SyntheticOutliers

    return {
        "  new rows imprinted, then 300 steps": ({}, {"init_from": imprinting(few)}),
        "  new rows imprinted, then 150 steps": ({}, {"init_from": imprinting(few), "FEW_SHOT_STEPS": 150}),
        "  new rows imprinted, stronger augmentation": ({}, {"init_from": imprinting(few), "AffineAugment": partial(
            AffineAugment, max_rotation_deg=15.0, max_scale=0.2, max_shift=0.2)}),
        "  600 steps": ({}, {"FEW_SHOT_STEPS": 600}),
        "  another seed (--seed 1)": ({"seed": 1}, {}),
        "  another seed (--seed 2)": ({"seed": 2}, {}),
        "  from scratch, --seed 1 (no --init-from)": ({"init_from": None, "seed": 1}, {}),
        "  from scratch, --seed 2 (no --init-from)": ({"init_from": None, "seed": 2}, {}),
        "  backbone at 0.1x the head's learning rate": ({}, {"Trainer": discriminative_lr(0.1)}),
        "  backbone at 0.3x the head's learning rate": ({}, {"Trainer": discriminative_lr(0.3)}),
        "  label smoothing 0.1": ({}, {"Trainer": soft_targets(smoothing=0.1)}),
        "  mixup (Beta 0.4)": ({}, {"Trainer": soft_targets(mixup=0.4)}),
        "  LP-FT: 60 steps head only (3x --lr), then 300": ({}, {"Trainer": head_first(60, 3.0)}),
        "  LP-FT, never stopped early (--patience 0)": ({"patience": 0}, {"Trainer": head_first(60, 3.0)}),
        "  backbone at 0.3x the head's LR, --patience 0": ({"patience": 0}, {"Trainer": discriminative_lr(0.3)}),
        "  outlier exposure off (--outlier-exposure 0)": ({"outlier_exposure": 0.0}, {}),
        "  from scratch, outlier exposure off": ({"init_from": None, "outlier_exposure": 0.0}, {}),
        "  outlier exposure 0.5, half a batch of non-drawings (the earlier defaults)": (
            {"outlier_exposure": 0.5}, {"SyntheticOutliers": partial(SyntheticOutliers, share=0.5)}),
        "  outlier exposure 4.0": ({"outlier_exposure": 4.0}, {}),
        "  two batches of synthetic non-drawings a step": (
            {}, {"SyntheticOutliers": partial(SyntheticOutliers, share=2.0)}),
    }


@contextmanager
def patched(constants: dict):
    """Names qd.train.cli and qd.train.loop read (constants, functions) replaced for one run."""
    from qd.train import cli, loop

    saved = {}
    for name, value in constants.items():
        for module in (cli, loop):
            if hasattr(module, name):
                saved[(module, name)] = getattr(module, name)
                setattr(module, name, value)
    try:
        yield
    finally:
        for (module, name), value in saved.items():
            setattr(module, name, value)


def part_partition(work: Path, part: str, only: set[str] | None = None) -> None:
    new = PARTITIONS[part]["new"]
    few = pngs(work, f"{part}-few", new, 0, FEW, seed=11)
    test = pngs(work, f"{part}-test", new, TEST_START, TEST_COUNT, seed=12)
    rows = []

    def trained(name: str, slug: str, options: dict, constants: dict | None = None, note: str = "") -> None:
        if only is not None and slug not in only:
            return
        with patched(constants or {}):
            best, seconds = train_run(work / f"{part}-{slug}", data_dir=few, **options)
        rows.append((name, top1(best, test), seconds, epochs_note(best) + note))

    trained("from scratch, defaults", "scratch", {})
    if only == {"scratch"}:
        return report(f"{part}: from scratch only", rows)
    base, base_data = base_model(work, part)
    trained("--init-from base, defaults (the few-shot path)", "init", {"init_from": base})
    if part == "tune":
        for name, (options, constants) in tune_variants(few).items():
            trained(name, f"tune-{slug(name)}", {"init_from": base, **options}, constants)
        if only is None or {"tune-smoothed-base", "tune-smoothed-base-patience-0"} & only:
            # a base trained to give better embeddings for unseen classes
            with patched({"Trainer": soft_targets(smoothing=0.1)}):
                smoothed, _ = train_run(work / f"{part}-base-smoothed", data_dir=base_data, epochs=3)
            own = (f"; the base's own test top-1 {100 * load_test_top1(smoothed):.1f}% "
                   f"(the default base's {100 * load_test_top1(base):.1f}%)")
            trained("  a base trained with label smoothing 0.1", "tune-smoothed-base", {"init_from": smoothed},
                    note=own)
            trained("  a base trained with label smoothing 0.1, --patience 0", "tune-smoothed-base-patience-0",
                    {"init_from": smoothed, "patience": 0}, note=own)
        for key, (what, data, constants) in better_bases(work, part, base_data).items():
            slugs = {run: f"tune-{key}-base{run}" for run in ("", "-frozen", "-prototypes")}
            variants = {f"{slugs['']}-{slug(name)}": (name, *variant)
                        for name, variant in (rotations_variants(few) if key == "rotations" else {}).items()}
            if only is not None and not (set(slugs.values()) | set(variants)) & only:
                continue
            with patched(constants):
                better, _ = train_run(work / f"{part}-base-{key}", data_dir=data, epochs=3)
            own = f"; the base's own test top-1 {100 * load_test_top1(better):.1f}%"
            if data != base_data:
                own += f" ({100 * upright_top1(better, base_data):.1f}% upright, among the upright classes)"
            own += f" (the default base's {100 * load_test_top1(base):.1f}%)"
            trained(f"  {what}", slugs[""], {"init_from": better}, note=own)
            trained(f"  {what}, linear probe", slugs["-frozen"], {"init_from": better, "freeze_backbone": True})
            if only is None or slugs["-prototypes"] in only:
                best, seconds = prototypes(better, few, work / f"{part}-{slugs['-prototypes']}")
                rows.append((f"  {what}, prototypes only", top1(best, test), seconds, ""))
            for run, (name, options, constants) in variants.items():
                trained(f"  {what}, {name}", run, {"init_from": better, **options}, constants)
    trained("--init-from base --freeze-backbone (linear probe)", "frozen", {"init_from": base, "freeze_backbone": True})
    trained("--init-from base --no-few-shot (usual schedule)", "old", {"init_from": base, "few_shot": False})
    if only is None or "prototypes" in only:
        best, seconds = prototypes(base, few, work / f"{part}-prototypes")
        rows.append(("prototypes only (imprinted rows, no training)", top1(best, test), seconds, ""))
    if only is None or "kept" in only:
        kept_data = merged(work / f"{part}-kept-data", few,
                           pngs(work, f"{part}-base-few", PARTITIONS[part]["base"], 0, FEW, seed=13))
        best, seconds = train_run(work / f"{part}-kept", data_dir=kept_data, init_from=base)
        base_test = base_test_pngs(work, part, base_data)
        kept_test = merged(work / f"{part}-kept-test", test, base_test)
        rows.append(("--init-from base, base's classes kept (+30 each)", top1_on(best, test), seconds,
                     f"{len(PARTITIONS[part]['base']) + len(new)} classes; base's classes "
                     f"{100 * top1_on(best, base_test):.1f}% (the base itself {100 * top1(base, base_test):.1f}%), "
                     f"all {100 * top1_on(best, kept_test):.1f}%"))
    report(f"{part}: {len(new)} new categories x {FEW} PNGs, top-1 on {TEST_COUNT} other PNGs each "
           f"(base: {len(PARTITIONS[part]['base'])} categories x {BASE_ROWS}, 3 epochs)", rows)


def load_test_top1(checkpoint: Path) -> float:
    """The test top-1 qd-train recorded for a run (on its own test split)."""
    from qd.train.checkpoint import load_checkpoint

    return load_checkpoint(checkpoint)["test"]["top1"]


def top1_on(checkpoint: Path, data_dir: Path) -> float:
    """Top-1 over the categories of `data_dir` only (the checkpoint may know more)."""
    import torch

    from qd.data.bitmaps import list_categories, open_bitmaps
    from qd.data.contract import bitmaps_to_input
    from qd.train.checkpoint import load_checkpoint, model_from_checkpoint

    payload = load_checkpoint(checkpoint)
    model = model_from_checkpoint(payload)
    correct = total = 0
    with torch.no_grad():
        for name in list_categories(data_dir):
            rows = np.asarray(open_bitmaps(data_dir / f"{name}.npy"))
            logits = model(torch.from_numpy(bitmaps_to_input(rows, payload["preprocessing"])))
            correct += int((logits.argmax(1) == payload["classes"].index(name)).sum())
            total += len(rows)
    return correct / total


def part_300(work: Path) -> None:
    many = pngs(work, "300-train", ISSUE_14, 0, 300, seed=21)
    test = pngs(work, "report-test", ISSUE_14, TEST_START, TEST_COUNT, seed=12)
    best, seconds = train_run(work / "300-scratch", data_dir=many)
    report(f"{len(ISSUE_14)} categories x 300 PNGs, top-1 on {TEST_COUNT} other PNGs each",
           [("from scratch, defaults", top1(best, test), seconds, epochs_note(best))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="tune,report,300")
    parser.add_argument("--work", type=Path, default=REPO / "artifacts" / "bench-few-shot")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", help="comma-separated run names (scratch, init, frozen, old, prototypes, kept, "
                                       "tune-...): run just those (the rest of the table is left out)")
    args = parser.parse_args()
    import torch

    from qd.machine import cpu

    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu().summary()}, torch threads {args.threads}, load average {os.getloadavg()[0]:.1f} at the start; "
          f"python {sys.version.split()[0]}, torch {torch.__version__}")
    for part in args.parts.split(","):
        if part == "300":
            part_300(args.work)
        else:
            part_partition(args.work, part, set(args.only.split(",")) if args.only else None)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
