"""Progress bars for long runs: count, rate and time left, on stderr, only when stderr is a terminal.

    with ProgressBar("classifying", total=n, unit="drawings") as bar:
        for batch in batches:
            ...
            bar.advance(len(batch))
            bar.write_stdout(text)   # output for stdout, kept clear of the bar on a shared terminal

When stderr is not a terminal (a pipe, a log file, CI) the bar does nothing at all, so
logs and pipes stay clean. When stdout is the same terminal, whatever a command prints on
stdout while the bar shows goes above the bar (through the bar's own cursor handling),
never through it; the bytes still go to stdout. The bar is redrawn from the caller's
thread at most 10 times a second, so it never writes while stdout is being written.
"""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, SpinnerColumn, TextColumn,
                           TimeRemainingColumn)
from rich.text import Text

from .console import console as stdout_console
from .console import err_console, shown

REDRAW_SECONDS = 0.1


class RateColumn(ProgressColumn):
    """"1,234 drawings/s" over the last few seconds."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} {self.unit}/s" if speed else f"– {self.unit}/s", style="progress.data.speed")


class ProgressBar:
    """One task's progress; inert unless `console` (stderr by default) is a terminal
    (or `enabled` says otherwise: False for an API call that must never draw)."""

    def __init__(self, description: str, total: int | None = None, unit: str = "drawings",
                 console: Console = err_console, stdout: Console = stdout_console, enabled: bool | None = None):
        self.active = console.is_terminal if enabled is None else enabled
        self.stdout = stdout
        self._last_draw = 0.0
        self._hooked = False
        self._progress = None
        if self.active:
            self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False), BarColumn(),
                                      MofNCompleteColumn(), RateColumn(unit), TextColumn("eta"),
                                      TimeRemainingColumn(), console=console, auto_refresh=False,
                                      transient=True, redirect_stdout=False, redirect_stderr=False)
            self._task = self._progress.add_task(shown(description).plain, total=total)  # untrusted text

    def __enter__(self) -> "ProgressBar":
        if self.active:
            self._progress.start()
            if self.stdout.is_terminal:  # the same screen: stdout output goes above the bar
                self.stdout.push_render_hook(self._progress.live)
                self._hooked = True
            self._progress.refresh()
        return self

    def __exit__(self, *exc) -> None:
        if self.active:
            if self._hooked:
                self.stdout.pop_render_hook()
                self._hooked = False
            self._progress.stop()

    def advance(self, count: int = 1) -> None:
        if self.active:
            self._progress.advance(self._task, count)
            self._redraw()

    def step(self, description: str, total: int | None = None) -> None:
        """Start a new step on the same bar (qd-eval: reading, then each backend)."""
        if self.active:
            self._progress.reset(self._task, total=total, description=shown(description).plain)
            self._redraw(force=True)

    def write_stdout(self, text: str) -> None:
        """Text for stdout: above the bar when they share a terminal, else written as it is."""
        if self._hooked:
            self.stdout.out(text, end="", highlight=False)
        else:
            sys.stdout.write(text)
            sys.stdout.flush()

    def _redraw(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_draw >= REDRAW_SECONDS:
            self._last_draw = now
            self._progress.refresh()
