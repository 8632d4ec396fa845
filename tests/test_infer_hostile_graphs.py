"""What an ONNX model we did not make can do to the machine running it, and what stops it.

onnxruntime's own log is off (it printed a failing node's name, escape codes and all, before qd's
escaped line); graphs are checked at load against the operators qd-export writes (a Loop of 2^60
iterations, subgraphs, custom domains, external data, huge graphs: refused in one line); onnxruntime's
memory is one arena of MAX_RUN_BYTES (a graph asking gigabytes for one drawing fails that drawing);
Ctrl-C and SIGTERM stop a run in progress. onnxruntime writes its log to fd 2 from C++, and a signal
needs a process of its own: these run qd-infer in a fresh Python.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from memory_probe import peak_rss_mib
from onnx_synth import (HOSTILE_TEXT, failing_at_load_model, failing_at_run_model, graph_model, greedy_model,
                        loop_model, slow_model)
from qd.data.contract import MAX_MODEL_NODES

REPO = Path(__file__).resolve().parents[1]
# qd-infer, with one hook: "running" on stdout as each onnxruntime run starts (so a test signals a run
# that is certainly in progress, no sleeps racing it).
DRIVER = """
import sys
import onnxruntime

real = onnxruntime.InferenceSession.run

def announced(self, *args, **kwargs):
    print("running", flush=True)
    return real(self, *args, **kwargs)

onnxruntime.InferenceSession.run = announced
from qd.infer.cli import main
sys.argv = ["qd-infer", *sys.argv[1:]]
main()
"""
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e]")  # all but the newline


def qd_infer(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", DRIVER, *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def drawings(path: Path, n: int = 1) -> Path:
    np.save(path, np.full((n, 784), 200, np.uint8))
    return path


# ----------------------------------------------------------------------------- onnxruntime's own log

@pytest.mark.parametrize("name", [HOSTILE_TEXT, "\x1b]8;;file:///etc/passwd\x07x\x1b]8;;\x07", "\n\nerror: all good\n"])
@pytest.mark.parametrize("build", [failing_at_run_model, failing_at_load_model])
def test_a_failing_hostile_model_is_one_escaped_line(tmp_path, name, build):
    model = build(tmp_path / "model.onnx", name)
    result = qd_infer(drawings(tmp_path / "x.npy"), "--model", model, "--json")
    assert result.returncode == 1, result.stderr
    assert not RAW_CONTROL.search(result.stderr), repr(result.stderr)
    lines = result.stderr.splitlines()
    assert [line for line in lines if "error:" in line] == [lines[0]] and lines[0].startswith("error: "), lines
    if build is failing_at_load_model:
        assert lines == [lines[0]] and f"{model}: not a loadable ONNX model" in lines[0]
    else:  # the drawing fails; the summary says so
        assert "x.npy[0]: not classified (onnxruntime: " in lines[0] and "1 input failed" in lines[1]


# ----------------------------------------------------------------------------- graphs refused at load

def subgraph_model(path: Path) -> Path:
    """An If whose branches are subgraphs (an operator qd-export never writes, with graph attributes)."""
    branch = helper.make_graph([helper.make_node("Identity", ["f"], ["out"])], "branch", [],
                               [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("Flatten", ["image"], ["f"]),
             helper.make_node("If", ["yes"], ["flat"], then_branch=branch, else_branch=branch)]
    return graph_model(path, nodes, [numpy_helper.from_array(np.asarray(True), "yes")])


def custom_domain_model(path: Path) -> Path:
    nodes = [helper.make_node("Flatten", ["image"], ["f"]),
             helper.make_node("Relu", ["f"], ["flat"], domain="com.microsoft")]
    return graph_model(path, nodes)


def external_data_model(path: Path) -> Path:
    """A weight whose bytes onnxruntime would read from a file named by the model (in the working folder)."""
    weight = numpy_helper.from_array(np.zeros(784, np.float32), "w")
    weight.data_location = TensorProto.EXTERNAL
    weight.ClearField("raw_data")
    for key, value in (("location", "secret.bin"), ("offset", "0"), ("length", str(784 * 4))):
        weight.external_data.add(key=key, value=value)
    nodes = [helper.make_node("Flatten", ["image"], ["f"]), helper.make_node("Add", ["f", "w"], ["flat"])]
    return graph_model(path, nodes, [weight])


def huge_graph_model(path: Path) -> Path:
    nodes = [helper.make_node("Flatten", ["image"], ["x0"])]
    nodes += [helper.make_node("Relu", [f"x{i}"], [f"x{i + 1}"]) for i in range(MAX_MODEL_NODES)]
    nodes.append(helper.make_node("Identity", [f"x{MAX_MODEL_NODES}"], ["flat"]))
    return graph_model(path, nodes)


@pytest.mark.parametrize("build,why", [
    (loop_model, "operator 'Loop'"),
    (subgraph_model, "operator 'If'"),
    (custom_domain_model, "operator 'Relu' of domain 'com.microsoft'"),
    (external_data_model, "a tensor stored in an external file"),
    (huge_graph_model, f"the graph has more than {MAX_MODEL_NODES:,} nodes"),
])
def test_graphs_qd_export_never_writes_are_refused_at_load(tmp_path, build, why):
    """The Loop of 2^60 iterations ran for ten minutes and ignored Ctrl-C: now it never starts."""
    model = build(tmp_path / "model.onnx")
    result = qd_infer(drawings(tmp_path / "x.npy"), "--model", model)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == f"error: {model}: refused: {why} (qd-export never writes that)\n"


def test_a_truncated_model_is_one_line(tmp_path):
    model = graph_model(tmp_path / "model.onnx", [helper.make_node("Flatten", ["image"], ["flat"])])
    model.write_bytes(model.read_bytes()[:-7])
    result = qd_infer(drawings(tmp_path / "x.npy"), "--model", model)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"error: {model}: not a loadable ONNX model (")


# ----------------------------------------------------------------------------- memory

def test_a_graph_asking_gigabytes_for_one_drawing_fails_that_drawing_within_bounded_memory(tmp_path):
    """An Expand to 3.1 GB for one drawing: onnxruntime's arena (MAX_RUN_BYTES) refuses it."""
    model = greedy_model(tmp_path / "model.onnx", 1000 * 1000 * 784)
    npy = drawings(tmp_path / "x.npy")
    peak = peak_rss_mib(f"from qd.infer.run import run_inference, Writer\n"
                        f"class Quiet(Writer):\n"
                        f"    def __init__(self): self.failures = []\n"
                        f"    def rows(self, *args): raise AssertionError('classified')\n"
                        f"    def failure(self, message, input): self.failures.append(message)\n"
                        f"    def finish(self, summary): pass\n"
                        f"quiet = Quiet()\n"
                        f"summary = run_inference([{str(npy)!r}], model={str(model)!r}, writer=quiet)\n"
                        f"assert summary.failed == 1 and 'not classified (onnxruntime: ' in quiet.failures[0], quiet.failures\n")
    assert peak < 1024, f"peak RSS {peak:.0f} MiB"


# ----------------------------------------------------------------------------- signals during a run

@pytest.mark.parametrize("sig,code,said,threads", [
    (signal.SIGINT, 130, "interrupted (Ctrl-C)", "1"),  # one batch at a time: the run is the main thread's
    (signal.SIGTERM, 143, "terminated (SIGTERM)", None),  # batches in lanes: the runs are the lanes' threads
])
def test_a_signal_ends_a_long_run_at_once(tmp_path, sig, code, said, threads):
    """A graph of operators qd-export writes that runs for many minutes a batch: the signal stops it.
    Without stopping the run, qd-infer would only see the signal when the batch ends."""
    model = slow_model(tmp_path / "model.onnx", layers=5000)
    npy = drawings(tmp_path / "x.npy", 4096)
    args = [npy, "--model", model, "--batch-size", "4096", "--json", *(["--threads", threads] if threads else [])]
    process = subprocess.Popen([sys.executable, "-c", DRIVER, *map(str, args)], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        while (line := process.stdout.readline()) != "running\n":
            assert line, process.communicate()
        process.send_signal(sig)
        out, err = process.communicate(timeout=60)  # the batch itself would take many minutes
    finally:
        process.kill()
        process.wait()
    assert process.returncode == code, err
    assert out == "" and err.count("\n") == 1 and err.startswith(f"error: {said}"), err
