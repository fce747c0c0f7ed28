"""Leak-free proxy validation: hold out 6 known classes, train without them, score them zero-shot.

For each proxy group (A, B, C) the held-out classes are removed from the report text, the ASL targets and the
training images (the LeakGuard enforces it on every batch); the model is then scored for exactly those classes on the
patient-disjoint validation part of the training set, whose images it never trained on. Test labels are never read:
the challenge does not release them, and tuning on them would leak.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score

from cxrlt.config import load_config
from cxrlt.data.images import PreprocessConfig, load_preprocessed
from cxrlt.data.preprocess import load_eval_images
from cxrlt.data.split import training_frames
from cxrlt.data.tables import DEV_LABELS_CSV, IMAGES_DIR
from cxrlt.errors import InvalidInputError
from cxrlt.labels import PROXY_GROUPS
from cxrlt.zeroshot.predict import ZeroShotPredictor
from cxrlt.zeroshot.train import ZeroShotRequest, train_zeroshot

LABELLED_SOURCES = ("val", "dev")


def labelled_eval_set(data_dir: str | Path, source: str, preprocess: PreprocessConfig, val_fraction: float = 0.1,
                      split_seed: int = 42, splits: str | Path | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """Labelled images a user has, for tuning: ``val`` (the patient-disjoint validation part of the training set,
    training labels) or ``dev``. ``test`` is refused: its labels are for the final evaluation only."""
    if source not in LABELLED_SOURCES:
        raise InvalidInputError(f"labelled source must be one of {LABELLED_SOURCES} (test labels are never used for "
                                f"tuning or calibration), got {source!r}")
    data_dir = Path(data_dir)
    if source == "dev":
        return load_eval_images(data_dir, DEV_LABELS_CSV, preprocess)
    _, val = training_frames(data_dir, splits, val_fraction, split_seed)
    labels = val.drop(columns=["view", "PatientID"]).reset_index(drop=True)
    return labels, np.stack([load_preprocessed(data_dir / IMAGES_DIR / i, preprocess) for i in labels["ImageID"]])


def calibrate_on_known(model_dir: str | Path, data_dir: str | Path, source: str = "val",
                       splits: str | Path | None = None) -> dict:
    """Fit the model's Platt calibration on the *known* classes it trained on, with the labelled images of
    :func:`labelled_eval_set` (the split its card records), and save it in its card; it is applied to unseen
    findings. Returns the calibration (slope ``a``, bias ``b``, scoring)."""
    from cxrlt.config import DataConfig
    from cxrlt.labels import KNOWN_CLASSES

    predictor = ZeroShotPredictor(model_dir)
    classes = [c for c in KNOWN_CLASSES if c in predictor.card["train_classes"]]
    defaults = DataConfig()
    data_split = predictor.card.get("data_split", {"val_fraction": defaults.val_fraction,
                                                   "split_seed": defaults.split_seed})
    labels, images = labelled_eval_set(data_dir, source, predictor.preprocess, data_split["val_fraction"],
                                       data_split["split_seed"], splits)
    return predictor.fit_calibration(images, labels[classes].to_numpy(), classes)


def proxy_validate(config, data_dir: str | Path, out_dir: str | Path, groups: list[str] | None = None,
                   epochs: int | None = None, splits: str | Path | None = None) -> dict:
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    data_cfg = load_config(config)["data"]
    groups = groups or list(PROXY_GROUPS)
    results = {}
    cache: tuple | None = None
    for g in groups:
        held = list(PROXY_GROUPS[g])
        run = out_dir / f"group_{g}"
        if not (run / "zeroshot.json").exists():
            train_zeroshot(ZeroShotRequest(config, data_dir, run, held_out=held, epochs=epochs, splits=splits))
        predictor = ZeroShotPredictor(run)
        if cache is None or cache[0] != predictor.preprocess:
            cache = (predictor.preprocess, *labelled_eval_set(data_dir, "val", predictor.preprocess,
                                                             data_cfg["val_fraction"], data_cfg["split_seed"], splits))
        labels, images = cache[1], cache[2]
        probs = predictor.predict(images, held, calibrated=False)
        per_class = {}
        for j, c in enumerate(held):
            y = labels[c].to_numpy()
            per_class[c] = {"AP": float(average_precision_score(y, probs[:, j])) if y.sum() else None,
                            "prevalence": float(y.mean()), "n_pos": int(y.sum())}
        aps = [v["AP"] for v in per_class.values() if v["AP"] is not None]
        base = [v["prevalence"] for v in per_class.values() if v["AP"] is not None]
        results[g] = {"held_out": held, "per_class": per_class, "mAP": float(np.mean(aps)) if aps else None,
                      "chance_mAP": float(np.mean(base)) if base else None}
    valid = [r["mAP"] for r in results.values() if r["mAP"] is not None]
    summary = {"groups": results, "average_mAP": float(np.mean(valid)) if valid else None,
               "scored_on": f"validation part of the training set ({len(cache[1]) if cache else 0} images)"}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "proxy_validation.json").write_text(json.dumps(summary, indent=2))
    return summary
