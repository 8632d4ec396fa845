"""qd-infer --ray and qd.infer.ray.classify: the same records as plain qd-infer, written by Ray Data.

Bad input, the edge install and the driver's plan are checked without any cluster. One test runs on a
local Ray (2 CPUs, loopback only, small object store) started and stopped by its fixture: a JSON-lines
run through the command line, during which one worker dies halfway through writing its file
(tests/ray_faults.py), and a Parquet run through the Python API.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import ray_faults
from fixtures_data import run_entry_point
from images_synth import bitmap_as_paper
from qd.data.bitmaps import open_bitmaps

BATCH = "16"  # small batches: the .npy below is cut into row ranges (8 batches a unit) across workers


def qd_infer(monkeypatch, capsys, *args):
    from qd.infer.cli import main

    return run_entry_point(monkeypatch, capsys, main, "qd-infer", *args, columns=400)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the socket is


# ----------------------------------------------------------------------------- no cluster needed

BLOCK_RAY = ("import importlib.abc, sys\n"
             "class NoRay(importlib.abc.MetaPathFinder):\n"
             "    def find_spec(self, name, path=None, target=None):\n"
             "        if name == 'ray' or name.startswith('ray.'):\n"
             "            raise ImportError(f'ray is not installed (import of {name!r})')\n"
             "sys.meta_path.insert(0, NoRay())\n"
             "from qd.infer.cli import main\n"
             "sys.argv = ['qd-infer', *sys.argv[1:]]\n"
             "try:\n    main()\n"
             "finally:\n    assert not [m for m in sys.modules if m == 'ray' or m.startswith('ray.')], 'ray imported'\n")


def run_without_ray(*args):
    return subprocess.run([sys.executable, "-c", BLOCK_RAY, *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def test_plain_qd_infer_never_imports_ray(exported_model, tmp_path, shared_bitmaps):
    np.save(tmp_path / "rows.npy", np.asarray(open_bitmaps(shared_bitmaps / "star.npy")[:5]))
    result = run_without_ray(tmp_path / "rows.npy", "--model", exported_model, "--json")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 5


def test_ray_not_installed_is_one_line(exported_model, tmp_path):
    result = run_without_ray(tmp_path, "--model", exported_model, "--ray", "--out", tmp_path / "out")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "error: --ray needs Ray Data, which is not installed (pip install 'quickdraw-edge[ray]')"]
    assert not (tmp_path / "out").exists()


@pytest.fixture
def never_ray(monkeypatch):
    """Fails the test if the run gets as far as importing Ray: these are refused before any cluster."""
    import qd.infer.ray as qd_ray

    def refuse():
        raise AssertionError("Ray was imported: the input should have been refused before")

    monkeypatch.setattr(qd_ray, "import_ray", refuse)


def test_refused_before_any_cluster(monkeypatch, capsys, never_ray, exported_model, tmp_path):
    (tmp_path / "in.npy").write_bytes(b"")  # never read: every case below stops first
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    (tmp_path / "garbage.onnx").write_bytes(b"\x00not onnx")
    port = closed_port()
    model = ["--model", exported_model]
    cases = [
        ([*model, "--ray", "--out", full], f"{full}: the output folder exists and is not empty (pass --overwrite "
                                           "to replace it)"),
        ([*model, "--ray", "--out", full / "keep.txt"], f"{full / 'keep.txt'}: exists and is not a folder"),
        ([*model, "--ray", f"127.0.0.1:{port}", "--out", tmp_path / "o"],
         f"--ray 127.0.0.1:{port}: cannot reach a Ray cluster there (Connection refused)"),
        ([*model, "--ray", f"ray://127.0.0.1:{port}", "--out", tmp_path / "o"],
         f"--ray ray://127.0.0.1:{port}: cannot reach a Ray cluster there (Connection refused)"),
        ([*model, "--ray=my-cluster", "--out", tmp_path / "o"],
         "--ray my-cluster: not a Ray address (local, auto, HOST:PORT or ray://HOST:PORT)"),
        (["--model", tmp_path / "garbage.onnx", "--ray", "--out", tmp_path / "o"],
         f"{tmp_path / 'garbage.onnx'}: not a loadable ONNX model"),
        (["--model", tmp_path / "absent.onnx", "--ray", "--out", tmp_path / "o"],
         f"{tmp_path / 'absent.onnx'}: model file does not exist"),
        ([*model, "--ray"], "--ray needs --out DIR, the folder the records go to"),
        ([*model, "--ray", "--csv", "--out", tmp_path / "o"], "--ray writes JSON lines or Parquet (--format), not --csv"),
        ([*model, "--ray", "--format", "csv", "--out", tmp_path / "o"], "--format must be json or parquet, got 'csv'"),
        ([*model, "--format", "parquet"], "--format needs --ray (without it qd-infer writes to stdout)"),
        ([*model, "--ray", "--out", "s3://bucket/results"], "--out s3://bucket/results: must be a folder path"),
    ]
    for args, message in cases:
        code, out, err = qd_infer(monkeypatch, capsys, tmp_path / "in.npy", *args)
        assert code == 1 and out == "", (args, out, err)
        assert err.count("\n") == 1 and err.startswith("error: " + message), (args, err)
    # a bare --ray before the inputs starts a local Ray: the folder after it is an input, not an address
    code, _, err = qd_infer(monkeypatch, capsys, "--ray", tmp_path / "in.npy", *model, "--out", full)
    assert code == 1 and "the output folder exists and is not empty" in err
    assert [p.name for p in full.iterdir()] == ["keep.txt"] and (full / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "garbage.onnx", "in.npy"]


def test_a_failed_ray_run_is_one_line():
    """What Ray raises wraps what the worker raised: a QDError is told as it is, anything else by its type."""
    from qd.command import QDError
    from qd.infer.ray import describe_ray_failure

    class TaskError(Exception):  # as ray.exceptions.RayTaskError: the worker's exception in `cause`
        def __init__(self, cause):
            super().__init__("Traceback (most recent call last):\n  ...")
            self.cause = cause

    try:
        raise RuntimeError("Ray Data: a task failed") from TaskError(QDError("m.onnx: model returned logits of shape (3,)"))
    except RuntimeError as exc:
        assert describe_ray_failure(exc) == "m.onnx: model returned logits of shape (3,)"
    assert describe_ray_failure(TaskError(MemoryError())) == "the Ray run failed: out of memory"
    assert describe_ray_failure(TaskError(ValueError("bad\nmore"))) == "the Ray run failed: ValueError: bad"


def test_units_hold_every_input_once_in_order(mixed_inputs):
    """The driver's plan: plain qd-infer's items in its order; a big uint8 .npy as row ranges."""
    from qd.infer.inputs import Failure, NpyRows, Plan
    from qd.infer.ray import decode_unit, plan_units

    def name(item) -> str:
        return item.input if isinstance(item, Failure) else str(item.path if isinstance(item, NpyRows) else item)

    local = mixed_inputs / "local"
    units = [decode_unit(u) for u in plan_units([str(local)], True, batch_size=16)]
    items = [item for unit in units for item in unit]
    rows = [i for i in items if isinstance(i, NpyRows)]
    assert [(r.path.name, r.start, r.stop) for r in rows] == [("rows.npy", 0, 128), ("rows.npy", 128, 256),
                                                              ("rows.npy", 256, 300)]
    assert list(dict.fromkeys(name(i) for i in items)) == [name(i) for i in Plan.of([local]).items]
    # a .npy whose header is bad is a failure already (what reading it would say), not a file to read
    assert [i.message for i in items if isinstance(i, Failure)] == [
        f"{local / 'bad' / 'short.npy'}: size is 1000 bytes, header promises 3264 (truncated or padded)"]
    assert all(unit for unit in units) and len(units) >= 5


# ----------------------------------------------------------------------------- on a local Ray

@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """A local Ray for this module: 2 CPUs, loopback only, workers set up by ray_faults.install."""
    import ray
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(ray_faults)
    flag = tmp_path_factory.mktemp("ray-faults") / "crash-next-write"
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20, _node_ip_address="127.0.0.1",
             log_to_driver=False, logging_level="ERROR",
             runtime_env={"worker_process_setup_hook": ray_faults.install,
                          "env_vars": {ray_faults.FLAG_ENV: str(flag)}})
    try:
        yield flag
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def mixed_inputs(tmp_path_factory, shared_bitmaps, shared_strokes):
    """PNGs, JPEGs, .npy (uint8 rows, floats, one drawing), .ndjson and bad files; `remote` is read
    through file:// URIs by the Ray run, through its path by plain qd-infer."""
    root = tmp_path_factory.mktemp("ray-inputs")
    rows = np.concatenate([np.asarray(open_bitmaps(shared_bitmaps / f"{c}.npy")[700:800])
                           for c in ("apple", "circle", "square", "star")])
    (root / "local" / "photos").mkdir(parents=True)
    for i in range(0, 400, 50):
        picture = bitmap_as_paper(rows[i], 200)
        if i % 100:
            picture.convert("RGB").save(root / "local" / "photos" / f"drawing {i}.jpg", quality=90)
        else:
            picture.save(root / "local" / "photos" / f"drawing {i}.png")
    np.save(root / "local" / "rows.npy", rows[:300])  # 3 row ranges of 128 at batch 16
    np.save(root / "local" / "floats.npy", rows[300:305].astype(np.float32) / 255)
    np.save(root / "local" / "one.npy", rows[305].reshape(28, 28))
    lines = (shared_strokes / "apple.ndjson").read_text().splitlines()[:20]
    (root / "local" / "apple.ndjson").write_text("\n".join([*lines[:10], "{not json", *lines[10:]]) + "\n")
    bad = root / "local" / "bad"
    bad.mkdir()
    (bad / "text.png").write_text("hello")
    (bad / "many").mkdir()
    for i in range(16):  # more failures than stderr shows
        (bad / "many" / f"{i:02d}.png").write_text("not a picture")
    (bad / "empty.ndjson").write_text("")
    (bad / ".hidden.png").write_text("skipped, as plain qd-infer skips it")
    np.save(bad / "short.npy", rows[:4])
    with open(bad / "short.npy", "r+b") as f:
        f.truncate(1000)
    np.save(bad / "too-bright.npy", np.full((2, 784), 2.0, np.float32))
    (root / "remote").mkdir()
    bitmap_as_paper(rows[10], 160).save(root / "remote" / "drawing.png")
    np.save(root / "remote" / "some.npy", rows[310:320])
    (root / "remote" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    return root


def records_of(folder: Path, suffix: str = ".jsonl") -> list[dict]:
    files = sorted(folder.glob(f"*{suffix}"))
    assert files and all(p.is_file() for p in folder.iterdir()), list(folder.iterdir())
    return [json.loads(line) for p in files for line in p.read_text().splitlines()]


def assert_same_records(ray_records: list[dict], plain_records: list[dict]) -> None:
    """Each input once; the same labels, unknown answers and errors; probabilities within 1e-6
    (the JSON records carry six decimals, so that is one step of the last digit)."""
    counts = Counter(r["input"] for r in ray_records)
    assert [name for name, n in counts.items() if n > 1] == []
    assert len(ray_records) == len(plain_records)
    plain = {r["input"]: r for r in plain_records}
    assert set(counts) == set(plain)
    for record in ray_records:
        want = plain[record["input"]]
        assert set(record) == set(want)
        for key in ("version", "label", "unknown", "error"):
            assert record[key] == want[key], (record, want)
        assert [g["label"] for g in record["top"]] == [g["label"] for g in want["top"]]
        if want["probability"] is not None:
            got = [record["probability"], *(g["probability"] for g in record["top"])]
            expected = [want["probability"], *(g["probability"] for g in want["top"])]
            assert np.allclose(got, expected, rtol=0, atol=1e-6 + 1e-12), (record, want)


def test_ray_runs_write_plain_qd_infers_records(local_ray, mixed_inputs, exported_model, monkeypatch, capsys,
                                                tmp_path):
    """Both runs in one test: the local Ray is one per test process, and pytest-xdist may run two tests
    of a module in different processes."""
    json_run_with_a_crash(local_ray, mixed_inputs, exported_model, monkeypatch, capsys, tmp_path / "json")
    parquet_run(mixed_inputs, exported_model, monkeypatch, capsys, tmp_path / "parquet")


def json_run_with_a_crash(crash_flag, mixed_inputs, exported_model, monkeypatch, capsys, tmp_path):
    """qd-infer --ray against plain qd-infer --json, while one worker dies halfway through its file."""
    tmp_path.mkdir()
    local, remote = mixed_inputs / "local", mixed_inputs / "remote"
    common = ["--model", exported_model, "--batch-size", BATCH, "--top", "3"]
    code, out, _ = qd_infer(monkeypatch, capsys, local, remote, local / "missing.png", *common, "--json")
    assert code == 1
    plain = [json.loads(line) for line in out.splitlines()]
    assert sum(r["error"] is None for r in plain) == 8 + 300 + 5 + 1 + 20 + 1 + 10
    assert sum(r["error"] is not None for r in plain) == 7 + 16  # 4 + 16 bad files, a missing one, a line, a JPEG

    crash_flag.write_text("")  # one worker dies halfway through writing its file
    result = tmp_path / "result"
    code, out, err = qd_infer(monkeypatch, capsys, local, remote.as_uri(), local / "missing.png", *common,
                              "--ray", "--out", result, "--workers", "1")
    assert code == 1 and '"version"' not in out, err  # no records on stdout (Ray prints its crash notice there)
    assert not crash_flag.exists(), "the injected crash did not happen"
    records = records_of(result)
    for record in records:  # the Ray run named the remote files by URI
        for key in ("input", "error"):
            if record[key] is not None and record[key].startswith(remote.as_uri()):
                record[key] = str(remote) + record[key][len(remote.as_uri()):]
    assert_same_records(records, plain)
    assert sum(r["input"].startswith(str(remote)) for r in records) == 1 + 10 + 1
    assert [p.name for p in tmp_path.iterdir()] == ["result"]  # the temporary folder is gone
    errors = [line.replace(remote.as_uri(), str(remote)) for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 20 + 1 and errors[-1] == f"error: ... and 3 more inputs failed (each is a record with an " \
                                                   f"error field in {result})"
    assert set(errors[:-1]) < {f"error: {r['error']}" for r in plain if r["error"] is not None}
    assert "345 drawings classified" in err and "23 inputs failed" in err and "1 Ray worker;" in err
    assert "Traceback" not in err


def parquet_run(mixed_inputs, exported_model, monkeypatch, capsys, out):
    """From Python, into a folder that is replaced (overwrite), as Parquet: the same fields and values."""
    import pyarrow.parquet as pq

    from qd.infer.ray import classify

    inputs = [mixed_inputs / "local" / "photos", mixed_inputs / "local" / "bad" / "text.png"]
    out.mkdir()
    (out / "old.txt").write_text("replaced")
    run = classify(inputs, out, model=exported_model, format="parquet", workers=1, overwrite=True)
    assert (run.summary.classified, run.summary.failed, run.workers) == (8, 1, 1)
    assert run.failures == [f"{inputs[1]}: not a recognised image file (expected PNG content for .png)"]
    assert [p.suffix for p in out.iterdir()] == [".parquet"] * run.files
    table = pq.read_table(out)
    assert table.column_names == ["version", "input", "label", "probability", "unknown", "top", "error"]
    _, stdout, _ = qd_infer(monkeypatch, capsys, *inputs, "--model", exported_model, "--json")
    assert_same_records(table.to_pylist(), [json.loads(line) for line in stdout.splitlines()])


# ----------------------------------------------------------------------------- Ray's own output

# qd-infer, with every Ray worker under a real write limit (tests/ray_faults.py: RLIMIT_FSIZE), so
# writing the records fails as on a full disk.
FULL_DISK_DRIVER = """
import sys
import ray
import ray.cloudpickle
import ray_faults

ray.cloudpickle.register_pickle_by_value(ray_faults)
real_init = ray.init

def init(*args, **kwargs):
    kwargs["runtime_env"] = {"worker_process_setup_hook": ray_faults.limit_writes,
                             "env_vars": {ray_faults.FULL_DISK_ENV: "2000"}}
    return real_init(*args, **kwargs)

ray.init = init
from qd.infer.cli import main
sys.argv = ["qd-infer", *sys.argv[1:]]
main()
"""


def test_a_full_disk_under_ray_is_one_line(exported_model, tmp_path, shared_bitmaps):
    """Ray's tracebacks, warnings and C++ log (about 190 lines, colour codes included) go to a log file
    that the one error line names; the output folder is never made."""
    np.save(tmp_path / "rows.npy", np.asarray(open_bitmaps(shared_bitmaps / "cat.npy")[:300]))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", FULL_DISK_DRIVER, tmp_path / "rows.npy", "--model", exported_model,
                             "--ray", "--out", out, "--workers", "1"], capture_output=True, text=True, timeout=600,
                            env=env)
    assert result.returncode == 1 and result.stdout == "", result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and not re.search("[\x00-\x1f\x7f-\x9f]", result.stderr[:-1]), result.stderr
    log = re.fullmatch(rf"error: {re.escape(str(out))}: File too large \(while the Ray workers wrote the "
                       r"records\); Ray's own messages are in (\S+)", lines[0])
    assert log, lines[0]
    assert "Traceback" in Path(log.group(1)).read_text()  # what Ray said is kept, for whoever wants it
    Path(log.group(1)).unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.npy"]
