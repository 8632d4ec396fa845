"""qd-data import never leaves the folder it is given: links to folders or files outside it (`/`,
`/etc`, an image elsewhere) are not followed, only noted; links inside it are read as before."""

import numpy as np

from fixtures_data import invoke_cli
from qd.data.cli import main
from qd.data.strokes import draw_strokes_image, parse_ndjson_line
from qd.files import LinkOutside, walk_files


def drawings(shared_strokes, count):
    lines = (shared_strokes / "cat.ndjson").read_text().splitlines()[:count]
    return [draw_strokes_image(parse_ndjson_line(line)[1], size=64, line_width=3) for line in lines]


def test_links_out_of_the_source_folder_are_not_followed(tmp_path, shared_strokes):
    images = drawings(shared_strokes, 5)
    src = tmp_path / "src"
    for folder, image_numbers in (("cat", (0, 1)), ("dog", (2,))):
        (src / folder).mkdir(parents=True)
        for i in image_numbers:
            images[i].save(src / folder / f"{i}.png")
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "bird").mkdir(parents=True)
    images[3].save(elsewhere / "bird" / "3.png")
    images[4].save(elsewhere / "4.png")
    (src / "root").symlink_to("/", target_is_directory=True)  # would be a class folder holding the file system
    (src / "bird").symlink_to(elsewhere / "bird", target_is_directory=True)
    (src / "cat" / "etc").symlink_to("/etc", target_is_directory=True)
    (src / "cat" / "4.png").symlink_to(elsewhere / "4.png")
    (src / "cat" / "alias.png").symlink_to(src / "dog" / "2.png")  # inside the folder: read
    out = tmp_path / "data"

    result = invoke_cli(main, "import", src, "--data", out, "--workers", "1")

    assert result.exit_code == 0, result.output
    assert "note: 4 link(s) leading out of the source folder were not followed" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["cat.npy", "dog.npy"]
    assert np.load(out / "cat.npy").shape == (3, 784)  # 0.png, 1.png and the alias of dog/2.png


def test_the_walk_yields_a_link_out_of_its_root_instead_of_walking_it(tmp_path):
    (tmp_path / "root" / "sub").mkdir(parents=True)
    (tmp_path / "root" / "sub" / "a.png").write_bytes(b"x")
    (tmp_path / "root" / "sub" / "up").symlink_to(tmp_path, target_is_directory=True)
    (tmp_path / "root" / "sub" / "loop").symlink_to(tmp_path / "root", target_is_directory=True)
    items = list(walk_files(tmp_path / "root"))
    assert items[0] == tmp_path / "root" / "sub" / "a.png"
    assert [(type(i), i.path) for i in items[1:]] == [(LinkOutside, tmp_path / "root" / "sub" / "up")]
