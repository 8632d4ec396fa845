"""qd.command.run_app, every command's top level: any exception that escapes a command is
one `error:` line (never a traceback), out of memory says so, and Ctrl-C says it was interrupted,
with the command's hint, and exits 130."""

from __future__ import annotations

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
