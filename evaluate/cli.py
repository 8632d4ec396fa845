"""qd-eval: held-out report for exported models (thin typer layer over qd.evaluate.evaluation)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from qd.data.console import console, run_app
from qd.data.errors import QDError
from qd.data.progress import ProgressBar

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode="rich")


@app.command()
def evaluate_command(
    model: Optional[List[Path]] = typer.Option(None, "--model", "-m", metavar="PATH",
        help="Export folder or .onnx file; repeat for several. Default: the newest artifacts/exports/*/model.onnx."),
    data: Optional[Path] = typer.Option(None, "--data", "-d", metavar="DIR",
        help="Folder of <category>.npy files (all rows), or of class-named subfolders of drawings "
             "(images, .npy, .ndjson). Default: the test split of the data the model was trained on."),
    split: Optional[str] = typer.Option(None, "--split", metavar="SPLIT",
        help="train, val, test or all. Default: test of the training data; all of --data."),
    backend: Optional[List[str]] = typer.Option(None, "--backend", "-b", metavar="NAMES",
        help="Comma-separated: onnx, onnx-int8, torch, coreml. Default: all; those that cannot run are skipped "
             "with a reason. The first that runs gives the main figures."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", metavar="DIR",
        help="Output folder. Default: artifacts/eval/<model name> (with several models: DIR/<model name>)."),
    ignore_unknown: bool = typer.Option(False, "--ignore-unknown",
        help="Skip data categories the model does not know instead of stopping."),
    max_per_category: Optional[int] = typer.Option(None, "--max-per-category", metavar="N",
        help="With --data of .npy files: use the first N drawings of each category."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", metavar="PATH",
        help="Checkpoint for the torch backend. Default: the source named in the export's model.json."),
    speed: bool = typer.Option(True, "--speed/--no-speed", help="Measure images/s and single-image latency."),
    unknown: Optional[List[Path]] = typer.Option(None, "--unknown", "-u", metavar="PATH",
        help="Drawings of categories the model does not know (folders, images, .npy, .ndjson); repeat for "
             "several. Reports the share the model flags unknown and the AUROC against the held-out drawings."),
) -> None:
    """Evaluate exported models on held-out drawings: top-1, top-3, MAP@3, per-class scores, the most
    confused pairs, calibration, the open-set rule and every backend side by side. Writes report.json,
    confusion.png, mistakes.png and calibration.png.

    [dim]qd-eval -m artifacts/exports/RUN --backend onnx,onnx-int8[/]

    [dim]qd-eval -m artifacts/exports/RUN --data my_drawings/ --ignore-unknown[/]

    [dim]qd-eval -m artifacts/exports/RUN --unknown other_things/ --unknown moons.ndjson[/]
    """
    from .evaluation import evaluate, write_outputs
    from .report import build_report, render

    models = list(model) if model else [None]
    if checkpoint is not None and len(models) > 1:
        raise QDError("--checkpoint applies to one model; give one --model with it")
    if len(models) != len({str(m) for m in models}):
        raise QDError("--model: the same model is given twice")
    results = []
    for path in models:
        with ProgressBar("qd-eval", unit="drawings") as bar:
            result = evaluate(path, data=data, split=split, backends=backend, out_dir=out,
                              checkpoint=checkpoint, ignore_unknown=ignore_unknown,
                              max_per_category=max_per_category, measure_speed=speed, unknown=unknown,
                              write_files=False, progress=bar)
            if out is not None and len(models) > 1:
                result.out_dir = out / result.model.name
            if any(r.out_dir.resolve() == result.out_dir.resolve() for r in results):
                raise QDError(f"{result.model.path}: another model given has the same name "
                              f"{result.model.name!r}; evaluate them one at a time with --out")
            bar.step("drawing plots")
            write_outputs(result)
        render(build_report(result), console, result.out_dir)
        results.append(result)
    if len(results) > 1:
        from .report import models_table

        console.print(models_table(results))


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
