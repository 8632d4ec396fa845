"""An export folder is one set, all from one checkpoint: leftovers of killed runs are removed and
never carried into the new set (the user's own files are); where no staging folder fits beside it,
files are replaced one by one inside it and the run's note says so; SIGKILL between format commits
leaves the previous set whole; a full disk during int8 is one line and leaves no temp file; a
converter failing on a nearly full disk says the disk is full.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from qd.files import sha256_path

REPO = Path(__file__).resolve().parents[1]


def test_leftovers_of_killed_runs_are_removed_and_never_carried(tmp_path):
    from qd.export import run as folder

    managed = ["model.onnx", "model.int8.onnx", "model.json", "labels.txt"]
    out = tmp_path / "export"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"old")
    (out / "mine.txt").write_text("keep")
    (out / ".notes.tmp").write_text("keep too: a name like a temp file's, but not of a file qd-export writes")
    (out / ".model.onnx.x1.tmp").write_bytes(b"half")
    leftover = tmp_path / f".export.{'ab' * 8}.staging.tmp"  # a staging folder a SIGKILL left behind
    leftover.mkdir()
    (leftover / "model.onnx").write_bytes(b"new, never committed")
    staging = folder.begin(out, managed)
    assert not leftover.exists() and not (out / ".model.onnx.x1.tmp").exists()
    assert not staging.in_place and staging.work.parent == tmp_path
    folder.carry(staging, keep=[])
    assert sorted(p.name for p in staging.work.iterdir()) == [".notes.tmp", "mine.txt"]  # ours: only if vouched
    (staging.work / "model.onnx").write_bytes(b"new")
    (staging.work / ".model.int8.onnx.zz.tmp").write_bytes(b"half")
    folder.commit(staging, managed, remove=[])
    assert sorted(p.name for p in out.iterdir()) == [".notes.tmp", "mine.txt", "model.onnx"]
    assert (out / "model.onnx").read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_in_place_fallback_when_the_parent_cannot_hold_a_staging_folder(tmp_path, monkeypatch):
    from qd.export import run as folder

    out = tmp_path / "export"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"old")
    (out / "model.int8.onnx").write_bytes(b"another checkpoint's")
    real = folder._locked_staging_folder

    def no_parent(parent, final_name, held):
        if parent == tmp_path:
            raise PermissionError(13, "Permission denied", str(parent))
        return real(parent, final_name, held)

    monkeypatch.setattr(folder, "_locked_staging_folder", no_parent)
    staging = folder.begin(out, ["model.onnx", "model.int8.onnx", "model.json"])
    assert staging.in_place and staging.work.parent == out and "one by one" in staging.note
    (staging.work / "model.onnx").write_bytes(b"new")
    (staging.work / "model.json").write_text("{}")
    folder.commit(staging, ["model.onnx", "model.int8.onnx", "model.json"], remove=["model.int8.onnx"])
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.onnx"]


# Export folder names that are prefixes and extensions of each other, with dots and spaces.
FOLDER_NAMES = st.text(alphabet="EXPa. -_", min_size=1, max_size=6).filter(lambda name: name not in (".", ".."))
EXTENSIONS = st.one_of(st.sampled_from([".v2", " copy", ".staging", ".tmp", f".{'ab' * 8}", f".{'ab' * 8}.staging.tmp",
                                        f".{'ab' * 8}.staging", ".staging.tmp"]),
                       st.text(alphabet="v2. _", min_size=1, max_size=4))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(base=FOLDER_NAMES, extension=EXTENSIONS, longer_is_ours=st.booleans())
def test_a_sibling_exports_staging_and_files_are_never_removed(tmp_path, base, extension, longer_is_ours):
    """Runs into EXP and EXP.v2 (or any two names one of which extends the other): each removes only its own
    folder's leftovers, and only those no run is still writing; a sibling's staging, live or left by a killed
    run, and its files stay."""
    from qd.export import run as folder

    ours, sibling = (base + extension, base) if longer_is_ours else (base, base + extension)
    assume(folder.staging_of(sibling) != ours)  # `.<ours>.<16 hex>.staging.tmp` is the one name reserved
    managed = ["model.onnx", "model.json", "labels.txt"]
    parent = Path(tempfile.mkdtemp(dir=tmp_path))
    for name in (ours, sibling):
        (parent / name).mkdir()
        (parent / name / "model.onnx").write_bytes(name.encode())

    def killed_runs_staging(name: str) -> Path:  # what a killed run leaves: its staging folder, with no lock on it
        leftover = parent / f".{name}.{'0f' * 8}.staging.tmp"
        leftover.mkdir()
        (leftover / "model.onnx").write_bytes(b"never committed")
        return leftover

    sibling_live = folder.begin(parent / sibling, managed)  # a sibling run, still writing
    (sibling_live.work / "model.onnx").write_bytes(b"sibling, live")
    sibling_killed = killed_runs_staging(sibling)
    ours_live = folder.begin(parent / ours, managed)  # a concurrent run into our own folder
    (ours_live.work / "model.onnx").write_bytes(b"ours, live")
    ours_killed = killed_runs_staging(ours)

    staging = folder.begin(parent / ours, managed)
    try:
        assert not ours_killed.exists()  # ours, and its writer is gone
        assert (sibling_live.work / "model.onnx").read_bytes() == b"sibling, live"
        assert (sibling_killed / "model.onnx").read_bytes() == b"never committed"  # the sibling's to remove
        assert (ours_live.work / "model.onnx").read_bytes() == b"ours, live"
        (staging.work / "model.onnx").write_bytes(b"new")
        folder.commit(staging, managed, remove=[])
        assert (parent / ours / "model.onnx").read_bytes() == b"new"
        assert (parent / sibling / "model.onnx").read_bytes() == sibling.encode()
    finally:
        for run in (sibling_live, ours_live, staging):
            folder.abandon(run)


def _other_checkpoint(trained_checkpoint: Path, where: Path) -> Path:
    from qd.train.checkpoint import load_checkpoint, save_checkpoint

    payload = load_checkpoint(trained_checkpoint)
    payload["hparams"] = {**payload["hparams"], "note": "another training run"}
    return save_checkpoint(payload, where / "other" / "best.pt")


def test_sigkill_between_format_commits_leaves_the_previous_set_whole(trained_checkpoint, exported_model, tmp_path):
    out = shutil.copytree(exported_model, tmp_path / "export")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    other = _other_checkpoint(trained_checkpoint, tmp_path)
    process = subprocess.Popen([sys.executable, "-c", "from qd.export.cli import main; main()", str(other),
                                "--format", "onnx,onnx-int8", "--out", str(out)],
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            if any(tmp_path.glob(".export.*.tmp/model.onnx")):  # onnx committed to the new set, int8 not yet
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
        else:
            pytest.fail("qd-export never got between its formats")
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the previous set, whole

    from qd.export.run import export_checkpoint

    report = export_checkpoint(other, "onnx,onnx-int8", out=out)
    assert report.ok, report.errors
    card = json.loads((out / "model.json").read_text())
    assert set(card["files"]) == {"onnx", "onnx-int8", "labels"}
    assert all(sha256_path(out / entry["file"]) == entry["sha256"] for entry in card["files"].values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "other"]  # the killed run's staging is gone


def test_a_full_disk_during_int8_is_one_clear_line_and_leaves_no_temp_file(trained_checkpoint, tmp_path, monkeypatch,
                                                                           capfd):
    """A real write limit (RLIMIT_FSIZE, as a full disk would) while onnxruntime's quantizer writes: its own
    C++ writer fails silently and logs a traceback; the user gets one line, and the set keeps model.onnx."""
    import resource

    import qd.export.quantize as quantize
    from qd.export.run import export_checkpoint

    real = quantize.quant_pre_process
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)

    def on_a_full_disk(*args, **kwargs):
        previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, limits[1]))
        try:
            return real(*args, **kwargs)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, limits)
            signal.signal(signal.SIGXFSZ, previous)

    monkeypatch.setattr(quantize, "quant_pre_process", on_a_full_disk)
    out = tmp_path / "export"
    report = export_checkpoint(trained_checkpoint, "onnx,onnx-int8", out=out)
    assert report.errors == [f"{out / 'model.int8.onnx'}: File too large (while writing onnx-int8)"]
    assert sorted(p.name for p in out.iterdir()) == ["labels.txt", "model.json", "model.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    assert "Traceback" not in capfd.readouterr().err


def test_a_converter_failing_on_a_nearly_full_disk_says_the_disk_is_full(trained_checkpoint, tmp_path, monkeypatch):
    import qd.export.run as api
    import qd.export.quantize as quantize

    def truncated(source, target, **kwargs):
        Path(target).write_bytes(b"\x08\x07trunc")  # what a C++ writer leaves when the disk fills up
        raise RuntimeError("[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Protobuf parsing failed.")

    monkeypatch.setattr(quantize, "quant_pre_process", truncated)
    monkeypatch.setattr(api, "_free_space", lambda folder: 4096)
    out = tmp_path / "export"
    report = api.export_checkpoint(trained_checkpoint, "onnx,onnx-int8", out=out)
    assert report.errors == [f"{out / 'model.int8.onnx'}: No space left on device (while writing onnx-int8: "
                             "4,096 bytes free; the converter then failed with RuntimeError)"]
    assert sorted(p.name for p in out.iterdir()) == ["labels.txt", "model.json", "model.onnx"]
