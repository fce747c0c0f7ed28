"""Datasets over manifests: images from the preprocess cache (or raw files), labels keyed by class name."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from cxrlt.data.images import PreprocessConfig, load_preprocessed
from cxrlt.data.preprocess import CACHE_CONFIG, CACHE_LAYOUT, cached_name
from cxrlt.data.shards import SHARD_LAYOUT, ShardCache
from cxrlt.errors import CxrltError
from cxrlt.training.augment import AugmentConfig, augment
from cxrlt.training.sampler import sample_rng

log = logging.getLogger(__name__)


class CacheMismatchError(CxrltError, ValueError):
    """A preprocess cache made for another size or intensity scaling than the profile asks for."""


class ImageStore:
    """Loads [0, 1] square images of the contract's size, from a cache directory when it matches, else from raw
    files; the contract also defines how the dataset turns them into network inputs.

    ``cache_size``: the side the profile's cache must have (``data.cache_size``). A cache of another side, one smaller
    than the network input (it would be upsampled without a word) or one of another scaling than the contract is
    refused with :class:`CacheMismatchError` naming both. Without ``cache_size`` (the zero-shot CLIP, whose contract
    may scale intensities differently) a cache of another scaling is skipped with a warning and raw files are read;
    one smaller than the input is still refused."""

    def __init__(self, image_dir: str | Path, preprocess: PreprocessConfig, cache_dir: str | Path | None = None,
                 cache_size: int | None = None):
        self.image_dir, self.preprocess, self.size = Path(image_dir), preprocess, preprocess.size
        self.cache_dir = Path(cache_dir) if cache_dir and self._cache_matches(Path(cache_dir), cache_size) else None
        self.shards = ShardCache(self.cache_dir, self._cached_size) \
            if self.cache_dir is not None and self._layout == SHARD_LAYOUT else None
        self._memory: dict[str, np.ndarray] = {}

    def _cache_matches(self, cache_dir: Path, cache_size: int | None) -> bool:
        """A cache holds intensity-scaled squares: usable when its scaling and percentiles are the contract's."""
        if not (cache_dir / CACHE_CONFIG).exists():
            raise CacheMismatchError(f"{cache_dir} is not a preprocess cache (no {CACHE_CONFIG}); make one with "
                                     "cxrlt data preprocess")
        stored = json.loads((cache_dir / CACHE_CONFIG).read_text())
        self._layout = stored.get("layout", 1)
        if self._layout not in (CACHE_LAYOUT, SHARD_LAYOUT):
            raise CacheMismatchError(f"cache {cache_dir} has file layout {self._layout}, this cxrlt reads layout "
                                     f"{CACHE_LAYOUT} (PNG) or {SHARD_LAYOUT}; preprocess again into a new directory")
        cached = PreprocessConfig.from_dict(stored)
        self._cached_size = cached.size
        if cache_size is not None and cached.size != cache_size:
            raise CacheMismatchError(f"cache {cache_dir} holds {cached.size} px images; the profile's data.cache_size "
                                     f"is {cache_size} px (preprocess again at {cache_size}, or use its cache)")
        if cached.size < self.size:
            raise CacheMismatchError(f"cache {cache_dir} holds {cached.size} px images; the network input is "
                                     f"{self.size} px and would be upsampled")
        if (cached.scaling, cached.percentiles) != (self.preprocess.scaling, self.preprocess.percentiles):
            if cache_size is not None:
                raise CacheMismatchError(
                    f"cache {cache_dir} was made with {cached.scaling} scaling {cached.percentiles}; the profile's "
                    f"contract is {self.preprocess.scaling} {self.preprocess.percentiles}")
            log.warning("cache %s was made with %s scaling %s; the model's contract needs %s %s: reading raw files",
                        cache_dir, cached.scaling, cached.percentiles, self.preprocess.scaling,
                        self.preprocess.percentiles)
            return False
        return True

    def load(self, image_id: str) -> np.ndarray:
        if image_id in self._memory:
            return self._memory[image_id]
        if self.shards is not None and image_id in self.shards:
            img = self.shards.load(image_id).astype(np.float32)
        elif self.shards is None and self.cache_dir is not None and (self.cache_dir / cached_name(image_id)).exists():
            img = cv2.imread(str(self.cache_dir / cached_name(image_id)), cv2.IMREAD_UNCHANGED).astype(np.float32)
        else:
            return load_preprocessed(self.image_dir / image_id, self.preprocess)
        img /= 65535.0
        if img.shape[0] != self.size:
            img = cv2.resize(img, (self.size, self.size), interpolation=cv2.INTER_AREA)
        return img

    def preload(self, image_ids, progress: bool = True) -> None:
        for image_id in tqdm(list(dict.fromkeys(image_ids)), desc="load images", unit="img", disable=not progress):
            self._memory[image_id] = self.load(image_id)


class ManifestDataset(Dataset):
    """(image tensor (C, S, S), target vector, row index) for each manifest row; augmentation seeded per sample."""

    def __init__(self, manifest: pd.DataFrame, store: ImageStore, targets: np.ndarray,
                 augment_cfg: AugmentConfig | None = None, seed: int = 0, allow_flip: bool = True,
                 normalize: bool = True):
        self.ids = manifest["ImageID"].tolist()
        self.store, self.targets = store, np.asarray(targets, dtype=np.float32)
        self.augment_cfg, self.seed, self.allow_flip = augment_cfg, seed, allow_flip
        self.normalize = normalize  # False: the [0, 1] image (1, S, S), for augmentation on the training device
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        img = self.store.load(self.ids[index])
        if self.augment_cfg is not None:
            img = augment(img, sample_rng(self.seed, self.epoch, index), self.augment_cfg, self.allow_flip)
        x = torch.from_numpy(self.store.preprocess.normalize(img) if self.normalize else img[None])
        return x, torch.from_numpy(self.targets[index]), index
