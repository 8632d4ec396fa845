"""qd.data: the ground floor. Quick, Draw! bitmap files, the class list, the split
and the preprocessing that every other stage reads. Never imports torch.

Getting the files: sources.py (Google's bucket, a mirror URL or a folder), fetch.py
(verified, resumable downloads), cli.py (`qd-data fetch` / `qd-data list`)."""



def __getattr__(name: str) -> str:
    # __version__ on first use: importlib.metadata costs every command's start, and --help does not need it.
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        value = version("quickdraw-edge")
    except PackageNotFoundError:  # running from a source tree that is not installed
        value = "0.0.0+source"
    globals()["__version__"] = value
    return value
