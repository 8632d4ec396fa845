"""One qd-export run: export_checkpoint(), checkpoint -> validated edge models in one folder.

For each requested format (in table order): write to a hidden temp path in a staging
folder, validate the temp file, and only if every check passes rename it onto its final
name there. A failed format is not in the new set; models of formats not re-exported
stay only if they provably come from the same checkpoint (model.json's checksums),
others are dropped with a note. labels.txt and model.json are written last, describing
the whole set.

The export folder is replaced as a whole: every file in it comes from one export run
(one checkpoint), or the folder is still the previous set. A run writes into a hidden
staging folder beside the export folder (`.<name>.<16 hex digits>.staging.tmp`), carries
over what stays (files of formats not re-exported, if provably from the same checkpoint,
and any file that is not ours), and then swaps the staging folder with the export folder
in one atomic step (qd.files.commit_dir: renameat2(RENAME_EXCHANGE) on Linux). The run
holds its staging folder's lock (qd.files.folder_lock) until then. A run killed at any
moment leaves the previous folder untouched plus a staging leftover, which the next run
into that folder removes: only a staging folder whose name reads back to exactly this
export folder (`EXP.v2`'s is never `EXP`'s) and whose lock is free (its writer is gone;
a concurrent run's stays). Where the staging folder cannot sit beside the export folder
(the parent is not writable, or the export folder is a mount point), it sits inside it
and files are moved in one by one, model.json last: readers then tell a mixed set from
its checksums (qd.evaluate.backends), and the report says so.

model.json, the card, records what the models are (classes, preprocessing, architecture,
split, source checkpoint and its metrics), the temperature and open-set rule fitted at
export (the same as in each model's metadata), every file with its sha256, and the
validation results: it is the manifest of the set, which readers check files against.
Entries for formats not re-exported in this run are kept from the previous card only if
they come from the same checkpoint and still match their checksum; such files are
carried into the new set, other models are not.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable

import qd
from qd.command import QDError, first_line
from qd.data.contract import CARD_FORMAT, INT8_PREPARED, LABELS_FILE, LICENSE_NOTE, MAX_CARD_BYTES, MODEL_CARD, exports_dir
from qd.files import (TEMP_SUFFIX, FolderBusy, clean_stale_temps, commit_dir, commit_file, folder_lock, fsync_dir,
                      path_size, read_regular, remove_temp, sha256_path, temp_path_for, write_text_atomic)

from .checkpoint_source import CheckpointSource, ExportContext, load_source
from .formats import DEFAULT_FORMATS, FORMATS, Check, ExportFormat, ExportOptions, parse_formats
from .onnx_export import check_opset

LOW_SPACE_BYTES = 64 << 20  # a converter failing with less free space than this was most likely out of disk
STAGING_SUFFIX = ".staging" + TEMP_SUFFIX
_STAGING_NAME = re.compile(r"\.(?P<final>.+)\.[0-9a-f]{16}" + re.escape(STAGING_SUFFIX), re.DOTALL)


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
    negatives: str | None = None  # the open-set rule on the checkpoint's held-out negatives, one line
    labels: Path | None = None
    card: Path | None = None

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def errors(self) -> list[str]:
        return [r.error for r in self.results if r.error]


def export_checkpoint(checkpoint: str | os.PathLike, formats: str | list[ExportFormat] = DEFAULT_FORMATS,
                      out: str | os.PathLike | None = None, on_step: Callable[[str], None] | None = None,
                      **options) -> ExportReport:
    """`options`: ExportOptions' fields by name (opset, data_dir, max_drawings, int8_tolerance, ...)."""
    chosen = parse_formats(formats) if isinstance(formats, str) else list(formats)
    for fmt in chosen:
        missing = fmt.missing_packages()
        if missing:
            raise QDError(f"format {fmt.name} needs {', '.join(missing)}: "
                          "pip install -c constraints.txt 'quickdraw-edge[export]'")
    if "data_dir" in options:
        options["data_dir"] = Path(options["data_dir"]) if options["data_dir"] else None
    settings = ExportOptions(**options)
    check_opset(settings.opset)
    settings.check()
    source = load_source(checkpoint)
    out_dir = Path(out) if out is not None else default_out_dir(source)
    if out_dir.exists() and not out_dir.is_dir():
        raise QDError(f"{out_dir}: exists and is not a directory")
    model_files = [f.filename for f in FORMATS.values()]
    staging = begin(out_dir, model_files + [INT8_PREPARED, LABELS_FILE, MODEL_CARD])
    try:
        ctx = ExportContext(source=source, out_dir=staging.work, previous_dir=staging.final, options=settings)
        return _export_into(staging, ctx, chosen, on_step or (lambda message: None))
    finally:
        if staging.work.exists():
            abandon(staging)  # nothing was committed (no format written, or an error)
        staging.held.close()  # a commit that failed half-way


def _export_into(staging: Staging, ctx: ExportContext, chosen: list[ExportFormat],
                 step: Callable[[str], None]) -> ExportReport:
    source = ctx.source
    results = []
    for fmt in chosen:
        step(f"exporting {fmt.name}")
        results.append(_export_one(ctx, fmt, staging.final / fmt.filename))
    report = ExportReport(source=source, out_dir=staging.final, results=results,
                          validation_data=_describe_data(ctx), notes=_data_notes(ctx), negatives=_negatives_line(ctx))
    if not ctx.written:
        return report
    kept = previous_files(ctx)
    dropped = stale_models(ctx, [f.filename for f in FORMATS.values()])
    for stale in dropped:
        report.notes.append(f"{stale}: not from this checkpoint (or changed since its export), so it is not part "
                            "of the new set and was removed; export its format again to have it")
    carry(staging, [entry["file"] for entry in kept.values()])
    step("writing labels.txt and model.json")
    write_labels(ctx)
    write_card(ctx, {r.format.name: r.checks for r in results if r.ok}, kept)
    commit(staging, [f.filename for f in FORMATS.values()] + [LABELS_FILE, MODEL_CARD],
                  remove=[p.name for p in dropped])
    report.labels, report.card = staging.final / LABELS_FILE, staging.final / MODEL_CARD
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
        if ctx.written and ctx.confidence.weak_negatives:
            notes.append(ctx.confidence.weak_negatives)
        return notes
    except QDError:
        return []


def _negatives_line(ctx: ExportContext) -> str | None:
    """What the open-set rule flags of the held-out negatives, beside the known drawings it flags."""
    try:
        n = ctx.negatives
    except QDError as exc:
        return f"not measured ({exc})"
    if n is None:
        return None
    if not n["available"]:
        return f"not measured ({n['reason']})"
    val, test, known = n["validation"], n["test"], n["known"]

    def share(part: dict) -> str:
        return "–" if part["flagged"] is None else f"{part['flagged']:.1%} of {part['drawings']:,}"

    return (f"{n['rule']} < {n['threshold']:.4g} flags {share(val)} validation and {share(test)} test negatives "
            f"({len(n['categories'])} categories); known drawings: {known['validation_flagged']:.1%} validation, "
            f"{known['test_flagged']:.1%} test")


# ----------------------------------------------------------------------------- labels.txt and model.json

def write_labels(ctx: ExportContext) -> Path:
    path = ctx.out_dir / LABELS_FILE
    write_text_atomic(path, "".join(f"{name}\n" for name in ctx.source.classes))
    return path


def previous_files(ctx: ExportContext) -> dict:
    """Entries of the previous set's card for files this run did not rewrite, if provably still
    valid: same source checkpoint, file present, checksum unchanged."""
    folder = ctx.previous_dir or ctx.out_dir
    try:
        card = json.loads(read_regular(folder / MODEL_CARD, MAX_CARD_BYTES, what=MODEL_CARD))
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
    labels = ctx.out_dir / LABELS_FILE
    files["labels"] = {"file": LABELS_FILE, "sha256": sha256_path(labels), "bytes": path_size(labels)}
    card = {
        "format": CARD_FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quickdraw_edge": qd.__version__,
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
        "confidence": {**ctx.confidence.card(), **({"negatives": ctx.negatives} if ctx.negatives else {})},
        "license": LICENSE_NOTE,
        "files": files,
    }
    path = ctx.out_dir / MODEL_CARD
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


# ----------------------------------------------------------------------------- the export folder, replaced as a whole

@dataclass
class Staging:
    final: Path  # the export folder (symlinks resolved)
    work: Path  # where this run writes
    in_place: bool  # the fallback: `work` is inside `final` and files move one by one
    managed: tuple[str, ...] = ()  # the names qd-export writes; anything else in the folder is the user's
    held: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)  # `work`'s lock, until closed

    @property
    def note(self) -> str:
        if not self.in_place:
            return ""
        return (f"{self.final.parent} does not allow a staging folder beside {self.final.name}, so files were "
                "replaced one by one (readers still detect a mixed set from model.json)")


def begin(out_dir: Path, managed: list[str]) -> Staging:
    """A fresh staging folder for replacing `out_dir`, after removing leftovers of killed runs; its
    lock is held until `Staging.held` is closed."""
    final = out_dir.resolve() if out_dir.is_symlink() else out_dir
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(final, managed)
    held = contextlib.ExitStack()
    if not final.exists() or _same_filesystem(final, final.parent):
        try:
            work = _locked_staging_folder(final.parent, final.name, held)
            return Staging(final=final, work=work, in_place=False, managed=tuple(managed), held=held)
        except OSError:
            pass  # a parent we may not write to
    final.mkdir(exist_ok=True)
    work = _locked_staging_folder(final, final.name, held)
    return Staging(final=final, work=work, in_place=True, managed=tuple(managed), held=held)


def staging_name(final_name: str) -> str:
    """A fresh staging folder name for the export folder `final_name`."""
    return f".{final_name}.{secrets.token_hex(8)}{STAGING_SUFFIX}"


def staging_of(name: str) -> str | None:
    """The export folder whose staging folder `name` is (None: no staging folder's name). Read from
    the right, where the token and suffix have one length: so `.EXP.v2.<token>.staging.tmp` is
    EXP.v2's, never EXP's, whatever the names."""
    match = _STAGING_NAME.fullmatch(name)
    return match["final"] if match else None


def _locked_staging_folder(parent: Path, final_name: str, held: contextlib.ExitStack) -> Path:
    """Make a staging folder in `parent` and take its lock (kept in `held`). Another run cleaning
    leftovers may take a folder's lock between its mkdir and ours: then another name."""
    while True:
        work = parent / staging_name(final_name)
        try:
            work.mkdir(mode=0o700)
            held.enter_context(folder_lock(work, wait=False))
            return work
        except (FileExistsError, FolderBusy):
            continue


def remove_leftovers(final: Path, managed: list[str]) -> None:
    """Staging folders and temp files of runs into `final` that were killed before they finished:
    only staging folders of `final` itself, and only those whose lock is free (a run still writing
    holds its own)."""
    for folder in (final.parent, final):
        if not folder.is_dir():
            continue
        for leftover in folder.iterdir():
            if staging_of(leftover.name) == final.name and leftover.is_dir() and not leftover.is_symlink():
                with contextlib.suppress(FolderBusy, OSError), folder_lock(leftover, wait=False):
                    shutil.rmtree(leftover, ignore_errors=True)
    if final.is_dir():
        clean_stale_temps(final, managed)


def carry(staging: Staging, keep: list[str]) -> None:
    """Bring what stays into the staging folder: the named files, and every entry that is not ours
    (hard links where the filesystem allows, else copies). In place, everything already is there."""
    if staging.in_place or not staging.final.is_dir():
        return
    for entry in staging.final.iterdir():
        if entry.name in keep or (entry.name not in staging.managed and not _is_temp(entry.name, staging.managed)):
            _link_or_copy(entry, staging.work / entry.name)


def commit(staging: Staging, order: list[str], remove: list[str]) -> None:
    """Make the staging folder the export folder. In place: drop `remove` and the card first,
    then move the files in `order` (the card last)."""
    for entry in staging.work.iterdir():  # nothing half-written travels with the set
        if _is_temp(entry.name, staging.managed):
            remove_temp(entry)
    if not staging.in_place:
        commit_dir(staging.work, staging.final)
        staging.held.close()
        return
    card = order[-1]
    (staging.final / card).unlink(missing_ok=True)
    for name in remove:
        remove_temp(staging.final / name)
    for name in order:
        source = staging.work / name
        if source.is_dir() and not source.is_symlink():
            commit_dir(source, staging.final / name)
        elif source.exists():
            commit_file(source, staging.final / name)
    remove_temp(staging.work)
    fsync_dir(staging.final)
    staging.held.close()


def abandon(staging: Staging) -> None:
    remove_temp(staging.work)
    staging.held.close()


def _same_filesystem(a: Path, b: Path) -> bool:
    return os.stat(a).st_dev == os.stat(b).st_dev


def _is_temp(name: str, managed: tuple[str, ...]) -> bool:
    """A temp file of ours (`.<managed name>.<random>.tmp`) or any run's staging folder; a user's
    own file is never one, whatever its name."""
    return staging_of(name) is not None or any(name.startswith(f".{m}.") and TEMP_SUFFIX in name for m in managed)


def _link_or_copy(source: Path, target: Path) -> None:
    if source.is_symlink():
        os.symlink(os.readlink(source), target)
    elif source.is_dir():
        shutil.copytree(source, target, symlinks=True, copy_function=_link_file)
    else:
        _link_file(source, target)


def _link_file(source, target) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
