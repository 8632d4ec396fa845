"""Where data comes from and outputs go by default (docs: notes/contracts.md, "Artifacts layout").

Plain constants only: every command's --help reads them."""

from __future__ import annotations

import os
from pathlib import Path

# Environment variables that change a default (shown as [env var: ...] in each command's help).
ARTIFACTS_ENV = "QD_ARTIFACTS"     # root of the default data, runs, exports and eval folders
SOURCE_ENV = "QD_DATA_SOURCE"      # where qd-data fetch gets bitmap files
ORT_WEB_DIST_ENV = "QD_ORT_WEB_DIST"  # onnxruntime-web's dist/ folder for qd-demo

DEFAULT_SOURCE = "https://storage.googleapis.com/quickdraw_dataset/full/numpy_bitmap"
DEFAULT_TIMEOUT = 30.0  # seconds to wait on the network


def artifacts_root() -> Path:
    """$QD_ARTIFACTS, else ./artifacts relative to the current directory."""
    return Path(os.environ.get(ARTIFACTS_ENV) or "artifacts")


def default_data_dir() -> Path:
    """Where `qd-data fetch` puts bitmap files and training reads them: <artifacts>/data."""
    return artifacts_root() / "data"
