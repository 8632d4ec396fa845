"""Self-describing checkpoints: a state dict plus plain data only; and starting a run from one.

They load with `torch.load(..., weights_only=True)`, so a crafted file cannot run
code on unpickling. Every later stage reads classes, preprocessing and split from here.

Keys (format "qd-checkpoint-v1"):
  format, classes, arch {name, kwargs}, preprocessing, split {scheme, fractions, seed},
  data {categories, counts, max_per_category, dir}, hparams, metrics [per epoch],
  best {epoch, val_loss, ...}, test {...}, versions {torch, quickdraw-edge}, state_dict,
  and in last.pt also train_state {optimizer, scheduler, epoch, rng, ...};
  parent {path, sha256, classes, class_mapping, kept, frozen_backbone} in a run started with --init-from.
  negatives {dir, categories, counts, splits {train, val, test}, sha256 {category: hex}} in a run trained
  with --negatives (qd.data.negatives.negatives_record).

`--init-from` (`load_parent`, `init_from`): every tensor but the output layer's is copied from the
parent. The output layer has one row per class: classes the parent knew keep their rows (found by
name), new classes keep the fresh initialisation. `--freeze-backbone` then trains only the output
layer (the rest stays in eval mode, so batch-norm statistics are kept too).
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from qd.command import QDError, first_line
from qd.data.bitmaps import SPLITS, SplitSpec, check_labels
from qd.data.contract import (CHECKPOINT_FORMAT, DEFAULT_PREPROCESSING, MAX_CHECKPOINT_BYTES, MAX_CHECKPOINT_ENTRIES,
                              MAX_NPY_ROWS, check_preprocessing)
from qd.files import atomic_target, open_regular, sha256_file

from .cli import MAX_EPOCHS, TrainConfig, short_repr
from .models import build_model, full_kwargs, head_name

REQUIRED_KEYS = ("format", "classes", "arch", "preprocessing", "split", "state_dict")


def save_checkpoint(payload: dict, path: str | os.PathLike) -> Path:
    """Write atomically: a temp file in the same folder, fsync, then rename.

    torch.save writes into memory first (checkpoints are a few MB): its own file writer turns
    a full disk into a RuntimeError, a plain write gives the OSError (ENOSPC) naming the file."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    try:
        with atomic_target(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(buffer.getbuffer())
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> dict:
    """Load and check a checkpoint; refuse anything that would need pickle.

    Only a regular file, only a torch zip archive, and only one whose directory promises at most
    MAX_CHECKPOINT_BYTES once unpacked: the sizes are read before a single tensor is."""
    path = Path(path)
    if not path.exists():
        raise QDError(f"{path}: checkpoint not found")
    if path.is_dir():
        raise QDError(f"{path}: is a directory, expected a checkpoint file")
    with open_regular(path) as f:
        _check_archive(path, f)
        f.seek(0)
        payload = _torch_load(path, f, map_location)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise QDError(f"{path}: not a quickdraw-edge checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise QDError(f"{path}: checkpoint lacks {', '.join(missing)}")
    check_fields(path, payload)
    return payload


def _check_archive(path: Path, f) -> None:
    """The zip directory, read before torch.load: how many entries, and how many bytes they unpack to."""
    try:
        with zipfile.ZipFile(f) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError) as exc:
        raise QDError(f"{path}: not a checkpoint (not a torch zip archive: {first_line(exc)})") from None
    unpacked = sum(e.file_size for e in entries)
    if len(entries) > MAX_CHECKPOINT_ENTRIES or unpacked > MAX_CHECKPOINT_BYTES:
        raise QDError(f"{path}: refused: {len(entries):,} entries unpacking to {unpacked:,} bytes; a checkpoint may "
                      f"hold at most {MAX_CHECKPOINT_ENTRIES:,} entries and {MAX_CHECKPOINT_BYTES:,} bytes")


def _torch_load(path: Path, f, map_location: str) -> object:
    try:
        return torch.load(f, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise QDError(f"{path}: refused: not loadable with weights_only=True ({first_line(exc)})") from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise QDError(f"{path}: not a checkpoint ({first_line(exc)})") from None
    except Exception as exc:  # junk bytes can make torch's loader raise anything (KeyError, ...)
        raise QDError(f"{path}: not a checkpoint (unreadable: {type(exc).__name__})") from None


def check_fields(path: Path, payload: dict) -> None:
    """The fields later stages rely on, with the right types and within their bounds (those of
    qd-train's options for hparams: TrainConfig checks them), and weights that fit the declared
    architecture: a damaged or tampered checkpoint fails here, with one line naming the file."""
    def bad(field: str, why: str) -> QDError:
        return QDError(f"{path}: damaged checkpoint: {field} {why}")

    try:
        check_labels(payload["classes"])
    except ValueError as exc:
        raise bad("classes", str(exc)) from None
    arch = payload["arch"]
    if not isinstance(arch, dict) or not isinstance(arch.get("name"), str) or not isinstance(arch.get("kwargs", {}), dict):
        raise bad("arch", "is not {name, kwargs}")
    try:
        check_preprocessing(payload["preprocessing"])
    except ValueError as exc:
        raise bad("preprocessing", f"is invalid ({exc})") from None
    if not isinstance(payload["split"], dict):
        raise bad("split", "is not a dict")
    try:
        split = SplitSpec.from_dict(payload["split"])
    except (TypeError, ValueError, QDError) as exc:
        raise bad("split", f"is invalid ({first_line(exc)[:80]})") from None
    if type(split.seed) is not int:
        raise bad("split", f"is invalid (seed {short_repr(split.seed)} is not a whole number)")
    _check_hparams(payload.get("hparams", {}), arch["name"], bad)
    _check_records(payload, bad)
    state = payload["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise bad("state_dict", "is not a dict of tensors")
    check_weights(path, payload)


def _check_hparams(hparams: object, arch_name: str, bad) -> None:
    """A checkpoint's hparams are a TrainConfig's fields: the config they describe is checked as one
    given on the command line would be (keys this version no longer has are ignored)."""
    if not isinstance(hparams, dict):
        raise bad("hparams", "is not a dict")
    if hparams:
        try:
            TrainConfig.from_hparams(hparams)
        except QDError as exc:
            raise bad("hparams", f"are invalid ({exc})") from None
        if hparams.get("arch") not in (None, arch_name):
            raise bad("hparams", f"name the architecture {short_repr(hparams['arch'])}, arch says {arch_name!r}")


def _number(value: object) -> bool:
    """A real number a report can format (NaN is one: the loss of an empty split)."""
    return type(value) is float or type(value) is int and abs(value) <= 2**53


def _check_records(payload: dict, bad) -> None:
    """What a run recorded and later runs, reports and cards read: metrics, best, test, data, negatives, parent,
    train_state."""
    metrics = payload.get("metrics", [])
    if not isinstance(metrics, list) or not all(isinstance(m, dict) and all(_number(v) for v in m.values())
                                                for m in metrics):
        raise bad("metrics", "are not a list of {name: number}")
    for name in ("best", "test"):
        record = payload.get(name) or {}
        if not isinstance(record, dict) or not all(_number(v) for v in record.values()):
            raise bad(name, "is not a {name: number} record")
    best = payload.get("best") or {}
    if best and not (type(best.get("epoch")) is int and 1 <= best["epoch"] <= MAX_EPOCHS
                     and all(k in best for k in ("val_loss", "val_top1", "val_top3"))):
        raise bad("best", "lacks its epoch or validation figures")
    data = payload.get("data", {}) or {}
    if not isinstance(data, dict):
        raise bad("data", "is not a dict")
    counts, categories, dir_ = data.get("counts"), data.get("categories"), data.get("dir")
    limit = data.get("max_per_category")
    if not (counts is None or _counts(counts)) or not (categories is None or _strings(categories)) \
            or not (dir_ is None or isinstance(dir_, str)) \
            or not (limit is None or type(limit) is int and 1 <= limit <= MAX_NPY_ROWS):
        raise bad("data", "is not {dir, categories, counts, max_per_category} of their types and bounds")
    _check_negatives(payload.get("negatives"), bad)
    _check_parent(payload.get("parent"), bad)
    state = payload.get("train_state")
    if state is not None and not (isinstance(state, dict) and type(state.get("epoch")) is int
                                  and 0 <= state["epoch"] <= MAX_EPOCHS):
        raise bad("train_state", "has no epoch from 0 to the most epochs a run may have")


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _count(value: object) -> bool:
    """A number of drawings."""
    return type(value) is int and 0 <= value <= MAX_NPY_ROWS


def _counts(value: object) -> bool:
    return isinstance(value, list) and all(_count(c) for c in value)


def _check_negatives(record: object, bad) -> None:
    """The record of a run's --negatives (qd.data.negatives.negatives_record), which qd-export and qd-eval
    read to find and check the negatives' held-out splits."""
    if record is None:
        return
    if not (isinstance(record, dict) and (record.get("dir") is None or isinstance(record["dir"], str))
            and _strings(record.get("categories"))
            and _counts(record.get("counts"))
            and len(record["counts"]) == len(record["categories"])
            and isinstance(record.get("splits"), dict) and all(_count(record["splits"].get(n)) for n in SPLITS)
            and isinstance(record.get("sha256"), dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in record["sha256"].items())):
        raise bad("negatives", "is not {dir, categories, counts, splits, sha256} of their types and bounds")


def _check_parent(record: object, bad) -> None:
    """The record of the checkpoint a run started from (init_from below), carried on by --resume."""
    if record is None:
        return
    mapping = record.get("class_mapping") if isinstance(record, dict) else None
    if not (isinstance(record, dict) and isinstance(record.get("path"), str) and isinstance(record.get("sha256"), str)
            and _strings(record.get("classes")) and isinstance(mapping, dict)
            and all(isinstance(k, str) and (v is None or type(v) is int and 0 <= v < len(record["classes"]))
                    for k, v in mapping.items())
            and _count(record.get("kept")) and type(record.get("frozen_backbone")) is bool):
        raise bad("parent", "is not {path, sha256, classes, class_mapping, kept, frozen_backbone} of their types")


def check_weights(path: Path, payload: dict) -> None:
    """The state dict has exactly the tensors, of exactly the shapes, that the declared architecture
    (built on the meta device: nothing allocated) has for the declared classes."""
    arch = payload["arch"]
    name, kwargs = arch["name"], arch.get("kwargs", {})
    try:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in
                        build_model(name, len(payload["classes"]), **kwargs).state_dict().items()}
    except QDError as exc:
        raise QDError(f"{path}: {exc}") from None
    found = {k: tuple(v.shape) for k, v in payload["state_dict"].items()}
    mismatch = next((f"{k}: {list(found[k])} in the file, {list(shape)} expected"
                     for k, shape in expected.items() if k in found and found[k] != shape), None)
    mismatch = mismatch or next((f"{k} is missing from the file" for k in expected if k not in found), None)
    mismatch = mismatch or next((f"{short_repr(k)} in the file is not part of it" for k in found if k not in expected),
                                None)
    if mismatch:
        described = ", ".join(f"{k}={short_repr(v)}" for k, v in full_kwargs(name, kwargs).items())
        raise QDError(f"{path}: weights do not fit the architecture {name} ({described}, "
                      f"{len(payload['classes'])} classes): {mismatch}")


def model_from_checkpoint(payload: dict) -> torch.nn.Module:
    """Rebuild the network described by a loaded checkpoint, in eval mode."""
    arch = payload["arch"]
    try:
        model = build_model(arch["name"], len(payload["classes"]), **arch.get("kwargs", {}))
        model.load_state_dict(payload["state_dict"])
    except QDError:
        raise
    except Exception as exc:  # wrong kwargs types, shapes that do not fit, ...
        raise QDError(f"checkpoint weights do not fit architecture {arch['name']!r}: {first_line(exc)}") from None
    return model.eval()


# ---------------------------------------------------------------- --init-from

def load_parent(path: Path) -> dict:
    """A checkpoint to start from: a qd-train checkpoint whose input is the one this run feeds."""
    payload = load_checkpoint(path)  # one line for anything that is not a qd-train checkpoint
    size = payload["preprocessing"].get("input_size")
    if size != DEFAULT_PREPROCESSING["input_size"]:
        raise QDError(f"{path}: --init-from a model of input size {size}, but this run trains on "
                      f"{DEFAULT_PREPROCESSING['input_size']}x{DEFAULT_PREPROCESSING['input_size']} drawings")
    return payload


def parent_arch(path: Path, payload: dict, arch: str | None, arch_kwargs: dict) -> tuple[str, dict]:
    """The architecture a run initialised from `payload` builds: the parent's own."""
    name, kwargs = payload["arch"]["name"], dict(payload["arch"].get("kwargs", {}))
    if arch is not None and arch != name:
        raise QDError(f"{path}: --init-from a {name!r} network, but --arch {arch!r} was asked for")
    if arch_kwargs and full_kwargs(name, arch_kwargs) != full_kwargs(name, kwargs):
        raise QDError(f"{path}: --init-from a network built with {kwargs}, not {arch_kwargs}")
    return name, kwargs


def class_mapping(classes: list[str], parent_classes: list[str]) -> dict[str, int | None]:
    """For each class of the new run, the parent's output row for it (None: a new class)."""
    rows = {name: i for i, name in enumerate(parent_classes)}
    return {name: rows.get(name) for name in classes}


def init_from(model: nn.Module, path: Path, payload: dict, classes: list[str], freeze_backbone: bool) -> dict:
    """Copy the parent's weights into `model`; return the record the new checkpoint keeps."""
    head = head_name(model)
    parent = payload["state_dict"]
    own = model.state_dict()
    mapping = class_mapping(classes, payload["classes"])
    with torch.no_grad():
        for key, tensor in own.items():
            if key not in parent or parent[key].shape != tensor.shape and not key.startswith(head + "."):
                raise QDError(f"{path}: its weights do not fit this network ({key})")
            if key.startswith(head + "."):
                for row, parent_row in enumerate(mapping.values()):
                    if parent_row is not None:
                        tensor[row] = parent[key][parent_row]
            else:
                tensor.copy_(parent[key])
    if freeze_backbone:
        freeze(model)
    return {"path": str(path.resolve()), "sha256": sha256_file(path), "classes": list(payload["classes"]),
            "class_mapping": mapping, "kept": sum(r is not None for r in mapping.values()),
            "frozen_backbone": bool(freeze_backbone)}


def freeze(model: nn.Module) -> None:
    """--freeze-backbone: only the output layer's parameters are trained."""
    head = head_name(model)
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(head + "."))


def keep_batch_norm(model: nn.Module) -> None:
    """With a frozen backbone its batch-norm layers run in eval mode too (their statistics kept);
    called after model.train()."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
