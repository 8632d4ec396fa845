"""Minimal onnxruntime access for qd-eval.

Temporary: replaced by qd.infer's classifier as soon as that lands (issue 5 splits
the onnxruntime path between qd-infer and qd-eval; there must be only one).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qd.data.errors import QDError

INPUT = "image"
PROBABILITIES = "probabilities"


def open_session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise QDError(f"{path}: not a loadable ONNX model ({first[:160]})") from None


def read_metadata(path: Path) -> dict:
    return dict(open_session(path).get_modelmeta().custom_metadata_map)


class OnnxClassifier:
    """float32 (B, 1, 28, 28) -> probabilities (B, C) with one onnxruntime session."""

    def __init__(self, path: Path):
        self.path = path
        self.session = open_session(path)
        outputs = [o.name for o in self.session.get_outputs()]
        if PROBABILITIES not in outputs:
            raise QDError(f"{path}: model has no {PROBABILITIES!r} output (outputs: {', '.join(outputs)})")

    def probabilities(self, inputs: np.ndarray) -> np.ndarray:
        return self.session.run([PROBABILITIES], {INPUT: inputs})[0]
