"""qd-eval end to end on a real export (fixtures: trained_checkpoint -> exported_model)."""

import json
import shutil
import subprocess
import sys

import pytest

from qd.command import QDError
from qd.evaluate.evaluation import evaluate


@pytest.fixture(scope="module")
def evaluation(exported_model, tmp_path_factory):
    return evaluate(exported_model, out_dir=tmp_path_factory.mktemp("eval-e2e"), measure_speed=False)


def backends(result) -> dict:
    report = json.loads((result.out_dir / "report.json").read_text())
    return {b["name"]: b for b in report["backends"]}


def test_test_split_figures_match_the_checkpoint(evaluation, trained_checkpoint):
    import torch

    payload = torch.load(trained_checkpoint, weights_only=True)
    assert evaluation.heldout.source["kind"] == "training-data"
    assert len(evaluation.heldout) == payload["test"]["count"]  # the same shared split
    # onnx and torch compute the same network; the checkpoint's test top-1 came from torch
    assert evaluation.summary.top1 == pytest.approx(payload["test"]["top1"], abs=1.5 / len(evaluation.heldout))
    assert evaluation.summary.top1 > 0.8


def test_every_backend_side_by_side(evaluation, trained_checkpoint):
    runs = backends(evaluation)
    assert [name for name in runs] == ["onnx", "onnx-int8", "torch", "coreml"]
    assert runs["torch"]["status"] == "ok" and runs["torch"]["file"] == str(trained_checkpoint.resolve())
    assert runs["torch"]["note"] is None  # model.json's checkpoint is the export's source (sha256 matches)
    assert runs["torch"]["max_abs_probability_diff"] < 1e-4 and runs["torch"]["agreement_with_reference"] == 1.0
    assert runs["onnx-int8"]["status"] == "ok"
    assert runs["onnx-int8"]["size_bytes"] < runs["onnx"]["size_bytes"]
    assert abs(runs["onnx-int8"]["top1"] - runs["onnx"]["top1"]) <= 0.03
    if sys.platform != "darwin":
        assert runs["coreml"]["status"] == "skipped" and "macOS" in runs["coreml"]["reason"]


def test_torch_backend_with_explicit_and_foreign_checkpoints(exported_model, trained_checkpoint, tmp_path):
    import torch

    result = evaluate(exported_model, backends=["torch"], checkpoint=trained_checkpoint, write_files=False,
                      measure_speed=False)
    assert result.reference.name == "torch" and result.summary.count > 0
    payload = torch.load(trained_checkpoint, weights_only=True)
    payload["classes"] = [c.upper() for c in payload["classes"]]
    foreign = tmp_path / "foreign.pt"
    torch.save(payload, foreign)
    with pytest.raises(QDError, match="no backend could run.*classes differ"):
        evaluate(exported_model, backends=["torch"], checkpoint=foreign, write_files=False, measure_speed=False)
    both = evaluate(exported_model, backends=["onnx", "torch"], checkpoint=foreign, write_files=False,
                    measure_speed=False)
    assert both.runs[0].ran and "classes differ" in both.runs[1].skipped


def test_a_broken_int8_file_is_skipped_with_its_reason(exported_model, tmp_path):
    folder = shutil.copytree(exported_model, tmp_path / "copy")
    (folder / "model.int8.onnx").write_bytes(b"truncated")
    result = evaluate(folder, backends=["onnx", "onnx-int8"], write_files=False, measure_speed=False)
    assert result.runs[0].ran and "not a loadable ONNX model" in result.runs[1].skipped


def test_moved_source_checkpoint_skips_torch_with_a_reason(exported_model, tmp_path):
    folder = shutil.copytree(exported_model, tmp_path / "copy")
    card = json.loads((folder / "model.json").read_text())
    card["source"]["checkpoint"] = str(tmp_path / "gone" / "best.pt")
    (folder / "model.json").write_text(json.dumps(card))
    result = evaluate(folder, backends=["onnx", "torch"], write_files=False, measure_speed=False)
    torch_run = result.runs[1]
    assert not torch_run.ran and "is gone" in torch_run.skipped and "--checkpoint" in torch_run.skipped


def test_onnx_evaluation_never_imports_torch(exported_model, tmp_path):
    code = (
        "import sys; from qd.evaluate.evaluation import evaluate; "
        f"r = evaluate({str(exported_model)!r}, backends=['onnx', 'onnx-int8'], out_dir={str(tmp_path)!r}, "
        "measure_speed=False); "
        "assert 'torch' not in sys.modules and 'qd.train' not in sys.modules, 'torch imported'; "
        "print(r.summary.top1)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "report.json").is_file() and (tmp_path / "confusion.png").is_file()


def test_coreml_package_names_what_the_backend_reads(coreml_report):
    # Predictions need macOS; everywhere, the backend's reading of the package is checked.
    import coremltools as ct

    from qd.evaluate.backends import coreml_io_names

    assert coreml_io_names(ct, coreml_report.out_dir / "model.mlpackage") == ("image", "classLabel_probs")


def test_the_int8_model_given_directly_says_so(exported_int8_model):
    result = evaluate(exported_int8_model, backends=["onnx"], write_files=False, measure_speed=False)
    assert result.runs[0].ran and result.runs[0].note == "the model given is the int8 one"


@pytest.fixture(scope="module")
def unknown_drawings(tmp_path_factory, shared_bitmaps, shared_strokes):
    """Drawings of categories the fixture model (apple, circle, square, star) never saw: bitmaps and strokes."""
    import numpy as np

    from qd.data.bitmaps import open_bitmaps

    root = tmp_path_factory.mktemp("unknown")
    np.save(root / "animals.npy", np.concatenate([np.asarray(open_bitmaps(shared_bitmaps / f"{c}.npy")[-100:])
                                                  for c in ("cat", "dog", "horse")]))
    shutil.copy(shared_strokes / "bicycle.ndjson", root / "bicycle.ndjson")
    (root / "notes.txt").write_text("not a drawing")  # skipped in a folder, as qd-infer skips it
    return root


def test_unknown_drawings_are_flagged_and_reported(exported_model, unknown_drawings, tmp_path):
    from qd.evaluate.metrics import auroc

    result = evaluate(exported_model, backends=["onnx", "onnx-int8"], out_dir=tmp_path, measure_speed=False,
                      unknown=[unknown_drawings / "animals.npy", unknown_drawings / "bicycle.ndjson"])
    o = result.open_set
    assert result.unknown is not None and len(result.unknown) == 300 + 25 == o.unknown_count
    rule = result.model.classifier.model_open_set
    known_scores = rule.scores(result.reference.outputs)
    unknown_scores = rule.scores(result.reference.unknown_outputs)
    assert o.known_flagged == pytest.approx((known_scores < rule.threshold).mean())
    assert o.unknown_flagged == pytest.approx((unknown_scores < rule.threshold).mean())
    assert o.auroc == pytest.approx(auroc(known_scores, unknown_scores)) and o.auroc > 0.6
    assert o.unknown_flagged > o.known_flagged and o.top1_accepted >= o.top1_all
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["open_set"]["available"] and report["open_set"]["unknown"]["count"] == 325
    assert report["open_set"]["unknown_data"]["paths"][0].endswith("animals.npy")
    int8 = {b["name"]: b for b in report["backends"]}["onnx-int8"]
    assert 0 <= int8["known_flagged"] <= 1 and abs(int8["unknown_flagged"] - o.unknown_flagged) < 0.1
    cal = report["calibration"]
    assert cal["temperature"] == result.model.classifier.temperature != 1.0
    assert 0 <= cal["ece_after"] < 0.2 and 0 <= cal["ece_before"] < 0.3
    assert (tmp_path / "calibration.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_unknown_option_in_the_terminal_report(exported_model, unknown_drawings, tmp_path):
    result = subprocess.run([sys.executable, "-m", "qd.evaluate.cli", "-m", str(exported_model), "--backend", "onnx",
                             "--no-speed", "--out", str(tmp_path), "--unknown", str(unknown_drawings)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    out = " ".join(result.stdout.split())
    assert "--unknown drawings flagged:" in out and "AUROC" in out and "of 325" in out
    assert "known drawings flagged unknown:" in out and "expected calibration error" in out


def test_no_plots_writes_the_report_alone_without_matplotlib(exported_model, tmp_path):
    code = (
        "import sys; from qd.evaluate.evaluation import evaluate; "
        f"evaluate({str(exported_model)!r}, backends=['onnx'], out_dir={str(tmp_path / 'api')!r}, "
        "measure_speed=False, plots=False); "
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "api").iterdir()) == ["report.json"]
    assert json.loads((tmp_path / "api" / "report.json").read_text())["files"] == {"report": "report.json"}

    cli = subprocess.run([sys.executable, "-m", "qd.evaluate.cli", "-m", str(exported_model), "--backend", "onnx",
                          "--no-speed", "--no-plots", "--out", str(tmp_path / "cli")],
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == ["report.json"]
    assert "wrote report.json to" in " ".join(cli.stdout.split())


def test_without_matplotlib_the_plots_fail_up_front_in_one_line(exported_model, tmp_path):
    code = ("import sys; sys.modules['matplotlib'] = None; from qd.evaluate.cli import main; "
            f"sys.argv = ['qd-eval', '-m', {str(exported_model)!r}, '--backend', 'onnx', '--no-speed', "
            f"'--out', {str(tmp_path / 'out')!r}]; main()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("\n") == 1 and "matplotlib" in done.stderr and "--no-plots" in done.stderr
    assert not (tmp_path / "out").exists()

    code = ("import sys; sys.modules['matplotlib'] = None; from qd.evaluate.evaluation import evaluate; "
            f"r = evaluate({str(exported_model)!r}, backends=['onnx'], measure_speed=False, write_files=False); "
            "print(r.summary.top1)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr  # nothing to draw: evaluating needs no matplotlib
