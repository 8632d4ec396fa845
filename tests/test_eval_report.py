"""qd-eval's evaluation API, report.json, plots, terminal report and CLI errors,
with a tiny real ONNX model (tests/eval_synthetic.py)."""

import json
import sys

import numpy as np
import pytest
from rich.console import Console

from eval_synthetic import make_export
from qd.evaluate import cli, metrics
from qd.evaluate.evaluation import evaluate
from qd.evaluate.report import build_report, pick_mistakes, plot_confusion, plot_mistakes, render
from qd.files import atomic_target, write_json_atomic as write_json

CATEGORIES = ["apple", "circle", "square", "star"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def export(shared_bitmaps, tmp_path_factory):
    return make_export(tmp_path_factory.mktemp("eval-report") / "lin", shared_bitmaps, CATEGORIES, 200)


@pytest.fixture(scope="module")
def result(export, tmp_path_factory):
    return evaluate(export, out_dir=tmp_path_factory.mktemp("eval-out"), measure_speed=False)


def test_writes_report_and_plots_atomically(result):
    out = result.out_dir
    assert sorted(p.name for p in out.iterdir()) == ["calibration.png", "confusion.png", "mistakes.png",
                                                     "report.json"]  # no temp files
    for name in ("calibration.png", "confusion.png", "mistakes.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC


def test_report_json_holds_every_figure(result):
    report = json.loads((result.out_dir / "report.json").read_text())
    labels = result.heldout.labels
    probs = result.reference.probabilities
    assert report["format"] == "qd-eval-report-v1"
    assert report["model"]["labels"] == CATEGORIES
    assert report["overall"]["count"] == len(labels) > 0
    assert report["overall"]["top1"] == pytest.approx(float((probs.argmax(1) == labels).mean()))
    assert report["overall"]["top3"] == pytest.approx(metrics.top_k_accuracy(probs, labels, 3))
    assert report["overall"]["map3"] == pytest.approx(metrics.map_at_k(probs, labels, 3))
    assert report["overall"]["top1"] > 0.5  # the template model is far above chance (0.25)
    f1s = [row["f1"] for row in report["per_class"]]
    assert f1s == sorted(f1s) and len(f1s) == 4
    assert sum(row["support"] for row in report["per_class"]) == len(labels)
    counts = np.array(report["confusion"]["counts"])
    assert counts.sum() == len(labels) and np.trace(counts) == len(labels) - report["overall"]["errors"]
    backends = {b["name"]: b for b in report["backends"]}
    assert backends["onnx"]["status"] == "ok" and backends["onnx"]["agreement_with_reference"] == 1.0
    assert backends["onnx"]["size_bytes"] == (result.model.path).stat().st_size
    assert backends["onnx-int8"]["status"] == "skipped" and "model.int8.onnx" in backends["onnx-int8"]["reason"]
    assert backends["torch"]["status"] == "skipped" and "--checkpoint" in backends["torch"]["reason"]
    if sys.platform != "darwin":
        assert backends["coreml"]["reason"] == "Core ML runs only on macOS"
    mistakes = report["mistakes"]
    assert len(mistakes) == report["overall"]["errors"]
    assert [m["probability"] for m in mistakes] == sorted((m["probability"] for m in mistakes), reverse=True)
    first = mistakes[0]
    category, row = first["origin"].split(".npy#")
    assert category == first["true"] and first["predicted"] != first["true"]
    bitmap = np.load(result.heldout.source["dir"] + f"/{category}.npy", mmap_mode="r")[int(row)]
    assert any(np.array_equal(bitmap, b) for b in result.heldout.bitmaps)
    if report["most_confused"]:
        top = report["most_confused"][0]
        t, p = CATEGORIES.index(top["true"]), CATEGORIES.index(top["predicted"])
        assert top["count"] == counts[t, p] == max(counts[i, j] for i in range(4) for j in range(4) if i != j)


def test_terminal_report_shows_the_figures(result):
    console = Console(record=True, width=100)
    report = build_report(result)
    render(report, console, result.out_dir)
    text = console.export_text()
    assert f"{report['overall']['top1']:.1%}" in text and "MAP@3" in text
    for name in CATEGORIES:
        assert name in text
    assert "per class, worst first" in text and "most confused pairs" in text and "backends, side by side" in text
    assert "onnx-int8 skipped: no model.int8.onnx beside model.onnx" in text
    assert "wrote report.json, confusion.png, mistakes.png, calibration.png" in text
    # the template model carries no qd-export confidence metadata: uncalibrated, cannot flag unknowns
    assert "model.onnx was exported without an open-set rule" in text and "T = 1" in text


def test_calibration_figures_without_a_temperature(result):
    report = json.loads((result.out_dir / "report.json").read_text())
    cal = report["calibration"]
    probs, labels = result.reference.probabilities, result.heldout.labels
    assert cal["temperature"] == 1.0 and cal["ece_before"] == pytest.approx(cal["ece_after"], abs=1e-6)
    assert cal["ece_after"] == pytest.approx(metrics.reliability(probs, labels, cal["bins"]).ece)
    assert sum(cal["reliability_after"]["counts"]) == len(labels)
    assert report["open_set"] == {"available": False,
                                  "reason": "model.onnx was exported without an open-set rule: "
                                            "it cannot flag unknown drawings"}
    assert report["files"]["calibration"] == "calibration.png"


def test_speed_is_measured_for_backends_that_ran(export, tmp_path):
    res = evaluate(export, backends=["onnx"], out_dir=tmp_path, write_files=False)
    run = res.runs[0]
    assert [r.name for r in res.runs] == ["onnx"]
    assert run.images_per_s > 0 and run.p50_ms > 0


def test_pick_mistakes_round_robins_over_classes():
    labels = np.array([0, 0, 0, 1, 1, 2])
    probs = np.array([
        [0.1, 0.9, 0.0],   # wrong, 0.9
        [0.2, 0.8, 0.0],   # wrong, 0.8
        [0.3, 0.7, 0.0],   # wrong, 0.7
        [0.6, 0.4, 0.0],   # wrong, 0.6
        [0.0, 1.0, 0.0],   # right
        [0.0, 0.0, 1.0],   # right
    ])
    assert pick_mistakes(labels, probs).tolist() == [0, 3, 1, 2]
    assert pick_mistakes(labels, probs, limit=2).tolist() == [0, 3]


def test_plots_for_many_classes_and_no_mistakes(tmp_path):
    rng = np.random.default_rng(0)
    names = [f"class {i}" for i in range(60)]
    confusion = rng.integers(0, 5, size=(60, 60)) + np.eye(60, dtype=int) * 50
    assert plot_confusion(confusion, names, tmp_path / "c.png", "60 classes").read_bytes()[:8] == PNG_MAGIC
    probs = np.eye(3)
    path = plot_mistakes(np.zeros((3, 784), np.uint8), np.arange(3), probs, ["a", "b", "c"], tmp_path / "m.png", "t")
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = write_json(tmp_path / "report.json", {"old": True})
    with pytest.raises(RuntimeError):
        with atomic_target(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert json.loads(target.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


# ------------------------------------------------------------------ CLI


def run_cli(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["qd-eval", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_cli_happy_path(export, tmp_path, monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, "--model", export / "model.onnx", "--out", tmp_path / "o",
                             "--backend", "onnx,coreml", "--no-speed")
    assert code == 0, err
    assert "top-1" in out and "per class, worst first" in out
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert [b["name"] for b in report["backends"]] == ["onnx", "coreml"]


def test_cli_several_models_side_by_side(export, shared_bitmaps, tmp_path, monkeypatch, capsys):
    other = make_export(tmp_path / "lin-small", shared_bitmaps, CATEGORIES, 40)
    code, out, err = run_cli(monkeypatch, capsys, "-m", export, "-m", other, "--out", tmp_path / "o",
                             "--backend", "onnx", "--no-speed")
    assert code == 0, err
    assert (tmp_path / "o" / "lin" / "report.json").is_file()
    assert (tmp_path / "o" / "lin-small" / "report.json").is_file()
    assert "models, side by side" in out


def test_default_out_dir_is_under_artifacts(export, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("QD_ARTIFACTS", str(tmp_path / "art"))
    code, _, err = run_cli(monkeypatch, capsys, "--model", export, "--backend", "onnx", "--no-speed")
    assert code == 0, err
    assert (tmp_path / "art" / "eval" / "lin" / "report.json").is_file()


def _no_labels(tmp_path, shared_bitmaps):
    return make_export(tmp_path / "nolabels", shared_bitmaps, CATEGORIES, 40, with_labels=False) / "model.onnx"


def _unknown_data(tmp_path, shared_bitmaps):
    (tmp_path / "data").mkdir()
    np.save(tmp_path / "data" / "giraffe.npy", np.zeros((3, 784), np.uint8))
    return tmp_path / "data"


def _bad_npy(tmp_path, shared_bitmaps):
    (tmp_path / "data").mkdir()
    np.save(tmp_path / "data" / "star.npy", np.zeros((3, 28, 28), np.float32))
    return tmp_path / "data"


@pytest.mark.parametrize("args, expected", [
    (lambda t, s, e: ["--model", t / "nope.onnx"], "nope.onnx: model file does not exist"),
    (lambda t, s, e: ["--model", _no_labels(t, s)], "metadata has no qd.labels"),
    (lambda t, s, e: ["--model", (t / "x.onnx").write_text("junk") and t / "x.onnx"], "not a loadable ONNX model"),
    (lambda t, s, e: ["--model", e, "--data", t / "missing"], "missing: data directory does not exist"),
    (lambda t, s, e: ["--model", e, "--data", (t / "empty").mkdir() or t / "empty"], "no <category>.npy files"),
    (lambda t, s, e: ["--model", e, "--data", _unknown_data(t, s)], "does not know category giraffe"),
    (lambda t, s, e: ["--model", e, "--data", _bad_npy(t, s)], "star.npy: dtype is float32, expected uint8"),
    (lambda t, s, e: ["--model", e, "--backend", "tflite"], "unknown backend 'tflite'"),
    (lambda t, s, e: ["--model", e, "--checkpoint", t / "none.pt"], "none.pt: checkpoint not found"),
    (lambda t, s, e: ["--model", e, "--unknown", t / "moons"], "--unknown " ),
    (lambda t, s, e: ["--model", e, "--unknown", (t / "e").mkdir() or t / "e"], "no readable drawings"),
])
def test_cli_bad_input_is_one_clear_line(export, shared_bitmaps, tmp_path, monkeypatch, capsys, args, expected):
    code, out, err = run_cli(monkeypatch, capsys, *args(tmp_path, shared_bitmaps, export), "--no-speed")
    assert code == 1
    assert err.startswith("error: ") and expected in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err + out


def test_no_default_model_is_one_clear_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("QD_ARTIFACTS", str(tmp_path))
    code, _, err = run_cli(monkeypatch, capsys, "--no-speed")
    assert code == 1 and "no exported model found" in err
