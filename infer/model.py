"""An exported quickdraw-edge ONNX model, run with onnxruntime.

Labels, preprocessing, temperature and open-set rule come from the model's
metadata_props (contracts.md, infer/openset.py), parsed as data and validated: a
model that is not ONNX, lacks the labels, whose label count differs from its output
width, or whose open-set metadata is malformed is refused with one line. A model
exported before the open-set rule existed still works; it just cannot flag unknowns.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qd.command import QDError, first_line
from qd.data.bitmaps import check_labels
from qd.data.contract import (INPUT, MAX_MODEL_BYTES, MAX_THREADS, META_FORMAT, META_LABELS, META_PRECISION,
                              META_PREPROCESSING, MODEL_FORMAT, MODEL_ONNX, REQUIRED_KEYS as PREPROCESSING_KEYS,
                              bitmaps_to_input, check_preprocessing, exports_dir)
from qd.files import read_regular

from .defaults import DEFAULT_BATCH_SIZE
from .openset import PROBABILITIES, OpenSetRule, parse_open_set, parse_temperature

MODEL_FILE = MODEL_ONNX  # qd-infer's model in an export folder
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")  # qd-train writes these; a model comes from qd-export


def newest_export(root: str | os.PathLike | None = None) -> Path:
    """The newest (mtime) <root>/exports/*/model.onnx: qd-infer's default model."""
    exports = Path(root) / exports_dir().name if root is not None else exports_dir()
    found = []
    for path in exports.glob(f"*/{MODEL_FILE}"):
        try:
            found.append((path.stat().st_mtime, str(path), path))
        except OSError:
            continue  # removed while we looked
    if not found:
        raise QDError(f"{exports}: no exported model found (run qd-export first, or pass --model PATH)")
    return max(found)[2]


def resolve_model_path(model: str | os.PathLike | None) -> Path:
    """--model may be an .onnx file or an export folder; None means the newest export."""
    if model is None:
        return newest_export()
    path = Path(model)
    if path.is_dir():
        path = path / MODEL_FILE
    if path.suffix.lower() in CHECKPOINT_SUFFIXES:
        raise QDError(f"{path}: a qd-train checkpoint, not an exported model; run qd-export first "
                      f"(qd-export {path}) and pass the export folder it writes")
    if not path.exists():
        raise QDError(f"{path}: model file does not exist")
    if not path.is_file():
        raise QDError(f"{path}: model path is not a file")
    return path


@dataclass
class Predictions:
    probabilities: np.ndarray          # (N, C), calibrated as the model's metadata says
    unknown: np.ndarray | None         # (N,) bool: the open-set rule's answer; None if it was not applied


class OnnxClassifier:
    """float32 (B, 1, 28, 28) -> probabilities (B, C), with labels and preprocessing from metadata.

    `open_set` is the rule that marks drawings unknown: the model's own (None for models
    exported without one), with `unknown_threshold` instead of its threshold if given, or
    None if `flag_unknown` is False. `model_bytes`: the model file's bytes, read already (a Ray
    worker gets them from the driver); `path` then only names the model in messages."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None,
                 unknown_threshold: float | None = None, flag_unknown: bool = True,
                 model_bytes: bytes | None = None):
        self.path = Path(path)
        self.session = _open_session(self.path, threads, model_bytes)
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        self.labels: list[str] = _parse_labels(self.path, self.metadata)
        self.preprocessing: dict = _parse_preprocessing(self.path, self.metadata)
        self.precision: str = parse_precision(self.metadata)
        self.temperature: float = parse_temperature(self.path, self.metadata)
        self.model_open_set: OpenSetRule | None = parse_open_set(self.path, self.metadata)
        self._check_io()
        self.open_set = self._effective_rule(unknown_threshold, flag_unknown)

    def _effective_rule(self, threshold: float | None, enabled: bool) -> OpenSetRule | None:
        if not enabled:
            return None
        if threshold is None:
            return self.model_open_set
        if self.model_open_set is None:
            raise QDError(f"{self.path}: --unknown-threshold needs a model with an open-set rule "
                          "(this one was exported without one; export it again with qd-export)")
        return self.model_open_set.with_threshold(threshold)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def _check_io(self) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        if INPUT not in inputs or PROBABILITIES not in outputs:
            raise QDError(f"{self.path}: expected input {INPUT!r} and output {PROBABILITIES!r}, found "
                          f"{sorted(inputs)} -> {sorted(outputs)}")
        side = int(self.preprocessing["input_size"])
        shape = list(inputs[INPUT].shape)
        if len(shape) != 4 or any(isinstance(d, int) and d != want for d, want in zip(shape[1:], (1, side, side))):
            raise QDError(f"{self.path}: input {INPUT!r} has shape {shape}, expected [batch, 1, {side}, {side}]")
        width = outputs[PROBABILITIES].shape[-1] if outputs[PROBABILITIES].shape else None
        if isinstance(width, int) and width != len(self.labels):
            raise QDError(f"{self.path}: metadata names {len(self.labels)} labels but the model outputs "
                          f"{width} classes")
        rule = self.model_open_set
        if rule is not None and rule.output not in outputs:
            raise QDError(f"{self.path}: model metadata qd.open_set rule {rule.rule!r} needs output "
                          f"{rule.output!r}, which the model does not have")

    def outputs(self, inputs: np.ndarray, names: list[str] | None = None) -> dict[str, np.ndarray]:
        """One session run on a float32 (B, 1, 28, 28) batch: `names` (default: probabilities, and the
        output the open-set rule reads), each (B, C)."""
        if names is None:
            names = [PROBABILITIES]
            if self.open_set is not None and self.open_set.output != PROBABILITIES:
                names.append(self.open_set.output)
        values = dict(zip(names, self.session.run(names, {INPUT: inputs})))
        for name, value in values.items():
            if value.ndim != 2 or value.shape != (len(inputs), len(self.labels)):
                raise QDError(f"{self.path}: model returned {name} of shape {value.shape}, expected "
                              f"({len(inputs)}, {len(self.labels)})")
        return values

    def probabilities(self, inputs: np.ndarray) -> np.ndarray:
        """One session run on a float32 (B, 1, 28, 28) batch."""
        return self.outputs(inputs)[PROBABILITIES]

    def unknown(self, outputs: dict[str, np.ndarray]) -> np.ndarray | None:
        """Which drawings the open-set rule marks unknown (None when no rule applies)."""
        return None if self.open_set is None else self.open_set.unknown(outputs)

    def predict(self, bitmaps: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE) -> Predictions:
        """uint8 ink-high (N, 784) or (N, 28, 28) bitmaps -> calibrated probabilities and the unknown answer."""
        bitmaps = np.asarray(bitmaps)
        probs = np.empty((len(bitmaps), len(self.labels)), dtype=np.float32)
        unknown = np.zeros(len(bitmaps), dtype=bool) if self.open_set is not None else None
        for start in range(0, len(bitmaps), batch_size):
            batch = bitmaps[start:start + batch_size]
            outputs = self.outputs(bitmaps_to_input(batch, self.preprocessing))
            probs[start:start + len(batch)] = outputs[PROBABILITIES]
            if unknown is not None:
                unknown[start:start + len(batch)] = self.unknown(outputs)
        return Predictions(probs, unknown)

    def predict_bitmaps(self, bitmaps: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """uint8 ink-high (N, 784) or (N, 28, 28) bitmaps -> probabilities (N, C), in batches."""
        bitmaps = np.asarray(bitmaps)
        n = len(bitmaps)
        out = np.empty((n, len(self.labels)), dtype=np.float32)
        for start in range(0, n, batch_size):
            batch = bitmaps[start:start + batch_size]
            out[start:start + len(batch)] = self.probabilities(bitmaps_to_input(batch, self.preprocessing))
        return out


def top_k(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the k largest probabilities per row, largest first (ties: lower index).
    The one ranking every tool uses: qd-infer's top-k, qd-eval's top-k accuracy and MAP@k."""
    probs = np.asarray(probs)
    k = max(1, min(k, probs.shape[1]))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(probs, order, axis=1)


def read_model_bytes(path: Path) -> bytes:
    """The bytes of the regular file `path`, so a FIFO or a swapped file is never opened by onnxruntime."""
    try:
        return read_regular(path, MAX_MODEL_BYTES, what="model")
    except OSError as exc:
        raise QDError(f"{path}: {exc.strerror or exc}") from None


def _open_session(path: Path, threads: int | None, model: bytes | None = None):
    import onnxruntime as ort

    if threads is not None and not 1 <= threads <= MAX_THREADS:
        raise QDError(f"--threads must be 1 to {MAX_THREADS}, got {threads}")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # onnxruntime warnings are not the user's business
    if threads:
        options.intra_op_num_threads = threads
    if model is None:
        model = read_model_bytes(path)
    try:
        return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable files
        first = first_line(exc, 10_000)
        # torch saves checkpoints as zip files: whatever the name, that is the one slip worth a hint
        hint = "; it looks like a torch checkpoint: run qd-export first" if model[:4] == b"PK\x03\x04" else ""
        raise QDError(f"{path}: not a loadable ONNX model ({first[:160]}){hint}") from None


def parse_precision(meta: dict[str, str]) -> str:
    """The model's qd.precision ("fp32" or "int8"); models exported before it was recorded are fp32."""
    return meta.get(META_PRECISION, "fp32")


def _parse_labels(path: Path, meta: dict[str, str]) -> list[str]:
    if meta.get(META_FORMAT) not in (None, MODEL_FORMAT):
        raise QDError(f"{path}: unknown model format {meta.get(META_FORMAT)!r} (this version reads {MODEL_FORMAT!r})")
    if META_LABELS not in meta:
        raise QDError(f"{path}: model metadata has no qd.labels (not exported by qd-export?)")
    try:
        labels = json.loads(meta[META_LABELS])
    except (ValueError, RecursionError):
        raise QDError(f"{path}: model metadata qd.labels is not valid JSON") from None
    try:
        return check_labels(labels)
    except ValueError as exc:
        raise QDError(f"{path}: model metadata qd.labels {exc}") from None


def _parse_preprocessing(path: Path, meta: dict[str, str]) -> dict:
    try:
        spec = json.loads(meta[META_PREPROCESSING])
    except KeyError:
        raise QDError(f"{path}: model metadata has no qd.preprocessing") from None
    except (ValueError, RecursionError):
        raise QDError(f"{path}: model metadata qd.preprocessing is not valid JSON") from None
    if not isinstance(spec, dict) or any(k not in spec for k in PREPROCESSING_KEYS):
        raise QDError(f"{path}: model metadata qd.preprocessing must be a JSON object with "
                      f"{', '.join(PREPROCESSING_KEYS)}")
    try:
        spec = check_preprocessing(spec)
    except ValueError as exc:
        raise QDError(f"{path}: model metadata qd.{exc} (qd-infer renders 28px ink-high drawings)") from None
    if spec.get("polarity", "ink-high") != "ink-high":
        raise QDError(f"{path}: model expects polarity {spec.get('polarity')!r}; qd-infer produces 'ink-high'")
    return spec
