"""A newcomer's path: one Python entry point, one vocabulary for every command, fast help, and a
one-line hint wherever people slip."""

from __future__ import annotations

import doctest
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw

from fixtures_export import run_export_cli
from qd.data.options import rewrite_aliases

COMMANDS = {"qd-data": "qd.data.cli", "qd-train": "qd.train.cli", "qd-export": "qd.export.cli",
            "qd-infer": "qd.infer.cli", "qd-eval": "qd.evaluate.cli", "qd-demo": "qd.infer.demo"}
HEAVY = ("torch", "onnx", "coremltools", "numpy", "onnxruntime", "PIL", "matplotlib")


def run_cli(module: str, *args: str) -> subprocess.CompletedProcess:
    code = f"import sys; sys.argv = ['x', *sys.argv[1:]]; from {module} import main; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


# ----------------------------------------------------------------------------- one vocabulary, fast help

def test_every_command_has_h_version_an_example_and_loads_nothing_heavy_for_help():
    probe = ("import sys; sys.argv = ['x', '-h']; from {m} import main\n"
             "try:\n    main()\nexcept SystemExit:\n    pass\n"
             "print('HEAVY', sorted(n for n in {heavy} if n in sys.modules))")
    for command, module in COMMANDS.items():
        done = subprocess.run([sys.executable, "-c", probe.format(m=module, heavy=HEAVY)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.rstrip().endswith("HEAVY []"), (command, done.stdout[-200:])
        help_text = done.stdout
        assert "Example: qd-" in help_text and "-h, --help" in help_text and "--version" in help_text, command
        assert "--install-completion" in help_text, command
        version = run_cli(module, "--version")
        assert version.returncode == 0 and "quickdraw-edge" in version.stdout, command


def test_shared_options_have_one_spelling_and_show_their_environment_variables():
    def help_of(module, *args):  # one line: click wraps long option help
        return " ".join(run_cli(module, *args, "-h").stdout.split())

    infer, train, fetch = help_of("qd.infer.cli"), help_of("qd.train.cli"), help_of("qd.data.cli", "fetch")
    for text in (infer, train):
        assert "-b, --batch-size" in text and "-w, --workers" in text and "[env var: QD_ARTIFACTS" in text
    assert "-d, --data DIR" in train and "-o, --out DIR" in train and "--data-dir" not in train
    assert "-d, --data DIR" in fetch and "[env var: QD_DATA_SOURCE]" in fetch
    assert "[env var: QD_ORT_WEB_DIST]" in help_of("qd.infer.demo")
    evaluate = help_of("qd.evaluate.cli")
    assert "-b," not in evaluate and "-m, --model" in evaluate and "-d, --data DIR" in evaluate


def test_old_spellings_still_work_as_hidden_aliases():
    assert rewrite_aliases(["--data-dir", "x", "--data-dir=y", "--", "--data-dir"], {"--data-dir": "--data"}) == \
        ["--data", "x", "--data=y", "--", "--data-dir"]
    assert rewrite_aliases(["-b", "onnx", "-bonnx"], {"-b": "--backend"}) == ["--backend", "onnx", "-bonnx"]
    old = run_cli("qd.train.cli", "--data-dir", "no/such/folder", "--epochs", "1")
    assert old.returncode == 1 and "no/such/folder: data directory does not exist" in old.stderr


# ----------------------------------------------------------------------------- hints where people slip

def test_a_checkpoint_given_as_model_says_run_qd_export_first(trained_checkpoint):
    done = run_cli("qd.infer.cli", "some.png", "-m", str(trained_checkpoint))
    assert done.returncode == 1 and "run qd-export first" in done.stderr and done.stderr.count("\n") == 1
    renamed = trained_checkpoint.parent / "model-from-a-friend.onnx"
    renamed.write_bytes(trained_checkpoint.read_bytes())  # a torch zip, whatever its name says
    from qd import Classifier
    from qd.data.errors import QDError

    with pytest.raises(QDError, match="run qd-export first"):
        Classifier(renamed)


def test_an_unknown_category_gets_did_you_mean(shared_bitmaps, tmp_path):
    done = run_cli("qd.train.cli", "-d", str(shared_bitmaps), "--categories", "cat,strr", "-o", str(tmp_path / "r"))
    assert done.returncode == 1 and "strr (did you mean 'star'?)" in done.stderr


def test_an_empty_artifacts_folder_says_run_qd_data_fetch(tmp_path):
    done = run_cli("qd.train.cli", "--artifacts", str(tmp_path))
    assert done.returncode == 1 and "qd-data fetch" in done.stderr and str(tmp_path / "data") in done.stderr


def test_qd_export_refuses_a_missing_data_folder_and_prints_the_next_commands(
        trained_checkpoint, tmp_path, monkeypatch, capsys):
    code, _, err = run_export_cli(monkeypatch, capsys, trained_checkpoint, "--data", tmp_path / "no/such/folder",
                                  "-o", tmp_path / "x")
    assert code == 1 and "--data folder does not exist" in err and not (tmp_path / "x").exists()
    code, out, _ = run_export_cli(monkeypatch, capsys, trained_checkpoint, "-o", tmp_path / "ok")
    assert code == 0
    lines = out.splitlines()
    nexts = lines[lines.index("next:") + 1:]
    assert [line.split()[0] for line in nexts] == ["qd-infer", "qd-eval", "qd-demo"]
    assert all(f"-m {tmp_path / 'ok'}" in line for line in nexts)


# ----------------------------------------------------------------------------- from qd import Classifier

@pytest.fixture(scope="module")
def clf(exported_model):
    from qd import Classifier

    return Classifier(exported_model)  # an export folder, as every command takes


def test_the_docstring_examples_run(exported_model):
    from qd.infer import classifier

    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = [t for t in finder.find(classifier, globs={"np": np, "Classifier": classifier.Classifier,
                                                       "export_folder": exported_model}) if t.examples]
    assert tests
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


def test_every_accepted_input_gives_one_prediction_per_drawing(clf, shared_bitmaps, tmp_path):
    rows = [np.load(shared_bitmaps / f"{label}.npy", mmap_mode="r")[700] for label in clf.labels[:4]]
    bitmaps = np.stack(rows)  # (4, 784) uint8, drawings of classes the model knows
    one = bitmaps[0]
    floats = bitmaps.astype(np.float32) / 255
    cases = {
        "(28, 28)": (one.reshape(28, 28), 1), "(784,)": (one, 1), "(N, 784)": (bitmaps, 4),
        "(N, 28, 28)": (bitmaps.reshape(4, 28, 28), 4), "(N, 1, 28, 28)": (bitmaps.reshape(4, 1, 28, 28), 4),
        "float (N, 784)": (floats, 4), "float (28, 28)": (floats[0].reshape(28, 28), 1),
    }
    reference = [p.label for p in clf.predict(bitmaps)]
    for name, (x, count) in cases.items():
        predictions = clf.predict(x)
        assert len(predictions) == count, name
        assert [p.label for p in predictions] == reference[:count], name
    image = Image.new("RGB", (400, 400), "white")  # a photo-sized drawing: dark ink on paper
    ImageDraw.Draw(image).ellipse((60, 60, 340, 340), outline="black", width=14)
    image.save(tmp_path / "circle.png")
    np.save(tmp_path / "rows.npy", bitmaps)
    [from_image] = clf.predict(image)
    [from_file] = clf.predict(tmp_path / "circle.png")
    assert (from_image.label, from_image.top) == (from_file.label, from_file.top)
    assert len(clf.predict([image, image])) == 2
    assert [p.input for p in clf.predict(tmp_path)] == [str(tmp_path / "circle.png")] + \
        [f"{tmp_path / 'rows.npy'}[{i}]" for i in range(4)]
    record = {"word": "circle", "drawing": [[[0, 100, 200, 100, 0], [100, 0, 100, 200, 100]]]}
    assert len(clf.predict(record)) == 1 and len(clf.predict(record["drawing"])) == 1
    everything = clf.predict(one, top=len(clf.labels) + 1)[0]  # more than there are: every class, once
    assert sorted(g.label for g in everything.top) == sorted(clf.labels)
    assert sorted((g.probability for g in everything.top), reverse=True) == [g.probability for g in everything.top]
    assert everything.unknown in (True, False)  # the model carries an open-set rule


@pytest.mark.parametrize("bad, message", [
    (np.zeros((28, 27), np.uint8), "shape (28, 27)"), (np.zeros((3, 28, 28, 3), np.uint8), "shape (3, 28, 28, 3)"),
    (np.full((28, 28), 2.0), "0..1"), (np.full((28, 28), np.nan), "NaN"), (np.full(784, 300), "0..255"),
    (np.zeros(784, bool), "dtype bool"), (42, "cannot classify a int"),
    ([[[0, 1], [0]]], "different lengths"),
])
def test_inputs_it_cannot_read_are_refused_not_guessed(clf, bad, message):
    from qd.data.errors import QDError

    with pytest.raises(QDError, match=message.replace("(", r"\(").replace(")", r"\)")):
        clf.predict(bad)
