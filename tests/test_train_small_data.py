"""Small data: batch size and epochs fitted to the set, the near-chance warning, and --init-from."""

import io

import numpy as np
import pytest
import torch
from rich.console import Console

from fixtures_data import run_entry_point
from qd.files import sha256_file
from qd.train import cli
from qd.train.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from qd.train.cli import MIN_BATCH_SIZE, MIN_STEPS, TrainConfig, auto_schedule
from qd.train.loop import train
from qd.train.models import build_model, head_name
from qd.train.loop import Reporter, near_chance
from qd.train.checkpoint import init_from


def test_small_sets_get_smaller_batches_and_enough_steps():
    assert auto_schedule(300_000) == (256, 10)  # large sets: the usual defaults
    batch, epochs = auto_schedule(1_200)  # a newcomer's 3 x 500 (80% train)
    assert batch == MIN_BATCH_SIZE and epochs * -(-1_200 // batch) >= MIN_STEPS
    batch, epochs = auto_schedule(3_360)
    assert batch == 64 and epochs * -(-3_360 // 64) >= MIN_STEPS
    assert auto_schedule(1_200, epochs=2) == (32, 2)  # what is given is kept
    assert auto_schedule(1_200, batch_size=256)[0] == 256
    assert auto_schedule(10)[1] == 200  # capped


def test_a_run_near_chance_says_so_in_its_final_table(tmp_path):
    assert near_chance(0.317, 3) and not near_chance(0.859, 3)
    assert near_chance(0.6, 2) and not near_chance(0.8, 2) and not near_chance(0.2, 345)

    def table(val_top1):
        out = io.StringIO()
        Reporter(True, Console(file=out, width=200)).summary(
            run_dir=tmp_path, best={"epoch": 2, "val_top1": val_top1, "val_top3": 1.0, "val_loss": 1.1},
            test={"top1": val_top1, "top3": 1.0, "loss": 1.1}, params=10, size_bytes=40, seconds=3,
            stopped_early=False, epochs_run=2, classes=3)
        return out.getvalue()
    assert "near chance (33.3% for 3 classes)" in table(0.317)
    assert "near chance" not in table(0.9)


def new_data(tmp_path, shared_bitmaps, rows=40):
    """circle and square (known to the fixture checkpoint) and cat (new to it)."""
    folder = tmp_path / "data"
    folder.mkdir()
    for name in ("cat", "circle", "square"):
        np.save(folder / f"{name}.npy", np.load(shared_bitmaps / f"{name}.npy", mmap_mode="r")[-rows:])
    return folder


def test_init_from_keeps_shared_rows_and_the_backbone(trained_checkpoint):
    parent = load_checkpoint(trained_checkpoint)
    torch.manual_seed(0)
    model = build_model(parent["arch"]["name"], 3, **parent["arch"]["kwargs"])
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    record = init_from(model, trained_checkpoint, parent, ["cat", "circle", "square"], freeze_backbone=False)
    head = head_name(model)
    state = model.state_dict()
    for key, value in state.items():
        if not key.startswith(head + "."):
            torch.testing.assert_close(value, parent["state_dict"][key], rtol=0, atol=0)
    weight = f"{head}.weight"
    torch.testing.assert_close(state[weight][1:], parent["state_dict"][weight][[1, 2]], rtol=0, atol=0)
    torch.testing.assert_close(state[weight][0], fresh[weight][0], rtol=0, atol=0)  # cat: a new row
    assert record["class_mapping"] == {"cat": None, "circle": 1, "square": 2}
    assert record["sha256"] == sha256_file(trained_checkpoint) and record["kept"] == 2


def test_freeze_backbone_trains_only_the_head_and_records_the_parent(trained_checkpoint, shared_bitmaps, tmp_path):
    best = train(TrainConfig(data_dir=new_data(tmp_path, shared_bitmaps), init_from=trained_checkpoint,
                             freeze_backbone=True, epochs=1, steps_per_epoch=2, device="cpu", out=tmp_path / "run",
                             quiet=True))
    payload = load_checkpoint(best)
    parent = load_checkpoint(trained_checkpoint)
    assert payload["parent"]["path"] == str(trained_checkpoint.resolve())
    assert payload["parent"]["class_mapping"] == {"cat": None, "circle": 1, "square": 2}
    assert payload["parent"]["frozen_backbone"] and payload["arch"] == parent["arch"]
    head = head_name(model_from_checkpoint(payload))
    for key, value in payload["state_dict"].items():
        if not key.startswith(head + "."):  # batch-norm statistics kept too
            assert torch.equal(value, parent["state_dict"][key]), key
    trained, before = payload["state_dict"][f"{head}.weight"][1:], parent["state_dict"][f"{head}.weight"][[1, 2]]
    assert not torch.equal(trained, before)  # the head did train


def run_cli(monkeypatch, capsys, *args):
    return run_entry_point(monkeypatch, capsys, cli.main, "qd-train", *args, columns=200)


@pytest.mark.parametrize("case, expected", [
    ("not a checkpoint", "not a checkpoint"),
    ("another input size", "input_size is 32, expected 28"),
    ("another architecture", "--init-from a 'compact' network, but --arch 'seed'"),
    ("no parent", "--freeze-backbone needs --init-from"),
])
def test_bad_init_from_is_one_line_and_writes_nothing(case, expected, trained_checkpoint, shared_bitmaps, tmp_path,
                                                     monkeypatch, capsys):
    data = new_data(tmp_path, shared_bitmaps, rows=20)
    parent = tmp_path / "parent.pt"
    args = ["--init-from", str(parent)]
    if case == "not a checkpoint":
        parent.write_bytes(b"\x93NUMPY not a checkpoint at all")
    else:
        payload = load_checkpoint(trained_checkpoint)
        if case == "another input size":
            payload["preprocessing"]["input_size"] = 32
        save_checkpoint(payload, parent)
    if case == "another architecture":
        args += ["--arch", "seed"]
    if case == "no parent":
        args = ["--freeze-backbone"]
    run = tmp_path / "run"
    code, _, err = run_cli(monkeypatch, capsys, "--data-dir", str(data), "--out", str(run), "--device", "cpu", *args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and expected in lines[0], err
    assert not run.exists()
