"""qd-data fetch when things go wrong: SIGKILL or Ctrl-C mid-download (no half file, the part is
resumed), a full disk (one line, earlier files intact), a FIFO in a source folder (one line), a server that drips
bytes (the status line, headers, body or the TLS handshake: given up on within --timeout)."""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from fixtures_data import invoke_cli
from qd.data import fetch as fetch_module
from qd.data.cli import main
from qd.data.fetch import FetchOptions, fetch_category, part_path, tmp_path as tmp_file_of
from qd.data.sources import FolderSource, UrlSource

REPO = Path(__file__).resolve().parents[1]


def wait_for(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_sigkill_mid_download_leaves_no_half_file_and_rerun_completes(qd_server, shared_bitmaps, tmp_path):
    out = tmp_path / "data"
    part = part_path(out, "cat")
    release = qd_server.hold("cat", after=1_500_000)  # the transfer stays open mid-file until the kill
    proc = subprocess.Popen([sys.executable, "-c", "from qd.data.cli import main; main()", "fetch", "cat",
                             "--source", qd_server.base_url, "--out", str(out), "--timeout", "600"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: part.exists() and part.stat().st_size > 0, 30), "download never started"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        release.set()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "cat.npy").exists()  # nothing half-written where the finished file belongs
    kept = part.stat().st_size
    assert 0 < kept < (shared_bitmaps / "cat.npy").stat().st_size

    qd_server.reset()
    rerun = invoke_cli(main, "fetch", "cat", "--source", qd_server.base_url, "--out", out)
    assert rerun.exit_code == 0, rerun.output
    assert (out / "cat.npy").read_bytes() == (shared_bitmaps / "cat.npy").read_bytes()
    assert any(hit.range and hit.range.startswith(f"bytes={kept}-") for hit in qd_server.hits_for("cat"))
    assert sorted(p.name for p in out.iterdir()) == ["cat.npy"]


def test_scratch_file_of_a_killed_capped_fetch_is_cleaned_up(shared_bitmaps, tmp_path):
    tmp_file_of(tmp_path, "cat").write_bytes(b"\x93NUMPY half a header")
    fetch_category(FolderSource(shared_bitmaps), "cat", tmp_path, FetchOptions(max_rows=5))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat.npy"]
    assert np.load(tmp_path / "cat.npy").shape == (5, 784)


def full_disk_after(monkeypatch, victim: str, budget: int) -> None:
    """Make writes to the file named `victim` (in any folder) fail with ENOSPC after `budget` bytes."""
    real_open = open

    class FullDisk:
        def __init__(self, f):
            self._f, self._left = f, budget

        def write(self, data):
            if len(data) > self._left:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self._left -= len(data)
            return self._f.write(data)

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self._f.__exit__(*exc)

    def fake_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        if any(flag in mode for flag in "wa+") and os.path.basename(path) == victim:
            return FullDisk(f)
        return f

    monkeypatch.setattr(fetch_module, "open", fake_open, raising=False)


def test_disk_full_is_one_clear_line_and_earlier_files_stay_intact(qd_server, shared_bitmaps, tmp_path,
                                                                   monkeypatch):
    # An earlier, capped dog.npy must survive a failed attempt to replace it.
    fetch_category(UrlSource(qd_server.base_url), "dog", tmp_path, FetchOptions(max_rows=10))
    old_dog = (tmp_path / "dog.npy").read_bytes()
    full_disk_after(monkeypatch, part_path(tmp_path, "dog").name, budget=300_000)

    result = invoke_cli(main, "fetch", "apple", "dog", "cat", "--source", qd_server.base_url, "--out", tmp_path)

    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("error: dog: cannot write ") and "No space left on device" in errors[0]
    assert ".dog.npy.part" in errors[0] and "Traceback" not in result.output
    assert "not tried: cat" in result.stderr  # a full disk stops the run: cat would fail the same way
    assert (tmp_path / "apple.npy").read_bytes() == (shared_bitmaps / "apple.npy").read_bytes()
    assert (tmp_path / "dog.npy").read_bytes() == old_dog
    assert not (tmp_path / "cat.npy").exists()

    monkeypatch.undo()  # space freed: the rerun resumes dog and fetches cat
    rerun = invoke_cli(main, "fetch", "apple", "dog", "cat", "--source", qd_server.base_url, "--out", tmp_path)
    assert rerun.exit_code == 0, rerun.output
    for name in ("apple", "dog", "cat"):
        assert (tmp_path / f"{name}.npy").read_bytes() == (shared_bitmaps / f"{name}.npy").read_bytes()


def test_disk_full_while_writing_a_capped_file(shared_bitmaps, tmp_path, monkeypatch):
    full_disk_after(monkeypatch, tmp_file_of(tmp_path, "star").name, budget=1000)
    result = invoke_cli(main, "fetch", "star", "-n", "100", "--source", shared_bitmaps, "--out", tmp_path)
    assert result.exit_code == 1 and "No space left on device" in result.stderr
    assert ".star.npy.tmp" in result.stderr
    # The downloaded rows wait in the part file (with the version they belong to); the scratch file is gone.
    assert sorted(p.name for p in tmp_path.iterdir()) == [".star.npy.part", ".star.npy.part.json"]
    monkeypatch.undo()
    rerun = invoke_cli(main, "fetch", "star", "-n", "100", "--source", shared_bitmaps, "--out", tmp_path)
    assert rerun.exit_code == 0, rerun.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["star.npy"]
    np.testing.assert_array_equal(np.load(tmp_path / "star.npy"), np.load(shared_bitmaps / "star.npy")[:100])


def test_too_little_free_space_is_refused_before_writing(qd_server, shared_bitmaps, tmp_path, monkeypatch):
    from collections import namedtuple

    fetch_category(UrlSource(qd_server.base_url), "apple", tmp_path, FetchOptions(retries=0))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(fetch_module.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 2_000_000, 2_000_000))
    result = invoke_cli(main, "fetch", "cat", "dog", "--source", qd_server.base_url, "--out", tmp_path)
    assert result.exit_code == 1
    assert "error: cat: needs 3.1 MB but " in result.stderr and "only 2.0 MB free" in result.stderr
    assert "not tried: dog" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["apple.npy"]
    assert not [hit for hit in qd_server.hits_for("cat") if hit.sent > 4096]  # nothing but the probe
    # A capped fetch needs far less room and goes ahead.
    capped = invoke_cli(main, "fetch", "cat", "-n", "100", "--source", qd_server.base_url, "--out", tmp_path)
    assert capped.exit_code == 0, capped.output


def test_ctrl_c_during_a_download_says_so_and_keeps_the_part(qd_server, tmp_path):
    release = qd_server.hold("cat", after=2_200_000)  # open after two 1 MiB chunks are written, until the signal
    # --timeout: the client never gives up on the held response (and resumes past the hold) while the test runs.
    # preexec_fn: Ctrl-C as a terminal delivers it. A suite started in the background (`cmd &` in a script, some
    # CI runners) runs with SIGINT ignored, which every child inherits: the fetch would then never see the signal.
    process = subprocess.Popen([sys.executable, "-m", "qd.data.cli", "fetch", "cat", "--source", qd_server.base_url,
                                "--out", str(tmp_path), "--timeout", "600"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=REPO,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    part = tmp_path / ".cat.npy.part"
    try:
        assert wait_for(lambda: part.exists() and part.stat().st_size >= 2 << 20, 120), "download never started"
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
        release.set()
    assert process.returncode == 130, (out, err, qd_server.hits_for("cat"))
    assert err.splitlines()[-1] == ("error: interrupted (Ctrl-C); unfinished downloads are kept; "
                                    "run the same command again to resume")
    assert part.stat().st_size >= 2 << 20 and not (tmp_path / "cat.npy").exists()


def test_a_fifo_in_a_fetch_source_folder_is_one_line(tmp_path, shared_bitmaps):
    source = tmp_path / "source"
    source.mkdir()
    (source / "apple.npy").write_bytes((shared_bitmaps / "apple.npy").read_bytes())
    os.mkfifo(source / "cat.npy")
    result = invoke_cli(main, "fetch", "apple", "cat", "--source", source, "--out", tmp_path / "out")
    assert result.exit_code == 1 and (tmp_path / "out" / "apple.npy").is_file()
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        f"error: cat: source file {source / 'cat.npy'}: is a FIFO (named pipe), not a regular file; refused"]


def test_a_dripping_server_is_given_up_on_and_the_rerun_resumes(qd_server, shared_bitmaps, tmp_path):
    # 1 byte per 0.1 s after each response's first 1 MB, against a floor of 64 KiB per 0.5 s (--timeout):
    # every read still brings a byte well within --timeout, so only a pace rule ends the transfer.
    # Before that rule the drip (30 s a response, 3 responses) outlived the subprocess guard below.
    out = tmp_path / "data"
    part = part_path(out, "cat")
    url = qd_server.url("cat")
    qd_server.drip("cat", after=1_000_000, step=1, pause=0.1)
    first = subprocess.run([sys.executable, "-m", "qd.data.cli", "fetch", "cat", "--source", qd_server.base_url,
                            "--out", str(out), "--timeout", "0.5", "--retries", "2"],
                           capture_output=True, text=True, timeout=60, cwd=REPO)
    assert first.returncode == 1, (first.stdout, first.stderr)
    errors = [line for line in first.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, first.stderr
    assert errors[0].startswith(f"error: cat: {url}: timed out: the server sent "), errors[0]
    assert "bytes in 0.5 s, less than 64 KiB per 0.5 s (gave up after 2 retries; " in errors[0]
    assert errors[0].endswith(" bytes kept, rerun to resume)") and "Traceback" not in first.stdout
    assert not (out / "cat.npy").exists()
    kept = part.stat().st_size
    assert 1_000_000 <= kept < (shared_bitmaps / "cat.npy").stat().st_size  # the bytes that did arrive are kept
    assert any(hit.range and hit.range.startswith("bytes=1") for hit in qd_server.hits_for("cat"))  # retries resumed

    qd_server.reset()  # the drip is gone: the same command resumes and completes
    rerun = invoke_cli(main, "fetch", "cat", "--source", qd_server.base_url, "--out", out)
    assert rerun.exit_code == 0, rerun.output
    assert "resumed" in rerun.output
    assert (out / "cat.npy").read_bytes() == (shared_bitmaps / "cat.npy").read_bytes()
    assert any(hit.range and hit.range.startswith(f"bytes={kept}-") for hit in qd_server.hits_for("cat"))
    assert sorted(p.name for p in out.iterdir()) == ["cat.npy"]


def test_dripped_status_line_and_headers_are_given_up_on(qd_server, shared_bitmaps, tmp_path):
    # The probe's response dripped from its first byte: the status line never completes within --timeout.
    qd_server.drip("dog", headers=True, step=1, pause=0.1, seconds=10)  # ends by itself, even unfixed
    result = invoke_cli(main, "fetch", "dog", "--source", qd_server.base_url, "--out", tmp_path / "out",
                        "--timeout", "0.5", "--retries", "0")
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, result.stderr
    assert re.fullmatch(re.escape(f"error: dog: {qd_server.url('dog')}: timed out: the server sent ") +
                        r"\d+ bytes? in 0\.5 s, less than 64 KiB per 0\.5 s", errors[0]), errors[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing written


def test_a_dripped_tls_handshake_is_given_up_on(tmp_path):
    # The server answers the ClientHello with a TLS record header promising 16 KiB, then drips one byte per
    # 0.05 s: every read brings a byte well within --timeout, so only a bound on the whole handshake ends it
    # (Python's ssl module gives the handshake one socket timeout in all; with a timeout per read it would last
    # 16,384 x 0.05 s, beyond the subprocess guard below).
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    stop = threading.Event()

    def drip(conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)  # the ClientHello
                conn.sendall(b"\x16\x03\x03\x40\x00")
                while not stop.is_set():
                    conn.sendall(b"\x00")
                    time.sleep(0.05)
            except OSError:  # the client gave up and closed
                pass

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=drip, args=(conn,), daemon=True).start()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        result = subprocess.run([sys.executable, "-m", "qd.data.cli", "fetch", "cat", "--source",
                                 f"https://127.0.0.1:{port}/", "--out", str(tmp_path / "out"), "--timeout", "0.5",
                                 "--retries", "1"], capture_output=True, text=True, timeout=60, cwd=REPO)
    finally:
        stop.set()
        server.join()
        listener.close()
    assert result.returncode == 1, (result.stdout, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "Traceback" not in result.stdout + result.stderr, result.stderr
    assert errors[0].startswith(f"error: cat: https://127.0.0.1:{port}/"), errors[0]
    assert errors[0].endswith(": timed out (gave up after 1 retry)"), errors[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
