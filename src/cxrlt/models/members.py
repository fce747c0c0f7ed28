"""Ensemble members: CNN + pooling head, a timm classifier (Swin-V2), and CaiT over a frozen CNN's feature map."""

from __future__ import annotations

import timm
import torch
from torch import nn

from cxrlt.models.heads import CSRAHead, PCAMHead


class PooledCNN(nn.Module):
    """A timm CNN trunk (ConvNeXt-V2 in the papers) with a PCAM or CSRA head; forward returns logits."""

    def __init__(self, backbone: str, num_classes: int, head: str = "pcam", in_chans: int = 1,
                 backbone_kwargs: dict | None = None, drop: float = 0.0):
        super().__init__()
        self.trunk = timm.create_model(backbone, pretrained=False, num_classes=0, global_pool="", in_chans=in_chans,
                                       **(backbone_kwargs or {}))
        features = self.trunk.num_features
        if head == "pcam":
            self.head = PCAMHead(features, num_classes, drop)
        elif head == "csra":
            self.head = CSRAHead(features, num_classes)
        else:
            raise ValueError(f"unknown head {head!r}: choose pcam or csra")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk.forward_features(x)

    def forward(self, x: torch.Tensor, return_maps: bool = False):
        logits, maps = self.head(self.features(x))
        return (logits, maps) if return_maps else logits


class TimmClassifier(nn.Module):
    """Any timm classifier by name (Swin-V2 member, EfficientNet-B0 router)."""

    def __init__(self, arch: str, num_classes: int, in_chans: int = 1, **kwargs):
        super().__init__()
        self.net = timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CaiTOverCNN(nn.Module):
    """CaiT transformer over the feature map of a frozen, PCAM-pretrained CNN; CLS token -> linear logits.

    The CNN's (B, C, H, W) map is treated as an H x W "image" with patch size 1, so CaiT's patch embedding is the
    1x1 projection of the CNN features into the transformer width.
    """

    def __init__(self, cnn: PooledCNN, num_classes: int, feature_hw: int, cait_arch: str = "cait_xxs24_224",
                 cait_kwargs: dict | None = None):
        super().__init__()
        self.cnn = cnn
        for p in self.cnn.parameters():
            p.requires_grad_(False)
        self.cnn.eval()
        self.cait = timm.create_model(cait_arch, pretrained=False, img_size=feature_hw, patch_size=1,
                                      in_chans=cnn.trunk.num_features, num_classes=num_classes, **(cait_kwargs or {}))

    def train(self, mode: bool = True):
        super().train(mode)
        self.cnn.eval()  # frozen: its normalisation statistics and dropout stay in inference mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            feats = self.cnn.features(x)
        return self.cait(feats)
