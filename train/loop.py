"""The training loop: `train(TrainConfig(...)) -> Path` of the run's best.pt; how a step runs; what a run shows.

Per epoch: reseed (shuffle, augmentation, dropout) from (seed, epoch), train over the
rank's shard of the train split, evaluate the validation split, write last.pt (and
best.pt when validation loss improved), stop early after `patience` epochs without
improvement. At the end the best weights are evaluated on the test split and best.pt
is rewritten with the test metrics.

Because every epoch's randomness is derived from (seed, epoch) and last.pt is written
at each epoch end with the optimizer and scheduler state, a run killed mid-epoch and
resumed from last.pt replays that epoch from its start and ends bit-identical (CPU).

How a step runs on the device: two speed choices that leave the model and its checkpoint unchanged:
- channels_last layout for the conv layers (on CPU and CUDA): measured 1.2x (default
  architecture) to 1.5x (seed architecture) per training step on this project's CPU;
- bfloat16 autocast where the hardware computes bf16 natively (CPUs with AMX, CUDA GPUs
  with bf16): measured 2.3x for the default architecture on an AMX CPU. Weights,
  optimizer state and the saved checkpoint stay float32; evaluation runs in float32, so
  reported metrics are those of the float32 model that gets exported.
`--precision auto` picks bf16 only where it is native; a CPU without it would emulate bf16
and run slower than fp32, so it stays on fp32 there.

What a run shows (`Reporter`): a progress bar per epoch, one line per epoch, a final table;
only rank 0 reports, and `quiet` silences everything (tests, library use).
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import os
import tempfile
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.filesize import decimal as human_size
from rich.table import Table
from rich.text import Text

from qd import __version__
from qd import command
from qd.command import ProgressBar, QDError, first_line, shown
from qd.data.bitmaps import BitmapDataset, SplitSpec
from qd.data.contract import (BEST_CHECKPOINT, CHECKPOINT_FORMAT, DEFAULT_KEPT, DEFAULT_PREPROCESSING, LAST_CHECKPOINT,
                              fit_threshold, runs_dir)
from qd.files import folder_lock
from qd.data.negatives import negatives_changed, negatives_record, open_negatives

from .batches import AffineAugment, BatchLoader, NegativeBatches, ShardedBatches, epoch_seed
from .checkpoint import freeze, init_from, keep_batch_norm, load_checkpoint, load_parent, parent_arch, save_checkpoint
from .cli import FEW_SHOT_STEPS, PRECISIONS, TrainConfig, auto_patience, auto_schedule, is_few_shot
from .distributed import Distributed
from .models import build_model, count_parameters, full_kwargs
from .outliers import SyntheticOutliers, exposure_loss, known_batch_norm

# Options that may differ on --resume (how to run, not what to train).
RUNTIME_OPTIONS = ("device", "workers", "quiet")


def train(config: TrainConfig) -> Path:
    """Train as configured; return the path of best.pt (test metrics included)."""
    dist = Distributed.from_env(config.device)
    trainer = None
    try:
        with contextlib.ExitStack() as held:  # the run folder's lock, until the run has ended
            trainer = Trainer(config, dist, held)
            return trainer.run()
    finally:
        # The trainer sits in reference cycles, so the cyclic collector would free it (and with it the DDP
        # wrapper, whose reducer holds the process group's gloo work) at any later moment: once during
        # interpreter shutdown, which aborted a torchrun rank ("terminate called without an active
        # exception"). Free it now, while the process group still exists, then destroy the group.
        del trainer
        gc.collect()
        dist.close()


def default_run_dir(arch: str) -> Path:
    return runs_dir() / f"{arch}-{datetime.now():%Y%m%d-%H%M%S}"


# ---------------------------------------------------------------- set-up checks

def check_writable(folder: Path) -> None:
    """Create `folder` if needed and prove a file can be written there (then remove it)."""
    if folder.exists() and not folder.is_dir():
        raise QDError(f"{folder}: output folder is a file, not a directory")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".qd-write-test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise QDError(f"{folder}: output folder is not writable ({exc.strerror or exc})") from None


def resume_payload(path: Path) -> dict:
    payload = load_checkpoint(path)
    if "train_state" not in payload or "hparams" not in payload:
        raise QDError(f"{path}: cannot resume from this checkpoint (no training state; resume from a last.pt)")
    return payload


def merged_resume_config(config: TrainConfig, payload: dict) -> TrainConfig:
    """The resumed run's config: its own hparams, with only runtime options (and a moved data
    folder, if one is given; its contents are checked against the checkpoint) from `config`."""
    runtime = {name: getattr(config, name) for name in RUNTIME_OPTIONS}
    if config.data_dir is not None:
        runtime["data_dir"] = config.data_dir
    if config.negatives_dir is not None:  # a moved negatives folder: checked against the checkpoint's record
        if not payload.get("negatives"):
            raise QDError(f"{config.resume}: this run was trained without negatives; resume it without --negatives")
        runtime["negatives_dir"] = config.negatives_dir
    # the network as it was built (every default written down), even if a default has changed since
    runtime["arch_kwargs"] = dict(payload["arch"].get("kwargs", payload["hparams"].get("arch_kwargs", {})))
    return TrainConfig.from_hparams(payload["hparams"], resume=config.resume, out=config.resume.parent, **runtime)


# ---------------------------------------------------------------- how a step runs

def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 matrix products in hardware."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        amx = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private, so probed defensively
        return bool(amx and amx() and torch.backends.mkldnn.is_available())
    return False


def resolve_precision(requested: str, device: torch.device) -> str:
    """'auto' -> 'bf16' where native, else 'fp32'; an explicit choice is checked against the device."""
    if requested not in PRECISIONS:
        raise QDError(f"unknown precision {requested!r} (choose from {', '.join(PRECISIONS)})")
    if requested == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if requested == "bf16" and (device.type not in ("cpu", "cuda") or (device.type == "cuda" and not native_bf16(device))):
        raise QDError(f"--precision bf16: not supported on {device.type} (use fp32)")
    return requested


def autocast(precision: str, device: torch.device):
    """Context for the forward pass and loss of one training step."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def uses_channels_last(device: torch.device) -> bool:
    return device.type in ("cpu", "cuda")


def to_device_layout(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Move `model` to `device` in the layout its steps run fastest in."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if uses_channels_last(device) else model


def input_layout(x: torch.Tensor) -> torch.Tensor:
    """A batch already on its device, in the layout `to_device_layout` gave the model."""
    return x.contiguous(memory_format=torch.channels_last) if uses_channels_last(x.device) else x


def plain_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights as contiguous float32 CPU tensors, whatever layout training used."""
    return {k: v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in model.state_dict().items()}


# ---------------------------------------------------------------- metrics

def evaluate(model: torch.nn.Module, loader: BatchLoader, dist: Distributed) -> dict:
    """Loss, top-1 and top-3 over the whole split (summed over all ranks)."""
    model.eval()
    loss_sum, top1, top3, count = 0.0, 0.0, 0.0, 0.0
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(dist.device, non_blocking=True), y.to(dist.device, non_blocking=True)
            logits = model(input_layout(x))
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            k = min(3, logits.shape[1])
            top = logits.topk(k, dim=1).indices
            top1 += (top[:, 0] == y).sum().item()
            top3 += (top == y[:, None]).any(dim=1).sum().item()
            count += len(y)
    loss_sum, top1, top3, count = dist.all_sum([loss_sum, top1, top3, count])
    if count == 0:
        return {"loss": float("nan"), "top1": 0.0, "top3": 0.0, "count": 0}
    return {"loss": loss_sum / count, "top1": top1 / count, "top3": top3 / count, "count": int(count)}


def max_logits(model: torch.nn.Module, loader: BatchLoader, device: torch.device) -> np.ndarray:
    """The largest logit of every drawing `loader` yields: the score of the rule qd-export writes (max_logit)."""
    model.eval()
    scores = [np.zeros(0, np.float32)]
    with torch.no_grad():
        for x, _ in loader:
            scores.append(model(input_layout(x.to(device, non_blocking=True))).max(dim=1).values.float().cpu().numpy())
    return np.concatenate(scores)


# ---------------------------------------------------------------- the trainer

class Trainer:
    def __init__(self, config: TrainConfig, dist: Distributed, held: contextlib.ExitStack):
        """`held` keeps the run folder's writer lock (qd.files.folder_lock) until the caller closes it at
        the run's end. Only rank 0 writes the folder, so only rank 0 takes it; a folder another run is
        writing is refused at once: waiting would only end in `already holds a run`, or in resuming
        from a state the other run left, neither of which was asked for."""
        self.dist = dist
        if config.resume is not None and dist.is_main and config.resume.parent.is_dir():
            held.enter_context(folder_lock(config.resume.parent, wait=False))  # before last.pt is read
        self.resume = resume_payload(config.resume) if config.resume else None
        if self.resume is not None:
            config = merged_resume_config(config, self.resume)
        # the checkpoint records the precision actually used, not "auto"
        config = replace(config, precision=resolve_precision(config.precision, dist.device))
        self.config = config
        self.report = Reporter(enabled=dist.is_main and not config.quiet)
        self.preprocessing = dict(DEFAULT_PREPROCESSING)

        parent = None  # read first: a file that is no checkpoint is refused before anything is written
        if config.init_from is not None and self.resume is None:
            parent = load_parent(config.init_from)
            arch, arch_kwargs = parent_arch(config.init_from, parent, config.arch, config.arch_kwargs)
            config = self.config = replace(config, arch=arch, arch_kwargs=arch_kwargs)

        self.dataset = BitmapDataset(config.data_dir, config.categories, config.max_per_category)
        if self.resume is not None:
            self._check_same_data()
        self.split = SplitSpec(config.val_fraction, config.test_fraction)
        self.indices = self.dataset.split_indices(self.split)
        for name in ("train", "val"):
            if len(self.indices[name]) == 0:
                raise QDError(f"{config.data_dir}: the {name} split is empty "
                              f"({len(self.dataset)} drawings; use more data or other fractions)")
        if self.dataset.num_classes < 2:
            raise QDError(f"{config.data_dir}: only one category ({self.dataset.classes[0]}); "
                          "a classifier needs at least two")
        if config.few_shot is None:  # recorded in the checkpoint, so --resume keeps it
            few_shot = config.init_from is not None and is_few_shot(len(self.indices["train"]),
                                                                    self.dataset.num_classes)
            config = self.config = replace(config, few_shot=few_shot)
        self.negatives, self.negative_splits, self.negatives_record = self._open_negatives()
        # Batch size and epochs the user left open are fitted to the data (the checkpoint records the result).
        self.chosen = {name: None for name in ("batch_size", "epochs")}
        if config.batch_size is None or config.epochs is None:
            batch_size, epochs = auto_schedule(len(self.indices["train"]), dist.world_size, config.batch_size,
                                               config.epochs, config.steps_per_epoch, config.few_shot)
            self.chosen = {"batch_size": batch_size if config.batch_size is None else None,
                           "epochs": epochs if config.epochs is None else None}
            config = self.config = replace(config, batch_size=batch_size, epochs=epochs)
        if config.patience is None:
            config = self.config = replace(config, patience=auto_patience(config.epochs))

        self.run_dir = config.out or default_run_dir(config.arch)
        if dist.is_main:
            check_writable(self.run_dir)
            if self.resume is None:
                held.enter_context(folder_lock(self.run_dir, wait=False))  # before the check, till the run ends
                if any((self.run_dir / n).exists() for n in (BEST_CHECKPOINT, LAST_CHECKPOINT)):
                    raise QDError(f"{self.run_dir}: already holds a run (use --resume "
                                  f"{self.run_dir / LAST_CHECKPOINT} or another --out)")

        torch.manual_seed(config.seed)
        model = build_model(config.arch, self.dataset.num_classes, **config.arch_kwargs)
        # The parent checkpoint as this run records it (a resumed run carries its own record on).
        self.parent = dict(self.resume["parent"]) if self.resume is not None and self.resume.get("parent") else None
        if parent is not None:
            self.parent = init_from(model, config.init_from, parent, self.dataset.classes, config.freeze_backbone)
        elif config.freeze_backbone:
            freeze(model)
        self.model = to_device_layout(model, dist.device)
        self.params = count_parameters(self.model)
        self.net = self.model
        if dist.enabled:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)

        self.train_loader = self._loader("train", shuffle=True)
        self.val_loader = self._loader("val", shuffle=False)
        self.negative_loader = self._negative_loader()
        trained = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trained, lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = self._scheduler(steps_per_epoch=len(self.train_loader))
        self.augment = AffineAugment() if config.augment else None
        self.outliers = SyntheticOutliers() if config.outlier_exposure > 0 else None  # with or without --negatives

        self.metrics: list[dict] = []
        self.best: dict | None = None
        self.start_epoch = 1
        if self.resume is not None:
            self._restore(self.resume)

    # -- construction helpers

    def _check_same_data(self) -> None:
        saved = self.resume.get("data") or {}
        now = self.dataset.fingerprint()
        if saved.get("categories") != now["categories"] or saved.get("counts") != now["counts"]:
            raise QDError(f"{self.config.resume}: the data in {self.config.data_dir} differs from the data "
                          "this run was trained on (categories or counts changed)")

    def _open_negatives(self) -> tuple[BitmapDataset | None, dict[str, np.ndarray] | None, dict | None]:
        """The --negatives folder (checked against the data, and on resume against the checkpoint's record),
        the indices of its splits and the record the checkpoint keeps of it."""
        folder = self.config.negatives_dir
        if folder is None:
            return None, None, None
        saved = self.resume.get("negatives") if self.resume is not None else None
        if saved:
            problem = negatives_changed(saved, folder)
            if problem:
                raise QDError(f"{problem}; --resume {self.config.resume} needs the negatives it was trained with")
        negatives = open_negatives(folder, self.dataset)
        splits = negatives.split_indices(self.split)
        if len(splits["train"]) == 0:
            raise QDError(f"{folder}: the train split of the negatives is empty ({len(negatives)} drawings)")
        return negatives, splits, negatives_record(negatives, splits)

    @property
    def per_rank_batch(self) -> int:
        """The batch each rank runs: the run's batch size shared out over the ranks (at least 1)."""
        return max(1, -(-self.config.batch_size // self.dist.world_size))

    def _negative_loader(self) -> BatchLoader | None:
        """One batch of negatives per training step, a share of the (per-rank) batch size."""
        if self.negatives is None:
            return None
        per_step = max(1, round(self.per_rank_batch * self.config.negatives_share))
        batches = NegativeBatches(self.negative_splits["train"], per_step, steps=len(self.train_loader),
                                  seed=self.config.seed, rank=self.dist.rank)
        return BatchLoader(self.negatives, batches, self.preprocessing)

    def _val_negatives_flagged(self) -> float | None:
        """The share of the validation negatives the open-set rule would flag at the threshold keeping
        DEFAULT_KEPT of the known validation drawings, as qd-export fits it; None without negatives.
        Every rank scores both whole splits (they are small), so all ranks agree."""
        if self.negatives is None or len(self.negative_splits["val"]) == 0:
            return None

        def scores(dataset: BitmapDataset, indices: np.ndarray) -> np.ndarray:
            loader = BatchLoader(dataset, ShardedBatches(indices, self.per_rank_batch, False), self.preprocessing)
            return max_logits(self.model, loader, self.dist.device)

        threshold = fit_threshold(scores(self.dataset, self.indices["val"]), DEFAULT_KEPT)
        return float((scores(self.negatives, self.negative_splits["val"]) < threshold).mean())

    def _loader(self, split: str, shuffle: bool) -> BatchLoader:
        batches = ShardedBatches(self.indices[split], self.per_rank_batch, shuffle, seed=self.config.seed,
                                 rank=self.dist.rank, world_size=self.dist.world_size,
                                 max_batches=self.config.steps_per_epoch if shuffle else None)
        workers = self.config.workers if shuffle else 0
        return BatchLoader(self.dataset, batches, self.preprocessing, workers=workers)

    def _scheduler(self, steps_per_epoch: int):
        total = self.config.epochs * steps_per_epoch
        if self.config.schedule == "onecycle" and total >= 4:
            # OneCycleLR divides by its warm-up length in steps (pct_start * total - 1): keep it >= 1
            return torch.optim.lr_scheduler.OneCycleLR(self.optimizer, max_lr=self.config.lr, total_steps=total,
                                                       pct_start=max(0.25, 2 / total))
        if self.config.schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=total)
        return torch.optim.lr_scheduler.ConstantLR(self.optimizer, factor=1.0, total_iters=0)  # or too few steps

    def _restore(self, payload: dict) -> None:
        state = payload["train_state"]
        self.model.load_state_dict(payload["state_dict"])  # fits: load_checkpoint checked it against the arch
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["rng"]["torch"])
        except Exception as exc:  # torch's loaders raise what they meet: KeyError, ValueError, RuntimeError, ...
            raise QDError(f"{self.config.resume}: damaged checkpoint: train_state (optimizer, scheduler, random "
                          f"state) does not fit this run ({type(exc).__name__}: {first_line(exc, 120)})") from None
        self.metrics = list(payload.get("metrics", []))
        self.best = dict(payload["best"]) if payload.get("best") else None
        self.start_epoch = int(state["epoch"]) + 1

    # -- checkpoints

    def _payload(self, best: dict | None, test: dict | None) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "classes": list(self.dataset.classes),
            "arch": {"name": self.config.arch, "kwargs": full_kwargs(self.config.arch, self.config.arch_kwargs)},
            "preprocessing": dict(self.preprocessing),
            "split": self.split.to_dict(),
            "data": {"dir": str(self.dataset.data_dir.resolve()), **self.dataset.fingerprint()},
            "hparams": self.config.hparams(),
            "metrics": [dict(m) for m in self.metrics],
            "best": dict(best) if best else {},
            "test": dict(test) if test else {},
            "versions": {"torch": str(torch.__version__), "quickdraw-edge": str(__version__)},
            "params": self.params,
            **({"parent": self.parent} if self.parent is not None else {}),
            **({"negatives": self.negatives_record} if self.negatives_record is not None else {}),
            "state_dict": plain_state_dict(self.model),
        }

    def _save_last(self, epoch: int) -> None:
        payload = self._payload(self.best, None)
        payload["train_state"] = {
            "epoch": epoch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {"torch": torch.get_rng_state()},
        }
        save_checkpoint(payload, self.run_dir / LAST_CHECKPOINT)

    # -- the loop

    def _train_epoch(self, epoch: int) -> dict:
        cfg, dev = self.config, self.dist.device
        self.train_loader.set_epoch(epoch)
        torch.manual_seed(epoch_seed(cfg.seed, epoch, 1, self.dist.rank))  # dropout
        aug_rng = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch, 2, self.dist.rank))
        background, ink = self.paper_and_ink()
        self.net.train()
        if cfg.freeze_backbone:
            keep_batch_norm(self.model)
        loss_sum, seen = 0.0, 0
        if self.negative_loader is not None:
            self.negative_loader.set_epoch(epoch)
        negatives = self.negative_loader if self.negative_loader is not None else itertools.repeat(None)
        start = time.perf_counter()
        with self.report.epoch_progress(epoch, cfg.epochs, self.train_loader.num_samples) as advance:
            for (x, y), negative in zip(self.train_loader, negatives):
                x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
                if negative is not None:  # real negatives ride after the known drawings, augmented alike
                    x = torch.cat([x, negative[0].to(dev, non_blocking=True)])
                if self.augment is not None:
                    x = self.augment(x, aug_rng, background)
                with autocast(cfg.precision, dev):
                    loss = self._loss(x, y, aug_rng, background, ink)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self.scheduler.step()
                loss_sum += loss.item() * len(y)
                seen += len(y)
                advance(len(y))
        train_seconds = time.perf_counter() - start
        loss_sum, seen_all = self.dist.all_sum([loss_sum, float(seen)])
        val = evaluate(self.net, self.val_loader, self.dist)
        negatives_flagged = self._val_negatives_flagged()
        return {
            "epoch": epoch,
            "train_loss": loss_sum / max(seen_all, 1),
            "val_loss": val["loss"], "val_top1": val["top1"], "val_top3": val["top3"], "val_count": val["count"],
            **({"val_negatives_flagged": negatives_flagged} if negatives_flagged is not None else {}),
            "lr": self.optimizer.param_groups[0]["lr"],
            "samples": int(seen_all),
            "samples_per_s": seen_all / train_seconds if train_seconds > 0 else 0.0,
            "seconds": time.perf_counter() - start,
        }

    def paper_and_ink(self) -> tuple[float, float]:
        """The model-input values of blank paper (level 0) and full ink (level 255) under the run's
        preprocessing: what augmentation fills with and synthetic non-drawings are drawn in."""
        mean, std = self.preprocessing.get("mean", 0.0), self.preprocessing.get("std", 1.0)
        return (0.0 - mean) / std, (255 * self.preprocessing["scale"] - mean) / std

    def _loss(self, x, y, rng: torch.Generator, background: float, ink: float) -> torch.Tensor:
        """`x`: the known drawings (labels `y`), then any real negatives."""
        cfg = self.config
        if self.outliers is not None:
            made = self.outliers(x[: len(y)], rng, background, ink)
            if self.augment is not None:  # warped like the drawings: crisp edges alone must not tell them apart
                made = self.augment(made, rng, background)
            x = torch.cat([x, made])
        if len(x) == len(y):
            return F.cross_entropy(self.net(input_layout(x)), y)
        with known_batch_norm(self.model, len(y)):  # negatives never move the statistics drawings are normalised with
            logits = self.net(input_layout(x))
        known = F.cross_entropy(logits[: len(y)], y)
        return known + cfg.outlier_exposure * exposure_loss(logits[len(y):])

    def _epochs_since_best(self) -> int:
        return 0 if self.best is None else len(self.metrics) - self.best["epoch"]

    def run(self) -> Path:
        cfg = self.config
        resumed_from = self.start_epoch - 1 if self.resume is not None else None
        self.report.start(run_dir=self.run_dir, arch=cfg.arch, params=self.params, classes=self.dataset.num_classes,
                          train=len(self.indices["train"]), val=len(self.indices["val"]),
                          test=len(self.indices["test"]), device=str(self.dist.device), precision=cfg.precision,
                          world_size=self.dist.world_size, resumed_from=resumed_from, chosen=self.chosen,
                          parent=self.parent and {"path": self.parent["path"], "kept": self.parent["kept"],
                                                  "frozen": self.parent["frozen_backbone"]},
                          few_shot=bool(self.chosen["epochs"]) and cfg.few_shot,
                          negatives=self.negatives_record and {
                              **self.negatives_record, "weight": cfg.outlier_exposure,
                              "per_step": self.negative_loader.batches.per_step * self.dist.world_size})
        started = time.perf_counter()
        stopped_early = False
        for epoch in range(self.start_epoch, cfg.epochs + 1):
            if cfg.patience and self._epochs_since_best() >= cfg.patience:
                stopped_early = True
                break
            m = self._train_epoch(epoch)
            self.metrics.append(m)
            improved = self.best is None or m["val_loss"] < self.best["val_loss"]
            if improved:
                self.best = {"epoch": epoch, "val_loss": m["val_loss"], "val_top1": m["val_top1"],
                             "val_top3": m["val_top3"], "train_loss": m["train_loss"]}
            if self.dist.is_main:
                if improved:
                    save_checkpoint(self._payload(self.best, None), self.run_dir / BEST_CHECKPOINT)
                self._save_last(epoch)
            self.dist.barrier()
            recent = [r["seconds"] for r in self.metrics[-3:]]
            seconds_left = sum(recent) / len(recent) * (cfg.epochs - epoch)
            self.report.epoch_line(m, cfg.epochs, improved, seconds_left)
        return self._finish(started, stopped_early)

    def _finish(self, started: float, stopped_early: bool) -> Path:
        best_path = self.run_dir / BEST_CHECKPOINT
        if self.dist.is_main:
            best_payload = load_checkpoint(best_path)
            state = best_payload["state_dict"]
        else:
            state = None
        state = self._broadcast_state(state)
        self.model.load_state_dict(state)
        test = evaluate(self.net, self._loader("test", shuffle=False), self.dist)
        test = {"top1": test["top1"], "top3": test["top3"], "loss": test["loss"], "count": test["count"]}
        if self.dist.is_main:
            payload = self._payload(self.best, test)
            save_checkpoint(payload, best_path)
            size = sum(v.numel() * v.element_size() for v in payload["state_dict"].values())
            self.report.summary(run_dir=self.run_dir, best=self.best, test=test, params=self.params,
                                size_bytes=size, seconds=time.perf_counter() - started,
                                stopped_early=stopped_early, epochs_run=len(self.metrics),
                                classes=self.dataset.num_classes)
        self.dist.barrier()
        return best_path

    def _broadcast_state(self, state: dict | None) -> dict:
        if not self.dist.enabled:
            return state
        box = [state]
        torch.distributed.broadcast_object_list(box, src=0)
        return {k: v.to(self.dist.device) for k, v in box[0].items()}


# ---------------------------------------------------------------- what a run shows

def near_chance(top1: float, classes: int) -> bool:
    """Top-1 that says the network has learned (almost) nothing: below twice chance, or below
    chance plus 15 points where twice chance is more than that (few classes)."""
    chance = 1.0 / classes
    return top1 < min(2.0 * chance, chance + 0.15)


def fmt_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Reporter:
    def __init__(self, enabled: bool, console: Console | None = None):
        self.enabled = enabled
        self.console = console or command.console
        self._started = time.perf_counter()

    def print(self, *args, **kwargs) -> None:
        if self.enabled:
            self.console.print(*args, soft_wrap=True, **kwargs)

    def start(self, *, run_dir: Path, arch: str, params: int, classes: int, train: int, val: int, test: int,
              device: str, precision: str, world_size: int, resumed_from: int | None,
              chosen: dict | None = None, parent: dict | None = None, few_shot: bool = False,
              negatives: dict | None = None) -> None:
        if not self.enabled:
            return
        where = f"{device}" + (f" x {world_size} ranks" if world_size > 1 else "")
        where += " (bf16 autocast)" if precision == "bf16" else ""
        self.print(Text.assemble(("qd-train", "bold"), " ", shown(arch),
                                 f", {params:,} parameters, {classes} classes, on {where}"), highlight=False)
        self.print(f"drawings: {train:,} train / {val:,} val / {test:,} test", highlight=False)
        self.print(Text.assemble("run folder: ", shown(run_dir)), highlight=False)
        picked = [f"{'batch size' if k == 'batch_size' else k} {v}" for k, v in (chosen or {}).items() if v]
        if picked:
            self.print(f"{' and '.join(picked)}, chosen for {train:,} training drawings "
                       "(--batch-size, --epochs to set)", highlight=False)
        if parent is not None:
            self.print(Text.assemble("initialised from ", shown(parent["path"]),
                                     f": {parent['kept']} of {classes} classes keep their outputs",
                                     ", backbone frozen" if parent.get("frozen") else ""), highlight=False)
        if few_shot:
            self.print(f"few-shot: epochs fitted to {FEW_SHOT_STEPS} steps, for few drawings per class and "
                       "--init-from (--no-few-shot for the usual schedule)", highlight=False)
        if negatives is not None:
            splits = negatives["splits"]
            self.print(Text.assemble(f"negatives: {len(negatives['categories'])} categories from ", shown(negatives["dir"]),
                                     f", {splits['train']:,} train / {splits['val']:,} val / {splits['test']:,} test; "
                                     f"{negatives['per_step']} a step, outlier-exposure weight {negatives['weight']:g}"),
                       highlight=False)
        if resumed_from is not None:
            self.print(f"resumed after epoch {resumed_from}")

    @contextlib.contextmanager
    def epoch_progress(self, epoch: int, epochs: int, samples: int):
        """Yields advance(n) to call once per step with the step's samples: a bar on the Reporter's
        console, only when it is a terminal (a bar only makes sense there) and not quiet."""
        with ProgressBar(f"epoch {epoch}/{epochs}", total=samples, unit="samples", console=self.console,
                         stdout=self.console, enabled=self.enabled and self.console.is_terminal) as bar:
            yield bar.advance

    def epoch_line(self, m: dict, epochs: int, improved: bool, seconds_left: float) -> None:
        mark = " [green]best[/]" if improved else ""
        negatives = (f"negatives flagged {100 * m['val_negatives_flagged']:5.1f}%  "
                     if "val_negatives_flagged" in m else "")
        self.print(
            f"epoch {m['epoch']:>2}/{epochs}  loss {m['train_loss']:.3f}  val loss {m['val_loss']:.3f}  "
            f"val top-1 {100 * m['val_top1']:5.2f}%  {negatives}{m['samples_per_s']:>6,.0f} samples/s  "
            f"left {fmt_duration(seconds_left)}{mark}",
            highlight=False,
        )

    def summary(self, *, run_dir: Path, best: dict, test: dict, params: int, size_bytes: int,
                seconds: float, stopped_early: bool, epochs_run: int, classes: int) -> None:
        if not self.enabled:
            return
        table = Table(title="qd-train result", show_header=True, header_style="bold")
        table.add_column("")
        table.add_column("value", justify="right")
        table.add_row("best epoch", f"{best['epoch']} of {epochs_run}" + (" (stopped early)" if stopped_early else ""))
        table.add_row("val top-1 / top-3", f"{100 * best['val_top1']:.2f}% / {100 * best['val_top3']:.2f}%")
        table.add_row("test top-1 / top-3", f"{100 * test['top1']:.2f}% / {100 * test['top3']:.2f}%")
        table.add_row("val / test loss", f"{best['val_loss']:.4f} / {test['loss']:.4f}")
        table.add_row("time", fmt_duration(seconds))
        table.add_row("parameters", f"{params:,} ({human_size(size_bytes)} fp32)")
        table.add_row("best checkpoint", shown(run_dir / BEST_CHECKPOINT))
        if near_chance(best["val_top1"], classes):
            table.add_row(Text("warning", style="bold red"),
                          Text(f"val top-1 is near chance ({100 / classes:.1f}% for {classes} classes): the network "
                               "has not learned; train longer (--epochs), on more drawings, or with a smaller "
                               "--batch-size", style="red"))
        self.console.print(table)
