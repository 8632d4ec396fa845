"""Every architecture exports with `--format all` (Core ML checked as it can be on Linux), and the int8 size
rule measures what int8 promises (8-bit weights), so a small network's bookkeeping bytes never refuse it."""

import dataclasses

import onnx
import pytest

from qd.export.run import export_checkpoint
from qd.export.formats import FORMATS
from qd.export.onnx_export import set_metadata
from qd.train.models import ARCHITECTURES

from fixtures_export import run_export_cli
from fixtures_train import train_on_one_thread

CATEGORIES = ["apple", "circle", "square"]


@pytest.fixture(scope="module")
def checkpoints(shared_bitmaps, tmp_path_factory):
    """best.pt of a 1-epoch run per architecture on 3 shared categories (trained on first use)."""
    from qd.train.cli import TrainConfig

    made = {}

    def checkpoint(arch: str):
        if arch not in made:
            out = tmp_path_factory.mktemp(f"arch-{arch}") / "run"
            made[arch] = train_on_one_thread(TrainConfig(
                data_dir=shared_bitmaps, categories=CATEGORIES, arch=arch, max_per_category=300, epochs=1,
                batch_size=64, seed=0, device="cpu", out=out, quiet=True))
        return made[arch]

    return checkpoint


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_every_architecture_exports_with_format_all(arch, checkpoints, tmp_path, monkeypatch, capsys):
    code, out, err = run_export_cli(monkeypatch, capsys, checkpoints(arch), "--format", "all", "--out", tmp_path)
    assert code == 0, err
    for name in ("model.onnx", "model.int8.onnx", "model.mlpackage", "model.canvas.onnx", "model.canvas.mlpackage"):
        assert (tmp_path / name).exists(), name
    assert "✗" not in out


def test_an_int8_model_whose_weights_are_not_8_bit_is_refused(checkpoints, tmp_path, monkeypatch):
    """A model.int8.onnx that is the fp32 graph (faithful, but not int8) fails the size rule, and is not written."""
    def fp32_in_disguise(ctx, path):
        model = onnx.load(str(ctx.written["onnx"]))
        set_metadata(model, ctx.model_metadata("int8"))  # labelled int8, as the real exporter does
        onnx.save_model(model, str(path))

    monkeypatch.setitem(FORMATS, "onnx-int8", dataclasses.replace(FORMATS["onnx-int8"], exporter=fp32_in_disguise))
    report = export_checkpoint(checkpoints("seed"), "onnx-int8", out=tmp_path)
    assert not report.ok
    assert len(report.errors) == 1
    assert "model.int8.onnx: validation failed, not written: size: weights 1.00× fp32's" in report.errors[0]
    assert (tmp_path / "model.onnx").exists() and not (tmp_path / "model.int8.onnx").exists()
