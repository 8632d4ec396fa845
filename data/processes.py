"""Worker processes that never run the caller's main script.

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
import sys
import types
from contextlib import contextmanager
from multiprocessing import context as mp_context


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
        with _main_hidden():
            return mp_context.SpawnProcess._Popen(process_obj)


class _ForkServerContext(mp_context.ForkServerContext):
    Process = _ForkServerProcess


class _SpawnContext(mp_context.SpawnContext):
    Process = _SpawnProcess


def worker_context(preload: tuple[str, ...] = ()) -> multiprocessing.context.BaseContext:
    """forkserver where the platform has it (workers fork from a clean server process, never
    from a parent that already runs onnxruntime threads; the server imports `preload` once
    for all of them), else spawn; neither imports the main module in its processes."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = _ForkServerContext()
        context.set_forkserver_preload(list(preload))
        return context
    return _SpawnContext()
