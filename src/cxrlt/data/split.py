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
                 val_fraction: float = 0.1, seed: int = 42) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """The train/val manifests (with a ``view`` column when projections are known, and ``label_method`` when the
    metadata has PadChest's ``MethodLabel``) and a summary, in memory. ``removal_csv`` drops listed ImageIDs.

    One patient-disjoint split serves both label sources: the physician-verified manifests are the subsets of the
    same train and validation patients (:func:`label_source_frames`), so no task trains on another's validation
    patients and Task 1 keeps every image.
    """
    df = read_training_csv(train_csv)
    summary: dict = {"input_images": len(df), "seed": seed, "val_fraction": val_fraction}
    before = len(df)
    df = drop_removed(df, removal_csv)
    summary["removed_images"] = before - len(df)
    df["label_method"] = ""
    if metadata_csv is not None:
        proj = read_projections(metadata_csv)
        df["view"] = df["ImageID"].map(proj.views)
        meta = pd.read_csv(metadata_csv, dtype=str, keep_default_na=False).set_index("ImageID")
        excluded = df.loc[df["view"].isna(), "ImageID"]
        # counted over *training* images: the projection (COSTAL, blank, ...) or "not in metadata"
        reasons = excluded.map(lambda i: (meta["Projection"].get(i, "<not in metadata>").strip() or "<blank>"))
        summary["excluded_projections"] = reasons.value_counts().to_dict()
        summary["excluded_images"] = len(excluded)
        df = df[df["view"].notna()].reset_index(drop=True)
        if "MethodLabel" in meta.columns:
            df["label_method"] = df["ImageID"].map(read_label_methods(metadata_csv)).fillna("<not in metadata>")
            summary["label_methods"] = df["label_method"].value_counts().to_dict()
    else:
        df["view"] = ""
        summary["excluded_images"] = 0
    df = df[["ImageID", "PatientID", "view", "label_method", *KNOWN_CLASSES]]
    train, val = patient_split(df, val_fraction, seed)
    summary["patients"] = {"train": int(train["PatientID"].nunique()), "val": int(val["PatientID"].nunique())}
    summary["images"] = {"train": len(train), "val": len(val)}
    return train, val, summary


def label_source_frames(train: pd.DataFrame, val: pd.DataFrame, label_source: str,
                        where: str | Path = "the split") -> tuple[pd.DataFrame, pd.DataFrame]:
    """The (train, val) rows of one label source: every row (``all``), or those PadChest's physicians labelled
    (``physician``: ``MethodLabel == Physician``, seed 000's physician-verified subset)."""
    if label_source not in LABEL_SOURCES:
        raise InvalidInputError(f"label source must be one of {LABEL_SOURCES}, got {label_source!r}")
    if label_source == "all":
        return train, val
    if "label_method" not in train.columns or not (train["label_method"] != "").any():
        raise InvalidInputError(f"{where}: label_source physician needs PadChest's MethodLabel column in the "
                                f"metadata CSV ({PADCHEST_METADATA_CSV}); set the profile's label_source to all")
    keep = [frame[frame["label_method"] == "Physician"].reset_index(drop=True) for frame in (train, val)]
    return keep[0], keep[1]


def split_dataset(train_csv: str | Path, out_dir: str | Path, metadata_csv: str | Path | None = None,
                  removal_csv: str | Path | None = None, val_fraction: float = 0.1, seed: int = 42) -> dict:
    """Write ``train.csv``, ``val.csv`` and ``{train,val}_{frontal,lateral}.csv`` manifests to ``out_dir`` for every
    label, and the same files under ``physician/`` for the physician-verified labels when the metadata has them.

    The trainers read these manifests (``--splits``, each task the label source its profile names), so a removal list
    applied here is what every network trains and validates on. ``split_summary.json`` counts both sources.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, val, summary = split_frames(train_csv, metadata_csv, removal_csv, val_fraction, seed)
    summary["files"], summary["label_sources"] = {}, {}
    sources = ["all"] + (["physician"] if summary.get("label_methods") else [])
    for source in sources:
        folder = out if source == "all" else out / source
        folder.mkdir(parents=True, exist_ok=True)
        parts = dict(zip(("train", "val"), label_source_frames(train, val, source), strict=True))
        counts = {}
        for part_name, part in parts.items():
            named = {part_name: part}
            if metadata_csv is not None:
                named |= {f"{part_name}_{view}": part[part["view"] == view] for view in VIEWS}
            for name, frame in named.items():
                frame.to_csv(folder / f"{name}.csv", index=False)
                counts[name] = len(frame)
                summary["files"][name if source == "all" else f"{source}/{name}"] = \
                    str((folder / f"{name}.csv").relative_to(out))
        summary["label_sources"][source] = counts
    summary["images"] = summary["label_sources"]["all"]
    (out / SPLIT_SUMMARY).write_text(json.dumps(summary, indent=2))
    return summary


def read_manifest(path: str | Path) -> pd.DataFrame:
    """A manifest as written by :func:`split_dataset`; its ImageIDs are checked again, since it sits on a volume that
    other steps can write."""
    df = pd.read_csv(path, dtype={"ImageID": str, "PatientID": str, "view": str, "label_method": str},
                     keep_default_na=False)
    check_image_ids(df["ImageID"], path)
    return df


def training_frames(data_dir: str | Path, splits_dir: str | Path | None, val_fraction: float, seed: int,
                    label_source: str = "all") -> tuple[pd.DataFrame, pd.DataFrame]:
    """The (train, val) manifests a trainer uses, of its profile's label source: those written by ``cxrlt data
    split`` when ``splits_dir`` is given (with its removal list), else the same split computed in memory."""
    if label_source not in LABEL_SOURCES:
        raise InvalidInputError(f"label source must be one of {LABEL_SOURCES}, got {label_source!r}")
    if splits_dir is not None:
        folder = Path(splits_dir) if label_source == "all" else Path(splits_dir) / label_source
        if not (folder / "train.csv").exists():
            if label_source != "all" and (Path(splits_dir) / "train.csv").exists():
                raise InvalidInputError(f"{splits_dir}: no {label_source}/ manifests: the split found no MethodLabel "
                                        f"column in the metadata; set the profile's label_source to all")
            raise NotFoundError(f"{folder}: no train.csv (run cxrlt data split --out {splits_dir})")
        train, val = read_manifest(folder / "train.csv"), read_manifest(folder / "val.csv")
        for frame in (train, val):
            frame[list(KNOWN_CLASSES)] = frame[list(KNOWN_CLASSES)].astype(int)
        return train, val
    data_dir = Path(data_dir)
    meta = data_dir / PADCHEST_METADATA_CSV
    train, val, _ = split_frames(data_dir / TRAINING_CSV, meta if meta.exists() else None, None, val_fraction, seed)
    return label_source_frames(train, val, label_source, data_dir)
