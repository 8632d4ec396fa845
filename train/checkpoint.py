"""Self-describing checkpoints: a state dict plus plain data only.

They load with `torch.load(..., weights_only=True)`, so a crafted file cannot run
code on unpickling. Every later stage reads classes, preprocessing and split from here.

Keys (format "qd-checkpoint-v1"):
  format, classes, arch {name, kwargs}, preprocessing, split {scheme, fractions, seed},
  data {categories, counts, max_per_category, dir}, hparams, metrics [per epoch],
  best {epoch, val_loss, ...}, test {...}, versions {torch, quickdraw-edge}, state_dict,
  and in last.pt also train_state {optimizer, scheduler, epoch, rng, ...}.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch

from qd.data.errors import QDError

from .models import build_model

FORMAT = "qd-checkpoint-v1"
REQUIRED_KEYS = ("format", "classes", "arch", "preprocessing", "split", "state_dict")


def save_checkpoint(payload: dict, path: str | os.PathLike) -> Path:
    """Write atomically: a temp file in the same folder, fsync, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> dict:
    """Load and check a checkpoint; refuse anything that would need pickle."""
    path = Path(path)
    if not path.exists():
        raise QDError(f"{path}: checkpoint not found")
    if path.is_dir():
        raise QDError(f"{path}: is a directory, expected a checkpoint file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unpickling refused"
        raise QDError(f"{path}: refused: not loadable with weights_only=True ({first[:160]})") from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise QDError(f"{path}: not a checkpoint ({first[:160]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise QDError(f"{path}: not a quickdraw-edge checkpoint (expected format {FORMAT!r})")
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise QDError(f"{path}: checkpoint lacks {', '.join(missing)}")
    return payload


def model_from_checkpoint(payload: dict) -> torch.nn.Module:
    """Rebuild the network described by a loaded checkpoint, in eval mode."""
    arch = payload["arch"]
    model = build_model(arch["name"], len(payload["classes"]), **arch.get("kwargs", {}))
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise QDError(f"checkpoint weights do not fit architecture {arch['name']!r}: {str(exc).splitlines()[0][:160]}") from None
    return model.eval()
