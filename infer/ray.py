"""`qd-infer INPUT... --ray [ADDRESS] --out DIR` and `qd.infer.ray.classify(...)`: batch inference on Ray Data.

The driver (this module) checks the model and the output folder, finds the inputs as plain
qd-infer does (qd.infer.inputs: the same order, skips and failures), cuts them into units of a
few thousand drawings' worth (a big .npy into row ranges) and hands them to Ray Data as a dataset.
`map_batches` runs Classify in a pool of actors, one onnxruntime session each;
Ray Data's file writer (write tasks after the actors) writes each task's records to one file in a
temporary folder beside DIR, which is renamed to DIR once every task has finished (docs/ray.md).

What each worker runs (Classify, below): one actor holds one onnxruntime session, built once from
the model bytes the driver read and put in Ray's object store. Each call classifies one unit (a
list of plan items the driver encoded: image files, .npy files or row ranges of one, .ndjson files,
failures found while planning) through the path plain qd-infer takes: qd.infer.inputs reads it,
qd.infer.run.classify_plan batches and classifies it, JsonLinesWriter formats its records. The
records are therefore the lines `qd-infer --json` writes, failures included; for Parquet those
lines are parsed with `record_schema()`.

A file on another filesystem (s3://, gs://, hdfs://, file://: whatever pyarrow.fs opens) is copied
to a local temporary folder first and read by the same readers; its records name it by its URI.

Ray and pyarrow are imported inside functions only, so this module loads without them (qd-infer's
command line imports it only for --ray).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from qd.command import ProgressBar, QDError, first_line, reason_of
from qd.data.bitmaps import SUFFIX
from qd.data.contract import MAX_BATCH_SIZE, MAX_THREADS
from qd.data.decode import ImageDecoder

from .inputs import (SUPPORTED_SUFFIXES, DrawingArray, Failure, NpyRows, Plan, discover, nothing_found,
                     unsupported_type)
from .model import OnnxClassifier, read_model_bytes, resolve_model_path
from .run import JsonLinesWriter, Summary, classify_plan, note_missing_open_set, printable

LOCAL = "local"  # start a Ray for the run, on this machine (loopback only)
AUTO = "auto"  # the cluster RAY_ADDRESS names, or the one running on this machine
RAY_CLIENT_PORT = 10001
CONNECT_TIMEOUT_S = 5.0
FORMATS = ("json", "parquet")
BATCHES_PER_UNIT = 8  # a unit of .npy rows holds this many --batch-size batches
IMAGES_PER_UNIT = 128  # image files in a unit (decoding one costs far more than reading a row)
BLOCKS_PER_WORKER = 8  # dataset blocks (tasks, output files) per actor, for balance and short retries
INSTALL_HINT = "pip install 'quickdraw-edge[ray]'"
_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
UNIT = "unit"  # the dataset's one column: a JSON-encoded list of plan items
SUFFIXES = {"json": "jsonl", "parquet": "parquet"}  # --format -> output file suffix
FAILURES_REPORTED = 20  # failure lines each written file reports to the driver (for stderr)
COPY_BLOCK = 1 << 20


@dataclass
class RayRun:
    """What a Ray run did: the summary qd-infer prints, where the records went, the first failures."""

    summary: Summary
    out: Path
    files: int
    workers: int
    failures: list[str] = field(default_factory=list)  # the first failure lines (all are records in `out`)


def is_ray_address(text: str) -> bool:
    """local, auto, HOST:PORT (a cluster's GCS) or ray://HOST[:PORT] (Ray Client)."""
    return text in (LOCAL, AUTO) or text.startswith("ray://") or _HOST_PORT.fullmatch(text) is not None


def is_uri(text: str) -> bool:
    return _URI.match(text) is not None


# ----------------------------------------------------------------------------- the run

def classify(inputs, out, address: str | None = None, *, model=None, top: int = 3, batch_size: int = 512,
             format: str = "json", recursive: bool = True, workers: int | None = None, threads: int = 1,
             unknown_threshold: float | None = None, flag_unknown: bool = True, overwrite: bool = False,
             ray_log: RayLog | None = None) -> RayRun:
    """Classify `inputs` (paths or URIs) on Ray into the folder `out`, as qd-infer --json records
    (JSON lines, or Parquet with format="parquet"). `address`: None or "local" starts a Ray for the
    run; "auto", HOST:PORT or ray://HOST:PORT joins a cluster; a Ray this process already
    initialised is used as it is. `workers`: actors (default: the cluster's CPUs / threads);
    `threads`: CPUs and onnxruntime threads per actor. `ray_log`: where what Ray prints goes (qd-infer's),
    None to leave it on this process's stdout and stderr."""

    started = time.perf_counter()
    if format not in FORMATS:
        raise QDError(f"--format must be {' or '.join(FORMATS)}, got {format!r}")
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise QDError(f"--batch-size must be 1 to {MAX_BATCH_SIZE}, got {batch_size}")
    if not 1 <= threads <= MAX_THREADS:
        raise QDError(f"--threads must be 1 to {MAX_THREADS}, got {threads}")
    if workers is not None and workers < 1:
        raise QDError(f"--workers must be at least 1, got {workers}")
    if not inputs:
        raise QDError("no inputs given")
    out = check_out(out, overwrite)
    address = check_address(address)
    model_path = resolve_model_path(model)
    model_bytes = read_model_bytes(model_path)  # workers get these bytes: they never open the path
    classifier = OnnxClassifier(model_path, threads=1, unknown_threshold=unknown_threshold,
                                flag_unknown=flag_unknown, model_bytes=model_bytes)
    top = min(top, classifier.num_classes)
    note_missing_open_set(classifier, flag_unknown)
    units = plan_units([str(i) for i in inputs], recursive, batch_size)
    with ray_log.capture() if ray_log is not None else nullcontext():
        ray = import_ray()
        with connected(ray, address):
            workers = workers or max(1, cluster_cpus(ray) // threads)
            settings = dict(model=ray.put(model_bytes), model_name=str(model_path), threads=threads, top=top,
                            batch_size=batch_size, fmt=format, unknown_threshold=unknown_threshold,
                            flag_unknown=flag_unknown)
            with output_folder(out, overwrite) as partial:
                counts = run_dataset(ray, units, partial, settings, workers, threads, out)
                files = check_files_visible(partial, out, format, counts)
    records = sum(c["records"] for c in counts)
    failed = sum(c["failed"] for c in counts)
    summary = Summary(classified=records - failed, failed=failed, seconds=time.perf_counter() - started,
                      unknown=sum(c["unknown"] for c in counts) if classifier.open_set is not None else None)
    failures = [line for c in counts for line in c["failures"]]
    return RayRun(summary, out, files, workers, failures[:FAILURES_REPORTED])


def run_dataset(ray, units: list[str], folder: Path, settings: dict, workers: int, threads: int,
                out: Path) -> list[dict]:
    """The Ray Data pipeline: units -> actors (read, classify, format) -> one file per task in `folder`
    (the temporary one: `out` names it in messages). The per-file counts of the records written."""

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the driver's stderr is a log while Ray runs (run_cli)
    context.print_on_execution_start = False
    dataset = ray.data.from_items([{UNIT: unit} for unit in units],
                                  override_num_blocks=min(len(units), BLOCKS_PER_WORKER * workers))
    # Actors start as the cluster has room, and the pool grows to `workers` (an autoscaling
    # cluster adds nodes); each actor's CPUs are its onnxruntime threads, so nothing oversubscribes.
    start_with = max(1, min(workers, cluster_cpus(ray) // threads))
    classified = dataset.map_batches(Classify, fn_constructor_kwargs=settings, batch_size=1, batch_format="numpy",
                                     num_cpus=threads,
                                     compute=ray.data.ActorPoolStrategy(min_size=start_with, max_size=workers))
    sink = record_sink(str(folder), settings["fmt"])
    try:
        # Writing takes no CPU of its own (so it never queues behind the actors holding them all),
        # at most one file at a time per actor.
        classified.write_datasink(sink, ray_remote_args={"num_cpus": 0}, concurrency=workers)
    except Exception as exc:  # Ray wraps what failed in a worker; say it in one line
        raise QDError(describe_ray_failure(exc, out)) from None
    return list(sink.result.write_returns) if sink.result is not None else []


def describe_ray_failure(exc: BaseException, folder: Path | None = None) -> str:
    """One line for a failed Ray run: the QDError a worker raised, an OS error (a full disk while the
    workers write into `folder`) by its file, else the innermost cause."""
    from qd.command import describe_unexpected

    for _ in range(20):
        worker_error = getattr(exc, "cause", None)  # ray.exceptions.RayTaskError: what the worker raised
        if worker_error is None and isinstance(exc, QDError):
            return str(exc)
        inner = worker_error or exc.__cause__
        if inner is None:
            break
        exc = inner
    if isinstance(exc, OSError) and exc.errno:  # pyarrow's write errors carry errno, not the file (Ray's
        where = folder or "I/O"                  # retry wrapper puts its own message in `filename`)
        return f"{where}: {os.strerror(exc.errno)} (while the Ray workers wrote the records)"
    return f"the Ray run failed: {describe_unexpected(exc)}"


# ----------------------------------------------------------------------------- inputs -> units

def plan_units(inputs: list[str], recursive: bool, batch_size: int) -> list[str]:
    """Every input in order, cut into units of about BATCHES_PER_UNIT batches of drawings: images
    IMAGES_PER_UNIT to a unit, a big uint8 .npy split into row ranges, each .ndjson file and each
    remote file (URI) a unit of its own (or, for remote images, a share of one), failures where they fall."""
    from qd.data.images import is_image_path


    rows_per_unit = BATCHES_PER_UNIT * batch_size
    image_cost = max(1, rows_per_unit // IMAGES_PER_UNIT)
    units: list[str] = []
    current: list = []
    cost = 0

    def add(item, item_cost: int) -> None:
        nonlocal current, cost
        if current and cost + item_cost > rows_per_unit:
            units.append(encode_unit(current))
            current, cost = [], 0
        current.append(item)
        cost += item_cost

    for item in discover_all(inputs, recursive):
        if isinstance(item, Failure):
            add(item, 0)
            continue
        name = item if isinstance(item, str) else item.name  # a URI, or a local Path
        if is_image_path(name):
            add(item, image_cost)
        elif isinstance(item, str) or not name.lower().endswith(SUFFIX):
            add(item, rows_per_unit)  # a remote .npy or .ndjson, or a local .ndjson: read whole, by one worker
        else:
            try:
                with DrawingArray.open(item) as array:
                    rows, split = array.rows, array.dtype.name == "uint8" and array.rows > rows_per_unit
            except QDError as exc:
                add(Failure(str(exc), str(item)), 0)  # what reading it would say
                continue
            if not split:  # float arrays stay whole: their range is checked over the whole file
                add(item, rows)
                continue
            for start in range(0, rows, rows_per_unit):
                add(NpyRows(item, start, min(rows, start + rows_per_unit)), rows_per_unit)
    if current:
        units.append(encode_unit(current))
    return units


def discover_all(inputs: list[str], recursive: bool):
    """Local paths as qd-infer finds them (Path or Failure); URIs listed through pyarrow.fs (str or Failure)."""

    local: list[str] = []
    for raw in inputs:
        if not is_uri(raw):
            local.append(raw)
            continue
        yield from discover(local, recursive)
        local = []
        yield from discover_uri(raw, recursive)
    yield from discover(local, recursive)


def discover_uri(uri: str, recursive: bool):
    """The supported files a URI names (itself, or those under it, sorted, hidden ones skipped)."""

    try:
        from pyarrow import fs

        filesystem, path = fs.FileSystem.from_uri(uri)
        info = filesystem.get_file_info(path)
        if info.type == fs.FileType.NotFound:
            yield Failure(f"{uri}: no such file or directory", uri)
            return
        if info.type != fs.FileType.Directory:
            yield uri if uri.lower().endswith(SUPPORTED_SUFFIXES) else Failure(unsupported_type(uri), uri)
            return
        root = path.rstrip("/")
        found = []
        for entry in filesystem.get_file_info(fs.FileSelector(root, recursive=recursive)):
            relative = entry.path[len(root) + 1:]
            if (entry.type == fs.FileType.File and entry.path.lower().endswith(SUPPORTED_SUFFIXES)
                    and not any(part.startswith(".") for part in relative.split("/"))):
                found.append(uri.rstrip("/") + "/" + relative)
    except ImportError:
        raise QDError(f"{uri}: reading URIs needs pyarrow ({INSTALL_HINT})") from None
    except (OSError, ValueError) as exc:  # pyarrow: unknown scheme, no credentials, unreachable
        yield Failure(f"{uri}: {reason_of(exc)}", uri)
        return
    yield from sorted(found) if found else [Failure(nothing_found(uri, recursive), uri)]


# ----------------------------------------------------------------------------- Ray

def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise QDError(f"--ray needs Ray Data, which is not installed ({INSTALL_HINT})") from None
    # Ray Data's console handler prints each run's plan, progress and sink notes; its log file
    # (ray-data.log in the Ray session's folder) keeps them.
    for handler in logging.getLogger("ray.data").handlers:
        if handler.get_name() == "console":
            handler.setLevel(logging.ERROR)
    return ray


def check_address(address: str | None) -> str:
    """The address to use, checked: a cluster's port must answer before Ray is even imported."""
    address = address or LOCAL
    if not is_ray_address(address):
        raise QDError(f"--ray {address}: not a Ray address (local, auto, HOST:PORT or ray://HOST:PORT)")
    if address in (LOCAL, AUTO):
        return address
    target = address[len("ray://"):] if address.startswith("ray://") else address
    host, _, port = target.rpartition(":") if _HOST_PORT.fullmatch(target) else (target, "", str(RAY_CLIENT_PORT))
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise QDError(f"--ray {address}: cannot reach a Ray cluster there ({reason_of(exc)})") from None
    return address


@contextmanager
def connected(ray, address: str):
    """Ray for the run: the one this process already has, a local one, or a connection to a cluster."""
    if ray.is_initialized():
        yield
        return
    quiet = dict(log_to_driver=False, logging_level=logging.ERROR)
    try:
        if address == LOCAL:
            from qd.machine import usable_cpus

            ray.init(address=LOCAL, num_cpus=usable_cpus(), include_dashboard=False,
                     _node_ip_address="127.0.0.1", **quiet)
        else:
            ray.init(address=address, **quiet)
    except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError... for the same thing
        what = "cannot start a local Ray" if address == LOCAL else "cannot connect"
        raise QDError(f"--ray {address}: {what} ({first_line(exc, 200)})") from None
    try:
        yield
    finally:
        ray.shutdown()


def cluster_cpus(ray) -> int:
    return int(ray.cluster_resources().get("CPU", 1))


# ----------------------------------------------------------------------------- the output folder

def check_out(out, overwrite: bool) -> Path:
    if is_uri(str(out)):
        raise QDError(f"--out {out}: must be a folder path (on a filesystem every node shares, for a "
                      "multi-node cluster), not a URI")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise QDError(f"{out}: exists and is not a folder")
    if out.is_dir() and not overwrite and any(out.iterdir()):
        raise QDError(f"{out}: the output folder exists and is not empty (pass --overwrite to replace it)")
    return out


@contextmanager
def output_folder(out: Path, overwrite: bool):
    """A temporary folder beside `out` to write into; moved onto `out` if the block succeeds (qd.files),
    removed if it fails, so `out` is never half-written."""
    from qd.files import remove_temp, temp_path_for

    partial = temp_path_for(out, directory=True)
    try:
        yield partial
    except BaseException:
        remove_temp(partial)
        raise
    replace_folder(partial, out, overwrite)


def replace_folder(partial: Path, out: Path, overwrite: bool) -> None:
    from qd.files import commit_dir

    if out.is_dir() and not overwrite:
        try:
            out.rmdir()  # still empty, as it was at the start
        except OSError:
            raise QDError(f"{out}: files appeared in the output folder during the run; the results "
                          f"are in {partial}") from None
    commit_dir(partial, out)


def check_files_visible(partial: Path, out: Path, fmt: str, counts: list[dict]) -> int:
    """The number of files written; a QDError if some are not here (written on another node's disk)."""

    expected = sum(1 for c in counts if c["records"])
    here = sum(1 for p in partial.iterdir() if p.name.endswith("." + SUFFIXES[fmt]))
    if here < expected:
        raise QDError(f"{out}: only {here} of the {expected} files the workers wrote are on this machine; "
                      "with a multi-node cluster, --out must be a folder every node shares")
    return here


# ----------------------------------------------------------------------------- the command line

def run_cli(inputs, out, address: str, **options) -> int:
    """qd-infer --ray: the run, its failures (the first few) and summary on stderr; the exit code.
    What Ray itself prints while it runs goes to a log file (RayLog), named when the run fails."""
    from rich.text import Text

    from qd.command import err_console, fail, shown

    log = RayLog()
    try:
        run = classify(inputs, out, address, ray_log=log, **options)
    except QDError as exc:
        if log.kept():
            raise QDError(f"{exc}; Ray's own messages are in {log.path}") from None
        raise
    finally:
        log.remove()
    for line in run.failures:
        fail(line)
    summary = run.summary
    more = summary.failed - len(run.failures)
    if more > 0:
        fail(f"... and {more:,} more inputs failed (each is a record with an error field in {out})")
    workers = f"{run.workers} Ray worker{'s' if run.workers != 1 else ''}"
    files = f"{run.files} file{'s' if run.files != 1 else ''}"
    err_console.print(Text.assemble(f"{summary.line()}; {workers}; records in ", shown(run.out), f" ({files})"),
                      highlight=False, soft_wrap=True)
    return 1 if summary.failed or summary.classified == 0 else 0


class RayLog:
    """Where this process's stdout and stderr (file descriptors 1 and 2) go while Ray runs (capture):
    Ray writes there from C++ (its core worker's log), from Python (Ray Data's tracebacks of a failed
    task, its warnings, a dead worker's notice) and in colour, a hundred lines or more for one failure
    that qd tells in one line. A temporary file, kept (kept()) only to be named by a failure."""

    def __init__(self):
        self.path: Path | None = None
        self._keep = False

    @contextmanager
    def capture(self):
        """Descriptors 1 and 2 to the log for the block, restored on the way out (before anything of
        ours is printed); without room for a log (a full disk), Ray's output is dropped."""
        try:
            fd, name = tempfile.mkstemp(prefix="qd-infer-ray-", suffix=".log")
            self.path = Path(name)
        except OSError:
            fd = os.open(os.devnull, os.O_WRONLY)
        sys.stdout.flush()
        sys.stderr.flush()
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            yield
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):  # a full disk: what Ray wrote is lost, ours is still to come
                    pass
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for descriptor in (*saved, fd):
                os.close(descriptor)

    def kept(self) -> bool:
        """Keep the log (it has something to say): True once asked, if it is not empty."""
        self._keep = self.path is not None and self.path.stat().st_size > 0
        return self._keep

    def remove(self) -> None:
        if self.path is not None and not self._keep:
            self.path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- a worker's units

def encode_unit(items: list) -> str:
    """Plan items (Path, NpyRows, Failure, or a URI string) as one ASCII JSON text (surrogates kept)."""
    encoded = []
    for item in items:
        if isinstance(item, Failure):
            encoded.append(["failure", item.message, item.input])
        elif isinstance(item, NpyRows):
            encoded.append(["rows", str(item.path), item.start, item.stop])
        elif isinstance(item, Path):
            encoded.append(["file", str(item)])
        else:
            encoded.append(["uri", item])
    return json.dumps(encoded)


def decode_unit(text: str) -> list:
    items = []
    for kind, *fields in json.loads(text):
        if kind == "failure":
            items.append(Failure(*fields))
        elif kind == "rows":
            items.append(NpyRows(Path(fields[0]), fields[1], fields[2]))
        elif kind == "file":
            items.append(Path(fields[0]))
        else:
            items.append(fields[0])
    return items


class LocalCopies:
    """The remote files of one unit, copied into a temporary folder (removed on exit); `name` maps
    a local name or message back to the URI."""

    def __init__(self):
        self.folder: str | None = None
        self.copies: list[tuple[str, str]] = []  # (local path, URI)

    def __enter__(self) -> "LocalCopies":
        return self

    def __exit__(self, *exc) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    def fetch(self, uri: str) -> Path | Failure:
        from pyarrow import fs

        if self.folder is None:
            self.folder = tempfile.mkdtemp(prefix="qd-ray-")
        target = Path(self.folder, str(len(self.copies)), uri.rstrip("/").rsplit("/", 1)[-1])
        target.parent.mkdir()
        try:
            filesystem, path = fs.FileSystem.from_uri(uri)
            with filesystem.open_input_stream(path) as source, open(target, "wb") as sink:
                shutil.copyfileobj(source, sink, COPY_BLOCK)
        except (OSError, ValueError) as exc:  # pyarrow's IO errors are OSErrors, a bad URI a ValueError
            return Failure(f"{uri}: {reason_of(exc)}", uri)
        self.copies.append((str(target), uri))
        return target

    def name(self, text: str) -> str:
        if self.folder is None or not text.startswith(self.folder + "/"):
            return text
        index = int(text[len(self.folder) + 1:].split("/", 1)[0])
        local, uri = self.copies[index]
        return uri + text[len(local):]


class RecordLines(JsonLinesWriter):
    """The JSON lines of one unit, kept instead of printed, with each record's error and unknown answer."""

    threaded = False

    def __init__(self, labels, top, open_set, rename=None):
        super().__init__(labels, top, open_set)
        self.rename = rename  # local name -> the name records carry (remote files), or None
        self.text: list[str] = []
        self.errors: list[str | None] = []
        self.unknown: list[bool | None] = []

    def emit(self, text: str) -> None:
        self.text.append(text)

    def rows(self, names, index, probs, unknown=None):
        if self.rename is not None:
            names = [self.rename(n) for n in names]
        super().rows(names, index, probs, unknown)
        self.errors += [None] * len(names)
        self.unknown += [None] * len(names) if unknown is None else unknown.tolist()

    def failure(self, message: str, input: str) -> None:
        if self.rename is not None:
            message, input = self.rename(message), self.rename(input)
        super().failure(message, input)

    def tell_failure(self, message: str) -> None:
        self.errors.append(printable(message))
        self.unknown.append(None)

    def table(self, fmt: str):
        """The records as an Arrow table: Parquet's columns, or for JSON lines the lines themselves
        (`json`) beside `error` and `unknown`, which the writer counts."""
        import pyarrow as pa

        text = "".join(self.text)
        if fmt == "parquet":
            return parse_records(text)
        lines = text.split("\n")[:-1]  # no record holds a raw newline: JSON escapes it
        assert len(lines) == len(self.errors), (len(lines), len(self.errors))
        return pa.table({"json": pa.array(lines, pa.string()), "error": pa.array(self.errors, pa.string()),
                         "unknown": pa.array(self.unknown, pa.bool_())})


@lru_cache(maxsize=1)
def record_schema():
    """The Parquet columns: docs/output.md's record fields, typed."""
    import pyarrow as pa

    guess = pa.struct([("label", pa.string()), ("probability", pa.float64())])
    return pa.schema([("version", pa.int64()), ("input", pa.string()), ("label", pa.string()),
                      ("probability", pa.float64()), ("unknown", pa.bool_()), ("top", pa.list_(guess)),
                      ("error", pa.string())])


def parse_records(text: str):
    """JSON lines -> an Arrow table of record_schema() (a field it does not know is an error)."""
    import pyarrow as pa
    from pyarrow import json as pa_json

    if not text:
        return record_schema().empty_table()
    return pa_json.read_json(pa.BufferReader(text.encode("utf-8")),
                             read_options=pa_json.ReadOptions(use_threads=False),
                             parse_options=pa_json.ParseOptions(explicit_schema=record_schema(),
                                                                unexpected_field_behavior="error"))


# ----------------------------------------------------------------------------- the actor

class Classify:
    """Ray Data's map_batches callable: one onnxruntime session per actor; one unit per call."""

    def __init__(self, model, model_name: str, threads: int, top: int, batch_size: int, fmt: str,
                 unknown_threshold: float | None, flag_unknown: bool):
        if not isinstance(model, bytes):  # the driver's ObjectRef: fetched once, by this actor
            import ray

            model = ray.get(model)
        self.classifier = OnnxClassifier(model_name, threads=threads, unknown_threshold=unknown_threshold,
                                         flag_unknown=flag_unknown, model_bytes=model)
        self.top, self.batch_size, self.fmt = top, batch_size, fmt
        self.decoder = ImageDecoder(1)  # decodes in this process: the actors are the parallelism
        self.bar = ProgressBar("classifying", enabled=False)

    def __call__(self, batch):
        import pyarrow as pa

        return pa.concat_tables([self.classify_unit(decode_unit(str(text))) for text in batch[UNIT]])

    def classify_unit(self, items: list):
        with LocalCopies() as copies:
            items = [copies.fetch(item) if isinstance(item, str) else item for item in items]
            writer = RecordLines(self.classifier.labels, self.top, self.classifier.open_set is not None,
                                 rename=copies.name if copies.folder else None)
            classify_plan(Plan.from_items(items), self.classifier, self.decoder, writer, self.bar, self.top,
                          self.batch_size)
        return writer.table(self.fmt)


# ----------------------------------------------------------------------------- writing

def write_records(table, file, fmt: str) -> None:
    """One output file: the JSON lines as they are, or the table as Parquet."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, file)
        return
    file.write(("\n".join(table.column("json").to_pylist()) + "\n").encode("utf-8"))


def count_records(tables) -> dict:
    """What one written file holds, for the driver: records, failures (and the first few lines), unknowns."""
    import pyarrow.compute as pc

    counts = {"records": 0, "failed": 0, "unknown": 0, "failures": []}
    for table in tables:
        errors = table.column("error")
        counts["records"] += table.num_rows
        counts["failed"] += table.num_rows - errors.null_count
        counts["unknown"] += int(pc.sum(table.column("unknown")).as_py() or 0)
        room = FAILURES_REPORTED - len(counts["failures"])
        if room > 0 and errors.null_count < table.num_rows:
            counts["failures"] += errors.drop_null()[:room].to_pylist()
    return counts


def record_sink(folder: str, fmt: str):
    """Ray Data's block-per-file writer into `folder`, files named by write and task (a retried task
    writes the same file again), each write reporting count_records() to the driver."""
    return _sink_class()(folder, fmt)


@lru_cache(maxsize=1)
def _sink_class():
    from ray.data.block import BlockAccessor
    from ray.data.datasource import BlockBasedFileDatasink

    class RecordSink(BlockBasedFileDatasink):
        def __init__(self, folder: str, fmt: str):
            super().__init__(folder, file_format=SUFFIXES[fmt])
            self.fmt = fmt
            self.result = None

        def write_block_to_file(self, block, file):
            write_records(block.to_arrow(), file, self.fmt)

        def write(self, blocks, ctx):
            blocks = list(blocks)
            super().write(blocks, ctx)
            return count_records([BlockAccessor.for_block(b).to_arrow() for b in blocks])

        def on_write_complete(self, write_result):
            super().on_write_complete(write_result)
            self.result = write_result  # read by the driver: this object stays on it

    return RecordSink
