"""Where a model to evaluate lives, and what its metadata says.

`--model` may name an export folder (artifacts/exports/<run>/) or an `.onnx` file.
The fp32 ONNX model is the reference: its metadata (labels, preprocessing, split,
training data) drives everything else. Its siblings are the other backends' files:
`model.int8.onnx`, `model.mlpackage`, and `model.json`, which points at the source
checkpoint for the torch backend.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from qd.data.errors import QDError
from qd.data.paths import artifacts_root

from .onnx_session import read_metadata

MODEL_FILE = "model.onnx"
INT8_SUFFIX = ".int8.onnx"
COREML_SUFFIX = ".mlpackage"
MODEL_JSON = "model.json"


def newest_export() -> Path:
    """The newest (mtime) artifacts/exports/*/model.onnx, as qd-infer picks its default."""
    candidates = sorted((artifacts_root() / "exports").glob(f"*/{MODEL_FILE}"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise QDError(f"{artifacts_root() / 'exports'}: no exported model found (run qd-export, or pass --model PATH)")
    return candidates[-1]


@dataclass(frozen=True)
class ModelInfo:
    """The fp32 reference model and what its metadata promises."""

    path: Path
    name: str
    labels: list[str]
    preprocessing: dict
    split: dict | None
    data: dict | None
    source_sha256: str | None
    metadata: dict = field(repr=False)

    @property
    def folder(self) -> Path:
        return self.path.parent

    def sibling(self, suffix: str) -> Path:
        """`model.onnx` -> `model<suffix>` beside it (e.g. model.int8.onnx)."""
        return self.path.with_name(self.path.name[: -len(".onnx")] + suffix)

    def source_checkpoint(self) -> Path | None:
        """The checkpoint named by the export folder's model.json card (source.checkpoint), if any."""
        card = self.folder / MODEL_JSON
        if not card.is_file():
            return None
        try:
            info = json.loads(card.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise QDError(f"{card}: unreadable ({str(exc).splitlines()[0][:120]})") from None
        source = info.get("source") if isinstance(info, dict) else None
        value = source.get("checkpoint") if isinstance(source, dict) else None
        if not isinstance(value, str) or not value:
            return None
        path = Path(value)
        return path if path.is_absolute() else self.folder / path


def resolve_model_path(path: str | os.PathLike | None) -> Path:
    """An export folder or .onnx file -> the .onnx file (default: the newest export)."""
    if path is None:
        return newest_export()
    path = Path(path)
    if not path.exists():
        raise QDError(f"{path}: model not found")
    if path.is_dir():
        model = path / MODEL_FILE
        if not model.is_file():
            raise QDError(f"{path}: folder has no {MODEL_FILE}")
        return model
    if path.suffix != ".onnx":
        raise QDError(f"{path}: expected an .onnx model or an export folder")
    return path


def load_model_info(path: str | os.PathLike | None) -> ModelInfo:
    model = resolve_model_path(path)
    metadata = read_metadata(model)
    labels = _json_field(model, metadata, "qd.labels", required=True)
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise QDError(f"{model}: qd.labels metadata is not a non-empty list of class names")
    preprocessing = _json_field(model, metadata, "qd.preprocessing", required=True)
    return ModelInfo(
        path=model,
        name=model_name(model),
        labels=labels,
        preprocessing=preprocessing,
        split=_json_field(model, metadata, "qd.split"),
        data=_json_field(model, metadata, "qd.data"),
        source_sha256=metadata.get("qd.source_sha256"),
        metadata=metadata,
    )


def model_name(model: Path) -> str:
    """The run name for a file inside an export folder, else the file's stem."""
    if model.name == MODEL_FILE or (model.parent / MODEL_JSON).is_file():
        return model.resolve().parent.name
    return model.name.split(".")[0]


def _json_field(model: Path, metadata: dict, key: str, required: bool = False):
    raw = metadata.get(key)
    if raw is None:
        if required:
            what = "labels" if key == "qd.labels" else key
            raise QDError(f"{model}: model has no {what} ({key} metadata missing; export it with qd-export)")
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        raise QDError(f"{model}: {key} metadata is not valid JSON") from None
