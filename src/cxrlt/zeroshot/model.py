"""CLIP for radiographs: open_clip's CheXzero configuration (ViT-B/32, context 77) or a tiny conv-tower CLIP.

Grayscale inputs are repeated to 3 channels. Weights come only from a local checkpoint file (for example converted
CheXzero weights) or from scratch; nothing is downloaded.
"""

from __future__ import annotations

import math
from pathlib import Path

import open_clip
import torch
from torch import nn


def build_clip(cfg: dict) -> nn.Module:
    """``cfg['model']``: ``chexzero`` (open_clip ViT-B-32) or ``tiny`` (ModifiedResNet tower, from the profile)."""
    kind = cfg.get("model", "tiny")
    if kind == "chexzero":
        model = open_clip.create_model("ViT-B-32", pretrained=None)
    elif kind == "tiny":
        vision = open_clip.CLIPVisionCfg(image_size=int(cfg["image_size"]), **cfg.get("vision", {}))
        if isinstance(vision.layers, list):
            vision.layers = tuple(vision.layers)
        text = open_clip.CLIPTextCfg(vocab_size=49408, **cfg.get("text", {}))
        model = open_clip.CLIP(embed_dim=int(cfg.get("embed_dim", 128)), vision_cfg=vision, text_cfg=text)
    else:
        raise ValueError(f"unknown zero-shot model {kind!r}: choose chexzero or tiny")
    if cfg.get("checkpoint"):
        path = Path(cfg["checkpoint"])
        if not path.exists():
            raise FileNotFoundError(f"CLIP checkpoint {path} not found (weights are only loaded from local files)")
        open_clip.load_checkpoint(model, str(path))
    return model


def tokenize(texts: list[str], context_length: int) -> torch.Tensor:
    """open_clip's bundled BPE tokenizer (no network), truncated to the model's context length."""
    return open_clip.tokenizer.tokenize(texts, context_length=context_length)


class DualBranchCLIP(nn.Module):
    """CLIP plus the ASL branch's learned scale and bias on image-to-class-prompt cosines."""

    def __init__(self, clip: nn.Module, context_length: int):
        super().__init__()
        self.clip, self.context_length = clip, context_length
        self.asl_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.asl_bias = nn.Parameter(torch.tensor(-2.0))

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) normalised radiographs -> L2-normalised embeddings."""
        return nn.functional.normalize(self.clip.encode_image(x.expand(-1, 3, -1, -1)), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.clip.encode_text(tokens), dim=-1)

    def forward(self, x: torch.Tensor, texts: torch.Tensor | None = None, class_prompts: torch.Tensor | None = None):
        """Image embeddings, or (image, text, class-prompt) embeddings in one call (so DDP sees every tower)."""
        if texts is None:
            return self.encode_image(x)
        return self.encode_image(x), self.encode_text(texts), self.encode_text(class_prompts)


class ImageEncoder(nn.Module):
    """Standalone image tower for export: (B, 1, H, W) -> normalised embedding."""

    def __init__(self, model: DualBranchCLIP):
        super().__init__()
        self.visual = model.clip.visual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.visual(x.expand(-1, 3, -1, -1)), dim=-1)
