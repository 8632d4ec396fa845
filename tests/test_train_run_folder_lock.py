"""One qd-train run per run folder: the folder's writer lock (qd.files.folder_lock) is taken before the
"already holds a run" check (before last.pt is read, with --resume) and held until the run has ended, by
rank 0 only. A second run into a folder being written is refused at once, with one line naming the folder
and the pid of the run that holds it; the folder then holds one run's hyperparameters, metrics and
weights. A child forked while the lock is held (a DataLoader worker) does not keep it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qd.files import folder_lock
from qd.train import cli
from qd.train.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]

# qd-train, stopped at two points (a line on stdout, then waiting for one on stdin): once built, with the
# "already holds a run" check passed; and after its epochs, before best.pt is reread and rewritten.
PAUSING_TRAIN = """
import sys
from qd.train import loop

def pause(where):
    print(where, flush=True)
    sys.stdin.readline()

run, finish = loop.Trainer.run, loop.Trainer._finish
loop.Trainer.run = lambda self: (pause("built"), run(self))[1]
loop.Trainer._finish = lambda self, *args: (pause("finishing"), finish(self, *args))[1]
sys.argv[0] = "qd-train"
from qd.train.cli import main
main()
"""


def busy_line(folder: Path, pid: int) -> str:
    return (f"error: {folder}: another command (pid {pid}) is writing this folder; not started (wait for it to "
            "finish, or use another folder)\n")


def start_run(shared_bitmaps: Path, out: Path, seed: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", PAUSING_TRAIN, "--data-dir", str(shared_bitmaps), "--categories", "apple,circle",
         "--max-per-category", "100", "--epochs", "1", "--batch-size", "32", "--steps-per-epoch", "2",
         "--seed", str(seed), "--device", "cpu", "--out", str(out), "--quiet"],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"))


def go_on(run: subprocess.Popen) -> str:
    """Let a paused run go on; the next point it stops at ("" once it has ended)."""
    run.stdin.write("\n")
    run.stdin.flush()
    return run.stdout.readline().strip()


def test_two_runs_into_one_folder_give_one_whole_run(shared_bitmaps, tmp_path):
    out = tmp_path / "run"
    first = start_run(shared_bitmaps, out, seed=1)
    second = None
    try:
        assert first.stdout.readline().strip() == "built", first.stderr.read()  # checked, locked, nothing written
        second = start_run(shared_bitmaps, out, seed=2)
        second_stop = second.stdout.readline().strip()  # "" once it has ended
        assert go_on(first) == "finishing"  # its epoch is written: best.pt and last.pt
        if second_stop == "built":  # without the lock the second run passed the check too: the race, replayed
            assert go_on(second) == "finishing"
            go_on(second)  # the second run writes its own best.pt and last.pt, and ends
        second_err = second.communicate(timeout=300)[1]
        go_on(first)  # the first run rereads best.pt for its test metrics and rewrites it
        first_err = first.communicate(timeout=300)[1]
    finally:
        for run in (first, second):
            if run is not None and run.poll() is None:
                run.kill()
                run.wait()
    assert first.returncode == 0, first_err
    best, last = load_checkpoint(out / "best.pt"), load_checkpoint(out / "last.pt")
    assert best["hparams"]["seed"] == last["hparams"]["seed"] == 1  # one run's settings ...
    assert best["metrics"] == last["metrics"]  # ... its metrics (one epoch: best is last) ...
    assert all(torch.equal(best["state_dict"][k], last["state_dict"][k]) for k in best["state_dict"])  # ... weights
    assert second.returncode == 1 and second_err == busy_line(out, first.pid)
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "last.pt"]


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["qd-train", *args, "--device", "cpu", "--quiet"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    return exit_info.value.code, capsys.readouterr().err


def test_a_fresh_run_or_a_resume_into_a_folder_being_written_is_refused_at_once(trained_checkpoint, shared_bitmaps,
                                                                               tmp_path, monkeypatch, capsys):
    run = shutil.copytree(trained_checkpoint.parent, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    empty = tmp_path / "empty"
    with folder_lock(run), folder_lock(empty):  # this test is the run writing them
        code, err = run_cli(monkeypatch, capsys, "--resume", str(run / "last.pt"))
        assert (code, err) == (1, busy_line(run, os.getpid()))
        code, err = run_cli(monkeypatch, capsys, "--data-dir", str(shared_bitmaps), "--categories", "apple,circle",
                            "--max-per-category", "100", "--epochs", "1", "--out", str(empty))
        assert (code, err) == (1, busy_line(empty, os.getpid()))
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before and list(empty.iterdir()) == []


def test_a_child_forked_while_the_lock_is_held_does_not_keep_it(tmp_path):
    """A DataLoader worker is forked from the training process: were its copy of the lock kept, a killed
    trainer's folder would stay locked for as long as the worker lives."""
    folder = tmp_path / "run"
    go_read, go_write = os.pipe()  # the test tells the child to end
    up_read, up_write = os.pipe()  # the child says it runs (past fork: its at-fork handlers have run)
    with folder_lock(folder, wait=False):
        child = os.fork()
        if child == 0:  # the worker: alive until the test has looked
            os.write(up_write, b"1")
            os.read(go_read, 1)
            os._exit(0)
    try:
        assert os.read(up_read, 1) == b"1"
        with folder_lock(folder, wait=False):  # the parent let go, the child lives on: free
            pass
    finally:
        os.write(go_write, b"1")
        os.waitpid(child, 0)
        for fd in (go_read, go_write, up_read, up_write):
            os.close(fd)
