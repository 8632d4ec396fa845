"""confusion.png, mistakes.png and calibration.png, drawn with matplotlib's Agg backend (no display).

matplotlib is imported inside the functions: `qd-eval --help` and the edge
install's other commands never pay for it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qd.command import QDError, shown
from qd.files import atomic_target

from .metrics import normalize_rows

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


def plot_confusion(confusion: np.ndarray, labels: list[str], path: Path, title: str) -> Path:
    """Row-normalised confusion matrix (each row: where that class's drawings went).

    The colour scale is a square root so that 2-5% confusions stand out next to a
    90% diagonal; cells show whole percentages when there is room for them.
    """
    plt = _pyplot()
    from matplotlib.colors import PowerNorm

    labels, title = [_plain(label) for label in labels], _plain(title)
    rates = normalize_rows(confusion)
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
                  path: Path, title: str, origins: list[str] | None = None) -> Path:
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


def _save(fig, plt, path: Path) -> Path:
    try:
        with atomic_target(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return path


def plot_reliability(calibration, path: Path, title: str) -> Path:
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
