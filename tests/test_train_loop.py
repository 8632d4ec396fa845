"""Training runs: reproducible with a seed, early stopping, and SIGKILL + --resume = uninterrupted."""

import os
import random
import signal
import subprocess
import sys

import pytest
import torch

import qd.train.loop as loop
from qd.train.checkpoint import load_checkpoint
from qd.train.cli import TrainConfig
from terminal import ANSI, run_on_terminal, shows_a_bar

CATEGORIES = ["circle", "square", "star"]
TIMING_KEYS = {"seconds", "samples_per_s"}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models train fastest on one thread, and busy CI cores punish spinning OpenMP threads.
    The killed subprocess below runs with OMP_NUM_THREADS=1 too, so every run computes alike."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(shared_bitmaps, out, **overrides) -> TrainConfig:
    settings = dict(data_dir=shared_bitmaps, categories=CATEGORIES, max_per_category=120, epochs=2, batch_size=32,
                    device="cpu", out=out, quiet=True)
    settings.update(overrides)
    return TrainConfig(**settings)


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def untimed(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k not in TIMING_KEYS} for m in metrics]


def test_same_seed_gives_the_same_checkpoint(shared_bitmaps, tmp_path):
    first = load_checkpoint(loop.train(tiny(shared_bitmaps, tmp_path / "a", seed=5)))
    again = load_checkpoint(loop.train(tiny(shared_bitmaps, tmp_path / "b", seed=5)))
    other = load_checkpoint(loop.train(tiny(shared_bitmaps, tmp_path / "c", seed=6)))
    assert same_weights(first["state_dict"], again["state_dict"])
    assert untimed(first["metrics"]) == untimed(again["metrics"]) and first["test"] == again["test"]
    assert not same_weights(first["state_dict"], other["state_dict"])


def test_early_stopping_keeps_the_best_epoch(shared_bitmaps, tmp_path, monkeypatch):
    real_evaluate = loop.evaluate
    val_losses = iter([1.0, 0.5, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2])

    trainer_val_loader = [None]

    def fake_evaluate(model, loader, dist):  # validation loss: 1.0, 0.5, then only worse
        result = real_evaluate(model, loader, dist)
        return dict(result, loss=next(val_losses)) if loader is trainer_val_loader[0] else result

    real_init = loop.Trainer.__init__

    def init_and_remember(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        trainer_val_loader[0] = self.val_loader

    monkeypatch.setattr(loop.Trainer, "__init__", init_and_remember)
    monkeypatch.setattr(loop, "evaluate", fake_evaluate)
    best = loop.train(tiny(shared_bitmaps, tmp_path / "run", arch="seed", epochs=8, patience=2))
    ckpt = load_checkpoint(best)
    assert [m["epoch"] for m in ckpt["metrics"]] == [1, 2, 3, 4]  # epochs 3 and 4 did not improve
    assert ckpt["best"]["epoch"] == 2 and ckpt["best"]["val_loss"] == 0.5
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert last["train_state"]["epoch"] == 4
    assert not same_weights(ckpt["state_dict"], last["state_dict"])  # best.pt holds epoch 2's weights


# qd-train in a child process that kills itself (SIGKILL, as the OOM killer would) at the `steps`-th training step
# after last.pt first exists: always mid-run, at a step the test chooses, however fast or busy the machine is.
SELF_KILLING_TRAIN = """
import os, signal, sys
from pathlib import Path
import torch
last, steps = Path(sys.argv.pop(1)), int(sys.argv.pop(1))
backward, seen = torch.Tensor.backward, []
def backward_or_die(self, *args, **kwargs):
    if last.exists():
        seen.append(1)
        if len(seen) == steps:
            os.kill(os.getpid(), signal.SIGKILL)
    return backward(self, *args, **kwargs)
torch.Tensor.backward = backward_or_die
from qd.train.cli import main
sys.argv[0] = "qd-train"
main()
"""


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(shared_bitmaps, tmp_path):
    settings = dict(max_per_category=200, epochs=3, batch_size=16)
    reference = load_checkpoint(loop.train(tiny(shared_bitmaps, tmp_path / "whole", **settings)))

    run = tmp_path / "killed"
    step = random.randint(1, 25)  # a random step of epoch 2 (30 steps an epoch)
    proc = subprocess.run([sys.executable, "-c", SELF_KILLING_TRAIN, str(run / "last.pt"), str(step),
                           "--data-dir", str(shared_bitmaps), "--categories", ",".join(CATEGORIES),
                           "--max-per-category", "200", "--epochs", "3", "--batch-size", "16",
                           "--device", "cpu", "--out", str(run), "--quiet"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    killed_at = load_checkpoint(run / "last.pt")["train_state"]["epoch"]
    assert killed_at == 1, f"killed at step {step} of epoch 2, but last.pt is from epoch {killed_at}"
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]

    resumed = load_checkpoint(loop.train(TrainConfig(data_dir=None, resume=run / "last.pt", quiet=True)))
    assert same_weights(resumed["state_dict"], reference["state_dict"])
    assert untimed(resumed["metrics"]) == untimed(reference["metrics"])
    assert resumed["best"] == reference["best"] and resumed["test"] == reference["test"]
    assert resumed["hparams"]["resume"] is not None


def test_resume_refuses_a_checkpoint_without_training_state(trained_checkpoint, shared_bitmaps):
    with pytest.raises(loop.QDError, match="no training state"):
        loop.train(TrainConfig(data_dir=shared_bitmaps, resume=trained_checkpoint, quiet=True))


EPOCH_BARS = """
import time
from qd.train.loop import Reporter
for epoch, enabled in ((2, True), (4, False)):  # epoch 4: a quiet run
    report = Reporter(enabled)
    with report.epoch_progress(epoch, 5, 96) as advance:
        for _ in range(3):
            time.sleep(0.15)
            advance(32)
    report.print(f"epoch {epoch} done")
"""


def test_epoch_bar_on_a_terminal_only_and_never_when_quiet():
    piped, err, code = run_on_terminal([sys.executable, "-c", EPOCH_BARS])
    assert code == 0, err
    assert piped == "epoch 2 done\n"
    terminal, err, code = run_on_terminal([sys.executable, "-c", EPOCH_BARS], stdout_tty=True)
    assert code == 0, err
    text = ANSI.sub("", terminal)
    assert shows_a_bar(text, unit="samples") and "epoch 2/5" in text and "/96" in text
    assert "epoch 4/5" not in text and "epoch 2 done" in text and "epoch 4 done" not in text
