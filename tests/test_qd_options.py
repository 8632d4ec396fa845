"""One vocabulary for every qd-* command (qd.options): -h, --version and an example in every help,
which loads nothing heavy; shared options spelled one way, with their environment variables shown;
old spellings still accepted as hidden aliases; and a one-line hint wherever people slip (a checkpoint
given as a model, a misspelt category, an empty artifacts folder, a missing --data folder, the next
commands after qd-export)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fixtures_export import run_export_cli
from qd.options import rewrite_aliases

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
    from qd.command import QDError

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
