"""`--init-from`: start a run from another checkpoint's weights, for new or changed classes.

Every tensor but the output layer's is copied. The output layer has one row per class:
classes the parent knew keep their rows (found by name), new classes keep the fresh
initialisation. `--freeze-backbone` then trains only the output layer (the rest stays in
eval mode, so batch-norm statistics are kept too). The new checkpoint records the parent
(path and sha256) and, per class, the parent's output row it came from (None: new).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from qd.command import QDError
from qd.data.contract import DEFAULT_PREPROCESSING
from qd.files import sha256_file

from .checkpoint import load_checkpoint
from .models import full_kwargs, head_name


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
