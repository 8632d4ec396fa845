"""A tiny, real ONNX classifier for qd-eval's unit tests, built in milliseconds.

A linear template matcher: logits = x @ W + b where W holds each class's mean
training drawing (centred), so it is right well above chance on real Quick, Draw!
data without training a CNN. It carries the same metadata qd-export writes, which is
what qd-eval reads. End-to-end tests use the export stage's real model instead.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qd.data.bitmaps import BitmapDataset, SplitSpec
from qd.data.contract import DEFAULT_PREPROCESSING, bitmaps_to_input


def template_weights(dataset: BitmapDataset, spec: SplitSpec) -> tuple[np.ndarray, np.ndarray]:
    train = dataset.split_indices(spec)["train"]
    bitmaps, labels = dataset.take(train)
    x = bitmaps_to_input(bitmaps).reshape(len(bitmaps), -1)
    means = np.stack([x[labels == c].mean(axis=0) for c in range(dataset.num_classes)])
    # nearest class mean: -|x - m|^2 / t = (2 x.m - |m|^2) / t + (a term equal for every class)
    temperature = 8.0
    weights = 2.0 * means.T / temperature
    bias = -(means**2).sum(axis=1) / temperature
    return weights.astype(np.float32), bias.astype(np.float32)


def write_linear_model(path: Path, weights: np.ndarray, bias: np.ndarray, metadata: dict[str, str]) -> Path:
    classes = weights.shape[1]
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["image"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "W", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "linear",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", classes]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        initializer=[numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def make_export(folder: Path, data_dir: Path, categories: list[str], max_per_category: int = 200,
                spec: SplitSpec = SplitSpec(), with_labels: bool = True) -> Path:
    """An export folder with model.onnx (and metadata like qd-export's) trained on `data_dir`."""
    dataset = BitmapDataset(data_dir, categories, max_per_category)
    weights, bias = template_weights(dataset, spec)
    metadata = {
        "qd.format": "qd-onnx-v1",
        "qd.preprocessing": json.dumps(DEFAULT_PREPROCESSING),
        "qd.split": json.dumps(spec.to_dict()),
        "qd.data": json.dumps({"dir": str(Path(data_dir).resolve()), **dataset.fingerprint()}),
        "qd.precision": "fp32",
    }
    if with_labels:
        metadata["qd.labels"] = json.dumps(dataset.classes)
    write_linear_model(folder / "model.onnx", weights, bias, metadata)
    return folder
