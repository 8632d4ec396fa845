"""Shared rich consoles, the one escaping function for untrusted text, and the wrapper
every `qd-*` entry point runs through.

Expected failures (QDError, OS errors such as a full disk or a permission problem)
become one `error: ...` line on stderr and a non-zero exit, never a traceback; so does
anything unexpected (a bug, or a library failing on hostile bytes), and Ctrl-C says so.

File names, labels, checkpoint class names, metadata and server replies are not ours:
every such string goes through `shown()` before it reaches a console, so it cannot
inject rich markup (`[/]` would raise MarkupError: a rich Text is never parsed as
markup), terminal escape codes (ESC, OSC 8 hyperlinks, C1 controls), fake lines (a
newline in a file name) or bidi overrides. Lines mixing our words with untrusted ones
are built with `Text.assemble(...)` from `shown()` pieces, never as markup f-strings.
CSV and JSON outputs never go through it: they carry the exact strings.
"""

from __future__ import annotations

import os
import re
import sys

from rich.console import Console
from rich.text import Text

from .errors import QDError

# emoji=False: a file named `:cat:.png` is shown as it is named, not as a picture.
console = Console(emoji=False)
err_console = Console(stderr=True, emoji=False)

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
TRACEBACK_ENV = "QD_TRACEBACK"  # set to 1 to get the traceback of an unexpected error (developers)

# C0 and C1 controls and DEL; line and paragraph separators; bidi controls and invisible
# marks that can make a name read as something else; lone surrogates (from file names
# that are not valid UTF-8, decoded with surrogateescape).
_INVISIBLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b\u200e\u200f\u2028-\u202e\u2060-\u2064"
                        "\u2066-\u2069\ufeff\ufff9-\ufffb\ud800-\udfff]")
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
    return Text(_INVISIBLE.sub(_visible, str(text)), style=style)


def fail(message: str) -> None:
    """One `error: ...` line on stderr; `message` is plain text (file names and all), never markup."""
    err_console.print(Text.assemble(("error:", "bold red"), " ", shown(message)), highlight=False, soft_wrap=True)


def describe_os_error(exc: OSError) -> str:
    where = exc.filename if exc.filename is not None else "I/O"
    if isinstance(where, bytes):
        where = os.fsdecode(where)
    reason = exc.strerror or str(exc)
    return f"{where}: {reason}"


def describe_unexpected(exc: BaseException) -> str:
    """One line for an exception nobody expected: its type and the first line of its message."""
    if isinstance(exc, MemoryError):
        return "out of memory"
    lines = str(exc).strip().splitlines()
    first = lines[0][:200] if lines else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def run_app(app, interrupted_hint: str = "") -> None:
    """Run a typer app, turning every failure into one clean line and a non-zero exit."""
    try:
        app()
    except QDError as exc:
        fail(str(exc))
        sys.exit(EXIT_ERROR)
    except OSError as exc:
        fail(describe_os_error(exc))
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        _say_interrupted(interrupted_hint)
        sys.exit(EXIT_INTERRUPTED)
    except SystemExit as exc:
        if exc.code == EXIT_INTERRUPTED and _caused_by_ctrl_c(exc):  # typer turns Ctrl-C into exit 130, silently
            _say_interrupted(interrupted_hint)
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


def _say_interrupted(hint: str) -> None:
    fail("interrupted (Ctrl-C)" + (f"; {hint}" if hint else ""))


def _caused_by_ctrl_c(exc: BaseException) -> bool:
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, KeyboardInterrupt):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False
