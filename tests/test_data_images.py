"""qd.data.images: real drawings, as people save, scan and photograph them, become dataset-like bitmaps."""

import io

import numpy as np
import pytest
from PIL import Image

from images_synth import bitmap_as_paper, correlation, off_centre, photo_of_paper, png_header_only
from qd.data.bitmaps import open_bitmaps
from qd.data.images import (BlankImageError, ImageError, gray_to_bitmap, image_to_bitmap, load_image_bitmap,
                            open_image)
from qd.data.strokes import draw_strokes_image, parse_ndjson_line, render_strokes

CATEGORIES = ["cat", "apple", "bicycle", "house", "fish", "tree", "clock", "star"]


@pytest.fixture(scope="module")
def real_rows(shared_bitmaps):
    """Rows 200..201 of several categories, as (28, 28) uint8."""
    return [np.asarray(open_bitmaps(shared_bitmaps / f"{c}.npy")[200 + i]).reshape(28, 28)
            for c in CATEGORIES for i in range(2)]


@pytest.fixture(scope="module")
def real_strokes(shared_strokes):
    out = []
    for c in ["cat", "apple", "bicycle", "house", "fish", "tree"]:
        lines = [l for l in (shared_strokes / f"{c}.ndjson").read_bytes().splitlines() if l.strip()]
        out += [parse_ndjson_line(l)[1] for l in lines[:2]]
    return out


def test_output_is_uint8_28x28_ink_high(real_rows):
    out = image_to_bitmap(bitmap_as_paper(real_rows[0], 256))
    assert out.dtype == np.uint8 and out.shape == (28, 28)
    assert out.max() >= 200 and np.median(out) == 0  # strong ink on a black background


@pytest.mark.parametrize("size", [256, 1024])
def test_black_on_white_at_larger_sizes_matches_the_bitmap(real_rows, size):
    cs = [correlation(image_to_bitmap(bitmap_as_paper(b, size)), b) for b in real_rows]
    assert np.mean(cs) > 0.93 and min(cs) > 0.85, (np.mean(cs), min(cs))


def test_off_centre_on_a_big_canvas_matches_the_bitmap(real_rows):
    cs = [correlation(image_to_bitmap(off_centre(bitmap_as_paper(b, 400), canvas=(1200, 900), at=(100, 550))), b) for b in real_rows]
    assert np.mean(cs) > 0.93 and min(cs) > 0.85, (np.mean(cs), min(cs))


def test_dataset_bitmap_as_image_is_nearly_unchanged(real_rows):
    cs = [correlation(image_to_bitmap(Image.fromarray(b)), b) for b in real_rows]
    assert np.mean(cs) > 0.9, np.mean(cs)


@pytest.mark.parametrize("size,line", [(256, 2), (1024, 3), (1024, 12)])
def test_thin_and_thick_pens_at_high_resolution_keep_their_strokes(real_strokes, size, line):
    cs = []
    for strokes in real_strokes:
        image = draw_strokes_image(strokes, size=size, line_width=line, offset=(size * 0.05, size * 0.2),
                                   drawing_side=size * 0.6)
        cs.append(correlation(image_to_bitmap(image), render_strokes(strokes)))
    assert np.mean(cs) > 0.95 and min(cs) > 0.9, (np.mean(cs), min(cs))


def test_photo_of_grey_paper_with_uneven_light_and_jpeg(real_strokes):
    cs = [correlation(image_to_bitmap(photo_of_paper(draw_strokes_image(s, size=600, line_width=3), seed=i)),
                      render_strokes(s)) for i, s in enumerate(real_strokes)]
    assert np.mean(cs) > 0.95 and min(cs) > 0.9, (np.mean(cs), min(cs))


def test_white_on_black_equals_black_on_white(real_rows):
    paper = bitmap_as_paper(real_rows[1], 300)
    inverted = Image.fromarray(255 - np.asarray(paper))
    assert np.array_equal(image_to_bitmap(paper), image_to_bitmap(inverted))


def test_transparent_png_dark_or_light_ink_on_transparency(real_rows):
    ink = 255 - np.asarray(bitmap_as_paper(real_rows[2], 300))  # alpha = ink coverage
    expected = image_to_bitmap(bitmap_as_paper(real_rows[2], 300))
    for colour in (0, 255):
        rgba = np.zeros((300, 300, 4), np.uint8)
        rgba[..., :3] = colour
        rgba[..., 3] = ink
        got = image_to_bitmap(Image.fromarray(rgba, "RGBA"))
        assert correlation(got, expected) > 0.99, colour


@pytest.mark.parametrize("mode", ["RGB", "CMYK", "P", "LA", "I;16", "1", "RGBA"])
def test_other_modes_give_the_same_drawing(real_rows, mode):
    paper = bitmap_as_paper(real_rows[3], 200)
    expected = image_to_bitmap(paper)
    if mode == "I;16":
        image = Image.fromarray(np.asarray(paper).astype(np.uint16) * 257)
    elif mode == "1":
        image = paper.convert("1", dither=Image.Dither.NONE)
    else:
        image = paper.convert(mode)
    assert correlation(image_to_bitmap(image), expected) > 0.95


def test_palette_with_transparency_and_animated_gif(tmp_path, real_rows):
    paper = bitmap_as_paper(real_rows[4], 120)
    expected = image_to_bitmap(paper)
    p = paper.convert("P")
    p.info["transparency"] = 255
    path = tmp_path / "t.png"
    p.save(path, transparency=int(np.asarray(p)[0, 0]))
    assert correlation(load_image_bitmap(path), expected) > 0.95
    gif = tmp_path / "a.gif"
    paper.save(gif, save_all=True, append_images=[Image.new("L", paper.size, 255)], duration=100)
    assert correlation(load_image_bitmap(gif), expected) > 0.95  # first frame


@pytest.mark.parametrize("image", [
    Image.new("L", (300, 200), 255), Image.new("L", (300, 200), 0), Image.new("L", (64, 64), 128),
    Image.new("L", (1, 1), 0), Image.new("RGBA", (50, 50), (0, 0, 0, 0)),
    Image.fromarray(np.random.default_rng(0).normal(200, 3, (400, 400)).clip(0, 255).astype(np.uint8)),
], ids=["white", "black", "grey", "1x1", "transparent", "faint-noise"])
def test_blank_images_are_reported_not_classified(image):
    with pytest.raises(BlankImageError, match="no drawing found"):
        image_to_bitmap(image)


def test_tiny_images_still_work():
    dot = np.full((3, 3), 255, np.uint8)
    dot[1, 1] = 0
    out = gray_to_bitmap(dot)
    assert out.shape == (28, 28) and out.max() > 100


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(30000, 30000))
    with pytest.raises(ImageError, match=r"bomb.png: refused, .*pixels"):
        open_image(path)


@pytest.mark.parametrize("content,reason", [
    (b"hello, I am text\n", "not a recognised image"),
    (b"", "not a recognised image"),
])
def test_not_an_image(tmp_path, content, reason):
    path = tmp_path / "x.png"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=reason):
        load_image_bitmap(path)


def test_truncated_png(tmp_path, real_rows):
    buf = io.BytesIO()
    bitmap_as_paper(real_rows[0], 256).save(buf, "PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match="cut.png: cannot decode image"):
        load_image_bitmap(path)


def test_missing_and_unreadable(tmp_path):
    with pytest.raises(ImageError, match="No such file"):
        load_image_bitmap(tmp_path / "nope.png")


def test_exif_orientation_is_applied(tmp_path, real_rows):
    """Phone photos store pixels sideways plus an orientation tag; browsers (and we) apply it."""
    upright = bitmap_as_paper(real_rows[5], 200).convert("RGB")
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what the camera wrote
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "phone.jpg"
    stored.save(path, quality=95, exif=exif)
    assert correlation(load_image_bitmap(path), image_to_bitmap(upright)) > 0.95
