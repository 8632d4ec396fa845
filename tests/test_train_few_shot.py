"""A few-shot --init-from run: imprinted output rows, its defaults only with --init-from on small data."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from fixtures_train import FIXTURE_CATEGORIES, train_on_one_thread
from qd.command import QDError
from qd.data.contract import bitmaps_to_input
from qd.train.checkpoint import head_inputs, imprint, load_checkpoint, model_from_checkpoint
from qd.train.cli import (DEFAULT_EPOCHS, FEW_SHOT_MAX_PER_CLASS, FEW_SHOT_STEPS, MIN_STEPS, TrainConfig,
                          auto_schedule, is_few_shot)
from qd.train.models import build_model, head_name


def test_imprinting_sets_new_rows_to_normalised_class_means_and_keeps_the_others():
    torch.manual_seed(0)
    model = build_model("compact", 4, width=4)
    head = dict(model.named_modules())[head_name(model)]
    before_w, before_b = head.weight.detach().clone(), head.bias.detach().clone()
    x = torch.randn(24, 1, 28, 28)
    y = torch.tensor([1, 3] * 12)
    imprint(model, x, y, new_rows=[1, 3], length=2.5, bias=0.25)

    features = head_inputs(model, x)
    centre = features.mean(0)
    unit = F.normalize(features - centre, dim=1)
    for row in (1, 3):
        expected = 2.5 * F.normalize(unit[y == row].mean(0), dim=0)
        torch.testing.assert_close(head.weight[row], expected)
        torch.testing.assert_close(head.bias[row], 0.25 - expected @ centre)
    for row in (0, 2):  # not new: untouched
        assert torch.equal(head.weight[row], before_w[row]) and torch.equal(head.bias[row], before_b[row])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), classes=st.integers(2, 6), per_class=st.integers(1, 5))
def test_the_imprinted_layer_picks_the_nearest_class_mean(seed, classes, per_class):
    """Among imprinted rows, the ordinary Linear layer's argmax is the class whose normalised mean of
    centred, normalised features is closest by cosine (what a prototype classifier computes)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = build_model("seed", classes).eval()
    x = torch.randn(classes * per_class, 1, 28, 28, generator=generator)
    y = torch.arange(classes).repeat_interleave(per_class)
    imprint(model, x, y, new_rows=list(range(classes)), length=1.0, bias=0.0)

    features = head_inputs(model, x)
    centre = features.mean(0)
    unit = F.normalize(features - centre, dim=1)
    means = F.normalize(torch.stack([unit[y == c].mean(0) for c in range(classes)]), dim=1)
    probe = torch.randn(16, 1, 28, 28, generator=generator)
    cosine = F.normalize(head_inputs(model, probe) - centre, dim=1) @ means.T
    with torch.no_grad():
        logits = model(probe)
    decided = cosine.max(1).values - cosine.topk(2, dim=1).values[:, 1] > 1e-4  # not a near tie
    assert torch.equal(logits.argmax(1)[decided], cosine.argmax(1)[decided])


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


def test_a_small_init_from_run_is_few_shot_and_learns_new_categories(trained_checkpoint, shared_bitmaps, tmp_path):
    """--init-from the 4-category fixture model on the last 20 drawings of 3 categories it never saw, a
    few steps: well above chance (33%) on 100 other drawings of each, the parent's batch-norm kept."""
    data = few_drawings(shared_bitmaps, tmp_path / "data", NEW, rows=20)
    best = train_on_one_thread(TrainConfig(data_dir=data, init_from=trained_checkpoint, epochs=3, device="cpu",
                                           out=tmp_path / "run", quiet=True))
    payload = load_checkpoint(best)
    assert payload["hparams"]["few_shot"] is True
    parent = load_checkpoint(trained_checkpoint)["state_dict"]
    for key, value in payload["state_dict"].items():
        if "running_" in key:
            assert torch.equal(value, parent[key]), key
    assert top1_on_rows(payload, shared_bitmaps, slice(0, 100)) >= 0.6


def test_without_init_from_nothing_changes(shared_bitmaps, tmp_path):
    data = few_drawings(shared_bitmaps, tmp_path / "data", FIXTURE_CATEGORIES[:2], rows=20)
    best = train_on_one_thread(TrainConfig(data_dir=data, epochs=1, device="cpu", out=tmp_path / "run", quiet=True))
    hp = load_checkpoint(best)["hparams"]
    assert hp["few_shot"] is False and hp["batch_size"] == 32
