"""The architectures, in one table. Every model maps float32 (B, 1, 28, 28) to logits."""

from __future__ import annotations

import inspect

import torch
from torch import nn

from qd.command import QDError
from qd.data.contract import ARCH_KWARG_BOUNDS, MAX_LABELS, MAX_PARAMETERS

from .defaults import ARCH_NAMES, DEFAULT_ARCH  # noqa: F401 (DEFAULT_ARCH is imported from here too)


class SeedCNN(nn.Module):
    """The original Lightning script's network, with its output bug fixed:
    it returns logits (no ReLU + softmax before cross-entropy)."""

    def __init__(self, num_classes: int, dropout: float = 0.2):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 30, 5), nn.ReLU(), nn.MaxPool2d(2),   # 28 -> 24 -> 12
            nn.Conv2d(30, 15, 3), nn.ReLU(), nn.MaxPool2d(2),  # 12 -> 10 -> 5
            nn.Dropout(dropout),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(15 * 5 * 5, 128), nn.ReLU(),
            nn.Linear(128, 50), nn.ReLU(),
            nn.Linear(50, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class CompactCNN(nn.Module):
    """The default: a small VGG-style CNN with batch norm and global average pooling.

    Three stages at 28, 14 and 7 px with `width`, 2x and 4x channels; `stage3` convs at 7 px."""

    def __init__(self, num_classes: int, width: int = 32, dropout: float = 0.2, stage3: int = 2):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _conv_bn(1, w), _conv_bn(w, w), nn.MaxPool2d(2),            # 28 -> 14
            _conv_bn(w, 2 * w), _conv_bn(2 * w, 2 * w), nn.MaxPool2d(2),  # 14 -> 7
            _conv_bn(2 * w, 4 * w), *(_conv_bn(4 * w, 4 * w) for _ in range(stage3 - 1)),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(4 * w, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


ARCHITECTURES = {
    "seed": SeedCNN,
    "compact": CompactCNN,
}
assert tuple(ARCHITECTURES) == ARCH_NAMES, "train/defaults.py names the architectures --help shows"


def build_model(arch: str, num_classes: int, /, **kwargs) -> nn.Module:
    """The network, after its description is checked: kwargs within qd.data.contract, and the
    parameter count (from a copy built on the meta device, which allocates nothing) within
    MAX_PARAMETERS. A checkpoint saying `width=4000` is refused here, before any weight exists."""
    try:
        cls = ARCHITECTURES[arch]
    except (KeyError, TypeError):
        raise QDError(f"unknown architecture {arch!r} (choose from {', '.join(ARCHITECTURES)})") from None
    if type(num_classes) is not int or not 1 <= num_classes <= MAX_LABELS:
        raise QDError(f"number of classes must be 1 to {MAX_LABELS:,}, got {num_classes!r}")
    check_arch_kwargs(arch, kwargs)
    with torch.device("meta"):
        params = count_parameters(cls(num_classes, **kwargs))
    if params > MAX_PARAMETERS:
        raise QDError(f"architecture {arch!r} with {_describe(kwargs)} and {num_classes:,} classes has "
                      f"{params:,} parameters, more than {MAX_PARAMETERS:,}; refused")
    return cls(num_classes, **kwargs)


def check_arch_kwargs(arch: str, kwargs: dict) -> None:
    """Each keyword must be a parameter of the architecture, of its default's type, within its bounds."""
    params = inspect.signature(ARCHITECTURES[arch]).parameters
    for name, value in kwargs.items():
        if name not in params or name == "num_classes" or name not in ARCH_KWARG_BOUNDS:
            raise QDError(f"architecture {arch!r} has no argument {_short(name)}")
        low, high = ARCH_KWARG_BOUNDS[name]
        if isinstance(params[name].default, int):
            ok = type(value) is int
        else:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not low <= value <= high:  # NaN fails the comparison too
            raise QDError(f"architecture argument {name}={_short(value)} is not a "
                          f"{'whole ' if isinstance(params[name].default, int) else ''}number in {low}..{high}")


def _short(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _describe(kwargs: dict) -> str:
    return ", ".join(f"{k}={_short(v)}" for k, v in kwargs.items()) or "default arguments"


def full_kwargs(arch: str, kwargs: dict) -> dict:
    """`kwargs` with every default filled in, so a checkpoint still describes its network
    exactly after a default changes here."""
    params = inspect.signature(ARCHITECTURES[arch]).parameters
    defaults = {name: p.default for name, p in params.items() if p.default is not inspect.Parameter.empty}
    return {**defaults, **kwargs}


def head_name(model: nn.Module) -> str:
    """The output layer's module name (its rows are the classes): the network's last Linear."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise QDError(f"{type(model).__name__} has no Linear output layer")
    return names[-1]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
