"""qd-infer end to end with a real exported model: API, CLI formats, bad inputs, no torch."""

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from images_synth import bitmap_as_paper, off_centre
from model_files import model_with_metadata
from qd import Classifier
from qd.command import QDError
from qd.data.bitmaps import open_bitmaps
from qd.data.images import image_to_bitmap
from qd.infer.model import OnnxClassifier, newest_export, resolve_model_path


@pytest.fixture(scope="module")
def classifier(exported_model):
    return OnnxClassifier(exported_model / "model.onnx")


@pytest.fixture(scope="module")
def held_out(classifier, shared_bitmaps):
    """Rows 500..529 of each model category (the fixture trained on at most the first 600 per class,
    but here we only compare predictions, not accuracy against training)."""
    rows, labels = [], []
    for i, name in enumerate(classifier.labels):
        rows.append(np.asarray(open_bitmaps(shared_bitmaps / f"{name}.npy")[700:730]))
        labels += [i] * 30
    return np.concatenate(rows), np.array(labels)


def run_cli(*args, env=None, cwd=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "qd.infer.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=timeout)


def test_classifier_reads_labels_and_preprocessing_from_metadata(classifier):
    assert classifier.labels == ["apple", "circle", "square", "star"]
    assert classifier.preprocessing["input_size"] == 28 and classifier.precision == "fp32"


def test_bitmaps_are_classified_well(classifier, held_out):
    rows, labels = held_out
    probs = classifier.predict(rows, batch_size=37).probabilities
    assert probs.shape == (len(rows), 4) and np.allclose(probs.sum(1), 1, atol=1e-4)
    assert (probs.argmax(1) == labels).mean() > 0.8


def test_real_image_preprocessing_keeps_the_models_answer(classifier, held_out):
    """Dataset drawings saved as black-on-white PNGs, bigger and off-centre: same top-1 on most."""
    rows, _ = held_out
    rows = rows[::3]
    reference = classifier.predict(rows).probabilities.argmax(1)
    big = np.stack([image_to_bitmap(bitmap_as_paper(r, 512)) for r in rows])
    shifted = np.stack([image_to_bitmap(off_centre(bitmap_as_paper(r, 300), canvas=(900, 700), at=(40, 380)))
                        for r in rows])
    assert (classifier.predict(big).probabilities.argmax(1) == reference).mean() >= 0.9
    assert (classifier.predict(shifted).probabilities.argmax(1) == reference).mean() >= 0.9


def test_mixed_paths_are_classified(exported_model, tmp_path, held_out, shared_strokes):
    rows, _ = held_out
    bitmap_as_paper(rows[0], 256).save(tmp_path / "a.png")
    np.save(tmp_path / "b.npy", rows[:5])
    shutil.copy(shared_strokes / "star.ndjson", tmp_path / "c.ndjson")
    results = Classifier(exported_model).predict([tmp_path, tmp_path / "missing.png"], top=2)
    ok = [r for r in results if r.ok]
    assert len(ok) == 1 + 5 + 25
    assert all(len(r.top) == 2 and r.top[0].probability >= r.top[1].probability for r in ok)
    stars = [r.label for r in ok if "c.ndjson" in r.input]
    assert stars.count("star") >= 20  # the strokes are rendered like the training bitmaps
    assert results[-1].label is None and "missing.png: no such file" in results[-1].error


def test_newest_export_is_the_default(tmp_path, exported_model, monkeypatch):
    for name, age in (("old", 100), ("new", 0)):
        (tmp_path / "exports" / name).mkdir(parents=True)
        shutil.copy(exported_model / "model.onnx", tmp_path / "exports" / name / "model.onnx")
        os.utime(tmp_path / "exports" / name / "model.onnx", (time.time() - age, time.time() - age))
    assert newest_export(tmp_path) == tmp_path / "exports" / "new" / "model.onnx"
    monkeypatch.setenv("QD_ARTIFACTS", str(tmp_path))
    assert resolve_model_path(None) == tmp_path / "exports" / "new" / "model.onnx"
    assert resolve_model_path(tmp_path / "exports" / "old") == tmp_path / "exports" / "old" / "model.onnx"
    monkeypatch.setenv("QD_ARTIFACTS", str(tmp_path / "nothing"))
    with pytest.raises(QDError, match="no exported model found"):
        resolve_model_path(None)


@pytest.mark.parametrize("change,reason", [
    (lambda p: p.pop("qd.labels"), "has no qd.labels"),
    (lambda p: p.update({"qd.labels": "[not json"}), "qd.labels is not valid JSON"),
    (lambda p: p.update({"qd.labels": json.dumps(["a", "b", "c"])}), "names 3 labels but the model outputs 4"),
    (lambda p: p.update({"qd.labels": json.dumps(["a", "a", "b", "c"])}), "duplicate"),
    (lambda p: p.update({"qd.labels": json.dumps({"a": 1})}), "must be a non-empty list of names"),
    (lambda p: p.update({"qd.preprocessing": "{}"}), "qd.preprocessing must be a JSON object"),
    (lambda p: p.pop("qd.preprocessing"), "has no qd.preprocessing"),
])
def test_bad_model_metadata_is_refused(exported_model, tmp_path, change, reason):
    path = model_with_metadata(exported_model / "model.onnx", tmp_path / "m.onnx", change)
    with pytest.raises(QDError, match=reason):
        OnnxClassifier(path)


def test_not_an_onnx_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_text("definitely not protobuf")
    with pytest.raises(QDError, match=r"model.onnx: not a loadable ONNX model"):
        OnnxClassifier(path)


@pytest.fixture(scope="module")
def inputs_folder(tmp_path_factory, held_out, shared_strokes):
    rows, _ = held_out
    root = tmp_path_factory.mktemp("cli-inputs")
    (root / "photos").mkdir()
    for i in (0, 40, 80, 110):
        bitmap_as_paper(rows[i], 300).convert("RGB").save(root / "photos" / f"drawing {i}.jpg", quality=92)
    np.save(root / "rows.npy", rows[:6])
    shutil.copy(shared_strokes / "apple.ndjson", root / "apple.ndjson")
    return root


def test_cli_json_lines(exported_model, inputs_folder):
    result = run_cli(inputs_folder, "--model", exported_model, "--json", "--top", "2", "--workers", "2")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(l) for l in result.stdout.splitlines()]
    assert len(lines) == 25 + 4 + 6
    assert {"input", "label", "probability", "unknown", "top"} <= set(lines[0])
    assert all(isinstance(l["unknown"], bool) for l in lines)
    assert all(len(l["top"]) == 2 and l["top"][0]["label"] == l["label"] for l in lines)
    assert "35 drawings classified" in result.stderr and "images/s" in result.stderr


def test_cli_csv_and_table(exported_model, inputs_folder):
    result = run_cli(inputs_folder / "rows.npy", "--model", exported_model, "--csv", "--top", "3")
    assert result.returncode == 0, result.stderr
    table = list(csv.reader(io.StringIO(result.stdout)))
    assert table[0] == ["version", "input", "label_1", "probability_1", "label_2", "probability_2", "label_3",
                        "probability_3", "unknown", "error"]
    assert len(table) == 7 and table[1][1].endswith("rows.npy[0]") and {row[0] for row in table[1:]} == {"1"}
    assert {row[-2] for row in table[1:]} <= {"true", "false"} and {row[-1] for row in table[1:]} == {""}
    result = run_cli(inputs_folder / "photos", "--model", exported_model, "--top", "2")
    assert result.returncode == 0, result.stderr
    assert "1st" in result.stdout and "2nd" in result.stdout and "drawing 0.jpg" in result.stdout
    assert "4 drawings classified" in result.stdout


def test_cli_bad_inputs_one_line_each_good_still_classified(exported_model, inputs_folder, tmp_path):
    (tmp_path / "text.png").write_text("hello")
    np.save(tmp_path / "pickle.npy", np.array([None], dtype=object), allow_pickle=True)
    result = run_cli(inputs_folder / "rows.npy", tmp_path / "text.png", tmp_path / "pickle.npy",
                     tmp_path / "missing", "--model", exported_model, "--json")
    assert result.returncode == 1
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 6 + 3  # each drawing, and each failed input as a record in its place
    failed = [r for r in records if r["error"] is not None]
    assert [r["input"] for r in failed] == [str(tmp_path / n) for n in ("text.png", "pickle.npy", "missing")]
    assert all(r["error"].startswith(r["input"] + ": ") and r["label"] is None and r["top"] == [] for r in failed)
    assert [r["error"] is None for r in records] == [True] * 6 + [False] * 3
    errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 3, result.stderr
    assert "Traceback" not in result.stderr
    assert "text.png: not a recognised image file" in result.stderr
    assert "pickle.npy: array holds Python objects" in result.stderr
    assert "missing: no such file or directory" in result.stderr
    assert "3 inputs failed" in result.stderr


def test_cli_bad_model_and_options(tmp_path, inputs_folder, exported_model):
    (tmp_path / "m.onnx").write_bytes(b"\x00garbage")
    result = run_cli(inputs_folder, "--model", tmp_path / "m.onnx")
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "m.onnx: not a loadable ONNX model" in result.stderr and "Traceback" not in result.stderr
    result = run_cli(inputs_folder, "--model", exported_model, "--json", "--csv")
    assert result.returncode == 1 and "cannot be used together" in result.stderr


def test_cli_never_imports_torch(exported_model, inputs_folder, tmp_path):
    """The edge install has no torch: make it unimportable and run the whole command."""
    blocker = tmp_path / "blocker" / "torch"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('torch is blocked in this test')\n")
    env = dict(os.environ, PYTHONPATH=str(blocker.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    code = ("import sys, runpy; sys.argv=['qd-infer', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('qd.infer.cli', run_name='__main__')\n"
            "finally:\n    assert 'torch' not in sys.modules or sys.modules['torch'] is None, 'torch imported'\n")
    result = subprocess.run([sys.executable, "-c", code, str(inputs_folder), "--model", str(exported_model),
                             "--csv"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1 + 35


def test_cli_module_imports_nothing_heavy():
    """`qd-infer --help` starts fast because numpy, Pillow and onnxruntime load inside the command."""
    code = ("import sys, qd.infer.cli\n"
            "heavy = [m for m in ('numpy', 'PIL', 'onnxruntime', 'torch') if m in sys.modules]\n"
            "print(heavy)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
