"""CXR-LT metrics: macro mAP (primary), mAUROC, mF1 at p > 0.5 and mECE, per class, per band, with bootstrap CIs.

Semantics follow the organisers' reference code (per-class sklearn scores, unweighted mean over classes). A class with
no positives (or, for AUROC, no negatives) in the evaluation set has no defined score: it is excluded from the means
and listed in ``excluded``. ECE defaults to per-class 10 equal-width bins, L1, macro mean; the pooled (flattened)
15-bin variant is reported as ``mECE_pooled15``. The official ECE definition is unpublished, so both are reported.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score
from torchmetrics.functional.classification import binary_calibration_error

from cxrlt.errors import InvalidInputError

THRESHOLD = 0.5


def calibration_error(probs: np.ndarray, targets: np.ndarray, n_bins: int = 10) -> float:
    """Expected calibration error with equal-width bins and the L1 norm (torchmetrics' implementation)."""
    preds = torch.as_tensor(np.array(probs, dtype=np.float64), dtype=torch.float64)  # a copy: inputs may be read-only
    target = torch.as_tensor(np.array(targets), dtype=torch.long)
    return float(binary_calibration_error(preds, target, n_bins=n_bins, norm="l1"))


@dataclass
class ClassScores:
    AP: float | None
    AUROC: float | None
    F1: float
    ECE: float
    n_pos: int
    n: int


@dataclass
class EvalResult:
    classes: list[str]
    per_class: dict[str, ClassScores]
    bands: dict[str, str] = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)
    mECE_pooled15: float = float("nan")
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)

    def mean(self, metric: str, classes: Sequence[str] | None = None) -> float:
        vals = [getattr(self.per_class[c], metric) for c in (classes or self.classes)]
        vals = [v for v in vals if v is not None]
        return float(np.mean(vals)) if vals else float("nan")

    @property
    def scored_classes(self) -> list[str]:
        return [c for c in self.classes if self.per_class[c].AP is not None]

    def summary(self) -> dict:
        scored = self.scored_classes
        out = {
            "mAP": self.mean("AP", scored),
            "mAUROC": self.mean("AUROC", scored),
            "mF1": self.mean("F1", scored),
            "mECE": self.mean("ECE", scored),
            "mECE_pooled15": self.mECE_pooled15,
            "n_classes_scored": len(scored),
            "excluded": self.excluded,
        }
        if self.bands:
            out["bands"] = {}
            for band in ("head", "medium", "tail"):
                members = [c for c in scored if self.bands.get(c) == band]
                out["bands"][band] = {"n_classes": len(members), "mAP": self.mean("AP", members) if members else None,
                                      "mAUROC": self.mean("AUROC", members) if members else None}
        if self.ci:
            out["ci95"] = {k: list(v) for k, v in self.ci.items()}
        out["per_class"] = {c: {**vars(self.per_class[c]), "band": self.bands.get(c)} for c in self.classes}
        return out


def score_class(y: np.ndarray, p: np.ndarray) -> ClassScores:
    n_pos = int(y.sum())
    has_both = 0 < n_pos < len(y)
    return ClassScores(
        AP=float(average_precision_score(y, p)) if n_pos > 0 else None,
        AUROC=float(roc_auc_score(y, p)) if has_both else None,
        F1=float(f1_score(y, (p > THRESHOLD).astype(int), zero_division=0)),
        ECE=calibration_error(p, y),
        n_pos=n_pos,
        n=int(len(y)),
    )


def evaluate(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    classes: Sequence[str],
    bands: Mapping[str, str] | None = None,
    n_bootstrap: int = 0,
    seed: int = 0,
) -> EvalResult:
    """Score an ``(N, C)`` probability matrix against binary labels; column ``j`` is class ``classes[j]``."""
    y_true = np.asarray(y_true)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    if y_true.shape != y_prob.shape or y_true.ndim != 2 or y_true.shape[1] != len(classes):
        raise InvalidInputError(f"labels {y_true.shape}, probabilities {y_prob.shape} and {len(classes)} classes "
                                "disagree")
    if not np.isfinite(y_prob).all() or y_prob.min() < 0 or y_prob.max() > 1:
        raise InvalidInputError("probabilities must be finite and within [0, 1]")
    if not np.isin(y_true, (0, 1)).all():
        raise InvalidInputError("labels must be 0 or 1")
    per_class, excluded = {}, {}
    for j, name in enumerate(classes):
        per_class[name] = score_class(y_true[:, j], y_prob[:, j])
        if per_class[name].n_pos == 0:
            excluded[name] = "no positives in the evaluation set"
        elif per_class[name].AUROC is None:
            excluded[name] = "no negatives in the evaluation set (AUROC undefined)"
    result = EvalResult(list(classes), per_class, dict(bands or {}), excluded,
                        mECE_pooled15=calibration_error(y_prob.ravel(), y_true.ravel(), n_bins=15))
    if n_bootstrap:
        result.ci = bootstrap_ci(y_true, y_prob, n_bootstrap, seed, strata=rarest_finding_strata(y_true))
    return result


def column_ap(y_true: np.ndarray, y_prob: np.ndarray) -> np.ndarray:
    """Average precision of every column, equal to sklearn's ``average_precision_score(average=None)`` (tied scores
    form one threshold; AP = sum over thresholds of recall gain x precision) without its per-call checks, which
    dominate the bootstrap's time. Every column needs a positive."""
    y_true, y_prob = np.asarray(y_true, dtype=np.float64), np.asarray(y_prob, dtype=np.float64)
    order = np.argsort(-y_prob, axis=0, kind="stable")
    scores, hits = np.take_along_axis(y_prob, order, 0), np.take_along_axis(y_true, order, 0)
    tp = np.cumsum(hits, axis=0)
    n_pos = tp[-1]
    out = np.empty(y_true.shape[1])
    for j in range(y_true.shape[1]):
        last = np.flatnonzero(np.r_[scores[1:, j] != scores[:-1, j], True])  # the last row of each tied threshold
        recall = tp[last, j] / n_pos[j]
        precision = tp[last, j] / (last + 1)
        out[j] = np.sum(np.diff(np.r_[0.0, recall]) * precision)
    return out


def column_auroc(y_true: np.ndarray, y_prob: np.ndarray) -> np.ndarray:
    """AUROC of every column by the rank-sum (Mann-Whitney) identity, ties counted one half: equal to sklearn's
    ``roc_auc_score(average=None)``. Every column needs positives and negatives."""
    from scipy.stats import rankdata

    y_true = np.asarray(y_true, dtype=np.float64)
    ranks = rankdata(np.asarray(y_prob, dtype=np.float64), axis=0)
    n_pos = y_true.sum(0)
    n_neg = len(y_true) - n_pos
    return ((ranks * y_true).sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def macro_ap(y_true: np.ndarray, y_prob: np.ndarray) -> float:
    """Macro mAP over the classes that have positives (the model-selection and gate metric)."""
    y_true = np.asarray(y_true)
    keep = y_true.sum(0) > 0
    if not keep.any():
        return float("nan")
    return float(np.mean(column_ap(y_true[:, keep], np.asarray(y_prob)[:, keep])))


def macro_auroc(y_true: np.ndarray, y_prob: np.ndarray) -> float:
    """Macro AUROC over the classes with both positives and negatives."""
    y_true = np.asarray(y_true)
    both = (y_true.sum(0) > 0) & (y_true.sum(0) < len(y_true))
    if not both.any():
        return float("nan")
    return float(np.mean(column_auroc(y_true[:, both], np.asarray(y_prob)[:, both])))


def selection_score(y_true: np.ndarray, logits: np.ndarray, rule: str = "mAP") -> float:
    """Checkpoint-selection score: ``mAP``, or seed 000's ``mAP+mAUC-BCE`` (mean binary cross-entropy)."""
    prob = 1 / (1 + np.exp(-logits))
    if rule == "mAP":
        return macro_ap(y_true, prob)
    if rule == "mAP+mAUC-BCE":
        # BCE from logits, numerically stable: max(z, 0) - z y + log(1 + exp(-|z|))
        bce = np.maximum(logits, 0) - logits * y_true + np.log1p(np.exp(-np.abs(logits)))
        return macro_ap(y_true, prob) + macro_auroc(y_true, prob) - float(bce.mean())
    raise InvalidInputError(f"unknown selection rule {rule!r}: mAP or mAP+mAUC-BCE")


def rarest_finding_strata(y_true: np.ndarray) -> np.ndarray:
    """Each image's stratum: the column of its rarest present finding (fewest positives in ``y_true``; ties to the
    lower column), or -1 for an image with none."""
    y_true = np.asarray(y_true)
    counts = y_true.sum(0).astype(float)
    rank = np.where(y_true > 0, counts[None, :], np.inf)
    strata = np.argmin(rank, axis=1)
    strata[~(y_true > 0).any(1)] = -1
    return strata


def stratified_resample(strata: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices of one bootstrap replicate: within every stratum, as many draws with replacement as it has images."""
    parts = []
    for stratum in np.unique(strata):
        members = np.flatnonzero(strata == stratum)
        parts.append(rng.choice(members, size=len(members), replace=True))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=int)


def column_calibration_errors(y_true: np.ndarray, y_prob: np.ndarray, n_bins: int = 10) -> np.ndarray:
    """:func:`calibration_error` of every column at once (the bootstrap calls it for every class of every replicate).

    The same bins as torchmetrics (``bucketize(right=True) - 1`` over ``linspace(0, 1, n_bins + 1)``, so p = 1 has a
    bin of its own), and the same sum: a bin's weight times |accuracy - confidence| is |sum(y - p) over the bin| / n.
    """
    y_prob = np.asarray(y_prob, dtype=np.float64)
    y_true = np.asarray(y_true, dtype=np.float64)
    if not ((y_prob >= 0) & (y_prob <= 1)).all():
        raise InvalidInputError("calibration error needs probabilities in [0, 1]; got values outside it or NaN")
    n, k = y_prob.shape
    slots = n_bins + 1
    edges = torch.linspace(0, 1, slots, dtype=torch.float64).numpy()  # torch's edges: numpy's differ by an ulp
    bins = np.searchsorted(edges, y_prob, side="right") - 1
    flat = (bins + slots * np.arange(k)).ravel()
    gap = np.bincount(flat, weights=(y_true - y_prob).ravel(), minlength=slots * k).reshape(k, slots)
    return np.abs(gap).sum(axis=1) / n


def macro_ece(y_true: np.ndarray, y_prob: np.ndarray) -> float:
    """Mean per-class ECE (10 equal-width bins, L1) over the classes with positives (``EvalResult.summary``'s mECE)."""
    keep = np.flatnonzero(np.asarray(y_true).sum(0) > 0)
    if not len(keep):
        return float("nan")
    return float(np.mean(column_calibration_errors(np.asarray(y_true)[:, keep], np.asarray(y_prob)[:, keep])))


def bootstrap_ci(y_true: np.ndarray, y_prob: np.ndarray, n: int = 200, seed: int = 0, alpha: float = 0.05,
                 metrics: Mapping[str, Callable[[np.ndarray, np.ndarray], float]] | None = None,
                 strata: np.ndarray | None = None) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap CIs of ``metrics`` (default mAP and mAUROC); images are resampled with replacement, within
    ``strata`` when given (e.g. :func:`rarest_finding_strata`, so rare classes keep their positives in every
    replicate). Replicates where a metric is undefined are left out of its interval; none defined gives NaNs."""
    metrics = metrics or {"mAP": macro_ap, "mAUROC": macro_auroc}
    y_true, y_prob = np.asarray(y_true), np.asarray(y_prob, dtype=np.float64)
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {name: [] for name in metrics}
    for _ in range(n):
        idx = rng.integers(0, len(y_true), len(y_true)) if strata is None else stratified_resample(strata, rng)
        for name, metric in metrics.items():
            values[name].append(metric(y_true[idx], y_prob[idx]))
    q = (100 * alpha / 2, 100 * (1 - alpha / 2))
    out = {}
    for name, vals in values.items():
        finite = [v for v in vals if np.isfinite(v)]
        out[name] = tuple(float(v) for v in np.percentile(finite, q)) if finite else (float("nan"), float("nan"))
    return out


def paired_bootstrap_diff(y_true: np.ndarray, a: np.ndarray, b: np.ndarray, metric=None, n: int = 200,
                          seed: int = 0, alpha: float = 0.05, strata: np.ndarray | None = None) -> dict:
    """``metric(y, a) - metric(y, b)`` for two models scored on the *same* images, with a percentile bootstrap CI
    that resamples images jointly (pairing removes the between-image variance both models share). ``metric``
    defaults to macro AP; with ``strata`` (e.g. :func:`rarest_finding_strata`) images are resampled within them."""
    metric = metric or macro_ap
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n):
        i = rng.integers(0, len(y_true), len(y_true)) if strata is None else stratified_resample(strata, rng)
        diffs.append(metric(y_true[i], a[i]) - metric(y_true[i], b[i]))
    lo, hi = np.nanpercentile(diffs, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return {"diff": float(metric(y_true, a) - metric(y_true, b)), "ci95": [float(lo), float(hi)]}
