"""The edge install has no torch: qd.data (and qd.infer) must import and work without it.

Each check runs in a fresh interpreter whose import system refuses `torch` (a finder
first on sys.meta_path), so an import hidden anywhere, even inside a function that the
check calls, fails loudly.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

BLOCK_TORCH = textwrap.dedent("""
    import importlib.abc, sys

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"torch is not installed in the edge install (import of {name!r})")
            return None

    sys.meta_path.insert(0, NoTorch())
    for name in [m for m in sys.modules if m == "torch" or m.startswith("torch.")]:
        del sys.modules[name]
""")


def run_without_torch(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + textwrap.dedent(code)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_the_blocker_really_blocks_torch(tmp_path):
    result = run_without_torch("import torch", tmp_path)
    assert result.returncode != 0 and "torch is not installed" in result.stderr


@pytest.mark.parametrize("package", ["qd.data", "qd.infer"])
def test_every_module_imports_without_torch(package, tmp_path):
    result = run_without_torch(f"""
        import importlib, pkgutil, sys
        package = importlib.import_module({package!r})
        names = [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
        for name in names:
            importlib.import_module(name)
        assert "torch" not in sys.modules
        print("imported", len(names), "modules:", ", ".join(sorted(names)))
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    if package == "qd.data":
        assert "qd.data.cli" in result.stdout and "qd.data.fetch" in result.stdout


def test_qd_data_cli_works_without_torch(shared_bitmaps, tmp_path):
    result = run_without_torch(f"""
        import sys
        from qd.data.cli import main
        sys.argv = ["qd-data", "fetch", "cat", "dog", "-n", "20", "--source", {str(shared_bitmaps)!r}, "--out", "data"]
        try:
            main()
        except SystemExit as exc:
            assert not exc.code, exc.code
        sys.argv = ["qd-data", "list", "data"]
        try:
            main()
        except SystemExit as exc:
            assert not exc.code, exc.code
        from qd.data.bitmaps import BitmapDataset, SplitSpec
        ds = BitmapDataset("data")
        parts = ds.split_indices(SplitSpec())
        assert sum(len(p) for p in parts.values()) == 40
        assert "torch" not in sys.modules
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "2 of 2 categories" in result.stdout and "40" in result.stdout
