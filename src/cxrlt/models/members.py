"""Ensemble members: CNN + pooling head, a timm classifier (Swin-V2), and CaiT over a frozen CNN's feature map.

Each exposes ``weights``: where its pretrained weights came from (:class:`ResolvedWeights`), or None.
"""

from __future__ import annotations

import torch
from torch import nn

from cxrlt.errors import InvalidInputError
from cxrlt.models.heads import CSRAHead, MLPHead, PCAMHead
from cxrlt.weights import create_timm_model

#: Key prefixes under which a cxrlt member checkpoint keeps each timm network, so a trained member's ``best.pt``
#: can be the ``pretrained`` weight of another (transfer between datasets).
TRUNK_PREFIXES = ("trunk.", "cnn.trunk.")
CLASSIFIER_PREFIXES = ("net.",)
CAIT_PREFIXES = ("cait.",)


class PooledCNN(nn.Module):
    """A timm CNN trunk (ConvNeXt-V2 in the papers) with a PCAM, CSRA or MLP head; forward returns logits."""

    def __init__(self, backbone: str, num_classes: int, head: str = "pcam", in_chans: int = 1,
                 backbone_kwargs: dict | None = None, drop: float = 0.0, pretrained: str | None = None,
                 mirror: str | None = None, checkpoint_keys: dict | None = None):
        super().__init__()
        self.trunk, self.weights = create_timm_model(backbone, pretrained, mirror=mirror, prefixes=TRUNK_PREFIXES,
                                                     checkpoint_keys=checkpoint_keys,
                                                     num_classes=0, global_pool="", in_chans=in_chans,
                                                     **(backbone_kwargs or {}))
        # The trunk's own classifier head (ConvNeXt: a norm before its fc) is never run: the member's head reads
        # forward_features. Frozen, so that DDP does not wait for gradients it will never get.
        own_head = self.trunk.pretrained_cfg.get("classifier", "").rpartition(".")[0]
        for name, param in self.trunk.named_parameters():
            if own_head and name.startswith(f"{own_head}."):
                param.requires_grad_(False)
        features = self.trunk.num_features
        if head == "pcam":
            self.head = PCAMHead(features, num_classes, drop)
        elif head == "csra":
            self.head = CSRAHead(features, num_classes)
        elif head == "mlp":
            self.head = MLPHead(features, num_classes, drop=drop)
        else:
            raise InvalidInputError(f"unknown head {head!r}: choose pcam, csra or mlp")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk.forward_features(x)

    def from_features(self, feats: torch.Tensor) -> torch.Tensor:
        """Logits from a trunk feature map (the served pipeline computes the trunk once for pcam and cait)."""
        return self.head(feats)[0]

    def forward(self, x: torch.Tensor, return_maps: bool = False):
        logits, maps = self.head(self.features(x))
        return (logits, maps) if return_maps else logits


def shares_trunk(pcam: nn.Module, cait: nn.Module) -> bool:
    """Is ``cait``'s frozen CNN exactly the ``pcam`` member's network (the same trained checkpoint)? Then one
    trunk pass can serve both."""
    if not isinstance(pcam, PooledCNN) or not isinstance(cait, CaiTOverCNN):
        return False
    ours, theirs = pcam.trunk.state_dict(), cait.cnn.trunk.state_dict()
    return ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


class TimmClassifier(nn.Module):
    """Any timm classifier by name (Swin-V2 member, EfficientNet-B0 router)."""

    def __init__(self, arch: str, num_classes: int, in_chans: int = 1, pretrained: str | None = None,
                 mirror: str | None = None, checkpoint_keys: dict | None = None, **kwargs):
        super().__init__()
        self.net, self.weights = create_timm_model(arch, pretrained, mirror=mirror, prefixes=CLASSIFIER_PREFIXES,
                                                   checkpoint_keys=checkpoint_keys,
                                                   num_classes=num_classes, in_chans=in_chans, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CaiTOverCNN(nn.Module):
    """CaiT transformer over the feature map of a frozen, PCAM-pretrained CNN; CLS token -> linear logits.

    The CNN's (B, C, H, W) map is treated as an H x W "image" with patch size 1, so CaiT's patch embedding is the
    1x1 projection of the CNN features into the transformer width.
    """

    def __init__(self, cnn: PooledCNN, num_classes: int, feature_hw: int, cait_arch: str = "cait_xxs24_224",
                 cait_kwargs: dict | None = None, pretrained: str | None = None, mirror: str | None = None,
                 checkpoint_keys: dict | None = None):
        super().__init__()
        self.cnn = cnn
        for p in self.cnn.parameters():
            p.requires_grad_(False)
        self.cnn.eval()
        self.cait, self.weights = create_timm_model(cait_arch, pretrained, mirror=mirror, prefixes=CAIT_PREFIXES,
                                                    checkpoint_keys=checkpoint_keys,
                                                    img_size=feature_hw, patch_size=1, in_chans=cnn.trunk.num_features,
                                                    num_classes=num_classes, **(cait_kwargs or {}))

    def train(self, mode: bool = True):
        super().train(mode)
        self.cnn.eval()  # frozen: its normalisation statistics and dropout stay in inference mode
        return self

    def from_features(self, feats: torch.Tensor) -> torch.Tensor:
        """Logits from the frozen CNN's feature map (shared with the pcam member when it is the same network)."""
        return self.cait(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            feats = self.cnn.features(x)
        return self.cait(feats)
