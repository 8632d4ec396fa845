"""The evaluation itself, as an API: model + held-out data + backends -> figures and files.

    from qd.evaluate.evaluation import evaluate
    result = evaluate("artifacts/exports/compact-20260101-120000", backends=["onnx", "onnx-int8"],
                      unknown=["drawings-of-other-things/"])
    result.summary.top1, result.open_set.unknown_flagged, result.calibration.after.ece, result.files["report"]
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qd.command import ProgressBar, QDError, reason_of
from qd.data.contract import eval_dir
from qd.files import atomic_targets, folder_lock, json_text, os_errors_name

from . import metrics
from .backends import BackendRun, ModelInfo, load_model_info, parse_backends, predict_all, run_backend
from .heldout import HeldOut, Negatives, UnknownDrawings, load_heldout, load_negatives, load_unknown
from .metrics import Calibration, OpenSetFigures, measure_calibration, open_set_figures
from .report import build_report, plot_confusion, plot_mistakes, plot_reliability, require_matplotlib

CONFUSED_PAIRS = 10
# The report folder's files, by their key in Evaluation.files (and report.json's "files").
REPORT_FILES = {"report": "report.json", "confusion": "confusion.png", "mistakes": "mistakes.png",
                "calibration": "calibration.png"}
PLOTS = ("confusion", "mistakes", "calibration")


@dataclass
class Evaluation:
    model: ModelInfo
    heldout: HeldOut
    runs: list[BackendRun]
    reference: BackendRun               # the first backend that ran: the figures below are its
    summary: metrics.OverallScores
    confusion: np.ndarray
    scores: list[metrics.ClassScore]
    confused: list[metrics.ConfusedPair]
    out_dir: Path
    calibration: Calibration | None = None
    open_set: OpenSetFigures | None = None
    open_set_note: str | None = None    # why there are no open-set figures
    unknown: UnknownDrawings | None = None
    negatives: Negatives | None = None  # the held-out negatives the model was trained with, if any
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def predicted(self) -> np.ndarray:
        return self.reference.probabilities.argmax(axis=1)


def default_out_dir(model: ModelInfo) -> Path:
    return eval_dir() / model.name


def evaluate(model_path: str | os.PathLike | None = None, data: str | os.PathLike | None = None,
             split: str | None = None, backends: list[str] | None = None, out_dir: str | os.PathLike | None = None,
             checkpoint: str | os.PathLike | None = None, ignore_unknown: bool = False,
             max_per_category: int | None = None, measure_speed: bool = True, write_files: bool = True,
             plots: bool = True, progress: ProgressBar | None = None, unknown: list[str | os.PathLike] | None = None,
             workers: int | None = None) -> Evaluation:
    """Evaluate one model; write report.json, confusion.png, mistakes.png and calibration.png unless
    write_files is False (report.json alone when plots is False). `unknown`: paths of drawings of categories outside the model.
    `workers`: processes decoding image files (default: one per usable CPU).

    `progress` (the CLI's bar on stderr) is stepped through the slow parts: reading, each backend.
    """
    bar = progress or ProgressBar("qd-eval", enabled=False)
    names = parse_backends(backends)
    if write_files and plots:
        require_matplotlib()
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise QDError(f"{checkpoint}: checkpoint not found")
    model = load_model_info(model_path)
    bar.step(f"loading held-out data for {model.name}")
    heldout = load_heldout(model, None if data is None else str(data), split, ignore_unknown, max_per_category, bar,
                           workers=workers)
    unknown_set = None
    if unknown:
        bar.step("loading the --unknown drawings")
        unknown_set = load_unknown(unknown, workers=workers, progress=bar)
    runs = []
    for name in names:
        bar.step(f"{name}: classifying", total=len(heldout))
        runs.append(run_backend(name, model, checkpoint, heldout.bitmaps, measure_speed, bar))
    ran = [r for r in runs if r.ran]
    if not ran:
        reasons = "; ".join(f"{r.name}: {r.skipped}" for r in runs)
        raise QDError(f"{model.path}: no backend could run ({reasons})")
    reference = ran[0]
    if unknown_set is not None:
        for run in ran:
            bar.step(f"{run.name}: classifying the --unknown drawings", total=len(unknown_set))
            run.unknown_outputs = predict_all(run.runner, unknown_set.bitmaps, advance=bar.advance)
    negatives = load_negatives(model)
    if negatives is not None and negatives.available:
        for run in ran:
            bar.step(f"{run.name}: classifying the held-out negatives",
                     total=sum(len(rows) for rows in negatives.bitmaps.values()))
            run.negative_outputs = {split: predict_all(run.runner, rows, advance=bar.advance)
                                    for split, rows in negatives.bitmaps.items()}
    predicted = reference.probabilities.argmax(axis=1)
    confusion = metrics.confusion_matrix(heldout.labels, predicted, len(model.labels))
    scores = metrics.per_class_scores(confusion, model.labels)
    result = Evaluation(
        model=model, heldout=heldout, runs=runs, reference=reference,
        summary=metrics.summarize(reference.probabilities, heldout.labels),
        confusion=confusion, scores=scores,
        confused=metrics.most_confused(confusion, model.labels, CONFUSED_PAIRS),
        out_dir=Path(out_dir) if out_dir is not None else default_out_dir(model),
        calibration=measure_calibration(reference, heldout.labels, model.classifier.temperature),
        unknown=unknown_set, negatives=negatives,
    )
    result.open_set, result.open_set_note = _open_set(model, reference, heldout)
    if write_files:
        write_outputs(result, plots, bar)
    return result


def _open_set(model: ModelInfo, reference: BackendRun, heldout: HeldOut) -> tuple[OpenSetFigures | None, str | None]:
    """The model's own rule on the reference backend's outputs, or why it cannot be applied."""
    rule = model.classifier.model_open_set
    if rule is None:
        return None, f"{model.path.name} was exported without an open-set rule: it cannot flag unknown drawings"
    if rule.output not in reference.outputs:
        return None, f"the {reference.name} backend gives no {rule.output}, which the open-set rule {rule.rule} reads"
    return open_set_figures(rule, reference.outputs, heldout.labels, reference.unknown_outputs,
                            reference.negative_outputs), None


def write_outputs(result: Evaluation, plots: bool = True, progress: ProgressBar | None = None) -> dict[str, Path]:
    """The report folder's files, all or none: confusion.png, mistakes.png and calibration.png (unless plots is
    False) drawn in memory, then written with report.json (which lists them) in one qd.files.atomic_targets,
    under the folder's writer lock; an earlier report's plots that this one has none of go with the change.
    On any failure (a full disk, a folder in the way) the report already in the folder is exactly as it was,
    no temp file is left, and the one error names the file it hit."""
    out = result.out_dir
    if progress is not None:
        progress.step("drawing plots" if plots else "writing the report")
    keys = [*PLOTS, "report"] if plots else ["report"]
    files = {key: out / REPORT_FILES[key] for key in keys}
    contents = _draw_plots(result) if plots else {}
    result.files = files  # report.json lists them
    contents["report"] = json_text(build_report(result)).encode("utf-8")
    try:
        with folder_lock(out), atomic_targets(list(files.values()),
                                              remove=[out / REPORT_FILES[key] for key in PLOTS if key not in files]
                                              ) as temps:
            for key, path in files.items():
                with os_errors_name(path), open(temps[path], "wb") as f:
                    f.write(contents[key])
    except OSError as exc:
        where = os.fsdecode(exc.filename) if exc.filename is not None else out
        raise QDError(f"{where}: {reason_of(exc)}; no report written (the report files already in {out} are as "
                      "they were)") from None
    return files


def _draw_plots(result: Evaluation) -> dict[str, bytes]:
    """The plots' PNG bytes, drawn in memory."""
    title = f"{result.model.name}: top-1 {result.summary.top1:.1%} on {len(result.heldout):,} drawings ({result.reference.name})"
    pngs = {key: io.BytesIO() for key in PLOTS}
    plot_confusion(result.confusion, result.model.labels, pngs["confusion"], title)
    plot_mistakes(result.heldout.bitmaps, result.heldout.labels, result.reference.probabilities, result.model.labels,
                  pngs["mistakes"], f"{result.model.name}: misclassified drawings (true → predicted)",
                  result.heldout.origins)
    plot_reliability(result.calibration, pngs["calibration"], f"{result.model.name}: calibration on "
                     f"{len(result.heldout):,} drawings ({result.reference.name})")
    return {key: png.getvalue() for key, png in pngs.items()}
