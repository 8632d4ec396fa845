"""The shared `trained_checkpoint` follows the checkpoint contract (docs/contracts.md)."""

import math
from pathlib import Path

import torch

from qd.data.bitmaps import SplitSpec
from qd.data.contract import DEFAULT_PREPROCESSING
from qd.data.contract import CHECKPOINT_FORMAT as FORMAT
from qd.train.checkpoint import load_checkpoint, model_from_checkpoint

CONTRACT_KEYS = {"format", "classes", "arch", "preprocessing", "split", "data", "hparams", "metrics", "best",
                 "test", "versions", "state_dict"}


def test_checkpoint_follows_the_contract(trained_checkpoint, shared_bitmaps):
    raw = torch.load(trained_checkpoint, map_location="cpu", weights_only=True)
    assert CONTRACT_KEYS <= set(raw)
    ckpt = load_checkpoint(trained_checkpoint)
    assert ckpt["format"] == FORMAT
    assert ckpt["classes"] == sorted(ckpt["classes"]) == ["apple", "circle", "square", "star"]
    assert ckpt["arch"]["name"] == "compact" and isinstance(ckpt["arch"]["kwargs"], dict)
    assert {"width", "dropout", "stage3"} <= set(ckpt["arch"]["kwargs"])  # every default written down
    assert ckpt["preprocessing"] == DEFAULT_PREPROCESSING
    assert SplitSpec.from_dict(ckpt["split"]) == SplitSpec()
    data = ckpt["data"]
    assert Path(data["dir"]).is_absolute() and Path(data["dir"]) == Path(shared_bitmaps).resolve()
    assert data["categories"] == ckpt["classes"] and data["counts"] == [600] * 4 and data["max_per_category"] == 600
    assert [m["epoch"] for m in ckpt["metrics"]] == [1, 2, 3]
    assert {"epoch", "val_loss", "val_top1", "val_top3"} <= set(ckpt["best"])
    assert set(ckpt["test"]) >= {"top1", "top3", "loss"} and math.isfinite(ckpt["test"]["loss"])
    assert ckpt["versions"]["torch"] == str(torch.__version__)
    assert "train_state" not in ckpt
    last = load_checkpoint(trained_checkpoint.parent / "last.pt")
    assert {"epoch", "optimizer", "scheduler", "rng"} <= set(last["train_state"])


def test_checkpoint_model_classifies_well_above_chance(trained_checkpoint):
    ckpt = load_checkpoint(trained_checkpoint)
    assert ckpt["test"]["top1"] > 0.75, ckpt["test"]
    model = model_from_checkpoint(ckpt)
    with torch.no_grad():
        logits = model(torch.zeros(2, 1, 28, 28))
    assert logits.shape == (2, 4)
