"""qd-data fetch --negatives N: a seeded pick of categories the data lacks, capped, from a mirror URL or folder."""

from __future__ import annotations

import numpy as np
from fixtures_data import invoke_cli
from qd.data.bitmaps import list_categories, read_bitmap_header
from qd.data.cli import main
from qd.data.fetch import negative_candidates
from qd.data.sources import FolderSource, UrlSource, google_categories

DATA = ["cat", "dog", "apple", "fish"]


def qd_data(*args):
    return invoke_cli(main, *args)


def make_data(shared_bitmaps, folder):
    folder.mkdir()
    for name in DATA:
        np.save(folder / f"{name}.npy", np.load(shared_bitmaps / f"{name}.npy", mmap_mode="r")[:10])
    return folder


def test_the_pick_is_seeded_and_leaves_out_the_datas_categories(shared_bitmaps, tmp_path):
    data = make_data(shared_bitmaps, tmp_path / "data")
    source = FolderSource(shared_bitmaps)
    picked = negative_candidates(source, data, seed=3)
    assert sorted(picked) == sorted(set(list_categories(shared_bitmaps)) - set(DATA))
    assert negative_candidates(source, data, seed=3) == picked
    assert negative_candidates(source, data, seed=4) != picked
    assert set(negative_candidates(UrlSource("http://127.0.0.1:9"), data, seed=0)) == set(google_categories()) - set(DATA)
    # a category of the data under another spelling (case, '_' for a space) is the same category
    np.save(data / "House_Plant.npy", np.load(shared_bitmaps / "house_plant.npy", mmap_mode="r")[:10])
    assert "house plant" in google_categories()
    assert "house plant" not in negative_candidates(UrlSource("http://127.0.0.1:9"), data, seed=0)
    assert "house_plant" not in negative_candidates(source, data, seed=0)


def test_fetch_negatives_from_the_loopback_mirror(qd_server, shared_bitmaps, tmp_path):
    """A URL offers Google's list; the mirror holds 27 of them: the names it lacks are passed over."""
    data = make_data(shared_bitmaps, tmp_path / "data")
    served = set(list_categories(shared_bitmaps))
    runs = []
    for out in ("a", "b"):
        result = qd_data("fetch", "--negatives", "3", "--seed", "7", "-n", "25", "--source", qd_server.base_url,
                         "--data", data, "--negatives-dir", tmp_path / out)
        assert result.exit_code == 0, result.output
        runs.append(list_categories(tmp_path / out))
    first = runs[0]
    assert first == runs[1] and len(first) == 3  # the same seed picks the same categories
    assert not set(first) & set(DATA) and set(first) <= served & set(google_categories())
    expected = [name for name in negative_candidates(UrlSource(qd_server.base_url), data, 7) if name in served][:3]
    assert first == sorted(expected)  # the first three of the seeded order that the mirror has
    for name in first:
        assert read_bitmap_header(tmp_path / "a" / f"{name}.npy").rows == 25
    assert "passed over" in result.stderr
    assert list_categories(data) == sorted(DATA)  # the data folder is left alone

    again = qd_data("fetch", "--negatives", "3", "--seed", "8", "-n", "25", "--source", qd_server.base_url,
                    "--data", data, "--negatives-dir", tmp_path / "c")
    assert again.exit_code == 0 and list_categories(tmp_path / "c") != first


def test_fetch_negatives_from_a_folder_caps_by_default_and_says_when_too_few(shared_bitmaps, tmp_path):
    data = make_data(shared_bitmaps, tmp_path / "data")
    result = qd_data("fetch", "--negatives", "40", "--source", shared_bitmaps, "--data", data,
                     "--negatives-dir", tmp_path / "neg")
    assert result.exit_code == 0, result.output
    fetched = list_categories(tmp_path / "neg")
    assert fetched == sorted(set(list_categories(shared_bitmaps)) - set(DATA))
    assert max(read_bitmap_header(tmp_path / "neg" / f"{n}.npy").rows for n in fetched) <= 5000
    assert f"has only {len(fetched)} categories that {data} lacks" in result.stderr


def test_fetch_negatives_refusals(shared_bitmaps, tmp_path):
    data = make_data(shared_bitmaps, tmp_path / "data")
    for args, message in (
        (("cat",), "--negatives N picks the categories itself"),
        (("--all",), "--negatives N picks the categories itself"),
        (("--negatives-dir", data), "--negatives-dir must be another folder than the data folder"),
    ):
        result = qd_data("fetch", "--negatives", "2", "--source", shared_bitmaps, "--data", data, *args)
        assert result.exit_code != 0 and message in result.stderr, result.output
    result = qd_data("fetch", "cat", "--source", shared_bitmaps, "--data", tmp_path / "x", "--negatives-dir", tmp_path)
    assert result.exit_code != 0 and "--negatives-dir goes with --negatives N" in result.stderr
    result = qd_data("fetch", "--negatives", "2", "--source", shared_bitmaps, "--data", tmp_path / "none")
    assert result.exit_code != 0 and "does not exist" in result.stderr
