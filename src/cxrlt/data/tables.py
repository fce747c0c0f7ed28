"""The challenge's CSV formats: training labels, dev/test lists, removal lists, PadChest projections, submissions.

IDs are always read as strings (a float PatientID silently merges patients). Predictions are keyed by class name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlt.errors import CxrltError
from cxrlt.labels import KNOWN_CLASSES, TRAINING_META_COLUMNS, LabelSpaceError, canonical_class, check_columns

TRAINING_CSV = "CXRLT_2026_training.csv"
DEV_LABELS_CSV = "CXRLT_2026_dev_labels.csv"
TEST_LABELS_CSV = "CXRLT_2026_test_labels.csv"
PADCHEST_METADATA_CSV = "padchest_metadata.csv"
IMAGES_DIR = "images"

FRONTAL_PROJECTIONS = frozenset({"PA", "AP", "AP_horizontal"})
LATERAL_PROJECTIONS = frozenset({"L"})
VIEWS: tuple[str, ...] = ("frontal", "lateral")

_ID_DTYPES = {"ImageID": str, "PatientID": str, "StudyDate_DICOM": str}

#: An ImageID names one file inside the images directory (and its cache file): no path separator, not "." or "..",
#: no control character. Anything else could read or write outside the data and cache directories.
SAFE_IMAGE_ID = r"^(?!\.{1,2}$)[^/\\\x00-\x1f\x7f]+$"


class TableError(CxrltError, ValueError):
    """A CSV does not have the expected structure; the message names the file and the problem."""


def unsafe_image_ids(ids: pd.Series) -> pd.Series:
    """The ImageIDs (with their row index) that are not plain file names; empty cells are left to other checks."""
    present = ids.dropna().astype(str)
    return present[~present.str.match(SAFE_IMAGE_ID)]


def check_image_ids(ids: pd.Series, source: str | Path) -> None:
    """Refuse ImageIDs that are not plain file names, naming the CSV line (header = line 1) and the value."""
    bad = unsafe_image_ids(ids)
    if len(bad):
        shown = ", ".join(f"line {int(i) + 2}: {v!r}" for i, v in bad.head(5).items())
        raise TableError(f"{source}: {len(bad)} ImageID(s) are not plain file names (no path separators, '.' or "
                         f"'..', or control characters): {shown}")


def _read_csv(path: str | Path, check_ids: bool = True) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise TableError(f"{path}: file not found")
    try:
        df = pd.read_csv(path, dtype=_ID_DTYPES, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError:
        raise TableError(f"{path}: file is empty") from None
    if check_ids and "ImageID" in df.columns:
        check_image_ids(df["ImageID"], path)
    return df


def read_training_csv(path: str | Path, strict: bool = True) -> pd.DataFrame:
    """Read ``CXRLT_2026_training.csv``: ImageID, StudyDate_DICOM, PatientID, then the 30 label columns.

    With ``strict`` the label columns must be exactly :data:`KNOWN_CLASSES` and binary; use ``strict=False`` to load
    a damaged file for validation, which reports every problem instead of stopping at the first.
    """
    df = _read_csv(path, check_ids=strict)
    if not strict:
        return df
    missing_meta = [c for c in TRAINING_META_COLUMNS if c not in df.columns]
    if missing_meta:
        raise TableError(f"{path}: missing metadata columns {missing_meta}")
    try:
        check_columns(list(df.columns[len(TRAINING_META_COLUMNS) :]), KNOWN_CLASSES)
    except LabelSpaceError as exc:
        raise TableError(f"{path}: {exc}") from None
    labels = df[list(KNOWN_CLASSES)]
    bad = ~labels.isin([0, 1])
    if bad.to_numpy().any():
        rows = df.loc[bad.any(axis=1), "ImageID"].tolist()[:5]
        raise TableError(f"{path}: labels must be 0 or 1; offending ImageIDs {rows}")
    df[list(KNOWN_CLASSES)] = labels.astype(np.int8)
    if df["ImageID"].duplicated().any():
        raise TableError(f"{path}: duplicate ImageIDs {df.loc[df['ImageID'].duplicated(), 'ImageID'].tolist()[:5]}")
    return df


def read_label_csv(path: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """Read a labelled evaluation CSV (ImageID + any known/unseen class columns). Returns the frame and its classes."""
    df = _read_csv(path)
    if "ImageID" not in df.columns:
        raise TableError(f"{path}: no ImageID column")
    classes = []
    for col in df.columns:
        try:
            classes.append((col, canonical_class(col)))
        except LabelSpaceError:
            continue
    df = df.rename(columns=dict(classes))
    return df, [c for _, c in classes]


def read_id_list(path: str | Path) -> list[str]:
    """Read a dev/test list or a removal list: any CSV with an ``ImageID`` column."""
    df = _read_csv(path)
    if "ImageID" not in df.columns:
        raise TableError(f"{path}: no ImageID column")
    return df["ImageID"].dropna().tolist()


def drop_removed(df: pd.DataFrame, removal_csv: str | Path | None) -> pd.DataFrame:
    if removal_csv is None:
        return df
    removed = set(read_id_list(removal_csv))
    return df[~df["ImageID"].isin(removed)].reset_index(drop=True)


def view_of_projection(projection: str) -> str | None:
    """PadChest ``Projection`` -> ``frontal`` / ``lateral``; ``None`` for anything else (COSTAL, EXCLUDE, blank)."""
    p = str(projection).strip()
    if p in FRONTAL_PROJECTIONS:
        return "frontal"
    if p in LATERAL_PROJECTIONS:
        return "lateral"
    return None


@dataclass
class ProjectionTable:
    """ImageID -> view, plus what was excluded and why (counted, so users see how much data a filter drops)."""

    views: dict[str, str]
    excluded: dict[str, int] = field(default_factory=dict)


def read_projections(path: str | Path) -> ProjectionTable:
    """Read the PadChest master (or our metadata) CSV's ``Projection`` column."""
    df = _read_csv(path)
    for col in ("ImageID", "Projection"):
        if col not in df.columns:
            raise TableError(f"{path}: no {col} column")
    views: dict[str, str] = {}
    excluded: dict[str, int] = {}
    for image_id, projection in zip(df["ImageID"], df["Projection"].fillna(""), strict=True):
        view = view_of_projection(projection)
        if view is None:
            key = str(projection).strip() or "<blank>"
            excluded[key] = excluded.get(key, 0) + 1
        else:
            views[image_id] = view
    return ProjectionTable(views=views, excluded=excluded)


LABEL_SOURCES = ("all", "physician")


def read_label_sets(path: str | Path) -> dict[str, set[str]]:
    """ImageID -> the class names marked 1 in a label CSV (any subset of the known and unseen classes)."""
    df = _read_csv(path)
    if "ImageID" not in df.columns:
        raise TableError(f"{path}: no ImageID column")
    classes = {}
    for col in df.columns:
        try:
            classes[col] = canonical_class(col)
        except LabelSpaceError:
            continue  # ImageID and columns that are not classes
    return {str(row["ImageID"]): {name for col, name in classes.items() if str(row[col]).strip() in ("1", "1.0")}
            for _, row in df.iterrows()}


def read_label_methods(path: str | Path) -> dict[str, str]:
    """ImageID -> PadChest ``MethodLabel`` (``Physician`` or ``RNN_model``) from the master/metadata CSV."""
    df = _read_csv(path)
    if "MethodLabel" not in df.columns:
        raise TableError(f"{path}: no MethodLabel column, so labels cannot be filtered by source (PadChest's master "
                         "CSV has one; use --label-source all)")
    return dict(zip(df["ImageID"], df["MethodLabel"].fillna("").str.strip(), strict=True))


def write_submission(path: str | Path, image_ids: Sequence[str], probs: dict[str, np.ndarray] | pd.DataFrame,
                     classes: Sequence[str]) -> Path:
    """Write ``ImageID`` + one probability column per class, in ``classes`` order, taking columns by name."""
    path = Path(path)
    out = pd.DataFrame({"ImageID": list(image_ids)})
    for name in classes:
        col = np.asarray(probs[name], dtype=np.float64)
        if col.shape != (len(out),):
            raise TableError(f"{name}: expected {len(out)} probabilities, got shape {col.shape}")
        if not np.isfinite(col).all() or (col < 0).any() or (col > 1).any():
            raise TableError(f"{name}: probabilities must be finite and within [0, 1]")
        out[name] = col
    path.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(path, index=False, float_format="%.6f")
    return path


def bands_from_training(train_csv: str | Path) -> dict[str, str]:
    """Each known class's frequency band (head, medium, tail) from its prevalence in the training table."""
    from cxrlt.labels import frequency_bands

    train = read_training_csv(train_csv)
    return frequency_bands({c: int(train[c].sum()) for c in KNOWN_CLASSES}, len(train))
