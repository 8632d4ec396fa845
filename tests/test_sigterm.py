"""SIGTERM to a command while its decode workers run (`qd-data import`, `qd-infer`, `qd-eval`): the same
clean exit as Ctrl-C (exit 143, one line), the fork server and every worker end with it, and nothing is
written (no category file, no report).

An in-process hook stops the run right after the decode pool's first result and says so, so the test
signals a run whose workers are certainly alive (no sleeps racing the command)."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from onnx_synth import tiny_model
from qd.data.strokes import draw_strokes_image, parse_ndjson_line

REPO = Path(__file__).resolve().parents[1]
DRIVER = """
import sys
from qd.data import decode

real = decode.ImageDecoder.decode

def decode_then_block(self, paths):
    for item in real(self, paths):
        yield item
        print("decoding", flush=True)
        sys.stdin.read()

decode.ImageDecoder.decode = decode_then_block
entry = sys.argv[1]
if entry == "qd-data":
    from qd.data.cli import main
elif entry == "qd-infer":
    from qd.infer.cli import main
else:
    from qd.evaluate.cli import main
sys.argv = [entry, *sys.argv[2:]]
main()
"""


def descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = {int(c) for c in (task / "children").read_text().split()}
            except OSError:
                continue
            todo.extend(children - found)
            found |= children
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def drawings(tmp_path, shared_strokes) -> Path:
    """Class folders of 40 PNGs each, cat and dog."""
    lines = (shared_strokes / "cat.ndjson").read_text().splitlines()[:40]
    for category in ("cat", "dog"):
        (tmp_path / "src" / category).mkdir(parents=True)
        for i, line in enumerate(lines):
            image = draw_strokes_image(parse_ndjson_line(line)[1], size=48, line_width=2)
            image.save(tmp_path / "src" / category / f"{i}.png")
    return tmp_path / "src"


@pytest.mark.parametrize("entry", ["qd-data", "qd-infer", "qd-eval"])
def test_sigterm_ends_the_command_and_its_decode_workers(tmp_path, drawings, entry):
    out = tmp_path / "out"  # what the command would write: a data folder or a report folder
    if entry == "qd-data":
        args = ["import", drawings, "--data", out, "--workers", "2"]
    else:
        model = tiny_model(tmp_path / "export" / "model.onnx", ["cat", "dog"])
        args = ([drawings, "--model", model, "--workers", "2", "--json"] if entry == "qd-infer" else
                ["--model", model, "--data", drawings, "--workers", "2", "--out", out, "--no-speed", "--no-plots"])
    process = subprocess.Popen([sys.executable, "-c", DRIVER, entry, *map(str, args)], cwd=REPO,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while (line := process.stdout.readline()) != "decoding\n":
            assert line, process.communicate()
        helpers = descendants(process.pid)
        assert len(helpers) >= 2, helpers  # the fork server and the workers
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 143, err
    assert err.splitlines()[-1].startswith("error: terminated (SIGTERM)") and "Traceback" not in err
    deadline = time.monotonic() + 60  # a bound for a loaded machine, not a race: they end as the pool shuts down
    while any(alive(pid) for pid in helpers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in helpers if alive(pid)], f"worker processes outlived {entry}"
    assert not out.exists() or not list(out.iterdir())
