"""The evaluation itself, as an API: model + held-out data + backends -> figures and files.

    from qd.evaluate.evaluation import evaluate
    result = evaluate("artifacts/exports/compact-20260101-120000", backends=["onnx", "onnx-int8"])
    result.summary.top1, result.files["report"]
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qd.data.errors import QDError
from qd.data.files import write_json_atomic
from qd.data.paths import artifacts_root
from qd.data.progress import ProgressBar

from . import metrics
from .backends import BackendRun, parse_backends, run_backend
from .exports import ModelInfo, load_model_info
from .heldout import HeldOut, load_heldout
from .plots import plot_confusion, plot_mistakes
from .report import build_report

CONFUSED_PAIRS = 10


@dataclass
class Evaluation:
    model: ModelInfo
    heldout: HeldOut
    runs: list[BackendRun]
    reference: BackendRun               # the first backend that ran: the figures below are its
    summary: metrics.Summary
    confusion: np.ndarray
    scores: list[metrics.ClassScore]
    confused: list[metrics.ConfusedPair]
    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def predicted(self) -> np.ndarray:
        return self.reference.probabilities.argmax(axis=1)


def default_out_dir(model: ModelInfo) -> Path:
    return artifacts_root() / "eval" / model.name


def evaluate(model_path: str | os.PathLike | None = None, data: str | os.PathLike | None = None,
             split: str | None = None, backends: list[str] | None = None, out_dir: str | os.PathLike | None = None,
             checkpoint: str | os.PathLike | None = None, ignore_unknown: bool = False,
             max_per_category: int | None = None, measure_speed: bool = True, write_files: bool = True,
             progress: ProgressBar | None = None) -> Evaluation:
    """Evaluate one model; write report.json, confusion.png and mistakes.png unless write_files is False.

    `progress` (the CLI's bar on stderr) is stepped through the slow parts: reading, each backend.
    """
    bar = progress or ProgressBar("qd-eval", enabled=False)
    names = parse_backends(backends)
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise QDError(f"{checkpoint}: checkpoint not found")
    model = load_model_info(model_path)
    bar.step(f"loading held-out data for {model.name}")
    heldout = load_heldout(model, None if data is None else str(data), split, ignore_unknown, max_per_category, bar)
    runs = []
    for name in names:
        bar.step(f"{name}: classifying", total=len(heldout))
        runs.append(run_backend(name, model, checkpoint, heldout.bitmaps, measure_speed, bar))
    ran = [r for r in runs if r.ran]
    if not ran:
        reasons = "; ".join(f"{r.name}: {r.skipped}" for r in runs)
        raise QDError(f"{model.path}: no backend could run ({reasons})")
    reference = ran[0]
    predicted = reference.probabilities.argmax(axis=1)
    confusion = metrics.confusion_matrix(heldout.labels, predicted, len(model.labels))
    scores = metrics.per_class_scores(confusion, model.labels)
    result = Evaluation(
        model=model, heldout=heldout, runs=runs, reference=reference,
        summary=metrics.summarize(reference.probabilities, heldout.labels),
        confusion=confusion, scores=scores,
        confused=metrics.most_confused(confusion, model.labels, CONFUSED_PAIRS),
        out_dir=Path(out_dir) if out_dir is not None else default_out_dir(model),
    )
    if write_files:
        bar.step("drawing plots")
        write_outputs(result)
    return result


def write_outputs(result: Evaluation) -> dict[str, Path]:
    """confusion.png, mistakes.png, then report.json (which lists them), each written atomically."""
    out = result.out_dir
    title = f"{result.model.name}: top-1 {result.summary.top1:.1%} on {len(result.heldout):,} drawings ({result.reference.name})"
    result.files["confusion"] = plot_confusion(result.confusion, result.model.labels, out / "confusion.png", title)
    result.files["mistakes"] = plot_mistakes(result.heldout.bitmaps, result.heldout.labels, result.reference.probabilities,
                                             result.model.labels, out / "mistakes.png",
                                             f"{result.model.name}: misclassified drawings (true → predicted)",
                                             result.heldout.origins)
    result.files["report"] = out / "report.json"
    write_json_atomic(result.files["report"], build_report(result))
    return result.files
