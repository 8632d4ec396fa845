"""Real-data sanity: every shared category loads memory-mapped with the documented shape."""

import numpy as np

from qd.data.bitmaps import BitmapDataset, list_categories


def test_every_shared_category_loads(shared_bitmaps):
    names = list_categories(shared_bitmaps)
    assert len(names) >= 27
    ds = BitmapDataset(shared_bitmaps)
    assert ds.classes == sorted(names)
    for name, rows in zip(ds.classes, ds.arrays):
        assert isinstance(rows, np.memmap), name
        assert rows.dtype == np.uint8 and rows.ndim == 2 and rows.shape[1] == 784, name
        assert len(rows) > 0 and rows.max() > 0, name
