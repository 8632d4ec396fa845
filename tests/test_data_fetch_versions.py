"""A download resumed after an interruption is of one version of the file: the kept bytes are used
only if the server still names the version they were fetched from (ETag or Last-Modified, sent as
If-Range), whatever the server does with Range and If-Range and whenever the file changes (between
runs, or between the probe and the resumed request). The result is the server's current file byte
for byte, or one error line; never a splice of two versions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qd.command import QDError
from qd.data.fetch import FetchOptions, fetch_category, part_path, version_path
from qd.data.sources import UrlSource

ROWS = 3000



@pytest.fixture(scope="module")
def versions(shared_bitmaps, tmp_path_factory) -> dict[str, Path]:
    """Three versions of one category's file: the first, the same size reshuffled (same header), shorter."""
    folder = tmp_path_factory.mktemp("versions")
    rows = np.asarray(np.load(shared_bitmaps / "cat.npy", mmap_mode="r")[:ROWS])
    np.save(folder / "first.npy", rows)
    np.save(folder / "same-size.npy", rows[np.random.default_rng(0).permutation(ROWS)])
    np.save(folder / "shorter.npy", rows[: ROWS - 700])
    return {path.stem: path for path in folder.iterdir()}



@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(validators=st.sampled_from([("etag", "last_modified"), ("etag",), ("last_modified",), ()]),
       honour_if_range=st.booleans(), ignore_range=st.booleans(),
       change=st.sampled_from(["none", "same-size", "shorter"]), when=st.sampled_from(["between runs", "mid-resume"]),
       drop_at=st.integers(4097, 128 + ROWS * 784 - 1))  # past the probe's first 4096 bytes
def test_a_resumed_download_is_the_servers_file_byte_for_byte_or_one_error(
        qd_server, versions, tmp_path_factory, validators, honour_if_range, ignore_range, change, when, drop_at):
    qd_server.reset()
    qd_server.add("cat", versions["first"])
    qd_server.validators(*validators)
    qd_server.honour_if_range(honour_if_range)
    out = tmp_path_factory.mktemp("resume")
    source = UrlSource(qd_server.base_url, timeout=10)
    options = FetchOptions(retries=0, retry_wait=0)
    qd_server.drop_after("cat", drop_at)
    with pytest.raises(QDError):
        fetch_category(source, "cat", out, options)  # the first run is cut off
    qd_server.ignore_range(ignore_range)  # the rerun may meet a server that ignores Range
    if change != "none" and when == "between runs":
        qd_server.add("cat", versions[change])
    elif change != "none":
        qd_server.change_after("cat", versions[change], requests=1)  # after the rerun's probe
    try:
        result = fetch_category(source, "cat", out, options)
    except QDError as exc:  # allowed only where the change could not be told from the first response
        assert "\n" not in str(exc) and not (out / "cat.npy").exists()
        assert change != "none" and (when == "mid-resume" or not validators), exc
        return
    served = qd_server.bytes_of("cat")
    assert (out / "cat.npy").read_bytes() == served  # exactly the server's current file
    assert not part_path(out, "cat").exists() and not version_path(part_path(out, "cat")).exists()
    if change != "none" or not validators:
        assert result.action == "downloaded" and result.resumed_from == 0  # nothing kept could be trusted



def test_a_file_replaced_by_one_of_the_same_size_is_fetched_whole_not_spliced(qd_server, versions, tmp_path):
    """Killed after 1,337 rows; the mirror then serves a new file of the same size: it is fetched whole."""
    qd_server.add("cat", versions["first"])
    qd_server.drop_after("cat", 128 + 1337 * 784)
    source = UrlSource(qd_server.base_url, timeout=10)
    with pytest.raises(QDError):
        fetch_category(source, "cat", tmp_path, FetchOptions(retries=0))
    assert part_path(tmp_path, "cat").stat().st_size == 128 + 1337 * 784
    qd_server.add("cat", versions["same-size"])
    result = fetch_category(source, "cat", tmp_path, FetchOptions(retries=0))
    assert (tmp_path / "cat.npy").read_bytes() == versions["same-size"].read_bytes()
    assert result.note == "restarted: the source file changed since the 1.0 MB were kept"
    resumes = [hit for hit in qd_server.hits_for("cat") if hit.range and not hit.range.startswith("bytes=0-")]
    assert resumes == []  # the kept bytes were never extended



def test_an_unchanged_file_is_still_resumed_with_if_range(qd_server, versions, tmp_path):
    qd_server.add("cat", versions["first"])
    qd_server.drop_after("cat", 1_000_000)
    source = UrlSource(qd_server.base_url, timeout=10)
    with pytest.raises(QDError):
        fetch_category(source, "cat", tmp_path, FetchOptions(retries=0))
    result = fetch_category(source, "cat", tmp_path, FetchOptions(retries=0))
    assert result.action == "resumed" and result.resumed_from == 1_000_000
    assert (tmp_path / "cat.npy").read_bytes() == versions["first"].read_bytes()
