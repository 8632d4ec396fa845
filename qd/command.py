"""What every `qd-*` command and API call shares to report: the one exception type, the consoles,
the one escaping function for untrusted text, the wrapper every entry point runs through, and the
one progress bar. (The options every command spells the same way: qd.options.)

Errors. QDError is every expected failure, its message one line naming the file (or thing) and
the problem, so each CLI can print it as one line.

Consoles. Expected failures (QDError, OS errors such as a full disk or a permission problem)
become one `error: ...` line on stderr and a non-zero exit, never a traceback; so does
anything unexpected (a bug, or a library failing on hostile bytes), and Ctrl-C says so.

File names, labels, checkpoint class names, metadata and server replies are not ours:
every such string goes through `shown()` before it reaches a console, so it cannot
inject rich markup (`[/]` would raise MarkupError: a rich Text is never parsed as
markup), terminal escape codes (ESC, OSC 8 hyperlinks, C1 controls), fake lines (a
newline in a file name) or bidi overrides. Lines mixing our words with untrusted ones
are built with `Text.assemble(...)` from `shown()` pieces, never as markup f-strings.
CSV and JSON outputs never go through it: they carry the exact strings.

Progress. Bars for long runs: count, rate and time left, on stderr (or the console given), only
when that console is a terminal. unit="bytes" shows sizes and transfer speed instead (downloads).

    with ProgressBar("classifying", total=n, unit="drawings") as bar:
        for batch in batches:
            ...
            bar.advance(len(batch))
            bar.write_stdout(text)   # output for stdout, kept clear of the bar on a shared terminal

When its console is not a terminal (a pipe, a log file, CI) the bar does nothing at all, so
logs and pipes stay clean. When stdout is the same terminal, whatever a command prints on
stdout while the bar shows goes above the bar (through the bar's own cursor handling),
never through it; the bytes still go to stdout. The bar is redrawn from the caller's
thread at most 10 times a second, so it never writes while stdout is being written.

rich loads on first use (a console, shown(), a bar; rich.progress only when a bar is drawn):
every module of every stage imports QDError from here, the edge install and the decode
workers' fork server included, and those workers never print.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

# ----------------------------------------------------------------------------- errors

class QDError(Exception):
    """A failure the user can act on: bad input, missing file, refused artefact.

    The message is a single line that names the file (or thing) and the problem.
    """


class BitmapFileError(QDError):
    """A file that is not a valid Quick, Draw! bitmap array (uint8, (N, 784))."""

    def __init__(self, path, problem: str):
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


def reason_of(exc: BaseException) -> str:
    """An exception's reason on one line: an OS error's strerror, else the first line of its message."""
    strerror = getattr(exc, "strerror", None)
    if strerror:
        return strerror
    return first_line(exc, 200)


def first_line(exc: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message, at most `limit` characters; its type name if it has none."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else type(exc).__name__


# ----------------------------------------------------------------------------- consoles

@cache
def _consoles() -> tuple[Console, Console]:
    """(stdout's console, stderr's), made on first use. emoji=False: a file named `:cat:.png` is
    shown as it is named, not as a picture."""
    from rich.console import Console

    return Console(emoji=False), Console(stderr=True, emoji=False)


def __getattr__(name: str) -> Console:
    """`console` (stdout) and `err_console` (stderr): every command's two consoles."""
    if name == "console":
        return _consoles()[0]
    if name == "err_console":
        return _consoles()[1]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process SIGTERM ended
TRACEBACK_ENV = "QD_TRACEBACK"  # set to 1 to get the traceback of an unexpected error (developers)

# C0 and C1 controls and DEL; line and paragraph separators; bidi controls and invisible
# marks that can make a name read as something else; lone surrogates (from file names
# that are not valid UTF-8, decoded with surrogateescape).
# TERMINAL_UNSAFE: the one list of characters a terminal may act on or that make text read as something
# else (C1 controls and DEL, bidi controls, invisible marks, line and paragraph separators), as a regex
# character-class body; qd-infer's JSON output escapes the same ones.
TERMINAL_UNSAFE = "\x7f-\x9f\u061c\u200b\u200e\u200f\u2028-\u202e\u2060-\u2064\u2066-\u2069\ufeff"
_INVISIBLE = re.compile(f"[\x00-\x1f{TERMINAL_UNSAFE}\ufff9-\ufffb\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _visible(match: re.Match) -> str:
    char = match.group()
    code = ord(char)
    if char in _NAMED:
        return _NAMED[char]
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8, as Python's surrogateescape keeps it
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def shown(text: object, style: str = "") -> Text:
    """`text` as a rich Text that shows exactly its characters: control characters made visible
    (`\\x1b`, `\\n`, `\\u202e`), never read as markup. The one escaping function for every
    untrusted string shown to a person."""
    from rich.text import Text

    return Text(_INVISIBLE.sub(_visible, str(text)), style=style)


def fail(message: str) -> None:
    """One `error: ...` line on stderr; `message` is plain text (file names and all), never markup."""
    from rich.text import Text

    _consoles()[1].print(Text.assemble(("error:", "bold red"), " ", shown(message)), highlight=False, soft_wrap=True)


def describe_os_error(exc: OSError) -> str:
    """`<file>: <reason>`. Every write names its file (qd.files.os_errors_name); an OS error that names
    none is a gap in that, and says so rather than blaming a made-up "I/O"."""
    reason = exc.strerror or str(exc)
    where = exc.filename
    if where is None:
        return f"{reason} (in a file this error does not name; please report it)"
    return f"{os.fsdecode(where) if isinstance(where, bytes) else where}: {reason}"


def describe_unexpected(exc: BaseException) -> str:
    """One line for an exception nobody expected: its type and the first line of its message."""
    if isinstance(exc, MemoryError):
        return "out of memory"
    lines = str(exc).strip().splitlines()
    first = lines[0][:200] if lines else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that it takes Ctrl-C's clean way out: every `with` and
    `finally` runs (worker pools shut down, their processes end, temp files are removed)."""


def _terminate(signum, frame) -> None:
    raise Terminated()


def run_app(app, interrupted_hint: str = "") -> None:
    """Run a typer app, turning every failure into one clean line and a non-zero exit
    (SIGTERM included: the same clean exit as Ctrl-C, with exit code 143)."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        _run(app, interrupted_hint)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(app, interrupted_hint: str) -> None:
    try:
        app()
    except QDError as exc:
        fail(str(exc))
        sys.exit(EXIT_ERROR)
    except OSError as exc:
        fail(describe_os_error(exc))
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt as exc:
        sys.exit(_say_interrupted(interrupted_hint, exc))
    except SystemExit as exc:
        interrupt = _interrupt_of(exc) if exc.code == EXIT_INTERRUPTED else None
        if interrupt is not None:  # typer turns Ctrl-C into exit 130, silently
            sys.exit(_say_interrupted(interrupted_hint, interrupt))
        raise
    except MemoryError:
        fail("out of memory")
        sys.exit(EXIT_ERROR)
    except Exception as exc:  # a bug, or a library failing on hostile input: still one line
        if os.environ.get(TRACEBACK_ENV):
            raise
        fail(f"unexpected error: {describe_unexpected(exc)} (set {TRACEBACK_ENV}=1 for the traceback, "
             "and please report it)")
        sys.exit(EXIT_ERROR)


def _say_interrupted(hint: str, interrupt: KeyboardInterrupt) -> int:
    """Say how the run was stopped; its exit code."""
    terminated = isinstance(interrupt, Terminated)
    fail(("terminated (SIGTERM)" if terminated else "interrupted (Ctrl-C)") + (f"; {hint}" if hint else ""))
    return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED


def _interrupt_of(exc: BaseException) -> KeyboardInterrupt | None:
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


# ----------------------------------------------------------------------------- progress

REDRAW_SECONDS = 0.1


def _rate_column(unit: str):
    """A rich progress column: "1,234 drawings/s" over the last few seconds."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:,.0f} {unit}/s" if speed else f"– {unit}/s", style="progress.data.speed")

    return RateColumn()


class ProgressBar:
    """One task's progress; inert unless `console` (stderr by default) is a terminal
    (or `enabled` says otherwise: False for an API call that must never draw).
    `unit="bytes"`: sizes and transfer speed rather than a count and a rate."""

    def __init__(self, description: str, total: int | None = None, unit: str = "drawings",
                 console: Console | None = None, stdout: Console | None = None, enabled: bool | None = None,
                 completed: int = 0):
        stdout_console, err_console = _consoles()
        console = console if console is not None else err_console
        self.active = console.is_terminal if enabled is None else enabled
        self.stdout = stdout if stdout is not None else stdout_console
        self._last_draw = 0.0
        self._hooked = False
        self._above = False  # stdout output goes above the bar (it shows, on stdout's terminal)
        self._progress = None
        if self.active:
            from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, SpinnerColumn,
                                       TextColumn, TimeRemainingColumn, TransferSpeedColumn)

            counts = ((DownloadColumn(), TransferSpeedColumn()) if unit == "bytes"
                      else (MofNCompleteColumn(), _rate_column(unit)))
            self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False), BarColumn(),
                                      *counts, TextColumn("eta"), TimeRemainingColumn(), console=console,
                                      auto_refresh=False, transient=True, redirect_stdout=False, redirect_stderr=False)
            self._task = self._progress.add_task(shown(description).plain, total=total,  # untrusted text
                                                 completed=completed)

    def __enter__(self) -> "ProgressBar":
        if self.active:
            self._progress.start()  # what the bar's own console prints goes above it from now on
            if self.stdout.is_terminal and self.stdout is not self._progress.console:  # the same screen
                self.stdout.push_render_hook(self._progress.live)
                self._hooked = True
            self._above = self.stdout.is_terminal
            self._progress.refresh()
        return self

    def __exit__(self, *exc) -> None:
        if self.active:
            if self._hooked:
                self.stdout.pop_render_hook()
                self._hooked = False
            self._above = False
            self._progress.stop()

    def advance(self, count: int = 1) -> None:
        if self.active:
            self._progress.advance(self._task, count)
            self._redraw()

    def step(self, description: str, total: int | None = None, completed: int = 0) -> None:
        """Start a new step on the same bar (qd-eval: reading, then each backend)."""
        if self.active:
            self._progress.reset(self._task, total=total, completed=completed, description=shown(description).plain)
            self._redraw(force=True)

    def write_stdout(self, text: str) -> None:
        """Text for stdout: above the bar when they share a terminal, else written as it is."""
        if self._above:
            self.stdout.out(text, end="", highlight=False)
        else:
            sys.stdout.write(text)
            sys.stdout.flush()

    def _redraw(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_draw >= REDRAW_SECONDS:
            self._last_draw = now
            self._progress.refresh()
