"""Build hook: a wheel carries onnxruntime-web's runtime files, so `pip install .` gives a working qd-demo.

The files are package data (pyproject.toml) from infer/web/node_modules; when a build finds them
missing it runs `npm ci` for them (the versions pinned in infer/web/package-lock.json). Without npm
the build goes on without them, says so, and qd-demo then names what is missing."""

import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

WEB = Path(__file__).resolve().parent / "infer" / "web"
RUNTIME_MARKER = WEB / "node_modules" / "onnxruntime-web" / "dist" / "ort.wasm.min.mjs"


class BuildWithWebRuntime(build_py):
    def run(self):
        if not RUNTIME_MARKER.is_file():
            npm = shutil.which("npm")
            if npm:
                subprocess.run([npm, "ci", "--prefix", str(WEB), "--ignore-scripts", "--no-audit", "--no-fund"],
                               check=True)
            else:
                print(f"warning: npm not found, so the wheel has no onnxruntime-web runtime ({RUNTIME_MARKER.name}); "
                      "qd-demo will need QD_ORT_WEB_DIST")
        super().run()


setup(cmdclass={"build_py": BuildWithWebRuntime})
