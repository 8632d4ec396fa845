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


# ----------------------------------------------------------------------------- hostile graphs

# Text a hostile model puts in its node names: screen clearing, an OSC 8 link, a forged error line,
# a C1 control and a bidi override.
HOSTILE_TEXT = "x\x1b[2J\x1b]8;;http://evil.example\x07link\x1b]8;;\x07\n error: forged line\r\x9b\u202e"


def graph_model(path: Path, nodes: list, initializers: list = (), labels: list[str] = ("a", "b")) -> Path:
    """image (batch, 1, 28, 28) -> `nodes` -> "flat" (batch, 784) -> Gemm -> Softmax, with qd.* metadata:
    a classifier any qd tool opens, around whatever graph a test needs."""
    inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 28, 28])]
    return _save_classifier(path, list(labels), nodes, inputs, [], None, 0, {}, list(initializers))


def failing_at_run_model(path: Path, name: str = HOSTILE_TEXT) -> Path:
    """Loads, but every run fails in a node called `name` (a Reshape to rows of 5 of 784 pixels)."""
    shapes = [numpy_helper.from_array(np.asarray(s, np.int64), f"shape{i}") for i, s in enumerate(([-1, 5], [-1, 784]))]
    nodes = [helper.make_node("Flatten", ["image"], ["f"]),
             helper.make_node("Reshape", ["f", "shape0"], ["fives"], name=name),
             helper.make_node("Reshape", ["fives", "shape1"], ["flat"])]
    return graph_model(path, nodes, shapes)


def failing_at_load_model(path: Path, name: str = HOSTILE_TEXT) -> Path:
    """onnxruntime refuses it as it loads: a node called `name` adds an int64 tensor to a float one."""
    ints = numpy_helper.from_array(np.zeros(784, np.int64), "ints")
    nodes = [helper.make_node("Flatten", ["image"], ["f"]), helper.make_node("Add", ["f", "ints"], ["flat"], name=name)]
    return graph_model(path, nodes, [ints])


def loop_model(path: Path, trips: int = 2**60) -> Path:
    """A Loop of `trips` iterations (an identity body) between the input and the head."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond"], ["cond_out"]), helper.make_node("Identity", ["v"], ["v_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None)])
    constants = [numpy_helper.from_array(np.asarray(trips, np.int64), "trips"),
                 numpy_helper.from_array(np.asarray(True), "true")]
    nodes = [helper.make_node("Flatten", ["image"], ["f"]), helper.make_node("Loop", ["trips", "true", "f"], ["flat"], body=body)]
    return graph_model(path, nodes, constants)


def slow_model(path: Path, layers: int) -> Path:
    """`layers` (784, 784) MatMuls in a row, sharing one weight: minutes a batch of thousands, every
    operator one qd-export writes."""
    weight = numpy_helper.from_array(np.eye(784, dtype=np.float32), "eye")
    nodes = [helper.make_node("Flatten", ["image"], ["x0"])]
    nodes += [helper.make_node("MatMul", [f"x{i}", "eye"], [f"x{i + 1}" if i + 1 < layers else "flat"])
              for i in range(layers)]
    return graph_model(path, nodes, [weight])


def greedy_model(path: Path, elements: int) -> Path:
    """One drawing expanded to `elements` float32 values (an Expand by a constant shape), then averaged."""
    shape = numpy_helper.from_array(np.asarray([elements // 784, 1, 28, 28], np.int64), "huge")
    row = numpy_helper.from_array(np.asarray([1, 784], np.int64), "row")
    nodes = [helper.make_node("Expand", ["image", "huge"], ["big"]),
             helper.make_node("ReduceMean", ["big"], ["mean"], axes=[0], keepdims=0),
             helper.make_node("Reshape", ["mean", "row"], ["flat"])]
    return graph_model(path, nodes, [shape, row])
