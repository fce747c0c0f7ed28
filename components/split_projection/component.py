from kfp import dsl
from kfp.dsl import Dataset, Output

from components._base import TOOLS_IMAGE


@dsl.component(base_image=TOOLS_IMAGE, install_kfp_package=False)
def split_projection(data_dir: str, run_dir: str, splits: Output[Dataset], val_fraction: float, seed: int,
                     removal_csv: str = "") -> str:
    """Patient-disjoint train/val split and the frontal/lateral manifests for every label and, under ``physician/``,
    the physician-verified labels of the same patients, written to the run's folder on the shared volume (``splits``
    records where; each training step reads the label source its profile names); returns the summary as JSON.

    Args:
        data_dir: CXR-LT data directory (with padchest_metadata.csv for projections).
        run_dir: the run's folder on the shared volume (plan_run).
        splits: location of the manifests (train.csv, val.csv, {train,val}_{frontal,lateral}.csv).
        val_fraction: fraction of patients held out for validation (plan_run: the profile's).
        seed: split seed (plan_run: the profile's).
        removal_csv: CSV of ImageIDs to drop ("" = none); the trainers read these manifests, so it applies to them.
    """
    import json
    from pathlib import Path

    from cxrlt.data.split import split_dataset
    from cxrlt.dataplane import publish

    meta = Path(data_dir) / "padchest_metadata.csv"
    folder = Path(run_dir) / "splits"
    summary = split_dataset(Path(data_dir) / "CXRLT_2026_training.csv", folder, meta if meta.exists() else None,
                            removal_csv or None, val_fraction, seed)
    location = publish(splits.path, folder, "splits", hashed=tuple(p.relative_to(folder).as_posix()
                                                                   for p in sorted(folder.rglob("*.csv"))),
                       **summary["images"])
    splits.metadata.update({**summary["images"], "path": location.path})
    return json.dumps(summary)
