"""SIGTERM to `qd-data import` while its decode workers run: the same clean exit as Ctrl-C (exit 143,
one line), and the fork server and every worker end with it; nothing is written."""

import signal
import subprocess
import sys
import time
from pathlib import Path

from qd.data.strokes import draw_strokes_image, parse_ndjson_line

REPO = Path(__file__).resolve().parents[1]
# Runs qd-data import with one in-process hook: after the pool's first result, say so and block,
# so the test signals a run whose workers are certainly alive (no sleeps racing the import).
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
from qd.data.cli import main
sys.argv = ["qd-data", *sys.argv[1:]]
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


def test_sigterm_ends_the_import_and_its_workers_cleanly(tmp_path, shared_strokes):
    src = tmp_path / "src"
    lines = (shared_strokes / "cat.ndjson").read_text().splitlines()[:40]
    for category in ("cat", "dog"):
        (src / category).mkdir(parents=True)
        for i, line in enumerate(lines):
            draw_strokes_image(parse_ndjson_line(line)[1], size=48, line_width=2).save(src / category / f"{i}.png")
    out = tmp_path / "data"
    process = subprocess.Popen([sys.executable, "-c", DRIVER, "import", src, "--data", out, "--workers", "2"],
                               cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        while (line := process.stdout.readline()) != "decoding\n":
            assert line, process.communicate()
        helpers = descendants(process.pid)
        assert len(helpers) >= 2, helpers  # the fork server and the workers
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 143, err
    assert err.splitlines()[-1].startswith("error: terminated (SIGTERM)") and "Traceback" not in err
    deadline = time.monotonic() + 60  # a bound for a loaded machine, not a race: they end as the pool shuts down
    while any(alive(pid) for pid in helpers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in helpers if alive(pid)], "worker processes outlived qd-data import"
    assert not out.exists() or not list(out.iterdir())
