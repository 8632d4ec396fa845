"""The canvas models: one torch module (export/canvas.py) = qd.data.images' clean-canvas preprocessing,
exported to ONNX and Core ML, validated against qd-infer, and the wrapper's refusals."""

import dataclasses
import platform
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch

from images_synth import bitmap_as_paper, off_centre
from qd.command import QDError
from qd.data import images
from qd.data.bitmaps import open_bitmaps
from qd.data.strokes import draw_strokes_image, parse_ndjson_line
from qd.export import canvas as canvas_export
from qd.export.run import export_checkpoint
from qd.export.canvas import CanvasClassifier, CanvasPreprocess, render_canvases
from qd.export.formats import FORMATS
from qd.export.onnx_export import set_metadata
from qd.data.contract import BLANK_LOGIT
from qd.infer.model import CanvasModel
from qd.train.checkpoint import load_checkpoint, model_from_checkpoint


def clean_canvases(shared_bitmaps, shared_strokes):
    """Canvases of several kinds: upscaled bitmaps, off-centre, rendered strokes (thin and thick pens), greys."""
    rows = open_bitmaps(shared_bitmaps / "star.npy")[:6]
    out = [np.asarray(bitmap_as_paper(row, size)) for row, size in zip(rows, (64, 127, 300, 510))]
    out.append(np.asarray(off_centre(bitmap_as_paper(rows[4], 400), canvas=(900, 700), at=(40, 280))))
    out.append(255 - np.asarray(bitmap_as_paper(rows[5], 200)))  # light ink on dark: polarity is detected
    for category, size, pen in (("cat", 256, 2), ("bicycle", 640, 3), ("house", 480, 12)):
        line = next(l for l in (shared_strokes / f"{category}.ndjson").read_bytes().splitlines() if l.strip())
        image = draw_strokes_image(parse_ndjson_line(line)[1], size=size, line_width=pen,
                                   offset=(size * 0.05, size * 0.2), drawing_side=size * 0.6)
        out.append(np.asarray(image.convert("L")))
    rendered, _ = render_canvases(rows, seed=3)
    return out + rendered


def images_without_step5(grey: np.ndarray) -> np.ndarray:
    ink, b, span = images.ink_high(grey)
    return images.levels_to_bitmap(ink, images.stretch_table(b, span))


def run_module(module, grey):
    with torch.inference_mode():
        return module(torch.from_numpy(grey.astype(np.float32))[None, None])


def test_module_gives_qd_data_images_bitmaps_bit_for_bit(shared_bitmaps, shared_strokes):
    exact, single = CanvasPreprocess(torch.float64), CanvasPreprocess(torch.float32)
    for grey in clean_canvases(shared_bitmaps, shared_strokes):
        want = images_without_step5(grey)
        got, blank = run_module(exact, grey)
        assert not blank and np.array_equal(got.numpy().astype(np.uint8), want), grey.shape
        if max(grey.shape) < images.LOCAL_MIN_SIDE:  # no step 5 there: the whole of qd.data.images
            assert np.array_equal(want, images.gray_to_bitmap(grey))
        got32, _ = run_module(single, grey)  # what Core ML runs: float32 geometry
        assert np.abs(got32.numpy().astype(int) - want.astype(int)).max() <= 8, grey.shape


def test_blank_canvas_is_all_zero_and_unknown_never_nan(trained_checkpoint):
    net = model_from_checkpoint(load_checkpoint(trained_checkpoint)).eval()
    module = CanvasClassifier(net, {"scale": 1 / 255}, 1.5)
    grey = np.full((40, 300), 230.0)
    grey[10:20, 10:200] = 222  # contrast below MIN_CONTRAST: no ink
    for canvas in (np.full((28, 28), 255.0), grey, np.full((64, 64), np.nan)):
        probs, logits, bitmap = run_module(module, canvas)
        assert not probs.any() and not bitmap.any() and (logits == BLANK_LOGIT).all()


def test_both_formats_pass_their_validation(canvas_report):
    results = {r.format.name: r for r in canvas_report.results}
    assert all(r.ok for r in results.values()), canvas_report.errors
    onnx_checks = {c.name: c for c in results["onnx-canvas"].checks}
    assert list(onnx_checks) == ["onnx.checker", "contract", "vs qd-infer on canvases", "blank canvas"]
    agreement = onnx_checks["vs qd-infer on canvases"]
    assert agreement.values["top1_agreement"] >= 0.99 and agreement.values["drawings"] >= 100
    assert 0 <= agreement.values["max_abs_prob_diff"] < 0.2
    assert "test-split drawings rendered as canvases" in agreement.detail
    coreml_checks = [c.name for c in results["coreml-canvas"].checks]
    assert coreml_checks == ["ML Program, iOS 16+", "input", "outputs", "metadata", "vs qd-infer on canvases",
                             "blank canvas"]
    if platform.system() != "Darwin":
        assert "float32 torch module" in results["coreml-canvas"].checks[4].detail
    folder = canvas_report.out_dir
    assert (folder / "model.canvas.onnx").is_file() and (folder / "model.canvas.mlpackage").is_dir()
    assert not list(folder.glob(".*"))


def test_onnx_graph_runs_the_torch_module(canvas_report, trained_checkpoint, shared_bitmaps, shared_strokes):
    model = CanvasModel(canvas_report.out_dir)
    net = model_from_checkpoint(load_checkpoint(trained_checkpoint)).eval()
    module = CanvasClassifier(net, load_checkpoint(trained_checkpoint)["preprocessing"], model.temperature)
    for grey in clean_canvases(shared_bitmaps, shared_strokes)[::3]:
        probs, _, bitmap = run_module(module, grey)
        answer = model.classify(grey)
        assert np.array_equal(answer.bitmap, bitmap.numpy()[0, 0].astype(np.uint8))
        assert np.abs(answer.probabilities - probs.numpy()[0]).max() < 1e-5 and not answer.blank


def test_wrapper_answers_blank_and_refuses_bad_canvases_in_one_line(canvas_report):
    model = CanvasModel(canvas_report.out_dir / "model.canvas.onnx")
    answer = model.classify(np.full((300, 200), 255, np.uint8))
    assert answer.blank and answer.unknown is True and not answer.probabilities.any()
    for canvas, why in ((np.full((27, 300), 255), "27 px"), (np.full((2049, 64), 255), "2049 px"),
                        (np.full((64, 64, 3), 255), "shape"), (np.full((64, 64), np.inf), "finite")):
        with pytest.raises(QDError) as refused:
            model.classify(canvas, name="pad.png")
        message = str(refused.value)
        assert message.startswith("pad.png: ") and "\n" not in message
        assert why.split()[0] in message or why in message
    with pytest.raises(QDError, match="not a canvas model"):
        CanvasModel(canvas_report.out_dir / "model.onnx")


def test_failed_canvas_validation_leaves_no_file(canvas_report, trained_checkpoint, tmp_path, monkeypatch):
    validated = onnx.load(str(canvas_report.out_dir / "model.canvas.onnx"))

    def copy(ctx, path):  # the exported graph with this run's metadata, without exporting again
        set_metadata(validated, canvas_export.canvas_model_metadata(ctx))
        onnx.save(validated, str(path))

    monkeypatch.setitem(FORMATS, "onnx-canvas", dataclasses.replace(FORMATS["onnx-canvas"], exporter=copy))
    monkeypatch.setattr(canvas_export, "MIN_AGREEMENT", 1.01)  # unreachable: the check must refuse
    report = export_checkpoint(trained_checkpoint, "onnx-canvas", out=tmp_path, max_drawings=12)
    (failed,) = [r for r in report.results if r.format.name == "onnx-canvas"]
    assert "validation failed, not written: vs qd-infer on canvases" in failed.error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.txt", "model.json", "model.onnx"]


def test_without_a_test_split_validation_says_what_it_rendered():
    rng = np.random.default_rng(0)
    bitmaps = np.where(rng.random((4, 28, 28)) < 0.15, 255, 0).astype(np.float32)
    ctx = SimpleNamespace(data=SimpleNamespace(inputs=bitmaps[:, None] / 255, synthetic=True),
                          source=SimpleNamespace(preprocessing={"scale": 1 / 255}))
    canvases, described = canvas_export.validation_canvases(ctx)
    assert len(canvases) == 4 and described.startswith("4 seeded random bitmaps (no test split) rendered as canvases")
