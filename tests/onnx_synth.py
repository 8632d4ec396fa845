"""A tiny model in qd-export's ONNX contract, built with onnx.helper (no torch, no training):
for tests that need a model to exist (hostile labels or metadata, output writers) but not to be good."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qd.data.contract import DEFAULT_PREPROCESSING


def tiny_model(path: Path, labels: list[str], preprocessing: dict | str | None = None, seed: int = 0,
               **metadata: str) -> Path:
    """image (batch, 1, 28, 28) -> Flatten -> Gemm -> (probabilities, logits), qd.* metadata set.

    `preprocessing` may be a dict (JSON-encoded here) or the raw metadata string itself.
    Extra keyword arguments are more metadata (qd_source_sha256="..." for `qd.source_sha256`);
    the open-set rule given by default flags no drawing (its threshold is far below any logit).
    """
    nodes = [helper.make_node("Flatten", ["image"], ["flat"])]
    inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 28, 28])]
    return _save_classifier(path, labels, nodes, inputs, [], preprocessing, seed, metadata)


def tiny_canvas_model(path: Path, labels: list[str], seed: int = 0, **metadata: str) -> Path:
    """canvas (1, 1, H, W) -> Resize to 28x28 (the bitmap output) -> Flatten -> Gemm -> (probabilities, logits):
    the canvas models' interface (docs/canvas.md) around a trivial network, with qd.* metadata set."""
    sizes = numpy_helper.from_array(np.asarray([1, 1, 28, 28], np.int64), "sizes")
    nodes = [helper.make_node("Resize", ["canvas", "", "", "sizes"], ["bitmap"], mode="linear"),
             helper.make_node("Flatten", ["bitmap"], ["flat"])]
    inputs = [helper.make_tensor_value_info("canvas", TensorProto.FLOAT, [1, 1, "height", "width"])]
    bitmap = [helper.make_tensor_value_info("bitmap", TensorProto.FLOAT, [1, 1, 28, 28])]
    canvas_meta = {"qd_canvas": json.dumps({"input": "canvas", "min_side": 28, "max_side": 2048}), **metadata}
    return _save_classifier(path, labels, nodes, inputs, bitmap, None, seed, canvas_meta, [sizes])


def _save_classifier(path, labels, nodes, inputs, extra_outputs, preprocessing, seed, metadata, initializers=()):
    """`nodes` end in "flat" (batch, 784): Gemm and Softmax are added, the qd.* metadata set, the model saved."""
    rng = np.random.default_rng(seed)
    weights = numpy_helper.from_array(rng.normal(0, 0.05, (784, len(labels))).astype(np.float32), "w")
    bias = numpy_helper.from_array(np.zeros(len(labels), np.float32), "b")
    nodes = [*nodes, helper.make_node("Gemm", ["flat", "w", "b"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)]
    graph = helper.make_graph(
        nodes, "tiny", inputs,
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", len(labels)]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(labels)]), *extra_outputs],
        [weights, bias, *initializers])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    spec = DEFAULT_PREPROCESSING if preprocessing is None else preprocessing
    meta = {"qd.format": "qd-onnx-v1", "qd.labels": json.dumps(labels),
            "qd.preprocessing": spec if isinstance(spec, str) else json.dumps(spec), "qd.precision": "fp32",
            "qd.temperature": "1.0", "qd.open_set": json.dumps({"rule": "max_logit", "threshold": -1e6, "kept": 0.95})}
    meta.update({key.replace("qd_", "qd.", 1): value for key, value in metadata.items()})
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path
