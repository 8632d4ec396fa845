"""The same qd-train command under torchrun: 2 CPU ranks, gloo, loopback only."""

import os
import socket
import subprocess
import sys

from qd.train.checkpoint import load_checkpoint


def free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_ranks_train_one_run(shared_bitmaps, tmp_path):
    run = tmp_path / "run"
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", COLUMNS="120")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--nnodes", "1",
        "--master-addr", "127.0.0.1", "--master-port", str(free_loopback_port()),
        "-m", "qd.train.cli", "--data-dir", str(shared_bitmaps), "--categories", "circle,square,star",
        "--max-per-category", "100", "--epochs", "2", "--batch-size", "32", "--arch", "seed",
        "--device", "cpu", "--out", str(run),
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=180)
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
