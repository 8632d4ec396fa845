"""What a training run shows: a progress bar per epoch, one line per epoch, a final table.

Only rank 0 reports; `quiet` silences everything (tests, library use).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from rich.console import Console
from rich.filesize import decimal as human_size
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from qd.command import console as default_console, shown
from qd.data.contract import BEST_CHECKPOINT


def near_chance(top1: float, classes: int) -> bool:
    """Top-1 that says the network has learned (almost) nothing: below twice chance, or below
    chance plus 15 points where twice chance is more than that (few classes)."""
    chance = 1.0 / classes
    return top1 < min(2.0 * chance, chance + 0.15)


def fmt_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Reporter:
    def __init__(self, enabled: bool, console: Console | None = None):
        self.enabled = enabled
        self.console = console or default_console
        self._started = time.perf_counter()

    def print(self, *args, **kwargs) -> None:
        if self.enabled:
            self.console.print(*args, soft_wrap=True, **kwargs)

    def start(self, *, run_dir: Path, arch: str, params: int, classes: int, train: int, val: int, test: int,
              device: str, precision: str, world_size: int, resumed_from: int | None,
              chosen: dict | None = None, parent: dict | None = None) -> None:
        if not self.enabled:
            return
        where = f"{device}" + (f" x {world_size} ranks" if world_size > 1 else "")
        where += " (bf16 autocast)" if precision == "bf16" else ""
        self.print(Text.assemble(("qd-train", "bold"), " ", shown(arch),
                                 f", {params:,} parameters, {classes} classes, on {where}"), highlight=False)
        self.print(f"drawings: {train:,} train / {val:,} val / {test:,} test", highlight=False)
        self.print(Text.assemble("run folder: ", shown(run_dir)), highlight=False)
        picked = [f"{'batch size' if k == 'batch_size' else k} {v}" for k, v in (chosen or {}).items() if v]
        if picked:
            self.print(f"{' and '.join(picked)}, chosen for {train:,} training drawings "
                       "(--batch-size, --epochs to set)", highlight=False)
        if parent is not None:
            self.print(Text.assemble("initialised from ", shown(parent["path"]),
                                     f": {parent['kept']} of {classes} classes keep their outputs",
                                     ", backbone frozen" if parent.get("frozen") else ""), highlight=False)
        if resumed_from is not None:
            self.print(f"resumed after epoch {resumed_from}")

    @contextlib.contextmanager
    def epoch_progress(self, epoch: int, epochs: int, steps: int):
        """Yields advance(n) to call once per step."""
        if not (self.enabled and self.console.is_terminal):  # a bar only makes sense on a terminal
            yield lambda samples=0: None
            return
        progress = Progress(
            TextColumn(f"epoch {epoch}/{epochs}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
            console=self.console, transient=True,
        )
        with progress:
            task = progress.add_task("train", total=steps, rate="")
            start = time.perf_counter()
            seen = [0]

            def advance(samples: int = 0) -> None:
                seen[0] += samples
                elapsed = time.perf_counter() - start
                rate = f"{seen[0] / elapsed:,.0f} samples/s" if elapsed > 0 else ""
                progress.update(task, advance=1, rate=rate)

            yield advance

    def epoch_line(self, m: dict, epochs: int, improved: bool, seconds_left: float) -> None:
        mark = " [green]best[/]" if improved else ""
        self.print(
            f"epoch {m['epoch']:>2}/{epochs}  loss {m['train_loss']:.3f}  val loss {m['val_loss']:.3f}  "
            f"val top-1 {100 * m['val_top1']:5.2f}%  {m['samples_per_s']:>6,.0f} samples/s  "
            f"left {fmt_duration(seconds_left)}{mark}",
            highlight=False,
        )

    def summary(self, *, run_dir: Path, best: dict, test: dict, params: int, size_bytes: int,
                seconds: float, stopped_early: bool, epochs_run: int, classes: int) -> None:
        if not self.enabled:
            return
        table = Table(title="qd-train result", show_header=True, header_style="bold")
        table.add_column("")
        table.add_column("value", justify="right")
        table.add_row("best epoch", f"{best['epoch']} of {epochs_run}" + (" (stopped early)" if stopped_early else ""))
        table.add_row("val top-1 / top-3", f"{100 * best['val_top1']:.2f}% / {100 * best['val_top3']:.2f}%")
        table.add_row("test top-1 / top-3", f"{100 * test['top1']:.2f}% / {100 * test['top3']:.2f}%")
        table.add_row("val / test loss", f"{best['val_loss']:.4f} / {test['loss']:.4f}")
        table.add_row("time", fmt_duration(seconds))
        table.add_row("parameters", f"{params:,} ({human_size(size_bytes)} fp32)")
        table.add_row("best checkpoint", shown(run_dir / BEST_CHECKPOINT))
        if near_chance(best["val_top1"], classes):
            table.add_row(Text("warning", style="bold red"),
                          Text(f"val top-1 is near chance ({100 / classes:.1f}% for {classes} classes): the network "
                               "has not learned; train longer (--epochs), on more drawings, or with a smaller "
                               "--batch-size", style="red"))
        self.console.print(table)
