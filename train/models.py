"""The architectures, in one table (`ARCHITECTURES`). Every model maps float32 (B, 1, 28, 28) to logits.

A row is the network and the bounds of each of its keyword arguments: a checkpoint (or
TrainConfig.arch_kwargs) may set only those, within them, and `build_model` checks that before any
weight exists, for training, `--resume` and qd-export alike. qd-train's --help lists the names
without loading torch, from qd.train.cli.ARCH_NAMES, which this table must match.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn

from qd.command import QDError
from qd.data.contract import MAX_LABELS, MAX_PARAMETERS

from .cli import ARCH_NAMES, short_repr


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


@dataclass(frozen=True)
class Architecture:
    network: type[nn.Module]
    # every keyword argument of the network: (smallest, largest), ints where it takes whole numbers
    bounds: dict[str, tuple[float, float]]

    def __post_init__(self):
        defaults = {name: p.default for name, p in inspect.signature(self.network).parameters.items()
                    if p.default is not inspect.Parameter.empty}
        assert set(defaults) == set(self.bounds), f"{self.network.__name__}: give every keyword argument its bounds"
        assert all(type(self.bounds[name][0]) is type(default) for name, default in defaults.items()), \
            f"{self.network.__name__}: a bound is not of its argument's type"


DROPOUT_BOUNDS = (0.0, 0.95)
ARCHITECTURES = {
    "seed": Architecture(SeedCNN, {"dropout": DROPOUT_BOUNDS}),
    "compact": Architecture(CompactCNN, {"width": (1, 256), "dropout": DROPOUT_BOUNDS, "stage3": (1, 8)}),
}
assert tuple(ARCHITECTURES) == ARCH_NAMES, "qd.train.cli.ARCH_NAMES names the architectures --help shows"


def build_model(arch: str, num_classes: int, /, **kwargs) -> nn.Module:
    """The network, after its description is checked: kwargs within its row's bounds, and the
    parameter count (from a copy built on the meta device, which allocates nothing) within
    MAX_PARAMETERS. A checkpoint saying `width=4000` is refused here, before any weight exists."""
    try:
        cls = ARCHITECTURES[arch].network
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
    bounds = ARCHITECTURES[arch].bounds
    for name, value in kwargs.items():
        if name not in bounds:
            raise QDError(f"architecture {arch!r} has no argument {short_repr(name)}")
        low, high = bounds[name]
        whole = isinstance(low, int)
        if whole:
            ok = type(value) is int
        else:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not low <= value <= high:  # NaN fails the comparison too
            raise QDError(f"architecture argument {name}={short_repr(value)} is not a "
                          f"{'whole ' if whole else ''}number in {low}..{high}")


def _describe(kwargs: dict) -> str:
    return ", ".join(f"{k}={short_repr(v)}" for k, v in kwargs.items()) or "default arguments"


def full_kwargs(arch: str, kwargs: dict) -> dict:
    """`kwargs` with every default filled in, so a checkpoint still describes its network
    exactly after a default changes here."""
    params = inspect.signature(ARCHITECTURES[arch].network).parameters
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
