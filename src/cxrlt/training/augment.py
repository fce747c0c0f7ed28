"""Training augmentations for [0, 1] grayscale radiographs, seeded per sample (OpenCV, no global RNG).

Horizontal flip p 0.5, rotation +-20 deg, scale 0.9-1.1, translation <= 5 %, CLAHE p 0.3 (the projection-aware
solution's settings).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    flip_p: float = 0.5
    rotate_deg: float = 20.0
    scale: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.05
    clahe_p: float = 0.3
    clahe_clip: float = 2.0

    @classmethod
    def from_dict(cls, d: dict | None) -> AugmentConfig:
        d = dict(d or {})
        if "scale" in d:
            d["scale"] = tuple(d["scale"])
        return cls(**d)


def augment(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig, allow_flip: bool = True) -> np.ndarray:
    """One random affine + optional CLAHE; ``allow_flip=False`` for targets where left/right matters."""
    h, w = img.shape
    if allow_flip and rng.random() < cfg.flip_p:
        img = img[:, ::-1]
    angle = rng.uniform(-cfg.rotate_deg, cfg.rotate_deg)
    scale = rng.uniform(*cfg.scale)
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    m[:, 2] += rng.uniform(-cfg.translate, cfg.translate, 2) * (w, h)
    img = cv2.warpAffine(np.ascontiguousarray(img, np.float32), m, (w, h), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if rng.random() < cfg.clahe_p:
        tile = max(2, min(8, h // 16))
        u16 = np.round(np.clip(img, 0, 1) * 65535).astype(np.uint16)
        img = cv2.createCLAHE(cfg.clahe_clip, (tile, tile)).apply(u16).astype(np.float32) / 65535.0
    return img
