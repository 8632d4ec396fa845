"""`from qd import Classifier`, the one Python entry point: its docstring examples run; every input it
accepts (a path, a folder, PIL images, arrays of any accepted shape, uint8 or float, strokes) gives one
Prediction per drawing, the same answer whatever the form; inputs it cannot read as drawings are
refused with one line, never guessed at.
"""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from PIL import Image, ImageDraw


@pytest.fixture(scope="module")
def clf(exported_model):
    from qd import Classifier

    return Classifier(exported_model)  # an export folder, as every command takes



def test_the_docstring_examples_run(exported_model):
    from qd.infer import classifier

    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = [t for t in finder.find(classifier, globs={"np": np, "Classifier": classifier.Classifier,
                                                       "export_folder": exported_model}) if t.examples]
    assert tests
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0



def test_every_accepted_input_gives_one_prediction_per_drawing(clf, shared_bitmaps, tmp_path):
    rows = [np.load(shared_bitmaps / f"{label}.npy", mmap_mode="r")[700] for label in clf.labels[:4]]
    bitmaps = np.stack(rows)  # (4, 784) uint8, drawings of classes the model knows
    one = bitmaps[0]
    floats = bitmaps.astype(np.float32) / 255
    cases = {
        "(28, 28)": (one.reshape(28, 28), 1), "(784,)": (one, 1), "(N, 784)": (bitmaps, 4),
        "(N, 28, 28)": (bitmaps.reshape(4, 28, 28), 4), "(N, 1, 28, 28)": (bitmaps.reshape(4, 1, 28, 28), 4),
        "float (N, 784)": (floats, 4), "float (28, 28)": (floats[0].reshape(28, 28), 1),
    }
    reference = [p.label for p in clf.predict(bitmaps)]
    for name, (x, count) in cases.items():
        predictions = clf.predict(x)
        assert len(predictions) == count, name
        assert [p.label for p in predictions] == reference[:count], name
    image = Image.new("RGB", (400, 400), "white")  # a photo-sized drawing: dark ink on paper
    ImageDraw.Draw(image).ellipse((60, 60, 340, 340), outline="black", width=14)
    image.save(tmp_path / "circle.png")
    np.save(tmp_path / "rows.npy", bitmaps)
    [from_image] = clf.predict(image)
    [from_file] = clf.predict(tmp_path / "circle.png")
    assert (from_image.label, from_image.top) == (from_file.label, from_file.top)
    assert len(clf.predict([image, image])) == 2
    assert [p.input for p in clf.predict(tmp_path)] == [str(tmp_path / "circle.png")] + \
        [f"{tmp_path / 'rows.npy'}[{i}]" for i in range(4)]
    record = {"word": "circle", "drawing": [[[0, 100, 200, 100, 0], [100, 0, 100, 200, 100]]]}
    assert len(clf.predict(record)) == 1 and len(clf.predict(record["drawing"])) == 1
    everything = clf.predict(one, top=len(clf.labels) + 1)[0]  # more than there are: every class, once
    assert sorted(g.label for g in everything.top) == sorted(clf.labels)
    assert sorted((g.probability for g in everything.top), reverse=True) == [g.probability for g in everything.top]
    assert everything.unknown in (True, False)  # the model carries an open-set rule



@pytest.mark.parametrize("bad, message", [
    (np.zeros((28, 27), np.uint8), "shape (28, 27)"), (np.zeros((3, 28, 28, 3), np.uint8), "shape (3, 28, 28, 3)"),
    (np.full((28, 28), 2.0), "0..1"), (np.full((28, 28), np.nan), "NaN"), (np.full(784, 300), "0..255"),
    (np.zeros(784, bool), "dtype bool"), (42, "cannot classify a int"),
    ([[[0, 1], [0]]], "different lengths"),
])
def test_inputs_it_cannot_read_are_refused_not_guessed(clf, bad, message):
    from qd.command import QDError

    with pytest.raises(QDError, match=message.replace("(", r"\(").replace(")", r"\)")):
        clf.predict(bad)
