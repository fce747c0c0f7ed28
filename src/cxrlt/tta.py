"""Test-time augmentation on batches of network inputs, merged by the mean of logits.

``flip`` = identity + horizontal flip; ``medium`` adds +-5 deg rotation, 1.1 zoom-in and 0.9 zoom-out.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cxrlt.errors import InvalidInputError

TTA_MODES = ("none", "flip", "medium")


def affine_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``F.affine_grid(theta[None], (1, C, H, W), align_corners=False)`` from plain tensor ops, so the rotations and
    zooms of the ``medium`` TTA export to ONNX opset 17 (ONNX's AffineGrid needs opset 20)."""
    xs = (torch.arange(width, dtype=theta.dtype, device=theta.device) * 2 + 1) / width - 1
    ys = (torch.arange(height, dtype=theta.dtype, device=theta.device) * 2 + 1) / height - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    base = torch.stack([gx, gy, torch.ones_like(gx)], dim=-1)  # (H, W, 3) homogeneous (x, y, 1)
    return (base @ theta.T)[None]  # (1, H, W, 2)


def _affine(x: torch.Tensor, angle_deg: float = 0.0, zoom: float = 1.0) -> torch.Tensor:
    """Rotate/zoom about the centre; the border is filled with the value of a black pixel."""
    a = math.radians(angle_deg)
    theta = torch.tensor([[math.cos(a) / zoom, -math.sin(a) / zoom, 0.0],
                          [math.sin(a) / zoom, math.cos(a) / zoom, 0.0]], dtype=x.dtype, device=x.device)
    grid = affine_grid(theta, x.shape[-2], x.shape[-1]).expand(x.shape[0], -1, -1, -1)
    black = x.amin(dim=(1, 2, 3), keepdim=True)
    return F.grid_sample(x - black, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + black


def tta_views(x: torch.Tensor, mode: str) -> list[torch.Tensor]:
    if mode not in TTA_MODES:
        raise InvalidInputError(f"unknown TTA mode {mode!r}: choose one of {TTA_MODES}")
    views = [x]
    if mode in ("flip", "medium"):
        views.append(torch.flip(x, dims=[3]))
    if mode == "medium":
        views += [_affine(x, 5.0), _affine(x, -5.0), _affine(x, zoom=1.1), _affine(x, zoom=0.9)]
    return views


TTA_MERGES = ("logit", "probability")


class TTAModel(nn.Module):
    """Wraps a logits model so that forward() returns the TTA-merged logits (exportable to ONNX).

    ``merge="logit"`` averages logits (seed 000); ``merge="probability"`` averages sigmoid probabilities as HPH
    does, p = mean_t sigmoid(z_t), and returns logit(p), so everything downstream stays in logit space and
    sigmoid(output) is exactly HPH's TTA probability.
    """

    def __init__(self, model: nn.Module, mode: str = "flip", merge: str = "logit"):
        super().__init__()
        if merge not in TTA_MERGES:
            raise InvalidInputError(f"unknown TTA merge {merge!r}: choose one of {TTA_MERGES}")
        self.model, self.mode, self.merge = model, mode, merge
        tta_views(torch.zeros(1, 1, 4, 4), mode)  # validate the mode early

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return merge_tta(torch.stack([self.model(v) for v in tta_views(x, self.mode)]), self.merge)


def merge_tta(outs: torch.Tensor, merge: str) -> torch.Tensor:
    """``(T, B, K)`` logits of the TTA views -> ``(B, K)`` merged logits (mean logit, or logit of mean sigmoid)."""
    if merge == "logit":
        return outs.mean(0)
    p = torch.sigmoid(outs).mean(0).clamp(1e-7, 1 - 1e-7)
    return torch.log(p) - torch.log1p(-p)


class TrunkTTA(nn.Module):
    """The shared half of a trunk-sharing pair: ``(B, C, S, S)`` -> ``(B, T, F, h, w)``, the CNN feature map of each
    TTA view stacked on axis 1 (computed once, read by every member whose network is this trunk)."""

    def __init__(self, cnn: nn.Module, mode: str = "flip"):
        super().__init__()
        self.cnn, self.mode = cnn, mode
        tta_views(torch.zeros(1, 1, 4, 4), mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.cnn.features(v) for v in tta_views(x, self.mode)], dim=1)


class FeatureHeadTTA(nn.Module):
    """The per-member half: ``(B, T, F, h, w)`` trunk features -> ``(B, K)`` TTA-merged logits through the member's
    ``from_features``; together with :class:`TrunkTTA` it equals ``TTAModel(member)``."""

    def __init__(self, member: nn.Module, merge: str = "logit"):
        super().__init__()
        if merge not in TTA_MERGES:
            raise InvalidInputError(f"unknown TTA merge {merge!r}: choose one of {TTA_MERGES}")
        self.member, self.merge = member, merge

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return merge_tta(torch.stack([self.member.from_features(feats[:, t]) for t in range(feats.shape[1])]),
                         self.merge)
