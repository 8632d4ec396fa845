"""The artifact layout: where every command writes by default, and the file names (docs/contracts.md)."""

from __future__ import annotations

import os
from pathlib import Path

ARTIFACTS_ENV = "QD_ARTIFACTS"


def artifacts_root() -> Path:
    """$QD_ARTIFACTS, else ./artifacts relative to the current directory."""
    return Path(os.environ.get(ARTIFACTS_ENV) or "artifacts")


def default_data_dir() -> Path:
    """Where `qd-data fetch` puts bitmap files and training reads them: <artifacts>/data."""
    return artifacts_root() / "data"


# File names inside a run folder (qd-train) and an export folder (qd-export).
BEST_CHECKPOINT, LAST_CHECKPOINT = "best.pt", "last.pt"
MODEL_ONNX = "model.onnx"
MODEL_INT8_ONNX = "model.int8.onnx"
MODEL_COREML = "model.mlpackage"
MODEL_CANVAS_ONNX = "model.canvas.onnx"
MODEL_CANVAS_COREML = "model.canvas.mlpackage"
MODEL_CARD = "model.json"
LABELS_FILE = "labels.txt"
INT8_PREPARED = "model.prep.onnx"  # int8's intermediate file, never left behind


def runs_dir() -> Path:
    """Where `qd-train` puts run folders: <artifacts>/runs."""
    return artifacts_root() / "runs"


def exports_dir() -> Path:
    """Where `qd-export` puts export folders: <artifacts>/exports."""
    return artifacts_root() / "exports"


def eval_dir() -> Path:
    """Where `qd-eval` puts reports: <artifacts>/eval."""
    return artifacts_root() / "eval"
