"""Fixtures for the train stage's tests (and the stages that build on it)."""

from pathlib import Path

import pytest

# Four visually distinct shared categories: a few seconds of CPU training reaches ~90% test top-1.
FIXTURE_CATEGORIES = ["apple", "circle", "square", "star"]
FIXTURE_MAX_PER_CATEGORY = 600


@pytest.fixture(scope="session")
def trained_checkpoint(shared_bitmaps, tmp_path_factory) -> Path:
    """Path to best.pt of a real (tiny) qd-train run on 4 shared categories.

    A complete checkpoint following docs/contracts.md (test metrics included);
    last.pt sits next to it. Trained once per test session, on CPU, in a few seconds.
    """
    from qd.train.cli import TrainConfig

    run_dir = tmp_path_factory.mktemp("trained-run") / "run"
    return train_on_one_thread(TrainConfig(
        data_dir=shared_bitmaps, categories=FIXTURE_CATEGORIES, max_per_category=FIXTURE_MAX_PER_CATEGORY,
        epochs=3, batch_size=64, seed=0, device="cpu", out=run_dir, quiet=True,
    ))


def train_on_one_thread(config) -> Path:
    """qd.train.loop.train(config) with torch on one thread (a tiny model: one thread is as fast, and robust
    on busy shared cores); the caller's thread count is restored. Returns best.pt."""
    import torch

    from qd.train.loop import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(config)
    finally:
        torch.set_num_threads(threads)
