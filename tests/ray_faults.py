"""Fault injection for the Ray tests: one Ray worker dies halfway through writing its output file.

`install` is the local Ray's worker_process_setup_hook (tests/test_infer_ray.py): it runs in every
Ray worker process as it starts. While the file named by FLAG_ENV exists, the next worker to write
records removes it (so exactly one write crashes), writes half of its records to the file and kills
its own process: Ray then restarts the actor and retries the task, which must write that file again
whole, so each input is in the output once.
"""

from __future__ import annotations

import os

FLAG_ENV = "QD_TEST_RAY_CRASH_FLAG"


def install() -> None:
    flag = os.environ.get(FLAG_ENV)
    if not flag:
        return
    import qd.infer.ray as worker

    write_records = worker.write_records

    def write_half_then_die(table, file, fmt):
        try:
            os.unlink(flag)  # atomic: one writer wins
        except FileNotFoundError:
            return write_records(table, file, fmt)
        write_records(table.slice(0, max(1, table.num_rows // 2)), file, fmt)
        file.flush()
        os._exit(1)

    worker.write_records = write_half_then_die


FULL_DISK_ENV = "QD_TEST_RAY_WRITE_LIMIT"


def limit_writes() -> None:
    """A real write limit in each Ray worker (RLIMIT_FSIZE, bytes from FULL_DISK_ENV): any file write
    past it fails with EFBIG, as on a full disk (SIGXFSZ ignored, so the write fails instead of killing
    the worker). Ray's own daemons are not limited."""
    limit = os.environ.get(FULL_DISK_ENV)
    if not limit:
        return
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
