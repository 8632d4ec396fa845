"""qd-export under stress: killed mid-write, read while being replaced, fed a booby-trapped checkpoint."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import onnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qd.data.errors import QDError
from qd.export.api import export_checkpoint
from qd.export.checkpoint_source import load_source
from qd.export.cli import main
from qd.train.checkpoint import load_checkpoint

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


class _RunsCodeWhenUnpickled:
    """Unpickling this creates `marker`: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_checkpoint_that_would_run_code_is_refused_and_code_never_runs(trained_checkpoint, tmp_path, monkeypatch, capsys):
    marker = tmp_path / "pwned"
    payload = load_checkpoint(trained_checkpoint)
    payload["hparams"] = {"note": _RunsCodeWhenUnpickled(marker)}
    crafted = tmp_path / "run" / "best.pt"
    crafted.parent.mkdir()
    torch.save(payload, crafted)

    monkeypatch.setattr(sys, "argv", ["qd-export", str(crafted), "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 1
    assert "refused: not loadable with weights_only=True" in err and "Traceback" not in err
    assert not marker.exists()
    assert not (tmp_path / "out").exists()

    torch.load(crafted, weights_only=False)  # the control: an unsafe load really would have run it
    assert marker.exists()
    os.remove(marker)


@pytest.fixture(scope="module")
def checkpoint_bytes(trained_checkpoint) -> bytes:
    return trained_checkpoint.read_bytes()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damaged_checkpoints_load_or_fail_with_one_clear_error(checkpoint_bytes, tmp_path, data):
    """Truncated, bit-flipped or overwritten checkpoints: a QDError naming the file, or a clean load."""
    blob = bytearray(checkpoint_bytes)
    damage = data.draw(st.sampled_from(["truncate", "flip", "overwrite"]))
    if damage == "truncate":
        blob = blob[: data.draw(st.integers(0, len(blob) - 1))]
    else:
        for _ in range(data.draw(st.integers(1, 8))):
            at = data.draw(st.integers(0, len(blob) - 1))
            blob[at] = data.draw(st.integers(0, 255)) if damage == "overwrite" else blob[at] ^ (1 << data.draw(st.integers(0, 7)))
    path = tmp_path / "damaged.pt"
    path.write_bytes(bytes(blob))
    try:
        source = load_source(path)
    except QDError as exc:
        message = str(exc)
        assert message.startswith(str(path)) or "checkpoint" in message, message
        assert "\n" not in message
    else:
        assert source.classes and source.model is not None
