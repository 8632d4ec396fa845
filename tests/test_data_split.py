"""The one split: deterministic, disjoint, honest fractions, stable under file order and caps."""

from __future__ import annotations

import numpy as np
import pytest

from qd.command import QDError
from qd.data.bitmaps import (SCHEME, SPLITS, BitmapDataset, SplitSpec, assign_splits, drawing_hashes, open_bitmaps,
                             split_rows)


@pytest.fixture(scope="module")
def dataset(shared_bitmaps) -> BitmapDataset:
    return BitmapDataset(shared_bitmaps)


def drawings_of(rows: np.ndarray, idx: np.ndarray) -> set[bytes]:
    return {bytes(row) for row in np.asarray(rows[idx])}


def test_hashes_are_pinned_across_machines_and_versions():
    # Pinned values: a change here silently reshuffles every split, so it must be a new SCHEME.
    rows = np.arange(3 * 784, dtype=np.uint64).reshape(3, 784).astype(np.uint8)
    rows[2] = 0
    assert SCHEME == "mulhash64-splitmix-v1"
    assert [int(h) for h in drawing_hashes(rows, seed=0)] == [
        576257092612970560, 5721013445449605933, 16294208416658607535]
    assert [int(h) for h in drawing_hashes(rows, seed=7)] == [
        2056805435095287477, 3022256746809673851, 7191089600892374487]


def test_split_is_deterministic_and_partitions_every_category(dataset):
    spec = SplitSpec()
    for rows in dataset.arrays:
        first, second = split_rows(rows, spec), split_rows(rows, spec)
        assert all(np.array_equal(first[name], second[name]) for name in SPLITS)
        together = np.concatenate([first[name] for name in SPLITS])
        assert len(together) == len(rows) and len(np.unique(together)) == len(rows)


@pytest.mark.parametrize("val, test", [(0.1, 0.1), (0.2, 0.05), (0.0, 0.3)])
def test_fractions_are_honoured(dataset, val, test):
    parts = dataset.split_indices(SplitSpec(val_fraction=val, test_fraction=test))
    n = len(dataset)
    assert sum(len(idx) for idx in parts.values()) == n
    assert abs(len(parts["val"]) / n - val) < 0.01
    assert abs(len(parts["test"]) / n - test) < 0.01
    for name, idx in parts.items():  # every category takes part in every non-empty split
        if len(idx):
            assert len(np.unique(dataset.labels(idx))) == dataset.num_classes, name


def test_global_splits_are_disjoint_by_content(dataset):
    parts = dataset.split_indices(SplitSpec())
    seen: dict[bytes, str] = {}
    for name, idx in parts.items():
        rows, _ = dataset.take(idx)
        for row in rows:
            assert seen.setdefault(row.tobytes(), name) == name  # a drawing never sits in two splits


def test_same_drawing_lands_in_the_same_split_wherever_it_appears(shared_bitmaps):
    cat = np.asarray(open_bitmaps(shared_bitmaps / "cat.npy")[:2000])
    dog = np.asarray(open_bitmaps(shared_bitmaps / "dog.npy")[:2000])
    mixed = np.concatenate([dog[:500], cat[1000:1500], dog[500:], cat[:700]])
    spec = SplitSpec(seed=3)
    ids_cat, ids_mixed = assign_splits(cat, spec), assign_splits(mixed, spec)
    np.testing.assert_array_equal(ids_mixed[500:1000], ids_cat[1000:1500])
    np.testing.assert_array_equal(ids_mixed[-700:], ids_cat[:700])


def test_split_is_stable_under_file_order(shared_bitmaps, tmp_path):
    rows = np.asarray(open_bitmaps(shared_bitmaps / "cat.npy"))
    order = np.random.default_rng(0).permutation(len(rows))
    shuffled_dir = tmp_path / "shuffled"
    shuffled_dir.mkdir()
    np.save(shuffled_dir / "cat.npy", rows[order])
    shuffled = open_bitmaps(shuffled_dir / "cat.npy")
    spec = SplitSpec()
    original, reordered = split_rows(rows, spec), split_rows(shuffled, spec)
    for name in SPLITS:
        assert drawings_of(rows, original[name]) == drawings_of(shuffled, reordered[name])


def test_split_is_stable_under_max_per_category(shared_bitmaps):
    full = BitmapDataset(shared_bitmaps, categories=["cat", "horse"])
    capped = BitmapDataset(shared_bitmaps, categories=["cat", "horse"], max_per_category=700)
    spec = SplitSpec()
    for cls in range(full.num_classes):
        whole, part = split_rows(full.arrays[cls], spec), split_rows(capped.arrays[cls], spec)
        for name in SPLITS:
            np.testing.assert_array_equal(part[name], whole[name][whole[name] < 700])


def test_seed_changes_the_assignment(shared_bitmaps):
    rows = open_bitmaps(shared_bitmaps / "cat.npy")
    a, b = assign_splits(rows, SplitSpec(seed=0)), assign_splits(rows, SplitSpec(seed=1))
    assert (a != b).mean() > 0.1


def test_arrays_are_memory_mapped(dataset, shared_bitmaps):
    assert all(isinstance(rows, np.memmap) for rows in dataset.arrays)
    capped = BitmapDataset(shared_bitmaps, max_per_category=100)
    assert all(isinstance(rows, np.memmap) and len(rows) == 100 for rows in capped.arrays)


def test_take_returns_the_right_rows_and_labels(dataset):
    idx = dataset.split_indices(SplitSpec())["val"][::97][::-1]  # descending, across classes
    rows, labels = dataset.take(idx)
    for i, label, row in zip(idx, labels, rows):
        np.testing.assert_array_equal(row, dataset.arrays[label][i - dataset.offsets[label]])


@pytest.mark.parametrize("kwargs", [dict(val_fraction=-0.1), dict(test_fraction=1.0),
                                    dict(val_fraction=0.5, test_fraction=0.5), dict(scheme="md5")])
def test_bad_split_specs_are_refused(kwargs):
    with pytest.raises(QDError):
        SplitSpec(**kwargs)


def test_spec_round_trips_through_a_dict():
    spec = SplitSpec(val_fraction=0.15, test_fraction=0.05, seed=9)
    assert SplitSpec.from_dict(spec.to_dict()) == spec


def test_chunked_hashing_gives_the_same_split(shared_bitmaps, monkeypatch):
    """The split is hashed chunk by chunk (pages released in between): chunking changes nothing."""
    import qd.data.bitmaps as bitmaps

    dataset = BitmapDataset(shared_bitmaps, ["apple", "circle", "clock"])
    whole = dataset.split_indices(SplitSpec())
    monkeypatch.setattr(bitmaps, "_CHUNK_ROWS", 700)  # several chunks per category
    chunked = dataset.split_indices(SplitSpec())
    for name in whole:
        assert np.array_equal(whole[name], chunked[name]), name
