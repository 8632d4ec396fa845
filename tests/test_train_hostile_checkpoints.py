"""Checkpoints that would cost or do harm are refused, with one line naming the file, before
anything is built, unpacked or unpickled (qd.train.checkpoint, qd.train.models, read through qd-export's
loader too): architecture arguments and the parameter count they imply are bounded (counted on the
meta device); a zip directory promising gigabytes is refused unread; legacy pickles are never loaded;
a checkpoint whose unpickling would run code is refused (weights_only) and the code never runs;
truncated, bit-flipped or overwritten checkpoints load or fail with one line; preprocessing numbers
are finite and bounded (in checkpoints and, the same check, in models); a full disk while a checkpoint
is saved names the file and leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from memory_probe import peak_rss_mib
from onnx_synth import tiny_model
from qd.command import QDError, shown
from qd.data.contract import DEFAULT_PREPROCESSING, MAX_PARAMETERS, bitmaps_to_input
from qd.export.checkpoint_source import load_source
from qd.export.cli import main
from qd.train.checkpoint import load_checkpoint
from qd.train.cli import TrainConfig

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
REPO = Path(__file__).resolve().parents[1]
NUMBERS = st.one_of(st.integers(-10**400, 10**400), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                    st.none(), st.text(max_size=3), st.just(10**400), st.just(float("nan")), st.just(1 / 255))


# ----------------------------------------------------------------------------- what a checkpoint declares

@SETTINGS
@given(arch=st.sampled_from(["compact", "seed"]),
       kwargs=st.dictionaries(st.sampled_from(["width", "stage3", "dropout", "evil", "num_classes"]),
                              st.one_of(NUMBERS, st.integers(0, 300)), max_size=3),
       classes=st.one_of(st.integers(-3, 400), st.just(10**9), st.booleans()))
def test_architecture_descriptions_are_built_only_within_bounds(arch, kwargs, classes):
    from unittest import mock

    from qd.train.models import ARCHITECTURES, build_model, count_parameters

    real_builds = []  # parameter counts of every network built with real (not meta-device) weights
    original = ARCHITECTURES[arch].network.__init__

    def recorded(self, *args, **kw):
        original(self, *args, **kw)
        if any(p.device.type != "meta" for p in self.parameters()):
            real_builds.append(count_parameters(self))

    with mock.patch.object(ARCHITECTURES[arch].network, "__init__", recorded):
        try:
            model = build_model(arch, classes, **kwargs)
        except QDError as exc:
            assert "\n" not in str(exc)
        else:
            assert count_parameters(model) <= MAX_PARAMETERS
    assert all(count <= MAX_PARAMETERS for count in real_builds)  # nothing big was ever allocated


def _payload(**changes) -> dict:
    from qd.data.bitmaps import SplitSpec
    from qd.data.contract import CHECKPOINT_FORMAT as FORMAT
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

    small = _save(_payload(padding=torch.zeros(3 << 20)), tmp_path / "plain.pt")  # 12 MiB of zeros
    packed = tmp_path / "run" / "best.pt"
    packed.parent.mkdir()
    with zipfile.ZipFile(small) as source, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as out:
        for entry in source.infolist():
            out.writestr(entry.filename, source.read(entry.filename))
    assert packed.stat().st_size < 1 << 20
    assert checkpoint.load_checkpoint(packed)["padding"].numel() == 3 << 20
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
        check_fields(tmp_path / "x.pt", _payload(preprocessing=spec))
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



# ----------------------------------------------------------------------------- code, damage, a full disk

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


# ----------------------------------------------------------------------------- tampered fields: one line naming the file

@pytest.fixture(scope="module")
def trained_payloads(trained_checkpoint) -> dict[str, dict]:
    return {name: torch.load(trained_checkpoint.parent / name, weights_only=True) for name in ("best.pt", "last.pt")}


def _tampered_run(payloads: dict[str, dict], folder: Path, tamper) -> Path:
    """A copy of the trained run with `tamper(payload)` applied to best.pt and last.pt."""
    import copy

    folder.mkdir(parents=True)
    for name, payload in payloads.items():
        payload = copy.deepcopy(payload)
        tamper(payload)
        torch.save(payload, folder / name)
    return folder


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "unexpected error" not in err, err
    return lines[0]


def _resume(monkeypatch, capsys, last: Path) -> tuple[int, str]:
    """qd-train --resume, stopped once the run is built: everything a checkpoint says is read by then (the
    epochs after are those of any run)."""
    from qd.train import cli, loop

    monkeypatch.setattr(loop.Trainer, "run", lambda self: self.run_dir / "best.pt")
    monkeypatch.setattr(sys, "argv", ["qd-train", "--resume", str(last), "--device", "cpu", "--quiet"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    return exit_info.value.code, (_one_line(capsys) if exit_info.value.code else "")


def _export(monkeypatch, capsys, best: Path, out: Path) -> tuple[int, str]:
    """qd-export with a stand-in for the ONNX converter (the checkpoint is loaded, the card written for real)."""
    from qd.export import formats

    def stand_in(ctx, tmp):
        Path(tmp).write_bytes(b"model")

    monkeypatch.setitem(formats.FORMATS, "onnx", dataclasses.replace(formats.FORMATS["onnx"], exporter=stand_in,
                                                                      validator=lambda ctx, tmp: []))
    monkeypatch.setattr(sys, "argv", ["qd-export", str(best), "--format", "onnx", "--out", str(out)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code, (_one_line(capsys) if exit_info.value.code else "")


HPARAM_VALUES = st.one_of(NUMBERS, st.integers(-3, 3), st.just(-1), st.just(10**5000), st.text(max_size=4),
                          st.lists(st.one_of(st.integers(), st.text(max_size=3)), max_size=2),
                          st.dictionaries(st.text(max_size=3), st.integers(), max_size=1))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(sorted(f.name for f in dataclasses.fields(TrainConfig))),
       value=HPARAM_VALUES)
@example(key="categories", value=["x"]).via("the issue")
@example(key="categories", value=[]).via("the issue")
@example(key="data_dir", value="").via("the issue")
@example(key="data_dir", value=None).via("the issue")
@example(key="lr", value="0.1").via("the issue")
@example(key="epochs", value=-1).via("the issue")
@example(key="epochs", value=10**400).via("the issue")
@example(key="batch_size", value=0).via("the issue")
@example(key="val_fraction", value=float("nan")).via("the issue")
@example(key="arch", value="seed").via("the issue")
@example(key="negatives_dir", value="").via("a negatives folder that is not one")
@example(key="data_dir", value="\x1f").via("a folder name shown escaped")
def test_tampered_hparams_resume_and_export_or_fail_with_one_line_naming_the_file(trained_payloads, tmp_path,
                                                                                  monkeypatch, capsys, key, value):
    """A run's hparams with any field set to a wrong type, a huge, negative or NaN number: `qd-train --resume`
    and `qd-export` go on, or say `error: <the checkpoint>: ...` (or name the data folder it points to)."""
    import tempfile

    def tamper(payload):
        payload["hparams"][key] = value

    run = _tampered_run(trained_payloads, Path(tempfile.mkdtemp(dir=tmp_path)) / "run", tamper)
    # the checkpoint, or a folder it names (the data folder it records, or a tampered data or negatives folder)
    named = [str(run / "last.pt"), trained_payloads["last.pt"]["hparams"]["data_dir"]] + \
        ([str(Path(value))] if key in ("data_dir", "negatives_dir") and isinstance(value, str) else [])
    code, line = _resume(monkeypatch, capsys, run / "last.pt")
    # names are shown escaped (qd.command.shown): a control character in a tampered folder name is written visibly
    assert code == 0 or any(line.startswith(f"error: {shown(name).plain}: ") for name in named), line
    code, line = _export(monkeypatch, capsys, run / "best.pt", run.parent / "export")
    assert code == 0 or line.startswith(f"error: {run / 'best.pt'}: "), line


def test_hparams_without_a_required_field_are_one_line_naming_the_checkpoint(trained_payloads, tmp_path, monkeypatch,
                                                                             capsys):
    """A bit flip in a key's name (found by the damaged-checkpoint test) leaves the hparams without data_dir:
    one `damaged checkpoint` line, from --resume and qd-export alike, not a TypeError."""
    def tamper(payload):
        payload["hparams"]["data_dkr"] = payload["hparams"].pop("data_dir")

    run = _tampered_run(trained_payloads, tmp_path / "run", tamper)
    code, line = _resume(monkeypatch, capsys, run / "last.pt")
    assert code == 1 and line == f"error: {run / 'last.pt'}: damaged checkpoint: hparams are invalid (no data_dir)", line
    code, line = _export(monkeypatch, capsys, run / "best.pt", tmp_path / "export")
    assert code == 1 and line == f"error: {run / 'best.pt'}: damaged checkpoint: hparams are invalid (no data_dir)", line


TAMPERED_FIELDS = [
    ("hparams.lr", "0.1"), ("hparams.epochs", -1), ("hparams.epochs", 10**400), ("hparams.batch_size", 0),
    ("hparams.categories", [1, 2]), ("hparams.seed", 10**400), ("hparams.arch", "seed"),
    ("metrics", [{"epoch": 10**400}]), ("best.val_loss", 10**400), ("test.top1", "high"),
    ("data.max_per_category", 10**400), ("data.counts", [10**400]), ("split.seed", 0.5),
    ("train_state.epoch", 10**400), ("train_state.optimizer", {"state": {}, "param_groups": []}),
    ("negatives", {"categories": 5}), ("negatives", {"dir": 3, "categories": ["a"], "sha256": []}),
    ("negatives", ["x"]), ("parent", "base.pt"), ("parent", {"path": "base.pt", "class_mapping": [0]}),
]


@pytest.mark.parametrize("field, value", TAMPERED_FIELDS, ids=[f"{field}-{i}" for i, (field, _) in
                                                               enumerate(TAMPERED_FIELDS)])
def test_a_tampered_field_is_one_line_naming_the_checkpoint(trained_payloads, tmp_path, monkeypatch, capsys, field,
                                                            value):
    part, _, key = field.partition(".")

    def tamper(payload):
        if key and part in payload:  # best.pt has no train_state
            payload[part][key] = value
        elif not key:
            payload[part] = value

    run = _tampered_run(trained_payloads, tmp_path / "run", tamper)
    code, line = _resume(monkeypatch, capsys, run / "last.pt")
    assert code == 1 and line.startswith(f"error: {run / 'last.pt'}: damaged checkpoint: {part} "), line
    if part != "train_state":  # best.pt has none: only --resume reads it
        code, line = _export(monkeypatch, capsys, run / "best.pt", tmp_path / "export")
        assert code == 1 and line.startswith(f"error: {run / 'best.pt'}: damaged checkpoint: {part} "), line


VALID_RECORDS = {
    "negatives": {"dir": "/nowhere/negatives", "categories": ["cloud"], "counts": [10],
                  "splits": {"train": 8, "val": 1, "test": 1}, "sha256": {"cloud": "0" * 64}},
    "parent": {"path": "/nowhere/base.pt", "sha256": "0" * 64, "classes": ["apple", "cloud"],
               "class_mapping": {"apple": 0, "circle": None, "square": None, "star": None}, "kept": 1,
               "frozen_backbone": False},
}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(part=st.sampled_from(sorted(VALID_RECORDS)), key=st.sampled_from(["dir", "categories", "counts", "splits",
                                                                        "sha256", "path", "classes", "class_mapping",
                                                                        "kept", "frozen_backbone"]),
       value=HPARAM_VALUES)
@example(part="parent", key="class_mapping", value={"apple": 7}).via("a row the parent does not have")
@example(part="negatives", key="counts", value=[1, 2]).via("more counts than categories")
def test_tampered_records_of_negatives_and_parent_load_or_fail_with_one_line(trained_payloads, tmp_path, monkeypatch,
                                                                            capsys, part, key, value):
    """The records a run keeps of its --negatives and its --init-from parent, valid but for one field set to
    anything: `qd-train --resume` and `qd-export` go on, or say `error: <the checkpoint>: ...` (a number too big
    for torch's safe loader is refused there; other wrong values are a `damaged checkpoint` line)."""
    import tempfile

    def tamper(payload):
        payload[part] = {**VALID_RECORDS[part], key: value}

    run = _tampered_run(trained_payloads, Path(tempfile.mkdtemp(dir=tmp_path)) / "run", tamper)
    code, line = _resume(monkeypatch, capsys, run / "last.pt")
    assert code == 0 or line.startswith(f"error: {run / 'last.pt'}: "), line
    code, line = _export(monkeypatch, capsys, run / "best.pt", run.parent / "export")
    assert code == 0 or line.startswith(f"error: {run / 'best.pt'}: "), line


def test_weights_of_another_shape_than_the_declared_architecture_name_the_first_mismatch(
        trained_payloads, shared_bitmaps, tmp_path, monkeypatch, capsys):
    """Declared width 16, weights of width 32 (the trained run's): qd-export, --init-from and --resume say which
    tensor does not fit, with both shapes."""
    from qd.train import cli

    def narrower(payload):
        payload["arch"]["kwargs"]["width"] = 16

    run = _tampered_run(trained_payloads, tmp_path / "run", narrower)
    expected = ("weights do not fit the architecture compact (width=16, dropout=0.2, stage3=2, 4 classes): "
                "features.0.0.weight: [32, 1, 3, 3] in the file, [16, 1, 3, 3] expected")
    code, line = _export(monkeypatch, capsys, run / "best.pt", tmp_path / "export")
    assert (code, line) == (1, f"error: {run / 'best.pt'}: {expected}")
    code, line = _resume(monkeypatch, capsys, run / "last.pt")
    assert (code, line) == (1, f"error: {run / 'last.pt'}: {expected}")
    monkeypatch.setattr(sys, "argv", ["qd-train", "--data-dir", str(shared_bitmaps), "--categories", "apple,circle",
                                      "--init-from", str(run / "best.pt"), "--out", str(tmp_path / "child"),
                                      "--device", "cpu", "--quiet"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert (exit_info.value.code, _one_line(capsys)) == (1, f"error: {run / 'best.pt'}: {expected}")
    assert not (tmp_path / "child").exists()
