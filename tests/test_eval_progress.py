"""qd-eval shows a rich progress bar on stderr when it is a terminal, and nothing extra when it
is not (pipes and logs stay clean)."""

import sys

import numpy as np
import pytest

from fixtures_train import FIXTURE_CATEGORIES
from images_synth import bitmap_as_paper
from qd.data.bitmaps import open_bitmaps
from terminal import run_on_terminal, shows_a_bar


@pytest.fixture(scope="module")
def class_folders(tmp_path_factory, shared_bitmaps):
    """SRC/<category>/*.png for the fixture model's categories, 10 drawings each."""
    root = tmp_path_factory.mktemp("progress-classes")
    for category in FIXTURE_CATEGORIES:
        (root / category).mkdir()
        for i, row in enumerate(np.asarray(open_bitmaps(shared_bitmaps / f"{category}.npy")[-10:])):
            bitmap_as_paper(row, 160).save(root / category / f"{i}.png")
    return root


def test_qd_eval_on_image_folders_draws_a_bar_only_on_a_terminal(exported_model, class_folders, tmp_path):
    command = [sys.executable, "-m", "qd.evaluate.cli", "--model", exported_model, "--data", class_folders,
               "--backend", "onnx", "--no-speed"]
    piped_out, piped, code = run_on_terminal([*command, "--out", tmp_path / "piped"])
    assert code == 0, piped
    _, terminal, code = run_on_terminal([*command, "--out", tmp_path / "terminal"], stderr_tty=True)
    assert code == 0, terminal
    assert shows_a_bar(terminal) and "reading" in terminal
    assert "\x1b" not in piped and not shows_a_bar(piped) and not shows_a_bar(piped_out)
