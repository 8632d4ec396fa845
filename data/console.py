"""Shared rich consoles and the wrapper every `qd-*` entry point runs through.

Expected failures (QDError, OS errors such as a full disk or a permission problem)
become one `error: ...` line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import sys

from rich.console import Console

from .errors import QDError

console = Console()
err_console = Console(stderr=True)

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


def fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", markup=True, highlight=False, soft_wrap=True)


def describe_os_error(exc: OSError) -> str:
    where = exc.filename if exc.filename is not None else "I/O"
    reason = exc.strerror or str(exc)
    return f"{where}: {reason}"


def run_app(app) -> None:
    """Run a typer app, turning expected failures into one clean line."""
    try:
        app()
    except QDError as exc:
        fail(str(exc))
        sys.exit(EXIT_ERROR)
    except OSError as exc:
        fail(describe_os_error(exc))
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        fail("interrupted")
        sys.exit(EXIT_INTERRUPTED)
