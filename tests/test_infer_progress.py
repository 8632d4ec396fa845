"""Progress on long runs: a rich bar on stderr when stderr is a terminal, nothing extra otherwise."""

import os
import pty
import re
import subprocess
import sys
import threading

import numpy as np
import pytest

from images_synth import bitmap_as_paper
from qd.data.bitmaps import open_bitmaps

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


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
    """qd-infer with stdout and/or stderr on a pseudo-terminal: (stdout, stderr, exit code)."""
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
    env.pop("NO_COLOR", None)
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "qd.infer.cli", *map(str, args)], env=env,
                            stdin=subprocess.DEVNULL,
                            stdout=slave if stdout_tty else subprocess.PIPE,
                            stderr=slave if stderr_tty else subprocess.PIPE)
    os.close(slave)
    screen = bytearray()

    def read_terminal():
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                return
            if not data:
                return
            screen.extend(data)

    reader = threading.Thread(target=read_terminal, daemon=True)
    reader.start()
    out = proc.stdout.read() if proc.stdout else b""
    err = proc.stderr.read() if proc.stderr else b""
    code = proc.wait(timeout=180)
    reader.join(timeout=10)
    os.close(master)
    terminal = screen.decode("utf-8", "replace").replace("\r\n", "\n")
    return (terminal if stdout_tty else out.decode()), (terminal if stderr_tty else err.decode()), code


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
