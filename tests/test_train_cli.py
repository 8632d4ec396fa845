"""qd-train on the command line: a real run's output, and one clear line per bad input."""

import shutil
import subprocess
import sys

import numpy as np
import pytest

from qd.train import cli

CATEGORIES = "circle,square,star"
FAKE_CHECKPOINT = b"PK\x03\x04 definitely not a checkpoint"


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["qd-train", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_cli_trains_and_prints_epochs_and_the_final_table(shared_bitmaps, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "120")
    run = tmp_path / "run"
    code, out, err = run_cli(monkeypatch, capsys, "--data-dir", str(shared_bitmaps), "--categories", CATEGORIES,
                             "--max-per-category", "100", "--epochs", "2", "--batch-size", "32", "--arch", "seed",
                             "--device", "cpu", "--out", str(run))
    assert code == 0, err
    assert "epoch  1/2" in out and "epoch  2/2" in out and "samples/s" in out and "val top-1" in out
    assert "test top-1 / top-3" in out and "best epoch" in out and "parameters" in out
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "last.pt"]


def write_category(folder, name, rows):
    folder.mkdir(exist_ok=True)
    np.save(folder / f"{name}.npy", rows)


@pytest.fixture
def data_dir(tmp_path, shared_bitmaps):
    folder = tmp_path / "data"
    for name in ("circle", "square"):
        write_category(folder, name, np.load(shared_bitmaps / f"{name}.npy", mmap_mode="r")[:60])
    return folder


def bad_inputs(tmp_path, data_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    not_bitmap = tmp_path / "not-bitmap"
    shutil.copytree(data_dir, not_bitmap)
    (not_bitmap / "star.npy").write_bytes(b"<html><body>404 Not Found</body></html>")
    no_rows = tmp_path / "no-rows"
    shutil.copytree(data_dir, no_rows)
    write_category(no_rows, "star", np.zeros((0, 784), np.uint8))
    wrong_shape = tmp_path / "wrong-shape"
    shutil.copytree(data_dir, wrong_shape)
    write_category(wrong_shape, "star", np.zeros((5, 28, 28), np.float32))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    fake_ckpt = tmp_path / "last.pt"
    fake_ckpt.write_bytes(FAKE_CHECKPOINT)
    return {
        "missing data dir": (["--data-dir", str(tmp_path / "nope")], "does not exist"),
        "empty data dir": (["--data-dir", str(empty)], "no <category>.npy files"),
        "not a bitmap file": (["--data-dir", str(not_bitmap)], "star.npy: not a .npy file"),
        "wrong dtype": (["--data-dir", str(wrong_shape)], "star.npy: dtype is float32"),
        "category without rows": (["--data-dir", str(no_rows)], "has no drawings"),
        "unknown categories": (["--data-dir", str(data_dir), "--categories", "circle,dragon,unicorn"],
                               "unknown categories dragon, unicorn"),
        "unwritable output": (["--data-dir", str(data_dir), "--out", str(blocker / "run")], "not writable"),
        "output is a file": (["--data-dir", str(data_dir), "--out", str(blocker)], "is a file"),
        "resume non-checkpoint": (["--data-dir", str(data_dir), "--resume", str(fake_ckpt)], "not a checkpoint"),
        "resume missing": (["--data-dir", str(data_dir), "--resume", str(tmp_path / "gone.pt")], "not found"),
        "bad option value": (["--data-dir", str(data_dir), "--epochs", "0"], "--epochs must be 1 to 100,000, got 0"),
    }


CASES = ["missing data dir", "empty data dir", "not a bitmap file", "wrong dtype", "category without rows",
         "unknown categories", "unwritable output", "output is a file", "resume non-checkpoint", "resume missing",
         "bad option value"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_leaves_no_checkpoint(case, tmp_path, data_dir, monkeypatch, capsys):
    args, expected = bad_inputs(tmp_path, data_dir)[case]
    out_dir = tmp_path / "out"
    if "--out" not in args:
        args = [*args, "--out", str(out_dir)]
    if "--epochs" not in args:
        args = [*args, "--epochs", "1"]
    code, out, err = run_cli(monkeypatch, capsys, *args, "--device", "cpu", "--quiet")
    lines = err.strip().splitlines()
    assert code != 0
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    assert "Traceback" not in err + out
    # nothing written: the only .pt anywhere is the fake one the resume cases point at, unchanged
    assert sorted(tmp_path.rglob("*.pt")) == [tmp_path / "last.pt"]
    assert (tmp_path / "last.pt").read_bytes() == FAKE_CHECKPOINT


def test_out_folder_of_an_existing_run_is_not_overwritten(trained_checkpoint, shared_bitmaps, monkeypatch, capsys):
    before = trained_checkpoint.read_bytes()
    code, _, err = run_cli(monkeypatch, capsys, "--data-dir", str(shared_bitmaps), "--categories", CATEGORIES,
                           "--out", str(trained_checkpoint.parent), "--quiet")
    assert code != 0 and "already holds a run" in err
    assert trained_checkpoint.read_bytes() == before


def test_console_script_prints_one_line_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "qd.train.cli", "--data-dir", str(tmp_path / "missing")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    from qd.data.bitmaps import FETCH_HINT

    assert result.stderr.strip() == f"error: {tmp_path / 'missing'}: data directory does not exist ({FETCH_HINT})"


def test_resume_with_other_data_is_refused(trained_checkpoint, data_dir, monkeypatch, capsys):
    last = trained_checkpoint.parent / "last.pt"
    before = last.read_bytes()
    code, _, err = run_cli(monkeypatch, capsys, "--resume", str(last), "--data-dir", str(data_dir), "--quiet")
    # the run trained on apple, circle, square, star; this folder holds only circle and square
    assert code == 1 and err.count("\n") == 1 and "unknown categories apple, star" in err
    assert last.read_bytes() == before
