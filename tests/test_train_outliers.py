"""Outlier exposure: the synthetic non-drawings, the loss on them, and a training run that uses them."""

import contextlib
import hashlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from qd.command import QDError
from qd.data.bitmaps import BitmapDataset
from qd.train.cli import OUTLIER_EXPOSURE, TrainConfig
from qd.data.images import FRAME_UNITS, INK_UNITS
from qd.train.outliers import KINDS, WORD_BANK, SyntheticOutliers, exposure_loss, make, word_bank

CATEGORIES = ["circle", "square", "star"]


@pytest.fixture(scope="module")
def batch(shared_bitmaps):
    dataset = BitmapDataset(shared_bitmaps, CATEGORIES, 40)
    bitmaps, labels = dataset.take(np.arange(len(dataset)))
    return torch.from_numpy(bitmaps.reshape(-1, 1, 28, 28) / np.float32(255)), torch.from_numpy(labels)


def test_negatives_look_like_model_inputs_and_are_reproducible(batch):
    x, _ = batch
    make = SyntheticOutliers(share=0.5)
    first = make(x, torch.Generator().manual_seed(3))
    again = make(x, torch.Generator().manual_seed(3))
    other = make(x, torch.Generator().manual_seed(4))
    assert first.shape == (60, 1, 28, 28) and first.dtype == x.dtype
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.min() >= 0 and first.max() <= 1
    ink = (first > 0.5).flatten(1).sum(1)
    assert (ink > 10).all()  # every negative has strokes; none is blank


def test_negatives_keep_the_input_space(batch):
    x, _ = batch
    background, ink = -0.5, 2.0  # e.g. a mean/std normalisation
    normalised = background + x * (ink - background)
    negatives = SyntheticOutliers(share=1.0)(normalised, torch.Generator().manual_seed(0), background, ink)
    assert negatives.min() >= background - 1e-6 and negatives.max() <= ink + 1e-6
    assert (negatives == background).float().mean() > 0.5  # mostly paper, like a drawing


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_is_ink_on_paper_in_range_and_seeded(kind):
    first = make(kind, 24, 28, torch.Generator().manual_seed(1))
    again = make(kind, 24, 28, torch.Generator().manual_seed(1))
    other = make(kind, 24, 28, torch.Generator().manual_seed(2))
    assert first.shape == (24, 28, 28) and first.dtype == torch.float32
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.min() >= 0 and first.max() <= 1
    inked = (first > 0.5).flatten(1).float().mean(1)
    assert (inked > 0.01).all()                       # never blank
    if kind != "noise":
        assert (inked < 0.7).all()                    # marks on paper (one dot: a disc in the frame, 63%)


@pytest.mark.parametrize("kind", ["scribble", "walk", "dots", "hatching", "line"])
def test_marks_are_framed_like_googles_bitmaps(kind):
    """The longer side of the ink spans the frame's 272/304 (qd.data.images frames a user's image so),
    centred."""
    for drawing in make(kind, 32, 28, torch.Generator().manual_seed(0)):
        rows = torch.nonzero(drawing.amax(1) > 0.5).flatten()
        cols = torch.nonzero(drawing.amax(0) > 0.5).flatten()
        extent = max(rows.max() - rows.min(), cols.max() - cols.min()) + 1
        assert 22 <= extent <= 28 * INK_UNITS / FRAME_UNITS + 1.5
        centre = ((rows.max() + rows.min()) / 2, (cols.max() + cols.min()) / 2)
        assert all(abs(c - 13.5) <= 1.5 for c in centre)


def test_the_default_kinds_are_non_drawings_only():
    """Halves and overlays of real drawings cost known accuracy (docs/open-set.md): not among them."""
    assert SyntheticOutliers().kinds == KINDS
    assert set(KINDS) == {"scribble", "walk", "words", "dots", "hatching", "line", "noise"}


def test_the_default_adds_as_many_non_drawings_as_drawings():
    """Chosen by measurement (bench/non_drawings.py, docs/open-set.md "The share kept"): a whole batch again, with
    outlier-exposure weight 2.0 and --kept 0.93."""
    assert SyntheticOutliers().share == 1.0
    assert SyntheticOutliers().count(64) == 64 and SyntheticOutliers().count(1) == 1
    assert SyntheticOutliers(share=0.5).count(64) == 32 and SyntheticOutliers(share=0.25).count(2) == 1


def test_the_word_bank_is_written_text_the_same_in_every_process():
    bank = word_bank(28)
    assert bank.shape == (WORD_BANK, 28, 28) and bank.min() >= 0 and bank.max() <= 1
    rows = (bank > 0.5).any(dim=2).sum(1)
    cols = (bank > 0.5).any(dim=1).sum(1)
    assert (cols >= rows).float().mean() > 0.8  # mostly a line of text: wider than tall
    script = ("import hashlib; from qd.train.outliers import word_bank; "
              "print(hashlib.sha256(word_bank(28).numpy().tobytes()).hexdigest())")
    digest = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert digest == hashlib.sha256(bank.numpy().tobytes()).hexdigest() + "\n"


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
        seen = []
        hook = trainer.model.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
        with torch.no_grad():
            loss = trainer._loss(x, y, torch.Generator().manual_seed(5), 0.0, 1.0)
            hook.remove()
            rng = torch.Generator().manual_seed(5)
            negatives = trainer.augment(trainer.outliers(x, rng, 0.0, 1.0), rng, 0.0)  # warped like drawings
            logits = trainer.net(torch.cat([x, negatives]))
            expected = F.cross_entropy(logits[: len(x)], y) + 2.0 * exposure_loss(logits[len(x):])
    assert len(seen) == 1 and torch.equal(seen[0][len(x):], negatives)  # one pass; the negatives warped
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert TrainConfig(data_dir=".").outlier_exposure == OUTLIER_EXPOSURE > 0  # on by default


def _non_drawings() -> np.ndarray:
    """A few things that are no drawing, as a user's PNGs would be read: a line, a word, dots, hatching."""
    from PIL import Image, ImageDraw, ImageFont

    from qd.data.images import image_to_bitmap

    images = []
    for k in range(4):
        image = Image.new("L", (200, 200), 255)
        draw = ImageDraw.Draw(image)
        draw.line((20 + 10 * k, 30, 180, 170 - 30 * k), fill=60, width=4)
        images.append(image)
        image = Image.new("L", (300, 120), 255)
        ImageDraw.Draw(image).text((10, 30), ["hello", "Anna", "qwerty", "12:30"][k],
                                   font=ImageFont.load_default(48), fill=30)
        images.append(image)
        image = Image.new("L", (200, 200), 255)
        draw = ImageDraw.Draw(image)
        for i in range(3 + 3 * k):
            x, y = 20 + (i * 53) % 160, 20 + (i * 97) % 160
            draw.ellipse((x, y, x + 8, y + 8), fill=40)
        images.append(image)
        image = Image.new("L", (200, 200), 255)
        draw = ImageDraw.Draw(image)
        for i in range(6 + k):
            draw.line((30 + 20 * i, 40, 10 + 20 * i, 160), fill=50, width=3)
        images.append(image)
    return np.stack([image_to_bitmap(image).reshape(784) for image in images])


def test_a_model_trained_with_the_defaults_says_unknown_for_non_drawings(exported_model, shared_bitmaps):
    """The session's model (qd-train's defaults, exported with qd-export's): lines, words, dots and hatching
    are flagged far more often than drawings of its classes it never saw in training."""
    from fixtures_train import FIXTURE_CATEGORIES, FIXTURE_MAX_PER_CATEGORY

    from qd.infer.model import OnnxClassifier

    classifier = OnnxClassifier(exported_model / "model.onnx")
    unseen_rows = slice(FIXTURE_MAX_PER_CATEGORY, FIXTURE_MAX_PER_CATEGORY + 200)
    known = np.concatenate([np.load(shared_bitmaps / f"{name}.npy")[unseen_rows] for name in FIXTURE_CATEGORIES])
    known_flagged = classifier.predict(known).unknown.mean()
    non_flagged = classifier.predict(_non_drawings()).unknown.mean()
    assert known_flagged < 0.15
    assert non_flagged >= 0.75


def test_negatives_leave_batch_norm_statistics_to_the_known_drawings(shared_bitmaps, tmp_path, batch):
    """A training step normalises its known drawings, and updates the running statistics, exactly as
    without outlier exposure; the negatives are normalised with the same statistics. Mixed into the
    batch statistics, negatives shift what every drawing is normalised with at inference, and the
    model grows unsure of everything."""
    import copy

    from qd.train.distributed import Distributed
    from qd.train.loop import Trainer
    from qd.train.outliers import known_batch_norm

    torch.manual_seed(0)
    config = TrainConfig(data_dir=shared_bitmaps, categories=CATEGORIES, max_per_category=40, epochs=1,
                         device="cpu", precision="fp32", quiet=True, out=tmp_path / "run")
    with contextlib.ExitStack() as held:  # the run folder's lock, for as long as the trainer is built
        trainer = Trainer(config, Distributed.from_env("cpu"), held)
    reference = copy.deepcopy(trainer.model)
    x, y = batch
    trainer.model.train()
    reference.train()
    torch.manual_seed(1)
    trainer._loss(x, y, torch.Generator().manual_seed(5), 0.0, 1.0).backward()
    torch.manual_seed(1)
    reference(x)
    layers = [(a, b) for a, b in zip(trainer.model.modules(), reference.modules())
              if isinstance(a, torch.nn.modules.batchnorm._BatchNorm)]
    assert layers and all("forward" not in vars(a) for a, _ in layers)  # the layers are themselves again
    for a, b in layers:
        assert torch.allclose(a.running_mean, b.running_mean, rtol=1e-3, atol=1e-4)  # float noise only
        assert torch.allclose(a.running_var, b.running_var, rtol=1e-3, atol=1e-4)
    for module in reference.modules():  # no dropout: the same network for both passes below
        if isinstance(module, torch.nn.Dropout):
            module.eval()
    alone = reference(x)
    with known_batch_norm(reference, len(x)):
        mixed = reference(torch.cat([x, torch.rand(8, 1, 28, 28)]))
    assert torch.allclose(mixed[: len(x)], alone, rtol=1e-3, atol=1e-3)  # the known drawings' outputs do not change
    assert trainer.outliers is not None  # the defaults expose the network to non-drawings
