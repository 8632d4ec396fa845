"""The model to evaluate, its export set, and the runtimes it can be evaluated with, in one table.

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

Each backend opens its own file (found beside the reference model.onnx, or the
source checkpoint for torch) and turns the held-out bitmaps into its outputs:
calibrated probabilities (softmax(logits / T), T from the model's metadata), and the
raw logits where the backend has them (the open-set rule and the "before calibration"
figures read them). One that cannot run here is skipped with a reason rather than
failing the report. torch and coremltools are imported only inside their backends.
Every backend's drawings go through qd.infer's batch loop (predict_all) and its speed through
qd.infer's call_seconds (measure).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from qd.command import QDError, first_line
from qd.data.bitmaps import SplitSpec
from qd.data.contract import (LOGITS, MAX_CARD_BYTES, MAX_NPY_ROWS, META_DATA, META_SOURCE_SHA256, META_SPLIT,
                              MODEL_CARD, MODEL_COREML, MODEL_INT8_ONNX, MODEL_ONNX, PROBABILITIES, bitmaps_to_input)
from qd.export.formats import FORMATS
from qd.files import path_size, read_regular, sha256_file, sha256_path
from qd.infer.model import OnnxClassifier, call_seconds, finite_number, resolve_model_path, run_batched

BENCH_BATCH = 256
EVAL_BATCH = 256


# ----------------------------------------------------------------------------- the model to evaluate

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

    def sibling(self, filename: str) -> Path:
        """Another format's file beside this model, named as an export names it: `filename` is that format's
        name beside model.onnx (model.int8.onnx), so `my.onnx` gives `my.int8.onnx`."""
        suffix = filename[len(MODEL_ONNX) - len(".onnx"):]
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
                raise QDError(f"{path}: not in the set {MODEL_CARD} lists; {mixed}")
            if sha256_path(path) != entry.get("sha256"):
                raise QDError(f"{path}: not the file {MODEL_CARD} lists (sha256 differs); {mixed}")
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
        split=parse_split(model, metadata),
        data=parse_data(model, metadata),
        source_sha256=metadata.get(META_SOURCE_SHA256),
        classifier=classifier,
        card=read_card(model.parent / MODEL_CARD),
    )
    if info.card is not None:  # the model must be the one its folder's card lists, of the card's checkpoint
        source = info.card.get("source") if isinstance(info.card.get("source"), dict) else {}
        if not isinstance(source.get("sha256", ""), str):
            raise QDError(f"{model.parent / MODEL_CARD}: source.sha256 is not a string")
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
    if model.name == MODEL_ONNX or (model.parent / MODEL_CARD).is_file():
        return model.resolve().parent.name
    return model.name.split(".")[0]


def _json_field(model: Path, metadata: dict, key: str):
    raw = metadata.get(key)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise QDError(f"{model}: {key} metadata is not valid JSON") from None


def parse_split(model: Path, metadata: dict) -> dict | None:
    """qd.split, checked as SplitSpec checks it (fractions, seed, scheme), so cutting it later cannot fail."""
    split = _json_field(model, metadata, META_SPLIT)
    if split is None:
        return None
    try:
        if not isinstance(split, dict):
            raise ValueError("is not a JSON object")
        for key in ("val_fraction", "test_fraction"):
            if key in split and not (finite_number(split[key]) is not None and 0 <= split[key] < 1):
                raise ValueError(f"{key} must be a number from 0 to below 1, got {_short(split[key])}")
        if "seed" in split and not (type(split["seed"]) is int and 0 <= split["seed"] < 2**64):
            raise ValueError(f"seed must be a whole number from 0 to 2^64, got {_short(split['seed'])}")
        SplitSpec.from_dict(split)
    except (ValueError, QDError) as exc:
        raise QDError(f"{model}: model metadata {META_SPLIT} {exc}") from None
    return split


def parse_data(model: Path, metadata: dict) -> dict | None:
    """qd.data (the training data folder, its categories, counts and max_per_category), checked by type."""
    data = _json_field(model, metadata, META_DATA)
    if data is None:
        return None
    checks = {"dir": lambda v: isinstance(v, str),
              "categories": lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v),
              "counts": lambda v: isinstance(v, list) and all(type(c) is int and 0 <= c <= MAX_NPY_ROWS for c in v),
              "max_per_category": lambda v: type(v) is int and 1 <= v <= MAX_NPY_ROWS}
    if not isinstance(data, dict):
        raise QDError(f"{model}: model metadata {META_DATA} is not a JSON object")
    for key, check in checks.items():
        if data.get(key) is not None and not check(data[key]):
            raise QDError(f"{model}: model metadata {META_DATA} has a malformed {key} ({_short(data[key])})")
    return data


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."


# ----------------------------------------------------------------------------- the backends


class Unavailable(Exception):
    """This backend cannot run here; the message says why (shown in the table)."""


@dataclass
class Runner:
    """A loaded backend: its file, how it turns bitmaps into its input, and its predict function.

    Only `predict` is timed: preparing input (scaling, or images for Core ML) is not the model's cost.
    """

    file: Path
    prepare: Callable[[np.ndarray], object]     # (B, 784) uint8 ink-high bitmaps -> the backend's input
    predict: Callable[[object], dict[str, np.ndarray]]  # that input -> {"probabilities": (B, C), "logits": ...}
    note: str | None = None


def tensor_input(preprocessing: dict) -> Callable[[np.ndarray], np.ndarray]:
    return lambda bitmaps: bitmaps_to_input(bitmaps, preprocessing)


def onnx_predict(classifier: OnnxClassifier) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    names = [name for name in (PROBABILITIES, LOGITS) if name in {o.name for o in classifier.session.get_outputs()}]
    return lambda inputs: classifier.outputs(inputs, names)


def open_onnx(model: ModelInfo, checkpoint: Path | None) -> Runner:
    note = "the model given is the int8 one" if model.classifier.precision == "int8" else None
    return Runner(model.path, tensor_input(model.preprocessing), onnx_predict(model.classifier), note)


def open_onnx_int8(model: ModelInfo, checkpoint: Path | None) -> Runner:
    path = model.sibling(MODEL_INT8_ONNX)
    if not path.is_file():
        raise Unavailable(f"no {path.name} beside {model.path.name}")
    classifier = OnnxClassifier(path)
    model.check_member(path, classifier.metadata.get(META_SOURCE_SHA256))
    if classifier.labels != model.labels:
        raise QDError(f"{path}: its labels differ from {model.path.name}'s")
    return Runner(path, tensor_input(classifier.preprocessing), onnx_predict(classifier))


def open_torch(model: ModelInfo, checkpoint: Path | None) -> Runner:
    if checkpoint is None:
        checkpoint = model.source_checkpoint()
        if checkpoint is None:
            raise Unavailable("no checkpoint: pass --checkpoint PATH")
        if not checkpoint.is_file():
            raise Unavailable(f"source checkpoint {checkpoint} is gone: pass --checkpoint PATH")
    try:
        from qd.export.checkpoint_source import torch_outputs
        from qd.train.checkpoint import load_checkpoint, model_from_checkpoint
    except ImportError:
        raise Unavailable("torch is not installed (pip install 'quickdraw-edge[train]')") from None
    payload = load_checkpoint(checkpoint)
    if list(payload["classes"]) != list(model.labels):
        raise QDError(f"{checkpoint}: its classes differ from {model.path}'s labels (not this model's checkpoint)")
    network = model_from_checkpoint(payload)
    note = None
    if model.source_sha256 and sha256_file(checkpoint) != model.source_sha256:
        note = "not the checkpoint this ONNX model was exported from"

    temperature = model.classifier.temperature  # as the exported graphs apply it

    def predict(inputs: np.ndarray) -> dict[str, np.ndarray]:
        probabilities, logits = torch_outputs(network, inputs, temperature)
        return {PROBABILITIES: probabilities, LOGITS: logits}

    return Runner(checkpoint, tensor_input(payload["preprocessing"]), predict, note)


def open_coreml(model: ModelInfo, checkpoint: Path | None) -> Runner:
    """qd-export's Core ML classifier: a 28x28 grayscale image in, `classLabel_probs` {label: p} out."""
    if sys.platform != "darwin":
        raise Unavailable("Core ML runs only on macOS")
    path = model.sibling(MODEL_COREML)
    if not path.exists():
        raise Unavailable(f"no {path.name} beside {model.path.name}")
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # coremltools' version chatter
            import coremltools as ct
    except ImportError:
        raise Unavailable("coremltools is not installed (pip install 'quickdraw-edge[export]')") from None
    from PIL import Image

    model.check_member(path)
    input_name, probs_name = coreml_io_names(ct, path)
    mlmodel = ct.models.MLModel(str(path))
    labels = list(model.labels)

    def prepare(bitmaps: np.ndarray) -> list:
        return [Image.fromarray(np.ascontiguousarray(b, dtype=np.uint8).reshape(28, 28)) for b in bitmaps]

    def predict(images: list) -> dict[str, np.ndarray]:
        rows, logits = [], []
        for image in images:  # the package's input shape is fixed at one image
            out = mlmodel.predict({input_name: image})
            rows.append([out[probs_name][name] for name in labels])
            if LOGITS in out:  # packages exported before the open-set rule have no logits
                logits.append(np.asarray(out[LOGITS], dtype=np.float32).reshape(-1))
        outputs = {PROBABILITIES: np.asarray(rows, dtype=np.float32)}
        if len(logits) == len(rows):
            outputs[LOGITS] = np.stack(logits) if logits else np.zeros((0, len(labels)), np.float32)
        return outputs

    return Runner(path, prepare, predict)


def coreml_io_names(ct, path: Path) -> tuple[str, str]:
    """(image input name, probabilities output name) of a Core ML classifier package."""
    with contextlib.redirect_stderr(io.StringIO()):
        description = ct.utils.load_spec(str(path)).description
    if len(description.input) != 1 or not description.predictedProbabilitiesName:
        raise QDError(f"{path}: not a one-input Core ML classifier with class probabilities")
    return description.input[0].name, description.predictedProbabilitiesName


def _backends() -> dict[str, Callable[[ModelInfo, Path | None], Runner]]:
    """name -> opener: each export format whose row names one (qd.export.formats), and the checkpoint
    in torch. The order is the default order (the ONNX files, the checkpoint, then the rest), and the
    first that runs is the reference."""
    files = {f.name: f.evaluated_by for f in FORMATS.values() if f.evaluated_by}
    onnx = {name: opener for name, opener in files.items() if FORMATS[name].filename.endswith(".onnx")}
    return {**onnx, "torch": open_torch, **files}


BACKENDS = _backends()


def parse_backends(values: list[str] | None) -> list[str]:
    """`--backend onnx,torch --backend coreml` -> ['onnx', 'torch', 'coreml'] (checked, de-duplicated)."""
    if not values:
        return list(BACKENDS)
    names: list[str] = []
    for value in values:
        for name in (v.strip().lower() for v in value.split(",")):
            if not name:
                continue
            if name not in BACKENDS:
                raise QDError(f"unknown backend {name!r} (choose from {', '.join(BACKENDS)})")
            if name not in names:
                names.append(name)
    if not names:
        raise QDError("--backend names no backend")
    return names


@dataclass
class BackendRun:
    name: str
    file: Path | None = None
    size_bytes: int | None = None
    skipped: str | None = None              # the reason, when it did not run
    note: str | None = None
    outputs: dict[str, np.ndarray] | None = None  # on the held-out drawings: probabilities, logits if it has them
    images_per_s: float | None = None       # at batch BENCH_BATCH
    p50_ms: float | None = None             # single-image latency
    runner: Runner | None = None            # to classify more drawings (the --unknown ones)
    unknown_outputs: dict[str, np.ndarray] | None = None  # on the --unknown drawings
    negative_outputs: dict[str, dict[str, np.ndarray]] | None = None  # per split ("val", "test"): on the held-out
                                                                     # negatives the model was trained with

    @property
    def ran(self) -> bool:
        return self.outputs is not None

    @property
    def probabilities(self) -> np.ndarray | None:
        return None if self.outputs is None else self.outputs[PROBABILITIES]

    @property
    def logits(self) -> np.ndarray | None:
        return None if self.outputs is None else self.outputs.get(LOGITS)


def run_backend(name: str, model: ModelInfo, checkpoint: Path | None, bitmaps: np.ndarray,
                measure_speed: bool = True, progress=None) -> BackendRun:
    """`progress`: a qd.command.ProgressBar advanced batch by batch."""
    try:
        runner = BACKENDS[name](model, checkpoint)
    except (Unavailable, QDError) as why:  # a broken int8 file or checkpoint must not sink the other backends
        return BackendRun(name, skipped=str(why))
    run = BackendRun(name, runner.file, path_size(runner.file), note=runner.note, runner=runner)
    run.outputs = predict_all(runner, bitmaps, advance=progress.advance if progress else None)
    if len(run.probabilities) and run.probabilities.shape[1] != len(model.labels):
        raise QDError(f"{runner.file}: gives {run.probabilities.shape[1]} classes, the model has {len(model.labels)} labels")
    if measure_speed:
        if progress is not None:
            progress.step(f"{name}: measuring speed")
        run.images_per_s, run.p50_ms = measure(runner, bitmaps)
    return run


def predict_all(runner: Runner, bitmaps: np.ndarray, batch_size: int = EVAL_BATCH,
                advance=None) -> dict[str, np.ndarray]:
    """The backend's outputs on every drawing, by qd.infer's batch loop; a drawing it cannot classify
    (an error, NaN or infinite outputs) is refused in one line."""
    outputs, failures = run_batched(lambda rows: runner.predict(runner.prepare(rows)), bitmaps, batch_size, advance)
    if failures:
        raise QDError(f"{runner.file}: held-out drawing {failures[0]}")
    return outputs


def measure(runner: Runner, bitmaps: np.ndarray, min_seconds: float = 0.5) -> tuple[float, float]:
    """(images/s on full batches of BENCH_BATCH, median single-image latency in ms), by qd.infer's
    call_seconds. Drawings are repeated to fill a batch when there are fewer; each figure is the
    median of repeated timed calls after one warm-up call, so one noisy call on a shared machine
    does not decide it."""
    reps = int(np.ceil(BENCH_BATCH / len(bitmaps)))
    batch = runner.prepare(np.tile(bitmaps, (reps, 1))[:BENCH_BATCH])
    singles = itertools.cycle([runner.prepare(bitmaps[i : i + 1]) for i in range(min(len(bitmaps), 64))])
    batch_seconds = call_seconds({"batch": lambda: runner.predict(batch)}, min_rounds=3, min_seconds=min_seconds)
    single_seconds = call_seconds({"single": lambda: runner.predict(next(singles))}, min_rounds=20,
                                  min_seconds=min_seconds / 2)
    return BENCH_BATCH / batch_seconds["batch"], 1000.0 * single_seconds["single"]
