"""The same qd-train command under torchrun: 2 CPU ranks, gloo, loopback only."""

import os
import socket
import subprocess
import sys

from qd.files import folder_lock
from qd.train.checkpoint import load_checkpoint


def free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_train(shared_bitmaps, run) -> subprocess.CompletedProcess:
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", COLUMNS="120")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--nnodes", "1",
        "--master-addr", "127.0.0.1", "--master-port", str(free_loopback_port()),
        "-m", "qd.train.cli", "--data-dir", str(shared_bitmaps), "--categories", "circle,square,star",
        "--max-per-category", "100", "--epochs", "2", "--batch-size", "32", "--arch", "seed",
        "--device", "cpu", "--out", str(run),
    ]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=180)


def test_torchrun_two_ranks_train_one_run(shared_bitmaps, tmp_path):
    run = tmp_path / "run"
    result = torchrun_train(shared_bitmaps, run)  # only rank 0 takes the run folder's lock (or rank 1 is refused)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "on cpu x 2 ranks" in out
    # only rank 0 prints and writes
    assert out.count("epoch  1/2") == 1 and out.count("qd-train result") == 1
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "last.pt"]
    ckpt = load_checkpoint(run / "best.pt")
    # each rank read its own half of the train split: together exactly one epoch's worth (+1 pad)
    train_drawings = int(out.split(" train / ")[0].rsplit(" ", 1)[-1].replace(",", ""))
    assert all(m["samples"] in (train_drawings, train_drawings + 1) for m in ckpt["metrics"])
    val_drawings = int(out.split(" val / ")[0].rsplit(" ", 1)[-1].replace(",", ""))
    assert all(m["val_count"] == val_drawings for m in ckpt["metrics"])  # every val drawing exactly once


def test_torchrun_into_a_folder_another_run_is_writing_is_refused(shared_bitmaps, tmp_path):
    run = tmp_path / "run"
    with folder_lock(run):  # this test is the other run
        result = torchrun_train(shared_bitmaps, run)
    assert result.returncode != 0
    refusal = (f"error: {run}: another command (pid {os.getpid()}) is writing this folder; not started (wait for it "
               "to finish, or use another folder)\n")
    assert result.stderr.count(refusal) == 1, result.stderr  # rank 0's line; rank 1 ends with it
    assert list(run.iterdir()) == []


def test_the_trainer_is_freed_before_the_process_group_is_destroyed(shared_bitmaps, tmp_path, monkeypatch):
    """Under torchrun the trainer's DDP wrapper holds the process group's gloo work: freed late (by the cyclic
    collector, at interpreter shutdown) it aborted a rank. train() frees it before Distributed.close()."""
    import gc
    import weakref

    import qd.train.loop as loop
    from qd.train.cli import TrainConfig
    from qd.train.distributed import Distributed

    trainers, alive_at_close = [], []
    init = loop.Trainer.__init__

    def remembered(self, *args, **kwargs):
        trainers.append(weakref.ref(self))
        init(self, *args, **kwargs)

    def close(self):
        alive_at_close.append(any(ref() is not None for ref in trainers))

    monkeypatch.setattr(loop.Trainer, "__init__", remembered)
    monkeypatch.setattr(Distributed, "close", close)
    gc.disable()  # only what train() itself frees counts
    try:
        loop.train(TrainConfig(data_dir=shared_bitmaps, categories=["circle", "square"], max_per_category=50,
                               epochs=1, batch_size=32, arch="seed", device="cpu", out=tmp_path / "run", quiet=True))
    finally:
        gc.enable()
    assert alive_at_close == [False]
