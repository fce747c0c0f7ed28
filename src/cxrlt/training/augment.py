"""Training augmentations for [0, 1] grayscale radiographs: per image in the loader (OpenCV), or per batch on the
training device (``train.augment_on: device``), the same transformation either way.

Horizontal flip p 0.5, rotation +-20 deg, scale 0.9-1.1, translation <= 5 %, CLAHE p 0.3 (the projection-aware
solution's settings). CLAHE equalises a 256-bin histogram per tile, as albumentations' CLAHE (the papers' library)
does: OpenCV's CLAHE of a 16-bit image has 65,536 bins, so its clip limit (clip x tile pixels / bins) falls below
one count per bin, which is a different, near-global equalisation, and it took 14 ms per 512 px image against
1.8 ms (``bench/loader_costs.py``, docs/performance.md). On the device, kornia's CLAHE is the same 256-bin
algorithm (within 0.03 of OpenCV's on the same image, tested) and the affine is one ``grid_sample`` for the batch
with OpenCV's geometry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F


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


def clahe_tiles(size: int) -> int:
    """Tiles per side: 8 (the papers') for 128 px and up, fewer for the small images of the CPU profiles."""
    return max(2, min(8, size // 16))


def clahe(img: np.ndarray, clip: float, tiles: int) -> np.ndarray:
    """OpenCV's CLAHE of a [0, 1] image over 256 histogram bins (the image quantised to 8 bits, as albumentations
    requires), back to float32 [0, 1]."""
    u8 = np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)
    return cv2.createCLAHE(clip, (tiles, tiles)).apply(u8).astype(np.float32) / 255.0


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
        img = clahe(img, cfg.clahe_clip, clahe_tiles(h))
    return img


def sampling_grid_matrices(flip: torch.Tensor, angle_deg: torch.Tensor, scale: torch.Tensor,
                           shift_px: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, 2, 3) ``affine_grid`` matrices (``align_corners=False``) that sample what ``cv2.warpAffine`` writes for
    ``cv2.getRotationMatrix2D((w/2, h/2), angle, scale)`` plus ``shift_px``, after an optional horizontal flip.

    In pixel coordinates (centres at integers) the output pixel p reads the input at F(M^-1 p), F the flip
    x -> w - 1 - x; ``affine_grid`` works in [-1, 1] coordinates, u = (2x + 1) / w - 1, so the matrix is
    N F M^-1 N^-1."""
    b = len(angle_deg)
    a = torch.deg2rad(angle_deg.double())
    alpha, beta = scale.double() * torch.cos(a), scale.double() * torch.sin(a)
    cx, cy = w / 2, h / 2
    m = torch.zeros(b, 3, 3, dtype=torch.float64)
    m[:, 0, 0], m[:, 0, 1] = alpha, beta
    m[:, 0, 2] = (1 - alpha) * cx - beta * cy + shift_px[:, 0].double()
    m[:, 1, 0], m[:, 1, 1] = -beta, alpha
    m[:, 1, 2] = beta * cx + (1 - alpha) * cy + shift_px[:, 1].double()
    m[:, 2, 2] = 1
    f = torch.eye(3, dtype=torch.float64).repeat(b, 1, 1)
    f[flip.bool(), 0, 0], f[flip.bool(), 0, 2] = -1.0, w - 1.0
    n = torch.tensor([[2 / w, 0, 1 / w - 1], [0, 2 / h, 1 / h - 1], [0, 0, 1]], dtype=torch.float64)
    return (n @ f @ torch.linalg.inv(m) @ torch.linalg.inv(n))[:, :2]


@dataclass(frozen=True)
class DeviceAugment:
    """The loader's augmentation for a whole batch on its device: [0, 1] images (B, 1, S, S) in, the network's
    normalised input (B, C, S, S) out. Parameters are drawn on the host from (seed, epoch, step, rank), so a run is
    repeatable and DDP ranks draw differently."""

    cfg: AugmentConfig
    channels: int
    mean: Sequence[float]
    std: Sequence[float]
    seed: int = 0
    allow_flip: bool = True

    def parameters(self, b: int, epoch: int, step: int, rank: int = 0) -> dict[str, torch.Tensor]:
        state = np.random.SeedSequence([self.seed, epoch, step, rank]).generate_state(1)[0]
        g = torch.Generator().manual_seed(int(state))
        c = self.cfg
        flip = (torch.rand(b, generator=g) < c.flip_p) & self.allow_flip
        angle = (torch.rand(b, generator=g) * 2 - 1) * c.rotate_deg
        scale = c.scale[0] + (c.scale[1] - c.scale[0]) * torch.rand(b, generator=g)
        shift = (torch.rand(b, 2, generator=g) * 2 - 1) * c.translate
        equalise = torch.rand(b, generator=g) < c.clahe_p
        return {"flip": flip, "angle": angle, "scale": scale, "shift": shift, "clahe": equalise}

    def apply(self, x01: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        """``x01`` (B, 1, H, W) in [0, 1] -> augmented and normalised (B, C, H, W) float32."""
        from kornia.enhance import equalize_clahe

        b, _, h, w = x01.shape
        x = x01.float()
        shift = p["shift"] * torch.tensor([w, h])
        theta = sampling_grid_matrices(p["flip"], p["angle"], p["scale"], shift, h, w).to(x.device, torch.float32)
        grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        chosen = p["clahe"].nonzero().squeeze(1)  # on the host: indexing with it does not wait for the device
        if len(chosen):
            tiles = clahe_tiles(h)
            chosen = chosen.to(x.device)
            x = x.index_copy(0, chosen, equalize_clahe(x.index_select(0, chosen).clamp(0, 1), self.cfg.clahe_clip,
                                                       (tiles, tiles)))
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
        return (x.expand(-1, self.channels, -1, -1) - mean) / std

    def __call__(self, x01: torch.Tensor, epoch: int, step: int, rank: int = 0) -> torch.Tensor:
        return self.apply(x01, self.parameters(len(x01), epoch, step, rank))
