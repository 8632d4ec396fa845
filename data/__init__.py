"""qd.data: the ground floor. Quick, Draw! bitmap files, the class list, the split
and the preprocessing that every other stage reads. Never imports torch.

Getting the files: sources.py (Google's bucket, a mirror URL or a folder), fetch.py
(verified, resumable downloads), cli.py (`qd-data fetch` / `qd-data list`)."""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("quickdraw-edge")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"
