from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, ClassificationMetrics, Input, Metrics, Model, Output

from components._base import TOOLS_IMAGE


@dsl.component(base_image=TOOLS_IMAGE, install_kfp_package=False)
def evaluate(ensemble: Input[Model], zeroshot: Input[Model], data_dir: str, metrics: Output[Metrics],
             confusion: Output[ClassificationMetrics], report: Output[Artifact], split: str = "dev",
             ) -> NamedTuple("Outputs", [("mAP", float), ("mECE", float), ("unseen_mAP", float)]):
    """Score the projection-aware ensemble (30 known) and the zero-shot model (6 unseen) on a labelled split.

    Args:
        ensemble: ensemble directory.
        zeroshot: zero-shot model directory.
        data_dir: CXR-LT data directory.
        metrics: KFP scalar metrics.
        confusion: router confusion matrix (frontal/lateral).
        report: metrics.json, per_class.csv, plots (reliability before/after the ensemble's calibration), and
            predictions.csv (the evaluation set for promotion). mECE is of the calibrated predictions.
        split: dev or test.
    """
    import json
    from collections import namedtuple
    from pathlib import Path

    import numpy as np
    from sklearn.metrics import average_precision_score, confusion_matrix

    from cxrlt.data.images import load_preprocessed
    from cxrlt.data.tables import read_projections, write_submission
    from cxrlt.evaluation import evaluate_files
    from cxrlt.inference import EnsemblePredictor
    from cxrlt.labels import KNOWN_CLASSES, UNSEEN_CLASSES
    from cxrlt.plots import reliability_before_after
    from cxrlt.zeroshot.predict import ZeroShotPredictor
    from cxrlt.zeroshot.proxy import load_eval_images

    data, out = Path(data_dir), Path(report.path)
    out.mkdir(parents=True, exist_ok=True)
    labels_csv = data / f"CXRLT_2026_{split}_labels.csv"
    predictor = EnsemblePredictor(ensemble.path)
    labels, images = load_eval_images(data, labels_csv.name, predictor.preprocess)
    pred = predictor.predict(images)
    before = EnsemblePredictor(ensemble.path, calibrated=False).predict(images)
    reliability_before_after(labels[list(KNOWN_CLASSES)].to_numpy(), before[list(KNOWN_CLASSES)].to_numpy(),
                             pred[list(KNOWN_CLASSES)].to_numpy(), out / "reliability_before_after.png")
    write_submission(out / "predictions.csv", labels["ImageID"], pred, KNOWN_CLASSES)
    summary = evaluate_files(out / "predictions.csv", labels_csv, out, train_csv=data / "CXRLT_2026_training.csv",
                             n_bootstrap=100)
    zs = ZeroShotPredictor(zeroshot.path)
    zs_images = np.stack([load_preprocessed(data / "images" / i, zs.preprocess) for i in labels["ImageID"]])
    probs = zs.predict(zs_images, list(UNSEEN_CLASSES))
    aps = [average_precision_score(labels[c], probs[:, j]) for j, c in enumerate(UNSEEN_CLASSES) if labels[c].sum()]
    unseen_map = float(np.mean(aps)) if aps else float("nan")
    views = read_projections(data / "padchest_metadata.csv").views
    truth = [views.get(i, "frontal") for i in labels["ImageID"]]
    cm = confusion_matrix(truth, pred["view"], labels=["frontal", "lateral"])
    confusion.log_confusion_matrix(["frontal", "lateral"], cm.tolist())
    for key in ("mAP", "mAUROC", "mF1", "mECE"):
        metrics.log_metric(key, float(summary[key]))
    metrics.log_metric("unseen_mAP", unseen_map)
    metrics.log_metric("router_accuracy", float(np.trace(cm) / cm.sum()))
    (out / "summary.json").write_text(json.dumps({**{k: summary[k] for k in ("mAP", "mAUROC", "mF1", "mECE")},
                                                  "unseen_mAP": unseen_map}, indent=2))
    result = namedtuple("Outputs", ["mAP", "mECE", "unseen_mAP"])
    return result(float(summary["mAP"]), float(summary["mECE"]), unseen_map)
