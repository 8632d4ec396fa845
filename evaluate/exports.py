"""Where a model to evaluate lives, and what its metadata says.

`--model` may name an export folder (artifacts/exports/<run>/) or an `.onnx` file.
The fp32 ONNX model is the reference, opened with qd-infer's classifier: its
metadata (labels, preprocessing, split, training data) drives everything else. Its
siblings are the other backends' files: `model.int8.onnx`, `model.mlpackage`, and
`model.json`, which points at the source checkpoint for the torch backend.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from qd.data.errors import QDError
from qd.infer.model import MODEL_FILE, OnnxClassifier, resolve_model_path

INT8_SUFFIX = ".int8.onnx"
COREML_SUFFIX = ".mlpackage"
MODEL_JSON = "model.json"


@dataclass(frozen=True)
class ModelInfo:
    """The fp32 reference model, open in onnxruntime, and what its metadata promises."""

    path: Path
    name: str
    labels: list[str]
    preprocessing: dict
    split: dict | None
    data: dict | None
    source_sha256: str | None
    classifier: OnnxClassifier = field(repr=False, compare=False)

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


def load_model_info(path: str | os.PathLike | None) -> ModelInfo:
    """An export folder or .onnx file (default: the newest export), checked as qd-infer checks it."""
    model = resolve_model_path(path)
    if model.suffix != ".onnx":
        raise QDError(f"{model}: expected an .onnx model or an export folder")
    classifier = OnnxClassifier(model)
    metadata = classifier.metadata
    return ModelInfo(
        path=model,
        name=model_name(model),
        labels=classifier.labels,
        preprocessing=classifier.preprocessing,
        split=_json_field(model, metadata, "qd.split"),
        data=_json_field(model, metadata, "qd.data"),
        source_sha256=metadata.get("qd.source_sha256"),
        classifier=classifier,
    )


def model_name(model: Path) -> str:
    """The run name for a file inside an export folder, else the file's stem."""
    if model.name == MODEL_FILE or (model.parent / MODEL_JSON).is_file():
        return model.resolve().parent.name
    return model.name.split(".")[0]


def _json_field(model: Path, metadata: dict, key: str):
    raw = metadata.get(key)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        raise QDError(f"{model}: {key} metadata is not valid JSON") from None
