"""`qd-infer`: classify drawings (images, .npy, .ndjson, folders) with an exported ONNX model.

Only typer is imported at module level: numpy, Pillow and onnxruntime load inside
the command, so `qd-infer --help` starts fast.
"""

from __future__ import annotations

from typing import List, Optional

import typer

from qd.data.console import run_app
from qd.data.errors import QDError
from qd.data.limits import MAX_BATCH_SIZE, MAX_THREADS, MAX_WORKERS

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode="rich",
                  context_settings={"help_option_names": ["-h", "--help"]})



@app.command()
def infer(
    inputs: List[str] = typer.Argument(..., metavar="INPUT...",
                                       help="Images (PNG, JPEG, BMP, GIF, WebP), .npy drawing arrays, "
                                            ".ndjson Quick, Draw! drawings, or folders of them (hidden files skipped)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", metavar="PATH",
                                        help="model.onnx or an export folder (default: the newest "
                                             "artifacts/exports/*/model.onnx)"),
    top: int = typer.Option(3, "--top", "-k", min=1, help="How many labels to show per drawing."),
    batch_size: int = typer.Option(512, "--batch-size", "-b", min=1, max=MAX_BATCH_SIZE,
                                     help="Drawings per onnxruntime run."),
    json_lines: bool = typer.Option(False, "--json", help="JSON lines on stdout (one object per drawing)."),
    csv_out: bool = typer.Option(False, "--csv", help="CSV on stdout."),
    recursive: bool = typer.Option(True, "--recursive/--no-recursive", help="Search folders recursively."),
    workers: Optional[int] = typer.Option(None, "--workers", "-w", min=1, max=MAX_WORKERS, show_default=False,
                                          help="Image decoding processes (default: one per CPU)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, max=MAX_THREADS,
                                          help="onnxruntime intra-op threads (default: 1 while worker processes "
                                               "decode images, else onnxruntime decides)."),
    unknown_threshold: Optional[float] = typer.Option(None, "--unknown-threshold", metavar="X",
                                                      help="Flag drawings whose open-set score is below X instead "
                                                           "of the model's own threshold (docs/open-set.md)."),
    no_unknown: bool = typer.Option(False, "--no-unknown", help="Do not flag any drawing unknown."),
) -> None:
    """Classify drawings with an exported quickdraw-edge model.

    Each drawing the model's open-set rule does not recognise is marked unknown (with its
    closest classes still listed). Unreadable inputs are reported one line each on stderr
    while the rest are classified; the exit code is 1 if any input failed.
    """
    if json_lines and csv_out:
        raise QDError("--json and --csv cannot be used together")
    if no_unknown and unknown_threshold is not None:
        raise QDError("--no-unknown and --unknown-threshold cannot be used together")
    from qd.data.machine import usable_cpus

    from .run import run_inference

    fmt = "json" if json_lines else "csv" if csv_out else "table"
    summary = run_inference(inputs, model=model, top=top, batch_size=batch_size, fmt=fmt,
                            recursive=recursive, workers=workers or usable_cpus(), threads=threads,
                            unknown_threshold=unknown_threshold, flag_unknown=not no_unknown)
    if summary.failed or summary.classified == 0:
        raise typer.Exit(1)


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
