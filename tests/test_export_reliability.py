"""qd-export under stress: killed mid-write (the finished model stays, a rerun completes), read while
the model is replaced (never a partial file), a full disk (one line, earlier files kept)."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import onnx

from qd.export.run import export_checkpoint

REPO = Path(__file__).resolve().parents[1]


# qd-export in a child process that kills itself (SIGKILL) when validation opens the model it has just written
# as a temp file: always mid-export, however fast or busy the machine is.
SELF_KILLING_EXPORT = """
import os, signal, sys
import qd.infer.model
opened = qd.infer.model.read_model_bytes
def open_or_die(path, *args, **kwargs):
    name = os.path.basename(str(path))
    if name.startswith(".model.onnx.") and name.endswith(".tmp"):
        os.kill(os.getpid(), signal.SIGKILL)
    return opened(path, *args, **kwargs)
qd.infer.model.read_model_bytes = open_or_die
from qd.export.cli import main
sys.argv[0] = "qd-export"
main()
"""


def test_sigkill_mid_export_keeps_the_finished_model_and_rerun_completes(trained_checkpoint, exported_model, tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    previous = (exported_model / "model.onnx").read_bytes()
    (out / "model.onnx").write_bytes(previous)
    process = subprocess.run([sys.executable, "-c", SELF_KILLING_EXPORT, str(trained_checkpoint), "--out", str(out)],
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)
    assert process.returncode == -signal.SIGKILL, process.stderr.decode()
    temps = list(out.parent.glob(f".{out.name}.*.tmp/.model.onnx.*.tmp"))
    assert temps  # the kill really landed mid-export: its half-done temp file is still there
    assert (out / "model.onnx").read_bytes() == previous  # the finished model was never touched
    onnx.checker.check_model(str(out / "model.onnx"))

    report = export_checkpoint(trained_checkpoint, "onnx", out=out)
    assert report.ok, report.errors
    assert sorted(p.name for p in out.iterdir()) == ["labels.txt", "model.json", "model.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # the killed run's staging folder is gone
    onnx.checker.check_model(str(out / "model.onnx"))


def test_readers_never_see_a_partial_model_while_it_is_replaced(trained_checkpoint, exported_model, tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "model.onnx").write_bytes((exported_model / "model.onnx").read_bytes())
    stop = threading.Event()
    reads, failures = [], []

    def reader():
        while not stop.is_set():
            try:
                model = onnx.load_from_string((out / "model.onnx").read_bytes())
                assert {p.key for p in model.metadata_props} >= {"qd.labels", "qd.preprocessing"}
                reads.append(1)
            except Exception as exc:  # any partial or missing file is a failure
                failures.append(repr(exc)[:200])
            time.sleep(0.001)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        while not reads and not failures and thread.is_alive():
            time.sleep(0.001)  # the reader is reading before the export starts
        before = (out / "model.onnx").stat().st_ino
        reads_before = len(reads)
        report = export_checkpoint(trained_checkpoint, "onnx", out=out)
        reads_during = len(reads) - reads_before
        assert report.ok, report.errors
        # a new file was swapped in, rather than the old one rewritten in place
        assert (out / "model.onnx").stat().st_ino != before
    finally:
        stop.set()
        thread.join()
    assert not failures, failures[:3]
    assert reads_during > 10  # the reader ran while the model was replaced (the interpreter switches every 5 ms)


def test_full_disk_gives_one_clear_error_and_keeps_earlier_files(trained_checkpoint, exported_model, tmp_path, monkeypatch):
    import errno

    import qd.export.onnx_export as onnx_export

    out = tmp_path / "export"
    out.mkdir()
    previous = (exported_model / "model.onnx").read_bytes()
    (out / "model.onnx").write_bytes(previous)

    def disk_full(model, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"\0" * 1000)  # a partial write, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(onnx_export.onnx, "save_model", disk_full)
    report = export_checkpoint(trained_checkpoint, "onnx", out=out)
    assert not report.ok
    assert report.errors == [f"{out / 'model.onnx'}: No space left on device (while writing onnx)"]
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no staging folder left behind
    assert (out / "model.onnx").read_bytes() == previous
