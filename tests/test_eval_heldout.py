"""qd-eval's held-out data sources, with a tiny real ONNX model (tests/eval_synthetic.py)."""


import numpy as np
import pytest
from PIL import Image

from eval_synthetic import make_export
from qd.command import QDError
from qd.data.bitmaps import BitmapDataset, SplitSpec
from qd.evaluate.heldout import canonical, load_heldout
from qd.evaluate.backends import load_model_info

CATEGORIES = ["apple", "circle", "square", "star"]
MAX_ROWS = 200


@pytest.fixture(scope="module")
def model(shared_bitmaps, tmp_path_factory):
    folder = make_export(tmp_path_factory.mktemp("eval-heldout") / "lin", shared_bitmaps, CATEGORIES, MAX_ROWS)
    return load_model_info(folder)


def write_npy_dir(folder, shared_bitmaps, names_and_sources, rows=30):
    folder.mkdir(parents=True, exist_ok=True)
    for name, source in names_and_sources.items():
        np.save(folder / f"{name}.npy", np.load(shared_bitmaps / f"{source}.npy", mmap_mode="r")[:rows].copy())
    return folder


def test_default_is_the_test_split_of_the_training_data(model, shared_bitmaps):
    held = load_heldout(model, None, None, ignore_unknown=False)
    dataset = BitmapDataset(shared_bitmaps, CATEGORIES, MAX_ROWS)
    parts = dataset.split_indices(SplitSpec.from_dict(model.split))
    expected, expected_labels = dataset.take(parts["test"])
    assert held.source["kind"] == "training-data" and held.source["split"] == "test"
    assert np.array_equal(held.bitmaps, expected)
    assert np.array_equal(held.labels, expected_labels)  # model labels = the same sorted categories
    train_rows = {row.tobytes() for row in dataset.take(parts["train"])[0]}
    assert not any(row.tobytes() in train_rows for row in held.bitmaps)
    assert "test split of" in held.describe()


def test_other_splits_of_the_training_data(model):
    sizes = {s: len(load_heldout(model, None, s, False)) for s in ("train", "val", "test", "all")}
    assert sizes["train"] + sizes["val"] + sizes["test"] == sizes["all"] == MAX_ROWS * len(CATEGORIES)
    assert any("learned from" in note for note in load_heldout(model, None, "train", False).notes)
    assert not load_heldout(model, None, "test", False).notes
    with pytest.raises(QDError, match="--split must be one of"):
        load_heldout(model, None, "holdout", False)


def test_npy_dir_takes_every_row_and_maps_to_model_classes(model, shared_bitmaps, tmp_path):
    data = write_npy_dir(tmp_path / "npy", shared_bitmaps, {"star": "star", "Circle": "circle"}, rows=30)
    held = load_heldout(model, str(data), None, False)
    assert len(held) == 60 and held.source["split"] == "all"
    # sorted data categories: Circle, star -> model indices 1 and 3
    assert held.labels.tolist() == [1] * 30 + [3] * 30
    assert np.array_equal(held.bitmaps[:30], np.load(data / "Circle.npy"))
    assert held.origins[:2] == ["Circle.npy#0", "Circle.npy#1"] and held.origins[-1] == "star.npy#29"


def test_npy_dir_capped_per_category(model, shared_bitmaps, tmp_path, monkeypatch):
    data = write_npy_dir(tmp_path / "npy", shared_bitmaps, {"star": "star", "circle": "circle"}, rows=30)
    held = load_heldout(model, str(data), None, False, max_per_category=7)
    assert len(held) == 14 and held.origins[-1] == "star.npy#6"
    with pytest.raises(QDError, match="applies to --data"):
        load_heldout(model, None, None, False, max_per_category=7)
    monkeypatch.setattr("qd.evaluate.heldout.MAX_DRAWINGS", 50)
    with pytest.raises(QDError, match="60 drawings to evaluate.*--max-per-category"):
        load_heldout(model, str(data), None, False)


def test_npy_dir_with_a_split(model, shared_bitmaps, tmp_path):
    data = write_npy_dir(tmp_path / "npy", shared_bitmaps, {"star": "star"}, rows=100)
    test = load_heldout(model, str(data), "test", False)
    train = load_heldout(model, str(data), "train", False)
    assert 0 < len(test) < len(train) < 100


def test_unknown_category_is_one_clear_error_unless_ignored(model, shared_bitmaps, tmp_path):
    data = write_npy_dir(tmp_path / "npy", shared_bitmaps, {"star": "star", "cat": "cat", "dog": "dog"}, rows=10)
    with pytest.raises(QDError) as err:
        load_heldout(model, str(data), None, False)
    message = str(err.value)
    assert str(data) in message and "cat, dog" in message and "--ignore-unknown" in message
    assert "\n" not in message
    held = load_heldout(model, str(data), None, True)
    assert len(held) == 10 and held.labels.tolist() == [3] * 10
    assert held.source["ignored_categories"] == ["cat", "dog"]
    assert any("cat, dog" in note for note in held.notes)


def test_only_unknown_categories_is_an_error_even_when_ignored(model, shared_bitmaps, tmp_path):
    data = write_npy_dir(tmp_path / "npy", shared_bitmaps, {"cat": "cat"}, rows=5)
    with pytest.raises(QDError, match="none of its categories"):
        load_heldout(model, str(data), None, True)


def test_the_training_folder_given_as_data_gets_a_warning(model, shared_bitmaps):
    held = load_heldout(model, str(shared_bitmaps), None, True)  # other shared categories are unknown
    assert any("training data" in note for note in held.notes)


def save_black_on_white(bitmap, path, size=112, offset=(0, 0)):
    ink = Image.fromarray(255 - bitmap.reshape(28, 28)).resize((size, size), Image.BILINEAR)
    canvas = Image.new("L", (size + 60, size + 40), 255)
    canvas.paste(ink, (20 + offset[0], 10 + offset[1]))
    canvas.save(path)


def test_class_folders_of_images_use_the_shared_preprocessing(model, shared_bitmaps, tmp_path):
    root = tmp_path / "images"
    for folder, source in (("Apple", "apple"), ("square", "square")):
        (root / folder).mkdir(parents=True)
        rows = np.load(shared_bitmaps / f"{source}.npy", mmap_mode="r")[:4]
        for i, row in enumerate(rows):
            save_black_on_white(row, root / folder / f"{i}.png", offset=(i * 7, i * 3))
    (root / "square" / "broken.png").write_bytes(b"not a png at all")
    (root / "square" / "notes.txt").write_text("not an image, not counted")
    (root / "star").mkdir()
    np.save(root / "star" / "few.npy", np.load(shared_bitmaps / "star.npy", mmap_mode="r")[:3])  # as qd-infer reads
    held = load_heldout(model, str(root), None, False)
    assert len(held) == 11 and held.labels.tolist() == [0] * 4 + [2] * 4 + [3] * 3
    assert held.origins[-1] == "star/few.npy[2]"
    assert held.source["kind"] == "class-folders" and held.source["unreadable"] == 1
    assert any("broken.png" in note for note in held.notes)
    assert held.origins[:2] == ["Apple/0.png", "Apple/1.png"]
    from qd.data.images import load_image_bitmap

    assert np.array_equal(held.bitmaps[0], load_image_bitmap(root / "Apple" / "0.png").reshape(784))
    assert held.bitmaps.dtype == np.uint8 and held.bitmaps[:, :].max() == 255  # ink-high, full strength
    with pytest.raises(QDError, match="class folders are evaluated whole"):
        load_heldout(model, str(root), "test", False)


def test_image_folder_with_unknown_class(model, tmp_path):
    (tmp_path / "images" / "giraffe").mkdir(parents=True)
    with pytest.raises(QDError, match="giraffe"):
        load_heldout(model, str(tmp_path / "images"), None, False)


@pytest.mark.parametrize("make, problem", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "no <category>.npy files and no class-named subfolders"),
    (lambda p: (p / "file.txt").write_text("x") and p / "file.txt", "not a directory"),
])
def test_bad_data_dirs(model, tmp_path, make, problem):
    path = make(tmp_path)
    with pytest.raises(QDError, match=problem) as err:
        load_heldout(model, str(path), None, False)
    assert str(err.value).startswith(str(path))


def test_model_without_training_data_needs_data(model, shared_bitmaps, tmp_path):
    folder = make_export(tmp_path / "nodata", shared_bitmaps, CATEGORIES, 50)
    info = load_model_info(folder)
    bare = type(info)(**{**info.__dict__, "data": None})
    with pytest.raises(QDError, match="pass --data DIR"):
        load_heldout(bare, None, None, False)
    moved = type(info)(**{**info.__dict__, "data": {**info.data, "dir": str(tmp_path / "gone")}})
    with pytest.raises(QDError, match="not there any more"):
        load_heldout(moved, None, None, False)


def test_canonical_names():
    assert canonical("House Plant") == canonical("house_plant") == canonical(" house-plant ")
    assert canonical("The Eiffel Tower") == "the_eiffel_tower"


def test_class_folders_read_the_same_in_one_process_and_in_workers(model, shared_bitmaps, tmp_path):
    root = tmp_path / "images"
    for folder, source in (("Apple", "apple"), ("square", "square")):
        (root / folder).mkdir(parents=True)
        for i, row in enumerate(np.load(shared_bitmaps / f"{source}.npy", mmap_mode="r")[:20]):
            save_black_on_white(row, root / folder / f"{i:02d}.png", offset=(i % 5, i % 3))
    one, pool = (load_heldout(model, str(root), None, False, workers=w) for w in (1, 2))  # 40 files: a pool of 2
    assert one.origins == pool.origins and one.labels.tolist() == pool.labels.tolist()
    assert np.array_equal(one.bitmaps, pool.bitmaps)
