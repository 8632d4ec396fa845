"""Shared test set-up. Fixtures live in one module per stage, loaded here."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("QD_SHARED", REPO.parent / "shared")) / "quickdraw"

pytest_plugins = ["fixtures_data", "fixtures_train", "fixtures_export", "fixtures_demo"]


@pytest.fixture(scope="session")
def shared_bitmaps() -> Path:
    path = SHARED / "bitmaps"
    if not path.is_dir():
        pytest.fail(f"real Quick, Draw! bitmaps not found at {path} (set QD_SHARED)")
    return path


@pytest.fixture(scope="session")
def shared_strokes() -> Path:
    path = SHARED / "strokes"
    if not path.is_dir():
        pytest.fail(f"Quick, Draw! strokes not found at {path} (set QD_SHARED)")
    return path
