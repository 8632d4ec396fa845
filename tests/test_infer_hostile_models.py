"""Issue 15, classes 4 and 5 for checkpoints, model metadata and the run itself.

4. What a checkpoint declares is checked before anything is built or unpacked: its
   architecture keywords (and the parameter count they imply, counted on the meta
   device), the bytes its zip directory promises, the numbers of its preprocessing.
5. Anything unexpected ends in one line: a full disk while torch.save writes a
   checkpoint, onnxruntime failing on a batch (split down to the drawing that fails),
   NaN from a model (a failure line, never bare NaN in --json), any exception escaping a
   command, Ctrl-C (says so, exit 130).
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import typer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures_data import invoke_cli
from memory_probe import peak_rss_mib
from onnx_synth import tiny_model
from qd.data.console import run_app
from qd.data.errors import QDError
from qd.data.limits import MAX_PARAMETERS
from qd.data.preprocess import DEFAULT_PREPROCESSING, bitmaps_to_input

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
REPO = Path(__file__).resolve().parents[1]
NUMBERS = st.one_of(st.integers(-10**400, 10**400), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                    st.none(), st.text(max_size=3), st.just(10**400), st.just(float("nan")), st.just(1 / 255))


# ----------------------------------------------------------------------------- 4. checkpoints

@SETTINGS
@given(arch=st.sampled_from(["compact", "seed"]),
       kwargs=st.dictionaries(st.sampled_from(["width", "stage3", "dropout", "evil", "num_classes"]),
                              st.one_of(NUMBERS, st.integers(0, 300)), max_size=3),
       classes=st.one_of(st.integers(-3, 400), st.just(10**9), st.booleans()))
def test_architecture_descriptions_are_built_only_within_bounds(arch, kwargs, classes):
    from qd.train.models import build_model, count_parameters

    started = time.perf_counter()
    try:
        model = build_model(arch, classes, **kwargs)
    except QDError as exc:
        assert "\n" not in str(exc)
    else:
        assert count_parameters(model) <= MAX_PARAMETERS
    assert time.perf_counter() - started < 30  # nothing big was ever allocated


def _payload(**changes) -> dict:
    from qd.data.split import SplitSpec
    from qd.train.checkpoint import FORMAT
    from qd.train.models import build_model

    arch = changes.pop("arch", {"name": "seed", "kwargs": {}})
    payload = {"format": FORMAT, "classes": ["a", "b"], "arch": arch, "preprocessing": dict(DEFAULT_PREPROCESSING),
               "split": SplitSpec().to_dict(), "data": {}, "hparams": {}, "metrics": [],
               "state_dict": build_model("seed", 2).state_dict() if arch["name"] == "seed" else {}}
    payload.update(changes)
    return payload


def _save(payload: dict, path: Path) -> Path:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return path


def test_a_checkpoint_saying_width_4000_is_refused_before_any_weight_exists(tmp_path):
    path = _save(_payload(arch={"name": "compact", "kwargs": {"width": 4000, "dropout": 0.2, "stage3": 2}}),
                 tmp_path / "run" / "best.pt")
    from qd.export.checkpoint_source import load_source

    with pytest.raises(QDError, match=r"best.pt: architecture argument width=4000 is not a whole number in 1..256"):
        load_source(path)
    peak = peak_rss_mib(f"from qd.export.checkpoint_source import load_source\ntry:\n    load_source({str(path)!r})\n"
                        "except Exception as exc:\n    print(exc)")
    assert peak < 1024, f"{peak:.0f} MiB to refuse a 4000-wide network (it was 17.7 GB)"


def _declare_unpacked_size(small: Path, out: Path, entry_name: str, declared: int) -> Path:
    """A copy of the zip `small` whose directory says `entry_name` unpacks to `declared` bytes:
    a loader that trusts the directory allocates that much (torch's does) before it reads a byte."""
    data = bytearray(small.read_bytes())
    with zipfile.ZipFile(small) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(entry_name))
    assert info.compress_type == zipfile.ZIP_STORED and declared < 2**32
    struct.pack_into("<I", data, info.header_offset + 22, declared)  # local header: uncompressed size
    eocd = data.rindex(b"PK\x05\x06")
    count, _, position = struct.unpack_from("<HII", data, eocd + 10)
    for _ in range(count):  # central directory entries
        name_length, extra_length, comment_length = struct.unpack_from("<HHH", data, position + 28)
        if bytes(data[position + 46: position + 46 + name_length]) == info.filename.encode():
            struct.pack_into("<I", data, position + 24, declared)  # central directory: uncompressed size
        position += 46 + name_length + extra_length + comment_length
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(bytes(data))
    return out


def test_a_small_checkpoint_declaring_gigabytes_is_refused_unread(tmp_path, monkeypatch):
    import torch

    from qd.train import checkpoint

    small = _save(_payload(metrics=[torch.zeros(4)]), tmp_path / "small.pt")
    bomb = _declare_unpacked_size(small, tmp_path / "run" / "best.pt", "/data/0", 3 << 30)
    assert bomb.stat().st_size < 1 << 20
    loads = []
    with monkeypatch.context() as patch:
        patch.setattr(checkpoint.torch, "load", lambda *a, **k: loads.append(a))
        with pytest.raises(QDError, match=r"best.pt: refused: \d+ entries unpacking to 3,221,\d{3},\d{3} bytes"):
            checkpoint.load_checkpoint(bomb)
    assert loads == []  # refused from the directory alone
    peak = peak_rss_mib(f"from qd.train.checkpoint import load_checkpoint\ntry:\n    load_checkpoint({str(bomb)!r})\n"
                        "except Exception as exc:\n    print(exc)")
    assert peak < 1024, f"{peak:.0f} MiB to refuse a checkpoint declaring 3 GiB"


def test_a_deflated_checkpoint_over_the_bound_is_refused_and_one_within_it_loads(tmp_path, monkeypatch):
    """Recompressed with deflate, a checkpoint's file size says nothing: the directory's unpacked sizes do."""
    import torch

    from qd.train import checkpoint

    small = _save(_payload(metrics=[torch.zeros(3 << 20)]), tmp_path / "plain.pt")  # 12 MiB of zeros
    packed = tmp_path / "run" / "best.pt"
    packed.parent.mkdir()
    with zipfile.ZipFile(small) as source, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as out:
        for entry in source.infolist():
            out.writestr(entry.filename, source.read(entry.filename))
    assert packed.stat().st_size < 1 << 20
    assert checkpoint.load_checkpoint(packed)["metrics"][0].numel() == 3 << 20
    monkeypatch.setattr(checkpoint, "MAX_CHECKPOINT_BYTES", 8 << 20)
    with pytest.raises(QDError, match="refused: .* unpacking to 12,"):
        checkpoint.load_checkpoint(packed)


def test_checkpoints_that_are_not_torch_zip_archives_are_never_unpickled(tmp_path, monkeypatch):
    import pickle

    import torch

    from qd.train import checkpoint

    legacy = tmp_path / "legacy.pt"
    torch.save(_payload(), legacy, _use_new_zipfile_serialization=False)  # the pre-1.6 format: raw pickle
    loads = []
    monkeypatch.setattr(checkpoint.torch, "load", lambda *a, **k: loads.append(a) or {})
    for path in (legacy, tmp_path / "text.pt"):
        if path.name == "text.pt":
            path.write_bytes(pickle.dumps({"format": "x"}))
        with pytest.raises(QDError, match="not a torch zip archive"):
            checkpoint.load_checkpoint(path)
    assert loads == []


@SETTINGS
@given(key=st.sampled_from(["scale", "mean", "std", "input_size"]), value=NUMBERS)
def test_preprocessing_numbers_are_finite_and_bounded_in_checkpoints_and_models(tmp_path, key, value):
    from qd.infer.model import OnnxClassifier
    from qd.train.checkpoint import check_fields

    spec = {**DEFAULT_PREPROCESSING, key: value}
    try:
        check_fields(tmp_path / "x.pt", _payload(preprocessing=spec, state_dict={}))
        in_checkpoint = True
    except QDError as exc:
        assert "\n" not in str(exc) and "preprocessing" in str(exc)
        in_checkpoint = False
    model = tiny_model(tmp_path / "model.onnx", ["a", "b"], preprocessing=json.dumps(spec))
    try:
        classifier = OnnxClassifier(model)
    except QDError as exc:
        assert str(exc).startswith(str(model)) and "\n" not in str(exc)
        assert not in_checkpoint
    else:
        assert in_checkpoint
        x = bitmaps_to_input(np.full((2, 784), 255, np.uint8), classifier.preprocessing)
        assert np.isfinite(x).all() and np.isfinite(classifier.probabilities(x)).all()


@pytest.mark.parametrize("raw", ['{"input_size": 28, "scale": ' + "9" * 400 + "}",
                                 '{"input_size": 28, "scale": NaN}', '{"input_size": 28, "scale": 1, "std": Infinity}'])
def test_the_metadata_examples_from_the_report_are_one_line(tmp_path, raw):
    from qd.infer.cli import main

    model = tiny_model(tmp_path / "model.onnx", ["a", "b"], preprocessing=raw)
    np.save(tmp_path / "x.npy", np.zeros((2, 784), np.uint8))
    result = invoke_cli(main, tmp_path / "x.npy", "--model", model, "--json")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith(f"error: {model}: model metadata qd.preprocessing ") and result.stderr.count("\n") == 1


# ----------------------------------------------------------------------------- 5. one line

def test_a_full_disk_while_a_checkpoint_is_saved_names_it_and_leaves_nothing(tmp_path, monkeypatch):
    from qd.train import checkpoint

    real_open = open

    class FullDisk(io.RawIOBase):
        def __init__(self, path):
            self.file = real_open(path, "wb")

        def write(self, data):
            self.file.write(bytes(data)[:100])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def close(self):
            self.file.close()

    monkeypatch.setattr(checkpoint, "open", lambda path, mode="r": FullDisk(path), raising=False)
    target = tmp_path / "run" / "best.pt"
    with pytest.raises(OSError) as raised:
        checkpoint.save_checkpoint(_payload(), target)
    assert (raised.value.errno, raised.value.filename) == (errno.ENOSPC, str(target))
    assert sorted(p.name for p in target.parent.iterdir()) == []


def test_qd_train_on_a_full_disk_is_one_line(shared_bitmaps, tmp_path):
    """A real write failure (RLIMIT_FSIZE: writes past 256 KiB fail, as on a full disk) in torch.save's place."""
    out = tmp_path / "run"
    script = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
              "resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, resource.RLIM_INFINITY)); "
              "sys.argv = ['qd-train'] + sys.argv[1:]; from qd.train.cli import main; main()")
    result = subprocess.run([sys.executable, "-c", script, "--data-dir", str(shared_bitmaps), "--categories",
                             "apple,circle", "--max-per-category", "200", "--epochs", "1", "--steps-per-epoch", "2",
                             "--out", str(out), "--quiet", "--device", "cpu"],
                            capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 1, result.stderr
    assert result.stderr == f"error: {out / 'best.pt'}: File too large\n"
    assert list(out.iterdir()) == []


class Collect:
    """A qd-infer writer that keeps what it is given."""

    def __init__(self):
        self.names, self.failures = [], []

    def rows(self, names, index, probs, unknown=None):
        assert np.isfinite(probs).all()
        self.names += names

    def failure(self, message, input):
        self.failures.append(message)

    def finish(self, summary):
        self.summary = summary


@SETTINGS
@given(n=st.integers(1, 90), bad=st.sets(st.integers(0, 89), max_size=4), batch=st.integers(1, 64),
       limit=st.one_of(st.none(), st.integers(1, 40)), nan=st.booleans())
def test_batches_onnxruntime_cannot_run_are_split_down_to_the_drawings_that_fail(tmp_path, monkeypatch, n, bad,
                                                                                 batch, limit, nan):
    from qd.infer import model as model_module
    from qd.infer.run import run_inference

    bad = {i for i in bad if i < n}
    rows = np.zeros((n, 784), np.uint8)
    rows[:, 0] = np.arange(n) % 200
    rows[sorted(bad), 1] = 255  # marks the drawings the "runtime" fails on
    np.save(tmp_path / "rows.npy", rows)
    model = tiny_model(tmp_path / "model.onnx", ["a", "b", "c"])
    real = model_module.OnnxClassifier.outputs

    def flaky(self, inputs, names=None):
        marked = inputs[:, 0, 0, 1] > 0.5
        if limit is not None and len(inputs) > limit:
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory")
        if marked.any() and not nan:
            raise RuntimeError("kernel failed")
        outputs = real(self, inputs, names)
        outputs["probabilities"][marked] = np.nan
        return outputs

    with monkeypatch.context() as patch:
        patch.setattr(model_module.OnnxClassifier, "outputs", flaky)
        writer = Collect()
        summary = run_inference([tmp_path / "rows.npy"], model=model, batch_size=batch, writer=writer)
    expected_bad = [f"{tmp_path / 'rows.npy'}[{i}]" for i in sorted(bad)]
    assert sorted(writer.names) == sorted(f"{tmp_path / 'rows.npy'}[{i}]" for i in range(n) if i not in bad)
    assert [m.split(": ")[0] for m in writer.failures] == expected_bad
    assert all("not classified" in m and "\n" not in m for m in writer.failures)
    assert summary.classified == n - len(bad) and summary.failed == len(bad)


def test_json_output_is_strict_even_when_a_model_gives_nan(tmp_path, monkeypatch):
    from qd.infer import model as model_module
    from qd.infer.cli import main

    model = tiny_model(tmp_path / "model.onnx", ["a", "b"])
    np.save(tmp_path / "x.npy", np.zeros((4, 784), np.uint8))
    real = model_module.OnnxClassifier.outputs

    def half_nan(self, inputs, names=None):
        outputs = real(self, inputs, names)
        outputs["probabilities"][::2] = np.nan
        return outputs

    monkeypatch.setattr(model_module.OnnxClassifier, "outputs", half_nan)
    result = invoke_cli(main, tmp_path / "x.npy", "--model", model, "--json")
    records = [json.loads(line) for line in result.stdout.splitlines()]  # strict: json.loads refuses nothing here
    assert [r["input"] for r in records] == [f"{tmp_path / 'x.npy'}[{i}]" for i in range(4)]  # in input order
    assert [r["error"] is None for r in records] == [False, True, False, True]  # NaN rows: records with an error
    assert all("NaN or infinite" in r["error"] and r["probability"] is None for r in records[::2])
    assert all(math.isfinite(r["probability"]) for r in records[1::2])

    def refuse(constant):
        raise AssertionError(f"non-strict JSON constant {constant}")

    for line in result.stdout.splitlines():
        json.loads(line, parse_constant=refuse)  # no NaN/Infinity value anywhere (the errors only name them)
    assert result.stderr.count("the model gave NaN or infinite probabilities") == 2


EXCEPTIONS = st.sampled_from([ValueError, RuntimeError, KeyError, OverflowError, MemoryError, RecursionError,
                              ZeroDivisionError, AssertionError, IndexError, TypeError, AttributeError, LookupError,
                              UnicodeError, NotImplementedError, SystemError, ArithmeticError])


@SETTINGS
@given(kind=EXCEPTIONS, message=st.text(max_size=40))
def test_any_exception_escaping_a_command_is_one_line(kind, message):
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

    @app.command()
    def broken():
        raise kind(message)

    result = invoke_cli(lambda: run_app(app))
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: out of memory" if kind is MemoryError else "error: unexpected error: ")


def test_ctrl_c_in_any_command_says_so_and_exits_130():
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

    @app.command()
    def interrupted():
        raise KeyboardInterrupt

    result = invoke_cli(lambda: run_app(app, interrupted_hint="the rest is kept"))
    assert result.exit_code == 130
    assert result.stderr == "error: interrupted (Ctrl-C); the rest is kept\n"


def test_ctrl_c_during_a_download_says_so_and_keeps_the_part(qd_server, tmp_path):
    qd_server.stall("cat", seconds=8.0, after=2_200_000)  # after two 1 MiB chunks are written
    process = subprocess.Popen([sys.executable, "-m", "qd.data.cli", "fetch", "cat", "--source", qd_server.base_url,
                                "--out", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=REPO)
    part = tmp_path / ".cat.npy.part"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (part.exists() and part.stat().st_size >= 2 << 20):
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert err.splitlines()[-1] == ("error: interrupted (Ctrl-C); unfinished downloads are kept; "
                                    "run the same command again to resume")
    assert part.stat().st_size >= 2 << 20 and not (tmp_path / "cat.npy").exists()


@pytest.mark.parametrize("option,value", [("--workers", "65"), ("--threads", "257"), ("--batch-size", "4097")])
def test_worker_thread_and_batch_options_are_bounded(tmp_path, option, value):
    from qd.infer.cli import main
    from qd.infer.run import run_inference

    np.save(tmp_path / "x.npy", np.zeros((1, 784), np.uint8))
    model = tiny_model(tmp_path / "model.onnx", ["a", "b"])
    result = invoke_cli(main, tmp_path / "x.npy", "--model", model, option, value)
    assert result.exit_code == 2 and f"Invalid value for '{option}'" in result.stderr
    name = option[2:].replace("-", "_")
    with pytest.raises(QDError, match=f"{option} must be 1 to"):
        run_inference([tmp_path / "x.npy"], model=model, **{name: int(value)})
