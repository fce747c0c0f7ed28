"""Benchmark: what one training image costs the loader, step by step, on one core (milliseconds per image), and
the images/s one core feeds with the paper profile's augmentation, from the PNG and the shard cache, with the
augmentation in the loader or on the training device.

Side by side in one run: the 16-bit PNG decode vs the shard read; the affine; CLAHE over 256 bins (what the loader
runs, as albumentations does) vs OpenCV's 16-bit CLAHE (65,536 bins, what it ran before); the normalisation.
Synthetic 512 px images. Usage:
    python bench/loader_costs.py [--images 48] [--size 512]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from cxrlt.config import load_config, task1_preprocess, train_settings
from cxrlt.data.images import PreprocessConfig
from cxrlt.data.preprocess import build_cache
from cxrlt.data.shards import build_shards
from cxrlt.data.synth import SynthConfig, generate
from cxrlt.training.augment import AugmentConfig, augment, clahe, clahe_tiles
from cxrlt.training.data import ImageStore

ROOT = Path(__file__).resolve().parents[1]


def per_image_ms(fn, items: list, repeats: int = 3) -> float:
    """Median over ``repeats`` passes of the mean milliseconds per item."""
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for item in items:
            fn(item)
        runs.append((time.perf_counter() - t0) / len(items) * 1e3)
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--size", type=int, default=512)
    args = ap.parse_args()
    cv2.setNumThreads(1)  # one core, as one loader worker
    cfg = load_config(ROOT / "configs" / "paper.yaml")
    contract = PreprocessConfig.from_dict({**task1_preprocess(cfg).to_dict(), "size": args.size})
    aug = AugmentConfig.from_dict(train_settings(cfg, "frontal/pcam")["augment"])
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        generate(data, SynthConfig(n_images=args.images, size=args.size, seed=0, workers=os.cpu_count() or 1),
                 progress=False)
        ids = sorted(p.name for p in (data / "images").glob("*.png"))
        build_cache(ids, data / "images", Path(tmp) / "png", contract, workers=1, progress=False)
        build_shards(ids, data / "images", Path(tmp) / "shards", contract, workers=1, progress=False)
        png, shards = (ImageStore(data / "images", contract, Path(tmp) / c) for c in ("png", "shards"))
        images = [shards.load(i) for i in ids]
        rngs = [np.random.default_rng(i) for i in range(len(ids))]
        tiles = clahe_tiles(args.size)
        no_clahe = AugmentConfig(aug.flip_p, aug.rotate_deg, aug.scale, aug.translate, 0.0, aug.clahe_clip)

        def clahe16(img):
            u16 = np.round(np.clip(img, 0, 1) * 65535).astype(np.uint16)
            return cv2.createCLAHE(aug.clahe_clip, (tiles, tiles)).apply(u16)

        costs = {
            "read from the PNG cache (16-bit PNG decode)": per_image_ms(png.load, ids),
            "read from the shard cache": per_image_ms(shards.load, ids),
            "affine (flip, rotation, scale, translation)": per_image_ms(
                lambda k: augment(images[k], rngs[k], no_clahe), range(len(ids))),
            "CLAHE, 256 bins (the loader's)": per_image_ms(lambda img: clahe(img, aug.clahe_clip, tiles), images),
            "CLAHE, 16-bit image, 65,536 bins (before)": per_image_ms(clahe16, images),
            f"normalisation to {contract.channels} channels": per_image_ms(contract.normalize, images),
        }
    keys = list(costs)
    print(f"one core, {args.size} px, synthetic images, paper profile augmentation (CLAHE p {aug.clahe_p}); "
          "ms per image")
    for k, v in costs.items():
        print(f"  {k:<48} {v:7.2f}")
    read_png, read_shard, affine, clahe8, clahe16_ms, norm = (costs[k] for k in keys)
    loader_aug = affine + aug.clahe_p * clahe8 + norm
    for name, read in (("PNG", read_png), ("shards", read_shard)):
        print(f"images/s per core from {name}: augmentation in the loader {1e3 / (read + loader_aug):6.0f}; "
              f"with the 16-bit CLAHE {1e3 / (read + affine + aug.clahe_p * clahe16_ms + norm):6.0f}; "
              f"augmentation on the device {1e3 / read:6.0f} (the read alone; bench/gpu/check.py's DataLoader "
              "rows add collation and the hand-over from the worker)")


if __name__ == "__main__":
    main()
