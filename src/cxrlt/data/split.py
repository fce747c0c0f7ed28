"""``cxrlt data split``: patient-disjoint train/val split plus the projection split into per-view manifests.

A manifest is a CSV: ``ImageID, PatientID, view`` followed by the 30 label columns. Validation is patient-disjoint
(GroupShuffleSplit on PatientID) so the same patient's other images cannot inflate validation scores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from sklearn.model_selection import GroupShuffleSplit

from cxrlt.data.tables import (
    LABEL_SOURCES,
    PADCHEST_METADATA_CSV,
    TRAINING_CSV,
    VIEWS,
    check_image_ids,
    drop_removed,
    read_label_methods,
    read_projections,
    read_training_csv,
)
from cxrlt.errors import InvalidInputError, NotFoundError
from cxrlt.labels import KNOWN_CLASSES

SPLIT_SUMMARY = "split_summary.json"


def patient_split(df: pd.DataFrame, val_fraction: float = 0.1, seed: int = 42) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split rows so that no PatientID appears on both sides (about ``val_fraction`` of patients in val)."""
    if df["PatientID"].isna().any():
        raise InvalidInputError("PatientID has blanks: a patient-disjoint split is impossible")
    if df["PatientID"].nunique() < 2:
        raise InvalidInputError("need at least two patients to split")
    gss = GroupShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
    train_idx, val_idx = next(gss.split(df, groups=df["PatientID"]))
    return df.iloc[train_idx].reset_index(drop=True), df.iloc[val_idx].reset_index(drop=True)


def split_frames(train_csv: str | Path, metadata_csv: str | Path | None = None, removal_csv: str | Path | None = None,
                 val_fraction: float = 0.1, seed: int = 42, label_source: str = "all",
                 ) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """The train/val manifests (with a ``view`` column when projections are known) and a summary, in memory.

    ``removal_csv`` drops listed ImageIDs; ``label_source="physician"`` keeps images whose PadChest ``MethodLabel``
    is ``Physician`` (seed 000's physician-verified subset). Both are counted in the summary.
    """
    if label_source not in LABEL_SOURCES:
        raise InvalidInputError(f"label source must be one of {LABEL_SOURCES}, got {label_source!r}")
    df = read_training_csv(train_csv)
    summary: dict = {"input_images": len(df), "seed": seed, "val_fraction": val_fraction, "label_source": label_source}
    before = len(df)
    df = drop_removed(df, removal_csv)
    summary["removed_images"] = before - len(df)
    if label_source == "physician":
        if metadata_csv is None:
            raise InvalidInputError("--label-source physician needs the PadChest metadata CSV (its MethodLabel column)")
        methods = df["ImageID"].map(read_label_methods(metadata_csv)).fillna("<not in metadata>")
        summary["label_methods"] = methods.value_counts().to_dict()
        df = df[methods == "Physician"].reset_index(drop=True)
        summary["label_source_excluded_images"] = int((methods != "Physician").sum())
    if metadata_csv is not None:
        proj = read_projections(metadata_csv)
        df["view"] = df["ImageID"].map(proj.views)
        projection = pd.read_csv(metadata_csv, dtype=str, keep_default_na=False).set_index("ImageID")["Projection"]
        excluded = df.loc[df["view"].isna(), "ImageID"]
        # counted over *training* images: the projection (COSTAL, blank, ...) or "not in metadata"
        reasons = excluded.map(lambda i: (projection.get(i, "<not in metadata>").strip() or "<blank>"))
        summary["excluded_projections"] = reasons.value_counts().to_dict()
        summary["excluded_images"] = len(excluded)
        df = df[df["view"].notna()].reset_index(drop=True)
    else:
        df["view"] = ""
        summary["excluded_images"] = 0
    df = df[["ImageID", "PatientID", "view", *KNOWN_CLASSES]]
    train, val = patient_split(df, val_fraction, seed)
    summary["patients"] = {"train": int(train["PatientID"].nunique()), "val": int(val["PatientID"].nunique())}
    summary["images"] = {"train": len(train), "val": len(val)}
    return train, val, summary


def split_dataset(train_csv: str | Path, out_dir: str | Path, metadata_csv: str | Path | None = None,
                  removal_csv: str | Path | None = None, val_fraction: float = 0.1, seed: int = 42,
                  label_source: str = "all") -> dict:
    """Write ``train.csv``, ``val.csv`` and ``{train,val}_{frontal,lateral}.csv`` manifests to ``out_dir``.

    The trainers read these manifests (``--splits``), so a removal list or label-source filter applied here is what
    every network trains and validates on.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, val, summary = split_frames(train_csv, metadata_csv, removal_csv, val_fraction, seed, label_source)
    files = {"train": "train.csv", "val": "val.csv"}
    train.to_csv(out / files["train"], index=False)
    val.to_csv(out / files["val"], index=False)
    if metadata_csv is not None:
        for part_name, part in (("train", train), ("val", val)):
            for view in VIEWS:
                name = f"{part_name}_{view}.csv"
                sub = part[part["view"] == view]
                sub.to_csv(out / name, index=False)
                summary["images"][f"{part_name}_{view}"] = len(sub)
                files[f"{part_name}_{view}"] = name
    summary["files"] = files
    (out / SPLIT_SUMMARY).write_text(json.dumps(summary, indent=2))
    return summary


def read_manifest(path: str | Path) -> pd.DataFrame:
    """A manifest as written by :func:`split_dataset`; its ImageIDs are checked again, since it sits on a volume that
    other steps can write."""
    df = pd.read_csv(path, dtype={"ImageID": str, "PatientID": str, "view": str}, keep_default_na=False)
    check_image_ids(df["ImageID"], path)
    return df


def training_frames(data_dir: str | Path, splits_dir: str | Path | None, val_fraction: float, seed: int,
                    ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The (train, val) manifests a trainer uses: those written by ``cxrlt data split`` when ``splits_dir`` is
    given (with its removal list and label-source filter), else the same split computed in memory (no removal)."""
    if splits_dir is not None:
        splits_dir = Path(splits_dir)
        if not (splits_dir / "train.csv").exists():
            raise NotFoundError(f"{splits_dir}: no train.csv (run cxrlt data split --out {splits_dir})")
        train, val = read_manifest(splits_dir / "train.csv"), read_manifest(splits_dir / "val.csv")
        for frame in (train, val):
            frame[list(KNOWN_CLASSES)] = frame[list(KNOWN_CLASSES)].astype(int)
        return train, val
    data_dir = Path(data_dir)
    meta = data_dir / PADCHEST_METADATA_CSV
    train, val, _ = split_frames(data_dir / TRAINING_CSV, meta if meta.exists() else None, None, val_fraction, seed)
    return train, val
