"""Where a model to evaluate lives, and what its metadata says.

`--model` may name an export folder (artifacts/exports/<run>/) or an `.onnx` file.
The fp32 ONNX model is the reference, opened with qd-infer's classifier: its
metadata (labels, preprocessing, split, training data) drives everything else. Its
siblings are the other backends' files: `model.int8.onnx`, `model.mlpackage`, and
`model.json`, which points at the source checkpoint for the torch backend.

An export folder is one set (qd-export replaces it as a whole). Before a sibling is
compared with the reference, `check_member` proves it belongs to the same set: listed
in model.json with the same sha256, and, for ONNX, exported from the same checkpoint
(qd.source_sha256). A mixed folder (an interrupted or hand-made mix) is never compared
silently: the odd file is refused with one line that says so.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from qd.command import QDError, first_line
from qd.data.contract import MAX_CARD_BYTES, META_DATA, META_SOURCE_SHA256, META_SPLIT, MODEL_CARD
from qd.files import read_regular, sha256_path
from qd.infer.model import MODEL_FILE, OnnxClassifier, resolve_model_path

INT8_SUFFIX = ".int8.onnx"
COREML_SUFFIX = ".mlpackage"
MODEL_JSON = MODEL_CARD


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
    card: dict | None = field(default=None, repr=False, compare=False)  # the folder's model.json, if any

    @property
    def folder(self) -> Path:
        return self.path.parent

    def sibling(self, suffix: str) -> Path:
        """`model.onnx` -> `model<suffix>` beside it (e.g. model.int8.onnx)."""
        return self.path.with_name(self.path.name[: -len(".onnx")] + suffix)

    def source_checkpoint(self) -> Path | None:
        """The checkpoint named by the export folder's model.json card (source.checkpoint), if any."""
        info = self.card
        source = info.get("source") if isinstance(info, dict) else None
        value = source.get("checkpoint") if isinstance(source, dict) else None
        if not isinstance(value, str) or not value:
            return None
        path = Path(value)
        return path if path.is_absolute() else self.folder / path

    def check_member(self, path: Path, source_sha256: str | None = None) -> None:
        """Refuse `path` unless it is provably of the same export set as this model (see module doc)."""
        mixed = "the folder mixes two exports (an interrupted or hand-made one); export it again"
        if self.card is not None:
            files = self.card.get("files") if isinstance(self.card.get("files"), dict) else {}
            entry = next((e for e in files.values() if isinstance(e, dict) and e.get("file") == path.name), None)
            if entry is None:
                raise QDError(f"{path}: not in the set {MODEL_JSON} lists; {mixed}")
            if sha256_path(path) != entry.get("sha256"):
                raise QDError(f"{path}: not the file {MODEL_JSON} lists (sha256 differs); {mixed}")
        if source_sha256 and self.source_sha256 and source_sha256 != self.source_sha256:
            raise QDError(f"{path}: exported from another checkpoint (sha256 {source_sha256[:12]}) than "
                          f"{self.path.name} ({self.source_sha256[:12]}); {mixed}")


def load_model_info(path: str | os.PathLike | None) -> ModelInfo:
    """An export folder or .onnx file (default: the newest export), checked as qd-infer checks it."""
    model = resolve_model_path(path)
    if model.suffix != ".onnx":
        raise QDError(f"{model}: expected an .onnx model or an export folder")
    classifier = OnnxClassifier(model)
    metadata = classifier.metadata
    info = ModelInfo(
        path=model,
        name=model_name(model),
        labels=classifier.labels,
        preprocessing=classifier.preprocessing,
        split=_json_field(model, metadata, META_SPLIT),
        data=_json_field(model, metadata, META_DATA),
        source_sha256=metadata.get(META_SOURCE_SHA256),
        classifier=classifier,
        card=read_card(model.parent / MODEL_JSON),
    )
    if info.card is not None:  # the model must be the one its folder's card lists, of the card's checkpoint
        source = info.card.get("source") if isinstance(info.card.get("source"), dict) else {}
        info.check_member(model, source.get("sha256"))
    return info


def read_card(path: Path) -> dict | None:
    """An export folder's model.json (None if there is none), read within MAX_CARD_BYTES."""
    if not path.exists():
        return None
    try:
        card = json.loads(read_regular(path, MAX_CARD_BYTES, what=MODEL_CARD))
    except OSError as exc:
        raise QDError(f"{path}: unreadable ({exc.strerror or exc})") from None
    except (ValueError, RecursionError) as exc:
        raise QDError(f"{path}: unreadable ({first_line(exc, 120) if str(exc).strip() else 'not JSON'})") from None
    if not isinstance(card, dict):
        raise QDError(f"{path}: unreadable (not a JSON object)")
    return card


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
