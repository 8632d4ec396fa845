"""Peak resident memory of a snippet, run in a fresh Python: for tests that bound memory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork and exec, so a child of a big pytest
# process would report the parent's peak; VmHWM belongs to the new process's own memory.
_PRINT_PEAK = ("\nimport re\nprint(int(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read())"
               ".group(1)) / 1024)")


def peak_rss_mib(code: str, timeout: float = 600) -> float:
    """Peak resident memory (MiB) of a fresh Python that runs `code`."""
    out = subprocess.run([sys.executable, "-c", code + _PRINT_PEAK], capture_output=True, text=True,
                         timeout=timeout, cwd=REPO)
    assert out.returncode == 0, out.stderr
    return float(out.stdout.strip().splitlines()[-1])
