"""The export formats in one table, and qd-export's options. Importable without torch.

Each row names the file its format writes in the export folder, the function that
writes it (to a temp path), the function that validates what was written (before it
is renamed into place), the Python packages it needs, the format it builds on, how
qd-eval opens it and whether the commands printed after an export read it. Functions
are Lazy("module:function") references, imported when called, so `qd-export --help` and
qd-eval read the table without loading torch. Adding a format is its row here and its
own module. The CLI help, qd-eval's backends and the formats table in docs/export.md
come from this table.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from qd.command import QDError
from qd.data.contract import (DEFAULT_KEPT, MODEL_CANVAS_COREML, MODEL_CANVAS_ONNX, MODEL_COREML, MODEL_INT8_ONNX,
                              MODEL_ONNX, check_kept)

ALL = "all"
DEFAULT_FORMATS = "onnx"


@dataclass(frozen=True)
class ExportOptions:
    """What qd-export's options set besides the formats and the folder; the CLI's defaults are these."""

    opset: int = 18
    data_dir: Path | None = None  # the folder of <category>.npy files, if the checkpoint's own has moved
    max_drawings: int = 10_000  # test-split drawings the exported models are checked on
    int8_tolerance: float = 0.01  # share of test drawings whose top-1 int8 may change (quantize.allowed_changes)
    int8_max_prob_diff: float = 0.25  # largest change of any probability of any test drawing
    kept: float = DEFAULT_KEPT  # share of known validation drawings the open-set threshold keeps

    def check(self) -> None:
        if self.max_drawings < 1:
            raise QDError(f"--max-drawings must be at least 1, got {self.max_drawings}")
        if not 0 <= self.int8_tolerance < 1:
            raise QDError(f"--int8-tolerance must be a share from 0 to below 1, got {self.int8_tolerance}")
        if not 0 < self.int8_max_prob_diff <= 1:
            raise QDError(f"--int8-max-dp must be above 0 and at most 1, got {self.int8_max_prob_diff}")
        check_kept(self.kept)


@dataclass
class Check:
    """One check a validator ran on a written file."""

    name: str
    passed: bool
    detail: str
    values: dict = field(default_factory=dict)  # numbers for model.json
    hint: str = ""  # what the user can do if this check refuses the file

    def to_dict(self) -> dict:
        return {"check": self.name, "passed": self.passed, "detail": self.detail, **self.values}


@dataclass(frozen=True)
class Lazy:
    """The function named "package.module:function", its module imported when it is called."""

    reference: str

    def __call__(self, *args, **kwargs):
        module, name = self.reference.split(":")
        return getattr(importlib.import_module(module), name)(*args, **kwargs)


@dataclass(frozen=True)
class ExportFormat:
    name: str
    filename: str
    description: str
    exporter: Callable  # (ExportContext, temp path) -> None
    validator: Callable  # (ExportContext, temp path) -> list[Check]
    validates: str  # what the validator checks, for help and docs/export.md
    needs: tuple[str, ...] = ()  # importable packages
    builds_on: str | None = None  # another format whose file this one is made from
    is_dir: bool = False
    evaluated_by: Callable | None = None  # qd-eval's backend of this name: (ModelInfo, checkpoint) -> Runner
    in_next_steps: bool = False  # the commands printed after an export (qd-infer, qd-eval, qd-demo) read it

    def missing_packages(self) -> list[str]:
        return [pkg for pkg in self.needs if importlib.util.find_spec(pkg) is None]


FORMATS: dict[str, ExportFormat] = {f.name: f for f in (
    ExportFormat(
        "onnx", MODEL_ONNX, "fp32 ONNX, dynamic batch; labels and preprocessing in metadata",
        Lazy("qd.export.onnx_export:export_onnx"), Lazy("qd.export.onnx_export:validate_onnx"),
        "onnx.checker; I/O + metadata contract; onnxruntime vs torch on the test split at batch 1 and 64 "
        "(max |Δp| ≤ 1e-4, identical top-1)",
        needs=("torch", "onnx", "onnxscript", "onnxruntime"),
        evaluated_by=Lazy("qd.evaluate.backends:open_onnx"), in_next_steps=True,
    ),
    ExportFormat(
        "onnx-int8", MODEL_INT8_ONNX, "int8 ONNX (static QDQ, calibrated on training drawings)",
        Lazy("qd.export.quantize:export_int8"), Lazy("qd.export.quantize:validate_int8"),
        "onnx.checker; contract; every weight in 8 bits (weight bytes ≤ 0.25× fp32's); vs fp32 on the test split, with this CPU's int8 kernels "
        "and with exact int8 arithmetic (as CPUs with VNNI compute): top-1 agreement ≥ 99% (refused only when "
        "an exact binomial test shows, at 95% confidence, that more than 1% of drawings change: e.g. up to 4 "
        "of 142, 35 of 2,656), max |Δp| ≤ 0.25, test top-1 loses no more drawings than that; "
        "images/s at batch 256 on this CPU, named",
        needs=("onnx", "onnxruntime"), builds_on="onnx",
        evaluated_by=Lazy("qd.evaluate.backends:open_onnx_int8"), in_next_steps=True,
    ),
    ExportFormat(
        "coreml", MODEL_COREML, "Core ML ML Program classifier, 28x28 grayscale image input (iOS 16+)",
        Lazy("qd.export.coreml:export_coreml"), Lazy("qd.export.coreml:validate_coreml"),
        "package reloads; ML Program iOS 16+; input, outputs, labels, input scaling, softmax head; "
        "predictions vs torch on macOS only",
        needs=("torch", "coremltools"), is_dir=True,
        evaluated_by=Lazy("qd.evaluate.backends:open_coreml"),
    ),
    ExportFormat(
        "onnx-canvas", MODEL_CANVAS_ONNX,
        "fp32 ONNX from an app's canvas: input canvas (1, 1, H, W) 0-255, dark ink on light, 28-2048 px a side; "
        "the clean-canvas preprocessing runs in the graph (docs/canvas.md)",
        Lazy("qd.export.canvas:export_onnx_canvas"), Lazy("qd.export.canvas:validate_onnx_canvas"),
        "onnx.checker; contract; on the test split rendered as canvases (sizes, line widths, offsets, greys): "
        "top-1 agreement with qd-infer (qd.data.images + model.onnx) ≥ 99%, max |Δp| reported; "
        "blank canvases give all-zero probabilities, flagged unknown",
        needs=("torch", "onnx", "onnxscript", "onnxruntime"), builds_on="onnx",
    ),
    ExportFormat(
        "coreml-canvas", MODEL_CANVAS_COREML,
        "Core ML ML Program from an app's canvas: grayscale image of 28-2048 px a side, the same graph as "
        "onnx-canvas (iOS 16+)",
        Lazy("qd.export.canvas:export_coreml_canvas"), Lazy("qd.export.canvas:validate_coreml_canvas"),
        "package reloads; ML Program iOS 16+; flexible grayscale input, outputs, metadata; agreement with "
        "qd-infer on canvases as onnx-canvas: Core ML's predictions on macOS, elsewhere the float32 module "
        "it was converted from",
        needs=("torch", "coremltools"), builds_on="onnx", is_dir=True,
    ),
)}


def parse_formats(text: str) -> list[ExportFormat]:
    """'onnx,coreml' or 'all' -> formats in table order, with what they build on added."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if not names:
        raise QDError(f"--format: empty (choose from {', '.join(FORMATS)} or {ALL})")
    if ALL in names:
        names = list(FORMATS)
    unknown = [n for n in names if n not in FORMATS]
    if unknown:
        raise QDError(f"--format: unknown format {', '.join(unknown)} (choose from {', '.join(FORMATS)} or {ALL})")
    wanted = set(names)
    for name in names:
        base = FORMATS[name].builds_on
        while base:
            wanted.add(base)
            base = FORMATS[base].builds_on
    return [f for name, f in FORMATS.items() if name in wanted]


def help_text() -> str:
    """The --format option's help: every format with its file."""
    lines = [f"{f.name} ({f.filename})" for f in FORMATS.values()]
    return f"Comma-separated: {', '.join(lines)}; or '{ALL}'."


def markdown_table() -> str:
    """The formats table of docs/export.md, generated from FORMATS."""
    rows = ["| format | file | what | validated by | needs |", "|---|---|---|---|---|"]
    for f in FORMATS.values():
        needs = ", ".join(f.needs) + (f"; built from `{f.builds_on}`" if f.builds_on else "")
        cells = [f"`{f.name}`", f"`{f.filename}`", f.description, f.validates, needs]
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
