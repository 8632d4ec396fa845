"""The export formats, in one table. Adding a format is one entry here.

Each entry names the file it writes in the export folder, the function that writes
it (to a temp path), the function that validates what was written (before it is
renamed into place), the Python packages it needs and the format it builds on.
The CLI help and the formats table in docs/export.md are generated from this table.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Callable

from qd.command import QDError
from qd.data.contract import MODEL_CANVAS_COREML, MODEL_CANVAS_ONNX, MODEL_COREML, MODEL_INT8_ONNX, MODEL_ONNX

from .canvas_export import export_coreml_canvas, export_onnx_canvas, validate_coreml_canvas, validate_onnx_canvas
from .defaults import ALL, DEFAULT_FORMATS, FORMAT_NAMES  # noqa: F401
from .coreml import export_coreml, validate_coreml
from .onnx_export import export_onnx, validate_onnx
from .quantize import export_int8, validate_int8


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

    def missing_packages(self) -> list[str]:
        return [pkg for pkg in self.needs if importlib.util.find_spec(pkg) is None]


FORMATS: dict[str, ExportFormat] = {f.name: f for f in (
    ExportFormat(
        "onnx", MODEL_ONNX, "fp32 ONNX, dynamic batch; labels and preprocessing in metadata",
        export_onnx, validate_onnx,
        "onnx.checker; I/O + metadata contract; onnxruntime vs torch on the test split at batch 1 and 64 "
        "(max |Δp| ≤ 1e-4, identical top-1)",
        needs=("torch", "onnx", "onnxscript", "onnxruntime"),
    ),
    ExportFormat(
        "onnx-int8", MODEL_INT8_ONNX, "int8 ONNX (static QDQ, calibrated on training drawings)",
        export_int8, validate_int8,
        "onnx.checker; contract; every weight in 8 bits (weight bytes ≤ 0.25× fp32's); vs fp32 on the test split, with this CPU's int8 kernels "
        "and with exact int8 arithmetic (as CPUs with VNNI compute): top-1 agreement ≥ 99% (refused only when "
        "an exact binomial test shows, at 95% confidence, that more than 1% of drawings change: e.g. up to 4 "
        "of 142, 35 of 2,656), max |Δp| ≤ 0.25, test top-1 loses no more drawings than that; "
        "images/s at batch 256 on this CPU, named",
        needs=("onnx", "onnxruntime"), builds_on="onnx",
    ),
    ExportFormat(
        "coreml", MODEL_COREML, "Core ML ML Program classifier, 28x28 grayscale image input (iOS 16+)",
        export_coreml, validate_coreml,
        "package reloads; ML Program iOS 16+; input, outputs, labels, input scaling, softmax head; "
        "predictions vs torch on macOS only",
        needs=("torch", "coremltools"), is_dir=True,
    ),
    ExportFormat(
        "onnx-canvas", MODEL_CANVAS_ONNX,
        "fp32 ONNX from an app's canvas: input canvas (1, 1, H, W) 0-255, dark ink on light, 28-2048 px a side; "
        "the clean-canvas preprocessing runs in the graph (docs/canvas.md)",
        export_onnx_canvas, validate_onnx_canvas,
        "onnx.checker; contract; on the test split rendered as canvases (sizes, line widths, offsets, greys): "
        "top-1 agreement with qd-infer (qd.data.images + model.onnx) ≥ 99%, max |Δp| reported; "
        "blank canvases give all-zero probabilities, flagged unknown",
        needs=("torch", "onnx", "onnxscript", "onnxruntime"), builds_on="onnx",
    ),
    ExportFormat(
        "coreml-canvas", MODEL_CANVAS_COREML,
        "Core ML ML Program from an app's canvas: grayscale image of 28-2048 px a side, the same graph as "
        "onnx-canvas (iOS 16+)",
        export_coreml_canvas, validate_coreml_canvas,
        "package reloads; ML Program iOS 16+; flexible grayscale input, outputs, metadata; agreement with "
        "qd-infer on canvases as onnx-canvas: Core ML's predictions on macOS, elsewhere the float32 module "
        "it was converted from",
        needs=("torch", "coremltools"), builds_on="onnx", is_dir=True,
    ),
)}
assert tuple(FORMATS) == FORMAT_NAMES, "export/defaults.py names the formats --help shows"


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
    lines = [f"{f.name} ({f.filename}): {f.description}." for f in FORMATS.values()]
    return f"Comma-separated formats, or '{ALL}'. " + " ".join(lines)


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
