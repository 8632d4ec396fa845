"""What the input bounds of issue 15 cost and save, measured side by side in one run.

Prints, each case in a fresh process (peak RSS is per process):
  1. reading a .npy of N and 4N drawings the way qd-infer does (pread in chunks) against the
     memory map it used before (np.memmap), each chunk of 512 converted to float32 as qd-infer
     does: peak RSS (a fresh process each), and drawings/s measured in one process, the two
     readers alternating for several rounds (median), with the ratio pread / memmap;
  2. one 7000x7000 RGB PNG through qd.data.images: peak RSS and seconds with the WORK_PIXELS
     reduction, and with it switched off (the old pipeline);
  3. refusing a checkpoint whose architecture says width=4000: seconds and peak RSS.

    python bench/input_bounds.py [--drawings 200000] [--rounds 5] [--work DIR]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

READ_PREAD = """
from pathlib import Path
from qd.infer.inputs import DrawingArray
with DrawingArray.open(Path(PATH)) as array:
    for start in range(0, array.rows, 512):
        chunk = array.read(start, start + 512).astype("float32")
"""
READ_MEMMAP = """
import numpy as np
rows = np.load(PATH, mmap_mode="r")
for start in range(0, len(rows), 512):
    chunk = np.ascontiguousarray(rows[start:start + 512]).astype("float32")
"""
IMAGE = """
from qd.data import images
if not REDUCE:
    images.WORK_PIXELS = 10**12
b = images.load_image_bitmap(PATH)
"""
WIDE = """
from qd.export.checkpoint_source import load_source
try:
    load_source(PATH)
except Exception as exc:
    assert "width=4000" in str(exc)
"""


def run(code: str, **values) -> tuple[float, float]:
    """(seconds for `code`, peak RSS in MiB) in a fresh Python."""
    head = "".join(f"{k} = {v!r}\n" for k, v in values.items())
    # VmHWM: ru_maxrss survives fork and exec on Linux, so it would report this process's own peak
    script = head + "import re, time\nstarted = time.perf_counter()\n" + textwrap.dedent(code) + (
        "\nprint(time.perf_counter() - started, "
        "int(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)) / 1024)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=True)
    seconds, rss = out.stdout.split()[-2:]
    return float(seconds), float(rss)


def npy(work: Path, rows: int) -> str:
    path = work / f"rows-{rows}.npy"
    if not path.exists():
        block = np.random.default_rng(0).integers(0, 256, (10_000, 784), dtype=np.uint8)
        with open(path, "wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": (rows, 784)})
            for start in range(0, rows, len(block)):
                f.write(block[: min(len(block), rows - start)].tobytes())
    return str(path)


def main() -> None:
    from qd.machine import cpu

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--drawings", type=int, default=200_000)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="qd-bounds-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"CPU: {cpu().summary()}")

    print("\n1. .npy input, chunks of 512 rows (pread = qd-infer now, memmap = before)")
    for rows in (args.drawings, 4 * args.drawings):
        path = npy(work, rows)
        pread_rss, memmap_rss = run(READ_PREAD, PATH=path)[1], run(READ_MEMMAP, PATH=path)[1]
        times = {"pread": [], "memmap": []}
        for _ in range(args.rounds):
            for name, code in (("pread", READ_PREAD), ("memmap", READ_MEMMAP)):
                started = time.perf_counter()
                exec(textwrap.dedent(code), {"PATH": path})
                times[name].append(time.perf_counter() - started)
        pread, memmap = (statistics.median(times[k]) for k in ("pread", "memmap"))
        print(f"   {rows:>9,} drawings: pread {rows / pread:>12,.0f}/s {pread_rss:6.0f} MiB | "
              f"memmap {rows / memmap:>12,.0f}/s {memmap_rss:6.0f} MiB | speed pread/memmap {memmap / pread:.2f}")

    print("\n2. one 7000x7000 RGB PNG (a drawn circle) through qd.data.images")
    png = work / "big.png"
    if not png.exists():
        from PIL import Image, ImageDraw

        image = Image.new("RGB", (7000, 7000), "white")
        ImageDraw.Draw(image).ellipse((1400, 1400, 5600, 5600), outline="black", width=60)
        image.save(png, compress_level=1)
    reduced = run(IMAGE, PATH=str(png), REDUCE=True)
    full = run(IMAGE, PATH=str(png), REDUCE=False)
    print(f"   reduced to WORK_PIXELS: {reduced[0]:.2f} s, {reduced[1]:.0f} MiB | full size: {full[0]:.2f} s, "
          f"{full[1]:.0f} MiB | memory ratio {full[1] / reduced[1]:.1f}x, time ratio {full[0] / reduced[0]:.1f}x")

    print("\n3. a checkpoint whose architecture says width=4000")
    import torch

    from qd.data.bitmaps import SplitSpec
    from qd.data.contract import DEFAULT_PREPROCESSING
    from qd.data.contract import CHECKPOINT_FORMAT as FORMAT

    checkpoint = work / "wide" / "best.pt"
    checkpoint.parent.mkdir(exist_ok=True)
    torch.save({"format": FORMAT, "classes": ["a", "b"], "preprocessing": dict(DEFAULT_PREPROCESSING),
                "arch": {"name": "compact", "kwargs": {"width": 4000, "dropout": 0.2, "stage3": 2}},
                "split": SplitSpec().to_dict(), "state_dict": {}}, checkpoint)
    seconds, rss = run(WIDE, PATH=str(checkpoint))
    print(f"   refused in {seconds:.2f} s at {rss:.0f} MiB peak RSS ({checkpoint.stat().st_size:,} byte file)")


if __name__ == "__main__":
    main()
