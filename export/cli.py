"""`qd-export CHECKPOINT [--format onnx,onnx-int8,coreml|all] [--out DIR] [--opset N]`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table
from rich.text import Text

from qd.data.console import EXIT_ERROR, console, fail, run_app, shown
from qd.infer.openset import DEFAULT_KEPT

try:  # the edge install (no torch/onnx) gets one clear line from main(), not a traceback
    from .api import ExportReport, export_checkpoint
    from .card import LABELS_NAME
    from .context import DEFAULT_INT8_MAX_PROB_DIFF, DEFAULT_INT8_TOLERANCE, DEFAULT_OPSET
    from .formats import DEFAULT_FORMATS, help_text
    from .source import DEFAULT_MAX_DRAWINGS
    MISSING = None
except ImportError as exc:  # pragma: no cover - exercised only without the export extra
    MISSING = exc.name or str(exc)
    DEFAULT_OPSET, DEFAULT_FORMATS, DEFAULT_MAX_DRAWINGS, ExportReport = 18, "onnx", 10_000, None
    DEFAULT_INT8_TOLERANCE, DEFAULT_INT8_MAX_PROB_DIFF = 0.01, 0.25
    LABELS_NAME = "labels.txt"

    def help_text() -> str:
        return "Comma-separated formats, or 'all'."

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False,
                  help="Export a qd-train checkpoint to validated edge models (ONNX, int8 ONNX, Core ML).")


@app.command()
def export(
    checkpoint: Path = typer.Argument(..., help="A qd-train checkpoint (best.pt); loaded with weights_only=True."),
    format: str = typer.Option(DEFAULT_FORMATS, "--format", "-f", help=help_text()),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", show_default=False,
        help="Export folder. Default: $QD_ARTIFACTS/exports/<run-name> or artifacts/exports/<run-name>, "
             "run-name being the checkpoint's folder name."),
    opset: int = typer.Option(DEFAULT_OPSET, "--opset", help="ONNX opset (13 and newer; 18+ uses the torch.export exporter)."),
    data: Optional[Path] = typer.Option(
        None, "--data", show_default=False,
        help="Folder of <category>.npy files to validate and calibrate with, if the checkpoint's own data "
             "folder has moved."),
    max_drawings: int = typer.Option(DEFAULT_MAX_DRAWINGS, "--max-drawings",
                                     help="Check on at most this many test-split drawings (evenly spaced)."),
    int8_tolerance: float = typer.Option(
        DEFAULT_INT8_TOLERANCE, "--int8-tolerance",
        help="onnx-int8: the share of test drawings whose top-1 may differ from fp32 (0.01: agreement ≥ 99%)."),
    int8_max_dp: float = typer.Option(
        DEFAULT_INT8_MAX_PROB_DIFF, "--int8-max-dp",
        help="onnx-int8: the largest change of any probability of any test drawing against fp32."),
    kept: float = typer.Option(DEFAULT_KEPT, "--kept", metavar="SHARE",
                               help="Fit the unknown-drawing threshold so that this share of the known validation "
                                    "drawings is kept (the rest would be flagged unknown)."),
) -> None:
    with console.status("loading checkpoint") as status:
        report = export_checkpoint(checkpoint, format, out=out, opset=opset, data_dir=data,
                                   max_drawings=max_drawings, int8_tolerance=int8_tolerance,
                                   int8_max_prob_diff=int8_max_dp, kept=kept,
                                   on_step=lambda msg: status.update(msg))
    print_report(report)
    if not report.ok:
        for message in report.errors:
            fail(message)
        raise typer.Exit(EXIT_ERROR)


def _size(path: Path) -> str:
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
    return f"{size:,} B" if size < 10_000 else f"{size / 1024:,.1f} KiB"


def _mark(check) -> tuple[str, str]:
    if check.values.get("skipped"):
        return ("–", "yellow")
    return ("✓", "green") if check.passed else ("✗", "red")


def print_report(report: "ExportReport") -> None:
    console.print(Text.assemble("checkpoint  ", shown(report.source.path, "bold"),
                                f" ({len(report.source.classes)} classes, sha256 {report.source.sha256[:12]})"),
                  highlight=False)
    console.print(Text.assemble("export to   ", shown(report.out_dir, "bold")), highlight=False)
    console.print(Text.assemble("checked on  ", shown(report.validation_data)), highlight=False)
    for note in report.notes:
        console.print(Text.assemble(("note:", "yellow"), " ", shown(note)), highlight=False)
    table = Table(title="qd-export", title_justify="left")
    table.add_column("format", no_wrap=True)
    table.add_column("file", no_wrap=True)
    table.add_column("checks")
    for result in report.results:
        if result.ok:
            file_cell = Text(f"{result.path.name}\n{_size(result.path)}")
        else:
            file_cell = Text(f"{result.path.name}\nnot written", style="red")
        lines = [Text.assemble(_mark(check), " ", shown(f"{check.name}: {check.detail}")) for check in result.checks]
        if result.error and (not result.checks or all(c.passed for c in result.checks)):
            lines.append(Text.assemble(("✗", "red"), " ", shown(result.error)))
        table.add_row(result.format.name, file_cell, Text("\n").join(lines))
    for extra in (report.labels, report.card):
        if extra is not None:
            label = "labels" if extra.name == LABELS_NAME else "card"
            what = ("class names, one per line" if label == "labels"
                    else "classes, preprocessing, source metrics, sha256 of each file, checks")
            table.add_row(label, f"{extra.name}\n{_size(extra)}", what)
    console.print(table)


def main() -> None:
    if MISSING:
        fail(f"qd-export needs {MISSING}: pip install -c constraints.txt 'quickdraw-edge[export]'")
        raise SystemExit(EXIT_ERROR)
    run_app(app)
