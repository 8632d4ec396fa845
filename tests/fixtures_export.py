"""Fixtures for the export stage's tests (and the stages that build on it)."""

from pathlib import Path

import pytest

from fixtures_data import run_entry_point


def run_export_cli(monkeypatch, capsys, *args):
    """qd-export's entry point as the shell runs it: (exit code, stdout, stderr)."""
    from qd.export.cli import main

    return run_entry_point(monkeypatch, capsys, main, "qd-export", *args)


def _export(checkpoint: Path, formats: str, out: Path):
    from qd.export.run import export_checkpoint

    report = export_checkpoint(checkpoint, formats, out=out)
    if not report.ok:
        pytest.fail("qd-export fixture failed: " + " | ".join(report.errors))
    return report


@pytest.fixture(scope="session")
def exported_report(trained_checkpoint, tmp_path_factory):
    """The ExportReport of exporting `trained_checkpoint` to onnx + onnx-int8 + onnx-canvas (once per session)."""
    return _export(trained_checkpoint, "onnx,onnx-int8,onnx-canvas", tmp_path_factory.mktemp("export") / "run")


@pytest.fixture(scope="session")
def exported_model(exported_report) -> Path:
    """Export folder of `trained_checkpoint`: model.onnx (fp32), model.int8.onnx, model.canvas.onnx (the demo
    page's model), labels.txt, model.json.

    Both models follow the model contract in docs/contracts.md (input "image", outputs
    "probabilities" and "logits", qd.* metadata); both passed qd-export's validation.
    Treat the folder as read-only: it is shared by the whole test session.
    """
    return exported_report.out_dir


@pytest.fixture(scope="session")
def exported_int8_model(exported_model) -> Path:
    """Path of the validated int8 model (model.int8.onnx) inside `exported_model`."""
    return exported_model / "model.int8.onnx"


@pytest.fixture(scope="session")
def coreml_report(trained_checkpoint, tmp_path_factory):
    """The ExportReport of a Core ML export of `trained_checkpoint` (model.mlpackage)."""
    return _export(trained_checkpoint, "coreml", tmp_path_factory.mktemp("export-coreml") / "run")


@pytest.fixture(scope="session")
def canvas_report(trained_checkpoint, tmp_path_factory):
    """The ExportReport of exporting `trained_checkpoint` to onnx, onnx-canvas and coreml-canvas (once per session):
    model.canvas.onnx and model.canvas.mlpackage next to model.onnx in report.out_dir."""
    return _export(trained_checkpoint, "onnx,onnx-canvas,coreml-canvas", tmp_path_factory.mktemp("export-canvas") / "run")
