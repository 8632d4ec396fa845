"""One plain config for a training run (nanoGPT-style: a dataclass, no magic).

The CLI, the Python API and `--resume` all go through `TrainConfig`; a checkpoint
stores it as `hparams` (plain data), and a resumed run is rebuilt from there. Its
defaults are the only ones: qd-train's options read them (`default`). Torch-free, so
`qd-train --help` prints without loading torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path

from qd.command import QDError
from qd.data.contract import MAX_WORKERS

from .defaults import ARCH_NAMES, DEFAULT_ARCH, PRECISIONS

DEVICES = ("auto", "cpu", "cuda", "mps")
SCHEDULES = ("onecycle", "cosine", "constant")

# Batch size and epochs, when not given, adapt to the number of training drawings
# (auto_schedule): small sets get smaller batches and more epochs, so a run takes at
# least MIN_STEPS optimizer steps. Measured with bench/own_drawings.py (docs/own-drawings.md).
from .defaults import (DEFAULT_EPOCHS, DEFAULT_PATIENCE, MAX_AUTO_EPOCHS, MAX_BATCH_SIZE,  # noqa: E402,F401
                       MIN_BATCH_SIZE, MIN_STEPS, MIN_STEPS_PER_EPOCH)
PATIENCE_SHARE = 0.25          # ... or this share of the epochs, if more: many short epochs on a tiny, noisy
                               # validation split must not stop a run before the learning rate has peaked


def auto_patience(epochs: int) -> int:
    return max(DEFAULT_PATIENCE, math.ceil(PATIENCE_SHARE * epochs))


def auto_schedule(train_drawings: int, world_size: int = 1, batch_size: int | None = None,
                  epochs: int | None = None, steps_per_epoch: int | None = None) -> tuple[int, int]:
    """(global batch size, epochs) for a training split of `train_drawings`; a value the user
    gave is kept (and the other one fitted to it)."""
    if batch_size is None:
        batch_size = MAX_BATCH_SIZE
        while batch_size > MIN_BATCH_SIZE and train_drawings < batch_size * MIN_STEPS_PER_EPOCH:
            batch_size //= 2
    if epochs is None:
        per_rank_batch = -(-batch_size // world_size)
        per_rank_drawings = -(-train_drawings // world_size)
        steps = max(1, -(-per_rank_drawings // per_rank_batch))
        if steps_per_epoch is not None:
            steps = min(steps, steps_per_epoch)
        epochs = min(MAX_AUTO_EPOCHS, max(DEFAULT_EPOCHS, -(-MIN_STEPS // steps)))
    return batch_size, epochs


@dataclass
class TrainConfig:
    data_dir: Path | None                    # None only with `resume` (then the run's own data folder)
    categories: list[str] | None = None      # None: every <category>.npy in data_dir
    arch: str | None = None                  # None: DEFAULT_ARCH, or the --init-from checkpoint's
    arch_kwargs: dict = field(default_factory=dict)
    epochs: int | None = None                # None: auto_schedule (DEFAULT_EPOCHS or more for small sets)
    batch_size: int | None = None            # global batch (split across DDP ranks); None: auto_schedule
    lr: float = 3e-3                         # peak learning rate (AdamW)
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    augment: bool = True                     # random affine per batch (train only)
    label_smoothing: float = 0.0
    outlier_exposure: float = 0.0            # weight of the loss on synthetic negatives (train/outliers.py); 0 = off
    max_per_category: int | None = None
    steps_per_epoch: int | None = None       # cap on optimizer steps per epoch (huge datasets, smoke runs)
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0                      # the project's one split; change only on purpose
    patience: int | None = None              # epochs without val-loss improvement; 0 = never; None: auto_patience
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"                  # auto: bf16 autocast where native (AMX CPU, CUDA), else fp32
    workers: int = 0                         # 0: one prefetch thread; N: N DataLoader worker processes
    out: Path | None = None                  # run folder; default artifacts/runs/<arch>-<timestamp>
    resume: Path | None = None
    init_from: Path | None = None            # start from this checkpoint's weights (qd.train.transfer)
    freeze_backbone: bool = False            # with init_from: train only the output layer
    quiet: bool = False

    def __post_init__(self):
        if self.data_dir is None and self.resume is None:
            raise QDError("no data folder given (--data-dir)")
        if self.data_dir is not None:
            self.data_dir = Path(self.data_dir)
        if self.out is not None:
            self.out = Path(self.out)
        if self.resume is not None:
            self.resume = Path(self.resume)
        if self.init_from is not None:
            self.init_from = Path(self.init_from)
        elif self.arch is None:
            self.arch = DEFAULT_ARCH
        self.validate()

    def validate(self) -> None:
        if self.freeze_backbone and self.init_from is None:
            raise QDError("--freeze-backbone needs --init-from CHECKPOINT (a backbone to keep)")
        if self.arch is not None and self.arch not in ARCH_NAMES:
            raise QDError(f"unknown architecture {self.arch!r} (choose from {', '.join(ARCH_NAMES)})")
        if self.device not in DEVICES:
            raise QDError(f"unknown device {self.device!r} (choose from {', '.join(DEVICES)})")
        if self.precision not in PRECISIONS:
            raise QDError(f"unknown precision {self.precision!r} (choose from {', '.join(PRECISIONS)})")
        if self.schedule not in SCHEDULES:
            raise QDError(f"unknown schedule {self.schedule!r} (choose from {', '.join(SCHEDULES)})")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise QDError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("patience", "workers"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise QDError(f"--{name} must be 0 or more, got {getattr(self, name)}")
        if not 0.0 <= self.outlier_exposure <= 10.0:  # also refuses NaN
            raise QDError(f"--outlier-exposure must be between 0 and 10, got {self.outlier_exposure}")
        if self.workers > MAX_WORKERS:
            raise QDError(f"--workers must be at most {MAX_WORKERS}, got {self.workers}")
        if not self.lr > 0:
            raise QDError(f"--lr must be positive, got {self.lr}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise QDError(f"--steps-per-epoch must be at least 1, got {self.steps_per_epoch}")
        if self.max_per_category is not None and self.max_per_category < 1:
            raise QDError(f"--max-per-category must be at least 1, got {self.max_per_category}")

    def hparams(self) -> dict:
        """Plain data for the checkpoint (paths as strings, so weights_only loading works)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = str(value) if isinstance(value, Path) else value
        out["data_dir"] = str(Path(self.data_dir).resolve())
        return out

    @classmethod
    def from_hparams(cls, hparams: dict, **overrides) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in hparams.items() if k in known}
        values.update(overrides)
        return cls(**values)


def default(name: str):
    """TrainConfig's default for field `name` (what qd-train uses when the option is not given)."""
    return TrainConfig.__dataclass_fields__[name].default
