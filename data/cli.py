"""`qd-data`: get Quick, Draw! bitmap files (`fetch`), turn one's own drawings into them (`import`)
and see what is on disk (`list`).

The network and progress code loads inside the commands, so `qd-data --help` prints at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, List, Optional

import typer
from rich.filesize import decimal as human_size
from rich.text import Text

from qd import options
from qd.command import BitmapFileError, ProgressBar, QDError, console, err_console, fail, run_app, shown

from .contract import DEFAULT_RETRIES, DEFAULT_SOURCE, DEFAULT_TIMEOUT, default_data_dir

if TYPE_CHECKING:
    from .fetch import FetchResult
    from .importer import CategoryResult


app = options.make_app(no_args_is_help=True, help=options.describe(
    "Get Quick, Draw! numpy bitmap files (<category>.npy, uint8 (N, 784)), import your own drawings into them, and list them.",
    "qd-data fetch cat dog -n 5000"))
# `qd-data fetch --negatives N` keeps this many drawings of each category unless told otherwise: outlier
# exposure gains from many categories more than from many drawings of each (and each Google file is ~100 MB).
NEGATIVES_MAX_PER_CATEGORY = 5000
# Old spellings, still accepted (hidden) for one release.
FETCH_ALIASES = {"--out": "--data", "-o": "--data"}


@app.callback()
def main_options(
    artifacts: Annotated[Optional[Path], options.artifacts_option()] = None,
    version: Annotated[bool, options.version_option()] = False,
) -> None:
    pass


class FileBars:
    """fetch.ProgressHook drawn as one ProgressBar (in bytes, on stdout) per file being transferred;
    files are fetched one at a time. The bars show only when stdout is a terminal."""

    def __init__(self):
        self.bar: ProgressBar | None = None

    def begin(self, category: str, total: int, completed: int) -> None:
        if self.bar is None:
            self.bar = ProgressBar(category, total, unit="bytes", console=console, completed=completed).__enter__()
        else:  # the same file again (the server restarted it)
            self.bar.step(category, total, completed)

    def advance(self, nbytes: int) -> None:
        self.bar.advance(nbytes)

    def end(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


@app.command(cls=options.aliased(FETCH_ALIASES), help=options.describe(
    "Fetch <category>.npy files: verified, resumable, never half-written.",
    "qd-data fetch cat dog 'The Eiffel Tower' -n 5000 -d artifacts/data",
    "Negatives for qd-train --negatives, drawings of none of the classes: 15 categories the data lacks, at "
    "random:\n\n\b\nqd-data fetch --negatives 15 --seed 1 -d artifacts/data --negatives-dir artifacts/negatives"))
def fetch(
    categories: Annotated[Optional[List[str]], typer.Argument(
        metavar="CATEGORY", show_default=False,
        help="Category names as the source spells them (quote names with spaces: 'The Eiffel Tower').")] = None,
    all_categories: Annotated[bool, typer.Option(
        "--all", help="Every category the source lists: a folder's *.npy, or Google's 345 for a URL.")] = False,
    source: Annotated[Optional[str], options.source_option(
        f"Base URL or folder in Google's layout. Default: {DEFAULT_SOURCE}")] = None,
    data: Annotated[Optional[Path], options.data_option(
        "Destination folder; with --negatives, the data folder whose categories are left out. "
        "Default: ARTIFACTS/data.")] = None,
    max_per_category: Annotated[Optional[int], options.max_per_category_option(
        "Keep only the first N drawings of each category (downloads only those bytes). Default: all; "
        f"{NEGATIVES_MAX_PER_CATEGORY:,} with --negatives.")] = None,
    negatives: Annotated[Optional[int], typer.Option(
        "--negatives", metavar="N", min=1, show_default=False, help=(
            "Instead of named categories: N categories picked at random (--seed) among those the source has and "
            "the --data folder lacks, into --negatives-dir: drawings of none of its classes, for qd-train "
            "--negatives."))] = None,
    negatives_dir: Annotated[Optional[Path], typer.Option(
        "--negatives-dir", metavar="DIR", show_default=False,
        help="Where --negatives puts its categories. Default: ARTIFACTS/negatives.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the --negatives pick.")] = 0,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds to wait on the network; each download must also bring 64 KiB in every such span.")] = DEFAULT_TIMEOUT,
    retries: Annotated[int, typer.Option(
        "--retries", min=0, help="Retries after a network failure (each resumes).")] = DEFAULT_RETRIES,
) -> None:
    from .fetch import FetchOptions, fetch_categories, negative_candidates
    from .negatives import default_negatives_dir
    from .sources import resolve_source

    src = resolve_source(source, timeout=timeout)
    if negatives is None:
        if negatives_dir is not None:
            raise QDError("--negatives-dir goes with --negatives N")
        names = _wanted(categories or [], all_categories, src)
        out = data if data is not None else default_data_dir()
        console.print(Text.assemble(f"fetching {len(names)} categor{'y' if len(names) == 1 else 'ies'} from ",
                                    shown(src), " into ", shown(out)), highlight=False, soft_wrap=True)
    else:
        if categories or all_categories:
            raise QDError("--negatives N picks the categories itself: give no category names and no --all")
        data_dir = data if data is not None else default_data_dir()
        out = negatives_dir if negatives_dir is not None else default_negatives_dir()
        if out.resolve() == data_dir.resolve():
            raise QDError(f"{out}: --negatives-dir must be another folder than the data folder")
        names = negative_candidates(src, data_dir, seed)
        if not names:
            raise QDError(f"{src}: offers no category that {data_dir} lacks")
        max_per_category = max_per_category or NEGATIVES_MAX_PER_CATEGORY
        console.print(Text.assemble(f"picking {negatives} categor{'y' if negatives == 1 else 'ies'} (seed {seed}) "
                                    f"among the {len(names)} of ", shown(src), " that ", shown(data_dir),
                                    f" lacks, at most {max_per_category:,} drawings each, into ", shown(out)),
                      highlight=False, soft_wrap=True)
    fetch_options = FetchOptions(max_rows=max_per_category, retries=retries)
    counts: dict[str, int] = {}
    failures: list[str] = []

    def on_result(result: "FetchResult") -> None:
        counts[result.action] = counts.get(result.action, 0) + 1
        console.print(_result_line(result), highlight=False, soft_wrap=True)

    def on_failure(category: str, message: str) -> None:
        failures.append(message)
        console.print(Text.assemble("  ", ("✗", "red"), " ", shown(category), ": failed"),
                      highlight=False, soft_wrap=True)

    # Bars only on a terminal; logs (make demo, CI) get one line per category.
    report = fetch_categories(src, names, out, fetch_options, FileBars(), on_result, on_failure, on_wait=_note,
                              pick=negatives)

    done = ", ".join(f"{n} {action}" for action, n in counts.items()) or "nothing fetched"
    wanted = len(names) if negatives is None else negatives
    console.print(Text.assemble(f"{len(report.results)} of {wanted} categor{'y' if wanted == 1 else 'ies'} in ",
                                shown(out), f" ({done})"), highlight=False, soft_wrap=True)
    if report.missing:
        _note(f"{len(report.missing)} picked categor{'y' if len(report.missing) == 1 else 'ies'} not on {src}, "
              "passed over")
    if negatives is not None and len(report.results) + len(report.failures) < negatives and not report.stopped_early:
        _note(f"{src} has only {len(report.results) + len(report.failures)} categories that {data_dir} lacks")
    for message in failures:
        fail(message)
    if report.stopped_early:
        tried = {r.category for r in report.results} | {name for name, _ in report.failures}
        left = [name for name in names if name not in tried] if negatives is None else []
        if left:
            err_console.print(Text.assemble("note: stopped early; not tried: ", shown(", ".join(left))),
                              highlight=False, soft_wrap=True)
    if not report.ok:
        raise typer.Exit(1)


@app.command("import", cls=options.aliased(FETCH_ALIASES), help=options.describe(
    "Import your own drawings as <category>.npy files, through the same preprocessing qd-infer uses.",
    "qd-data import my-scans/ strokes.ndjson -d artifacts/mine"))
def import_(
    sources: Annotated[List[Path], typer.Argument(
        metavar="SRC...", show_default=False,
        help="Folders of class-named subfolders of images (SRC/<category>/*.png, any format qd-infer reads) "
             "and/or .ndjson files (Google's simplified or raw; category from 'word', else the file name).")],
    data: Annotated[Optional[Path], options.data_option("Destination folder. Default: ARTIFACTS/data.")] = None,
    max_per_category: Annotated[Optional[int], options.max_per_category_option(
        "Keep only the first N distinct drawings of each category.")] = None,
    workers: Annotated[Optional[int], options.workers_option("Decoding processes. Default: the usable CPU cores.")] = None,
) -> None:
    from qd.machine import usable_cpus

    from .importer import ImportOptions, import_drawings

    out = data if data is not None else default_data_dir()
    import_options = ImportOptions(max_per_category=max_per_category, workers=workers or usable_cpus())
    console.print(Text.assemble(f"importing {len(sources)} source{'' if len(sources) == 1 else 's'} into ",
                                shown(out)), highlight=False, soft_wrap=True)
    with ProgressBar("importing", unit="drawings") as bar:
        report = import_drawings(sources, out, import_options, advance=bar.advance, on_failure=fail,
                                 planned=lambda units: bar.step("importing", total=units), on_wait=_note)
    for result in report.results:
        console.print(_import_line(result), highlight=False, soft_wrap=True)
    drawings = sum(r.rows for r in report.results)
    console.print(Text.assemble(f"{len(report.results)} categor{'y' if len(report.results) == 1 else 'ies'}, "
                                f"{drawings:,} drawings in ", shown(out),
                                f" ({len(report.failures)} error(s), each on its own line)" if report.failures else ""),
                  highlight=False, soft_wrap=True)
    if report.shared:
        err_console.print(f"note: {report.shared:,} drawing(s) appear in more than one category (kept in each)",
                          highlight=False)
    if report.ignored:
        err_console.print(Text.assemble(f"note: {len(report.ignored)} file(s) that are neither images nor .ndjson "
                                        "were ignored (first: ", shown(report.ignored[0]), ")"),
                          highlight=False, soft_wrap=True)
    if report.outside:
        err_console.print(Text.assemble(f"note: {len(report.outside)} link(s) leading out of the source folder were "
                                        "not followed (first: ", shown(report.outside[0]), ")"),
                          highlight=False, soft_wrap=True)
    if not report.ok:
        raise typer.Exit(1)


def _import_line(result: "CategoryResult") -> Text:
    notes = []
    if result.duplicates:
        notes.append(f"{result.duplicates:,} duplicate(s) dropped")
    if result.unread:
        notes.append(f"{result.unread:,} unreadable")
    if result.capped:
        notes.append("--max-per-category reached")
    if result.replaced is not None:
        notes.append(f"replaced a file of {result.replaced:,}")
    note = f" ({'; '.join(notes)})" if notes else ""
    return Text.assemble("  ", ("✓", "green"), " ", shown(result.category), f": {result.rows:,} drawings{note}")


@app.command("list", help=options.describe(
    "Show the local categories, their drawing counts and file sizes.", "qd-data list -d artifacts/data"))
def list_(
    data: Annotated[Optional[Path], options.data_option("Folder of <category>.npy files. Default: ARTIFACTS/data.")] = None,
    data_dir: Annotated[Optional[Path], typer.Argument(metavar="[DIR]", hidden=True, show_default=False)] = None,
) -> None:
    from rich import box
    from rich.table import Table

    from .bitmaps import category_file_problem, category_path, category_stems, read_bitmap_header

    if data is not None and data_dir is not None:
        raise QDError("give the folder once: --data DIR")
    data_dir = data if data is not None else data_dir if data_dir is not None else default_data_dir()
    names = category_stems(data_dir)
    partial = sorted(p.name for p in data_dir.glob(".*.npy.part"))
    if not names:
        console.print(Text.assemble("no <category>.npy files in ", shown(data_dir),
                                    " (get some with: qd-data fetch CATEGORY...)"), highlight=False, soft_wrap=True)
        _note_partial(partial)
        return

    table = Table(box=box.SIMPLE_HEAD, show_footer=True, title=shown(data_dir), title_justify="left")
    table.add_column("category", footer=f"{len(names)} categor{'y' if len(names) == 1 else 'ies'}")
    table.add_column("drawings", justify="right")
    table.add_column("size", justify="right")
    total_rows = total_bytes = 0
    broken: list[str] = []
    for name in names:
        path = category_path(data_dir, name)
        size = path.stat().st_size
        total_bytes += size
        problem = category_file_problem(data_dir, name)
        if problem:
            broken.append(problem)
            table.add_row(shown(name, "red"), shown("invalid name", "red"), human_size(size))
            continue
        try:
            rows = read_bitmap_header(path).rows
        except BitmapFileError as exc:
            broken.append(str(exc))
            table.add_row(shown(name, "red"), shown(f"invalid: {exc.problem}", "red"), human_size(size))
            continue
        total_rows += rows
        table.add_row(shown(name), f"{rows:,}", human_size(size))
    table.columns[1].footer = f"{total_rows:,}"
    table.columns[2].footer = human_size(total_bytes)
    console.print(table)
    _note_partial(partial)
    for message in broken:
        fail(message)
    if broken:
        raise typer.Exit(1)


def _wanted(categories: list[str], all_categories: bool, src) -> list[str]:
    from .bitmaps import did_you_mean
    from .sources import UrlSource, google_categories

    if all_categories and categories:
        raise QDError("give category names or --all, not both")
    if all_categories:
        names = src.list_categories()
        if not names:
            raise QDError(f"{src}: the source lists no <category>.npy files")
        return names
    if not categories:
        raise QDError("name at least one category (e.g. qd-data fetch cat dog) or use --all")
    names = list(dict.fromkeys(name.strip() for name in categories))
    if isinstance(src, UrlSource) and src.base == DEFAULT_SOURCE.rstrip("/"):
        known = set(google_categories())
        unknown = [name for name in names if name not in known]
        if unknown:
            raise QDError("; ".join(f"{name}: not a Quick, Draw! category{did_you_mean(name, sorted(known))}"
                                    for name in unknown))
    return names


def _result_line(result: "FetchResult") -> Text:
    if result.action == "skipped":
        why = f", {result.note}" if result.note else ""
        return Text.assemble("  ", ("=", "dim"), " ", shown(result.category),
                             f": already present ({result.rows:,} drawings{why})")
    how = result.action
    if result.action == "resumed":
        how = f"resumed at {human_size(result.resumed_from)}"
    note = f", {result.note}" if result.note else ""
    return Text.assemble("  ", ("✓", "green"), " ", shown(result.category),
                         f": {result.rows:,} drawings, {human_size(result.size)} ({how}{note})")


def _note(message: str) -> None:
    err_console.print(Text.assemble("note: ", shown(message)), highlight=False, soft_wrap=True)


def _note_partial(partial: list[str]) -> None:
    if partial:
        err_console.print(Text.assemble(f"note: {len(partial)} unfinished download(s) (", shown(", ".join(partial)),
                                        "); rerun qd-data fetch to resume"), highlight=False, soft_wrap=True)


def main() -> None:
    run_app(app, interrupted_hint="unfinished downloads are kept; run the same command again to resume")


if __name__ == "__main__":
    main()
