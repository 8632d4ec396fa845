"""qd.data.decode: the one parallel image path (worker processes, in order, bounded, crash-proof)."""

import multiprocessing
import os
import subprocess
import sys

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from images_synth import bitmap_as_paper
from qd.command import QDError
from qd.data import decode, workers
from qd.data.bitmaps import open_bitmaps
from qd.data.decode import GROUP, ImageDecoder
from qd.data.images import load_image_bitmap


@pytest.fixture(scope="module")
def folder(tmp_path_factory, shared_bitmaps):
    """40 drawings as PNGs of several sizes, with a text file and a cut PNG among them."""
    root = tmp_path_factory.mktemp("decode")
    rows = open_bitmaps(shared_bitmaps / "cat.npy")[:40]
    paths = []
    for i, row in enumerate(rows):
        path = root / f"{i:03d}.png"
        bitmap_as_paper(row, (64, 254, 300)[i % 3]).save(path)
        paths.append(path)
    (root / "005.png").write_text("not an image")
    cut = (root / "011.png").read_bytes()
    (root / "011.png").write_bytes(cut[: len(cut) // 2])
    return paths


def decoded(paths, **kw):
    with ImageDecoder(**kw) as decoder:
        return list(decoder.decode(paths))


def test_worker_processes_give_the_same_results_in_the_same_order(folder):
    serial = decoded(folder, workers=1)
    parallel = decoded(folder, workers=3, expected=len(folder))
    assert [p for p, _ in parallel] == folder == [p for p, _ in serial]
    for (path, a), (_, b) in zip(serial, parallel):
        if isinstance(a, str):
            assert a == b and a.startswith(str(path))
        else:
            assert np.array_equal(a, b) and np.array_equal(a, load_image_bitmap(path))
    failed = [p.name for p, r in parallel if isinstance(r, str)]
    assert failed == ["005.png", "011.png"]


def test_small_jobs_and_one_worker_decode_in_this_process(folder):
    assert not ImageDecoder(workers=4, expected=3).parallel
    assert not ImageDecoder(workers=1, expected=10_000).parallel
    assert ImageDecoder(workers=2, expected=workers.MIN_FILES_FOR_PROCESSES).parallel


def test_qd_infer_starts_the_workers_fork_server_before_it_imports_numpy(tmp_path):
    """Where worker processes may decode (a folder, 32 image files or more), qd-infer starts their
    fork server first thing, importing nothing heavy itself: the server's imports (numpy, Pillow,
    the preprocessing) then overlap the command's own. Not for fewer images, nor for a .npy."""
    script = ("import sys\n"
              "from multiprocessing import forkserver\n"
              "from qd.infer.cli import start_decoding_early\n"
              "start_decoding_early(sys.argv[1:])\n"
              "print(forkserver._forkserver._forkserver_pid is not None, 'numpy' in sys.modules)")

    def started(*inputs):
        return subprocess.run([sys.executable, "-c", script, *map(str, inputs)], capture_output=True, text=True,
                              check=True).stdout.split()

    images = [str(tmp_path / f"{i}.png") for i in range(workers.MIN_FILES_FOR_PROCESSES)]
    assert started(tmp_path) == ["True", "False"]
    assert started(*images) == ["True", "False"]
    assert started(*images[1:]) == ["False", "False"]
    assert started(tmp_path / "drawings.npy") == ["False", "False"]


def _blas_threads(_=None):
    return max((lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"), default=1)


def test_blas_runs_single_threaded_while_decoding_in_process(folder):
    decoder = ImageDecoder(workers=1)
    results = decoder.decode(folder[:3])
    next(results)
    assert _blas_threads() == 1
    list(results)


def test_worker_processes_run_blas_single_threaded():
    with ImageDecoder(workers=2, context=multiprocessing.get_context("fork")) as decoder:
        pool = decoder._pool_or_start()
        assert set(pool.map(_blas_threads, range(8))) == {1}


BLAS_IN_WORKERS = """
import os, sys
from concurrent.futures import ProcessPoolExecutor
from qd.data import workers
context = workers.worker_context() if sys.argv[1] == "forkserver" else workers._SpawnContext()
workers.start_fork_server(context)
with ProcessPoolExecutor(1, mp_context=context) as pool:  # no initializer: as the process starts
    print(pool.submit(os.getenv, "OPENBLAS_NUM_THREADS").result(), os.getenv("OPENBLAS_NUM_THREADS"))
"""


@pytest.mark.parametrize("how", ["forkserver", "spawn"])
@pytest.mark.parametrize("parents", [None, "3"])
def test_worker_processes_start_with_a_blas_of_one_thread(how, parents):
    """The fork server (and a spawned worker) loads numpy with a BLAS of one thread, not a thread per
    core spinning at its import; the caller's own setting stays as it was."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if parents is not None:
        env["OPENBLAS_NUM_THREADS"] = parents
    done = subprocess.run([sys.executable, "-c", BLAS_IN_WORKERS, how], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["1", str(parents)]


def test_a_worker_that_dies_costs_only_the_file_that_killed_it(folder, monkeypatch):
    """A decoder crash (segfault, OOM kill) on one hostile file: the others are still decoded."""
    real = decode.load_image_bitmap

    def crashing(path, *args, **kwargs):
        if os.path.basename(path) == "017.png":
            os._exit(1)  # what a segfaulting decoder looks like from outside
        return real(path, *args, **kwargs)

    monkeypatch.setattr(decode, "load_image_bitmap", crashing)  # inherited by forked workers
    results = decoded(folder, workers=2, context=multiprocessing.get_context("fork"))
    assert [p for p, _ in results] == folder
    failed = {p.name: r for p, r in results if isinstance(r, str)}
    assert set(failed) == {"005.png", "011.png", "017.png"}
    assert "crashed" in failed["017.png"] and failed["017.png"].startswith(str(folder[17]))
    good = [(p, r) for p, r in results if not isinstance(r, str)]
    assert len(good) == len(folder) - 3 and all(np.array_equal(r, real(p)) for p, r in good[:5])


def test_hostile_first_files_are_not_taken_for_workers_that_cannot_start(folder, monkeypatch):
    real = decode.load_image_bitmap

    def crashing(path, *args, **kwargs):
        if os.path.basename(path) in ("000.png", "001.png"):
            os._exit(1)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(decode, "load_image_bitmap", crashing)
    results = decoded(folder, workers=2, context=multiprocessing.get_context("fork"))
    failed = {p.name for p, r in results if isinstance(r, str)}
    assert failed == {"000.png", "001.png", "005.png", "011.png"}


def test_workers_that_cannot_start_end_the_run_with_one_error(folder, monkeypatch):
    monkeypatch.setattr(decode, "_start_worker", lambda: os._exit(1))  # inherited by forked workers
    with pytest.raises(QDError, match="die as they start") as caught:
        decoded(folder, workers=2, context=multiprocessing.get_context("fork"))
    assert "\n" not in str(caught.value)


UNGUARDED_SCRIPT = """
import sys
from qd.data.decode import ImageDecoder
print("script started", file=sys.stderr)
with ImageDecoder(workers=2) as decoder:
    results = [r for _, r in decoder.decode(sys.argv[1:])]
print(sum(not isinstance(r, str) for r in results))
"""


@pytest.mark.parametrize("how", ["file", "stdin"])
def test_a_script_without_a_main_guard_is_not_run_again_by_the_workers(folder, tmp_path, how):
    """The default pool (forkserver) never imports the caller's main module in its workers: a script
    with no `if __name__ == "__main__":` would start over in each one, and one read from stdin cannot
    be imported at all."""
    script = tmp_path / "classify.py"
    script.write_text(UNGUARDED_SCRIPT)
    args = [str(p) for p in folder]
    command = [sys.executable, str(script), *args] if how == "file" else [sys.executable, "-", *args]
    done = subprocess.run(command, input=None if how == "file" else UNGUARDED_SCRIPT, capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.count("script started") == 1, done.stderr[-2000:]
    assert done.stdout.split() == [str(len(folder) - 2)]


def test_memory_stays_bounded_only_a_window_is_in_flight(folder, monkeypatch):
    submitted = []
    decoder = ImageDecoder(workers=2, expected=len(folder), context=multiprocessing.get_context("fork"))
    real_submit = decoder._submit
    monkeypatch.setattr(decoder, "_submit", lambda names, *task: (submitted.append(names), real_submit(names, *task))[1])
    window = decoder.workers * decode.GROUPS_IN_FLIGHT_PER_WORKER
    copies = window * GROUP // len(folder) + 2
    results = decoder.decode(folder * copies)
    next(results)
    assert len(submitted) <= window and len(folder) * copies > window * GROUP
    results.close()
    decoder.close()


def test_quick_files_go_more_to_a_task_in_input_order(folder, monkeypatch):
    """Tasks start at GROUP files; once measured, files that take little work go up to MAX_GROUP to
    a task (fewer round trips), slow ones stay at GROUP; results stay in input order either way."""
    sizes = []
    decoder = ImageDecoder(workers=2, expected=len(folder), context=multiprocessing.get_context("fork"))
    real_submit = decoder._submit
    monkeypatch.setattr(decoder, "_submit", lambda names, *task: (sizes.append(len(names)), real_submit(names, *task))[1])
    monkeypatch.setattr(decode, "GROUPS_IN_FLIGHT_PER_WORKER", 1)  # measured after the first two tasks
    monkeypatch.setattr(decode, "TASK_SECONDS", 1e6)  # every file is quick, whatever the machine
    paths = folder * 12
    with decoder:
        results = list(decoder.decode(paths))
    assert [p for p, _ in results] == paths
    assert sizes[:3] == [GROUP, GROUP, decode.MAX_GROUP] and sum(sizes) == len(paths)
    expected = dict(decoded(folder, workers=1))
    for path, result in results:
        assert np.array_equal(result, expected[path]) if not isinstance(result, str) else result == expected[path]

    slow = decode._GroupSize()
    slow.measured(GROUP, 2 * decode.TASK_SECONDS)
    assert slow.files == GROUP
    quick = decode._GroupSize()
    quick.measured(GROUP, decode.TASK_SECONDS / 8)
    assert quick.files == decode.MAX_GROUP
    between = decode._GroupSize()
    between.measured(GROUP, decode.TASK_SECONDS / 2)
    assert between.files == 2 * GROUP
