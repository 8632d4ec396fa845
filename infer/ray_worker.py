"""What each Ray worker of `qd-infer --ray` runs (qd.infer.ray drives it): units of inputs -> records.

One actor holds one onnxruntime session, built once from the model bytes the driver read and put in
Ray's object store. Each call classifies one unit (a list of plan items the driver encoded: image
files, .npy files or row ranges of one, .ndjson files, failures found while planning) through the
path plain qd-infer takes: qd.infer.inputs reads it, qd.infer.run.classify_plan batches and
classifies it, JsonLinesWriter formats its records. The records are therefore the lines
`qd-infer --json` writes, failures included; for Parquet those lines are parsed with
`record_schema()`.

A file on another filesystem (s3://, gs://, hdfs://, file://: whatever pyarrow.fs opens) is copied
to a local temporary folder first and read by the same readers; its records name it by its URI.

Ray and pyarrow are imported inside functions only, so this module loads without them.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

from qd.command import ProgressBar, reason_of
from qd.data.decode import ImageDecoder

from .inputs import Failure, NpyRows, Plan
from .model import OnnxClassifier
from .output import JsonLinesWriter, printable
from .run import classify_plan

UNIT = "unit"  # the dataset's one column: a JSON-encoded list of plan items
SUFFIXES = {"json": "jsonl", "parquet": "parquet"}  # --format -> output file suffix
FAILURES_REPORTED = 20  # failure lines each written file reports to the driver (for stderr)
COPY_BLOCK = 1 << 20


# ----------------------------------------------------------------------------- units

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
