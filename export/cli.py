"""`qd-export`: a qd-train checkpoint -> validated edge models (ONNX, int8 ONNX, Core ML) in one folder.

torch, onnx and coremltools load inside the command, so `qd-export --help` prints at once.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.filesize import decimal as human_size
from rich.text import Text

from qd import options
from qd.command import EXIT_ERROR, console, fail, run_app, shown
from qd.data.contract import LABELS_FILE
from qd.files import path_size

from .formats import DEFAULT_FORMATS, FORMATS, ExportOptions, help_text

if TYPE_CHECKING:
    from .run import ExportReport

app = options.make_app()


@app.command(help=options.describe(
    "Export a qd-train checkpoint to validated edge models (ONNX, int8 ONNX, Core ML).",
    "qd-export artifacts/runs/first/best.pt --format all",
    "Each model is checked against the checkpoint before it is kept; the export folder is replaced as a whole."))
def export(
    checkpoint: Annotated[Path, typer.Argument(
        metavar="CHECKPOINT", show_default=False,
        help="A qd-train checkpoint (best.pt); loaded with weights_only=True.")],
    format: Annotated[str, typer.Option(
        "--format", "-f", metavar="FORMATS",
        help=help_text())] = DEFAULT_FORMATS,
    out: Annotated[Optional[Path], options.out_option(
        "Export folder. Default: ARTIFACTS/exports/<run-name>, run-name being the checkpoint's folder name.")] = None,
    opset: Annotated[int, typer.Option(
        "--opset", help="ONNX opset (13 and newer; 18+ uses the torch.export exporter).")] = ExportOptions.opset,
    data: Annotated[Optional[Path], options.data_option(
        "Folder of <category>.npy files to validate and calibrate with, if the checkpoint's own data "
        "folder has moved.")] = None,
    max_drawings: Annotated[int, typer.Option(
        "--max-drawings", help="Check on at most this many test-split drawings (evenly spaced).")] = ExportOptions.max_drawings,
    int8_tolerance: Annotated[float, typer.Option(
        "--int8-tolerance", help="onnx-int8: the share of test drawings whose top-1 may differ from fp32 "
                                 "(0.01: agreement ≥ 99%).")] = ExportOptions.int8_tolerance,
    int8_max_dp: Annotated[float, typer.Option(
        "--int8-max-dp", help="onnx-int8: the largest change of any probability of any test drawing "
                              "against fp32.")] = ExportOptions.int8_max_prob_diff,
    kept: Annotated[float, typer.Option(
        "--kept", metavar="SHARE", help="Fit the unknown-drawing threshold so that this share of the known "
                                        "validation drawings is kept (the rest would be flagged unknown).")] = ExportOptions.kept,
    artifacts: Annotated[Optional[Path], options.artifacts_option()] = None,
    version: Annotated[bool, options.version_option()] = False,
) -> None:
    try:  # the edge install (no torch/onnx) gets one clear line, not a traceback
        from .run import export_checkpoint
    except ImportError as exc:
        fail(f"qd-export needs {exc.name or exc}: pip install -c constraints.txt 'quickdraw-edge[export]'")
        raise typer.Exit(EXIT_ERROR) from None
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
    print_next_steps(report)


def next_commands(report: "ExportReport") -> list[str]:
    """Ready-to-run commands for what this export wrote (the formats whose row says qd-infer, qd-eval and
    qd-demo read them)."""
    written = {result.format.name for result in report.results if result.ok}
    readable = [f.name for f in FORMATS.values() if f.in_next_steps and f.name in written]
    if not readable:
        return []
    folder = shlex.quote(str(report.out_dir))
    backends = ",".join(readable)
    return [f"qd-infer my-drawings/ -m {folder}",
            f"qd-eval -m {folder}" + (f" --backend {backends}" if "," in backends else ""),
            f"qd-demo -m {folder}"]


def print_next_steps(report: "ExportReport") -> None:
    commands = next_commands(report)
    if commands:
        console.print("next:", highlight=False)
        for command in commands:
            console.print(Text.assemble("  ", shown(command, "bold")), highlight=False, soft_wrap=True)


def _mark(check) -> tuple[str, str]:
    if check.values.get("skipped"):
        return ("–", "yellow")
    return ("✓", "green") if check.passed else ("✗", "red")


def print_report(report: "ExportReport") -> None:
    from rich.table import Table

    console.print(Text.assemble("checkpoint  ", shown(report.source.path, "bold"),
                                f" ({len(report.source.classes)} classes, sha256 {report.source.sha256[:12]})"),
                  highlight=False)
    console.print(Text.assemble("export to   ", shown(report.out_dir, "bold")), highlight=False)
    console.print(Text.assemble("checked on  ", shown(report.validation_data)), highlight=False)
    if report.negatives:
        console.print(Text.assemble("negatives   ", shown(report.negatives)), highlight=False)
    for note in report.notes:
        console.print(Text.assemble(("note:", "yellow"), " ", shown(note)), highlight=False)
    table = Table(title="qd-export", title_justify="left")
    table.add_column("format", no_wrap=True)
    table.add_column("file", no_wrap=True)
    table.add_column("checks")
    for result in report.results:
        if result.ok:
            file_cell = Text(f"{result.path.name}\n{human_size(path_size(result.path))}")
        else:
            file_cell = Text(f"{result.path.name}\nnot written", style="red")
        lines = [Text.assemble(_mark(check), " ", shown(f"{check.name}: {check.detail}")) for check in result.checks]
        if result.error and (not result.checks or all(c.passed for c in result.checks)):
            lines.append(Text.assemble(("✗", "red"), " ", shown(result.error)))
        table.add_row(result.format.name, file_cell, Text("\n").join(lines))
    for extra in (report.labels, report.card):
        if extra is not None:
            label = "labels" if extra.name == LABELS_FILE else "card"
            what = ("class names, one per line" if label == "labels"
                    else "classes, preprocessing, source metrics, sha256 of each file, checks")
            table.add_row(label, f"{extra.name}\n{human_size(path_size(extra))}", what)
    console.print(table)


def main() -> None:
    run_app(app)
