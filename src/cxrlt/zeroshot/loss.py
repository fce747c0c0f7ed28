"""Dual-branch loss: CLIP contrastive loss with soft targets + alpha * ASL on image-to-class-prompt similarities.

Label-synthesised reports repeat (every normal image gets a normal text), so images whose known-label sets are
identical are treated as matches: one-hot InfoNCE would push apart identical texts and fight itself. Under DDP the
features are gathered with open_clip's ``gather_features`` so every rank sees the global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.loss import gather_features

from cxrlt.losses import AsymmetricLoss


def soft_clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                   groups: torch.Tensor, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """Symmetric cross-entropy against row-normalised "same label set" targets (features already normalised)."""
    if world_size > 1:
        image_features, text_features = gather_features(image_features, text_features, gather_with_grad=True,
                                                        rank=rank, world_size=world_size)
        gathered = [torch.zeros_like(groups) for _ in range(world_size)]
        torch.distributed.all_gather(gathered, groups)
        groups = torch.cat(gathered)
    scale = logit_scale.exp().clamp(max=100)
    logits = scale * image_features @ text_features.T
    same = (groups[:, None] == groups[None, :]).float()
    targets = same / same.sum(dim=1, keepdim=True)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


class DualBranchLoss(torch.nn.Module):
    """Seed 000 eq. 2: L = L_clip + alpha * L_asl, with L_asl the ASL *averaged* over the batch and the K classes,
    so alpha keeps the paper's balance whatever K is."""

    def __init__(self, alpha: float = 1.5, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05):
        super().__init__()
        self.alpha = alpha
        self.asl = AsymmetricLoss(gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip, reduction="sum")

    def forward(self, image_features, text_features, class_features, logit_scale, asl_scale, asl_bias, targets, groups,
                rank: int = 0, world_size: int = 1) -> tuple[torch.Tensor, dict]:
        contrastive = soft_clip_loss(image_features, text_features, logit_scale, groups, rank, world_size)
        if self.alpha == 0:
            return contrastive, {"contrastive": contrastive.item(), "asl": 0.0}
        class_logits = asl_scale.exp() * image_features @ class_features.T + asl_bias
        asl = self.asl(class_logits, targets) / targets.numel()  # mean over images and classes
        return contrastive + self.alpha * asl, {"contrastive": contrastive.item(), "asl": asl.item()}
