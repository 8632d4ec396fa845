"""The one vocabulary of every `qd-*` command: option names, short flags, help opening, -h, --version.

Each command builds its typer app with `make_app`, takes its shared options from the
functions here (`data_option`, `out_option`, `model_option`, ...) inside `Annotated[...]`,
and its help from `describe(summary, example)`. So `--data/-d` is the data folder,
`--out/-o` the output folder, `--model/-m` the model, `--workers/-w`, `--batch-size/-b`
and `--device` mean the same in every command, and environment variables that change a
default are shown in the help as `[env var: ...]`.

A renamed option keeps its old spelling for one release as a hidden alias: the command's
class (`aliased(...)`) rewrites it to the new name before parsing, so help shows only the
new name. Only typer is imported here (and qd.data.contract's plain constants): `--help` must stay
fast. Apart from qd.command, so that the library (which imports QDError from there) never loads typer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperCommand

from qd.data.contract import ARTIFACTS_ENV, MAX_BATCH_SIZE, MAX_WORKERS, SOURCE_ENV

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def make_app(help: str | None = None, **kwargs) -> typer.Typer:
    """A typer app as every qd-* command has it: -h, completion on, no pretty tracebacks (qd.command.run_app
    turns errors into one line) and click's plain help: typer's rich help imports markdown-it and more, which
    alone takes longer than the 0.5 s a --help may (bench/cli_help.py)."""
    return typer.Typer(help=help, add_completion=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                       context_settings=CONTEXT_SETTINGS, **kwargs)


def describe(summary: str, example: str, details: str = "") -> str:
    """A command's help: one line of what it does, one ready-to-run example, then any details."""
    text = f"{summary}\n\n\b\nExample: {example}"  # \b: click keeps the example's line as written
    return f"{text}\n\n{details}" if details else text


# ----------------------------------------------------------------------------- renamed options

def aliased(aliases: dict[str, str]) -> type[TyperCommand]:
    """A command class that accepts each old spelling in `aliases` (old -> new) as the new one."""

    class AliasedCommand(TyperCommand):
        def parse_args(self, ctx, args):
            return super().parse_args(ctx, rewrite_aliases(list(args), aliases))

    return AliasedCommand


def rewrite_aliases(args: list[str], aliases: dict[str, str]) -> list[str]:
    """`--old x` and `--old=x` become `--new x` and `--new=x`; nothing after `--` is touched."""
    out = []
    for i, arg in enumerate(args):
        if arg == "--":
            return out + args[i:]
        name, eq, value = arg.partition("=")
        if name in aliases and (eq == "" or name.startswith("--")):
            arg = aliases[name] + eq + value
        out.append(arg)
    return out


# ----------------------------------------------------------------------------- every command

def _show_version(ctx: typer.Context, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        from qd import __version__

        typer.echo(f"{ctx.find_root().info_name} (quickdraw-edge) {__version__}")
        raise typer.Exit()


def version_option():
    return typer.Option("--version", callback=_show_version, is_eager=True, expose_value=True,
                        help="Show the version and exit.")


def _set_artifacts(ctx: typer.Context, value: Optional[Path]) -> Optional[Path]:
    if value is not None and not ctx.resilient_parsing:
        os.environ[ARTIFACTS_ENV] = str(value)  # every default below (data, runs, exports, eval) follows
    return value


def artifacts_option():
    return typer.Option("--artifacts", metavar="DIR", envvar=ARTIFACTS_ENV, callback=_set_artifacts,
                        is_eager=True, show_default="artifacts",
                        help="Root of the default folders: DIR/data, DIR/runs, DIR/exports, DIR/eval.")


# ----------------------------------------------------------------------------- the same thing, the same name

def data_option(help: str = "Folder of <category>.npy bitmap files. Default: ARTIFACTS/data."):
    return typer.Option("--data", "-d", metavar="DIR", show_default=False, help=help)


def out_option(help: str):
    return typer.Option("--out", "-o", metavar="DIR", show_default=False, help=help)


MODEL_HELP = "model.onnx or an export folder. Default: the newest ARTIFACTS/exports/*/model.onnx."


def model_option(help: str = MODEL_HELP):
    return typer.Option("--model", "-m", metavar="PATH", show_default=False, help=help)


def workers_option(help: str, min: int = 1):
    return typer.Option("--workers", "-w", min=min, max=MAX_WORKERS, metavar="N", help=help)


def batch_size_option(help: str):
    return typer.Option("--batch-size", "-b", min=1, max=MAX_BATCH_SIZE, metavar="N", help=help)


def device_option(help: str = "auto, cpu, cuda or mps."):
    return typer.Option("--device", metavar="DEVICE", help=help)


def top_option(help: str = "How many labels to show per drawing."):
    return typer.Option("--top", "-k", min=1, metavar="K", help=help)


def max_per_category_option(help: str = "Use the first N drawings of each category."):
    return typer.Option("--max-per-category", "-n", min=1, metavar="N", show_default=False, help=help)


def quiet_option(help: str = "No progress output."):
    return typer.Option("--quiet", "-q", help=help)


def source_option(help: str):
    return typer.Option("--source", "-s", metavar="URL|DIR", envvar=SOURCE_ENV, show_default=False, help=help)
