"""Test-time augmentation on batches of network inputs, merged by the mean of logits.

``flip`` = identity + horizontal flip; ``medium`` adds +-5 deg rotation, 1.1 zoom-in and 0.9 zoom-out.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

TTA_MODES = ("none", "flip", "medium")


def _affine(x: torch.Tensor, angle_deg: float = 0.0, zoom: float = 1.0) -> torch.Tensor:
    """Rotate/zoom about the centre; the border is filled with the value of a black pixel."""
    a = math.radians(angle_deg)
    theta = torch.tensor([[math.cos(a) / zoom, -math.sin(a) / zoom, 0.0],
                          [math.sin(a) / zoom, math.cos(a) / zoom, 0.0]], dtype=x.dtype, device=x.device)
    grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    black = x.amin(dim=(1, 2, 3), keepdim=True)
    return F.grid_sample(x - black, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + black


def tta_views(x: torch.Tensor, mode: str) -> list[torch.Tensor]:
    if mode not in TTA_MODES:
        raise ValueError(f"unknown TTA mode {mode!r}: choose one of {TTA_MODES}")
    views = [x]
    if mode in ("flip", "medium"):
        views.append(torch.flip(x, dims=[3]))
    if mode == "medium":
        views += [_affine(x, 5.0), _affine(x, -5.0), _affine(x, zoom=1.1), _affine(x, zoom=0.9)]
    return views


class TTAModel(nn.Module):
    """Wraps a logits model so that forward() returns the TTA-mean logits (exportable to ONNX for ``flip``)."""

    def __init__(self, model: nn.Module, mode: str = "flip"):
        super().__init__()
        self.model, self.mode = model, mode
        tta_views(torch.zeros(1, 1, 4, 4), mode)  # validate the mode early

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        views = tta_views(x, self.mode)
        return torch.stack([self.model(v) for v in views]).mean(0)
