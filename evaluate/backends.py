"""The runtimes a model can be evaluated with, in one table.

Each backend opens its own file (found beside the reference model.onnx, or the
source checkpoint for torch) and turns the held-out bitmaps into its outputs:
calibrated probabilities (softmax(logits / T), T from the model's metadata), and the
raw logits where the backend has them (the open-set rule and the "before calibration"
figures read them). One that cannot run here is skipped with a reason rather than
failing the report. torch and coremltools are imported only inside their backends.
"""

from __future__ import annotations

import contextlib
import io
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from qd.command import QDError
from qd.data.contract import META_SOURCE_SHA256, bitmaps_to_input
from qd.export.formats import FORMATS
from qd.files import path_size, sha256_file
from qd.infer.model import OnnxClassifier
from qd.infer.openset import LOGITS, PROBABILITIES

from .model_info import COREML_SUFFIX, INT8_SUFFIX, ModelInfo

BENCH_BATCH = 256
EVAL_BATCH = 256


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
    path = model.sibling(INT8_SUFFIX)
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
    path = model.sibling(COREML_SUFFIX)
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
    chunks = []
    for i in range(0, len(bitmaps), batch_size):
        chunks.append(runner.predict(runner.prepare(bitmaps[i : i + batch_size])))
        if advance is not None:
            advance(len(chunks[-1][PROBABILITIES]))
    return {name: np.concatenate([c[name] for c in chunks]).astype(np.float32, copy=False) for name in chunks[0]}


def measure(runner: Runner, bitmaps: np.ndarray, min_seconds: float = 0.5) -> tuple[float, float]:
    """(images/s on full batches of BENCH_BATCH, median single-image latency in ms).

    Drawings are repeated to fill a batch when there are fewer; each figure is the
    median of repeated timed calls after one warm-up call, so one noisy call on a
    shared machine does not decide it.
    """
    reps = int(np.ceil(BENCH_BATCH / len(bitmaps)))
    batch = np.tile(bitmaps, (reps, 1))[:BENCH_BATCH]
    batch_times = _timed_calls(runner.predict, [runner.prepare(batch)], min_calls=3, min_seconds=min_seconds)
    singles = [runner.prepare(batch[i : i + 1]) for i in range(min(len(bitmaps), 64))]
    single_times = _timed_calls(runner.predict, singles, min_calls=20, min_seconds=min_seconds / 2)
    return BENCH_BATCH / statistics.median(batch_times), 1000.0 * statistics.median(single_times)


def _timed_calls(predict, inputs: list[np.ndarray], min_calls: int, min_seconds: float, max_calls: int = 1000) -> list[float]:
    predict(inputs[0])  # warm-up: first-call allocations are not the steady state
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < max_calls and (len(times) < min_calls or time.perf_counter() - started < min_seconds):
        x = inputs[len(times) % len(inputs)]
        t0 = time.perf_counter()
        predict(x)
        times.append(time.perf_counter() - t0)
    return times
