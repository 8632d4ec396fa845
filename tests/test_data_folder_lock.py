"""One writer lock per data folder (qd.files.folder_lock), taken by qd-data fetch and qd-data import
for their whole run: a second writer says it waits (naming the holder's pid) and writes nothing
until the first is done; a lock whose holder was killed is gone with it."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from qd.files import folder_lock

REPO = Path(__file__).resolve().parents[1]
SQUARE = [[[0, 50, 50, 0, 0], [0, 0, 50, 50, 0]]]


def qd_data(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "qd.data.cli", *map(str, args)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def ndjson(path, words):
    path.write_text("".join(json.dumps({"word": w, "drawing": SQUARE}) + "\n" for w in words))
    return path


def first_note(process) -> str:
    """The first stderr line of `process` (blocks until it is written, or the process ends)."""
    return process.stderr.readline()


def test_import_waits_for_the_folder_lock_and_says_who_holds_it(tmp_path):
    out = tmp_path / "data"
    with folder_lock(out):  # this test process is the other writer
        importing = qd_data("import", ndjson(tmp_path / "new.ndjson", ["apple", "cat"]), "--data", out,
                            "--workers", "1")
        try:
            note = first_note(importing)
            assert note.startswith(f"note: {out}: another command (pid {os.getpid()}) is writing this folder; "
                                   "waiting"), note
            assert list(out.iterdir()) == []  # nothing written while the lock is held
        except BaseException:
            importing.kill()
            raise
    stdout, stderr = importing.communicate(timeout=120)
    assert importing.returncode == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == ["apple.npy", "cat.npy"]


def test_fetch_and_import_into_one_folder_never_interleave(qd_server, shared_bitmaps, tmp_path):
    out = tmp_path / "data"
    release = qd_server.hold("cat", after=1_000_000)  # fetch stays mid-file, holding the folder, until released
    fetching = qd_data("fetch", "apple", "cat", "--source", qd_server.base_url, "--data", out, "--timeout", "600")
    try:
        # the fetch has the lock once its first file is in place
        while not (out / "apple.npy").exists():
            line = fetching.stdout.readline()
            assert line, fetching.communicate()
        importing = qd_data("import", ndjson(tmp_path / "new.ndjson", ["apple", "dog"]), "--data", out,
                            "--workers", "1")
        note = first_note(importing)
        assert note.startswith(f"note: {out}: another command (pid {fetching.pid}) is writing this folder"), note
    finally:
        release.set()
    assert fetching.wait(120) == 0
    stdout, stderr = importing.communicate(timeout=120)
    assert importing.returncode == 0, stderr
    # the import ran after the fetch, as a whole: its apple replaced the fetched one, which it says
    assert "apple: 1 drawings (replaced a file of 3,000)" in stdout
    assert (out / "cat.npy").read_bytes() == (shared_bitmaps / "cat.npy").read_bytes()
    assert sorted(p.name for p in out.iterdir()) == ["apple.npy", "cat.npy", "dog.npy"]


def test_a_killed_writer_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "data"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom qd.files import folder_lock\n"
                               f"with folder_lock({str(out)!r}):\n    print('locked', flush=True)\n"
                               "    sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "locked\n"
    holder.send_signal(signal.SIGKILL)
    holder.wait(30)
    importing = qd_data("import", ndjson(tmp_path / "new.ndjson", ["apple", "cat"]), "--data", out, "--workers", "1")
    stdout, stderr = importing.communicate(timeout=120)
    assert importing.returncode == 0 and "writing this folder" not in stderr, stderr
    assert sorted(p.name for p in out.iterdir()) == ["apple.npy", "cat.npy"]
