"""The training data pipeline: seeded per-epoch shuffling, rank shards, per-batch conversion."""

import numpy as np
import pytest
import torch

from qd.data.bitmaps import BitmapDataset, SplitSpec
from qd.data.contract import DEFAULT_PREPROCESSING, bitmaps_to_input
from qd.train.batches import AffineAugment, BatchLoader, ShardedBatches, to_float_batch


@pytest.fixture(scope="module")
def small_dataset(shared_bitmaps):
    return BitmapDataset(shared_bitmaps, ["circle", "square", "star"], max_per_category=100)


def test_epochs_are_shuffled_deterministically_and_cover_the_split():
    idx = np.arange(1000, 1500, dtype=np.int64)
    batches = ShardedBatches(idx, 64, shuffle=True, seed=7)
    epoch0 = np.concatenate(list(batches))
    assert np.array_equal(np.sort(epoch0), idx)
    assert not np.array_equal(epoch0, idx)  # not in file order (the seed script's bug)
    assert np.array_equal(epoch0, np.concatenate(list(ShardedBatches(idx, 64, shuffle=True, seed=7))))
    batches.set_epoch(1)
    assert not np.array_equal(np.concatenate(list(batches)), epoch0)
    other_seed = np.concatenate(list(ShardedBatches(idx, 64, shuffle=True, seed=8)))
    assert not np.array_equal(other_seed, epoch0)


@pytest.mark.parametrize("shuffle", [True, False])
def test_rank_shards_are_disjoint_and_cover_the_split(shuffle):
    idx = np.arange(1003, dtype=np.int64)
    shards = [ShardedBatches(idx, 50, shuffle=shuffle, seed=3, rank=r, world_size=2) for r in range(2)]
    seen = [np.concatenate(list(s)) for s in shards]
    assert [len(list(s)) for s in shards] == [len(s) for s in shards]
    if shuffle:  # padded so that both ranks take the same number of steps
        assert len(shards[0]) == len(shards[1]) and len(seen[0]) == len(seen[1]) == 502
        assert set(seen[0]) | set(seen[1]) == set(idx)
        assert len(set(seen[0]) & set(seen[1])) <= 1  # only the one wrapped-around pad drawing
    else:  # evaluation: every drawing exactly once
        assert np.array_equal(np.sort(np.concatenate(seen)), idx)


def test_batches_match_the_shared_preprocessing(small_dataset):
    split = small_dataset.split_indices(SplitSpec())
    loader = BatchLoader(small_dataset, ShardedBatches(split["train"], 32, shuffle=True, seed=0),
                         DEFAULT_PREPROCESSING)
    order = list(loader.batches)
    for (x, y), idx in zip(loader, order):
        bitmaps, labels = small_dataset.take(idx)
        assert x.dtype == torch.float32 and x.shape == (len(idx), 1, 28, 28)
        assert np.array_equal(x.numpy(), bitmaps_to_input(bitmaps, DEFAULT_PREPROCESSING))
        assert np.array_equal(y.numpy(), labels)
    assert loader.num_samples == len(split["train"])


def test_worker_processes_give_the_same_batches_as_the_prefetch_thread(small_dataset):
    idx = small_dataset.split_indices(SplitSpec())["train"]
    thread = BatchLoader(small_dataset, ShardedBatches(idx, 40, shuffle=True, seed=1), DEFAULT_PREPROCESSING)
    procs = BatchLoader(small_dataset, ShardedBatches(idx, 40, shuffle=True, seed=1), DEFAULT_PREPROCESSING,
                        workers=2)
    for epoch in (0, 1):
        thread.set_epoch(epoch)
        procs.set_epoch(epoch)
        a, b = list(thread), list(procs)
        assert len(a) == len(b) == len(thread)
        for (xa, ya), (xb, yb) in zip(a, b):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_prefetch_thread_reraises_gather_errors(small_dataset):
    bad = ShardedBatches(np.array([0, 1, 10**9], dtype=np.int64), 2, shuffle=False)
    with pytest.raises(IndexError):
        list(BatchLoader(small_dataset, bad, DEFAULT_PREPROCESSING))


def test_to_float_batch_applies_mean_and_std():
    spec = dict(DEFAULT_PREPROCESSING, mean=0.5, std=0.25)
    bitmaps = np.random.default_rng(0).integers(0, 256, (3, 784), dtype=np.uint8)
    assert np.allclose(to_float_batch(bitmaps, spec).numpy(), bitmaps_to_input(bitmaps, spec), atol=1e-6)


def test_affine_augment_is_seeded_small_and_keeps_the_background():
    x = torch.zeros(8, 1, 28, 28)
    x[:, :, 10:18, 10:18] = 1.0
    aug = AffineAugment()
    a = aug(x, torch.Generator().manual_seed(0))
    b = aug(x, torch.Generator().manual_seed(0))
    c = aug(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert torch.all(a[:, :, :3, :] == 0) and torch.all(a[:, :, :, -3:] == 0)  # shifts are small
    assert (a.sum() / x.sum() - 1).abs() < 0.25  # ink is moved, not lost
    shifted_bg = aug(x - 0.5, torch.Generator().manual_seed(0), background=-0.5)
    assert torch.allclose(shifted_bg, a - 0.5, atol=1e-6)


def test_released_pages_leave_the_data_intact(small_dataset):
    from qd.data.bitmaps import release_mapped_pages

    before = np.array(small_dataset.arrays[0][:50])
    release_mapped_pages(small_dataset.arrays)
    assert np.array_equal(np.array(small_dataset.arrays[0][:50]), before)


@pytest.mark.parametrize("threshold, released", [(10**12, False), (1, True)])
def test_mapped_pages_are_released_per_batch_only_for_large_data(small_dataset, monkeypatch, threshold, released):
    import qd.train.batches as batches_module

    calls = []
    monkeypatch.setattr(batches_module, "RELEASE_ABOVE_BYTES", threshold)
    monkeypatch.setattr(batches_module, "release_mapped_pages", lambda arrays: calls.append(len(arrays)))
    loader = BatchLoader(small_dataset, ShardedBatches(np.arange(len(small_dataset)), 64, shuffle=True),
                         DEFAULT_PREPROCESSING)
    batches = list(loader)
    assert sum(len(y) for _, y in batches) == len(small_dataset)
    assert calls == ([3] * len(batches) if released else [])
