"""The one parallel decode path: image files -> 28x28 ink-high bitmaps, for every command.

qd-infer, qd-eval (class folders) and anything else that reads folders of images use
ImageDecoder, so they get the same speed and the same one-line failures:

    with ImageDecoder(workers=4, expected=len(paths)) as decoder:
        for path, result in decoder.decode(paths):
            ...  # result: uint8 (28, 28) bitmap, or the "path: reason" line of a file that failed

Decoding and preprocessing run in worker processes: much of qd.data.images is many small
numpy calls that hold the GIL, so threads do not scale. Files travel in groups (fewer
round trips), results come back in input order, and only a few groups per worker are
in flight, so memory stays flat on folders of any size. Each worker (and the calling
process while it decodes itself) runs numpy's BLAS on one thread: a BLAS thread pool per
worker would fight the other workers and the model for the same cores. A worker that
dies (a decoder crash on a hostile file, the OOM killer) costs only the files it held:
the pool is restarted and those files are retried one by one, and a file that kills a
worker again gets its own failure line.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .errors import QDError
from .images import load_image_bitmap

GROUP = 8  # files per task sent to a worker
GROUPS_IN_FLIGHT_PER_WORKER = 4
MIN_FILES_FOR_PROCESSES = 32  # fewer decode faster here than a pool starts

Result = tuple[Path, "np.ndarray | str"]


def decode_file(path: str | os.PathLike) -> np.ndarray | str:
    """One image file -> its bitmap, or a one-line "path: reason"; never raises for a bad file."""
    try:
        return load_image_bitmap(path)
    except QDError as exc:
        return str(exc)
    except MemoryError:
        return f"{path}: out of memory while decoding"
    except Exception as exc:  # a decoder bug on a hostile file must not end the run
        text = str(exc).strip().splitlines()
        return f"{path}: cannot decode image ({type(exc).__name__}: {text[0][:160] if text else ''})"


def _decode_group(paths: list[str]) -> list[np.ndarray | str]:
    return [decode_file(p) for p in paths]


def _start_worker() -> None:
    # Ctrl-C is the parent's to handle: it stops the pool; workers must not print tracebacks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _single_threaded_blas()


def _single_threaded_blas():
    """Limit numpy's BLAS to one thread (until the returned limiter is restored)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _pool_context():
    # forkserver: workers fork from a clean server process (never from a parent that
    # already runs onnxruntime threads), with the decoder modules imported once.
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        return context
    return multiprocessing.get_context("spawn")


class ImageDecoder:
    """Decodes image files with `workers` processes (in this process when workers is 1 or the
    expected number of files is small). Use as a context manager, or call close()."""

    def __init__(self, workers: int = 1, expected: int | None = None, context=None):
        """`expected`: how many files will come (a small job decodes here, without a pool);
        `context`: a multiprocessing context other than the default forkserver (tests use fork)."""
        self.workers = max(1, int(workers))
        self.parallel = self.workers > 1 and (expected is None or expected >= MIN_FILES_FOR_PROCESSES)
        self._context = context
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> "ImageDecoder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def decode(self, paths: Iterable[str | os.PathLike]) -> Iterator[Result]:
        """(path, bitmap or failure line) for every file, in the order given."""
        paths = [Path(p) for p in paths]
        if self.parallel and len(paths) > 1:
            yield from self._decode_in_pool(paths)
            return
        limiter = _single_threaded_blas()
        try:
            for path in paths:
                yield path, decode_file(path)
        finally:
            limiter.restore_original_limits()

    # ------------------------------------------------------------------------- the pool

    def _pool_or_start(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=self._context or _pool_context(),
                                             initializer=_start_worker)
        return self._pool

    def _restart(self, broken: ProcessPoolExecutor | None) -> None:
        """Replace the pool if it is the one that broke (futures of an older one break too)."""
        if broken is not None and broken is self._pool:
            self._pool = None
            broken.shutdown(wait=False, cancel_futures=True)

    def _decode_in_pool(self, paths: list[Path]) -> Iterator[Result]:
        groups = [paths[i:i + GROUP] for i in range(0, len(paths), GROUP)]
        window = self.workers * GROUPS_IN_FLIGHT_PER_WORKER
        pending: deque = deque()
        try:
            for group in groups:
                pending.append((group, *self._submit([str(p) for p in group])))
                if len(pending) >= window:
                    yield from self._collect(*pending.popleft())
            while pending:
                yield from self._collect(*pending.popleft())
        finally:
            for _, future, _ in pending:
                if future is not None:
                    future.cancel()

    def _submit(self, names: list[str]):
        """(future, the pool it runs in); (None, pool) if that pool is already broken."""
        pool = self._pool_or_start()
        try:
            return pool.submit(_decode_group, names), pool
        except BrokenProcessPool:
            return None, pool

    def _collect(self, group: list[Path], future, pool) -> Iterator[Result]:
        try:
            if future is None:
                raise BrokenProcessPool
            results = future.result()
        except BrokenProcessPool:
            self._restart(pool)
            yield from self._one_by_one(group)
            return
        yield from zip(group, results)

    def _one_by_one(self, group: list[Path]) -> Iterator[Result]:
        """The files of a group that was in flight when a worker died, each in its own task."""
        for path in group:
            future, pool = self._submit([str(path)])
            try:
                if future is None:
                    raise BrokenProcessPool
                yield path, future.result()[0]
            except BrokenProcessPool:
                self._restart(pool)
                yield path, f"{path}: the image decoder crashed on this file (worker process died)"
