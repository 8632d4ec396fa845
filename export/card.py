"""The export folder's small companions: labels.txt and the model.json card.

model.json records what the models are (classes, preprocessing, architecture, split,
source checkpoint and its metrics), the temperature and open-set rule fitted at export
(the same as in each model's metadata), every file with its sha256, and the validation
results: it is the manifest of the set, which readers check files against
(qd.evaluate.backends). Entries for formats not re-exported in this run are kept from
the previous card only if they come from the same checkpoint and still match their
checksum; such files are carried into the new set, other models are not.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from qd import __version__ as QD_VERSION
from qd.command import QDError
from qd.data.contract import (CARD_FORMAT, LABELS_FILE as LABELS_NAME, LICENSE_NOTE, MAX_CARD_BYTES,
                              MODEL_CARD as CARD_NAME)
from qd.files import path_size, read_regular, sha256_path, write_text_atomic

from .context import Check, ExportContext


def write_labels(ctx: ExportContext) -> Path:
    path = ctx.out_dir / LABELS_NAME
    write_text_atomic(path, "".join(f"{name}\n" for name in ctx.source.classes))
    return path


def previous_files(ctx: ExportContext) -> dict:
    """Entries of the previous set's card for files this run did not rewrite, if provably still
    valid: same source checkpoint, file present, checksum unchanged."""
    folder = ctx.previous_dir or ctx.out_dir
    try:
        card = json.loads(read_regular(folder / CARD_NAME, MAX_CARD_BYTES, what=CARD_NAME))
    except (OSError, QDError, ValueError, RecursionError):
        return {}
    source = card.get("source") if isinstance(card, dict) else None
    files = card.get("files") if isinstance(card, dict) else None
    if not isinstance(source, dict) or source.get("sha256") != ctx.source.sha256 or not isinstance(files, dict):
        return {}
    kept = {}
    for name, entry in files.items():
        if name in ctx.written or name == "labels" or not isinstance(entry, dict):
            continue
        path = folder / str(entry.get("file", ""))
        if path.parent == folder and path.exists() and sha256_path(path) == entry.get("sha256"):
            kept[name] = entry
    return kept


def stale_models(ctx: ExportContext, filenames: list[str]) -> list[Path]:
    """Model files of the previous set that this run did not write and cannot vouch for (another
    checkpoint's, or changed since): they are not part of the new set."""
    folder = ctx.previous_dir or ctx.out_dir
    vouched = {str(e.get("file")) for e in previous_files(ctx).values()}
    written = {path.name for path in ctx.written.values()}
    return [folder / name for name in filenames
            if (folder / name).exists() and name not in written | vouched]


def write_card(ctx: ExportContext, results: dict[str, list[Check]], kept: dict | None = None) -> Path:
    """model.json in ctx.out_dir: this run's files, plus `kept` (entries of files carried over)."""
    payload = ctx.source.payload
    files = dict(kept if kept is not None else previous_files(ctx))
    for name, path in ctx.written.items():
        files[name] = {
            "file": path.name,
            "sha256": sha256_path(path),
            "bytes": path_size(path),
            "validation": [c.to_dict() for c in results.get(name, [])],
        }
    labels = ctx.out_dir / LABELS_NAME
    files["labels"] = {"file": LABELS_NAME, "sha256": sha256_path(labels), "bytes": path_size(labels)}
    card = {
        "format": CARD_FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quickdraw_edge": QD_VERSION,
        "classes": ctx.source.classes,
        "preprocessing": ctx.source.preprocessing,
        "arch": payload["arch"],
        "split": payload["split"],
        "source": {
            "checkpoint": str(ctx.source.path.resolve()),
            "sha256": ctx.source.sha256,
            "best": payload.get("best"),
            "test": payload.get("test"),
            "metrics": payload.get("metrics"),
            "hparams": payload.get("hparams"),
            "versions": payload.get("versions"),
        },
        "exported_with": _tool_versions(),
        "validation_data": ctx.data.description,
        "confidence": ctx.confidence.card(),
        "license": LICENSE_NOTE,
        "files": files,
    }
    path = ctx.out_dir / CARD_NAME
    write_text_atomic(path, json.dumps(card, indent=2, ensure_ascii=False, default=_plain) + "\n")
    return path


def _tool_versions() -> dict[str, str]:
    found = {}
    for package in ("torch", "onnx", "onnxscript", "onnxruntime", "coremltools"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found


def _plain(value):
    """numpy scalars and other stragglers in checkpoint dicts, as plain JSON."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)
