"""`qd-infer INPUT... --ray [ADDRESS] --out DIR` and `qd.infer.ray.classify(...)`: batch inference on Ray Data.

The driver (this module) checks the model and the output folder, finds the inputs as plain
qd-infer does (qd.infer.inputs: the same order, skips and failures), cuts them into units of a
few thousand drawings' worth (a big .npy into row ranges) and hands them to Ray Data as a dataset.
`map_batches` runs qd.infer.ray_worker.Classify in a pool of actors, one onnxruntime session each;
Ray Data's file writer (write tasks after the actors) writes each task's records to one file in a
temporary folder beside DIR, which is renamed to DIR once every task has finished (docs/ray.md).

Only the standard library loads with this module (qd-infer's command line imports it for
`is_ray_address`); Ray and numpy load when a run starts.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from qd.command import QDError, first_line, reason_of

if TYPE_CHECKING:
    from .output import Summary

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
             unknown_threshold: float | None = None, flag_unknown: bool = True, overwrite: bool = False) -> RayRun:
    """Classify `inputs` (paths or URIs) on Ray into the folder `out`, as qd-infer --json records
    (JSON lines, or Parquet with format="parquet"). `address`: None or "local" starts a Ray for the
    run; "auto", HOST:PORT or ray://HOST:PORT joins a cluster; a Ray this process already
    initialised is used as it is. `workers`: actors (default: the cluster's CPUs / threads);
    `threads`: CPUs and onnxruntime threads per actor."""
    from qd.data.contract import MAX_BATCH_SIZE, MAX_THREADS

    from .model import OnnxClassifier, read_model_bytes, resolve_model_path
    from .output import Summary
    from .ray_worker import FAILURES_REPORTED
    from .run import note_missing_open_set

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
    ray = import_ray()
    with connected(ray, address):
        workers = workers or max(1, cluster_cpus(ray) // threads)
        settings = dict(model=ray.put(model_bytes), model_name=str(model_path), threads=threads, top=top,
                        batch_size=batch_size, fmt=format, unknown_threshold=unknown_threshold,
                        flag_unknown=flag_unknown)
        with output_folder(out, overwrite) as partial:
            counts = run_dataset(ray, units, partial, settings, workers, threads)
            files = check_files_visible(partial, out, format, counts)
    records = sum(c["records"] for c in counts)
    failed = sum(c["failed"] for c in counts)
    summary = Summary(classified=records - failed, failed=failed, seconds=time.perf_counter() - started,
                      unknown=sum(c["unknown"] for c in counts) if classifier.open_set is not None else None)
    failures = [line for c in counts for line in c["failures"]]
    return RayRun(summary, out, files, workers, failures[:FAILURES_REPORTED])


def run_dataset(ray, units: list[str], folder: Path, settings: dict, workers: int, threads: int) -> list[dict]:
    """The Ray Data pipeline: units -> actors (read, classify, format) -> one file per task. The
    per-file counts of the records written."""
    from .ray_worker import UNIT, Classify, record_sink

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = sys.stderr.isatty()
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
        raise QDError(describe_ray_failure(exc)) from None
    return list(sink.result.write_returns) if sink.result is not None else []


def describe_ray_failure(exc: BaseException) -> str:
    """One line for a failed Ray run: the QDError a worker raised, else the innermost cause."""
    from qd.command import describe_unexpected

    for _ in range(20):
        worker_error = getattr(exc, "cause", None)  # ray.exceptions.RayTaskError: what the worker raised
        if worker_error is None and isinstance(exc, QDError):
            return str(exc)
        inner = worker_error or exc.__cause__
        if inner is None:
            break
        exc = inner
    return f"the Ray run failed: {describe_unexpected(exc)}"


# ----------------------------------------------------------------------------- inputs -> units

def plan_units(inputs: list[str], recursive: bool, batch_size: int) -> list[str]:
    """Every input in order, cut into units of about BATCHES_PER_UNIT batches of drawings: images
    IMAGES_PER_UNIT to a unit, a big uint8 .npy split into row ranges, each .ndjson file and each
    remote file (URI) a unit of its own (or, for remote images, a share of one), failures where they fall."""
    from qd.data.images import is_image_path

    from .inputs import NPY_SUFFIX, DrawingArray, Failure, NpyRows
    from .ray_worker import encode_unit

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
        elif isinstance(item, str) or not name.lower().endswith(NPY_SUFFIX):
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
    from .inputs import discover

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
    from .inputs import SUPPORTED_SUFFIXES, Failure, nothing_found, unsupported_type

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
    from .ray_worker import SUFFIXES

    expected = sum(1 for c in counts if c["records"])
    here = sum(1 for p in partial.iterdir() if p.name.endswith("." + SUFFIXES[fmt]))
    if here < expected:
        raise QDError(f"{out}: only {here} of the {expected} files the workers wrote are on this machine; "
                      "with a multi-node cluster, --out must be a folder every node shares")
    return here


# ----------------------------------------------------------------------------- the command line

def run_cli(inputs, out, address: str, **options) -> int:
    """qd-infer --ray: the run, its failures (the first few) and summary on stderr; the exit code."""
    from rich.text import Text

    from qd.command import err_console, fail, shown

    run = classify(inputs, out, address, **options)
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
