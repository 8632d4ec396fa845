"""qd.data.decode: the one parallel image path (worker processes, in order, bounded, crash-proof)."""

import multiprocessing
import os

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from images_synth import bitmap_as_paper
from qd.data import decode
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
    assert ImageDecoder(workers=2, expected=decode.MIN_FILES_FOR_PROCESSES).parallel


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


def test_memory_stays_bounded_only_a_window_is_in_flight(folder, monkeypatch):
    submitted = []
    decoder = ImageDecoder(workers=2, expected=len(folder), context=multiprocessing.get_context("fork"))
    real_submit = decoder._submit
    monkeypatch.setattr(decoder, "_submit", lambda names, *task: (submitted.append(names), real_submit(names, *task))[1])
    results = decoder.decode(folder * 4)
    next(results)
    window = decoder.workers * decode.GROUPS_IN_FLIGHT_PER_WORKER
    assert len(submitted) <= window and len(folder) * 4 > window * GROUP
    results.close()
    decoder.close()
