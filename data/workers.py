"""The processes qd.data.decode's workers run in: started from a fork server that imports what
they need once, and never running the caller's main script.

This module imports only the standard library, so that a command that will decode images can
start the fork server first thing (start_worker_server), before it imports numpy, Pillow and
its model runtime itself: the server's imports then run on another core meanwhile.

multiprocessing's spawn and forkserver start methods import the main module again in each
new process (as `__mp_main__`), so that functions defined there can be unpickled. Our
workers only run qd.data functions, and running someone's script again in every worker
breaks where people least expect it: a script without an `if __name__ == "__main__":`
guard starts its work over in each worker, multiprocessing refuses that, every worker dies
as it starts and the pool is restarted again and again; a script read from stdin cannot be
imported at all. These contexts start processes with the main module hidden for the moment
of the start, so workers import only what their tasks name.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import types
from contextlib import contextmanager
from multiprocessing import context as mp_context

# Imported once by the fork server rather than by every worker: the task functions
# (qd.data.decode, and with it the preprocessing), threadpoolctl, and the decoders of the
# formats the gate accepts (Image.open's preinit loads PPM too).
WORKER_MODULES = ("qd.data.decode", "threadpoolctl", "PIL.BmpImagePlugin", "PIL.GifImagePlugin",
                  "PIL.JpegImagePlugin", "PIL.PngImagePlugin", "PIL.PpmImagePlugin", "PIL.WebPImagePlugin")
MIN_FILES_FOR_PROCESSES = 32  # fewer images decode faster in the caller's process than a pool starts


def start_worker_server() -> None:
    """Start the fork server decode workers fork from, without waiting for it (nothing where
    workers are spawned instead). ImageDecoder starts it too, when it is made: a command that
    knows sooner that it will decode images calls this first."""
    start_fork_server(worker_context())


def start_fork_server(context) -> None:
    """Start the context's fork server now, without waiting for it (multiprocessing would start
    it at the first worker, and wait there for its imports)."""
    if context.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        with _blas_on_one_thread():
            forkserver.ensure_running()


# The environment variables that size the BLAS libraries numpy is built with (OpenBLAS, MKL, or
# through OpenMP), read once, when numpy loads.
BLAS_THREADS_VARIABLES = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS")


@contextmanager
def _blas_on_one_thread():
    """While a worker process (or the fork server) starts: its numpy loads a BLAS of one thread.
    A BLAS thread pool per process would start a thread per core that spins at numpy's import
    (about 0.08 s of CPU each time) and then fight the other workers for the same cores; the
    workers' BLAS runs on one thread anyway (qd.data.decode)."""
    saved = {name: os.environ.get(name) for name in BLAS_THREADS_VARIABLES}
    os.environ.update({name: "1" for name in BLAS_THREADS_VARIABLES})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def _main_hidden():
    """While a process starts, multiprocessing sees a blank __main__ (no file, no spec) and so
    asks the new process to import none."""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is None:
            del sys.modules["__main__"]
        else:
            sys.modules["__main__"] = main


class _ForkServerProcess(mp_context.ForkServerProcess):
    @staticmethod
    def _Popen(process_obj):
        with _main_hidden():
            return mp_context.ForkServerProcess._Popen(process_obj)


class _SpawnProcess(mp_context.SpawnProcess):
    @staticmethod
    def _Popen(process_obj):
        with _main_hidden(), _blas_on_one_thread():
            return mp_context.SpawnProcess._Popen(process_obj)


class _ForkServerContext(mp_context.ForkServerContext):
    Process = _ForkServerProcess


class _SpawnContext(mp_context.SpawnContext):
    Process = _SpawnProcess


def worker_context(preload: tuple[str, ...] = WORKER_MODULES) -> multiprocessing.context.BaseContext:
    """forkserver where the platform has it (workers fork from a clean server process, never
    from a parent that already runs onnxruntime threads; the server imports `preload` once
    for all of them), else spawn; neither imports the main module in its processes."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = _ForkServerContext()
        context.set_forkserver_preload(list(preload))
        return context
    return _SpawnContext()
