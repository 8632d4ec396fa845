"""The unknown answer end to end with a real export: API, qd-infer's three formats, overrides, old and
malformed models."""

import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest

from model_files import model_with_metadata
from qd.command import QDError
from qd.data.bitmaps import BitmapDataset, SplitSpec, open_bitmaps
from qd.infer.model import OnnxClassifier
from qd.data.contract import LOGITS, META_OPEN_SET as OPEN_SET_KEY, META_TEMPERATURE as TEMPERATURE_KEY, PROBABILITIES
from qd.infer.model import softmax

UNSEEN = ["cat", "house", "bicycle", "fish"]  # not among the fixture model's apple, circle, square, star


@pytest.fixture(scope="module")
def classifier(exported_model):
    return OnnxClassifier(exported_model / "model.onnx")


@pytest.fixture(scope="module")
def test_split(classifier):
    data = json.loads(classifier.metadata["qd.data"])
    dataset = BitmapDataset(data["dir"], data["categories"], data["max_per_category"])
    return dataset.take(dataset.split_indices(SplitSpec.from_dict(json.loads(classifier.metadata["qd.split"])))["test"])


@pytest.fixture(scope="module")
def unseen(shared_bitmaps):
    return np.concatenate([np.asarray(open_bitmaps(shared_bitmaps / f"{name}.npy")[-60:]) for name in UNSEEN])


@pytest.fixture(scope="module")
def folder(tmp_path_factory, test_split, unseen):
    root = tmp_path_factory.mktemp("unknown-inputs")
    np.save(root / "known.npy", test_split[0][:40])
    np.save(root / "unseen.npy", unseen[::4])
    return root


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "qd.infer.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def test_the_graph_applies_the_temperature_in_the_metadata(classifier, test_split):
    x = test_split[0][:64]
    from qd.data.contract import bitmaps_to_input

    out = classifier.outputs(bitmaps_to_input(x, classifier.preprocessing), [PROBABILITIES, LOGITS])
    assert classifier.temperature == json.loads(classifier.metadata[TEMPERATURE_KEY]) > 0
    np.testing.assert_allclose(out[PROBABILITIES], softmax(out[LOGITS], classifier.temperature), atol=1e-5)


def test_few_known_and_many_unseen_drawings_are_flagged(classifier, test_split, unseen):
    known, labels = test_split
    ours = classifier.predict(known)
    assert ours.unknown is not None and ours.unknown.dtype == bool
    assert ours.unknown.mean() <= 0.15  # fitted to flag 5% of the validation split
    accepted = ~ours.unknown
    top1 = ours.probabilities.argmax(1) == labels
    assert top1[accepted].mean() >= top1.mean()  # what it accepts, it gets right more often
    others = classifier.predict(unseen).unknown
    assert others.mean() > 2 * ours.unknown.mean()  # drawings of things it never saw stand out
    from qd.data.contract import bitmaps_to_input
    from qd.infer import DEFAULT_BATCH_SIZE

    inputs = bitmaps_to_input(known, classifier.preprocessing)
    graph = np.concatenate([classifier.outputs(inputs[i:i + DEFAULT_BATCH_SIZE], [PROBABILITIES])[PROBABILITIES]
                            for i in range(0, len(inputs), DEFAULT_BATCH_SIZE)])
    np.testing.assert_array_equal(graph, ours.probabilities)  # the batch loop returns the graph's probabilities


def test_threshold_override_and_rule_off(exported_model, test_split):
    path = exported_model / "model.onnx"
    known = test_split[0][:50]
    assert OnnxClassifier(path, unknown_threshold=1e9).predict(known).unknown.all()
    assert not OnnxClassifier(path, unknown_threshold=-1e9).predict(known).unknown.any()
    off = OnnxClassifier(path, flag_unknown=False)
    assert off.open_set is None and off.model_open_set is not None and off.predict(known).unknown is None


def test_cli_json_csv_and_table_carry_the_answer(exported_model, folder):
    result = run_cli(folder, "--model", exported_model, "--json")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    flags = {name: [r["unknown"] for r in rows if name in r["input"]] for name in ("known.npy", "unseen.npy")}
    assert all(isinstance(f, bool) for f in flags["known.npy"] + flags["unseen.npy"])
    assert sum(flags["unseen.npy"]) > sum(flags["known.npy"])
    flagged = sum(flags["known.npy"]) + sum(flags["unseen.npy"])
    assert f"{len(rows)} drawings classified in " in result.stderr and f"/s), {flagged} unknown" in result.stderr

    result = run_cli(folder / "unseen.npy", "--model", exported_model, "--csv", "--unknown-threshold", "1e9")
    table = list(csv.reader(io.StringIO(result.stdout)))
    assert table[0][-2] == "unknown" and {row[-2] for row in table[1:]} == {"true"}

    result = run_cli(folder / "known.npy", "--model", exported_model, "--unknown-threshold", "1e9", "--top", "2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("unknown ·") == 40  # every row, before its closest class
    result = run_cli(folder / "known.npy", "--model", exported_model, "--unknown-threshold", "-1e9")
    assert "unknown ·" not in result.stdout and "/s), 0 unknown" in result.stdout


def test_cli_no_unknown_prints_null_and_empty_cells(exported_model, folder):
    result = run_cli(folder / "unseen.npy", "--model", exported_model, "--json", "--no-unknown")
    assert result.returncode == 0 and all(json.loads(l)["unknown"] is None for l in result.stdout.splitlines())
    assert "unknown" not in result.stderr  # no notice, no count: the user turned it off
    result = run_cli(folder / "unseen.npy", "--model", exported_model, "--csv", "--no-unknown")
    assert {row[-1] for row in list(csv.reader(io.StringIO(result.stdout)))[1:]} == {""}
    result = run_cli(folder, "--model", exported_model, "--no-unknown", "--unknown-threshold", "2")
    assert result.returncode == 1 and "cannot be used together" in result.stderr


def test_a_model_exported_before_the_rule_still_works_with_one_notice(exported_model, folder, tmp_path):
    old = model_with_metadata(exported_model / "model.onnx", tmp_path / "old.onnx",
                         lambda p: (p.pop(OPEN_SET_KEY), p.pop(TEMPERATURE_KEY)))
    result = run_cli(folder, "--model", old, "--json")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("cannot be flagged unknown") == 1 and "Traceback" not in result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 40 + 60 and all(r["unknown"] is None for r in rows)
    result = run_cli(folder, "--model", old, "--unknown-threshold", "3")
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "old.onnx: --unknown-threshold needs a model with an open-set rule" in result.stderr
    assert OnnxClassifier(old).open_set is None and OnnxClassifier(old).temperature == 1.0


@pytest.mark.parametrize("key,value,reason", [
    (OPEN_SET_KEY, '{"rule": "max_logit", "threshold": NaN}', "threshold must be a finite number"),
    (OPEN_SET_KEY, '{"rule": "max_logit", "threshold": [1, 2]}', "threshold must be a finite number"),
    (OPEN_SET_KEY, '{"rule": "telepathy", "threshold": 1}', "names rule 'telepathy'"),
    (OPEN_SET_KEY, "]", "is not valid JSON"),
    (TEMPERATURE_KEY, "-2", "must be a finite number above 0"),
])
def test_malformed_open_set_metadata_is_refused(exported_model, tmp_path, key, value, reason):
    bad = model_with_metadata(exported_model / "model.onnx", tmp_path / "bad.onnx", lambda p: p.update({key: value}))
    with pytest.raises(QDError, match=reason) as error:
        OnnxClassifier(bad)
    assert str(error.value).startswith(f"{bad}: model metadata {key}")


def test_malformed_metadata_is_one_line_from_the_cli(exported_model, folder, tmp_path):
    bad = model_with_metadata(exported_model / "model.onnx", tmp_path / "bad.onnx",
                              lambda p: p.update({OPEN_SET_KEY: '{"rule": "max_logit", "threshold": "high"}'}))
    result = run_cli(folder, "--model", bad)
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "bad.onnx: model metadata qd.open_set threshold must be a finite number" in result.stderr
