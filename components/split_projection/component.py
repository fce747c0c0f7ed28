from kfp import dsl
from kfp.dsl import Dataset, Output

from components._base import TOOLS_IMAGE


@dsl.component(base_image=TOOLS_IMAGE, install_kfp_package=False)
def split_projection(data_dir: str, splits: Output[Dataset], val_fraction: float = 0.1, seed: int = 42,
                     label_source: str = "all", removal_csv: str = "") -> str:
    """Patient-disjoint train/val split and the frontal/lateral manifests; returns the split summary as JSON.

    Args:
        data_dir: CXR-LT data directory (with padchest_metadata.csv for projections).
        splits: directory of manifests (train.csv, val.csv, {train,val}_{frontal,lateral}.csv).
        val_fraction: fraction of patients held out for validation.
        seed: split seed (use the profile's data.val_fraction and data.split_seed).
        label_source: all, or physician (PadChest MethodLabel == Physician only).
        removal_csv: CSV of ImageIDs to drop ("" = none); the trainers read these manifests, so it applies to them.
    """
    import json
    from pathlib import Path

    from cxrlt.data.split import split_dataset

    meta = Path(data_dir) / "padchest_metadata.csv"
    summary = split_dataset(Path(data_dir) / "CXRLT_2026_training.csv", splits.path, meta if meta.exists() else None,
                            removal_csv or None, val_fraction, seed, label_source)
    splits.metadata.update(summary["images"])
    return json.dumps(summary)
