"""qd-train --negatives: the folder's checks, its split, the checkpoint's record, the share of validation
negatives flagged each epoch, resume, reproducibility."""

import shutil

import numpy as np
import pytest
import torch

import qd.train.loop as loop
from qd.command import QDError
from qd.data.bitmaps import BitmapDataset, SplitSpec, assign_splits
from qd.data.contract import DEFAULT_KEPT, bitmaps_to_input, fit_threshold
from qd.data.negatives import heldout_negatives, negatives_changed, negatives_record, open_negatives
from qd.files import sha256_file
from qd.train.checkpoint import load_checkpoint, model_from_checkpoint
from qd.train.cli import OUTLIER_EXPOSURE, TrainConfig

CATEGORIES = ["circle", "square", "star"]
NEGATIVES = ["apple", "banana"]
ROWS = 60


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def data(shared_bitmaps, tmp_path):
    """The first ROWS drawings of three shared categories."""
    return copy_rows(shared_bitmaps, CATEGORIES, tmp_path / "data")


@pytest.fixture
def negatives(shared_bitmaps, tmp_path):
    return copy_rows(shared_bitmaps, NEGATIVES, tmp_path / "negatives")


def copy_rows(source, names, folder, rows=ROWS):
    folder.mkdir()
    for name in names:
        np.save(folder / f"{name}.npy", np.load(source / f"{name}.npy", mmap_mode="r")[:rows])
    return folder


def tiny(data, out, **overrides) -> TrainConfig:
    settings = dict(data_dir=data, epochs=2, batch_size=16, device="cpu", precision="fp32", out=out, quiet=True)
    settings.update(overrides)
    return TrainConfig(**settings)


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- the split

def test_a_negative_drawing_lands_in_the_same_split_wherever_it_is(data, negatives, tmp_path):
    spec = SplitSpec(0.2, 0.2)
    rows = np.load(negatives / "apple.npy")
    moved = tmp_path / "moved"
    moved.mkdir()
    order = np.random.default_rng(3).permutation(len(rows))
    np.save(moved / "other.npy", rows[order])  # the same drawings, shuffled, under another name

    def held(folder, split):
        dataset = BitmapDataset(folder)
        return {dataset.take(np.array([i]))[0].tobytes() for i in dataset.split_indices(spec)[split]}

    for split in ("train", "val", "test"):
        assert held(moved, split) == {r.tobytes() for r, s in zip(rows, assign_splits(rows, spec))
                                      if ("train", "val", "test")[s] == split}
    assert {b for b in held(moved, "val")} <= {r.tobytes() for r in np.load(negatives / "apple.npy")}
    opened = open_negatives(negatives, BitmapDataset(data))
    record = negatives_record(opened, opened.split_indices(spec))
    assert sum(record["splits"].values()) == 2 * ROWS and min(record["splits"].values()) > 0


# ---------------------------------------------------------------- refusals

def refused(folder, data) -> str:
    with pytest.raises(QDError) as caught:
        open_negatives(folder, BitmapDataset(data))
    return str(caught.value)


def test_a_category_of_the_data_is_refused(data, negatives):
    shutil.copy(data / "star.npy", negatives / "star.npy")
    message = refused(negatives, data)
    assert message.startswith(f"{negatives / 'star.npy'}: category 'star' is one of the classes trained on")
    (negatives / "star.npy").unlink()
    shutil.copy(negatives / "apple.npy", negatives / "Star.npy")  # other drawings: only the name is shared
    assert refused(negatives, data).startswith(f"{negatives / 'Star.npy'}: category 'Star' is one of the classes "
                                               f"trained on ({data / 'star.npy'})")


def test_a_drawing_of_the_data_is_refused_naming_both_rows(data, negatives):
    rows = np.load(negatives / "banana.npy")
    rows[7] = np.load(data / "square.npy")[11]
    np.save(negatives / "banana.npy", rows)
    message = refused(negatives, data)
    assert message == (f"{negatives / 'banana.npy'}: row 7 is the same drawing as row 11 of {data / 'square.npy'}; "
                       "negatives must not hold drawings of the classes trained on")


def test_empty_missing_and_invalid_folders_are_refused_in_one_line(data, negatives, tmp_path):
    (tmp_path / "empty").mkdir()
    assert "holds no <category>.npy files" in refused(tmp_path / "empty", data)
    assert "does not exist" in refused(tmp_path / "nowhere", data)
    (negatives / "junk.npy").write_bytes(b"not numpy")
    assert refused(negatives, data) == f"{negatives / 'junk.npy'}: not a .npy file (bad magic bytes)"
    (negatives / "junk.npy").unlink()
    np.save(negatives / "none.npy", np.zeros((0, 784), np.uint8))
    assert refused(negatives, data).startswith(f"{negatives / 'none.npy'}: category 'none' has no drawings")
    (negatives / "none.npy").unlink()
    bad = negatives / "bad\u200bname.npy"
    np.save(bad, np.zeros((1, 784), np.uint8))
    message = refused(negatives, data)
    assert message.startswith(f"{bad}: not a category name") and "\n" not in message


def test_training_refuses_before_it_writes_anything(data, negatives, tmp_path):
    shutil.copy(data / "circle.npy", negatives / "circle.npy")
    with pytest.raises(QDError, match="one of the classes trained on"):
        loop.train(tiny(data, tmp_path / "run", negatives_dir=negatives))
    assert not (tmp_path / "run").exists()
    with pytest.raises(QDError, match="--negatives needs an --outlier-exposure weight above 0"):
        tiny(data, tmp_path / "run", negatives_dir=negatives, outlier_exposure=0.0)


# ---------------------------------------------------------------- training with negatives

def test_training_with_negatives_is_recorded_reproducible_and_uses_them(data, negatives, tmp_path):
    first = load_checkpoint(loop.train(tiny(data, tmp_path / "a", negatives_dir=negatives)))
    again = load_checkpoint(loop.train(tiny(data, tmp_path / "b", negatives_dir=negatives)))
    without = load_checkpoint(loop.train(tiny(data, tmp_path / "c")))
    assert same_weights(first["state_dict"], again["state_dict"])
    assert not same_weights(first["state_dict"], without["state_dict"])
    record = first["negatives"]
    assert record["dir"] == str(negatives.resolve()) and record["categories"] == NEGATIVES
    assert record["counts"] == [ROWS, ROWS] and sum(record["splits"].values()) == 2 * ROWS
    assert record["sha256"] == {name: sha256_file(negatives / f"{name}.npy") for name in NEGATIVES}
    assert first["hparams"]["outlier_exposure"] == OUTLIER_EXPOSURE
    assert first["hparams"]["negatives_dir"] == str(negatives.resolve())
    assert "negatives" not in without and without["hparams"]["outlier_exposure"] == OUTLIER_EXPOSURE
    assert first["classes"] == CATEGORIES  # negatives are no class


def test_every_epoch_records_and_prints_the_share_of_validation_negatives_flagged(data, negatives, tmp_path, capsys):
    loop.train(tiny(data, tmp_path / "run", negatives_dir=negatives, quiet=False))
    printed = capsys.readouterr().out
    last = load_checkpoint(tmp_path / "run" / "last.pt")  # the weights after the last epoch
    shares = [m["val_negatives_flagged"] for m in last["metrics"]]
    assert len(shares) == 2 and all(0 <= share <= 1 for share in shares)
    for share in shares:
        assert f"negatives flagged {100 * share:5.1f}%" in printed
    spec = SplitSpec.from_dict(last["split"])
    known = BitmapDataset(data)
    model = model_from_checkpoint(last).eval()

    def max_logits(bitmaps):
        with torch.no_grad():
            return model(torch.from_numpy(bitmaps_to_input(bitmaps, last["preprocessing"]))).max(dim=1).values.numpy()

    threshold = fit_threshold(max_logits(known.take(known.split_indices(spec)["val"])[0]), DEFAULT_KEPT)
    held, _ = heldout_negatives(last["negatives"], spec)
    assert shares[-1] == float((max_logits(held["val"]) < threshold).mean())
    without = load_checkpoint(loop.train(tiny(data, tmp_path / "without")))
    assert not any("val_negatives_flagged" in m for m in without["metrics"])


def test_resume_carries_the_negatives_and_refuses_a_changed_folder(data, negatives, tmp_path, monkeypatch):
    reference = load_checkpoint(loop.train(tiny(data, tmp_path / "whole", negatives_dir=negatives)))

    real_epoch = loop.Trainer._train_epoch

    def stop_in_epoch_two(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return real_epoch(self, epoch)

    monkeypatch.setattr(loop.Trainer, "_train_epoch", stop_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        loop.train(tiny(data, tmp_path / "cut", negatives_dir=negatives))
    monkeypatch.setattr(loop.Trainer, "_train_epoch", real_epoch)
    last = tmp_path / "cut" / "last.pt"
    assert load_checkpoint(last)["negatives"] == reference["negatives"]

    rows = np.load(negatives / "apple.npy")
    np.save(negatives / "apple.npy", rows[::-1])  # the same drawings, other bytes on disk
    with pytest.raises(QDError) as caught:
        loop.train(TrainConfig(data_dir=None, resume=last, quiet=True))
    assert str(caught.value) == (f"{negatives.resolve() / 'apple.npy'}: changed since training (sha256 differs); "
                                 f"--resume {last} needs the negatives it was trained with")
    np.save(negatives / "apple.npy", rows)

    moved = tmp_path / "moved"
    shutil.move(negatives, moved)  # a moved folder with the same files is accepted, as --data is
    resumed = load_checkpoint(loop.train(TrainConfig(data_dir=None, resume=last, negatives_dir=moved, quiet=True)))
    assert same_weights(resumed["state_dict"], reference["state_dict"])
    assert resumed["negatives"]["sha256"] == reference["negatives"]["sha256"]


def test_resume_with_negatives_of_a_run_trained_without_them_is_refused(data, negatives, tmp_path):
    loop.train(tiny(data, tmp_path / "run", epochs=1))
    last = tmp_path / "run" / "last.pt"
    with pytest.raises(QDError, match="trained without negatives; resume it without --negatives"):
        loop.train(TrainConfig(data_dir=None, resume=last, negatives_dir=negatives, quiet=True))


def test_heldout_negatives_are_the_val_and_test_splits_or_say_why_not(data, negatives, tmp_path):
    spec = SplitSpec()
    opened = open_negatives(negatives, BitmapDataset(data))
    record = negatives_record(opened, opened.split_indices(spec))
    held, problem = heldout_negatives(record, spec)
    assert problem == "" and len(held["val"]) == record["splits"]["val"] and len(held["test"]) == record["splits"]["test"]
    assert len(heldout_negatives(record, spec, limit=2)[0]["test"]) == 2
    (negatives / "banana.npy").unlink()
    assert heldout_negatives(record, spec) == ({}, f"{negatives.resolve()}: the negatives' categories changed "
                                                   "(removed banana)")
    assert "not there any more" in negatives_changed(record, tmp_path / "gone")
    assert heldout_negatives({**record, "dir": None}, spec) == ({}, "the checkpoint's record of its negatives names no "
                                                                    "folder")
