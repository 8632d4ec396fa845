"""`qd-train`: a thin typer layer over qd.train.loop.train."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from qd.data.console import run_app
from qd.data.errors import QDError
from qd.data.paths import default_data_dir

from .config import (DEFAULT_EPOCHS, DEFAULT_PATIENCE, MAX_AUTO_EPOCHS, MAX_BATCH_SIZE, MIN_BATCH_SIZE, MIN_STEPS, MIN_STEPS_PER_EPOCH,
                     TrainConfig)
from .loop import train
from .models import ARCHITECTURES, DEFAULT_ARCH

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False,
                  help="Train a small CNN on Quick, Draw! bitmaps into artifacts/runs/<run>/best.pt and last.pt.")


def _categories(text: Optional[str]) -> Optional[list[str]]:
    if text is None:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise QDError("--categories: no category names given")
    return names


@app.command()
def train_command(
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", show_default=False,
                                            help="Folder of <category>.npy bitmap files. Default: $QD_ARTIFACTS/data or artifacts/data."),
    categories: Optional[str] = typer.Option(None, "--categories", help="Comma-separated categories (default: all in --data-dir)."),
    arch: Optional[str] = typer.Option(None, "--arch", show_default=False,
                                       help=f"Architecture: {', '.join(ARCHITECTURES)}. Default: {DEFAULT_ARCH}, "
                                            "or the --init-from checkpoint's."),
    epochs: Optional[int] = typer.Option(
        None, "--epochs", show_default=False,
        help=f"Maximum number of epochs. Default: {DEFAULT_EPOCHS}, more for small sets (at least {MIN_STEPS} steps in all, "
             f"at most {MAX_AUTO_EPOCHS} epochs)."),
    batch_size: Optional[int] = typer.Option(
        None, "--batch-size", show_default=False,
        help=f"Global batch size (split across DDP ranks). Default: {MAX_BATCH_SIZE}, halved down to {MIN_BATCH_SIZE} "
             f"until an epoch has {MIN_STEPS_PER_EPOCH} steps."),
    lr: float = typer.Option(3e-3, "--lr", help="Peak learning rate (AdamW, one-cycle schedule)."),
    max_per_category: Optional[int] = typer.Option(None, "--max-per-category", help="Use at most N drawings per category (the first N rows)."),
    steps_per_epoch: Optional[int] = typer.Option(None, "--steps-per-epoch", help="Cap optimizer steps per epoch (each epoch still draws from the whole shuffled split)."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="Share of drawings in the validation split."),
    test_fraction: float = typer.Option(0.1, "--test-fraction", help="Share of drawings in the test split."),
    patience: Optional[int] = typer.Option(
        None, "--patience", show_default=False,
        help=f"Stop after N epochs without validation-loss improvement (0: never). Default: {DEFAULT_PATIENCE}, or a "
             f"quarter of the epochs if more."),
    seed: int = typer.Option(0, "--seed", help="Seed for initialisation, shuffling, augmentation and dropout."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps."),
    precision: str = typer.Option("auto", "--precision", help="auto (bf16 autocast where the hardware has it: AMX CPUs, CUDA), fp32 or bf16."),
    workers: int = typer.Option(0, "--workers", help="0: gather batches in a prefetch thread; N: N loader processes."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default: artifacts/runs/<arch>-<timestamp>)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue a run from its last.pt (its own settings and data folder, unless --data-dir is given)."),
    init_from: Optional[Path] = typer.Option(
        None, "--init-from", metavar="CHECKPOINT", show_default=False,
        help="Start from this qd-train checkpoint's weights: classes it knows keep their outputs, new ones get new "
             "outputs (its architecture is used)."),
    freeze_backbone: bool = typer.Option(False, "--freeze-backbone",
                                         help="With --init-from: train only the output layer."),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="Random affine augmentation per batch."),
    schedule: str = typer.Option("onecycle", "--schedule", help="Learning-rate schedule: onecycle, cosine or constant."),
    outlier_exposure: float = typer.Option(0.0, "--outlier-exposure", metavar="WEIGHT",
                                           help="Weight of the outlier-exposure loss on synthetic negatives "
                                                "(scribbles, halves and overlays of drawings); 0: off."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output."),
) -> None:
    config = TrainConfig(
        data_dir=data_dir if data_dir is not None or resume is not None else default_data_dir(),
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
