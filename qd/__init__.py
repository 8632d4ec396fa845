"""quickdraw-edge: classify Quick, Draw! doodles with an exported model, from Python.

    from qd import Classifier
    clf = Classifier("artifacts/exports/demo")        # a model.onnx or an export folder
    print(clf.predict("my-drawings/cat.png")[0].label)

The stages are subpackages (qd.data, qd.train, qd.export, qd.infer, qd.evaluate); the names
here load on first use, so `import qd.data` (every command) stays as light as it was. No torch.
"""

_EXPORTS = {"Classifier": "qd.infer.classifier", "Prediction": "qd.infer.classifier", "Guess": "qd.infer.classifier"}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name == "__version__":
        from qd.data import __version__

        return __version__
    if name not in _EXPORTS:
        raise AttributeError(f"module 'qd' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
