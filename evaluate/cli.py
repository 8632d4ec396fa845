"""qd-eval: held-out report for exported models (thin typer layer over qd.evaluate.evaluation)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from qd import options
from qd.command import QDError, console, run_app

app = options.make_app()
# Old spellings, still accepted (hidden) for one release: -b is --batch-size in every other command.
ALIASES = {"-b": "--backend"}


@app.command(cls=options.aliased(ALIASES), help=options.describe(
    "Evaluate exported models on held-out drawings and write report.json, confusion.png, mistakes.png and "
    "calibration.png.",
    "qd-eval -m artifacts/exports/first --backend onnx,onnx-int8",
    "Top-1, top-3, MAP@3, per-class scores, the most confused pairs, calibration, the open-set rule and every "
    "backend side by side.\n\n\b\n"
    "qd-eval -m artifacts/exports/RUN -d my_drawings/ --ignore-unknown\n"
    "qd-eval -m artifacts/exports/RUN --unknown other_things/ --unknown moons.ndjson"))
def evaluate_command(
    model: Annotated[Optional[List[Path]], options.model_option(
        "Export folder or .onnx file; repeat for several. Default: the newest ARTIFACTS/exports/*/model.onnx.")] = None,
    data: Annotated[Optional[Path], options.data_option(
        "Folder of <category>.npy files (all rows), or of class-named subfolders of drawings (images, .npy, "
        ".ndjson). Default: the test split of the data the model was trained on.")] = None,
    split: Annotated[Optional[str], typer.Option(
        "--split", metavar="SPLIT", help="train, val, test or all. Default: test of the training data; all of "
                                         "--data.")] = None,
    backend: Annotated[Optional[List[str]], typer.Option(
        "--backend", metavar="NAMES",
        help="Comma-separated: onnx, onnx-int8, torch, coreml. Default: all; those that cannot run are skipped "
             "with a reason. The first that runs gives the main figures.")] = None,
    out: Annotated[Optional[Path], options.out_option(
        "Output folder. Default: ARTIFACTS/eval/<model name> (with several models: DIR/<model name>).")] = None,
    ignore_unknown: Annotated[bool, typer.Option(
        "--ignore-unknown", help="Skip data categories the model does not know instead of stopping.")] = False,
    max_per_category: Annotated[Optional[int], options.max_per_category_option(
        "With --data of .npy files: use the first N drawings of each category.")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(
        "--checkpoint", metavar="PATH",
        help="Checkpoint for the torch backend. Default: the source named in the export's model.json.")] = None,
    speed: Annotated[bool, typer.Option("--speed/--no-speed", help="Measure images/s and single-image latency.")] = True,
    plots: Annotated[bool, typer.Option(
        "--plots/--no-plots", help="Draw confusion.png, mistakes.png and calibration.png (matplotlib); "
                                   "--no-plots writes report.json alone, seconds sooner.")] = True,
    unknown: Annotated[Optional[List[Path]], typer.Option(
        "--unknown", "-u", metavar="PATH",
        help="Drawings of categories the model does not know (folders, images, .npy, .ndjson); repeat for "
             "several. Reports the share the model flags unknown and the AUROC against the held-out "
             "drawings.")] = None,
    workers: Annotated[Optional[int], options.workers_option(
        "Processes decoding image files (class folders, --unknown). Default: the usable CPU cores.")] = None,
    artifacts: Annotated[Optional[Path], options.artifacts_option()] = None,
    version: Annotated[bool, options.version_option()] = False,
) -> None:
    from qd.command import ProgressBar

    from .evaluation import evaluate, write_outputs
    from .report import require_matplotlib
    from .report import build_report, render

    models = list(model) if model else [None]
    if checkpoint is not None and len(models) > 1:
        raise QDError("--checkpoint applies to one model; give one --model with it")
    if len(models) != len({str(m) for m in models}):
        raise QDError("--model: the same model is given twice")
    if plots:
        require_matplotlib()
    results = []
    for path in models:
        with ProgressBar("qd-eval", unit="drawings") as bar:
            result = evaluate(path, data=data, split=split, backends=backend, out_dir=out,
                              checkpoint=checkpoint, ignore_unknown=ignore_unknown,
                              max_per_category=max_per_category, measure_speed=speed, unknown=unknown,
                              write_files=False, plots=plots, progress=bar, workers=workers)
            if out is not None and len(models) > 1:
                result.out_dir = out / result.model.name
            if any(r.out_dir.resolve() == result.out_dir.resolve() for r in results):
                raise QDError(f"{result.model.path}: another model given has the same name "
                              f"{result.model.name!r}; evaluate them one at a time with --out")
            write_outputs(result, plots, bar)
        render(build_report(result), console, result.out_dir)
        results.append(result)
    if len(results) > 1:
        from .report import models_table

        console.print(models_table(results))


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
