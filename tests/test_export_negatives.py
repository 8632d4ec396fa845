"""qd-export and qd-eval report the share of a model's held-out negatives its open-set rule flags."""

import json

import numpy as np
import pytest
import torch

from qd.command import QDError
from qd.data.bitmaps import SplitSpec
from qd.data.negatives import heldout_negatives
from qd.evaluate.evaluation import evaluate
from qd.evaluate.report import build_report, confidence_panel
from qd.export import checkpoint_source
from qd.export.run import export_checkpoint
from qd.infer.model import OnnxClassifier
from qd.train.cli import TrainConfig
from qd.train.loop import train

CATEGORIES = ["circle", "square", "star"]
NEGATIVES = ["apple", "banana"]


def copy_rows(source, names, folder, rows=80):
    folder.mkdir()
    for name in names:
        np.save(folder / f"{name}.npy", np.load(source / f"{name}.npy", mmap_mode="r")[:rows])
    return folder


@pytest.fixture(scope="module")
def run(shared_bitmaps, tmp_path_factory):
    """A tiny run trained with negatives, exported to ONNX: (checkpoint, export folder, negatives folder)."""
    root = tmp_path_factory.mktemp("negatives-export")
    data = copy_rows(shared_bitmaps, CATEGORIES, root / "data")
    negatives = copy_rows(shared_bitmaps, NEGATIVES, root / "negatives")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        checkpoint = train(TrainConfig(data_dir=data, negatives_dir=negatives, epochs=2, batch_size=16, device="cpu",
                                       precision="fp32", out=root / "run", quiet=True))
    finally:
        torch.set_num_threads(threads)
    report = export_checkpoint(checkpoint, "onnx", out=root / "export")
    assert report.ok, report.errors
    return checkpoint, report, negatives


def flagged_by_the_model(folder, held) -> dict:
    classifier = OnnxClassifier(folder / "model.onnx")
    return {split: float(classifier.predict(rows).unknown.mean()) for split, rows in held.items()}


def test_the_card_and_the_report_line_give_the_share_of_held_out_negatives_flagged(run):
    _, report, negatives = run
    card = json.loads((report.out_dir / "model.json").read_text())
    entry = card["confidence"]["negatives"]
    assert entry["available"] and entry["categories"] == NEGATIVES and entry["dir"] == str(negatives.resolve())
    held, problem = heldout_negatives(entry, SplitSpec.from_dict(card["split"]))
    assert problem == ""
    expected = flagged_by_the_model(report.out_dir, held)  # the exported model itself, by its own rule
    for split, name in (("val", "validation"), ("test", "test")):
        assert entry[name]["drawings"] == len(held[split]) == entry["splits"][split] > 0
        assert entry[name]["flagged"] == pytest.approx(expected[split], abs=1e-9)
    assert entry["known"]["validation_flagged"] == pytest.approx(1 - card["confidence"]["open_set"]["validation"]["kept"])
    assert f"{entry['validation']['flagged']:.1%} of {entry['validation']['drawings']:,} validation" in report.negatives
    assert f"{entry['test']['flagged']:.1%} of {entry['test']['drawings']:,} test negatives" in report.negatives


def test_the_threshold_is_fitted_with_the_validation_negatives_and_records_them(run):
    _, report, negatives = run
    card = json.loads((report.out_dir / "model.json").read_text())
    validation, entry = card["confidence"]["open_set"]["validation"], card["confidence"]["negatives"]
    assert validation["negatives"] == entry["validation"]["drawings"] > 0
    assert validation["negatives_flagged"] == pytest.approx(entry["validation"]["flagged"], abs=1e-6)
    assert card["confidence"]["fitted_on"].endswith(f", and {validation['negatives']:,} validation negatives "
                                                    f"(2 categories) from {negatives.resolve()}")
    assert OnnxClassifier(report.out_dir / "model.onnx").model_open_set.validation == validation  # in the metadata
    check = next(c for c in report.results[0].checks if c.name == "open set")
    assert f"{validation['negatives_flagged']:.1%} of {validation['negatives']:,} negatives)" in check.detail
    weak = [note for note in report.notes if "validation negatives (under 50%)" in note]
    assert len(weak) == (validation["negatives_flagged"] < 0.5)


def test_qd_eval_reports_them_per_split_and_per_backend(run):
    _, report, _ = run
    card = json.loads((report.out_dir / "model.json").read_text())["confidence"]["negatives"]
    result = evaluate(report.out_dir, backends=["onnx", "torch"], write_files=False, measure_speed=False)
    figures = result.open_set.negatives
    assert figures["val"]["count"] == card["validation"]["drawings"]
    assert figures["val"]["flagged"] == pytest.approx(card["validation"]["flagged"], abs=1e-9)
    assert figures["test"]["flagged"] == pytest.approx(card["test"]["flagged"], abs=1e-9)
    built = build_report(result)
    assert built["open_set"]["negatives"] == figures
    assert all(b["negatives_flagged"]["test"] == pytest.approx(figures["test"]["flagged"], abs=0.02)
               for b in built["backends"])
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(confidence_panel(built))
    assert "held-out negatives flagged:" in console.export_text()


def test_a_changed_negatives_folder_is_said_not_measured(run, tmp_path):
    checkpoint, report, negatives = run
    rows = np.load(negatives / "apple.npy")
    np.save(negatives / "apple.npy", rows[:-1])
    try:
        again = export_checkpoint(checkpoint, "onnx", out=tmp_path / "export")
        assert again.ok
        assert again.negatives == f"not measured ({negatives.resolve() / 'apple.npy'}: changed since training " \
                                  "(sha256 differs))"
        result = evaluate(again.out_dir, backends=["onnx"], write_files=False, measure_speed=False)
        assert result.open_set.negatives is None
        assert "changed since training" in build_report(result)["open_set"]["negatives_data"]["note"]
    finally:
        np.save(negatives / "apple.npy", rows)


def test_negatives_that_cannot_be_read_are_a_note_and_the_threshold_is_fitted_without_them(run, tmp_path,
                                                                                           monkeypatch):
    checkpoint, report, negatives = run

    def unreadable(*args, **kwargs):
        raise QDError(f"{negatives / 'apple.npy'}: not a .npy file")

    monkeypatch.setattr(checkpoint_source, "heldout_negatives", unreadable)
    again = export_checkpoint(checkpoint, "onnx", out=tmp_path / "export")
    assert again.ok and again.negatives == f"not measured ({negatives / 'apple.npy'}: not a .npy file)"
    card = json.loads((again.out_dir / "model.json").read_text())
    assert set(card["confidence"]["open_set"]["validation"]) == {"drawings", "kept"}
    before = json.loads((report.out_dir / "model.json").read_text())["confidence"]["open_set"]
    assert card["confidence"]["open_set"]["threshold"] == before["threshold"]


def test_a_model_trained_without_negatives_reports_none(exported_model):
    card = json.loads((exported_model / "model.json").read_text())
    assert "negatives" not in card["confidence"]
    assert set(card["confidence"]["open_set"]["validation"]) == {"drawings", "kept"}
    result = evaluate(exported_model, backends=["onnx"], write_files=False, measure_speed=False)
    assert result.negatives is None and result.open_set.negatives is None
    assert "negatives_data" not in build_report(result)["open_set"]
