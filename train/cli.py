"""`qd-train`, and the one config of a training run it fills (`TrainConfig`).

The CLI, the Python API (`qd.train.loop.train(TrainConfig(...))`) and `--resume` all go
through `TrainConfig`, a plain dataclass; a checkpoint stores it as `hparams` (plain data), and
a resumed run is rebuilt from there. Its field defaults are the only ones: each qd-train option
takes its default from the field of the same name (`default`), and the parsed options become
the config by name. Nothing here imports torch, so `qd-train --help` and `--version` print at
once; the command loads the training loop (and torch) when it runs.
"""

from __future__ import annotations

import math
import os
import reprlib
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Annotated, Optional

import typer

from qd import options
from qd.command import QDError, run_app
from qd.data import contract
from qd.data.contract import MAX_NPY_ROWS, MAX_WORKERS

ARCH_NAMES = ("seed", "compact")  # qd.train.models.ARCHITECTURES builds them (and checks it has these)
DEFAULT_ARCH = "compact"
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16")  # qd.train.loop.resolve_precision runs them
SCHEDULES = ("onecycle", "cosine", "constant")

# Batch size and epochs, when not given, adapt to the number of training drawings
# (auto_schedule): small sets get smaller batches and more epochs, so a run takes at
# least MIN_STEPS optimizer steps. Measured with bench/own_drawings.py (docs/own-drawings.md).
DEFAULT_EPOCHS = 10            # the fewest epochs a run gets by default
MAX_BATCH_SIZE = 256           # the default batch size once the data is large enough
MIN_BATCH_SIZE = 32
MIN_STEPS_PER_EPOCH = 50       # the default batch halves (down to MIN_BATCH_SIZE) until an epoch has this many steps
MIN_STEPS = 1000               # epochs rise above DEFAULT_EPOCHS until the run has this many steps
MAX_AUTO_EPOCHS = 200
MAX_EPOCHS = 100_000           # --epochs and --patience given (a checkpoint's hparams too)
MAX_SEED = 2**32 - 1           # epoch_seed mixes in 32 bits of the seed
# The outlier-exposure weight on synthetic non-drawings and any --negatives (Hendrycks et al., 2019, used 0.5
# for vision; 2.0 flags the most non-drawings at the same accuracy: docs/open-set.md), and negatives per known
# drawing in a step (with the synthetic non-drawings' whole batch, each step then runs 2.5x the drawings).
OUTLIER_EXPOSURE = 2.0
NEGATIVES_SHARE = 0.5
DEFAULT_PATIENCE = 5           # the fewest epochs without improvement before stopping early by default
PATIENCE_SHARE = 0.25          # ... or this share of the epochs, if more: many short epochs on a tiny, noisy
                               # validation split must not stop a run before the learning rate has peaked

# A few-shot run: --init-from and few training drawings per class (`few_shot`). Its epochs are fitted to
# FEW_SHOT_STEPS optimizer steps instead of at least MIN_STEPS: from a trained model, that many reach the
# accuracy of the long schedule in a quarter to a third of the time. Chosen by measurement on held-out categories
# (bench/few_shot.py, docs/own-drawings.md).
FEW_SHOT_MAX_PER_CLASS = 100   # training drawings per class up to which an --init-from run is few-shot
FEW_SHOT_STEPS = 300           # optimizer steps of a few-shot run (its epochs are fitted to them)


def auto_patience(epochs: int) -> int:
    return max(DEFAULT_PATIENCE, math.ceil(PATIENCE_SHARE * epochs))


def is_few_shot(train_drawings: int, classes: int) -> bool:
    """Whether an --init-from run on this many training drawings is a few-shot one by default."""
    return train_drawings <= FEW_SHOT_MAX_PER_CLASS * classes


def auto_schedule(train_drawings: int, world_size: int = 1, batch_size: int | None = None,
                  epochs: int | None = None, steps_per_epoch: int | None = None,
                  few_shot: bool = False) -> tuple[int, int]:
    """(global batch size, epochs) for a training split of `train_drawings`; a value the user
    gave is kept (and the other one fitted to it). A few-shot run gets FEW_SHOT_STEPS steps."""
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
        if few_shot:
            epochs = min(MAX_AUTO_EPOCHS, -(-FEW_SHOT_STEPS // steps))
        else:
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
    outlier_exposure: float = OUTLIER_EXPOSURE  # weight of the outlier-exposure loss (train/outliers.py); 0 = off
    negatives_dir: Path | None = None        # folder of <category>.npy drawings of none of the classes (qd.data.negatives)
    negatives_share: float = NEGATIVES_SHARE  # negatives per known drawing in a step, with negatives_dir
    max_per_category: int | None = None
    steps_per_epoch: int | None = None       # cap on optimizer steps per epoch (huge datasets, smoke runs)
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    patience: int | None = None              # epochs without val-loss improvement; 0 = never; None: auto_patience
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"                  # auto: bf16 autocast where native (AMX CPU, CUDA), else fp32
    workers: int = 0                         # 0: one prefetch thread; N: N DataLoader worker processes
    out: Path | None = None                  # run folder; default artifacts/runs/<arch>-<timestamp>
    resume: Path | None = None
    init_from: Path | None = None            # start from this checkpoint's weights (qd.train.checkpoint.init_from)
    freeze_backbone: bool = False            # with init_from: train only the output layer
    few_shot: bool | None = None             # with init_from; None: when the data is small (is_few_shot)
    quiet: bool = False

    def __post_init__(self):
        self.check_types()
        if self.data_dir is None and self.resume is None:
            raise QDError("no data folder given (--data-dir)")
        if self.data_dir is not None:
            self.data_dir = Path(self.data_dir)
        if self.out is not None:
            self.out = Path(self.out)
        if self.resume is not None:
            self.resume = Path(self.resume)
        if self.negatives_dir is not None:
            self.negatives_dir = Path(self.negatives_dir)
        if self.init_from is not None:
            self.init_from = Path(self.init_from)
        elif self.arch is None:
            self.arch = DEFAULT_ARCH
        self.validate()

    def check_types(self) -> None:
        """Each field holds a value of its annotated type (a checkpoint's hparams can hold anything):
        whole numbers are ints (not bools), numbers are ints or floats, paths are str or Path."""
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            value = getattr(self, f.name)
            if not _fits(value, hints[f.name]):
                raise QDError(f"--{f.name.replace('_', '-')} must be {_describe_type(hints[f.name])}, "
                              f"got {short_repr(value)}")

    def validate(self) -> None:
        from qd.data.bitmaps import SplitSpec

        if self.freeze_backbone and self.init_from is None:
            raise QDError("--freeze-backbone needs --init-from CHECKPOINT (a backbone to keep)")
        if self.few_shot and self.init_from is None:
            raise QDError("--few-shot needs --init-from CHECKPOINT (a model to start from)")
        if self.arch is not None and self.arch not in ARCH_NAMES:
            raise QDError(f"unknown architecture {self.arch!r} (choose from {', '.join(ARCH_NAMES)})")
        if self.device not in DEVICES:
            raise QDError(f"unknown device {self.device!r} (choose from {', '.join(DEVICES)})")
        if self.precision not in PRECISIONS:
            raise QDError(f"unknown precision {self.precision!r} (choose from {', '.join(PRECISIONS)})")
        if self.schedule not in SCHEDULES:
            raise QDError(f"unknown schedule {self.schedule!r} (choose from {', '.join(SCHEDULES)})")
        for name, low, high in (("epochs", 1, MAX_EPOCHS), ("batch_size", 1, contract.MAX_BATCH_SIZE),
                                ("patience", 0, MAX_EPOCHS), ("workers", 0, MAX_WORKERS),
                                ("steps_per_epoch", 1, MAX_NPY_ROWS), ("max_per_category", 1, MAX_NPY_ROWS),
                                ("seed", 0, MAX_SEED)):
            value = getattr(self, name)
            if value is not None and not low <= value <= high:
                raise QDError(f"--{name.replace('_', '-')} must be {low} to {high:,}, got {short_repr(value)}")
        if not 0.0 <= self.outlier_exposure <= 10.0:  # also refuses NaN
            raise QDError(f"--outlier-exposure must be between 0 and 10, got {short_repr(self.outlier_exposure)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise QDError(f"--lr must be a positive finite number, got {short_repr(self.lr)}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise QDError(f"weight decay must be 0 or a positive finite number, got {short_repr(self.weight_decay)}")
        SplitSpec(self.val_fraction, self.test_fraction)  # both in [0, 1) and below 1 together
        if self.negatives_dir is not None and self.outlier_exposure == 0:
            raise QDError("--negatives needs an --outlier-exposure weight above 0 (the term that uses them)")
        if not 0.0 < self.negatives_share <= 4.0:
            raise QDError(f"negatives_share must be above 0 and at most 4, got {short_repr(self.negatives_share)}")

    def hparams(self) -> dict:
        """Plain data for the checkpoint (paths as strings, so weights_only loading works)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = str(value) if isinstance(value, Path) else value
        out["data_dir"] = str(Path(self.data_dir).resolve())
        if self.negatives_dir is not None:
            out["negatives_dir"] = str(Path(self.negatives_dir).resolve())
        return out

    @classmethod
    def from_hparams(cls, hparams: dict, **overrides) -> "TrainConfig":
        """The config a checkpoint's hparams describe; keys this version no longer has are ignored, and a
        field without a default that neither gives is one QDError."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in hparams.items() if k in known}
        values.update(overrides)
        missing = [f.name for f in fields(cls) if f.name not in values and f.default is MISSING
                   and f.default_factory is MISSING]
        if missing:
            raise QDError(f"no {', '.join(missing)}")
        return cls(**values)


def _fits(value: object, hint: object) -> bool:
    if isinstance(hint, types.UnionType):
        return any(_fits(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if typing.get_origin(hint) is list:
        return isinstance(value, list) and all(_fits(item, typing.get_args(hint)[0]) for item in value)
    if hint is int:
        return type(value) is int
    if hint is float:  # an int a float holds exactly is a number too; a 400-digit one is not
        return type(value) is float or type(value) is int and abs(value) <= 2**53
    if hint is Path:
        return isinstance(value, (str, os.PathLike))
    return type(value) is hint


def _describe_type(hint: object) -> str:
    if isinstance(hint, types.UnionType):
        return " or ".join(_describe_type(arg) for arg in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        return f"a list of {_describe_type(typing.get_args(hint)[0])}s"
    return {type(None): "none", int: "a whole number", float: "a number", Path: "a path", str: "text",
            bool: "true or false", dict: "a mapping"}.get(hint, str(hint))


def short_repr(value: object, limit: int = 40) -> str:
    """`value` for a message, in at most `limit` characters; a huge int is never turned into digits
    (Python refuses past 4,300 of them), a long list never walked whole (reprlib)."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"a {value.bit_length()}-bit number"
    try:
        text = reprlib.repr(value)
    except ValueError:  # a huge int inside a list or dict
        text = f"a {type(value).__name__}"
    return text if len(text) <= limit else text[:limit] + "..."


def default(name: str):
    """TrainConfig's default for field `name` (what qd-train uses when the option is not given)."""
    return TrainConfig.__dataclass_fields__[name].default


# ----------------------------------------------------------------------------- qd-train

app = options.make_app()
# Old spellings, still accepted (hidden) for one release.
ALIASES = {"--data-dir": "--data"}


def _categories(text: Optional[str]) -> Optional[list[str]]:
    if text is None:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise QDError("--categories: no category names given")
    return names


# Each parameter named like a TrainConfig field is passed on as that field.
@app.command(cls=options.aliased(ALIASES), help=options.describe(
    "Train a small CNN on Quick, Draw! bitmaps into ARTIFACTS/runs/<run>/best.pt and last.pt.",
    "qd-train -d artifacts/data --epochs 3 -o artifacts/runs/first"))
def train_command(
    data_dir: Annotated[Optional[Path], options.data_option(
        "Folder of <category>.npy bitmap files. Default: ARTIFACTS/data.")] = None,
    categories: Annotated[Optional[str], typer.Option(
        "--categories", "-c", help="Comma-separated categories (default: all in --data).")] = None,
    arch: Annotated[Optional[str], typer.Option("--arch", show_default=False, help=(
        f"Architecture: {', '.join(ARCH_NAMES)}. Default: {DEFAULT_ARCH}, or the --init-from checkpoint's."
    ))] = default("arch"),
    epochs: Annotated[Optional[int], typer.Option("--epochs", "-e", show_default=False, help=(
        f"Maximum number of epochs. Default: {DEFAULT_EPOCHS}, more for small sets (at least {MIN_STEPS} steps "
        f"in all, at most {MAX_AUTO_EPOCHS} epochs)."))] = default("epochs"),
    batch_size: Annotated[Optional[int], options.batch_size_option(
        f"Global batch size (split across DDP ranks). Default: {MAX_BATCH_SIZE}, halved down to {MIN_BATCH_SIZE} "
        f"until an epoch has {MIN_STEPS_PER_EPOCH} steps.")] = default("batch_size"),
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (AdamW, one-cycle schedule).")] = default("lr"),
    max_per_category: Annotated[Optional[int], options.max_per_category_option(
        "Use at most N drawings per category (the first N rows).")] = default("max_per_category"),
    steps_per_epoch: Annotated[Optional[int], typer.Option(
        "--steps-per-epoch", help="Cap optimizer steps per epoch (each epoch still draws from the whole "
                                  "shuffled split).")] = default("steps_per_epoch"),
    val_fraction: Annotated[float, typer.Option(
        "--val-fraction", help="Share of drawings in the validation split.")] = default("val_fraction"),
    test_fraction: Annotated[float, typer.Option(
        "--test-fraction", help="Share of drawings in the test split.")] = default("test_fraction"),
    patience: Annotated[Optional[int], typer.Option("--patience", show_default=False, help=(
        f"Stop after N epochs without validation-loss improvement (0: never). Default: {DEFAULT_PATIENCE}, or a "
        "quarter of the epochs if more."))] = default("patience"),
    seed: Annotated[int, typer.Option(
        "--seed", help="Seed for initialisation, shuffling, augmentation and dropout.")] = default("seed"),
    device: Annotated[str, options.device_option()] = default("device"),
    precision: Annotated[str, typer.Option("--precision", help=(
        "auto (bf16 autocast where the hardware has it: AMX CPUs, CUDA), fp32 or bf16."))] = default("precision"),
    workers: Annotated[int, options.workers_option(
        "Worker processes preparing batches (0: one prefetch thread instead).", min=0)] = default("workers"),
    out: Annotated[Optional[Path], options.out_option("Run folder. Default: ARTIFACTS/runs/<arch>-<timestamp>.")] = None,
    resume: Annotated[Optional[Path], typer.Option(
        "--resume", metavar="LAST_PT", help="Continue a run from its last.pt (its own settings and data folder, "
                                            "unless --data is given).")] = None,
    init_from: Annotated[Optional[Path], typer.Option(
        "--init-from", metavar="CHECKPOINT", show_default=False,
        help="Start from this qd-train checkpoint's weights: classes it knows keep their outputs, new ones get new "
             "outputs (its architecture is used).")] = None,
    freeze_backbone: Annotated[bool, typer.Option(
        "--freeze-backbone", help="With --init-from: train only the output layer.")] = default("freeze_backbone"),
    few_shot: Annotated[Optional[bool], typer.Option(
        "--few-shot/--no-few-shot", show_default=False, help=(
            f"With --init-from: epochs fitted to {FEW_SHOT_STEPS} steps instead of at least {MIN_STEPS}. "
            f"Default: when there are at most {FEW_SHOT_MAX_PER_CLASS} training drawings per class."))
    ] = default("few_shot"),
    augment: Annotated[bool, typer.Option(
        "--augment/--no-augment", help="Random affine augmentation per batch.")] = default("augment"),
    schedule: Annotated[str, typer.Option(
        "--schedule", help=f"Learning-rate schedule: {', '.join(SCHEDULES[:-1])} or {SCHEDULES[-1]}.",
    )] = default("schedule"),
    outlier_exposure: Annotated[float, typer.Option(
        "--outlier-exposure", metavar="WEIGHT", help=(
            "Weight of the outlier-exposure loss on synthetic non-drawings (scribbles, words, dots, hatching, "
            "lines, paper noise) and on the --negatives drawings; 0: off."))] = default("outlier_exposure"),
    negatives_dir: Annotated[Optional[Path], typer.Option(
        "--negatives", metavar="DIR", show_default=False, help=(
            "Folder of <category>.npy drawings of none of the classes (qd-data fetch --negatives N): the network "
            "learns to be unsure of them (outlier exposure), split like the data.")),
    ] = None,
    quiet: Annotated[bool, options.quiet_option()] = default("quiet"),
    artifacts: Annotated[Optional[Path], options.artifacts_option()] = None,
    version: Annotated[bool, options.version_option()] = False,
) -> None:
    parsed = dict(locals())  # the parsed options, by parameter name: first, before any other name is bound
    from qd.data.contract import default_data_dir

    from .loop import train

    given = {f.name: parsed[f.name] for f in fields(TrainConfig) if f.name in parsed}
    given["categories"] = _categories(categories)
    if data_dir is None and resume is None:
        given["data_dir"] = default_data_dir()
    train(TrainConfig(**given))


def main() -> None:
    """Console-script entry point: errors become one line and a non-zero exit."""
    run_app(app, interrupted_hint="continue with --resume RUN/last.pt (written at every epoch end)")


if __name__ == "__main__":  # `python -m qd.train.cli`, e.g. under torchrun -m
    main()
