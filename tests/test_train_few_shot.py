"""A few-shot --init-from run: its short schedule only with --init-from on small data, and it learns."""

import numpy as np
import pytest
import torch

from fixtures_train import FIXTURE_CATEGORIES, train_on_one_thread
from qd.command import QDError
from qd.data.contract import bitmaps_to_input
from qd.train import cli
from qd.train.checkpoint import load_checkpoint, model_from_checkpoint
from qd.train.cli import (DEFAULT_EPOCHS, FEW_SHOT_MAX_PER_CLASS, FEW_SHOT_STEPS, MIN_STEPS, TrainConfig,
                          auto_schedule, is_few_shot)


def test_few_shot_defaults_kick_in_only_for_small_data():
    assert is_few_shot(14 * 24, 14) and is_few_shot(FEW_SHOT_MAX_PER_CLASS * 14, 14)
    assert not is_few_shot(FEW_SHOT_MAX_PER_CLASS * 14 + 1, 14)
    batch, epochs = auto_schedule(336, few_shot=True)
    steps = -(-336 // batch)
    assert batch == 32 and FEW_SHOT_STEPS <= epochs * steps < FEW_SHOT_STEPS + steps
    assert auto_schedule(336) == (32, -(-MIN_STEPS // steps))  # without it: the usual schedule
    assert auto_schedule(300_000, few_shot=True)[1] == 1 and auto_schedule(300_000)[1] == DEFAULT_EPOCHS
    assert auto_schedule(336, epochs=4, few_shot=True) == (32, 4)  # what is given is kept
    with pytest.raises(QDError, match="--few-shot needs --init-from"):
        TrainConfig(data_dir="x", few_shot=True)


def few_drawings(shared_bitmaps, folder, categories, rows):
    folder.mkdir()
    for name in categories:
        np.save(folder / f"{name}.npy", np.load(shared_bitmaps / f"{name}.npy", mmap_mode="r")[-rows:])
    return folder


NEW = ["eye", "rainbow", "skull"]  # none of them known to the fixture model


def top1_on_rows(payload, shared_bitmaps, rows: slice) -> float:
    model = model_from_checkpoint(payload)
    correct = total = 0
    with torch.no_grad():
        for label, name in enumerate(payload["classes"]):
            drawings = np.asarray(np.load(shared_bitmaps / f"{name}.npy", mmap_mode="r")[rows])
            logits = model(torch.from_numpy(bitmaps_to_input(drawings, payload["preprocessing"])))
            correct += int((logits.argmax(1) == label).sum())
            total += len(drawings)
    return correct / total


def test_a_small_init_from_run_is_few_shot_and_learns_new_categories(trained_checkpoint, shared_bitmaps, tmp_path,
                                                                     monkeypatch):
    """--init-from the 4-category fixture model on the last 20 drawings of 3 categories it never saw, with
    the few-shot schedule (shortened here to 40 steps): well above chance (33%) on 100 other drawings of each."""
    monkeypatch.setattr(cli, "FEW_SHOT_STEPS", 40)
    data = few_drawings(shared_bitmaps, tmp_path / "data", NEW, rows=20)
    best = train_on_one_thread(TrainConfig(data_dir=data, init_from=trained_checkpoint, device="cpu",
                                           out=tmp_path / "run", quiet=True))
    payload = load_checkpoint(best)
    hp = payload["hparams"]
    steps_per_epoch = -(-payload["metrics"][0]["samples"] // hp["batch_size"])
    assert hp["few_shot"] is True and hp["epochs"] == -(-40 // steps_per_epoch)
    assert top1_on_rows(payload, shared_bitmaps, slice(0, 100)) >= 0.6


def test_without_init_from_nothing_changes(shared_bitmaps, tmp_path):
    data = few_drawings(shared_bitmaps, tmp_path / "data", FIXTURE_CATEGORIES[:2], rows=20)
    best = train_on_one_thread(TrainConfig(data_dir=data, epochs=1, device="cpu", out=tmp_path / "run", quiet=True))
    hp = load_checkpoint(best)["hparams"]
    assert hp["few_shot"] is False and hp["batch_size"] == 32
