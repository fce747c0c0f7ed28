"""Shadow scoring: how a challenger agrees with the champion on live traffic, from sums that can be counters.

The ``cxr`` entry scores a share of its items with the challenger too (it answers with the champion only) and adds,
per finding, the sums below to Prometheus counters; anything that can read the counters over a window (``cxrlt
shadow report``, promotion) turns them into agreement with :func:`summarise`. Every sum only grows and each is a
plain sum over items, so ``increase()`` over a window gives the window's sums, and windows add up.

Needs only numpy: the serving repository copies this file beside the entry as ``cxrlt_shadow.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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


def pair_report(sums: dict[tuple[str, str], dict[str, float]], dropped: dict[str, float]) -> dict:
    """One champion/challenger pair's agreement: ``sums`` maps (kind, finding) to its :data:`STATS` sums,
    ``dropped`` a reason to its count. ``items`` is the known findings' largest n (each compared item adds 1 to
    every finding it has a score for)."""
    findings = [{"kind": kind, "finding": finding, **summarise(values)}
                for (kind, finding), values in sorted(sums.items())]
    known = [f for f in findings if f["kind"] == "known"]
    rates = [f["flip_rate"] for f in known if f["flip_rate"] is not None]
    corrs = [f["correlation"] for f in known if f["correlation"] is not None]
    return {"items": max((f["n"] for f in known), default=0), "dropped": {k: int(round(v)) for k, v in dropped.items()},
            "worst_flip_rate": max(rates, default=None), "lowest_correlation": min(corrs, default=None),
            "findings": findings}


@dataclass(frozen=True)
class ShadowRequirement:
    """What promotion asks of a challenger's shadow scoring against the champion (the profile's ``gate.shadow_*``):
    at least ``min_items`` compared items (0: no shadow evidence is required), and for every known finding a flip
    rate at the operating threshold of at most ``max_flip_rate`` and a score correlation of at least
    ``min_correlation`` (where the scores varied)."""

    min_items: int = 0
    max_flip_rate: float = 0.1
    min_correlation: float = 0.8


def judge(report: dict | None, requirement: ShadowRequirement) -> list[str]:
    """The reasons ``requirement`` refuses a pair's agreement (``report``: :func:`pair_report`, None when no shadow
    scoring of the pair was found); empty when it is met."""
    if report is None:
        return ["no shadow scoring of this challenger against the champion was found"]
    refusals = []
    if report["items"] < requirement.min_items:
        refusals.append(f"{report['items']} shadow-scored items < the {requirement.min_items} required")
    for f in report["findings"]:
        if f["kind"] != "known" or not f["n"]:
            continue
        if f["flip_rate"] > requirement.max_flip_rate:
            refusals.append(f"{f['finding']}: flip rate {f['flip_rate']:.3f} > {requirement.max_flip_rate} "
                            f"(n={f['n']})")
        if f["correlation"] is not None and f["correlation"] < requirement.min_correlation:
            refusals.append(f"{f['finding']}: score correlation {f['correlation']:.3f} < "
                            f"{requirement.min_correlation} (n={f['n']})")
    return refusals
