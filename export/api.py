"""export_checkpoint(): checkpoint -> validated edge models in one folder.

The folder is replaced as a whole (export/folder.py): everything is written into a
staging folder and swapped in at the end, so the export folder always holds one
consistent set, this run's or the previous one. For each requested format (in table
order): write to a hidden temp path in the staging folder, validate the temp file, and
only if every check passes rename it onto its final name there. A failed format is not
in the new set; models of formats not re-exported stay only if they provably come
from the same checkpoint (model.json's checksums), others are dropped with a note.
labels.txt and model.json are written last, describing the whole set.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from qd.command import QDError, first_line
from qd.data.contract import DEFAULT_KEPT, INT8_PREPARED, exports_dir
from qd.files import commit_dir, commit_file, remove_temp, temp_path_for

from . import folder
from .card import CARD_NAME, LABELS_NAME, previous_files, stale_models, write_card, write_labels
from .checkpoint_source import DEFAULT_MAX_DRAWINGS, CheckpointSource, load_source
from .context import DEFAULT_INT8_MAX_PROB_DIFF, DEFAULT_INT8_TOLERANCE, DEFAULT_OPSET, Check, ExportContext
from .formats import DEFAULT_FORMATS, FORMATS, ExportFormat, parse_formats
from .onnx_export import check_opset

PREP_NAME = INT8_PREPARED
LOW_SPACE_BYTES = 64 << 20  # a converter failing with less free space than this was most likely out of disk


def default_out_dir(source: CheckpointSource) -> Path:
    return exports_dir() / source.run_name


@dataclass
class FormatResult:
    format: ExportFormat
    path: Path
    checks: list[Check] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class ExportReport:
    source: CheckpointSource
    out_dir: Path
    results: list[FormatResult]
    validation_data: str
    notes: list[str]
    labels: Path | None = None
    card: Path | None = None

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def errors(self) -> list[str]:
        return [r.error for r in self.results if r.error]


def export_checkpoint(checkpoint: str | os.PathLike, formats: str | list[ExportFormat] = DEFAULT_FORMATS,
                      out: str | os.PathLike | None = None, opset: int = DEFAULT_OPSET,
                      data_dir: str | os.PathLike | None = None, max_drawings: int = DEFAULT_MAX_DRAWINGS,
                      int8_tolerance: float = DEFAULT_INT8_TOLERANCE,
                      int8_max_prob_diff: float = DEFAULT_INT8_MAX_PROB_DIFF,
                      kept: float = DEFAULT_KEPT, on_step: Callable[[str], None] | None = None) -> ExportReport:
    chosen = parse_formats(formats) if isinstance(formats, str) else list(formats)
    for fmt in chosen:
        missing = fmt.missing_packages()
        if missing:
            raise QDError(f"format {fmt.name} needs {', '.join(missing)}: "
                          "pip install -c constraints.txt 'quickdraw-edge[export]'")
    check_opset(opset)
    if max_drawings < 1:
        raise QDError(f"--max-drawings must be at least 1, got {max_drawings}")
    if not 0 <= int8_tolerance < 1:
        raise QDError(f"--int8-tolerance must be a share from 0 to below 1, got {int8_tolerance}")
    if not 0 < int8_max_prob_diff <= 1:
        raise QDError(f"--int8-max-dp must be above 0 and at most 1, got {int8_max_prob_diff}")
    if not 0 < kept < 1:  # also refuses NaN
        raise QDError(f"--kept must be a share between 0 and 1 (e.g. 0.95), got {kept}")
    source = load_source(checkpoint)
    out_dir = Path(out) if out is not None else default_out_dir(source)
    if out_dir.exists() and not out_dir.is_dir():
        raise QDError(f"{out_dir}: exists and is not a directory")
    model_files = [f.filename for f in FORMATS.values()]
    staging = folder.begin(out_dir, model_files + [PREP_NAME, LABELS_NAME, CARD_NAME])
    try:
        ctx = ExportContext(source=source, out_dir=staging.work, previous_dir=staging.final, opset=opset,
                            data_dir=Path(data_dir) if data_dir else None, max_drawings=max_drawings,
                            int8_tolerance=int8_tolerance, int8_max_prob_diff=int8_max_prob_diff, kept=kept)
        return _export_into(staging, ctx, chosen, on_step or (lambda message: None))
    finally:
        if staging.work.exists():
            folder.abandon(staging)  # nothing was committed (no format written, or an error)


def _export_into(staging: folder.Staging, ctx: ExportContext, chosen: list[ExportFormat],
                 step: Callable[[str], None]) -> ExportReport:
    source = ctx.source
    results = []
    for fmt in chosen:
        step(f"exporting {fmt.name}")
        results.append(_export_one(ctx, fmt, staging.final / fmt.filename))
    report = ExportReport(source=source, out_dir=staging.final, results=results,
                          validation_data=_describe_data(ctx), notes=_data_notes(ctx))
    if not ctx.written:
        return report
    kept = previous_files(ctx)
    dropped = stale_models(ctx, [f.filename for f in FORMATS.values()])
    for stale in dropped:
        report.notes.append(f"{stale}: not from this checkpoint (or changed since its export), so it is not part "
                            "of the new set and was removed; export its format again to have it")
    folder.carry(staging, [entry["file"] for entry in kept.values()])
    step("writing labels.txt and model.json")
    write_labels(ctx)
    write_card(ctx, {r.format.name: r.checks for r in results if r.ok}, kept)
    folder.commit(staging, [f.filename for f in FORMATS.values()] + [LABELS_NAME, CARD_NAME],
                  remove=[p.name for p in dropped])
    report.labels, report.card = staging.final / LABELS_NAME, staging.final / CARD_NAME
    if staging.note:
        report.notes.append(staging.note)
    return report


def _export_one(ctx: ExportContext, fmt: ExportFormat, final: Path) -> FormatResult:
    """Export and validate one format into the staging folder (`staged`); `final` is its name in the export folder."""
    staged = ctx.out_dir / fmt.filename
    result = FormatResult(format=fmt, path=final)
    if fmt.builds_on and fmt.builds_on not in ctx.written:
        result.error = f"{final}: not exported because {fmt.builds_on} failed"
        return result
    start = time.perf_counter()
    tmp = temp_path_for(staged, directory=fmt.is_dir)
    try:
        fmt.exporter(ctx, tmp)
        result.checks = fmt.validator(ctx, tmp)
        failed = [c for c in result.checks if not c.passed]
        if failed:
            result.error = f"{final}: validation failed, not written: {failed[0].name}: {failed[0].detail}"
            if failed[0].hint:
                result.error += f" ({failed[0].hint})"
        else:
            (commit_dir if fmt.is_dir else commit_file)(tmp, staged)
            ctx.written[fmt.name] = staged
    except QDError as exc:
        result.error = str(exc)
    except OSError as exc:  # e.g. a full disk: name the file being written
        result.error = f"{final}: {exc.strerror or exc} (while writing {fmt.name})"
    except Exception as exc:  # a converter's own failure: report it in one line, keep going
        first = first_line(exc, 200) if str(exc).strip() else ""
        free = _free_space(ctx.out_dir)
        if free is not None and free < LOW_SPACE_BYTES:
            # onnxruntime's C++ writers do not raise on a full disk: the next step then reads a
            # truncated file (DecodeError, INVALID_PROTOBUF). Say what really happened.
            result.error = (f"{final}: No space left on device (while writing {fmt.name}: {free:,} bytes free; "
                            f"the converter then failed with {type(exc).__name__})")
        else:
            result.error = f"{final}: {fmt.name} export failed ({type(exc).__name__}: {first})"
    finally:
        if fmt.name not in ctx.written:
            remove_temp(tmp)
        result.seconds = time.perf_counter() - start
    return result


def _free_space(folder: Path) -> int | None:
    """The least free space of the folders a converter writes to (the export's, the system temp folder)."""
    try:
        return min(shutil.disk_usage(folder).free, shutil.disk_usage(tempfile.gettempdir()).free)
    except OSError:
        return None


def _describe_data(ctx: ExportContext) -> str:
    try:
        return ctx.data.description
    except QDError as exc:
        return f"unavailable ({exc})"


def _data_notes(ctx: ExportContext) -> list[str]:
    try:
        notes = list(ctx.data.notes)
        if ctx.written and not ctx.confidence.fitted:
            notes.append(f"no temperature or unknown threshold fitted ({ctx.confidence.fitted_on}): these models "
                         "cannot flag unknown drawings (pass --data DIR with the training categories)")
        return notes
    except QDError:
        return []
