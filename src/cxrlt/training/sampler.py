"""Repeat-factor class-aware sampling (LVIS / Detectron2 style) that also shards correctly under DDP.

r(c) = max(1, sqrt(T / f_c)) where f_c is the fraction of training images with class c; an image repeats
r_i = clip(max_c r(c), 1, cap) times per epoch, with stochastic rounding so the expectation is exact. Every rank
draws the same epoch order from ``(seed, epoch)`` and takes every ``world_size``-th index, so 1 process with global
batch B and N processes with batch B/N see the same samples per step.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


def repeat_factors(labels: np.ndarray, threshold: float = 0.01, cap: float = 10.0) -> np.ndarray:
    """Per-image repeat factor from an ``(N, C)`` binary label matrix."""
    labels = np.asarray(labels, dtype=bool)
    freq = labels.mean(axis=0)
    with np.errstate(divide="ignore"):
        per_class = np.where(freq > 0, np.maximum(1.0, np.sqrt(threshold / np.where(freq > 0, freq, 1))), 1.0)
    per_image = np.where(labels.any(axis=1), (labels * per_class).max(axis=1), 1.0)
    return np.clip(per_image, 1.0, cap)


class EpochShardedSampler(Sampler[int]):
    """Deterministic per-epoch order (optionally repeat-factor weighted), padded and sharded across ranks."""

    def __init__(self, n: int, factors: np.ndarray | None = None, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True):
        self.n, self.factors, self.seed, self.rank, self.world_size = n, factors, seed, rank, world_size
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.seed = state["epoch"], state["seed"]

    def _global_order(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.factors is None:
            idx = np.arange(self.n)
        else:
            counts = np.floor(self.factors).astype(int)
            counts += rng.random(self.n) < (self.factors - np.floor(self.factors))
            idx = np.repeat(np.arange(self.n), counts)
        if self.shuffle:
            idx = rng.permutation(idx)
        total = math.ceil(len(idx) / self.world_size) * self.world_size
        return np.concatenate([idx, idx[: total - len(idx)]])

    def __iter__(self) -> Iterator[int]:
        return iter(self._global_order()[self.rank :: self.world_size].tolist())

    def __len__(self) -> int:
        return len(self._global_order()) // self.world_size


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """Per-sample generator for augmentation: the same image gets the same augmentation on any rank or worker."""
    return np.random.default_rng([seed, epoch, index])
