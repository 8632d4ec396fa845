"""Outlier exposure: the synthetic negatives, the loss on them, and a training run that uses them."""

import contextlib

import numpy as np
import pytest
import torch

from qd.command import QDError
from qd.data.bitmaps import BitmapDataset
from qd.train.cli import TrainConfig
from qd.data.images import FRAME_UNITS, INK_UNITS
from qd.train.outliers import SyntheticOutliers, exposure_loss, scribbles

CATEGORIES = ["circle", "square", "star"]


@pytest.fixture(scope="module")
def batch(shared_bitmaps):
    dataset = BitmapDataset(shared_bitmaps, CATEGORIES, 40)
    bitmaps, labels = dataset.take(np.arange(len(dataset)))
    return torch.from_numpy(bitmaps.reshape(-1, 1, 28, 28) / np.float32(255)), torch.from_numpy(labels)


def test_negatives_look_like_model_inputs_and_are_reproducible(batch):
    x, y = batch
    make = SyntheticOutliers(share=0.5)
    first = make(x, y, torch.Generator().manual_seed(3))
    again = make(x, y, torch.Generator().manual_seed(3))
    other = make(x, y, torch.Generator().manual_seed(4))
    assert first.shape == (60, 1, 28, 28) and first.dtype == x.dtype
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.min() >= 0 and first.max() <= 1
    ink = (first > 0.5).flatten(1).sum(1)
    assert (ink > 10).all()  # every negative has strokes; none is blank


def test_negatives_keep_the_input_space(batch):
    x, y = batch
    background, ink = -0.5, 2.0  # e.g. a mean/std normalisation
    normalised = background + x * (ink - background)
    negatives = SyntheticOutliers(share=1.0)(normalised, y, torch.Generator().manual_seed(0), background, ink)
    assert negatives.min() >= background - 1e-6 and negatives.max() <= ink + 1e-6
    assert (negatives == background).float().mean() > 0.5  # mostly paper, like a drawing


def test_halves_and_overlays_mix_drawings_of_different_classes(batch):
    x, y = batch
    from qd.train.outliers import _pairs

    first, second = _pairs(y, 500, torch.Generator().manual_seed(0))
    assert (y[first] != y[second]).float().mean() > 0.99


def test_scribbles_are_framed_like_googles_bitmaps():
    ink = scribbles(64, 28, torch.Generator().manual_seed(0))
    assert ink.shape == (64, 28, 28) and ink.min() >= 0 and ink.max() <= 1
    for drawing in ink:
        rows = torch.nonzero(drawing.amax(1) > 0.5).flatten()
        cols = torch.nonzero(drawing.amax(0) > 0.5).flatten()
        extent = max(rows.max() - rows.min(), cols.max() - cols.min()) + 1
        assert 20 <= extent <= 28 * INK_UNITS / FRAME_UNITS + 1.5  # the longer side fills the frame
        centre = ((rows.max() + rows.min()) / 2, (cols.max() + cols.min()) / 2)
        assert all(abs(c - 13.5) <= 1.5 for c in centre)


def test_exposure_loss_is_zero_for_a_flat_softmax_and_grows_with_confidence():
    flat = torch.zeros(4, 10)
    assert exposure_loss(flat).item() == pytest.approx(0.0, abs=1e-6)
    sure = torch.tensor([[8.0] + [0.0] * 9])
    assert exposure_loss(sure).item() > exposure_loss(sure / 4).item() > 0


def test_outlier_exposure_option_is_checked():
    for bad in (-1.0, float("nan"), 11.0):
        with pytest.raises(QDError, match="--outlier-exposure must be between 0 and 10"):
            TrainConfig(data_dir=".", outlier_exposure=bad)


def test_the_training_loss_adds_the_weighted_exposure_term(shared_bitmaps, tmp_path, batch):
    """Trainer._loss = cross-entropy on the batch + weight x exposure loss on its negatives, same forward pass."""
    import torch.nn.functional as F

    from qd.train.distributed import Distributed
    from qd.train.loop import Trainer

    torch.manual_seed(0)
    config = TrainConfig(data_dir=shared_bitmaps, categories=CATEGORIES, max_per_category=40, epochs=1,
                         device="cpu", precision="fp32", quiet=True, outlier_exposure=2.0, out=tmp_path / "run")
    with contextlib.ExitStack() as held:  # the run folder's lock
        trainer = Trainer(config, Distributed.from_env("cpu"), held)
        trainer.net.eval()  # no dropout: both sides see the same network
        x, y = batch
        with torch.no_grad():
            loss = trainer._loss(x, y, torch.Generator().manual_seed(5), 0.0, 1.0)
            negatives = trainer.outliers(x, y, torch.Generator().manual_seed(5), 0.0, 1.0)
            logits = trainer.net(torch.cat([x, negatives]))
            expected = F.cross_entropy(logits[: len(x)], y) + 2.0 * exposure_loss(logits[len(x):])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert TrainConfig(data_dir=".").outlier_exposure == 0.0  # off unless asked for
