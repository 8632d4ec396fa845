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

import math
import os
import pickle
from pathlib import Path

import torch

from qd.data.errors import QDError
from qd.data.files import atomic_target
from qd.data.split import SplitSpec

from .models import build_model

FORMAT = "qd-checkpoint-v1"
REQUIRED_KEYS = ("format", "classes", "arch", "preprocessing", "split", "state_dict")


def save_checkpoint(payload: dict, path: str | os.PathLike) -> Path:
    """Write atomically: a temp file in the same folder, fsync, then rename."""
    with atomic_target(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


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
        raise QDError(f"{path}: refused: not loadable with weights_only=True ({_first_line(exc)})") from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise QDError(f"{path}: not a checkpoint ({_first_line(exc)})") from None
    except Exception as exc:  # junk bytes can make torch's loader raise anything (KeyError, ...)
        raise QDError(f"{path}: not a checkpoint (unreadable: {type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise QDError(f"{path}: not a quickdraw-edge checkpoint (expected format {FORMAT!r})")
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise QDError(f"{path}: checkpoint lacks {', '.join(missing)}")
    check_fields(path, payload)
    return payload


def check_fields(path: Path, payload: dict) -> None:
    """The fields later stages rely on, with the right types: a damaged checkpoint fails here, clearly."""
    def bad(field: str, why: str) -> QDError:
        return QDError(f"{path}: damaged checkpoint: {field} {why}")

    classes = payload["classes"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes):
        raise bad("classes", "is not a non-empty list of names")
    if len(set(classes)) != len(classes):
        raise bad("classes", "has duplicates")
    arch = payload["arch"]
    if not isinstance(arch, dict) or not isinstance(arch.get("name"), str) or not isinstance(arch.get("kwargs", {}), dict):
        raise bad("arch", "is not {name, kwargs}")
    prep = payload["preprocessing"]
    numbers = ("scale", "mean", "std")
    if (not isinstance(prep, dict) or prep.get("input_size") != 28
            or not all(isinstance(prep.get(k, 0.0), (int, float)) and math.isfinite(prep.get(k, 0.0)) for k in numbers)
            or not prep.get("scale") or not prep.get("std", 1.0)):
        raise bad("preprocessing", "is not a 28x28 spec with finite, non-zero scale and std")
    if not isinstance(payload["split"], dict):
        raise bad("split", "is not a dict")
    try:
        SplitSpec.from_dict(payload["split"])
    except (TypeError, ValueError, QDError) as exc:
        raise bad("split", f"is invalid ({_first_line(exc)[:80]})") from None
    if not isinstance(payload.get("data", {}) or {}, dict):
        raise bad("data", "is not a dict")
    state = payload["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise bad("state_dict", "is not a dict of tensors")


def model_from_checkpoint(payload: dict) -> torch.nn.Module:
    """Rebuild the network described by a loaded checkpoint, in eval mode."""
    arch = payload["arch"]
    try:
        model = build_model(arch["name"], len(payload["classes"]), **arch.get("kwargs", {}))
        model.load_state_dict(payload["state_dict"])
    except QDError:
        raise
    except Exception as exc:  # wrong kwargs types, shapes that do not fit, ...
        raise QDError(f"checkpoint weights do not fit architecture {arch['name']!r}: {_first_line(exc)}") from None
    return model.eval()


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:160] if lines else type(exc).__name__
