"""The Core ML package: what Linux can check (spec) and, on macOS only, predictions vs torch."""

import json
import platform

import numpy as np
import pytest
import torch

from qd.export.coreml import import_coremltools
from qd.files import commit_dir, temp_path_for
from qd.train.checkpoint import load_checkpoint, model_from_checkpoint

ct = import_coremltools()


@pytest.fixture(scope="module")
def package(coreml_report):
    return coreml_report.out_dir / "model.mlpackage"


@pytest.fixture(scope="module")
def spec(package):
    return ct.utils.load_spec(str(package))


def test_package_is_an_ios16_ml_program_classifier(spec, trained_checkpoint):
    assert spec.WhichOneof("Type") == "mlProgram" and spec.specificationVersion >= 7
    (inp,) = spec.description.input
    assert inp.name == "image"
    assert (inp.type.imageType.width, inp.type.imageType.height) == (28, 28)
    assert inp.type.imageType.colorSpace == ct.proto.FeatureTypes_pb2.ImageFeatureType.GRAYSCALE
    assert [o.name for o in spec.description.output] == ["classLabel", "classLabel_probs", "logits"]
    assert spec.description.predictedProbabilitiesName == "classLabel_probs"
    main = spec.mlProgram.functions["main"]
    ops = main.block_specializations[main.opset].operations
    (classify,) = [op for op in ops if op.type == "classify"]
    values = classify.inputs["classes"].arguments[0].value.immediateValue.list.values
    labels = [v.immediateValue.tensor.strings.values[0] for v in values]
    assert labels == load_checkpoint(trained_checkpoint)["classes"]
    (scale_mul,) = [op for op in ops if op.type == "mul" and op.inputs["x"].arguments[0].name == "image"]
    assert scale_mul is not None  # the 1/255 input scaling lives in the program


def test_package_metadata(spec, trained_checkpoint):
    meta = spec.description.metadata
    assert meta.author == "quickdraw-edge" and "CC BY 4.0" in meta.license
    assert "white ink on black" in meta.shortDescription
    user = dict(meta.userDefined)
    checkpoint = load_checkpoint(trained_checkpoint)
    assert json.loads(user["qd.labels"]) == checkpoint["classes"]
    assert json.loads(user["qd.preprocessing"]) == checkpoint["preprocessing"]
    assert user["qd.source_checkpoint"] == trained_checkpoint.name
    assert json.loads(user["qd.open_set"])["rule"] == "max_logit" and json.loads(user["qd.temperature"]) > 0
    assert [o.name for o in spec.description.output] == ["classLabel", "classLabel_probs", "logits"]


def test_report_lists_each_linux_check_and_the_macos_skip(coreml_report):
    (result,) = coreml_report.results
    names = [c.name for c in result.checks]
    assert names[:8] == ["reload", "ML Program, iOS 16+", "input", "outputs", "class labels", "input scaling",
                         "softmax head", "metadata"]
    if platform.system() != "Darwin":
        assert result.checks[-1].values == {"skipped": "needs macOS"}
    assert all(c.passed for c in result.checks)
    assert not list(coreml_report.out_dir.glob(".*"))


@pytest.mark.skipif(platform.system() != "Darwin",
                    reason="Core ML predictions need macOS: coremltools cannot run models on Linux")
def test_predictions_match_torch_on_macos(package, trained_checkpoint):
    from PIL import Image

    checkpoint = load_checkpoint(trained_checkpoint)
    model = ct.models.MLModel(str(package), compute_units=ct.ComputeUnit.CPU_ONLY)
    rng = np.random.default_rng(0)
    bitmaps = np.where(rng.random((16, 28, 28)) < 0.15, 255, 0).astype(np.uint8)
    temperature = json.loads(model.user_defined_metadata["qd.temperature"])
    with torch.inference_mode():
        x = torch.from_numpy(bitmaps[:, None].astype(np.float32) / 255.0)
        logits = model_from_checkpoint(checkpoint)(x)
        ref = torch.softmax(logits / temperature, 1).numpy()
    for bitmap, expected, expected_logits in zip(bitmaps, ref, logits.numpy()):
        out = model.predict({"image": Image.fromarray(bitmap)})
        got = np.array([out["classLabel_probs"][name] for name in checkpoint["classes"]])
        assert np.abs(got - expected).max() <= 1e-4
        assert np.abs(np.asarray(out["logits"]).reshape(-1) - expected_logits).max() <= 1e-3


def test_directory_commit_replaces_a_previous_package(tmp_path):
    final = tmp_path / "model.mlpackage"
    for version in ("old", "new"):
        tmp = temp_path_for(final, directory=True)
        assert tmp.name.endswith(".mlpackage") and tmp.parent == tmp_path
        (tmp / "Manifest.json").write_text(version)
        commit_dir(tmp, final)
        assert (final / "Manifest.json").read_text() == version
    assert [p.name for p in tmp_path.iterdir()] == ["model.mlpackage"]


def test_macos_prediction_check_plumbing_with_a_stand_in_model(trained_checkpoint, exported_model, tmp_path, monkeypatch):
    """The Mac-only comparison code, run on Linux against a stand-in for Core ML's MLModel that
    answers with the exported ONNX model (a different runtime, like Core ML would be): recovers
    the bitmaps from the inputs, matches labels by name, compares with torch."""
    import onnxruntime as ort

    from qd.export import coreml
    from qd.export.checkpoint_source import ExportContext, load_source

    source = load_source(trained_checkpoint)
    session = ort.InferenceSession(str(exported_model / "model.onnx"), providers=["CPUExecutionProvider"])

    class StandIn:
        def __init__(self, path, compute_units=None):
            self.path = path

        def predict(self, features):
            pixels = np.asarray(features["image"], dtype=np.float32)[None, None] / 255.0
            probs = session.run(["probabilities"], {"image": pixels})[0][0]
            return {"classLabel_probs": {name: float(p) for name, p in reversed(list(zip(source.classes, probs)))}}

    monkeypatch.setattr(ct.models, "MLModel", StandIn)
    ctx = ExportContext(source=source, out_dir=tmp_path)
    (check,) = coreml.check_predictions(ctx, tmp_path / "model.mlpackage")
    assert check.passed, check.detail
    assert check.values["top1_disagreements"] == 0 and check.values["max_abs_prob_diff"] <= 1e-4
