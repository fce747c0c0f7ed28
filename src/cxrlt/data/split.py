"""``cxrlt data split``: patient-disjoint train/val split plus the projection split into per-view manifests.

A manifest is a CSV: ``ImageID, PatientID, view`` followed by the 30 label columns. Validation is patient-disjoint
(GroupShuffleSplit on PatientID) so the same patient's other images cannot inflate validation scores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from sklearn.model_selection import GroupShuffleSplit

from cxrlt.data.tables import VIEWS, drop_removed, read_projections, read_training_csv
from cxrlt.labels import KNOWN_CLASSES

SPLIT_SUMMARY = "split_summary.json"


def patient_split(df: pd.DataFrame, val_fraction: float = 0.1, seed: int = 42) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split rows so that no PatientID appears on both sides (about ``val_fraction`` of patients in val)."""
    if df["PatientID"].isna().any():
        raise ValueError("PatientID has blanks: a patient-disjoint split is impossible")
    if df["PatientID"].nunique() < 2:
        raise ValueError("need at least two patients to split")
    gss = GroupShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
    train_idx, val_idx = next(gss.split(df, groups=df["PatientID"]))
    return df.iloc[train_idx].reset_index(drop=True), df.iloc[val_idx].reset_index(drop=True)


def split_frames(train_csv: str | Path, metadata_csv: str | Path | None = None, removal_csv: str | Path | None = None,
                 val_fraction: float = 0.1, seed: int = 42) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """The train/val manifests (with a ``view`` column when projections are known) and a summary, in memory."""
    df = drop_removed(read_training_csv(train_csv), removal_csv)
    summary: dict = {"input_images": len(df), "seed": seed, "val_fraction": val_fraction}
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
                  removal_csv: str | Path | None = None, val_fraction: float = 0.1, seed: int = 42) -> dict:
    """Write ``train.csv``, ``val.csv`` and ``{train,val}_{frontal,lateral}.csv`` manifests to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, val, summary = split_frames(train_csv, metadata_csv, removal_csv, val_fraction, seed)
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
    return pd.read_csv(path, dtype={"ImageID": str, "PatientID": str, "view": str}, keep_default_na=False)
