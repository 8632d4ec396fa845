"""Issue 15, class 6: integrity across interruptions.

- A download resumed after an interruption is of one version of the file: the kept bytes
  are used only if the server still names the version they were fetched from (ETag or
  Last-Modified, sent as If-Range), whatever the server does with Range and If-Range and
  whenever the file changes (between runs, or between the probe and the resumed request).
  The result is the server's current file byte for byte, or one error line; never a splice.
- An export folder is one set: a run killed at any moment leaves the previous set; a
  reader given a folder that mixes two exports says so instead of comparing them.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onnx_synth import tiny_model
from qd.data.errors import QDError
from qd.data.fetch import FetchOptions, fetch_category, part_path, version_path
from qd.data.files import sha256_path
from qd.data.sources import UrlSource

REPO = Path(__file__).resolve().parents[1]
ROWS = 3000


@pytest.fixture(scope="module")
def versions(shared_bitmaps, tmp_path_factory) -> dict[str, Path]:
    """Three versions of one category's file: the first, the same size reshuffled (same header), shorter."""
    folder = tmp_path_factory.mktemp("versions")
    rows = np.asarray(np.load(shared_bitmaps / "cat.npy", mmap_mode="r")[:ROWS])
    np.save(folder / "first.npy", rows)
    np.save(folder / "same-size.npy", rows[np.random.default_rng(0).permutation(ROWS)])
    np.save(folder / "shorter.npy", rows[: ROWS - 700])
    return {path.stem: path for path in folder.iterdir()}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(validators=st.sampled_from([("etag", "last_modified"), ("etag",), ("last_modified",), ()]),
       honour_if_range=st.booleans(), ignore_range=st.booleans(),
       change=st.sampled_from(["none", "same-size", "shorter"]), when=st.sampled_from(["between runs", "mid-resume"]),
       drop_at=st.integers(4097, 128 + ROWS * 784 - 1))  # past the probe's first 4096 bytes
def test_a_resumed_download_is_the_servers_file_byte_for_byte_or_one_error(
        qd_server, versions, tmp_path_factory, validators, honour_if_range, ignore_range, change, when, drop_at):
    qd_server.reset()
    qd_server.add("cat", versions["first"])
    qd_server.validators(*validators)
    qd_server.honour_if_range(honour_if_range)
    out = tmp_path_factory.mktemp("resume")
    source = UrlSource(qd_server.base_url, timeout=10)
    options = FetchOptions(retries=0, retry_wait=0)
    qd_server.drop_after("cat", drop_at)
    with pytest.raises(QDError):
        fetch_category(source, "cat", out, options)  # the first run is cut off
    qd_server.ignore_range(ignore_range)  # the rerun may meet a server that ignores Range
    if change != "none" and when == "between runs":
        qd_server.add("cat", versions[change])
    elif change != "none":
        qd_server.change_after("cat", versions[change], requests=1)  # after the rerun's probe
    try:
        result = fetch_category(source, "cat", out, options)
    except QDError as exc:  # allowed only where the change could not be told from the first response
        assert "\n" not in str(exc) and not (out / "cat.npy").exists()
        assert change != "none" and (when == "mid-resume" or not validators), exc
        return
    served = qd_server.bytes_of("cat")
    assert (out / "cat.npy").read_bytes() == served  # exactly the server's current file
    assert not part_path(out, "cat").exists() and not version_path(part_path(out, "cat")).exists()
    if change != "none" or not validators:
        assert result.action == "downloaded" and result.resumed_from == 0  # nothing kept could be trusted


def test_the_splice_from_the_report_cannot_happen(qd_server, versions, tmp_path):
    """Killed after 1,337 rows; the mirror then serves a new file of the same size: it is fetched whole."""
    qd_server.add("cat", versions["first"])
    qd_server.drop_after("cat", 128 + 1337 * 784)
    source = UrlSource(qd_server.base_url, timeout=10)
    with pytest.raises(QDError):
        fetch_category(source, "cat", tmp_path, FetchOptions(retries=0))
    assert part_path(tmp_path, "cat").stat().st_size == 128 + 1337 * 784
    qd_server.add("cat", versions["same-size"])
    result = fetch_category(source, "cat", tmp_path, FetchOptions(retries=0))
    assert (tmp_path / "cat.npy").read_bytes() == versions["same-size"].read_bytes()
    assert result.note == "restarted: the source file changed since the 1.0 MB were kept"
    resumes = [hit for hit in qd_server.hits_for("cat") if hit.range and not hit.range.startswith("bytes=0-")]
    assert resumes == []  # the kept bytes were never extended


def test_an_unchanged_file_is_still_resumed_with_if_range(qd_server, versions, tmp_path):
    qd_server.add("cat", versions["first"])
    qd_server.drop_after("cat", 1_000_000)
    source = UrlSource(qd_server.base_url, timeout=10)
    with pytest.raises(QDError):
        fetch_category(source, "cat", tmp_path, FetchOptions(retries=0))
    result = fetch_category(source, "cat", tmp_path, FetchOptions(retries=0))
    assert result.action == "resumed" and result.resumed_from == 1_000_000
    assert (tmp_path / "cat.npy").read_bytes() == versions["first"].read_bytes()


# ----------------------------------------------------------------------------- export sets

def _card(folder: Path, source_sha: str, files: dict[str, str]) -> None:
    """model.json as qd-export writes it (the parts readers check)."""
    entries = {name: {"file": file, "sha256": sha256_path(folder / file)} for name, file in files.items()}
    (folder / "model.json").write_text(json.dumps({"format": "qd-export-card-v1", "source": {"sha256": source_sha},
                                                   "files": entries}))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(onnx_from=st.sampled_from("AB"), int8_from=st.sampled_from("AB"), card_from=st.sampled_from("AB"),
       card=st.sampled_from(["none", "lists both", "lists only onnx", "int8 replaced after"]))
def test_readers_detect_a_folder_that_mixes_two_exports(tmp_path_factory, onnx_from, int8_from, card_from, card):
    from qd.evaluate.backends import open_onnx_int8
    from qd.evaluate.model_info import load_model_info

    sha = {"A": "a" * 64, "B": "b" * 64}
    folder = tmp_path_factory.mktemp("set")
    labels = ["apple", "circle"]
    tiny_model(folder / "model.onnx", labels, seed=1, qd_source_sha256=sha[onnx_from])
    tiny_model(folder / "model.int8.onnx", labels, seed=2, qd_source_sha256=sha[int8_from], qd_precision="int8")
    if card == "lists both" or card == "int8 replaced after":
        _card(folder, sha[card_from], {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx"})
    elif card == "lists only onnx":
        _card(folder, sha[card_from], {"onnx": "model.onnx"})
    if card == "int8 replaced after":
        tiny_model(folder / "model.int8.onnx", labels, seed=3, qd_source_sha256=sha[int8_from], qd_precision="int8")
    reference_ok = card == "none" or card_from == onnx_from
    int8_ok = int8_from == onnx_from and card in ("none", "lists both")
    try:
        info = load_model_info(folder)
    except QDError as exc:
        assert not reference_ok and "mixes two exports" in str(exc)
        return
    assert reference_ok
    try:
        open_onnx_int8(info, None)
    except QDError as exc:
        assert not int8_ok and str(exc).startswith(str(folder / "model.int8.onnx"))
        assert "mixes two exports" in str(exc) and "\n" not in str(exc)
    else:
        assert int8_ok


def test_qd_eval_says_so_instead_of_comparing_a_mixed_folder(tmp_path):
    from fixtures_data import invoke_cli
    from qd.evaluate.cli import main

    labels = ["a", "b"]
    tiny_model(tmp_path / "run" / "model.onnx", labels, qd_source_sha256="a" * 64)
    tiny_model(tmp_path / "run" / "model.int8.onnx", labels, qd_source_sha256="b" * 64, qd_precision="int8")
    data = tmp_path / "data"
    for label in labels:
        (data / label).mkdir(parents=True)
        np.save(data / label / "rows.npy", np.random.default_rng(0).integers(0, 255, (4, 784), dtype=np.uint8))
    result = invoke_cli(main, "--model", tmp_path / "run", "--data", data, "--backend", "onnx,onnx-int8",
                        "--no-speed", "--out", tmp_path / "eval")
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    int8 = next(b for b in report["backends"] if b["name"] == "onnx-int8")
    assert int8["status"] == "skipped" and "exported from another checkpoint" in int8["reason"]
    assert "onnx-int8 skipped:" in result.stdout


def test_leftovers_of_killed_runs_are_removed_and_never_carried(tmp_path):
    from qd.export import folder

    out = tmp_path / "export"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"old")
    (out / "mine.txt").write_text("keep")
    (out / ".model.onnx.x1.tmp").write_bytes(b"half")
    (tmp_path / ".export.abcd.tmp").mkdir()  # a staging folder a SIGKILL left behind
    (tmp_path / ".export.abcd.tmp" / "model.onnx").write_bytes(b"new, never committed")
    staging = folder.begin(out, ["model.onnx", "model.json", "labels.txt"])
    assert not (tmp_path / ".export.abcd.tmp").exists() and not (out / ".model.onnx.x1.tmp").exists()
    assert not staging.in_place and staging.work.parent == tmp_path
    folder.carry(staging, keep=[])
    assert sorted(p.name for p in staging.work.iterdir()) == ["mine.txt"]  # ours are not carried unless vouched
    (staging.work / "model.onnx").write_bytes(b"new")
    (staging.work / ".model.int8.onnx.zz.tmp").write_bytes(b"half")
    folder.commit(staging, ["model.onnx", "model.json", "labels.txt"], remove=[])
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt", "model.onnx"]
    assert (out / "model.onnx").read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_in_place_fallback_when_the_parent_cannot_hold_a_staging_folder(tmp_path, monkeypatch):
    from qd.export import folder

    out = tmp_path / "export"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"old")
    (out / "model.int8.onnx").write_bytes(b"another checkpoint's")
    real = folder.tempfile.mkdtemp

    def no_parent(prefix="", suffix="", dir=None):
        if Path(dir) == tmp_path:
            raise PermissionError(13, "Permission denied", str(dir))
        return real(prefix=prefix, suffix=suffix, dir=dir)

    monkeypatch.setattr(folder.tempfile, "mkdtemp", no_parent)
    staging = folder.begin(out, ["model.onnx", "model.int8.onnx", "model.json"])
    assert staging.in_place and staging.work.parent == out and "one by one" in staging.note
    (staging.work / "model.onnx").write_bytes(b"new")
    (staging.work / "model.json").write_text("{}")
    folder.commit(staging, ["model.onnx", "model.int8.onnx", "model.json"], remove=["model.int8.onnx"])
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.onnx"]


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

    from qd.export.api import export_checkpoint

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
    from qd.export.api import export_checkpoint

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
    import qd.export.api as api
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
