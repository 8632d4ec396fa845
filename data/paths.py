"""The artifact layout: where data comes from and every command writes by default, and the file
names (docs/contracts.md). Plain constants only: every command's --help reads them."""

from __future__ import annotations

import os
from pathlib import Path

# Environment variables that change a default (shown as [env var: ...] in each command's help).
ARTIFACTS_ENV = "QD_ARTIFACTS"     # root of the default data, runs, exports and eval folders
SOURCE_ENV = "QD_DATA_SOURCE"      # where qd-data fetch gets bitmap files
ORT_WEB_DIST_ENV = "QD_ORT_WEB_DIST"  # onnxruntime-web's dist/ folder for qd-demo

DEFAULT_SOURCE = "https://storage.googleapis.com/quickdraw_dataset/full/numpy_bitmap"
DEFAULT_TIMEOUT = 30.0  # seconds to wait on the network
DEFAULT_RETRIES = 3     # further attempts per file after a network failure (each one resumes)


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
