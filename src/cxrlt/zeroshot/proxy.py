"""Leak-free proxy validation: hold out 6 known classes, train without them, score them zero-shot.

For each proxy group (A, B, C) the held-out classes are removed from the report text, the ASL targets and the
training images (the LeakGuard enforces it on every batch); the model is then scored on the test images for exactly
those classes, whose labels it never saw.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score

from cxrlt.data.images import PreprocessConfig, load_preprocessed
from cxrlt.data.tables import IMAGES_DIR, TEST_LABELS_CSV
from cxrlt.labels import PROXY_GROUPS
from cxrlt.zeroshot.predict import ZeroShotPredictor
from cxrlt.zeroshot.train import ZeroShotRequest, train_zeroshot


def load_eval_images(data_dir: Path, labels_csv: str, preprocess: PreprocessConfig) -> tuple[pd.DataFrame, np.ndarray]:
    """The labelled images of ``labels_csv`` as [0, 1] squares under a model's preprocessing contract."""
    labels = pd.read_csv(data_dir / labels_csv, dtype={"ImageID": str})
    return labels, np.stack([load_preprocessed(data_dir / IMAGES_DIR / i, preprocess) for i in labels["ImageID"]])


def proxy_validate(config, data_dir: str | Path, out_dir: str | Path, groups: list[str] | None = None,
                   epochs: int | None = None) -> dict:
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    groups = groups or list(PROXY_GROUPS)
    results = {}
    cache: tuple | None = None
    for g in groups:
        held = list(PROXY_GROUPS[g])
        run = out_dir / f"group_{g}"
        if not (run / "zeroshot.json").exists():
            train_zeroshot(ZeroShotRequest(config, data_dir, run, held_out=held, epochs=epochs))
        predictor = ZeroShotPredictor(run)
        if cache is None or cache[0] != predictor.image_size:
            cache = (predictor.image_size, *load_eval_images(data_dir, TEST_LABELS_CSV, predictor.preprocess))
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
    summary = {"groups": results, "average_mAP": float(np.mean(valid)) if valid else None}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "proxy_validation.json").write_text(json.dumps(summary, indent=2))
    return summary
