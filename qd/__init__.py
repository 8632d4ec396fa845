"""quickdraw-edge: classify Quick, Draw! doodles with an exported model, from Python.

    from qd import Classifier
    clf = Classifier("artifacts/exports/demo")        # a model.onnx or an export folder
    print(clf.predict("my-drawings/cat.png")[0].label)

The stages are subpackages (qd.data, qd.train, qd.export, qd.infer, qd.evaluate); what they all
share sits beside them: qd.command (errors, consoles, progress), qd.options (the commands'
vocabulary), qd.files (atomic writes, safe reads), qd.machine (the CPU). The names here load on
first use, so `import qd.data` (every command) stays as light as it was. No torch.
"""

_EXPORTS = {"Classifier": "qd.infer.classifier", "Prediction": "qd.infer.classifier", "Guess": "qd.infer.classifier"}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name == "__version__":
        # On first use: importlib.metadata costs every command's start, and --help does not need it.
        from importlib.metadata import PackageNotFoundError, version

        try:
            value = version("quickdraw-edge")
        except PackageNotFoundError:  # running from a source tree that is not installed
            value = "0.0.0+source"
        globals()["__version__"] = value
        return value
    if name not in _EXPORTS:
        raise AttributeError(f"module 'qd' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
