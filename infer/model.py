"""An exported quickdraw-edge model, run with onnxruntime: the one session, the one batch loop.

Everything that runs an exported ONNX model goes through here: qd-infer, qd.Classifier, the
Ray workers, the canvas model qd-demo checks, qd-eval's ONNX backends and qd-export's checks.
`open_session` is the one place an onnxruntime session is opened; `BatchRunner` the one loop
that runs a model over batches (a batch onnxruntime cannot run is split down to the drawings
that fail, a row with NaN or infinite outputs is a failure); `call_seconds` the one speed
measurement (qd-export's int8 check, qd-eval's speed columns).

Labels, preprocessing, temperature and open-set rule come from the model's metadata_props
(docs/contracts.md), parsed as data and validated: a model that is not ONNX, lacks the labels,
whose label count differs from its output width, or whose open-set metadata is malformed is
refused with one line. A model exported without an open-set rule still works; it just cannot
flag unknowns.

Calibration and the open-set rule, as qd-export writes them (metadata names in qd.data.contract):

  qd.temperature  a JSON number T > 0: the graph's "probabilities" are softmax(logits / T)
                  (temperature scaling fitted on the validation split; "logits" stay raw)
  qd.open_set     a JSON object {"rule": ..., "threshold": x, "kept": share, "validation": {...}}:
                  a drawing is unknown when SCORES[rule] of its outputs is below `threshold`;
                  `kept` is the share of known validation drawings the threshold keeps

A score is higher for drawings that look like the known classes. SCORES is the one place the
rules are written; qd-export, qd-infer, qd-eval read them from here and the browser demo's
infer/web/openset.js mirrors them (tests/test_demo.py checks it does).

A canvas model (qd-export's onnx-canvas, model.canvas.onnx; docs/canvas.md):
  input  "canvas"         float32 (1, 1, H, W), grey levels 0-255, dark ink on a light
                          background (light ink on dark is detected too), H and W from
                          MIN_CANVAS_SIDE to MAX_CANVAS_SIDE
  output "probabilities"  (1, C) calibrated; all zero for a blank canvas
         "logits"         (1, C) raw; all BLANK_LOGIT for a blank canvas (below any
                          open-set threshold: a blank canvas reads as unknown)
         "bitmap"         (1, 1, 28, 28) 0-255, ink high: what the network saw
  metadata: every model's qd.* entries plus META_CANVAS (the limits above, as JSON).
Its preprocessing is qd.data.images without step 5 (uneven lighting): a clean canvas needs
none; photos and scans belong to qd-infer's full preprocessing.

numpy and onnxruntime only (onnxruntime loads with the first session): no torch.
"""

from __future__ import annotations

import json
import math
import os
import queue
import statistics
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from qd.command import QDError, describe_unexpected, first_line
from qd.data.bitmaps import check_labels
from qd.data.contract import (BITMAP, BLANK_LOGIT, CANVAS_INPUT, CANVAS_OUTPUTS, DEFAULT_KEPT, INPUT, LOGITS,
                              MAX_CANVAS_SIDE, MAX_MODEL_BYTES, MAX_MODEL_NODES, MAX_RUN_BYTES, MAX_THREADS,
                              META_CANVAS, META_FORMAT, META_LABELS, META_OPEN_SET, META_PRECISION, META_PREPROCESSING,
                              META_TEMPERATURE, MIN_CANVAS_SIDE,
                              MODEL_CANVAS_ONNX, MODEL_FORMAT, MODEL_ONNX, PROBABILITIES, REQUIRED_KEYS,
                              bitmaps_to_input, check_preprocessing, exports_dir)
from qd.files import read_regular

from . import DEFAULT_BATCH_SIZE

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")  # qd-train writes these; a model comes from qd-export


# ----------------------------------------------------------------------------- calibration and the open-set rule

def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float32) / np.float32(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class Score:
    """A familiarity score of one graph output, (N, C) -> (N,), higher = more like the known classes."""

    name: str
    output: str
    fn: Callable[[np.ndarray], np.ndarray]
    description: str

    def __call__(self, values: np.ndarray) -> np.ndarray:
        return self.fn(np.asarray(values, dtype=np.float32))


def _logsumexp(z: np.ndarray) -> np.ndarray:
    top = z.max(axis=1)
    return top + np.log(np.exp(z - top[:, None]).sum(axis=1))


SCORES: dict[str, Score] = {s.name: s for s in (
    Score("max_probability", PROBABILITIES, lambda p: p.max(axis=1),
          "the top (calibrated) probability"),
    Score("max_logit", LOGITS, lambda z: z.max(axis=1), "the largest logit"),
    Score("energy", LOGITS, _logsumexp, "minus the energy: logsumexp of the logits (Liu et al., 2020)"),
)}


@dataclass(frozen=True)
class OpenSetRule:
    """'unknown' when the score of a drawing is below the threshold."""

    rule: str
    threshold: float
    kept: float = DEFAULT_KEPT           # share of known validation drawings kept at export
    validation: dict | None = None       # what the threshold was fitted on (drawings, measured share kept)

    @property
    def score(self) -> Score:
        return SCORES[self.rule]

    @property
    def output(self) -> str:
        return self.score.output

    def with_threshold(self, threshold: float) -> "OpenSetRule":
        return OpenSetRule(self.rule, check_threshold(threshold, "--unknown-threshold"), self.kept, self.validation)

    def scores(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        return self.score(outputs[self.output])

    def unknown(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        return self.scores(outputs) < self.threshold

    def to_json(self) -> str:
        record = {"rule": self.rule, "threshold": self.threshold, "kept": self.kept}
        if self.validation is not None:
            record["validation"] = self.validation
        return json.dumps(record)


def finite_number(value: object) -> float | None:
    """`value` as a float if it is a JSON number (not a bool) that is a finite float, else None:
    the one test of every number read from a model's metadata (a 401-digit integer is no float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def check_threshold(value, what: str) -> float:
    number = finite_number(value)
    if number is None:
        raise QDError(f"{what} must be a finite number, got {str(value)[:40]!r}")
    return number


def parse_temperature(path: Path, meta: dict[str, str]) -> float:
    """qd.temperature, or 1.0 for models exported before calibration existed."""
    raw = meta.get(META_TEMPERATURE)
    if raw is None:
        return 1.0
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        value = raw
    number = finite_number(value)
    if number is None or number <= 0:
        raise QDError(f"{path}: model metadata {META_TEMPERATURE} must be a finite number above 0, got {raw[:40]!r}")
    return number


def parse_open_set(path: Path, meta: dict[str, str]) -> OpenSetRule | None:
    """The model's open-set rule, None for models exported without one; malformed ones are refused."""
    raw = meta.get(META_OPEN_SET)
    if raw is None:
        return None

    def bad(why: str) -> QDError:
        return QDError(f"{path}: model metadata {META_OPEN_SET} {why}")

    try:
        record = json.loads(raw)
    except (ValueError, RecursionError):
        raise bad("is not valid JSON") from None
    if not isinstance(record, dict):
        raise bad("must be a JSON object with rule and threshold")
    rule = record.get("rule")
    if not isinstance(rule, str) or rule not in SCORES:
        shown = repr(rule)[:40]
        raise bad(f"names rule {shown}, this version knows {', '.join(SCORES)}")
    threshold, kept = finite_number(record.get("threshold")), finite_number(record.get("kept", DEFAULT_KEPT))
    if threshold is None:
        raise bad(f"threshold must be a finite number, got {str(record.get('threshold'))[:40]!r}")
    if kept is None or not 0 < kept < 1:
        raise bad(f"kept must be a share between 0 and 1, got {str(record.get('kept'))[:40]!r}")
    validation = record.get("validation")
    return OpenSetRule(rule, threshold, kept, validation if isinstance(validation, dict) else None)


# ----------------------------------------------------------------------------- the model

# Every operator the exporters write (qd.export: fp32 and int8 QDQ graphs of every architecture at
# --opset 13 to 23, canvas graphs at 18 to 23), plus Flatten and Resize (hand-made test models). A model
# with any other one (Loop, Scan and If: unbounded runs; a custom domain's kernels) is refused before
# onnxruntime builds it.
MODEL_OPS = frozenset({
    "Add", "And", "Cast", "Ceil", "Clip", "Constant", "Conv", "CumSum", "DequantizeLinear", "Div", "Equal",
    "Expand", "Flatten", "Floor", "Gather", "Gemm", "GlobalAveragePool", "Greater", "GreaterOrEqual", "Identity",
    "Less", "LessOrEqual", "MatMul", "Max", "MaxPool", "Min", "Mul", "Or", "Pad", "QuantizeLinear", "ReduceMax",
    "ReduceMean", "ReduceSum", "Relu", "Reshape", "Resize", "ScatterElements", "Shape", "Slice", "Softmax",
    "Squeeze", "Sub", "Transpose", "Where",
})
DEFAULT_DOMAINS = ("", "ai.onnx")
SILENT = 4  # onnxruntime's FATAL: its own log never reaches the terminal (failures come back as exceptions)
STOP_SECONDS = 10.0  # how long an interrupted run may take to notice it was stopped


def read_model_bytes(path: Path) -> bytes:
    """The bytes of the regular file `path`, so a FIFO or a swapped file is never opened by onnxruntime."""
    try:
        return read_regular(path, MAX_MODEL_BYTES, what="model")
    except OSError as exc:
        raise QDError(f"{path}: {exc.strerror or exc}") from None


def open_session(path: Path, threads: int | None = None, model: bytes | None = None,
                 optimization=None) -> "Session":
    """The one onnxruntime session of every tool: the CPU provider, onnxruntime's own log off, `threads`
    intra-op threads (None: onnxruntime's default), `optimization` an ort.GraphOptimizationLevel (None:
    all), its memory within MAX_RUN_BYTES (memory_bounded). `model`: the file's bytes, read already (a Ray
    worker gets them from the driver); `path` then only names the model in messages. The graph is checked
    first (check_graph); a file onnxruntime cannot load is one QDError line."""
    import onnxruntime as ort

    if threads is not None and not 1 <= threads <= MAX_THREADS:
        raise QDError(f"--threads must be 1 to {MAX_THREADS}, got {threads}")
    options = ort.SessionOptions()
    # Not only warnings: onnxruntime logs a failing node's name (the model's text, escape codes and all)
    # straight to fd 2; the same failure reaches us as an exception, told in one escaped line.
    options.log_severity_level = SILENT
    memory_bounded(ort, options)
    if optimization is not None:
        options.graph_optimization_level = optimization
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if model is None:
        model = read_model_bytes(path)
    if model[:4] == b"PK\x03\x04":  # torch saves checkpoints as zip files: whatever the name, the one slip worth a hint
        raise QDError(f"{path}: not an ONNX model; it looks like a torch checkpoint: run qd-export first")
    check_graph(path, model)
    try:
        return Session(ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"]))
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable files
        raise QDError(f"{path}: not a loadable ONNX model ({first_line(exc, 10_000)[:160]})") from None


_MEMORY_LOCK = threading.Lock()
_memory_bounded = False


def memory_bounded(ort, options) -> None:
    """Sessions allocate from one CPU arena per process that holds at most MAX_RUN_BYTES: a graph that
    asks for more (an Expand to gigabytes for one drawing) fails that run, which BatchRunner splits down
    to the drawings that fail, instead of taking the machine's memory."""
    global _memory_bounded
    with _MEMORY_LOCK:
        if not _memory_bounded:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            # kSameAsRequested (1): the arena grows by what a run asks for, never past max_mem
            arena = ort.OrtArenaCfg({"max_mem": MAX_RUN_BYTES, "arena_extend_strategy": 1})
            ort.create_and_register_allocator(info, arena)
            _memory_bounded = True
    options.add_session_config_entry("session.use_env_allocators", "1")


# ----------------------------------------------------------------------------- the graph, before onnxruntime

def check_graph(path: Path, model: bytes) -> None:
    """Refuse a model whose graph is not one qd-export could have written, before onnxruntime builds it:
    an operator outside MODEL_OPS (Loop, Scan, If: runs bounded by the model's own numbers; custom
    domains), a graph attribute (a subgraph), more than MAX_MODEL_NODES nodes, or a tensor whose data
    is in an external file (onnxruntime would read it from the working folder). Read from the protobuf
    wire format directly (ModelProto.graph, GraphProto.node/initializer, NodeProto.op_type/domain/
    attribute): the edge install has no onnx package."""

    def refuse(why: str) -> QDError:
        return QDError(f"{path}: refused: {why} (qd-export never writes that)")

    try:
        graphs = [value for number, value in _fields(model) if number == 7]
        nodes = 0
        for graph in graphs:
            for number, value in _fields(graph):
                if number in (5, 15):  # initializer, sparse_initializer
                    _check_tensor(value, refuse, sparse=number == 15)
                if number != 1:
                    continue
                nodes += 1
                if nodes > MAX_MODEL_NODES:
                    raise refuse(f"the graph has more than {MAX_MODEL_NODES:,} nodes")
                _check_node(value, refuse)
    except _Malformed as exc:
        raise QDError(f"{path}: not a loadable ONNX model ({exc})") from None


class _Malformed(Exception):
    pass


def _check_node(node: memoryview, refuse) -> None:
    op, domain, attributes = "", "", []
    for number, value in _fields(node):
        if number == 4:
            op = _text(value)
        elif number == 7:
            domain = _text(value)
        elif number == 5:
            attributes.append(value)
    if domain not in DEFAULT_DOMAINS or op not in MODEL_OPS:
        where = f" of domain {domain[:40]!r}" if domain not in DEFAULT_DOMAINS else ""
        raise refuse(f"operator {op[:40]!r}{where}")
    for attribute in attributes:
        for number, value in _fields(attribute):
            if number in (6, 11):  # g, graphs
                raise refuse(f"a subgraph in operator {op!r}")
            if number in (5, 10, 22, 23):  # t, tensors (a Constant's value), sparse_tensor(s)
                _check_tensor(value, refuse, sparse=number >= 22)


def _check_tensor(tensor: memoryview, refuse, sparse: bool = False) -> None:
    """A TensorProto, or a SparseTensorProto (its values and indices are TensorProtos)."""
    for number, value in _fields(tensor):
        if sparse and number in (1, 2) and isinstance(value, memoryview):
            _check_tensor(value, refuse)
        elif not sparse and number == 14 and value == 1:  # data_location: EXTERNAL
            raise refuse("a tensor stored in an external file")


def _text(value) -> str:
    if not isinstance(value, memoryview):
        raise _Malformed("a name is not a string")
    return bytes(value).decode("utf-8", "replace")


def _fields(message):
    """(field number, value) of a protobuf message: ints for varints, memoryviews for length-delimited
    fields (no copy), fixed-width fields skipped."""
    data = memoryview(message)
    end, at = len(data), 0
    while at < end:
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _varint(data, at)
            yield number, value
        elif wire == 2:
            size, at = _varint(data, at)
            if at + size > end:
                raise _Malformed("a field runs past the end of the file")
            yield number, data[at:at + size]
            at += size
        elif wire in (1, 5):
            at += 8 if wire == 1 else 4
        else:
            raise _Malformed(f"protobuf wire type {wire}")
    if at != end:
        raise _Malformed("a field runs past the end of the file")


def _varint(data: memoryview, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise _Malformed("a truncated or overlong number")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


# ----------------------------------------------------------------------------- runs that can be stopped

_RUNS: dict[int, object] = {}  # id -> ort.RunOptions of each run in progress in this process
_RUNS_LOCK = threading.Lock()


class Session:
    """An onnxruntime session whose runs end when the command does. A run in the main thread runs in
    a helper thread while the main thread waits, so Ctrl-C and SIGTERM (KeyboardInterrupt, Terminated)
    reach it at once: they stop every run in progress (RunOptions.terminate, which onnxruntime checks
    between nodes) and go on their way. Runs in other threads (BatchRunner's lanes) are stopped by
    the same call."""

    def __init__(self, session):
        self.session = session

    def get_inputs(self):
        return self.session.get_inputs()

    def get_outputs(self):
        return self.session.get_outputs()

    def get_modelmeta(self):
        return self.session.get_modelmeta()

    def run(self, names, feeds) -> list:
        import onnxruntime as ort

        options = ort.RunOptions()
        options.log_severity_level = SILENT
        with _RUNS_LOCK:
            _RUNS[id(options)] = options
        try:
            if threading.current_thread() is not threading.main_thread():
                return self.session.run(names, feeds, options)
            return _HELPER.call(lambda: self.session.run(names, feeds, options))
        finally:
            with _RUNS_LOCK:
                _RUNS.pop(id(options), None)


def stop_runs() -> None:
    """End every onnxruntime run in progress in this process (each raises in its thread)."""
    with _RUNS_LOCK:
        for options in _RUNS.values():
            options.terminate = True


class _Helper:
    """The one thread that runs the main thread's onnxruntime runs (started on first use, and kept: a
    thread per run cost a third of a batch-of-one run) while the main thread waits for it."""

    def __init__(self):
        self.tasks: queue.SimpleQueue = queue.SimpleQueue()
        self.thread: threading.Thread | None = None

    def call(self, run: Callable[[], list]) -> list:
        if self.thread is None:
            self.thread = threading.Thread(target=self._serve, name="qd-onnxruntime", daemon=True)
            self.thread.start()
        done, outcome = threading.Event(), []
        self.tasks.put((run, done, outcome))
        try:
            done.wait()  # a signal's exception (Ctrl-C, SIGTERM) is raised here, in the main thread
        except BaseException:
            stop_runs()
            done.wait(STOP_SECONDS)
            raise
        ok, value = outcome[0]
        if not ok:
            raise value
        return value

    def _serve(self) -> None:
        while True:
            run, done, outcome = self.tasks.get()
            try:
                outcome.append((True, run()))
            except BaseException as exc:  # handed to the waiting thread
                outcome.append((False, exc))
            done.set()


_HELPER = _Helper()


def session_outputs(session, names: tuple[str, ...] | list[str], input_name: str = INPUT
                    ) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """inputs -> {name: output} of one plain session run (qd-export's checks, on its own tensors)."""
    names = list(names)
    return lambda inputs: dict(zip(names, session.run(names, {input_name: inputs})))


def newest_export(root: str | os.PathLike | None = None) -> Path:
    """The newest (mtime) <root>/exports/*/model.onnx: qd-infer's default model."""
    exports = Path(root) / exports_dir().name if root is not None else exports_dir()
    found = []
    for path in exports.glob(f"*/{MODEL_ONNX}"):
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
        path = path / MODEL_ONNX
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
        self.session = open_session(self.path, threads, model_bytes)
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

    def bitmap_outputs(self, bitmaps: np.ndarray) -> dict[str, np.ndarray]:
        """outputs() of uint8 ink-high (B, 784) or (B, 28, 28) bitmaps, preprocessed as the metadata says."""
        return self.outputs(bitmaps_to_input(bitmaps, self.preprocessing))

    def predict(self, bitmaps: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE) -> Predictions:
        """uint8 ink-high (N, 784) or (N, 28, 28) bitmaps -> calibrated probabilities and the unknown answer
        (a drawing the model cannot classify has NaN probabilities and is not unknown)."""
        bitmaps = np.asarray(bitmaps)
        outputs, failures = run_batched(self.bitmap_outputs, bitmaps, batch_size)
        if not outputs:
            if failures:
                raise QDError(f"{self.path}: drawing {failures[0]}")
            outputs = {PROBABILITIES: np.empty((0, len(self.labels)), np.float32)}
            if self.open_set is not None:
                outputs[self.open_set.output] = outputs[PROBABILITIES]
        return Predictions(outputs[PROBABILITIES], self.unknown(outputs))


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
    if not isinstance(spec, dict) or any(k not in spec for k in REQUIRED_KEYS):
        raise QDError(f"{path}: model metadata qd.preprocessing must be a JSON object with "
                      f"{', '.join(REQUIRED_KEYS)}")
    try:
        spec = check_preprocessing(spec)
    except ValueError as exc:
        raise QDError(f"{path}: model metadata qd.{exc} (qd-infer renders 28px ink-high drawings)") from None
    if spec.get("polarity", "ink-high") != "ink-high":
        raise QDError(f"{path}: model expects polarity {spec.get('polarity')!r}; qd-infer produces 'ink-high'")
    return spec


def top_k(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the k largest probabilities per row, largest first (ties: lower index).
    The one ranking every tool uses: qd-infer's top-k, qd-eval's top-k accuracy and MAP@k."""
    probs = np.asarray(probs)
    k = max(1, min(k, probs.shape[1]))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(probs, order, axis=1)


# ----------------------------------------------------------------------------- the canvas model

def canvas_metadata() -> dict[str, str]:
    """The META_CANVAS entry every canvas model carries."""
    return {META_CANVAS: json.dumps({"input": CANVAS_INPUT, "min_side": MIN_CANVAS_SIDE, "max_side": MAX_CANVAS_SIDE,
                                    "values": "0-255 grey levels, dark ink on a light background",
                                    "blank": {"probabilities": 0.0, "logits": BLANK_LOGIT}})}


def check_canvas(canvas: np.ndarray, name: str = "canvas") -> np.ndarray:
    """A (H, W) or (1, 1, H, W) grey canvas -> float32 (1, 1, H, W); a wrong one is refused in one line."""
    array = np.asarray(canvas)
    if array.ndim == 4 and array.shape[:2] == (1, 1):
        array = array[0, 0]
    if array.ndim != 2:
        raise QDError(f"{name}: expected a grey canvas (H, W) or (1, 1, H, W), got shape {array.shape}")
    height, width = array.shape
    if min(height, width) < MIN_CANVAS_SIDE or max(height, width) > MAX_CANVAS_SIDE:
        raise QDError(f"{name}: canvas is {width}x{height} px; canvas models take {MIN_CANVAS_SIDE} to "
                      f"{MAX_CANVAS_SIDE} px a side (scale it first)")
    if array.dtype.kind not in "uif" or (array.dtype.kind == "f" and not np.isfinite(array).all()):
        raise QDError(f"{name}: canvas must hold finite numbers (grey levels 0-255), got {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.float32)[None, None]


@dataclass
class CanvasAnswer:
    probabilities: np.ndarray   # (C,), all zero when blank
    unknown: bool | None        # the open-set rule's answer (None: the model has no rule)
    blank: bool                 # no ink found on the canvas
    bitmap: np.ndarray          # (28, 28) uint8, ink high: what the network saw


class CanvasModel:
    """model.canvas.onnx with its labels and open-set rule from metadata."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        self.path = Path(path)
        if self.path.is_dir():
            self.path = self.path / MODEL_CANVAS_ONNX
        if not self.path.is_file():
            raise QDError(f"{self.path}: canvas model file does not exist")
        self.session = open_session(self.path, threads)
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        self.labels = _parse_labels(self.path, self.metadata)
        self.precision = parse_precision(self.metadata)
        self.temperature = parse_temperature(self.path, self.metadata)
        self.open_set = parse_open_set(self.path, self.metadata)
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != [CANVAS_INPUT] or outputs != list(CANVAS_OUTPUTS):
            raise QDError(f"{self.path}: not a canvas model (expected {CANVAS_INPUT} -> {', '.join(CANVAS_OUTPUTS)}, "
                          f"found {', '.join(inputs)} -> {', '.join(outputs)})")

    def outputs(self, canvas: np.ndarray, name: str = "canvas") -> dict[str, np.ndarray]:
        return dict(zip(CANVAS_OUTPUTS, self.session.run(list(CANVAS_OUTPUTS), {CANVAS_INPUT: check_canvas(canvas, name)})))

    def classify(self, canvas: np.ndarray, name: str = "canvas") -> CanvasAnswer:
        out = self.outputs(canvas, name)
        probs = out[PROBABILITIES][0]
        blank = not probs.any()
        unknown = None if self.open_set is None else bool(self.open_set.unknown(out)[0])
        return CanvasAnswer(probs, unknown, blank, out[BITMAP][0, 0].astype(np.uint8))


# ----------------------------------------------------------------------------- the batch loop

class BatchRunner:
    """Runs `compute` on batches and hands each batch's rows to `write` in input order; a batch
    onnxruntime cannot run (its allocator at a huge batch, a kernel failing on some input) is split in
    halves and retried, down to single drawings, so one bad drawing is one failure and the rest of the
    batch goes on; a row with a NaN or infinite output is a failure too. After a split, later batches
    are cut to the size that last worked.

    `compute(rows) -> {output name: (B, ...) array}`; `write(names, outputs)` gets a run of rows that
    worked; `report_failure(message, name)` one that did not. `batch_size` cuts what run() is given
    (None: as given). With `lanes` > 1, that many batches run at once (threads: onnxruntime releases
    the GIL), each on its own share of the session's threads; results are still taken, checked and
    written in order. Call drain() before reporting anything that must come after the batches given
    so far, and close() at the end."""

    def __init__(self, compute: Callable[[np.ndarray], dict[str, np.ndarray]], write, report_failure,
                 batch_size: int | None = None, lanes: int = 1):
        self.compute, self.write, self.report_failure = compute, write, report_failure
        self.batch_size = batch_size
        self.limit: int | None = None  # batch size known to work, once one has failed
        self.classified = self.failed = 0
        self.lanes = lanes
        self._pool = ThreadPoolExecutor(lanes, thread_name_prefix="qd-run") if lanes > 1 else None
        self._running: deque = deque()  # (names, rows, future of outputs), oldest first

    def run(self, names, rows) -> None:
        """`names`: a sequence as long as `rows` (a list of strings, a range)."""
        step = self.limit or self.batch_size or len(names)
        for start in range(0, len(names), step):
            part_names, part = names[start:start + step], rows[start:start + step]
            if self._pool is None:
                self._run(part_names, part)
                continue
            self._running.append((part_names, part, self._pool.submit(self.compute, part)))
            # One batch queued beyond those running keeps every lane busy while this thread reads.
            while len(self._running) > self.lanes:
                self._take_oldest()

    def drain(self) -> None:
        """Write every batch given so far."""
        while self._running:
            self._take_oldest()

    def close(self) -> None:
        if self._pool is not None:
            for _, _, future in self._running:
                future.cancel()
            self._running.clear()
            self._pool.shutdown(wait=True)

    def fail(self, message: str, name) -> None:
        self.report_failure(message, name)
        self.failed += 1

    def _take_oldest(self) -> None:
        names, rows, future = self._running.popleft()
        try:
            outputs = future.result()
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM while a lane runs: every run ends now
            stop_runs()
            raise
        except QDError:
            raise  # the model itself is wrong (output shape): every batch would fail alike
        except Exception:
            self._run(names, rows)  # again, in this thread, splitting as it must
            return
        self._check_and_write(names, outputs)

    def _run(self, names, rows) -> None:
        try:
            outputs = self.compute(rows)
        except QDError:
            raise  # the model itself is wrong (output shape): every batch would fail alike
        except Exception as exc:
            if len(names) == 1:
                self.fail(f"{names[0]}: not classified (onnxruntime: {describe_unexpected(exc)})", names[0])
                return
            half = len(names) // 2
            self.limit = half if self.limit is None else min(self.limit, half)
            self._run(names[:half], rows[:half])
            self._run(names[half:], rows[half:])
            return
        self._check_and_write(names, outputs)

    def _check_and_write(self, names, outputs: dict[str, np.ndarray]) -> None:
        finite = np.all([np.isfinite(v.reshape(len(v), -1)).all(axis=1) for v in outputs.values()], axis=0)
        if finite.all():
            self._write(names, outputs)
            return
        # Runs of finite rows and of failures, in order: records stay in input order.
        edges = [0, *(np.flatnonzero(np.diff(finite.astype(np.int8))) + 1).tolist(), len(names)]
        for lo, hi in zip(edges[:-1], edges[1:]):
            if finite[lo]:
                self._write(names[lo:hi], {name: value[lo:hi] for name, value in outputs.items()})
                continue
            for i in range(lo, hi):
                self.fail(f"{names[i]}: not classified (the model gave NaN or infinite probabilities)", names[i])

    def _write(self, names, outputs: dict[str, np.ndarray]) -> None:
        if len(names):
            self.write(names, outputs)
            self.classified += len(names)


def run_batched(compute: Callable[[np.ndarray], dict[str, np.ndarray]], rows, batch_size: int,
                advance: Callable[[int], None] | None = None) -> tuple[dict[str, np.ndarray], list[str]]:
    """Every row through `compute`, `batch_size` at a time, by BatchRunner: each output for all rows
    (float32; NaN in the rows that failed; no output at all when no row ran) and the failures'
    messages ("<row index>: not classified (...)"). `advance(n)` after each batch (a progress bar)."""
    done: list[tuple[int, dict[str, np.ndarray]]] = []
    failures: list[str] = []

    def write(names: range, outputs: dict[str, np.ndarray]) -> None:
        done.append((names[0], outputs))
        if advance is not None:
            advance(len(names))

    def report_failure(message: str, index: int) -> None:
        failures.append(message)
        if advance is not None:
            advance(1)

    runner = BatchRunner(compute, write, report_failure, batch_size)
    try:
        runner.run(range(len(rows)), rows)
    finally:
        runner.close()
    if not done:
        return {}, failures
    outputs = {name: np.full((len(rows), *value.shape[1:]), np.nan, np.float32) for name, value in done[0][1].items()}
    for start, part in done:
        for name, value in part.items():
            outputs[name][start:start + len(value)] = value
    return outputs, failures


def call_seconds(calls: dict[str, Callable[[], object]], min_rounds: int, min_seconds: float = 0.0,
                 max_rounds: int = 1000) -> dict[str, float]:
    """The median seconds of each call, measured side by side: after one warm-up call each (first-call
    allocations are not the steady state), rounds call each in turn, so background load on a shared
    machine hits all of them alike, for at least `min_rounds` rounds and `min_seconds`."""
    for call in calls.values():
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    started = time.perf_counter()
    rounds = 0
    while rounds < max_rounds and (rounds < min_rounds or time.perf_counter() - started < min_seconds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
        rounds += 1
    return {name: statistics.median(t) for name, t in times.items()}
