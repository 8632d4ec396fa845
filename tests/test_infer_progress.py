"""Progress on long runs: a rich bar on stderr when stderr is a terminal, nothing extra otherwise."""

import re
import sys

import numpy as np
import pytest

from images_synth import bitmap_as_paper
from qd.data.bitmaps import open_bitmaps
from terminal import ANSI, run_on_terminal


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, shared_bitmaps):
    root = tmp_path_factory.mktemp("progress")
    rows = np.asarray(open_bitmaps(shared_bitmaps / "star.npy")[:3000])
    np.save(root / "rows.npy", rows)
    (root / "images").mkdir()
    for i in range(40):
        bitmap_as_paper(rows[i], 200).save(root / "images" / f"{i:02d}.png")
    return root


def run(args, stdout_tty=False, stderr_tty=False):
    return run_on_terminal([sys.executable, "-m", "qd.infer.cli", *args], stdout_tty, stderr_tty)


@pytest.mark.parametrize("mode", ["--csv", "--json"])
def test_machine_formats_show_a_bar_on_a_terminal_and_keep_stdout_clean(exported_model, inputs, mode):
    args = [inputs / "rows.npy", inputs / "images", "--model", exported_model, mode, "--batch-size", "64"]
    piped_out, piped_err, code = run(args)
    assert code == 0, piped_err
    assert piped_err.strip().splitlines() == [piped_err.strip()]  # the closing line only
    assert "3,040 drawings classified" in piped_err and "\x1b" not in piped_err

    out, terminal, code = run(args, stderr_tty=True)
    assert code == 0, terminal
    assert out == piped_out  # the same bytes on stdout, bar or not
    text = ANSI.sub("", terminal)
    assert "classifying" in text and "drawings/s" in text and "eta" in text
    assert re.search(r"\d[\d,]*/3,040", text) or re.search(r"\d+/3040", text)
    assert "3,040 drawings classified" in text


def test_table_on_the_same_terminal_prints_every_row_above_the_bar(exported_model, inputs):
    _, terminal, code = run([inputs / "images", "--model", exported_model], stdout_tty=True, stderr_tty=True)
    assert code == 0, terminal
    text = ANSI.sub("", terminal)
    for i in range(40):
        assert f"{i:02d}.png" in text
    assert "40 drawings classified" in text
