"""qd-infer sizes onnxruntime's thread pool for what runs beside the model (docs/inference.md)."""

import numpy as np
import pytest

import qd.infer.run as run
from qd.data.machine import usable_cpus
from qd.infer.output import make_writer


@pytest.fixture
def session_threads(monkeypatch):
    """The intra-op threads of every session run_inference opens."""
    seen = []
    real = run.OnnxClassifier

    def recording(path, threads=None, **kwargs):
        seen.append(threads)
        return real(path, threads=threads, **kwargs)

    monkeypatch.setattr(run, "OnnxClassifier", recording)
    return seen


@pytest.fixture
def rows(tmp_path, shared_bitmaps):
    from qd.data.bitmaps import open_bitmaps

    path = tmp_path / "rows.npy"
    np.save(path, np.asarray(open_bitmaps(shared_bitmaps / "cat.npy")[:8]))
    return path


def test_the_rule():
    assert run.model_threads(decoding_in_workers=True, writes_beside=True) == 1
    assert run.model_threads(decoding_in_workers=True, writes_beside=False) == 1
    assert run.model_threads(decoding_in_workers=False, writes_beside=True) == max(1, usable_cpus() - 1)
    assert run.model_threads(decoding_in_workers=False, writes_beside=False) is None


@pytest.mark.parametrize("fmt,expected", [("csv", max(1, usable_cpus() - 1)), ("json", max(1, usable_cpus() - 1)),
                                          ("table", None)])
def test_machine_formats_leave_a_core_to_the_writer(exported_model, rows, session_threads, capsys, fmt, expected):
    run.run_inference([rows], model=exported_model, fmt=fmt)
    assert session_threads == [expected]


def test_threads_given_are_used_and_a_callers_writer_decides(exported_model, rows, session_threads, capsys):
    from qd.infer.model import OnnxClassifier

    labels = OnnxClassifier(exported_model / "model.onnx").labels
    run.run_inference([rows], model=exported_model, fmt="csv", threads=3)
    run.run_inference([rows], model=exported_model, writer=make_writer("table", labels, 3))
    run.run_inference([rows], model=exported_model, writer=make_writer("json", labels, 3))
    assert session_threads == [3, None, max(1, usable_cpus() - 1)]
