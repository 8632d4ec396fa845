"""qd-data fetch / list against the loopback bitmap server and a local folder."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest
from fixtures_data import invoke_cli
from qd.command import QDError
from qd.data.bitmaps import read_bitmap_header
from qd.data.cli import main
from qd.data.fetch import FetchOptions, fetch_category, part_path
from qd.data.sources import FolderSource, UrlSource, google_categories, resolve_source
from terminal import ANSI, run_on_terminal

FAST = FetchOptions(retries=0, retry_wait=0.0)


def qd_data(*args, env: dict | None = None):
    return invoke_cli(main, *args, env=env)


def entries(folder) -> list[str]:
    """Everything in a folder, hidden files included."""
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_fetch_three_categories_byte_identical(qd_server, shared_bitmaps, tmp_path):
    out = tmp_path / "data"
    result = qd_data("fetch", "cat", "apple", "house_plant", "--source", qd_server.base_url, "--out", out)
    assert result.exit_code == 0, result.output
    for name in ("cat", "apple", "house_plant"):
        assert (out / f"{name}.npy").read_bytes() == (shared_bitmaps / f"{name}.npy").read_bytes()
    assert entries(out) == ["apple.npy", "cat.npy", "house_plant.npy"]  # no .part/.tmp left behind
    assert "3 of 3 categories" in result.output


def test_names_with_spaces_are_url_encoded(qd_server, shared_bitmaps, tmp_path):
    qd_server.add("The Eiffel Tower", shared_bitmaps / "star.npy")
    result = fetch_category(UrlSource(qd_server.base_url), "The Eiffel Tower", tmp_path, FAST)
    assert result.path.name == "The Eiffel Tower.npy"
    assert result.path.read_bytes() == (shared_bitmaps / "star.npy").read_bytes()
    assert UrlSource(qd_server.base_url).location("The Eiffel Tower").endswith("/The%20Eiffel%20Tower.npy")
    assert qd_server.hits_for("The Eiffel Tower")


def test_dropped_connection_then_second_fetch_resumes(qd_server, shared_bitmaps, tmp_path):
    cut = 1_000_003
    qd_server.drop_after("cat", cut)
    first = qd_data("fetch", "cat", "--source", qd_server.base_url, "--out", tmp_path, "--retries", "0")
    assert first.exit_code == 1
    assert "cat" in first.stderr and "connection closed after" in first.stderr
    assert "Traceback" not in first.output
    assert not (tmp_path / "cat.npy").exists()  # nothing half-written where the file belongs
    assert part_path(tmp_path, "cat").stat().st_size == cut

    second = qd_data("fetch", "cat", "--source", qd_server.base_url, "--out", tmp_path)
    assert second.exit_code == 0, second.output
    assert "resumed" in second.output
    assert (tmp_path / "cat.npy").read_bytes() == (shared_bitmaps / "cat.npy").read_bytes()
    resumes = [hit for hit in qd_server.hits_for("cat") if hit.range and hit.range.startswith(f"bytes={cut}-")]
    assert resumes and resumes[0].status == 206
    assert entries(tmp_path) == ["cat.npy"]


def test_drop_is_retried_and_resumed_within_one_run(qd_server, shared_bitmaps, tmp_path):
    qd_server.drop_after("dog", 700_000, times=2)
    result = fetch_category(UrlSource(qd_server.base_url), "dog", tmp_path, FetchOptions(retries=2, retry_wait=0))
    assert result.path.read_bytes() == (shared_bitmaps / "dog.npy").read_bytes()
    assert any(hit.range == "bytes=700000-3136127" for hit in qd_server.hits_for("dog"))


def test_connection_reset_mid_file_is_retried(qd_server, shared_bitmaps, tmp_path):
    qd_server.drop_after("apple", 1_200_000, reset=True)
    result = fetch_category(UrlSource(qd_server.base_url), "apple", tmp_path, FetchOptions(retries=1, retry_wait=0))
    assert result.path.read_bytes() == (shared_bitmaps / "apple.npy").read_bytes()
    assert len([hit for hit in qd_server.hits_for("apple") if hit.status in (200, 206)]) >= 3  # probe + 2 tries
    assert entries(tmp_path) == ["apple.npy"]


def test_server_ignoring_range_restarts_the_file(qd_server, shared_bitmaps, tmp_path):
    qd_server.drop_after("bird", 500_000)
    with pytest.raises(QDError):
        fetch_category(UrlSource(qd_server.base_url), "bird", tmp_path, FAST)
    assert part_path(tmp_path, "bird").stat().st_size == 500_000
    qd_server.ignore_range()
    result = fetch_category(UrlSource(qd_server.base_url), "bird", tmp_path, FAST)
    assert result.path.read_bytes() == (shared_bitmaps / "bird.npy").read_bytes()
    assert qd_server.hits_for("bird")[-1].status == 200
    assert result.action == "downloaded" and result.resumed_from == 0  # not reported as a resume


def test_html_error_page_is_rejected_and_nothing_is_left(qd_server, tmp_path):
    qd_server.serve_html("cat")
    out = tmp_path / "data"
    result = qd_data("fetch", "cat", "--source", qd_server.base_url, "--out", out)
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("error: cat: ") and "not a bitmap .npy file" in errors[0]
    assert "text/html" in errors[0]
    assert entries(out) == []


def test_html_page_does_not_poison_an_interrupted_download(qd_server, shared_bitmaps, tmp_path):
    qd_server.drop_after("cat", 300_000)
    with pytest.raises(QDError):
        fetch_category(UrlSource(qd_server.base_url), "cat", tmp_path, FAST)
    qd_server.serve_html("cat")
    with pytest.raises(QDError, match="not a bitmap .npy file"):
        fetch_category(UrlSource(qd_server.base_url), "cat", tmp_path, FAST)
    assert not (tmp_path / "cat.npy").exists()
    qd_server.reset()
    fetch_category(UrlSource(qd_server.base_url), "cat", tmp_path, FAST)
    assert (tmp_path / "cat.npy").read_bytes() == (shared_bitmaps / "cat.npy").read_bytes()


def test_stale_part_of_another_file_is_discarded(qd_server, shared_bitmaps, tmp_path):
    part_path(tmp_path, "cat").write_bytes(b"<html>old junk</html>" * 100)
    fetch_category(UrlSource(qd_server.base_url), "cat", tmp_path, FAST)
    assert (tmp_path / "cat.npy").read_bytes() == (shared_bitmaps / "cat.npy").read_bytes()
    assert all(hit.range is None or hit.range.startswith("bytes=0-") for hit in qd_server.hits_for("cat"))


def test_file_whose_size_contradicts_its_header_is_rejected(qd_server, shared_bitmaps, tmp_path):
    padded = tmp_path / "src" / "padded.npy"
    padded.parent.mkdir()
    padded.write_bytes((shared_bitmaps / "cat.npy").read_bytes()[:200_000])  # truncated at the source
    qd_server.add("padded", padded)
    out = tmp_path / "out"
    with pytest.raises(QDError, match=r"^padded: .*header promises"):
        fetch_category(UrlSource(qd_server.base_url), "padded", out, FAST)
    assert entries(out) == []


def test_max_per_category_downloads_only_those_rows(qd_server, shared_bitmaps, tmp_path):
    result = qd_data("fetch", "cat", "dog", "--source", qd_server.base_url, "--out", tmp_path,
                     "--max-per-category", "50")
    assert result.exit_code == 0, result.output
    for name in ("cat", "dog"):
        got = np.load(tmp_path / f"{name}.npy")
        full = np.load(shared_bitmaps / f"{name}.npy", mmap_mode="r")
        assert got.shape == (50, 784) and got.dtype == np.uint8
        np.testing.assert_array_equal(got, full[:50])
        sent = sum(hit.sent for hit in qd_server.hits_for(name))
        assert sent < 128 + 50 * 784 + 8192  # header probe + 50 rows, not the 3 MB file
    assert entries(tmp_path) == ["cat.npy", "dog.npy"]


def test_max_per_category_with_a_server_that_ignores_range(qd_server, shared_bitmaps, tmp_path):
    qd_server.ignore_range()
    result = fetch_category(UrlSource(qd_server.base_url), "cat", tmp_path, FetchOptions(max_rows=7, retries=0))
    assert result.rows == 7
    np.testing.assert_array_equal(np.load(result.path), np.load(shared_bitmaps / "cat.npy")[:7])


def test_folder_source_and_environment_variable(shared_bitmaps, tmp_path):
    out = tmp_path / "data"
    result = qd_data("fetch", "circle", "--out", out, env={"QD_DATA_SOURCE": str(shared_bitmaps)})
    assert result.exit_code == 0, result.output
    assert (out / "circle.npy").read_bytes() == (shared_bitmaps / "circle.npy").read_bytes()
    capped = qd_data("fetch", "star", "-n", "3", "--source", shared_bitmaps, "--out", out)
    assert capped.exit_code == 0, capped.output
    np.testing.assert_array_equal(np.load(out / "star.npy"), np.load(shared_bitmaps / "star.npy")[:3])
    assert isinstance(resolve_source(str(shared_bitmaps)), FolderSource)


def test_all_takes_every_file_of_a_folder(shared_bitmaps, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("cat", "The Eiffel Tower"):
        (src / f"{name}.npy").write_bytes((shared_bitmaps / "cat.npy").read_bytes()[: 128 + 784 * 5])
    (src / "._cat.npy").write_bytes(b"\0\5\26\7 macOS resource fork")
    # The truncated copies above have headers promising 4000 rows: the source is refused.
    result = qd_data("fetch", "--all", "--source", src, "--out", tmp_path / "out")
    assert result.exit_code == 1 and result.stderr.count("error:") == 2
    np.save(src / "cat.npy", np.zeros((4, 784), np.uint8))
    np.save(src / "The Eiffel Tower.npy", np.ones((2, 784), np.uint8))
    result = qd_data("fetch", "--all", "--source", src, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert entries(tmp_path / "out") == ["The Eiffel Tower.npy", "cat.npy"]


def test_all_with_a_url_uses_googles_345_categories(qd_server, tmp_path):
    names = google_categories()
    assert len(names) == len(set(names)) == 345
    assert {"The Eiffel Tower", "house plant", "cat", "zigzag"} <= set(names)
    assert UrlSource(qd_server.base_url).list_categories() == names
    result = qd_data("fetch", "--all", "-n", "2", "--source", qd_server.base_url, "--out", tmp_path,
                     "--retries", "0")
    # The test server holds only the shared categories, so most are 404: reported, not fatal.
    assert result.exit_code == 1
    assert "error: zigzag: " in result.stderr and "HTTP 404" in result.stderr
    assert np.load(tmp_path / "cat.npy").shape == (2, 784)
    requested = {hit.category for hit in qd_server.hits}
    assert requested == set(names)


def test_present_files_are_skipped(qd_server, tmp_path):
    fetch_category(UrlSource(qd_server.base_url), "cat", tmp_path, FAST)
    before = (tmp_path / "cat.npy").stat()
    qd_server.reset()
    result = qd_data("fetch", "cat", "--source", qd_server.base_url, "--out", tmp_path)
    assert result.exit_code == 0 and "already present" in result.output
    after = (tmp_path / "cat.npy").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert sum(hit.sent for hit in qd_server.hits_for("cat")) <= 4096  # only the header probe


def test_broken_present_file_is_replaced(qd_server, shared_bitmaps, tmp_path):
    (tmp_path / "cat.npy").write_text("<html>oops</html>")
    fetch_category(UrlSource(qd_server.base_url), "cat", tmp_path, FAST)
    assert (tmp_path / "cat.npy").read_bytes() == (shared_bitmaps / "cat.npy").read_bytes()


def test_failing_category_does_not_stop_the_others(qd_server, shared_bitmaps, tmp_path):
    result = qd_data("fetch", "unicorn", "cat", "--source", qd_server.base_url, "--out", tmp_path)
    assert result.exit_code == 1
    assert "error: unicorn: " in result.stderr and "HTTP 404" in result.stderr
    assert (tmp_path / "cat.npy").read_bytes() == (shared_bitmaps / "cat.npy").read_bytes()


def test_transient_errors_are_retried(qd_server, shared_bitmaps, tmp_path):
    qd_server.fail_with("cat", 503, times=2)
    fetch_category(UrlSource(qd_server.base_url), "cat", tmp_path, FetchOptions(retries=2, retry_wait=0))
    assert (tmp_path / "cat.npy").read_bytes() == (shared_bitmaps / "cat.npy").read_bytes()
    qd_server.fail_with("dog", 503, times=5)
    with pytest.raises(QDError, match=r"^dog: .*HTTP 503.*gave up after 1 retry"):
        fetch_category(UrlSource(qd_server.base_url), "dog", tmp_path, FetchOptions(retries=1, retry_wait=0))


def test_timeout_is_one_clear_line(qd_server, tmp_path):
    qd_server.hold("cat", after=0)  # the body never comes (until the fixture resets the server)
    result = qd_data("fetch", "cat", "--source", qd_server.base_url, "--out", tmp_path, "--timeout", "0.3",
                     "--retries", "0")
    assert result.exit_code == 1
    assert result.stderr.strip().startswith("error: cat: ") and "timed out" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unknown_google_category_suggests_the_right_spelling(tmp_path):
    result = qd_data("fetch", "house_plant", "--out", tmp_path, env={"QD_DATA_SOURCE": ""})
    assert result.exit_code == 1
    assert "house_plant: not a Quick, Draw! category (did you mean 'house plant'?)" in result.stderr


@pytest.mark.parametrize("args, message", [
    ((), "name at least one category"),
    (("cat", "--all"), "not both"),
    (("../etc/passwd",), "not a category name"),
    (("cat", "--source", "/no/such/folder"), "neither an http(s) URL nor an existing folder"),
])
def test_bad_invocations_are_one_line(args, message, shared_bitmaps, tmp_path):
    source = () if "--source" in args else ("--source", shared_bitmaps)
    result = qd_data("fetch", *args, *source, "--out", tmp_path)
    assert result.exit_code == 1
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_list_shows_counts_sizes_and_total(shared_bitmaps, tmp_path):
    qd_data("fetch", "cat", "horse", "--source", shared_bitmaps, "--out", tmp_path)
    result = qd_data("list", tmp_path)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any("cat" in line and "4,000" in line and "3.1 MB" in line for line in lines)
    assert any("horse" in line and "1,000" in line for line in lines)
    assert any("2 categories" in line and "5,000" in line for line in lines)


def test_list_flags_invalid_files_and_partial_downloads(shared_bitmaps, tmp_path):
    qd_data("fetch", "cat", "--source", shared_bitmaps, "--out", tmp_path)
    (tmp_path / "dog.npy").write_text("<html>not a bitmap</html>")
    part_path(tmp_path, "bird").write_bytes(b"\x93NUMPY")
    result = qd_data("list", tmp_path)
    assert result.exit_code == 1
    assert "invalid" in result.output and "error: " in result.stderr and "dog.npy" in result.stderr
    assert "unfinished download" in result.stderr
    assert read_bitmap_header(tmp_path / "cat.npy").rows == 4000


def test_list_of_a_missing_folder_is_one_line(tmp_path):
    result = qd_data("list", tmp_path / "nope")
    assert result.exit_code == 1 and "does not exist" in result.stderr


def test_offline_rerun_keeps_a_present_file(qd_server, tmp_path):
    fetch_category(UrlSource(qd_server.base_url), "cat", tmp_path, FAST)
    qd_server.fail_with("cat", 503, times=10)
    result = qd_data("fetch", "cat", "--source", qd_server.base_url, "--out", tmp_path, "--retries", "0")
    assert result.exit_code == 0 and "not re-checked" in result.output
    qd_server.fail_with("dog", 503, times=10)  # nothing present: the failure is reported
    missing = qd_data("fetch", "dog", "--source", qd_server.base_url, "--out", tmp_path, "--retries", "0")
    assert missing.exit_code == 1 and "HTTP 503" in missing.stderr


def test_a_second_fetch_into_the_same_folder_waits_for_the_first(qd_server, shared_bitmaps, tmp_path):
    import fcntl
    import os
    import threading

    fd = os.open(tmp_path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # stands for another qd-data fetch at work in this folder
    done = threading.Event()
    worker = threading.Thread(target=lambda: (fetch_category(UrlSource(qd_server.base_url), "cat", tmp_path, FAST),
                                              done.set()))
    worker.start()
    try:
        assert not done.wait(0.5)
        assert entries(tmp_path) == [] and not qd_server.hits_for("cat")
    finally:
        os.close(fd)
    worker.join(10)
    assert done.is_set()
    assert (tmp_path / "cat.npy").read_bytes() == (shared_bitmaps / "cat.npy").read_bytes()


def test_unreachable_source_stops_after_the_first_category(tmp_path):
    import socket

    with socket.socket() as probe:  # a port that was just free: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = qd_data("fetch", "cat", "dog", "apple", "--source", f"http://127.0.0.1:{port}", "--out", tmp_path,
                     "--retries", "0")
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: cat: ") and "Connection refused" in errors[0]
    assert "not tried: dog, apple" in result.stderr
    assert entries(tmp_path) == []


def test_fetching_a_folder_into_itself_touches_nothing(shared_bitmaps, tmp_path):
    src = tmp_path / "data"
    qd_data("fetch", "cat", "horse", "--source", shared_bitmaps, "--out", src)
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    for extra in ((), ("-n", "10")):
        result = qd_data("fetch", "--all", "--source", src, "--out", src, *extra)
        assert result.exit_code == 0 and result.output.count("already present") == 2, result.output
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before


def test_list_of_an_empty_folder_says_how_to_fill_it(tmp_path):
    result = qd_data("list", tmp_path)
    assert result.exit_code == 0 and "qd-data fetch" in result.output


def test_fetch_draws_byte_bars_on_a_terminal_only_and_prints_the_same_lines(shared_bitmaps, tmp_path):
    def command(out):
        return [sys.executable, "-m", "qd.data.cli", "fetch", "cat", "star", "--source", shared_bitmaps, "--data", out]
    piped, piped_err, code = run_on_terminal(command(tmp_path / "piped"))
    assert code == 0, piped_err
    terminal, _, code = run_on_terminal(command(tmp_path / "terminal"), stdout_tty=True)
    assert code == 0, terminal
    text = ANSI.sub("", terminal)
    assert re.search(r"(cat|star) .*\d+(\.\d+)?/\d+(\.\d+)? [kMG]?B .*eta", text)  # sizes, not counts
    assert "\x1b" not in piped and "eta" not in piped
    for line in piped.splitlines():  # every line a pipe gets, the terminal shows too
        assert line.replace("piped", "terminal").strip() in text
    for name in ("cat", "star"):
        assert (tmp_path / "terminal" / f"{name}.npy").read_bytes() == (shared_bitmaps / f"{name}.npy").read_bytes()
