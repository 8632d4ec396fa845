"""`qd-infer`: classify drawings (images, .npy, .ndjson, folders) with an exported ONNX model.

Only typer is imported at module level: numpy, Pillow and onnxruntime load inside
the command, so `qd-infer --help` starts fast. qd.infer.ray (and Ray) load only with --ray.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer
from typer.core import TyperCommand

from qd import options
from qd.command import QDError, run_app
from qd.data.contract import MAX_THREADS

from . import DEFAULT_BATCH_SIZE, DEFAULT_TOP, MAX_LANES

app = options.make_app()


class InferCommand(TyperCommand):
    """`--ray` takes an optional ADDRESS: a bare `--ray` (last, or before another option or an input
    that is not an address) means a local Ray."""

    def parse_args(self, ctx, args):
        args = list(args)
        if "--ray" not in args:
            return super().parse_args(ctx, args)
        from .ray import LOCAL, is_ray_address

        for i, arg in enumerate(args):
            if arg == "--":
                break
            if arg == "--ray" and (i + 1 == len(args) or not is_ray_address(args[i + 1])):
                args[i] = f"--ray={LOCAL}"
        return super().parse_args(ctx, args)


@app.command(cls=InferCommand, help=options.describe(
    "Classify drawings (images, .npy, .ndjson, folders of them) with an exported quickdraw-edge model.",
    "qd-infer my-drawings/ -m artifacts/exports/first --top 3",
    "Each drawing the model's open-set rule does not recognise is marked unknown (with its closest classes "
    "still listed). Unreadable inputs are reported one line each on stderr (and as records with an error field "
    "in --json and --csv, docs/output.md) while the rest are classified; the exit code is 1 if any input failed. "
    "With --ray [ADDRESS] --out DIR the same records go to files in DIR, classified on a Ray cluster (docs/ray.md)."))
def infer(
    inputs: Annotated[List[str], typer.Argument(
        metavar="INPUT...", show_default=False,
        help="Images (PNG, JPEG, BMP, GIF, WebP), .npy drawing arrays, .ndjson Quick, Draw! drawings, or "
             "folders of them (hidden files skipped).")],
    model: Annotated[Optional[str], options.model_option()] = None,
    top: Annotated[int, options.top_option()] = DEFAULT_TOP,
    batch_size: Annotated[int, options.batch_size_option("Drawings per onnxruntime run.")] = DEFAULT_BATCH_SIZE,
    json_lines: Annotated[bool, typer.Option(
        "--json", help="JSON lines on stdout, one record per drawing or failed input (docs/output.md).")] = False,
    csv_out: Annotated[bool, typer.Option(
        "--csv", help="CSV on stdout, one row per drawing or failed input (docs/output.md).")] = False,
    recursive: Annotated[bool, typer.Option("--recursive/--no-recursive", help="Search folders recursively.")] = True,
    workers: Annotated[Optional[int], options.workers_option(
        "Worker processes decoding images. Default: one per CPU.")] = None,
    threads: Annotated[Optional[int], typer.Option(
        "--threads", min=1, max=MAX_THREADS, metavar="N",
        help="onnxruntime threads, one batch at a time. Default: 1 while worker processes decode images; "
             f"else one batch per CPU core side by side (up to {MAX_LANES}).")] = None,
    unknown_threshold: Annotated[Optional[float], typer.Option(
        "--unknown-threshold", metavar="X",
        help="Flag drawings whose open-set score is below X instead of the model's own threshold "
             "(docs/open-set.md).")] = None,
    no_unknown: Annotated[bool, typer.Option("--no-unknown", help="Do not flag any drawing unknown.")] = False,
    ray_address: Annotated[Optional[str], typer.Option(
        "--ray", metavar="[ADDRESS]", show_default=False,
        help="Classify on Ray Data into --out: a local Ray started for the run (no ADDRESS), auto (the running "
             "cluster), HOST:PORT or ray://HOST:PORT. --workers is then the number of Ray workers (default: one "
             "per CPU), --threads their CPUs and onnxruntime threads each (default 1).")] = None,
    out: Annotated[Optional[str], options.out_option("With --ray: the folder the records go to (JSON lines or "
                                                   "Parquet files), written only when the run has finished.")] = None,
    out_format: Annotated[Optional[str], typer.Option(
        "--format", metavar="json|parquet", show_default=False,
        help="With --ray: JSON lines (default, the records of --json) or Parquet.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="With --ray: replace a non-empty --out.")] = False,
    artifacts: Annotated[Optional[Path], options.artifacts_option()] = None,
    version: Annotated[bool, options.version_option()] = False,
) -> None:
    if json_lines and csv_out:
        raise QDError("--json and --csv cannot be used together")
    if no_unknown and unknown_threshold is not None:
        raise QDError("--no-unknown and --unknown-threshold cannot be used together")
    if ray_address is not None:
        if csv_out:
            raise QDError("--ray writes JSON lines or Parquet (--format), not --csv")
        if out is None:
            raise QDError("--ray needs --out DIR, the folder the records go to")
        from .ray import run_cli

        raise typer.Exit(run_cli(inputs, out, ray_address, model=model, top=top, batch_size=batch_size,
                                 format=out_format or "json", recursive=recursive, workers=workers,
                                 threads=threads or 1, unknown_threshold=unknown_threshold,
                                 flag_unknown=not no_unknown, overwrite=overwrite))
    for given, name in ((out, "--out"), (out_format, "--format"), (overwrite, "--overwrite")):
        if given:
            raise QDError(f"{name} needs --ray (without it qd-infer writes to stdout)")
    from qd.machine import usable_cpus

    workers = workers or usable_cpus()
    if workers > 1:
        start_decoding_early(inputs)
    from .run import run_inference

    fmt = "json" if json_lines else "csv" if csv_out else "table"
    summary = run_inference(inputs, model=model, top=top, batch_size=batch_size, fmt=fmt,
                            recursive=recursive, workers=workers, threads=threads,
                            unknown_threshold=unknown_threshold, flag_unknown=not no_unknown)
    if summary.failed or summary.classified == 0:
        raise typer.Exit(1)


def start_decoding_early(inputs: List[str]) -> None:
    """Where worker processes may decode images (a folder, or enough image files), start their
    fork server now, before this process imports numpy, Pillow and onnxruntime: the server
    imports what the workers need on another core meanwhile, and is ready by the first image
    (started when the decoder is made, it would still be importing then)."""
    import os.path

    from qd.data.contract import IMAGE_SUFFIXES
    from qd.data.workers import MIN_FILES_FOR_PROCESSES, start_worker_server

    images = sum(1 for name in inputs if name.lower().endswith(IMAGE_SUFFIXES))
    if images >= MIN_FILES_FOR_PROCESSES or any(os.path.isdir(name) for name in inputs):
        start_worker_server()


def main() -> None:
    import os

    # Before numpy loads: this process runs onnxruntime, never a large BLAS product, and a BLAS
    # thread per core only spins at numpy's import (about 0.08 s of CPU every run).
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    run_app(app)


if __name__ == "__main__":
    main()
