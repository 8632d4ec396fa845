"""`qd-train`: a thin typer layer over qd.train.loop.train.

Every option's default is TrainConfig's (train/config.py). torch loads inside the command,
so `qd-train --help` and `--version` print at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from qd import options as opt
from qd.command import QDError, run_app

from .config import SCHEDULES, TrainConfig, default
from .defaults import (ARCH_NAMES, DEFAULT_ARCH, DEFAULT_EPOCHS, DEFAULT_PATIENCE, MAX_AUTO_EPOCHS, MAX_BATCH_SIZE,
                       MIN_BATCH_SIZE, MIN_STEPS, MIN_STEPS_PER_EPOCH)

app = opt.make_app()
# Old spellings, still accepted (hidden) for one release.
ALIASES = {"--data-dir": "--data"}


def _categories(text: Optional[str]) -> Optional[list[str]]:
    if text is None:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise QDError("--categories: no category names given")
    return names


@app.command(cls=opt.aliased(ALIASES), help=opt.describe(
    "Train a small CNN on Quick, Draw! bitmaps into ARTIFACTS/runs/<run>/best.pt and last.pt.",
    "qd-train -d artifacts/data --epochs 3 -o artifacts/runs/first"))
def train_command(
    data: Annotated[Optional[Path], opt.data_option(
        "Folder of <category>.npy bitmap files. Default: ARTIFACTS/data.")] = None,
    categories: Annotated[Optional[str], typer.Option(
        "--categories", "-c", help="Comma-separated categories (default: all in --data).")] = None,
    arch: Annotated[Optional[str], typer.Option("--arch", show_default=False, help=(
        f"Architecture: {', '.join(ARCH_NAMES)}. Default: {DEFAULT_ARCH}, or the --init-from checkpoint's."
    ))] = default("arch"),
    epochs: Annotated[Optional[int], typer.Option("--epochs", "-e", show_default=False, help=(
        f"Maximum number of epochs. Default: {DEFAULT_EPOCHS}, more for small sets (at least {MIN_STEPS} steps "
        f"in all, at most {MAX_AUTO_EPOCHS} epochs)."))] = default("epochs"),
    batch_size: Annotated[Optional[int], opt.batch_size_option(
        f"Global batch size (split across DDP ranks). Default: {MAX_BATCH_SIZE}, halved down to {MIN_BATCH_SIZE} "
        f"until an epoch has {MIN_STEPS_PER_EPOCH} steps.")] = default("batch_size"),
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (AdamW, one-cycle schedule).")] = default("lr"),
    max_per_category: Annotated[Optional[int], opt.max_per_category_option(
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
    device: Annotated[str, opt.device_option()] = default("device"),
    precision: Annotated[str, typer.Option("--precision", help=(
        "auto (bf16 autocast where the hardware has it: AMX CPUs, CUDA), fp32 or bf16."))] = default("precision"),
    workers: Annotated[int, opt.workers_option(
        "Worker processes preparing batches (0: one prefetch thread instead).", min=0)] = default("workers"),
    out: Annotated[Optional[Path], opt.out_option("Run folder. Default: ARTIFACTS/runs/<arch>-<timestamp>.")] = None,
    resume: Annotated[Optional[Path], typer.Option(
        "--resume", metavar="LAST_PT", help="Continue a run from its last.pt (its own settings and data folder, "
                                            "unless --data is given).")] = None,
    init_from: Annotated[Optional[Path], typer.Option(
        "--init-from", metavar="CHECKPOINT", show_default=False,
        help="Start from this qd-train checkpoint's weights: classes it knows keep their outputs, new ones get new "
             "outputs (its architecture is used).")] = None,
    freeze_backbone: Annotated[bool, typer.Option(
        "--freeze-backbone", help="With --init-from: train only the output layer.")] = default("freeze_backbone"),
    augment: Annotated[bool, typer.Option(
        "--augment/--no-augment", help="Random affine augmentation per batch.")] = default("augment"),
    schedule: Annotated[str, typer.Option(
        "--schedule", help=f"Learning-rate schedule: {', '.join(SCHEDULES[:-1])} or {SCHEDULES[-1]}.",
    )] = default("schedule"),
    outlier_exposure: Annotated[float, typer.Option(
        "--outlier-exposure", metavar="WEIGHT", help="Weight of the outlier-exposure loss on synthetic negatives "
                                                     "(scribbles, halves and overlays of drawings); 0: off.",
    )] = default("outlier_exposure"),
    quiet: Annotated[bool, opt.quiet_option()] = default("quiet"),
    artifacts: Annotated[Optional[Path], opt.artifacts_option()] = None,
    version: Annotated[bool, opt.version_option()] = False,
) -> None:
    from qd.data.contract import default_data_dir

    from .loop import train

    config = TrainConfig(
        data_dir=data if data is not None or resume is not None else default_data_dir(),
        categories=_categories(categories),
        arch=arch, epochs=epochs, batch_size=batch_size, lr=lr, max_per_category=max_per_category,
        steps_per_epoch=steps_per_epoch, val_fraction=val_fraction, test_fraction=test_fraction,
        patience=patience, seed=seed, device=device, precision=precision, workers=workers, out=out, resume=resume,
        augment=augment, schedule=schedule, outlier_exposure=outlier_exposure, quiet=quiet,
        init_from=init_from, freeze_backbone=freeze_backbone,
    )
    train(config)


def main() -> None:
    """Console-script entry point: errors become one line and a non-zero exit."""
    run_app(app, interrupted_hint="continue with --resume RUN/last.pt (written at every epoch end)")


if __name__ == "__main__":  # `python -m qd.train.cli`, e.g. under torchrun -m
    main()
