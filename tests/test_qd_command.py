"""qd.command.run_app, every command's top level: any exception that escapes a command is
one `error:` line (never a traceback), out of memory says so, and Ctrl-C says it was interrupted,
with the command's hint, and exits 130. rich loads on first use: the decode workers never print."""

from __future__ import annotations

import subprocess
import sys

import typer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures_data import invoke_cli
from qd.command import run_app

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


EXCEPTIONS = st.sampled_from([ValueError, RuntimeError, KeyError, OverflowError, MemoryError, RecursionError,
                              ZeroDivisionError, AssertionError, IndexError, TypeError, AttributeError, LookupError,
                              UnicodeError, NotImplementedError, SystemError, ArithmeticError])


@SETTINGS
@given(kind=EXCEPTIONS, message=st.text(max_size=40))
def test_any_exception_escaping_a_command_is_one_line(kind, message):
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

    @app.command()
    def broken():
        raise kind(message)

    result = invoke_cli(lambda: run_app(app))
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: out of memory" if kind is MemoryError else "error: unexpected error: ")


def test_ctrl_c_in_any_command_says_so_and_exits_130():
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

    @app.command()
    def interrupted():
        raise KeyboardInterrupt

    result = invoke_cli(lambda: run_app(app, interrupted_hint="the rest is kept"))
    assert result.exit_code == 130
    assert result.stderr == "error: interrupted (Ctrl-C); the rest is kept\n"


def test_the_decode_workers_fork_server_imports_no_rich():
    """What the fork server imports for the decode workers (qd.data.workers.WORKER_MODULES) needs
    qd.command's QDError, never its consoles; the consoles are made, once, on first use."""
    script = ("import sys\n"
              "from qd.data.workers import WORKER_MODULES\n"
              "for name in WORKER_MODULES: __import__(name)\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] == 'rich'))\n"
              "from qd.command import console, err_console\n"
              "import qd.command\n"
              "print(qd.command.console is console, qd.command.err_console is err_console, console.stderr,"
              " err_console.stderr)")
    lines = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split("\n")
    assert lines[:2] == ["[]", "True True False True"]
