"""Benchmark: the bootstrap's macro AP and AUROC, cxrlt's column versions against sklearn's per-class calls, side by
side on the same matrices (the demo's dev set shape: 372 images x 30 findings). Also checks they agree.

Usage: python bench/metrics_speed.py [--images 372] [--classes 30] [--repeats 50]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from cxrlt.metrics import column_ap, column_auroc


def _time(fn, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=372)
    ap.add_argument("--classes", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=50)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    y = (rng.random((args.images, args.classes)) < 0.1).astype(int)
    y[0] = 1  # every class has a positive
    y[1] = 0  # and a negative
    p = np.round(rng.random((args.images, args.classes)), 3)  # ties, as calibrated scores have
    rows = {"AP": (lambda: column_ap(y, p), lambda: average_precision_score(y, p, average=None)),
            "AUROC": (lambda: column_auroc(y, p), lambda: roc_auc_score(y, p, average=None))}
    for name, (ours, theirs) in rows.items():
        diff = float(np.max(np.abs(ours() - theirs())))
        a, b = _time(ours, args.repeats), _time(theirs, args.repeats)
        print(f"{name:<6} cxrlt {a * 1e3:7.2f} ms   sklearn {b * 1e3:7.2f} ms   speed-up {b / a:5.1f}x   "
              f"max |difference| {diff:.1e}")


if __name__ == "__main__":
    main()
