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
import pytest

from qd.export.api import export_checkpoint

REPO = Path(__file__).resolve().parents[1]


def _wait_for_temp(folder: Path, process: subprocess.Popen, timeout: float = 120.0) -> Path:
    """The in-progress temp model, as soon as it exists (export + validation take seconds). It is
    written in the staging folder beside the export folder (`.<name>.*.tmp/`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for temp in folder.parent.glob(f".{folder.name}.*.tmp/.model.onnx.*.tmp"):
            return temp
        if process.poll() is not None:
            pytest.fail(f"qd-export finished before it could be killed (rc {process.returncode})")
        time.sleep(0.002)
    pytest.fail("qd-export never started writing model.onnx")


def test_sigkill_mid_export_keeps_the_finished_model_and_rerun_completes(trained_checkpoint, exported_model, tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    previous = (exported_model / "model.onnx").read_bytes()
    (out / "model.onnx").write_bytes(previous)
    process = subprocess.Popen(
        [sys.executable, "-c", "from qd.export.cli import main; main()", str(trained_checkpoint), "--out", str(out)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        temp = _wait_for_temp(out, process)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert temp.exists()  # the kill really landed mid-export: its half-done temp file is still there
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
        before = (out / "model.onnx").stat().st_ino
        report = export_checkpoint(trained_checkpoint, "onnx", out=out)
        assert report.ok, report.errors
        # a new file was swapped in, rather than the old one rewritten in place
        assert (out / "model.onnx").stat().st_ino != before
    finally:
        stop.set()
        thread.join()
    assert not failures, failures[:3]
    assert len(reads) > 10


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
