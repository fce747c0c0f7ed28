"""Subgroups of the evaluation set (sex, age band, projection) and their metrics with stratified bootstrap CIs.

A governance board asks how a model performs by sex, age and projection; a model better on average can be worse for
one group. PadChest's metadata carries ``PatientSex_DICOM`` (M, F, O), ``PatientBirth`` (a year written as a float
string, ``1930.0``) and ``StudyDate_DICOM`` (``YYYYMMDD``): the age at the study is the study's year minus the birth
year. A value that is missing or malformed puts the image in the group ``unknown``; it is never dropped.

The bootstrap is stratified: images are grouped by their rarest present finding (or ``none``) and resampled within
each group, so every replicate keeps the positives of the rarest classes instead of sometimes losing all of them
(which would leave the class out of that replicate's mean and widen or bias the interval).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from cxrlt.errors import InvalidInputError
from cxrlt.metrics import (  # noqa: F401  (the stratified bootstrap's parts, re-exported)
    bootstrap_ci,
    macro_ap,
    macro_auroc,
    macro_ece,
    paired_bootstrap_diff,
    rarest_finding_strata,
    stratified_resample,
)
from cxrlt.platform import GROUPS_CSV  # noqa: F401  (re-exported: the file the evaluation writes)

UNKNOWN = "unknown"
#: age at the study in whole years: [low, high) -> band name
AGE_BANDS: tuple[tuple[int, int, str], ...] = ((0, 40, "<40"), (40, 60, "40-59"), (60, 80, "60-79"),
                                               (80, 200, "80+"))
#: ages outside this range are data errors (PadChest's range is 0 to 105)
MAX_AGE = 120
SEX_GROUPS = {"F": "F", "M": "M", "O": "other"}
_YEAR = re.compile(r"\s*(\d{4})(\.0*)?\s*")
_DATE = re.compile(r"\s*(\d{4})-?(\d{2})-?(\d{2})(\.0*)?\s*")


def _text(value) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def birth_year(value) -> int | None:
    """``1930.0``, ``"1930.0"``, ``1930`` -> 1930; missing, malformed or implausible -> None."""
    text = _text(value)
    match = _YEAR.fullmatch(text) if text is not None else None
    year = int(match.group(1)) if match else None
    return year if year is not None and 1880 <= year <= 2100 else None


def study_year(value) -> int | None:
    """``20150312`` or ``"2015-03-12"`` -> 2015; missing or malformed -> None."""
    text = _text(value)
    match = _DATE.fullmatch(text) if text is not None else None
    if not match or not (1 <= int(match.group(2)) <= 12 and 1 <= int(match.group(3)) <= 31):
        return None
    return int(match.group(1))


def age_band(study_date, birth) -> str:
    """The band of the age at the study; ``unknown`` when either year is missing, malformed or the age is
    impossible (negative or over :data:`MAX_AGE`)."""
    study, born = study_year(study_date), birth_year(birth)
    if study is None or born is None or not 0 <= study - born <= MAX_AGE:
        return UNKNOWN
    age = study - born
    return next(name for low, high, name in AGE_BANDS if low <= age < high)


def sex_group(value) -> str:
    """PadChest's ``PatientSex_DICOM``: F, M, O (other); anything else ``unknown``."""
    text = _text(value)
    return SEX_GROUPS.get(text.strip().upper(), UNKNOWN) if text else UNKNOWN


def demographics(table: pd.DataFrame) -> pd.DataFrame:
    """ImageID -> ``sex`` and ``age_band`` from a PadChest-style table; a missing column makes every image
    ``unknown`` for that attribute (the challenge CSVs carry the study date but not sex or birth year)."""
    if "ImageID" not in table.columns:
        raise InvalidInputError("a demographics table needs an ImageID column")
    n = len(table)
    sexes = table["PatientSex_DICOM"] if "PatientSex_DICOM" in table.columns else [None] * n
    births = table["PatientBirth"] if "PatientBirth" in table.columns else [None] * n
    dates = table["StudyDate_DICOM"] if "StudyDate_DICOM" in table.columns else [None] * n
    return pd.DataFrame({"sex": [sex_group(s) for s in sexes],
                         "age_band": [age_band(d, b) for d, b in zip(dates, births, strict=True)]},
                        index=pd.Index(table["ImageID"].astype(str), name="ImageID"))


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {"mAP": macro_ap, "mAUROC": macro_auroc,
                                                                  "mECE": macro_ece}


def stratified_bootstrap(y_true: np.ndarray, y_prob: np.ndarray, metrics: Mapping[str, Callable] | None = None,
                         n: int = 200, seed: int = 0, alpha: float = 0.05) -> dict[str, tuple[float, float]]:
    """:func:`cxrlt.metrics.bootstrap_ci` of ``metrics`` (default mAP, mAUROC, mECE) stratified by
    :func:`rarest_finding_strata`."""
    return bootstrap_ci(y_true, y_prob, n, seed, alpha, metrics or METRICS, strata=rarest_finding_strata(y_true))


def _group_names(attribute: str, values: Sequence[str], n_images: int) -> np.ndarray:
    """Each image's group of ``attribute`` as text; one value per image or an error naming the attribute."""
    groups = np.asarray([str(g) for g in values])
    if len(groups) != n_images:
        raise InvalidInputError(f"attribute {attribute!r} has {len(groups)} values for {n_images} images")
    return groups


def group_masks(attributes: Mapping[str, Sequence[str]], n_images: int):
    """(attribute, group, boolean mask over the images) for every group of every attribute, groups sorted."""
    for attribute, values in attributes.items():
        groups = _group_names(attribute, values, n_images)
        for group in sorted(set(groups)):
            yield attribute, str(group), groups == group


@dataclass
class SubgroupRow:
    """One subgroup's metrics; ``flags`` says why a number is missing or less trustworthy (never dropped)."""

    attribute: str
    group: str
    n_images: int
    n_positive_labels: int
    n_classes_scored: int
    mAP: float
    mAUROC: float
    mECE: float
    ci95: dict[str, tuple[float, float]] = field(default_factory=dict)
    band_mAP: dict[str, float | None] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def _group_metrics(classes: Sequence[str], bands: Mapping[str, str] | None) -> dict[str, Callable]:
    """The per-group quantities as (y_true, y_prob) -> number functions, for Fairlearn's MetricFrame."""
    def scored(yt, yp) -> int:
        positives = yt.sum(0)
        return int(((positives > 0) & (positives < len(yt))).sum())

    metrics: dict[str, Callable] = {"n_images": lambda yt, yp: len(yt), "n_positive_labels": lambda yt, yp:
                                    int(yt.sum()), "n_classes_scored": scored, **METRICS}
    for band in ("head", "medium", "tail"):
        cols = [j for j, c in enumerate(classes) if (bands or {}).get(c) == band]
        if cols:
            metrics[f"mAP_{band}"] = lambda yt, yp, cols=cols: macro_ap(yt[:, cols], yp[:, cols])
    width = len(classes)

    def matrices(metric: Callable) -> Callable:  # MetricFrame squeezes one-class or one-image groups to 1-D
        return lambda yt, yp: metric(np.asarray(yt).reshape(-1, width), np.asarray(yp).reshape(-1, width))

    return {name: matrices(metric) for name, metric in metrics.items()}


def subgroup_table(y_true: np.ndarray, y_prob: np.ndarray, classes: Sequence[str],
                   attributes: Mapping[str, Sequence[str]], min_images: int = 30, n_bootstrap: int = 200,
                   seed: int = 0, bands: Mapping[str, str] | None = None) -> list[SubgroupRow]:
    """Every group of every attribute (``attributes[name][i]`` is image ``i``'s group), with mAP, mAUROC and mECE
    over the classes the group can score (Fairlearn's ``MetricFrame.by_group``), mAP per frequency band (``bands``:
    class -> head/medium/tail; None where the group has no positive of the band), and stratified bootstrap CIs for
    groups of at least ``min_images``. Undefined numbers are NaN with a flag saying why; no group is dropped."""
    from fairlearn.metrics import MetricFrame

    y_true, y_prob = np.asarray(y_true), np.asarray(y_prob, dtype=np.float64)
    if y_true.shape != y_prob.shape or y_true.ndim != 2 or y_true.shape[1] != len(classes):
        raise InvalidInputError(f"labels {y_true.shape}, probabilities {y_prob.shape} and {len(classes)} classes "
                                "disagree")
    metrics = _group_metrics(classes, bands)
    rows = []
    for attribute, values in attributes.items():
        groups = _group_names(attribute, values, len(y_true))
        frame = MetricFrame(metrics=metrics, y_true=y_true, y_pred=y_prob,
                            sensitive_features=pd.Series(groups, name=attribute)).by_group
        for group, m in frame.sort_index().iterrows():
            n_images, positives = int(m["n_images"]), int(m["n_positive_labels"])
            flags = []
            if n_images < min_images:
                flags.append(f"small: {n_images} images (< {min_images}), no CI")
            if positives == 0:
                flags.append("no positive labels: mAP and mAUROC undefined")
            elif int(m["n_classes_scored"]) == 0:
                flags.append("no class has both positives and negatives: mAUROC undefined")
            row = SubgroupRow(attribute, str(group), n_images, positives, int(m["n_classes_scored"]),
                              float(m["mAP"]), float(m["mAUROC"]), float(m["mECE"]), flags=flags,
                              band_mAP={k.removeprefix("mAP_"): (float(m[k]) if np.isfinite(m[k]) else None)
                                        for k in metrics if k.startswith("mAP_")})
            if n_bootstrap and n_images >= min_images:
                mask = groups == str(group)
                row.ci95 = stratified_bootstrap(y_true[mask], y_prob[mask], n=n_bootstrap, seed=seed)
            rows.append(row)
    return rows


ATTRIBUTES = ("sex", "age_band", "projection")


@dataclass(frozen=True)
class SubgroupGate:
    """Promotion's subgroup rule: in every subgroup with at least ``min_images`` images and ``min_positive_labels``
    positive labels, the lower end of the 95 % CI of (challenger - champion) ``metric`` (paired, stratified
    bootstrap) must be >= -``margin``, and the challenger's mECE there must be <= ``max_ece``."""

    metric: str = "mAUROC"
    margin: float = 0.02
    max_ece: float = 0.2
    min_images: int = 100
    min_positive_labels: int = 50
    n_bootstrap: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        if self.metric not in ("mAUROC", "mAP"):
            raise InvalidInputError(f"the subgroup gate compares mAUROC or mAP, not {self.metric!r}")


def paired_subgroup_deltas(y_true: np.ndarray, challenger: np.ndarray, champion: np.ndarray | None,
                           attributes: Mapping[str, Sequence[str]], gate: SubgroupGate = SubgroupGate()) -> list[dict]:
    """Per group: challenger - champion ``gate.metric`` with a paired bootstrap CI (both models scored on the same
    replicate, resampled within the group by rarest finding), and the challenger's mECE; without a champion, the
    mECE alone (``diff`` and ``ci95`` None). Groups too small to judge are listed with ``gated: False`` and the
    reason."""
    metric = METRICS[gate.metric]
    y_true = np.asarray(y_true)
    rows = []
    for attribute, group, mask in group_masks(attributes, len(y_true)):
        yt, a = y_true[mask], challenger[mask]
        b = champion[mask] if champion is not None else None
        row = {"attribute": attribute, "group": group, "n_images": int(mask.sum()),
               "n_positive_labels": int(yt.sum()), "metric": gate.metric,
               "diff": float(metric(yt, a) - metric(yt, b)) if b is not None else None, "ci95": None,
               "challenger_mECE": macro_ece(yt, a)}
        if row["n_images"] < gate.min_images or row["n_positive_labels"] < gate.min_positive_labels:
            row.update(gated=False, reason=f"not gated: fewer than {gate.min_images} images or "
                                           f"{gate.min_positive_labels} positive labels")
            rows.append(row)
            continue
        row["gated"] = True
        if b is None:
            rows.append(row)
            continue
        row["ci95"] = paired_bootstrap_diff(yt, a, b, metric, gate.n_bootstrap, gate.seed,
                                            strata=rarest_finding_strata(yt))["ci95"]
        rows.append(row)
    return rows


def subgroup_refusals(rows: Sequence[Mapping], gate: SubgroupGate = SubgroupGate()) -> list[str]:
    """What refuses promotion, one line per failing subgroup with its numbers (empty: the rule holds)."""
    refusals = []
    for row in rows:
        if not row.get("gated"):
            continue
        where = f"{row['attribute']}={row['group']} ({row['n_images']} images)"
        low = row["ci95"][0] if row["ci95"] is not None else None  # None: no champion to compare with
        if low is not None and (not np.isfinite(low) or low < -gate.margin):
            refusals.append(f"{where}: {gate.metric} challenger - champion {row['diff']:+.4f}, 95 % CI low "
                            f"{low:.4f} < -{gate.margin}")
        if not np.isfinite(row["challenger_mECE"]) or row["challenger_mECE"] > gate.max_ece:
            refusals.append(f"{where}: challenger mECE {row['challenger_mECE']:.4f} > {gate.max_ece}")
    return refusals
