"""Heads over a CNN feature map: PCAM (probabilistic class activation map), the CSRA-style variant, and an MLP."""

from __future__ import annotations

import torch
from torch import nn


class PCAMHead(nn.Module):
    """PCAM pooling with one shared 1x1 classifier (Ye et al., jfhealthcare/Chexpert).

    For each class c the classifier's own map gives P_c = sigmoid(logit_map_c); features are pooled with the
    normalised weights P_c / sum(P_c), layer-normalised (the reference uses BatchNorm; LayerNorm keeps the result
    independent of the per-rank batch under DDP) and scored again by the same classifier row. The per-class
    logit maps localise the finding.
    """

    def __init__(self, in_features: int, num_classes: int, drop: float = 0.0):
        super().__init__()
        self.classifier = nn.Conv2d(in_features, num_classes, kernel_size=1)
        self.norm = nn.LayerNorm(in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self.classifier(feats)  # (B, K, H, W)
        prob = torch.sigmoid(maps)
        weights = prob / prob.sum(dim=(2, 3), keepdim=True).clamp_min(1e-6)
        pooled = torch.einsum("bkhw,bchw->bkc", weights, feats)  # per-class feature vector
        pooled = self.drop(self.norm(pooled))
        w = self.classifier.weight.flatten(1)  # (K, C): the same classifier scores the pooled features
        logits = (pooled * w.unsqueeze(0)).sum(-1) + self.classifier.bias
        return logits, maps


class CSRAHead(nn.Module):
    """The top-1 solution's "CSRA" head: logit_gap + lambda * attention-pooled logit (shared linear weights)."""

    def __init__(self, in_features: int, num_classes: int, lam: float = 0.1):
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)
        self.attention = nn.Conv2d(in_features, num_classes, kernel_size=1, bias=False)
        self.lam = lam

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logit_gap = self.fc(feats.mean(dim=(2, 3)))
        maps = self.attention(feats)
        att = torch.softmax(maps.flatten(2), dim=-1)  # (B, K, HW)
        pooled = torch.einsum("bkn,bcn->bkc", att, feats.flatten(2))
        logit_att = (pooled * self.fc.weight.unsqueeze(0)).sum(-1) + self.fc.bias
        return logit_gap + self.lam * logit_att, maps


class MLPHead(nn.Module):
    """HPH's "standard MLP head": global average pooling -> Linear -> GELU -> dropout -> Linear.

    The hidden width is not stated in the paper (our choice: the trunk width, capped at 1024). The maps returned
    for interface parity are the second layer applied at every location (class evidence per position).
    """

    def __init__(self, in_features: int, num_classes: int, hidden: int | None = None, drop: float = 0.0):
        super().__init__()
        hidden = hidden or min(in_features, 1024)
        self.fc1, self.act, self.drop = nn.Linear(in_features, hidden), nn.GELU(), nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.fc2(self.drop(self.act(self.fc1(feats.mean(dim=(2, 3))))))
        local = self.fc2(self.act(self.fc1(feats.permute(0, 2, 3, 1)))).permute(0, 3, 1, 2)
        return logits, local
