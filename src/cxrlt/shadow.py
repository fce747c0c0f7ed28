"""Shadow scoring: how a challenger agrees with the champion on live traffic, from sums that can be counters.

The ``cxr`` entry scores a share of its items with the challenger too (it answers with the champion only) and adds,
per finding, the sums below to Prometheus counters; anything that can read the counters over a window (``cxrlt
shadow report``, promotion) turns them into agreement with :func:`summarise`. Every sum only grows and each is a
plain sum over items, so ``increase()`` over a window gives the window's sums, and windows add up.

Needs only numpy: the serving repository copies this file beside the entry as ``cxrlt_shadow.py``.
"""

from __future__ import annotations

import math

import numpy as np

#: the per-finding sums (the ``stat`` label of ``cxrlt_shadow_sums_total``): items compared, flips at the operating
#: threshold, |champion - challenger|, and the five sums of Pearson's correlation (x: champion, y: challenger)
STATS = ("n", "flips", "abs_diff", "x", "y", "xx", "yy", "xy")


class ShadowSampler:
    """Chooses which items the challenger scores: exactly ``fraction`` of them over any long run, evenly spread
    (item k is chosen when floor((k + 1) f) > floor(k f)), so a test can count them and traffic bursts are not
    sampled in clumps."""

    def __init__(self, fraction: float):
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"shadow fraction must be in (0, 1], got {fraction}")
        self.fraction, self.seen = fraction, 0

    def take(self, n: int) -> np.ndarray:
        k = np.arange(self.seen, self.seen + n, dtype=np.float64)
        self.seen += n
        return np.floor((k + 1) * self.fraction + 1e-9) > np.floor(k * self.fraction + 1e-9)


def agreement_sums(champion: np.ndarray, challenger: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """Per column (finding), the :data:`STATS` sums over the rows (items) where both scores are finite; a flip is
    an item on one side of ``threshold`` for one model and on the other side for the other (>= is positive)."""
    x, y = np.asarray(champion, np.float64), np.asarray(challenger, np.float64)
    if x.shape != y.shape:
        raise ValueError(f"champion scores {x.shape} and challenger scores {y.shape} differ in shape")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = np.where(ok, x, 0.0), np.where(ok, y, 0.0)
    return {"n": ok.sum(0).astype(np.float64), "flips": (((x >= threshold) != (y >= threshold)) & ok).sum(0)
            .astype(np.float64), "abs_diff": np.abs(x - y).sum(0), "x": x.sum(0), "y": y.sum(0),
            "xx": (x * x).sum(0), "yy": (y * y).sum(0), "xy": (x * y).sum(0)}


def summarise(sums: dict[str, float]) -> dict[str, float | None]:
    """Agreement of one finding from its sums: items, flip rate, mean absolute difference and Pearson's
    correlation (None where there are no items, or where either model's scores did not vary)."""
    n = float(sums.get("n", 0.0))
    if n <= 0:
        return {"n": 0, "flip_rate": None, "mean_abs_diff": None, "correlation": None}
    x, y = float(sums["x"]), float(sums["y"])
    var_x, var_y = n * float(sums["xx"]) - x * x, n * float(sums["yy"]) - y * y
    cov = n * float(sums["xy"]) - x * y
    scale = max(n * float(sums["xx"]), n * float(sums["yy"]), 1e-300)
    varies = var_x > 1e-12 * scale and var_y > 1e-12 * scale  # relative: sums of squares lose digits as they grow
    corr = cov / math.sqrt(var_x * var_y) if varies else None
    return {"n": int(round(n)), "flip_rate": float(sums["flips"]) / n, "mean_abs_diff": float(sums["abs_diff"]) / n,
            "correlation": None if corr is None else max(-1.0, min(1.0, corr))}
