"""qd-export's ONNX and int8 ONNX outputs, checked independently of the exporter's own validation."""

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from qd.data.bitmaps import BitmapDataset, SplitSpec
from qd.data.contract import DEFAULT_KEPT, bitmaps_to_input
from qd.export.canvas import CANVAS_INPUT_SHAPE
from qd.export.onnx_export import check_contract
from qd.train.checkpoint import load_checkpoint, model_from_checkpoint


def _metadata(path):
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def _test_split(checkpoint, split="test"):
    data = checkpoint["data"]
    ds = BitmapDataset(data["dir"], data["categories"], data["max_per_category"])
    idx = ds.split_indices(SplitSpec.from_dict(checkpoint["split"]))[split]
    x, y = ds.take(idx)
    return bitmaps_to_input(x, checkpoint["preprocessing"]), y


def _temperature(path) -> float:
    return json.loads(_metadata(path)["qd.temperature"])


@pytest.fixture(scope="module")
def checkpoint(trained_checkpoint):
    return load_checkpoint(trained_checkpoint)


def test_onnx_io_contract_and_dynamic_batch(exported_model):
    model = onnx.load(str(exported_model / "model.onnx"))
    (inp,) = model.graph.input
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert inp.name == "image" and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert dims == ["batch", 1, 28, 28]
    assert [o.name for o in model.graph.output] == ["probabilities", "logits"]
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 18
    session = ort.InferenceSession(str(exported_model / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 3, 130):
        probs, logits = session.run(None, {"image": np.zeros((batch, 1, 28, 28), np.float32)})
        assert probs.shape == logits.shape and probs.shape[0] == batch
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_contract_check_names_each_difference(exported_model):
    """The one I/O contract check (both the image and the canvas formats use it) passes the real model and
    names the input, its shape, the outputs and the metadata keys that differ."""
    path = exported_model / "model.onnx"
    meta = _metadata(path)
    ok = check_contract(path, meta)
    assert ok.passed and ok.detail == "image[batch,1,28,28] → probabilities, logits; metadata complete"
    as_canvas = check_contract(path, {**meta, "qd.canvas": "{}"}, "canvas", CANVAS_INPUT_SHAPE,
                               ("probabilities", "logits", "bitmap"))
    assert not as_canvas.passed and as_canvas.detail == (
        "inputs are ['image'], expected ['canvas']; outputs are ['probabilities', 'logits'], expected "
        "['probabilities', 'logits', 'bitmap']; metadata differs at qd.canvas")
    wrong_size = check_contract(path, meta, input_shape=("batch", 1, 32, 32))
    assert wrong_size.detail == "input shape is ['batch', 1, 28, 28], expected [batch, 1, 32, 32]"
    assert not check_contract(path, meta, input_shape=(1, 1, 28, 28)).passed  # the batch axis must be symbolic


def test_graph_carries_no_exporter_debug_records(exported_model):
    model = onnx.load(str(exported_model / "model.onnx"))
    assert not any(n.metadata_props or n.doc_string for n in model.graph.node)
    assert not any(v.metadata_props for v in (*model.graph.input, *model.graph.output))
    assert str(Path(__file__).resolve().parents[1]).encode() not in (exported_model / "model.onnx").read_bytes()
    assert model.producer_name == "quickdraw-edge"


def test_metadata_is_exactly_the_contract(exported_model, trained_checkpoint, checkpoint):
    meta = _metadata(exported_model / "model.onnx")
    assert set(meta) == {"qd.format", "qd.labels", "qd.preprocessing", "qd.arch", "qd.split", "qd.data",
                         "qd.source_sha256", "qd.version", "qd.license", "qd.precision", "qd.temperature",
                         "qd.open_set"}
    assert meta["qd.format"] == "qd-onnx-v1"
    assert json.loads(meta["qd.labels"]) == checkpoint["classes"]
    assert json.loads(meta["qd.preprocessing"]) == checkpoint["preprocessing"]
    assert json.loads(meta["qd.arch"]) == {"name": checkpoint["arch"]["name"], "kwargs": checkpoint["arch"]["kwargs"]}
    assert json.loads(meta["qd.split"]) == checkpoint["split"]
    assert json.loads(meta["qd.data"]) == {k: checkpoint["data"][k] for k in ("dir", "categories", "counts", "max_per_category")}
    assert meta["qd.source_sha256"] == hashlib.sha256(trained_checkpoint.read_bytes()).hexdigest()
    assert "CC BY 4.0" in meta["qd.license"] and meta["qd.precision"] == "fp32"
    int8 = _metadata(exported_model / "model.int8.onnx")
    assert int8.pop("qd.precision") == "int8"
    meta.pop("qd.precision")
    assert int8 == meta


def test_onnx_matches_torch_on_the_test_split(exported_model, checkpoint):
    x, y = _test_split(checkpoint)
    with torch.inference_mode():
        logits = model_from_checkpoint(checkpoint)(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(str(exported_model / "model.onnx"), providers=["CPUExecutionProvider"])
    probs, onnx_logits = session.run(None, {"image": x})
    np.testing.assert_allclose(onnx_logits, logits, atol=1e-4)
    temperature = _temperature(exported_model / "model.onnx")
    ref = torch.softmax(torch.from_numpy(logits) / temperature, 1).numpy()
    assert np.abs(probs - ref).max() <= 1e-4
    assert (probs.argmax(1) == ref.argmax(1)).all()
    assert (probs.argmax(1) == y).mean() == pytest.approx(checkpoint["test"]["top1"], abs=1e-6)


def test_temperature_and_open_set_threshold_are_fitted_on_the_validation_split(exported_model, checkpoint):
    """Refit by hand from torch's validation logits: the same temperature (lowest NLL) and a threshold
    on the largest logit that keeps DEFAULT_KEPT of the validation drawings."""
    x, y = _test_split(checkpoint, "val")
    with torch.inference_mode():
        logits = model_from_checkpoint(checkpoint)(torch.from_numpy(x)).double()
    meta = _metadata(exported_model / "model.onnx")
    temperature = json.loads(meta["qd.temperature"])
    nll = {t: torch.nn.functional.cross_entropy(logits / t, torch.from_numpy(y)).item()
           for t in (temperature * 0.9, temperature, temperature * 1.1)}
    assert nll[temperature] <= min(nll.values()) + 1e-9
    rule = json.loads(meta["qd.open_set"])
    assert rule["rule"] == "max_logit" and rule["kept"] == DEFAULT_KEPT
    kept = (logits.max(1).values.float().numpy() >= rule["threshold"]).mean()
    assert DEFAULT_KEPT <= kept <= DEFAULT_KEPT + 2 / len(y)
    assert rule["validation"]["drawings"] == len(y)
    card = json.loads((exported_model / "model.json").read_text())["confidence"]
    assert card["temperature"] == temperature and card["open_set"] == rule


def test_int8_is_smaller_and_as_accurate(exported_model, exported_int8_model, checkpoint, exported_report):
    x, y = _test_split(checkpoint)
    top1 = {}
    for name in ("model.onnx", "model.int8.onnx"):
        session = ort.InferenceSession(str(exported_model / name), providers=["CPUExecutionProvider"])
        top1[name] = (session.run(["probabilities"], {"image": x})[0].argmax(1) == y).mean()
    assert top1["model.onnx"] - top1["model.int8.onnx"] <= 0.01
    assert exported_int8_model.stat().st_size < 0.5 * (exported_model / "model.onnx").stat().st_size
    ops = {n.op_type for n in onnx.load(str(exported_int8_model)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    (int8,) = [r for r in exported_report.results if r.format.name == "onnx-int8"]
    reported = {c.name: c for c in int8.checks}
    assert reported["speed (batch 256, 1 thread)"].values["images_per_s_int8"] > 0
    assert reported["top-1 (test split)"].values["top1_int8"] == pytest.approx(top1["model.int8.onnx"])


def test_labels_and_card(exported_model, trained_checkpoint, checkpoint):
    assert (exported_model / "labels.txt").read_text().splitlines() == checkpoint["classes"]
    card = json.loads((exported_model / "model.json").read_text())
    assert card["classes"] == checkpoint["classes"]
    assert card["preprocessing"] == checkpoint["preprocessing"]
    assert card["source"]["test"]["top1"] == checkpoint["test"]["top1"]
    assert card["source"]["sha256"] == hashlib.sha256(trained_checkpoint.read_bytes()).hexdigest()
    assert set(card["files"]) == {"onnx", "onnx-int8", "onnx-canvas", "labels"}
    for entry in card["files"].values():
        assert entry["sha256"] == hashlib.sha256((exported_model / entry["file"]).read_bytes()).hexdigest()
    checks = card["files"]["onnx"]["validation"]
    assert [c["batch"] for c in checks if "batch" in c] == [1, 64]
    assert all(c["passed"] for c in checks)
    (open_set,) = [c for c in checks if c["check"] == "open set"]
    assert open_set["decisions_differ"] == 0 and 0 < open_set["test_flagged"] < 0.2
    assert not list(exported_model.glob(".*"))  # no temp files left behind
