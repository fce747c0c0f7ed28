"""Benchmark: read + clip + pad + resize of 2048x2048 16-bit PNGs vs plain decode, and 1 vs 2 processes.

Prints ratios measured side by side in one run (no timing assertions anywhere in the tests).
Usage: python bench/preprocess.py [--n 24] [--size 2048] [--out-size 512]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from cxrlt.data.images import PreprocessConfig, load_preprocessed
from cxrlt.data.synth import SynthConfig, generate


def _decode(path: str) -> int:
    return int(cv2.imread(path, cv2.IMREAD_UNCHANGED).shape[0])


def _full(args: tuple[str, int]) -> int:
    return int(load_preprocessed(args[0], PreprocessConfig(size=args[1])).shape[0])


def _rate(fn, items, workers: int) -> float:
    t0 = time.perf_counter()
    if workers == 1:
        for it in items:
            fn(it)
    else:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(fn, items, chunksize=2))
    return len(items) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--out-size", type=int, default=512)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generate(tmp, SynthConfig(n_images=args.n, size=args.size, seed=0, workers=2), progress=False)
        paths = sorted(str(p) for p in Path(tmp, "images").glob("*.png"))
        _rate(_decode, paths[:2], 1)  # warm the page cache
        decode = _rate(_decode, paths, 1)
        full1 = _rate(_full, [(p, args.out_size) for p in paths], 1)
        full2 = _rate(_full, [(p, args.out_size) for p in paths], 2)
    print(f"images: {len(paths)} synthetic 16-bit PNGs, {args.size} px high -> {args.out_size} px")
    print(f"decode only           : {decode:7.1f} img/s")
    print(f"decode+clip+pad+resize: {full1:7.1f} img/s  (ratio to decode only: {full1 / decode:.2f})")
    print(f"same, 2 processes     : {full2:7.1f} img/s  (speed-up 1 -> 2 processes: {full2 / full1:.2f}x)")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
