"""A canvas model (qd-export's onnx-canvas, model.canvas.onnx), run with onnxruntime.

The contract (names in qd.data.contract, docs/canvas.md):
  input  "canvas"         float32 (1, 1, H, W), grey levels 0-255, dark ink on a light
                          background (light ink on dark is detected too), H and W from
                          MIN_CANVAS_SIDE to MAX_CANVAS_SIDE
  output "probabilities"  (1, C) calibrated; all zero for a blank canvas
         "logits"         (1, C) raw; all BLANK_LOGIT for a blank canvas (below any
                          open-set threshold: a blank canvas reads as unknown)
         "bitmap"         (1, 1, 28, 28) 0-255, ink high: what the network saw
  metadata: every model's qd.* entries plus CANVAS_KEY (the limits above, as JSON).

The preprocessing inside is qd.data.images without step 5 (uneven lighting): a clean
canvas needs none; photos and scans belong to qd-infer's full preprocessing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qd.command import QDError
from qd.data.contract import (BITMAP, BLANK_LOGIT, CANVAS_INPUT, CANVAS_OUTPUTS, MAX_CANVAS_SIDE,
                              META_CANVAS as CANVAS_KEY, MIN_CANVAS_SIDE, MODEL_CANVAS_ONNX as CANVAS_FILE)

from .model import _open_session, _parse_labels, parse_precision
from .openset import PROBABILITIES, parse_open_set, parse_temperature

__all__ = ["BITMAP", "BLANK_LOGIT", "CANVAS_FILE", "CANVAS_INPUT", "CANVAS_OUTPUTS", "CANVAS_KEY", "CanvasModel",
           "canvas_metadata", "check_canvas"]


def canvas_metadata() -> dict[str, str]:
    """The CANVAS_KEY entry every canvas model carries."""
    return {CANVAS_KEY: json.dumps({"input": CANVAS_INPUT, "min_side": MIN_CANVAS_SIDE, "max_side": MAX_CANVAS_SIDE,
                                    "values": "0-255 grey levels, dark ink on a light background",
                                    "blank": {"probabilities": 0.0, "logits": BLANK_LOGIT}})}


def check_canvas(canvas: np.ndarray, name: str = "canvas") -> np.ndarray:
    """A (H, W) or (1, 1, H, W) grey canvas -> float32 (1, 1, H, W); a wrong one is refused in one line."""
    array = np.asarray(canvas)
    if array.ndim == 4 and array.shape[:2] == (1, 1):
        array = array[0, 0]
    if array.ndim != 2:
        raise QDError(f"{name}: expected a grey canvas (H, W) or (1, 1, H, W), got shape {array.shape}")
    height, width = array.shape
    if min(height, width) < MIN_CANVAS_SIDE or max(height, width) > MAX_CANVAS_SIDE:
        raise QDError(f"{name}: canvas is {width}x{height} px; canvas models take {MIN_CANVAS_SIDE} to "
                      f"{MAX_CANVAS_SIDE} px a side (scale it first)")
    if array.dtype.kind not in "uif" or (array.dtype.kind == "f" and not np.isfinite(array).all()):
        raise QDError(f"{name}: canvas must hold finite numbers (grey levels 0-255), got {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.float32)[None, None]


@dataclass
class CanvasAnswer:
    probabilities: np.ndarray   # (C,), all zero when blank
    unknown: bool | None        # the open-set rule's answer (None: the model has no rule)
    blank: bool                 # no ink found on the canvas
    bitmap: np.ndarray          # (28, 28) uint8, ink high: what the network saw


class CanvasModel:
    """model.canvas.onnx with its labels and open-set rule from metadata."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        self.path = Path(path)
        if self.path.is_dir():
            self.path = self.path / CANVAS_FILE
        if not self.path.is_file():
            raise QDError(f"{self.path}: canvas model file does not exist")
        self.session = _open_session(self.path, threads)
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        self.labels = _parse_labels(self.path, self.metadata)
        self.precision = parse_precision(self.metadata)
        self.temperature = parse_temperature(self.path, self.metadata)
        self.open_set = parse_open_set(self.path, self.metadata)
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != [CANVAS_INPUT] or outputs != list(CANVAS_OUTPUTS):
            raise QDError(f"{self.path}: not a canvas model (expected {CANVAS_INPUT} -> {', '.join(CANVAS_OUTPUTS)}, "
                          f"found {', '.join(inputs)} -> {', '.join(outputs)})")

    def outputs(self, canvas: np.ndarray, name: str = "canvas") -> dict[str, np.ndarray]:
        return dict(zip(CANVAS_OUTPUTS, self.session.run(list(CANVAS_OUTPUTS), {CANVAS_INPUT: check_canvas(canvas, name)})))

    def classify(self, canvas: np.ndarray, name: str = "canvas") -> CanvasAnswer:
        out = self.outputs(canvas, name)
        probs = out[PROBABILITIES][0]
        blank = not probs.any()
        unknown = None if self.open_set is None else bool(self.open_set.unknown(out)[0])
        return CanvasAnswer(probs, unknown, blank, out[BITMAP][0, 0].astype(np.uint8))
