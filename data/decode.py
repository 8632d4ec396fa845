"""The one parallel decode path: image files (and stroke drawings) -> 28x28 ink-high bitmaps,
for every command.

qd-infer, qd-eval (class folders) and anything else that reads folders of images use
ImageDecoder, so they get the same speed and the same one-line failures:

    with ImageDecoder(workers=4, expected=len(paths)) as decoder:
        for path, result in decoder.decode(paths):
            ...  # result: uint8 (28, 28) bitmap, or the "path: reason" line of a file that failed

`decoder.render(drawings)` does the same for parsed `.ndjson` drawings (qd.data.strokes'
renderer), in the same pool: (drawing, bitmap or reason) in order.

Decoding and preprocessing run in worker processes: much of qd.data.images is many small
numpy calls that hold the GIL, so threads do not scale. Files travel in groups (fewer
round trips; as many files as the ones before took about 40 ms of work for), results come
back in input order, and only a few groups per worker are in flight, so memory stays flat
on folders of any size. Each worker (and the calling
process while it decodes itself) runs numpy's BLAS on one thread: a BLAS thread pool per
worker would fight the other workers and the model for the same cores. Each worker also
keeps the memory it frees for the next file (glibc): otherwise every image-sized array is
handed back to the kernel and faulted in again, page by page. A worker that
dies (a decoder crash on a hostile file, the OOM killer) costs only the files it held:
the pool is restarted and those files are retried one by one, and a file that kills a
worker again gets its own failure line. Workers never run the caller's main script
(qd.data.workers).
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from qd.command import QDError

from .images import load_image_bitmap
from .strokes import render_drawing
from .workers import MIN_FILES_FOR_PROCESSES, start_fork_server, worker_context

# Files per task sent to a worker: GROUP at first, then as many as take about TASK_SECONDS of a
# worker's CPU time (measured on the tasks done so far), GROUP to MAX_GROUP. A worker gets its
# next task through the calling process (concurrent.futures queues only one task beyond those
# running): tasks of a tenth of a second or less keep the workers busy even when that process
# waits for a core. Each task costs that process about half a millisecond of its own, as much
# as 16 small images (about 10 ms of decoding) cost it otherwise: small images go 64 to a task.
GROUP = 16
MAX_GROUP = 64
TASK_SECONDS = 0.04
# Enough queued to keep the workers busy while the caller is away: with 2 workers, a batch of
# 512 (qd-infer's default) small images, decoded while onnxruntime classifies the batch before.
# (4 per worker, 64 small images or about 40 ms of work, run dry long before the default
# network's batch of 512 is classified on one thread, about 0.2 s.) What is queued is file
# names and finished 28x28 bitmaps: memory stays flat.
GROUPS_IN_FLIGHT_PER_WORKER = 16
# glibc mallopt: arrays up to this size come from the heap, and this much freed heap is kept
# (a 2048 x 2048 image, the largest preprocessed, takes about 100 MB at its peak).
HEAP_ARRAYS_BYTES = 16 * 2**20
HEAP_KEPT_BYTES = 64 * 2**20

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


def render_one(drawing) -> np.ndarray | str:
    """One parsed `.ndjson` drawing -> its bitmap, or the reason it cannot be drawn."""
    try:
        return render_drawing(drawing)
    except ValueError as exc:
        return str(exc)
    except MemoryError:
        return "out of memory while rendering"


def _decode_group(paths: list[str]) -> list[np.ndarray | str]:
    return [decode_file(p) for p in paths]


def _render_group(drawings: list) -> list[np.ndarray | str]:
    return [render_one(d) for d in drawings]


def _timed(group_task, tasks: list) -> tuple[list, float]:
    """A group task's results, and the CPU seconds it took (the worker's own time)."""
    started = time.process_time()
    results = group_task(tasks)
    return results, time.process_time() - started


class _GroupSize:
    """Files per task: GROUP until tasks have been measured, then about TASK_SECONDS of work each."""

    def __init__(self):
        self.files = GROUP
        self._done = 0
        self._seconds = 0.0

    def measured(self, files: int, seconds: float) -> None:
        self._done += files
        self._seconds += seconds
        if self._seconds > 0:
            self.files = min(MAX_GROUP, max(GROUP, int(TASK_SECONDS * self._done / self._seconds)))


def _start_worker() -> None:
    # Ctrl-C is the parent's to handle: it stops the pool; workers must not print tracebacks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _single_threaded_blas()
    _keep_freed_memory()


def _keep_freed_memory() -> None:
    """glibc only (elsewhere nothing): serve image-sized arrays from the heap and keep what is freed."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    mallopt(m_mmap_threshold, HEAP_ARRAYS_BYTES)
    mallopt(m_trim_threshold, HEAP_KEPT_BYTES)


def _single_threaded_blas():
    """Limit numpy's BLAS to one thread (until the returned limiter is restored)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


class ImageDecoder:
    """Decodes image files with `workers` processes (in this process when workers is 1 or the
    expected number of files is small). Use as a context manager, or call close()."""

    def __init__(self, workers: int = 1, expected: int | None = None, context=None):
        """`expected`: how many files will come (a small job decodes here, without a pool);
        `context`: a multiprocessing context other than the default forkserver (tests use fork)."""
        self.workers = max(1, int(workers))
        self.parallel = self.workers > 1 and (expected is None or expected >= MIN_FILES_FOR_PROCESSES)
        self._context = context
        if self.parallel and context is None:
            # The fork server imports numpy, Pillow and this module (about half a second) while the
            # caller goes on (loading its model): by the first file, workers fork from it at once.
            # (Commands that know early that they will decode start it sooner: start_worker_server.)
            self._context = worker_context()
            start_fork_server(self._context)
        self._pool: ProcessPoolExecutor | None = None
        self._pool_served = False  # has the current pool finished a task?

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
        paths = [p if isinstance(p, Path) else Path(p) for p in paths]
        crashed = "the image decoder crashed on this file (worker process died)"
        for path, result in self._run(paths, _decode_group, str, decode_file):
            yield path, (f"{path}: {crashed}" if result is _CRASHED else result)

    def render(self, drawings: list) -> Iterator[tuple[object, "np.ndarray | str"]]:
        """(drawing, bitmap or reason) for every parsed `.ndjson` drawing, in the order given."""
        for drawing, result in self._run(list(drawings), _render_group, lambda d: d, render_one):
            yield drawing, ("the renderer crashed on this drawing (worker process died)"
                            if result is _CRASHED else result)

    def _run(self, items: list, group_task, to_task, one) -> Iterator[tuple]:
        if self.parallel and len(items) > 1:
            yield from self._in_pool(items, group_task, to_task)
            return
        limiter = _single_threaded_blas()
        try:
            for item in items:
                yield item, one(item)
        finally:
            limiter.restore_original_limits()

    # ------------------------------------------------------------------------- the pool

    def _pool_or_start(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=self._context or worker_context(),
                                             initializer=_start_worker)
            self._pool_served = False
        return self._pool

    def _restart(self, broken: ProcessPoolExecutor | None) -> None:
        """Replace the pool if it is the one that broke (futures of an older one break too).

        A pool that broke before finishing any task may have workers that cannot start at all
        (not a hostile file): a task with no file tells, and ends the run with one line
        rather than a pool restarted for every file."""
        if broken is not None and broken is self._pool:
            self._pool = None
            broken.shutdown(wait=False, cancel_futures=True)
            if not self._pool_served:
                self._check_workers_start()

    def _check_workers_start(self) -> None:
        pool = self._pool_or_start()
        try:
            pool.submit(_nothing).result()
        except BrokenProcessPool:
            self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)
            raise QDError("the image decoder's worker processes die as they start, before reading any file; "
                          "decode in one process instead (--workers 1; workers=1 in Python)") from None
        self._pool_served = True

    def _served(self, pool: ProcessPoolExecutor) -> None:
        if pool is self._pool:
            self._pool_served = True

    def _in_pool(self, items: list, group_task, to_task) -> Iterator[tuple]:
        window = self.workers * GROUPS_IN_FLIGHT_PER_WORKER
        pending: deque = deque()
        size = _GroupSize()
        start = 0
        try:
            while start < len(items):
                group = items[start:start + size.files]
                start += len(group)
                pending.append((group, *self._submit([to_task(x) for x in group], group_task)))
                if len(pending) >= window:
                    yield from self._collect(*pending.popleft(), group_task, to_task, size)
            while pending:
                yield from self._collect(*pending.popleft(), group_task, to_task, size)
        finally:
            for _, future, _ in pending:
                if future is not None:
                    future.cancel()

    def _submit(self, tasks: list, group_task=_decode_group):
        """(future, the pool it runs in); (None, pool) if that pool is already broken."""
        pool = self._pool_or_start()
        try:
            return pool.submit(_timed, group_task, tasks), pool
        except BrokenProcessPool:
            return None, pool

    def _collect(self, group: list, future, pool, group_task, to_task, size: _GroupSize) -> Iterator[tuple]:
        try:
            if future is None:
                raise BrokenProcessPool
            results, seconds = future.result()
        except BrokenProcessPool:
            self._restart(pool)
            yield from self._one_by_one(group, group_task, to_task)
            return
        self._served(pool)
        size.measured(len(group), seconds)
        yield from zip(group, results)

    def _one_by_one(self, group: list, group_task, to_task) -> Iterator[tuple]:
        """The items of a group that was in flight when a worker died, each in its own task."""
        for item in group:
            future, pool = self._submit([to_task(item)], group_task)
            try:
                if future is None:
                    raise BrokenProcessPool
                result = future.result()[0][0]
            except BrokenProcessPool:
                self._restart(pool)
                yield item, _CRASHED
            else:
                self._served(pool)
                yield item, result


def _nothing() -> None:
    """The task that tells a pool whose workers cannot start from one that met a hostile file."""


_CRASHED = object()  # a worker died on this very item
