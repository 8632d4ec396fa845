"""Untrusted text never reaches the terminal raw (qd.command.shown, through every command).

File names, model labels, category names, server reason phrases and paths are generated
from pieces of rich markup, terminal escape sequences (CSI, OSC titles and OSC 8
hyperlinks), C1 controls, newlines that would forge an `error:` line, bidi overrides and
undecodable bytes. Every command shows them through qd.command.shown: no control
character in the output, the markup printed as written, one line per error; JSON carries
the exact strings, CSV too but for a "'" before a text cell a spreadsheet would run as a formula.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console
from rich.text import Text

from fixtures_data import invoke_cli
from images_synth import bitmap_as_paper
from onnx_synth import tiny_canvas_model, tiny_model
from qd.command import fail, shown

PIECES = ["[bold]", "[/]", "[/bold]", "[link=http://evil.example/]", "\\[b]", "\\", "\x1b[2J", "\x1b]0;owned\x07",
          "\x1b]8;;http://evil.example/\x1b\\", "\x9b31m", "\x85", "\x00", "\x7f", "\n", "\r", "\t", "error: forged",
          "\u202e", "\u2028", "\u200f", "\ufeff", ":cat:", "é", "猫", "✏️", "%s", "{0}"]
HOSTILE = st.lists(st.one_of(st.sampled_from(PIECES), st.text(st.characters(codec="utf-8"), max_size=4)),
                   min_size=1, max_size=6).map("".join)
# What no output may contain: C0 (but newline), DEL, C1, line/paragraph separators, bidi controls.
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]")
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def render(renderable) -> str:
    console = Console(file=io.StringIO(), width=500, emoji=False, color_system=None)
    console.print(renderable, soft_wrap=True)
    return console.file.getvalue()


def visible_chars(text: str) -> str:
    """The characters of `text` that must show up as themselves."""
    return RAW_CONTROL.sub("", text).replace("\n", "").replace("\ufeff", "").replace("\u200b", "")


def is_subsequence(small: str, big: str) -> bool:
    it = iter(big)
    return all(ch in it for ch in small)


@SETTINGS
@given(text=HOSTILE)
def test_shown_makes_every_control_visible_and_never_reads_markup(text):
    out = render(Text.assemble(("error:", "bold red"), " ", shown(text), " end"))
    assert out.count("\n") == 1 and out.endswith(" end\n")  # one line, whatever the text held
    assert not RAW_CONTROL.search(out)
    assert is_subsequence(visible_chars(text), out)  # markup is printed, not eaten


@SETTINGS
@given(text=HOSTILE)
def test_error_lines_cannot_be_forged_or_crash(text, capsys):
    fail(f"{text}: broken")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and not RAW_CONTROL.search(err)


def test_markup_forged_lines_titles_and_links_in_errors_are_shown_literally(capsys):
    fail("bad_[bold]x.png: not a recognised image file")
    fail("http://mirror/cat.npy: HTTP 404 [/]")
    fail("x\nerror: forged second line")
    fail("label \x1b]0;new title\x07 and \x1b]8;;http://evil/\x1b\\link\x1b]8;;\x1b\\")
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "error: bad_[bold]x.png: not a recognised image file"
    assert err[1] == "error: http://mirror/cat.npy: HTTP 404 [/]"
    assert err[2] == "error: x\\nerror: forged second line" and len(err) == 4
    assert "\x1b" not in err[3] and "\\x1b]0;new title\\x07" in err[3]


def _safe_name(text: str) -> str:
    """A file name made of `text`: no '/' or NUL, short enough for any filesystem."""
    name = text.replace("/", "_").replace("\x00", "_")[:60]
    return name.encode("utf-8", "surrogateescape")[:150].decode("utf-8", "ignore") or "x"


@pytest.fixture(scope="module")
def drawing_png(shared_bitmaps) -> bytes:
    from qd.data.bitmaps import open_bitmaps

    buf = io.BytesIO()
    bitmap_as_paper(np.asarray(open_bitmaps(shared_bitmaps / "cat.npy")[3]), 64).save(buf, "PNG")
    return buf.getvalue()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(HOSTILE, min_size=1, max_size=3, unique_by=_safe_name),
       labels=st.lists(HOSTILE, min_size=2, max_size=4, unique=True))
def test_qd_infer_shows_hostile_names_and_labels_safely_and_machine_formats_exactly(
        tmp_path_factory, drawing_png, names, labels):
    from qd.infer.cli import main

    root = tmp_path_factory.mktemp("hostile")
    labels = [label for label in labels if label]
    if len(labels) < 2:
        labels += ["plain one", "plain two"]
    model = tiny_model(root / "model" / "model.onnx", labels)
    inputs = root / "in"
    inputs.mkdir()
    good, bad = [], []
    for i, text in enumerate(names):
        base = f"{i}{_safe_name(text)}"  # not hidden: a name starting with "." is skipped in folders
        (inputs / f"{base}.png").write_bytes(drawing_png)
        (inputs / f"{base}-bad.png").write_bytes(b"not an image\n")
        good.append(str(inputs / f"{base}.png"))
        bad.append(str(inputs / f"{base}-bad.png"))

    table = invoke_cli(main, inputs, "--model", model, "--top", "2")
    assert table.exit_code == 1  # the bad files
    for stream in (table.stdout, table.stderr):
        assert not RAW_CONTROL.search(stream)
    errors = [line for line in table.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == len(bad) == len(table.stderr.splitlines())  # one line each, none forged

    as_json = invoke_cli(main, inputs, "--model", model, "--json", "--top", "2")
    every = [json.loads(line) for line in as_json.stdout.splitlines()]
    records = [r for r in every if r["error"] is None]
    assert len(every) - len(records) == len(bad)  # each failed input is a record too, with its error
    assert sorted(r["input"] for r in records) == sorted(good)  # exact names (valid UTF-8 here)
    assert all(r["label"] in labels and {t["label"] for t in r["top"]} <= set(labels) for r in records)
    assert not RAW_CONTROL.search(as_json.stdout.replace("\n", ""))  # invisible ones are \u escapes

    as_csv = invoke_cli(main, inputs, "--model", model, "--csv", "--top", "2")
    rows = list(csv.reader(io.StringIO(as_csv.stdout, newline="")))
    assert rows[0] == ["version", "input", "label_1", "probability_1", "label_2", "probability_2", "unknown", "error"]
    good_rows = [r for r in rows[1:] if r[-1] == ""]
    assert len(rows) - 1 - len(good_rows) == len(bad)
    assert sorted(r[1] for r in good_rows) == sorted(good)
    assert all(r[2] in map(spreadsheet_cell, labels) for r in good_rows)  # exact, or "'" + it (FORMULA_START)
    assert not any(cell.startswith(FORMULA_START) for row in rows for cell in row)  # none runs in a spreadsheet


# What a spreadsheet runs as a formula at the start of a cell (OWASP, "CSV Injection"): = + - @ tab CR.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_cell(text: str) -> str:
    """qd's CSV cell for a text: a "'" before it exactly when it starts like a formula."""
    return "'" + text if text.startswith(FORMULA_START) else text


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(st.builds(str.__add__, st.sampled_from(FORMULA_START + ("'", "x")), HOSTILE), min_size=1,
                      max_size=3, unique_by=_safe_name),
       labels=st.lists(st.builds(str.__add__, st.sampled_from(FORMULA_START + ("'", "x")), HOSTILE), min_size=2,
                       max_size=3, unique=True))
def test_qd_infer_csv_cells_that_a_spreadsheet_would_run_are_neutralised(tmp_path_factory, drawing_png, names,
                                                                         labels, monkeypatch):
    """File names given relative to the current folder and labels that start like formulas (=, +, -, @, tab, CR):
    read back, every cell is the exact text or "'" + it, and none starts like a formula."""
    from qd.infer.cli import main

    root = tmp_path_factory.mktemp("formulas")
    model = tiny_model(root / "model.onnx", labels)
    monkeypatch.chdir(root)
    inputs = []
    for i, text in enumerate(names):
        name = f"{_safe_name(text)}{i}"
        (root / f"{name}.png").write_bytes(drawing_png)
        (root / f"{name}-bad.png").write_bytes(b"not an image\n")
        inputs += [f"{name}.png", f"{name}-bad.png"]
    result = invoke_cli(main, "--model", model, "--csv", "--top", "2", "--", *inputs)
    assert result.exit_code == 1  # the bad files
    rows = list(csv.reader(io.StringIO(result.stdout, newline="")))
    by_cell = {row[1]: row for row in rows[1:]}
    assert sorted(by_cell) == sorted(spreadsheet_cell(name) for name in inputs) and len(rows) == 1 + len(inputs)
    for name in inputs:
        row = by_cell[spreadsheet_cell(name)]
        if name.endswith("-bad.png"):  # its error names it
            assert row[-1].startswith(spreadsheet_cell(f"{name}: not a recognised image file")), row
        else:
            assert row[-1] == "" and {row[2], row[4]} <= set(map(spreadsheet_cell, labels)) and 0 <= float(row[3]) <= 1
    assert not any(cell.startswith(FORMULA_START) for row in rows for cell in row)


def test_qd_infer_table_shows_markup_in_names_and_labels_literally(tmp_path, drawing_png):
    from qd.infer.cli import main

    model = tiny_model(tmp_path / "m" / "model.onnx", ["[bold]cat[/]", "dog [/]"])
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "bad_[bold]x.png").write_bytes(drawing_png)
    (folder / "bad_[red]y.png").write_bytes(b"text")
    result = invoke_cli(main, folder, "--model", model)  # names shown relative to the folder
    assert "bad_[bold]x.png" in result.stdout and "[bold]cat[/]" in result.stdout and "dog [/]" in result.stdout
    assert f"error: {folder / 'bad_[red]y.png'}: not a recognised image file" in result.stderr


def test_undecodable_file_names_are_shown_as_bytes(tmp_path, drawing_png):
    from qd.infer.cli import main

    model = tiny_model(tmp_path / "m" / "model.onnx", ["a", "b"])
    folder = tmp_path / "in"
    folder.mkdir()
    with open(os.fsencode(folder) + b"/bad-\xff\x1b.png", "wb") as f:
        f.write(b"text")
    result = invoke_cli(main, folder, "--model", model)
    assert result.stderr.splitlines()[0] == f"error: {folder}/bad-\\xff\\x1b.png: not a recognised image file " \
                                            "(expected PNG content for .png)"


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(HOSTILE, min_size=1, max_size=3, unique_by=_safe_name), reason=HOSTILE)
def test_qd_data_shows_hostile_categories_and_reason_phrases_safely(tmp_path_factory, shared_bitmaps, qd_server,
                                                                    names, reason):
    from qd.data.cli import main

    root = tmp_path_factory.mktemp("hostile-data")
    source = root / "source"
    source.mkdir()
    for i, text in enumerate(names):
        name = _safe_name(text).strip().lstrip(".") or "x"
        (source / f"{name} {i}.npy").write_bytes((shared_bitmaps / "apple.npy").read_bytes()[:128 + 784 * 3])
    # a 3-row copy's header still says 3000 rows: every category fails, and says so in one line
    fetched = invoke_cli(main, "fetch", "--all", "--source", source, "--out", root / "out")
    listed = invoke_cli(main, "list", source)
    phrase = reason.replace("\r", " ").replace("\n", " ").encode("latin-1", "replace").decode("latin-1")
    qd_server.fail_with("cat", 404, reason=phrase)
    mirror = invoke_cli(main, "fetch", "cat", "--source", qd_server.base_url, "--out", root / "m", "--retries", "0")
    for run, failures in ((fetched, len(names)), (listed, len(names)), (mirror, 1)):
        assert run.exit_code == 1
        assert not RAW_CONTROL.search(run.stdout) and not RAW_CONTROL.search(run.stderr)
        assert len([line for line in run.stderr.splitlines() if line.startswith("error: ")]) == failures
        assert "Traceback" not in run.stderr
    assert "HTTP 404" in mirror.stderr


def test_qd_eval_shows_hostile_labels_and_folder_names_safely(tmp_path, drawing_png):
    from qd.evaluate.cli import main

    labels = ["cat [bold]", "dog\x1b[31m", "bird\u202e"]  # folder names: no "/"
    model = tiny_model(tmp_path / "export [bold]x" / "model.onnx", labels)
    data = tmp_path / "data"
    for label in labels:
        (data / label).mkdir(parents=True)
        for i in range(3):
            (data / label / f"{i}.png").write_bytes(drawing_png)
    result = invoke_cli(main, "--model", model.parent, "--data", data, "--backend", "onnx", "--no-speed",
                        "--out", tmp_path / "eval")
    assert result.exit_code == 0, result.stderr
    assert not RAW_CONTROL.search(result.stdout) and not RAW_CONTROL.search(result.stderr)
    assert "cat [bold]" in result.stdout and "dog\\x1b[31m" in result.stdout and "export [bold]x" in result.stdout
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["model"]["labels"] == labels  # exact in JSON


def test_qd_demo_start_lines_show_hostile_paths_and_metadata_safely(tmp_path, monkeypatch):
    from qd.infer import demo

    model = tiny_canvas_model(tmp_path / "a [/] \x1b]0;t\x07" / "model.canvas.onnx", ["a", "b"],
                              qd_precision="fp32 [/]\x1b[2J")

    def interrupted(self, poll_interval=0.5):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo.DemoServer, "serve_forever", interrupted)
    result = invoke_cli(demo.main, "--model", model, "--port", "0")
    assert result.exit_code == 0, result.stderr
    assert not RAW_CONTROL.search(result.stdout)
    assert "a [/] \\x1b]0;t\\x07" in result.stdout and "fp32 [/]\\x1b[2J" in result.stdout
