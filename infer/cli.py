"""`qd-infer`: classify drawings (images, .npy, .ndjson, folders) with an exported ONNX model.

Only typer is imported at module level: numpy, Pillow and onnxruntime load inside
the command, so `qd-infer --help` starts fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from qd.data import options as opt
from qd.data.console import run_app
from qd.data.errors import QDError
from qd.data.limits import MAX_THREADS

app = opt.make_app()


@app.command(help=opt.describe(
    "Classify drawings (images, .npy, .ndjson, folders of them) with an exported quickdraw-edge model.",
    "qd-infer my-drawings/ -m artifacts/exports/first --top 3",
    "Each drawing the model's open-set rule does not recognise is marked unknown (with its closest classes "
    "still listed). Unreadable inputs are reported one line each on stderr (and as records with an error field "
    "in --json and --csv, docs/output.md) while the rest are classified; the exit code is 1 if any input failed."))
def infer(
    inputs: Annotated[List[str], typer.Argument(
        metavar="INPUT...", show_default=False,
        help="Images (PNG, JPEG, BMP, GIF, WebP), .npy drawing arrays, .ndjson Quick, Draw! drawings, or "
             "folders of them (hidden files skipped).")],
    model: Annotated[Optional[str], opt.model_option()] = None,
    top: Annotated[int, opt.top_option()] = 3,
    batch_size: Annotated[int, opt.batch_size_option("Drawings per onnxruntime run.")] = 512,
    json_lines: Annotated[bool, typer.Option(
        "--json", help="JSON lines on stdout, one record per drawing or failed input (docs/output.md).")] = False,
    csv_out: Annotated[bool, typer.Option(
        "--csv", help="CSV on stdout, one row per drawing or failed input (docs/output.md).")] = False,
    recursive: Annotated[bool, typer.Option("--recursive/--no-recursive", help="Search folders recursively.")] = True,
    workers: Annotated[Optional[int], opt.workers_option(
        "Worker processes decoding images. Default: one per CPU.")] = None,
    threads: Annotated[Optional[int], typer.Option(
        "--threads", min=1, max=MAX_THREADS, metavar="N",
        help="onnxruntime intra-op threads (default: 1 while worker processes decode images, else onnxruntime "
             "decides).")] = None,
    unknown_threshold: Annotated[Optional[float], typer.Option(
        "--unknown-threshold", metavar="X",
        help="Flag drawings whose open-set score is below X instead of the model's own threshold "
             "(docs/open-set.md).")] = None,
    no_unknown: Annotated[bool, typer.Option("--no-unknown", help="Do not flag any drawing unknown.")] = False,
    artifacts: Annotated[Optional[Path], opt.artifacts_option()] = None,
    version: Annotated[bool, opt.version_option()] = False,
) -> None:
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
