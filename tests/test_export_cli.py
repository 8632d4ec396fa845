"""qd-export as a command: the table, default folder, reruns, failed checks and bad input."""

import dataclasses
import json
import re

import onnx
import pytest
import torch

from qd.export import formats as export_formats
from qd.export.run import export_checkpoint
from qd.export.formats import FORMATS, help_text, markdown_table, parse_formats
from qd.train.checkpoint import load_checkpoint, save_checkpoint

from fixtures_export import run_export_cli


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


class NotAllowed:
    """Any class outside torch's weights_only allow-list makes a checkpoint need pickle."""


def test_cli_writes_default_folder_and_reruns_safely(trained_checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("QD_ARTIFACTS", str(tmp_path / "artifacts"))
    code, out, err = run_export_cli(monkeypatch, capsys, trained_checkpoint)
    assert code == 0, err
    folder = tmp_path / "artifacts" / "exports" / trained_checkpoint.parent.name
    assert "model.onnx" in out and "vs torch, batch 64" in out and "labels.txt" in out
    first = (folder / "model.onnx").read_bytes()
    code, out, err = run_export_cli(monkeypatch, capsys, trained_checkpoint, "--format", "onnx")
    assert code == 0, err
    assert (folder / "model.onnx").read_bytes() == first  # deterministic export, replaced in place
    assert sorted(p.name for p in folder.iterdir()) == ["labels.txt", "model.json", "model.onnx"]
    card = json.loads((folder / "model.json").read_text())
    assert set(card["files"]) == {"onnx", "labels"}


def test_opset_below_18_uses_the_torchscript_exporter(trained_checkpoint, tmp_path):
    report = export_checkpoint(trained_checkpoint, "onnx", out=tmp_path, opset=17)
    assert report.ok, report.errors
    model = onnx.load(str(tmp_path / "model.onnx"))
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 17


def test_failed_validation_writes_nothing_and_keeps_previous_model(trained_checkpoint, exported_model, tmp_path, monkeypatch):
    previous = (exported_model / "model.onnx").read_bytes()
    (tmp_path / "model.onnx").write_bytes(previous)
    real = FORMATS["onnx"].exporter

    def corrupting_exporter(ctx, path):
        real(ctx, path)
        model = onnx.load(str(path))
        weight = model.graph.initializer[0]
        values = onnx.numpy_helper.to_array(weight).copy()
        values *= 1.5
        weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
        onnx.save(model, str(path))

    monkeypatch.setitem(FORMATS, "onnx", dataclasses.replace(FORMATS["onnx"], exporter=corrupting_exporter))
    report = export_checkpoint(trained_checkpoint, "onnx,onnx-int8", out=tmp_path)
    assert not report.ok
    assert "validation failed, not written: vs torch, batch 1" in report.errors[0]
    assert "not exported because onnx failed" in report.errors[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temp files, no card
    assert (tmp_path / "model.onnx").read_bytes() == previous


def test_missing_data_folder_falls_back_clearly(trained_checkpoint, tmp_path):
    payload = load_checkpoint(trained_checkpoint)
    payload["data"] = {**payload["data"], "dir": str(tmp_path / "gone")}
    moved = save_checkpoint(payload, tmp_path / "moved" / "best.pt")
    report = export_checkpoint(moved, "onnx,onnx-int8", out=tmp_path / "out")
    assert "seeded random bitmaps" in report.validation_data and "pass --data DIR" in report.validation_data
    onnx_result, int8_result = report.results
    assert onnx_result.ok and (tmp_path / "out" / "model.onnx").exists()
    assert not int8_result.ok and "int8 calibration needs the checkpoint's training drawings" in int8_result.error
    assert not (tmp_path / "out" / "model.int8.onnx").exists()
    # no validation drawings, so nothing fitted: the model is written like an older one, and says so
    meta = {p.key for p in onnx.load(str(tmp_path / "out" / "model.onnx")).metadata_props}
    assert not {"qd.temperature", "qd.open_set"} & meta
    assert any("cannot flag unknown drawings" in note for note in report.notes)
    assert any(c.name == "open set" and c.values.get("skipped") for c in onnx_result.checks)


@pytest.mark.parametrize("kept", ["1", "0", "nan", "1.5"])
def test_kept_must_be_a_share(trained_checkpoint, tmp_path, monkeypatch, capsys, kept):
    code, _, err = run_export_cli(monkeypatch, capsys, trained_checkpoint, "--kept", kept, "--out", tmp_path)
    assert code == 1 and _one_error_line(err).startswith("error: --kept must be a share between 0 and 1")


def test_missing_checkpoint(tmp_path, monkeypatch, capsys):
    code, _, err = run_export_cli(monkeypatch, capsys, tmp_path / "nope.pt")
    assert code == 1
    assert _one_error_line(err) == f"error: {tmp_path / 'nope.pt'}: checkpoint not found"


def test_not_a_checkpoint(tmp_path, monkeypatch, capsys):
    bogus = tmp_path / "notes.pt"
    bogus.write_text("just some text\n")
    code, _, err = run_export_cli(monkeypatch, capsys, bogus)
    assert code == 1
    assert _one_error_line(err).startswith(f"error: {bogus}: not a checkpoint")


def test_plain_torch_file_is_not_a_qd_checkpoint(tmp_path, monkeypatch, capsys):
    other = tmp_path / "weights.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, other)
    code, _, err = run_export_cli(monkeypatch, capsys, other)
    assert code == 1
    assert "not a quickdraw-edge checkpoint" in _one_error_line(err)


def test_checkpoint_needing_pickle_is_refused(trained_checkpoint, tmp_path, monkeypatch, capsys):
    payload = load_checkpoint(trained_checkpoint)
    payload["hparams"] = {"extra": NotAllowed()}
    crafted = tmp_path / "pickled.pt"
    torch.save(payload, crafted)
    code, _, err = run_export_cli(monkeypatch, capsys, crafted, "--out", tmp_path / "out")
    assert code == 1
    assert "refused: not loadable with weights_only=True" in _one_error_line(err)
    assert not (tmp_path / "out").exists()


def test_unknown_format(trained_checkpoint, tmp_path, monkeypatch, capsys):
    code, _, err = run_export_cli(monkeypatch, capsys, trained_checkpoint, "--format", "onnx,tflite", "--out", tmp_path)
    assert code == 1
    line = _one_error_line(err)
    assert "unknown format tflite" in line and "onnx, onnx-int8, coreml" in line
    assert not list(tmp_path.iterdir())


def test_bad_opset(trained_checkpoint, tmp_path, monkeypatch, capsys):
    code, _, err = run_export_cli(monkeypatch, capsys, trained_checkpoint, "--opset", "7", "--out", tmp_path)
    assert code == 1
    assert "--opset 7: supported opsets are 13.." in _one_error_line(err)


def test_one_table_drives_parsing_help_and_readme():
    assert [f.name for f in parse_formats("all")] == list(FORMATS)
    assert [f.name for f in parse_formats("onnx-int8")] == ["onnx", "onnx-int8"]  # adds what it builds on
    assert [f.name for f in parse_formats(" coreml , ONNX ")] == ["onnx", "coreml"]
    table = markdown_table()
    for fmt in FORMATS.values():
        assert fmt.name in help_text() and fmt.filename in help_text()
        assert f"| `{fmt.name}` | `{fmt.filename}` |" in table
    for row in table.splitlines():  # 5 columns: cell text must not break the table
        assert len(re.findall(r"(?<!\\)\|", row)) == 6, row
    assert export_formats.DEFAULT_FORMATS == "onnx"


SIBLINGS = ("model.int8.onnx", "model.canvas.onnx")  # the session export's models besides model.onnx


def test_rerun_keeps_vouched_siblings_and_drops_another_checkpoints(trained_checkpoint, exported_model, tmp_path):
    """The folder is one set: a sibling from the same checkpoint stays, one from another checkpoint goes."""
    import shutil

    folder = shutil.copytree(exported_model, tmp_path / "export")
    (folder / "notes.txt").write_text("mine\n")
    report = export_checkpoint(trained_checkpoint, "onnx", out=folder)
    assert report.ok and not report.notes
    card = json.loads((folder / "model.json").read_text())
    assert set(card["files"]) == {"onnx", "onnx-int8", "onnx-canvas", "labels"}  # still from this checkpoint: kept
    for sibling in SIBLINGS:
        assert (folder / sibling).read_bytes() == (exported_model / sibling).read_bytes()

    payload = load_checkpoint(trained_checkpoint)
    payload["hparams"] = {**payload["hparams"], "note": "retrained"}
    other = save_checkpoint(payload, tmp_path / "other" / "best.pt")
    report = export_checkpoint(other, "onnx", out=folder)
    assert report.ok
    assert len(report.notes) == len(SIBLINGS)
    for sibling in SIBLINGS:
        assert any(note.startswith(f"{folder / sibling}: not from this") for note in report.notes), report.notes
        assert not (folder / sibling).exists()  # another checkpoint's model is not part of the set
    card = json.loads((folder / "model.json").read_text())
    assert set(card["files"]) == {"onnx", "labels"}
    assert (folder / "notes.txt").read_text() == "mine\n"  # files that are not ours travel with the folder


def test_every_format_row_drives_the_help_qd_eval_and_the_file_names(exported_report, monkeypatch, capsys):
    """A format's row is its one home: its name in `qd-export --help`, its qd-eval backend, its file."""
    from qd.evaluate.backends import BACKENDS
    from qd.evaluate.backends import load_model_info
    from qd.export.cli import next_commands
    from qd.infer.model import CanvasModel

    code, out, _ = run_export_cli(monkeypatch, capsys, "--help")
    assert code == 0
    shown = re.sub(r"[\s│]+", "", out)  # rich wraps the help inside a box
    for fmt in FORMATS.values():
        assert fmt.name in shown and fmt.filename in shown
    evaluated = {f.name for f in FORMATS.values() if f.evaluated_by}
    assert set(BACKENDS) - {"torch"} == evaluated
    assert all(BACKENDS[name] is FORMATS[name].evaluated_by for name in evaluated)
    folder = exported_report.out_dir
    card = json.loads((folder / "model.json").read_text())
    for result in exported_report.results:  # onnx, onnx-int8, onnx-canvas
        assert result.path == folder / result.format.filename and result.path.is_file()
        assert card["files"][result.format.name]["file"] == result.format.filename
    info = load_model_info(folder)
    for name in ("onnx", "onnx-int8"):
        assert BACKENDS[name](info, None).file == folder / FORMATS[name].filename
    assert CanvasModel(folder).path == folder / FORMATS["onnx-canvas"].filename
    readable = [f.name for f in FORMATS.values() if f.in_next_steps]
    assert any(f"--backend {','.join(readable)}" in command for command in next_commands(exported_report))
