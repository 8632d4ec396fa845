"""report.json (every figure), the rich terminal report and the plots, from one Evaluation.

confusion.png, mistakes.png and calibration.png, drawn with matplotlib's Agg backend (no display).

matplotlib is imported inside the functions: `qd-eval --help` and the edge
install's other commands never pay for it.
"""

from __future__ import annotations

import math
import os
import platform
import sys
from datetime import datetime, timezone

import numpy as np
from rich import box
from rich.console import Console, Group
from rich.filesize import decimal as human_size
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from qd import __version__
from qd.command import QDError, shown
from qd.data.contract import EVAL_REPORT_FORMAT
from qd.machine import cpu

from . import metrics

TERMINAL_CLASSES = 30  # rows of the per-class table on screen; report.json has them all
MISTAKES_LISTED = 1000  # in report.json, most confident first


def build_report(result) -> dict:
    ref = result.reference
    predicted = result.predicted
    report = {
        "format": EVAL_REPORT_FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        "machine": {"platform": platform.platform(), "processor": platform.machine(), "cpus": os.cpu_count(),
                    "cpu": cpu().to_dict()},
        "model": {
            "name": result.model.name,
            "path": str(result.model.path.resolve()),
            "labels": result.model.labels,
            "preprocessing": result.model.preprocessing,
            "split": result.model.split,
            "source_sha256": result.model.source_sha256,
        },
        "data": {**result.heldout.source, "count": len(result.heldout), "description": result.heldout.describe()},
        "notes": result.heldout.notes,
        "reference_backend": ref.name,
        "overall": {**result.summary.to_dict(), "macro_f1": metrics.macro_f1(result.scores),
                    "errors": int((predicted != result.heldout.labels).sum())},
        "per_class": [s.to_dict() for s in metrics.worst_first(result.scores)],
        "classes_without_data": [s.name for s in result.scores if s.support == 0],
        "most_confused": [p.to_dict() for p in result.confused],
        "confusion": {"labels": result.model.labels, "rows": "true class", "columns": "predicted class",
                      "counts": result.confusion.tolist()},
        "mistakes": mistakes_list(result),
        "calibration": result.calibration.to_dict() if result.calibration else None,
        "open_set": open_set_entry(result),
        "backends": [backend_entry(run, result) for run in result.runs],
        "files": {key: str(path.name) for key, path in result.files.items()},
    }
    return _finite(report)


def open_set_entry(result) -> dict:
    """The model's open-set rule at work on the reference backend, or why it could not be applied."""
    if result.open_set is None:
        entry = {"available": False, "reason": result.open_set_note}
    else:
        entry = {"available": True, **result.open_set.to_dict()}
    if result.negatives is not None:
        entry["negatives_data"] = result.negatives.source
    if result.unknown is not None:
        entry["unknown_data"] = {"paths": result.unknown.paths, "count": len(result.unknown),
                                 "description": result.unknown.describe(), "notes": result.unknown.notes}
    return entry


def mistakes_list(result, limit: int = MISTAKES_LISTED) -> list[dict]:
    """Misclassified drawings, most confident first, each with where it came from."""
    probs, labels, names = result.reference.probabilities, result.heldout.labels, result.model.labels
    predicted = result.predicted
    wrong = np.flatnonzero(predicted != labels)
    wrong = wrong[np.argsort(-probs[wrong, predicted[wrong]], kind="stable")][:limit]
    return [{"origin": result.heldout.origins[i] if result.heldout.origins else None,
             "true": names[labels[i]], "predicted": names[predicted[i]],
             "probability": float(probs[i, predicted[i]]), "true_probability": float(probs[i, labels[i]])}
            for i in wrong.tolist()]


def _versions() -> dict:
    import onnxruntime

    versions = {"quickdraw-edge": __version__, "python": platform.python_version(), "numpy": np.__version__,
                "onnxruntime": onnxruntime.__version__}
    torch = sys.modules.get("torch")  # only when the torch backend ran
    if torch is not None:
        versions["torch"] = torch.__version__
    return versions


def backend_entry(run, result) -> dict:
    entry = {"name": run.name, "status": "ok" if run.ran else "skipped", "reason": run.skipped, "note": run.note,
             "file": str(run.file.resolve()) if run.file else None, "size_bytes": run.size_bytes}
    if run.ran:
        summary = metrics.summarize(run.probabilities, result.heldout.labels)
        entry.update(summary.to_dict())
        entry["agreement_with_reference"] = metrics.agreement(run.probabilities.argmax(axis=1), result.predicted)
        entry["max_abs_probability_diff"] = float(abs(run.probabilities - result.reference.probabilities).max())
        entry["images_per_s_batch256"] = run.images_per_s
        entry["p50_latency_ms_single"] = run.p50_ms
        entry.update(_flagged_shares(run, result))
    return entry


def _flagged_shares(run, result) -> dict:
    """Share of the known (and --unknown) drawings this backend's outputs flag by the model's rule."""
    rule = result.model.classifier.model_open_set
    if rule is None or rule.output not in run.outputs:
        return {"known_flagged": None, "unknown_flagged": None, "negatives_flagged": None}
    unknown, negatives = run.unknown_outputs, run.negative_outputs
    return {"known_flagged": float(rule.unknown(run.outputs).mean()),
            "unknown_flagged": float(rule.unknown(unknown).mean()) if unknown is not None else None,
            "negatives_flagged": None if negatives is None else
            {split: metrics.flagged_share(rule, outputs) for split, outputs in negatives.items()}}


def _finite(value):
    """NaN/inf -> None, so report.json stays strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


# ---------------------------------------------------------------- terminal


def _score_style(value: float | None) -> str:
    if value is None:
        return "dim"
    return "green" if value >= 0.9 else "yellow" if value >= 0.75 else "red"


def _pct(value: float | None, style: bool = True) -> Text:
    if value is None:
        return Text("–", style="dim")
    return Text(f"{value:.1%}", style=_score_style(value) if style else "")


def _size(n: int | None) -> str:
    return "–" if n is None else human_size(n)


def overall_panel(report: dict) -> Panel:
    o = report["overall"]
    grid = Table.grid(padding=(0, 3))
    for _ in range(5):
        grid.add_column(justify="center")
    grid.add_row(*(Text(t, style="bold") for t in ("top-1", "top-3", "MAP@3", "macro F1", "drawings")))
    grid.add_row(_pct(o["top1"]), _pct(o["top3"]), _pct(o["map3"]), _pct(o["macro_f1"]),
                 Text(f"{o['count']:,}  ({o['errors']:,} wrong)"))
    lines = [grid, Text(""), shown(f"data: {report['data']['description']}", "dim"),
             Text(f"figures from the {report['reference_backend']} backend", style="dim")]
    lines += [shown(f"note: {n}", "yellow") for n in report["notes"][:6]]
    if len(report["notes"]) > 6:
        lines.append(Text(f"... and {len(report['notes']) - 6} more notes in report.json", style="yellow"))
    return Panel(Group(*lines), title=shown(report["model"]["name"], "bold"), box=box.ROUNDED, expand=False)


def class_table(report: dict) -> Table:
    rows = report["per_class"]
    listed = rows[:TERMINAL_CLASSES]
    title = "per class, worst first" + (f" ({len(listed)} of {len(rows)}; all in report.json)" if len(rows) > len(listed) else "")
    table = Table(title=title, box=box.SIMPLE_HEAVY, title_justify="left")
    table.add_column("class")
    for name in ("precision", "recall", "F1"):
        table.add_column(name, justify="right")
    table.add_column("support", justify="right")
    table.add_column("mistaken for", style="dim")
    worst_target = _worst_target(report)
    for row in listed:
        table.add_row(shown(row["class"]), _pct(row["precision"]), _pct(row["recall"]), _pct(row["f1"]),
                      f"{row['support']:,}", shown(worst_target.get(row["class"], "")))
    return table


def _worst_target(report: dict) -> dict[str, str]:
    labels = report["confusion"]["labels"]
    out = {}
    for t, counts in enumerate(report["confusion"]["counts"]):
        off = [(c, p) for p, c in enumerate(counts) if p != t and c > 0]
        if off:
            count, p = max(off)
            out[labels[t]] = f"{labels[p]} ({count})"
    return out


def confused_table(report: dict) -> Table | Text:
    pairs = report["most_confused"]
    if not pairs:
        return Text("no confusions: every drawing was classified correctly", style="green")
    table = Table(title="most confused pairs", box=box.SIMPLE_HEAVY, title_justify="left")
    table.add_column("true class")
    table.add_column("predicted as")
    table.add_column("count", justify="right")
    table.add_column("of true class", justify="right")
    for p in pairs:
        table.add_row(shown(p["true"]), shown(p["predicted"]), f"{p['count']:,}", f"{p['share']:.1%}")
    return table


def backend_table(report: dict) -> Group:
    """Backends that ran, side by side; those skipped and any notes listed under the table."""
    table = Table(title="backends, side by side", box=box.SIMPLE_HEAVY, title_justify="left")
    for name in ("backend", "top-1", "MAP@3", "agrees", "size", "images/s @256", "p50 1 image"):
        table.add_column(name, justify="left" if name == "backend" else "right", no_wrap=True)
    lines = []
    for b in report["backends"]:
        if b["status"] != "ok":
            lines.append(shown(f"{b['name']} skipped: {b['reason']}", "yellow"))
            continue
        speed = f"{b['images_per_s_batch256']:,.0f}" if b.get("images_per_s_batch256") else "–"
        latency = f"{b['p50_latency_ms_single']:.2f} ms" if b.get("p50_latency_ms_single") else "–"
        name = b["name"] + (" *" if b["name"] == report["reference_backend"] else "")
        table.add_row(name, _pct(b["top1"], style=False), _pct(b["map3"], style=False),
                      _pct(b["agreement_with_reference"], style=False), _size(b["size_bytes"]), speed, latency)
        if b["note"]:
            lines.append(shown(f"{b['name']}: {b['note']}", "yellow"))
    lines.append(Text("* reference; agrees = same top-1 class as the reference; speed = model call only, "
                      f"median of repeated runs, on {report.get('machine', {}).get('cpu', {}).get('summary', 'this CPU')}", style="dim"))
    return Group(table, *lines)


def _share(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}%}"


def confidence_panel(report: dict) -> Panel:
    """Calibration (ECE before / after) and the open-set rule at work."""
    lines = []
    cal = report.get("calibration")
    if cal:
        lines.append(Text(f"calibration: expected calibration error {_share(cal['ece_before'], 2)} before, "
                          f"{_share(cal['ece_after'], 2)} after temperature scaling (T = {cal['temperature']:.3g})"))
    o = report["open_set"]
    if not o["available"]:
        lines.append(shown(f"unknown drawings: {o['reason']}", "yellow"))
    else:
        known = o["known"]
        lines.append(Text(f"rule: unknown when {o['rule']} < {o['threshold']:.4g} (fitted to keep "
                          f"{o['kept_at_export']:.0%} of validation drawings)"))
        lines.append(Text(f"known drawings flagged unknown: {_share(known['flagged'])} of {known['count']:,}; "
                          f"top-1 of those accepted {_share(known['top1_accepted'])} (all: {_share(known['top1_all'])})"))
        if o["unknown"]:
            u = o["unknown"]
            auroc = "–" if u["auroc"] is None else f"{u['auroc']:.3f}"
            lines.append(Text(f"--unknown drawings flagged: {_share(u['flagged'])} of {u['count']:,}   AUROC {auroc}",
                              style="bold"))
        if o.get("negatives"):
            shares = ", ".join(f"{_share(part['flagged'])} of {part['count']:,} {'validation' if split == 'val' else split}"
                               for split, part in o["negatives"].items())
            lines.append(Text(f"held-out negatives flagged: {shares} (known drawings: {_share(known['flagged'])})",
                              style="bold"))
    if o.get("negatives_data", {}).get("note"):
        lines.append(shown(f"note: {o['negatives_data']['note']}", "yellow"))
    if o.get("unknown_data"):
        lines.append(shown(f"unknown data: {o['unknown_data']['description']}", "dim"))
        lines += [shown(f"note: {n}", "yellow") for n in o["unknown_data"]["notes"][:3]]
    return Panel(Group(*lines), title=Text("how sure it is", style="bold"), box=box.ROUNDED, expand=False)


def render(report: dict, console: Console, out_dir=None) -> None:
    console.print(overall_panel(report))
    console.print(confidence_panel(report))
    console.print(class_table(report))
    console.print(confused_table(report))
    console.print(backend_table(report))
    if out_dir is not None and report["files"]:
        files = ", ".join(report["files"][k] for k in ("report", "confusion", "mistakes", "calibration") if k in report["files"])
        console.print(Text.assemble(f"wrote {files} to ", shown(out_dir, "bold")), highlight=False)


def models_table(results) -> Table:
    """One line per model, when several were evaluated in one run."""
    table = Table(title="models, side by side", box=box.SIMPLE_HEAVY, title_justify="left")
    for name, justify in (("model", "left"), ("top-1", "right"), ("top-3", "right"), ("MAP@3", "right"),
                          ("macro F1", "right"), ("drawings", "right"), ("data", "left")):
        table.add_column(name, justify=justify)
    for r in results:
        table.add_row(shown(r.model.name), _pct(r.summary.top1), _pct(r.summary.top3), _pct(r.summary.map3),
                      _pct(metrics.macro_f1(r.scores)), f"{len(r.heldout):,}", shown(r.heldout.describe(), "dim"))
    return table


# ----------------------------------------------------------------------------- the plots

MISTAKES_SHOWN = 48
MISTAKE_COLUMNS = 8


def require_matplotlib() -> None:
    """Fail before any work is done, not after it, where the plots cannot be drawn."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise QDError("the plots need matplotlib, which is not installed: add the eval extra "
                      "(pip install '.[eval]'), or pass --no-plots for report.json alone")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    # Class names and file names are untrusted: "$\frac{$" in a label must be drawn as
    # written, not parsed as TeX (which fails, or draws something else); their control
    # characters are drawn made visible (_plain), as on a terminal.
    matplotlib.rcParams["text.parse_math"] = False
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(confusion: np.ndarray, labels: list[str], path, title: str):
    """Row-normalised confusion matrix (each row: where that class's drawings went).

    The colour scale is a square root so that 2-5% confusions stand out next to a
    90% diagonal; cells show whole percentages when there is room for them.
    """
    plt = _pyplot()
    from matplotlib.colors import PowerNorm

    labels, title = [_plain(label) for label in labels], _plain(title)
    rates = metrics.normalize_rows(confusion)
    n = len(labels)
    cell = 0.42 if n <= 40 else max(0.12, 17.0 / n)  # inches; big sets shrink towards ~17 inches
    side = max(5.0, n * cell + 2.5)
    fig, ax = plt.subplots(figsize=(side + 1.2, side), dpi=110 if n <= 60 else 150)
    image = ax.imshow(rates, cmap="Blues", norm=PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0), interpolation="nearest")
    font = max(3.0, min(9.0, cell * 20))
    ax.set_xticks(range(n), labels, rotation=90, fontsize=font)
    ax.set_yticks(range(n), labels, fontsize=font)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=11, pad=12)
    if n <= 40:
        for t, p in zip(*np.nonzero(confusion)):
            percent = 100 * rates[t, p]
            if percent >= 0.5:
                dark = rates[t, p] > 0.35
                ax.text(p, t, f"{percent:.0f}", ha="center", va="center", fontsize=font * 0.8,
                        color="white" if dark else "#08306b")
    ax.set_xticks(np.arange(-0.5, n, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, n, 1), minor=True)
    ax.grid(which="minor", color="#e6e6e6", linewidth=0.4)
    ax.tick_params(which="minor", length=0)
    bar = fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    bar.set_label("share of the true class's drawings")
    bar.set_ticks([0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0], labels=["0", "1%", "5%", "10%", "25%", "50%", "100%"])
    fig.tight_layout()
    return _save(fig, plt, path)


def pick_mistakes(labels: np.ndarray, probabilities: np.ndarray, limit: int = MISTAKES_SHOWN) -> np.ndarray:
    """Indices of misclassified drawings to show: the most confident mistakes first,
    taken round-robin over true classes so one bad class does not fill the grid."""
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    confidence = probabilities[wrong, predicted[wrong]]
    by_class: dict[int, list[int]] = {}
    for i in wrong[np.argsort(-confidence, kind="stable")]:
        by_class.setdefault(int(labels[i]), []).append(int(i))
    queues = sorted(by_class.values(), key=lambda q: -probabilities[q[0], predicted[q[0]]])
    chosen: list[int] = []
    depth = 0
    while len(chosen) < limit and any(depth < len(q) for q in queues):
        chosen += [q[depth] for q in queues if depth < len(q)][: limit - len(chosen)]
        depth += 1
    return np.array(chosen, dtype=np.int64)


def plot_mistakes(bitmaps: np.ndarray, labels: np.ndarray, probabilities: np.ndarray, classes: list[str],
                  path, title: str, origins: list[str] | None = None):
    """A grid of misclassified drawings, dark ink on white, captioned true -> predicted (p)
    and, under the drawing, where it came from (file#row or image path)."""
    plt = _pyplot()
    classes, title = [_plain(name) for name in classes], _plain(title)
    origins = [_plain(origin) for origin in origins] if origins else origins
    chosen = pick_mistakes(labels, probabilities)
    if len(chosen) == 0:
        fig, ax = plt.subplots(figsize=(6, 2), dpi=110)
        ax.axis("off")
        ax.text(0.5, 0.5, "no misclassified drawings", ha="center", va="center", fontsize=14)
        ax.set_title(title, fontsize=11)
        return _save(fig, plt, path)
    cols = min(MISTAKE_COLUMNS, len(chosen))
    rows = int(np.ceil(len(chosen) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.65, rows * 2.05 + 0.6), dpi=110, squeeze=False)
    predicted = probabilities.argmax(axis=1)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, chosen):
        ax.imshow(bitmaps[i].reshape(28, 28), cmap="gray_r", vmin=0, vmax=255, interpolation="nearest")
        p = predicted[i]
        ax.set_title(f"{_short(classes[labels[i]])}\n→ {_short(classes[p])} {probabilities[i, p]:.0%}",
                     fontsize=7.5, color="#b00020", linespacing=1.25)
        if origins:
            ax.text(0.5, -0.04, _short_left(origins[i]), transform=ax.transAxes, ha="center", va="top",
                    fontsize=5.5, color="#666666")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, plt, path)


def _plain(text: str) -> str:
    """Untrusted text as it is shown on a terminal: control characters made visible."""
    return shown(text).plain


def _short(name: str, width: int = 16) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def _short_left(text: str, width: int = 24) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1):]


def _save(fig, plt, target):
    """The PNG, written to `target` as it is (a path or a binary file: write_outputs draws into memory
    and writes the report's files together, all or none)."""
    try:
        fig.savefig(target, format="png")
    finally:
        plt.close(fig)
    return target


def plot_reliability(calibration, path, title: str):
    """Reliability diagram: accuracy against top-1 probability per bin, before and after
    temperature scaling, with the diagonal of perfect calibration and the share of drawings per bin."""
    plt = _pyplot()
    title = _plain(title)
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5.6, 6.2), dpi=110, sharex=True,
                                   gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], color="#9e9e9e", linestyle="--", linewidth=1, label="perfectly calibrated")
    after = calibration.after
    centres = (after.edges[:-1] + after.edges[1:]) / 2
    width = after.edges[1] - after.edges[0]
    curves = [(calibration.before, "#d95f02", "before (softmax of the logits)"),
              (after, "#1b6ca8", f"after (temperature {calibration.temperature:.3g})")]
    for offset, (curve, colour, label) in zip((-0.25, 0.25), curves):
        if curve is None:
            continue
        filled = curve.counts > 0
        share = curve.counts / max(curve.counts.sum(), 1)
        ax.plot(curve.confidence[filled], curve.accuracy[filled], color=colour, linewidth=1.2,
                label=f"{label}: ECE {curve.ece:.2%}")
        # marker area by the bin's share of drawings: a bin of three drawings should not look like a trend
        ax.scatter(curve.confidence[filled], curve.accuracy[filled], s=8 + 400 * share[filled], color=colour,
                   alpha=0.8, linewidths=0)
        hist.bar(centres + offset * width, share, width=width / 2, color=colour, alpha=0.7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    ax.set_title(title, fontsize=10)
    ax.grid(color="#eeeeee", linewidth=0.5)
    hist.set_xlabel("top-1 probability")
    hist.set_ylabel("drawings")
    hist.yaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    fig.tight_layout()
    return _save(fig, plt, path)
