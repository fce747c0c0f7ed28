"""Imbalance-aware multi-label losses: BCE, ASL (and class-weighted ASL), Distribution-Balanced loss.

All take raw logits ``(B, C)`` and binary targets. ``reduction="sum"`` is the reference ASL's total sum; the trainer
divides by the batch size so that results do not depend on how a global batch is split across DDP ranks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cxrlt.errors import InvalidInputError


class AsymmetricLoss(nn.Module):
    """ASL (Ridnik et al.; Alibaba-MIIL/ASL reference semantics).

    p = sigmoid(x); negatives use the shifted probability p_m = max(p - clip, 0) (``xs_neg = min(1 - p + clip, 1)``);
    loss = -sum[(y log p (1-p)^g+ + (1-y) log(1-p_m) p_m^g-) * w_c], with optional per-class weights w_c.
    """

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 1.0, clip: float = 0.05, eps: float = 1e-8,
                 reduction: str = "sum", class_weights: Sequence[float] | torch.Tensor | None = None):
        super().__init__()
        if reduction not in ("sum", "mean"):
            raise InvalidInputError("reduction must be 'sum' or 'mean'")
        self.gamma_neg, self.gamma_pos, self.clip, self.eps, self.reduction = gamma_neg, gamma_pos, clip, eps, reduction
        weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weights, persistent=False)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        y = targets.to(logits.dtype)
        p = torch.sigmoid(logits)
        xs_neg = 1 - p
        if self.clip > 0:
            xs_neg = (xs_neg + self.clip).clamp(max=1)
        loss = y * torch.log(p.clamp(min=self.eps)) + (1 - y) * torch.log(xs_neg.clamp(min=self.eps))
        pt = p * y + xs_neg * (1 - y)
        gamma = self.gamma_pos * y + self.gamma_neg * (1 - y)
        loss = loss * torch.pow(1 - pt, gamma)
        if self.class_weights is not None:
            loss = loss * self.class_weights.to(loss.device)
        return -(loss.sum() if self.reduction == "sum" else loss.mean())


class DistributionBalancedLoss(nn.Module):
    """Distribution-Balanced loss as used by the CXR-LT 2026 top-1 solution (production variant).

    w_c = (1 - beta) / (1 - beta^n_c), normalised to mean 1; margin m_c = margin * minmax(1 / w_c), so head classes
    get the largest margin; z' = z - y * m; loss = mean(BCE(z', y) * w_c^power).
    """

    def __init__(self, class_counts: Sequence[int], beta: float = 0.9999, margin: float = 0.2, power: float = 0.5):
        super().__init__()
        w = class_balanced_weights(class_counts, beta).double()
        inv = 1 / w
        span = (inv.max() - inv.min()).clamp_min(1e-12)
        self.register_buffer("weights", w.float(), persistent=False)
        self.register_buffer("margins", (margin * (inv - inv.min()) / span).float(), persistent=False)
        self.power = power

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        y = targets.to(logits.dtype)
        shifted = logits - y * self.margins.to(logits.device)
        bce = F.binary_cross_entropy_with_logits(shifted, y, reduction="none")
        return (bce * self.weights.to(logits.device).pow(self.power)).mean()


def class_balanced_weights(class_counts: Sequence[int], beta: float = 0.9999) -> torch.Tensor:
    """Effective-number weights (Cui et al.), mean 1: the per-class weights of class-weighted ASL."""
    counts = torch.as_tensor(class_counts, dtype=torch.float64).clamp_min(1)
    w = (1 - beta) / (1 - torch.pow(torch.tensor(beta, dtype=torch.float64), counts))
    return (w / w.mean()).float()


LOSSES = ("bce", "asl", "asl_weighted", "db")


def build_loss(name: str, class_counts: Sequence[int] | None = None, **kwargs) -> nn.Module:
    """Loss by name; ``asl_weighted`` and ``db`` need the training positive count of each class."""
    if name == "bce":
        return nn.BCEWithLogitsLoss()
    if name == "asl":
        return AsymmetricLoss(**kwargs)
    if name in ("asl_weighted", "db") and class_counts is None:
        raise InvalidInputError(f"loss {name!r} needs class_counts")
    if name == "asl_weighted":
        return AsymmetricLoss(class_weights=class_balanced_weights(class_counts), **kwargs)
    if name == "db":
        return DistributionBalancedLoss(class_counts, **kwargs)
    raise InvalidInputError(f"unknown loss {name!r}: choose one of {LOSSES}")
