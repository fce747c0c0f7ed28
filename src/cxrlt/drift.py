"""Drift of served traffic from what a registered version was validated on: per-finding score distributions and the
input mix (routed view, declared bit depth), compared as histograms.

The served side comes from the entry's Prometheus metrics (``cxrlt_entry_score`` buckets and
``cxrlt_entry_items_total``; no image or identifier leaves the server), summed over a window; the reference from the
version's registered evaluation (``drift_reference.json``: its dev-set probabilities, routed views and declared bit
depths), binned with the same edges. Both
sides are counts over the same bins, so each feature is a 2 x K contingency table: Pearson's chi-square test
(scipy) says whether the difference is more than sampling noise, and the population stability index (PSI) says
whether it is large enough to matter. A feature drifts when both hold (p below ``p_value`` after Bonferroni over the
features, PSI at least ``min_psi``); a window with fewer than ``min_items`` scored items is not judged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cxrlt.errors import InvalidInputError

#: upper bounds of the entry's score histogram (serving/models/_observe.py SCORE_BUCKETS; a test holds them equal);
#: the last bin is (0.95, +Inf)
SCORE_EDGES: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
#: added to every bin's share before the PSI's logarithm, so an empty bin on one side stays finite
PSI_EPSILON = 1e-4


def le_name(le: str | float) -> str:
    """A bucket's upper bound as both sides name its bin (``0.1``, ``+Inf``), however Prometheus formatted it
    (``0.10``, ``+inf``)."""
    value = float(le)
    return "+Inf" if math.isinf(value) else str(value)


def score_histogram(probabilities: Sequence[float]) -> list[int]:
    """Counts per bin with Prometheus' ``le`` semantics: bin i holds ``edge[i-1] < p <= edge[i]``."""
    p = np.asarray(probabilities, dtype=np.float64)
    bins = np.searchsorted(np.asarray(SCORE_EDGES), p, side="left")  # p == edge falls into that edge's bin
    return np.bincount(bins, minlength=len(SCORE_EDGES) + 1).astype(int).tolist()


def psi(reference: Sequence[float], window: Sequence[float], epsilon: float = PSI_EPSILON) -> float:
    """Population stability index: sum over bins of (w - r) * ln(w / r) of the two sides' shares."""
    r = np.asarray(reference, dtype=np.float64)
    w = np.asarray(window, dtype=np.float64)
    if r.sum() <= 0 or w.sum() <= 0:
        raise InvalidInputError("PSI needs counts on both sides")
    r, w = r / r.sum() + epsilon, w / w.sum() + epsilon
    return float(np.sum((w - r) * np.log(w / r)))


def chi_square_p(reference: Sequence[float], window: Sequence[float]) -> float:
    """p-value of Pearson's chi-square test that both rows of counts come from one distribution (bins empty on
    both sides are left out)."""
    from scipy.stats import chi2_contingency

    table = np.asarray([reference, window], dtype=np.float64)
    table = table[:, table.sum(0) > 0]
    if table.shape[1] < 2:
        return 1.0
    return float(chi2_contingency(table, correction=False).pvalue)


@dataclass(frozen=True)
class DriftSettings:
    """When a feature drifts, and when a window drifts enough to retrain (the profile's ``monitor``)."""

    p_value: float = 0.01
    min_psi: float = 0.2
    min_items: int = 200
    #: retrain when this share of the findings drift, or the input mix does
    retrain_share: float = 0.2


@dataclass
class FeatureDrift:
    feature: str
    bins: list[str]
    reference: list[int]
    window: list[int]
    psi: float
    p_value: float
    drifted: bool


@dataclass
class DriftReport:
    window_items: int
    judged: bool
    reason: str
    features: list[FeatureDrift] = field(default_factory=list)
    retrain: bool = False

    @property
    def drifted(self) -> list[str]:
        return [f.feature for f in self.features if f.drifted]

    def to_dict(self) -> dict:
        return {**asdict(self), "drifted": self.drifted}


def compare(reference: Mapping[str, Mapping[str, int]], window: Mapping[str, Mapping[str, int]],
            window_items: int, settings: DriftSettings = DriftSettings()) -> DriftReport:
    """Judge every feature both sides have (``{"score:Nodule": {bin: count}, "view": {...}, "bits": {...}}``)."""
    if window_items < settings.min_items:
        return DriftReport(window_items, False, f"{window_items} scored items in the window, fewer than "
                                                f"{settings.min_items}: not judged")
    shared = [name for name in reference if name in window and sum(window[name].values()) > 0]
    alpha = settings.p_value / max(len(shared), 1)  # Bonferroni over the features judged
    features = []
    for name in shared:
        bins = sorted(set(reference[name]) | set(window[name]), key=_bin_order)
        r = [int(reference[name].get(b, 0)) for b in bins]
        w = [int(window[name].get(b, 0)) for b in bins]
        value, p = psi(r, w), chi_square_p(r, w)
        features.append(FeatureDrift(name, bins, r, w, value, p, p < alpha and value >= settings.min_psi))
    scores = [f for f in features if f.feature.startswith("score:")]
    drifted_scores = [f for f in scores if f.drifted]
    mix = [f for f in features if not f.feature.startswith("score:") and f.drifted]
    retrain = bool(mix) or (bool(scores) and len(drifted_scores) / len(scores) >= settings.retrain_share)
    reason = (f"input mix drifted ({', '.join(f.feature for f in mix)}); " if mix else "") + \
        f"{len(drifted_scores)} of {len(scores)} findings' score distributions drifted"
    return DriftReport(window_items, True, reason, features, retrain)


def _bin_order(name: str):
    try:
        return (0, float(name), "")
    except ValueError:
        return (1, 0.0, name)


def declared_bit_depth(path: str | Path) -> str:
    """Bits per pixel as a file declares them (PNG IHDR, DICOM BitsStored), as the entry's ``bits`` label has it
    (serving/models/_observe.py ``bit_depth``; a test holds them equal): the reference's input mix."""
    with open(path, "rb") as f:
        head = f.read(132)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 25:
        return str(head[24])
    if head[128:132] == b"DICM":
        try:
            import pydicom

            return str(int(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["BitsStored"]).BitsStored))
        except Exception:  # noqa: BLE001 - a damaged header: the entry counts it as unknown too
            return "unknown"
    return "unknown"


def reference_features(scores: Mapping[str, Sequence[float]], views: Sequence[str],
                       bit_depths: Sequence[str]) -> dict[str, dict[str, int]]:
    """The reference a version was validated on, in the window's shape: per finding its probabilities binned with
    :data:`SCORE_EDGES` (bins named by their ``le``), the routed views and the declared bit depths."""
    names = [le_name(e) for e in (*SCORE_EDGES, math.inf)]
    out = {f"score:{finding}": dict(zip(names, score_histogram(values), strict=True))
           for finding, values in scores.items()}
    out["view"], out["bits"] = _counts(views), _counts(bit_depths)
    return out


def _counts(values: Sequence[str]) -> dict[str, int]:
    names, counts = np.unique(np.asarray(values, dtype=str), return_counts=True)
    return {str(name): int(n) for name, n in zip(names, counts, strict=True)}
