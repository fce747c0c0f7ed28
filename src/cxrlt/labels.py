"""The CXR-LT 2026 label space: 30 known findings, 6 unseen findings, frequency bands and zero-shot proxy groups.

Every prediction in cxrlt is keyed by these exact names. The training CSV's column order is *not* sorted
(it is roughly frequency-descending), so code must never rely on positions across files.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from cxrlt.errors import CxrltError

#: The 30 Task 1 classes, in the exact column order and spelling of ``CXRLT_2026_training.csv``.
KNOWN_CLASSES: tuple[str, ...] = (
    "Normal",
    "aortic elongation",
    "cardiomegaly",
    "pleural effusion",
    "Nodule",
    "atelectasis",
    "pleural thickening",
    "aortic atheromatosis",
    "Support Devices",
    "alveolar pattern",
    "fracture",
    "Hernia",
    "Emphysema",
    "azygos lobe",
    "Hydropneumothorax",
    "Kyphosis",
    "Mass",
    "Pneumothorax",
    "Subcutaneous Emphysema",
    "pneumoperitoneo",
    "vascular hilar enlargement",
    "vertebral degenerative changes",
    "hyperinflated lung",
    "interstitial pattern",
    "central venous catheter",
    "hypoexpansion",
    "bronchiectasis",
    "hemidiaphragm elevation",
    "sternotomy",
    "calcified densities",
)

#: The 6 Task 2 (zero-shot) classes, in submission order. ``goiter`` is lower case as in the reference submissions.
UNSEEN_CLASSES: tuple[str, ...] = ("Scoliosis", "Osteopenia", "Bulla", "Infarction", "Adenopathy", "goiter")

ALL_CLASSES: tuple[str, ...] = KNOWN_CLASSES + UNSEEN_CLASSES

#: Metadata columns that precede the labels in the training CSV.
TRAINING_META_COLUMNS: tuple[str, ...] = ("ImageID", "StudyDate_DICOM", "PatientID")

NORMAL = "Normal"

#: Band thresholds on *training* prevalence (CXR-LT convention): head > 10 %, medium 1-10 %, tail < 1 %.
HEAD_THRESHOLD = 0.10
TAIL_THRESHOLD = 0.01
BANDS: tuple[str, ...] = ("head", "medium", "tail")

#: Zero-shot proxy groups: 6 known classes each, held out together to validate zero-shot transfer without leaking
#: the real unseen classes.
#:
#: - ``A`` structural anomalies & devices: findings defined by shape or hardware (hernia, lobe variant, deformity,
#:   post-surgical and device changes). They mirror Scoliosis/goiter/Bulla, whose recognition rests on morphology.
#: - ``B`` high-prevalence parenchymal/pleural findings: common findings whose descriptions overlap with many others.
#:   They test whether the text tower separates close descriptions, as Infarction vs consolidation-like patterns must.
#: - ``C`` critical & rare findings: tail-band, clinically urgent air-leak/mass findings with few positives, the
#:   regime of the real unseen classes (expected prevalence 1-5 %).
#:
#: The groups are disjoint and exclude ``Normal`` (which has no descriptive content to transfer).
PROXY_GROUPS: dict[str, tuple[str, ...]] = {
    "A": ("Hernia", "azygos lobe", "Kyphosis", "sternotomy", "central venous catheter", "Support Devices"),
    "B": ("cardiomegaly", "pleural effusion", "atelectasis", "alveolar pattern", "interstitial pattern", "Nodule"),
    "C": ("Pneumothorax", "Hydropneumothorax", "pneumoperitoneo", "Subcutaneous Emphysema", "Mass", "fracture"),
}

_UNSEEN_ALIASES = {name.lower(): name for name in UNSEEN_CLASSES}


class LabelSpaceError(CxrltError, ValueError):
    """A class name or column set does not match the CXR-LT label space."""


def canonical_unseen(name: str) -> str:
    """Return the canonical spelling of an unseen class, accepting any case (``Goiter`` -> ``goiter``)."""
    try:
        return _UNSEEN_ALIASES[name.strip().lower()]
    except KeyError:
        raise LabelSpaceError(f"{name!r} is not one of the unseen classes {list(UNSEEN_CLASSES)}") from None


def canonical_class(name: str) -> str:
    """Return the canonical spelling of a known (exact) or unseen (case-insensitive) class name."""
    if name in KNOWN_CLASSES:
        return name
    return canonical_unseen(name)


def unseen_columns_in(columns: Iterable[str]) -> list[str]:
    """Columns that name an unseen class, in any case: the zero-shot leak guard uses this."""
    return [c for c in columns if c.strip().lower() in _UNSEEN_ALIASES]


def band_of(prevalence: float) -> str:
    """Band of one class from its training prevalence (fraction of images that are positive)."""
    if prevalence > HEAD_THRESHOLD:
        return "head"
    if prevalence >= TAIL_THRESHOLD:
        return "medium"
    return "tail"


def frequency_bands(positive_counts: Mapping[str, int], n_images: int) -> dict[str, str]:
    """Map each class to head/medium/tail from its training positive count and the number of training images."""
    if n_images <= 0:
        raise LabelSpaceError("frequency bands need at least one training image")
    return {name: band_of(count / n_images) for name, count in positive_counts.items()}


def check_columns(columns: Sequence[str], expected: Sequence[str]) -> None:
    """Raise with a readable diff when ``columns`` is not exactly ``expected`` (names and order)."""
    columns, expected = list(columns), list(expected)
    if columns == expected:
        return
    missing = [c for c in expected if c not in columns]
    extra = [c for c in columns if c not in expected]
    parts = []
    if missing:
        parts.append(f"missing {missing}")
    if extra:
        parts.append(f"unexpected {extra}")
    if not parts:
        parts.append("same names in a different order")
    raise LabelSpaceError("column mismatch: " + "; ".join(parts))
