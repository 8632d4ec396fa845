"""Where outputs go by default (docs: notes/contracts.md, "Artifacts layout")."""

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
