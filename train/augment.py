"""Per-batch geometric augmentation on tensors (torch only, no torchvision).

One random affine per drawing (small rotation, scale, shift), applied to the whole
batch in one `affine_grid` + `grid_sample` call. Randomness comes from an explicit
generator, so a run is reproducible and a resumed epoch replays exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AffineAugment:
    max_rotation_deg: float = 10.0
    max_scale: float = 0.10        # scale in [1 - s, 1 + s]
    max_shift: float = 0.10        # fraction of the image half-width (0.1 ~ 1.4 px at 28 px)

    def __call__(self, x: torch.Tensor, generator: torch.Generator, background: float = 0.0) -> torch.Tensor:
        """Warp (B, C, H, W) `x`; pixels shifted in from outside take the value `background`."""
        b = x.shape[0]
        u = torch.rand(b, 4, generator=generator, device="cpu") * 2 - 1  # uniform in [-1, 1]
        angle = u[:, 0] * math.radians(self.max_rotation_deg)
        scale = 1 + u[:, 1] * self.max_scale
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([
            torch.stack([cos, -sin, u[:, 2] * self.max_shift], dim=1),
            torch.stack([sin, cos, u[:, 3] * self.max_shift], dim=1),
        ], dim=1).to(device=x.device, dtype=x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        if background == 0.0:
            return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        warped = F.grid_sample(x - background, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return warped + background
