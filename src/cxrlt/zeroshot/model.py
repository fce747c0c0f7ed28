"""CLIP for radiographs: any open_clip architecture (``ViT-B-32-quickgelu`` for CheXzero, ``ViT-L-14`` ...) or a
tiny conv-tower CLIP for CPU runs.

Inputs are (B, C, H, W) from the zero-shot preprocessing contract; a 1-channel contract is repeated to the 3 channels
the towers expect. Weights come from the profile's ``pretrained`` spec (see :mod:`cxrlt.weights`); nothing is
downloaded at run time except through a configured hub cache or mirror.
"""

from __future__ import annotations

import logging
import math

import open_clip
import torch
from torch import nn

from cxrlt.errors import InvalidInputError
from cxrlt.weights import ResolvedWeights, load_clip_weights


def build_clip(cfg: dict, weights: bool = False, mirror: str | None = None) -> tuple[nn.Module, ResolvedWeights | None]:
    """``cfg['model']``: ``tiny`` (ModifiedResNet tower sized by the profile) or an open_clip model name.

    With ``weights``, the configured ``pretrained`` checkpoint is loaded (strictly: every key must match).
    """
    kind = cfg.get("model", "tiny")
    if kind == "tiny":
        vision = open_clip.CLIPVisionCfg(image_size=int(cfg["image_size"]), **cfg.get("vision", {}))
        if isinstance(vision.layers, list):  # 4 stage depths: ModifiedResNet; one int: ViT
            vision.layers = tuple(vision.layers)
        text = open_clip.CLIPTextCfg(vocab_size=49408, **cfg.get("text", {}))
        model = open_clip.CLIP(embed_dim=int(cfg.get("embed_dim", 128)), vision_cfg=vision, text_cfg=text)
    elif kind in open_clip.list_models():
        root = logging.getLogger()
        level, root.level = root.level, logging.ERROR  # open_clip logs its steps (and "no weights") on the root logger
        try:
            model = open_clip.create_model(kind, pretrained=None, device=torch.get_default_device())
        finally:
            root.setLevel(level)
    else:
        raise InvalidInputError(f"unknown zero-shot model {kind!r}: 'tiny' or an open_clip model name")
    resolved = None
    if weights and cfg.get("pretrained"):
        resolved = load_clip_weights(model, cfg["pretrained"], None if kind == "tiny" else kind, mirror,
                                     cfg.get("checkpoint_keys"))
    return model, resolved


def tokenize(texts: list[str], context_length: int) -> torch.Tensor:
    """open_clip's bundled BPE tokenizer (no network), truncated to the model's context length."""
    return open_clip.tokenizer.tokenize(texts, context_length=context_length)


class DualBranchCLIP(nn.Module):
    """CLIP plus the ASL branch's learned scale and bias on image-to-class-prompt cosines: class logits are
    exp(asl_scale) * cos + asl_bias, starting at the profile's ``asl_scale_init`` and ``asl_bias_init``."""

    def __init__(self, clip: nn.Module, context_length: int, asl_scale_init: float = 10.0,
                 asl_bias_init: float = -2.0):
        super().__init__()
        self.clip, self.context_length = clip, context_length
        self.asl_scale = nn.Parameter(torch.tensor(math.log(asl_scale_init)))
        self.asl_bias = nn.Parameter(torch.tensor(float(asl_bias_init)))

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) normalised radiographs (C = 1 or 3) -> L2-normalised embeddings."""
        return nn.functional.normalize(self.clip.encode_image(x.expand(-1, 3, -1, -1)), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.clip.encode_text(tokens), dim=-1)

    def forward(self, x: torch.Tensor, texts: torch.Tensor | None = None, class_prompts: torch.Tensor | None = None):
        """Image embeddings, or (image, text, class-prompt) embeddings in one call (so DDP sees every tower)."""
        if texts is None:
            return self.encode_image(x)
        return self.encode_image(x), self.encode_text(texts), self.encode_text(class_prompts)


class ImageEncoder(nn.Module):
    """Standalone image tower for export: (B, C, H, W) normalised radiographs -> normalised embedding."""

    def __init__(self, model: DualBranchCLIP):
        super().__init__()
        self.visual = model.clip.visual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.visual(x.expand(-1, 3, -1, -1)), dim=-1)
