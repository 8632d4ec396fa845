"""An export folder is read as one set: a folder that mixes two exports (a model of one checkpoint
beside files of another, a model.json that does not list a file or lists another checksum) is
refused or skipped with one line that says so, never compared silently (qd.evaluate.backends,
qd-eval's backends).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onnx_synth import tiny_model
from qd.command import QDError
from qd.files import sha256_path

def _card(folder: Path, source_sha: str, files: dict[str, str]) -> None:
    """model.json as qd-export writes it (the parts readers check)."""
    entries = {name: {"file": file, "sha256": sha256_path(folder / file)} for name, file in files.items()}
    (folder / "model.json").write_text(json.dumps({"format": "qd-export-card-v1", "source": {"sha256": source_sha},
                                                   "files": entries}))



@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(onnx_from=st.sampled_from("AB"), int8_from=st.sampled_from("AB"), card_from=st.sampled_from("AB"),
       card=st.sampled_from(["none", "lists both", "lists only onnx", "int8 replaced after"]))
def test_readers_detect_a_folder_that_mixes_two_exports(tmp_path_factory, onnx_from, int8_from, card_from, card):
    from qd.evaluate.backends import load_model_info, open_onnx_int8

    sha = {"A": "a" * 64, "B": "b" * 64}
    folder = tmp_path_factory.mktemp("set")
    labels = ["apple", "circle"]
    tiny_model(folder / "model.onnx", labels, seed=1, qd_source_sha256=sha[onnx_from])
    tiny_model(folder / "model.int8.onnx", labels, seed=2, qd_source_sha256=sha[int8_from], qd_precision="int8")
    if card == "lists both" or card == "int8 replaced after":
        _card(folder, sha[card_from], {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx"})
    elif card == "lists only onnx":
        _card(folder, sha[card_from], {"onnx": "model.onnx"})
    if card == "int8 replaced after":
        tiny_model(folder / "model.int8.onnx", labels, seed=3, qd_source_sha256=sha[int8_from], qd_precision="int8")
    reference_ok = card == "none" or card_from == onnx_from
    int8_ok = int8_from == onnx_from and card in ("none", "lists both")
    try:
        info = load_model_info(folder)
    except QDError as exc:
        assert not reference_ok and "mixes two exports" in str(exc)
        return
    assert reference_ok
    try:
        open_onnx_int8(info, None)
    except QDError as exc:
        assert not int8_ok and str(exc).startswith(str(folder / "model.int8.onnx"))
        assert "mixes two exports" in str(exc) and "\n" not in str(exc)
    else:
        assert int8_ok



def test_qd_eval_says_so_instead_of_comparing_a_mixed_folder(tmp_path):
    from fixtures_data import invoke_cli
    from qd.evaluate.cli import main

    labels = ["a", "b"]
    tiny_model(tmp_path / "run" / "model.onnx", labels, qd_source_sha256="a" * 64)
    tiny_model(tmp_path / "run" / "model.int8.onnx", labels, qd_source_sha256="b" * 64, qd_precision="int8")
    data = tmp_path / "data"
    for label in labels:
        (data / label).mkdir(parents=True)
        np.save(data / label / "rows.npy", np.random.default_rng(0).integers(0, 255, (4, 784), dtype=np.uint8))
    result = invoke_cli(main, "--model", tmp_path / "run", "--data", data, "--backend", "onnx,onnx-int8",
                        "--no-speed", "--out", tmp_path / "eval")
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    int8 = next(b for b in report["backends"] if b["name"] == "onnx-int8")
    assert int8["status"] == "skipped" and "exported from another checkpoint" in int8["reason"]
    assert "onnx-int8 skipped:" in result.stdout
