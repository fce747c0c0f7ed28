from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Input, Metrics, Model, Output

from components._base import TOOLS_IMAGE


@dsl.component(base_image=TOOLS_IMAGE, install_kfp_package=False)
def evaluate(ensemble: Input[Model], zeroshot: Input[Model], data_dir: str, metrics: Output[Metrics],
             confusion: Output[ClassificationMetrics], report: Output[Artifact], page: Output[HTML],
             split: str = "dev",
             ) -> NamedTuple("Outputs", [("mAP", float), ("mAUROC", float), ("mECE", float), ("unseen_mAP", float),
                                         ("unseen_prevalence", float)]):
    """Score the projection-aware ensemble (30 known) and the zero-shot model (6 unseen) on a labelled split.

    Args:
        ensemble: ensemble directory.
        zeroshot: location of the zero-shot model on the shared volume.
        data_dir: CXR-LT data directory.
        metrics: KFP scalar metrics.
        confusion: router confusion matrix (frontal/lateral).
        report: metrics.json, per_class.csv, plots (reliability before/after the ensemble's calibration), and
            predictions.csv (the evaluation set for promotion). mECE is of the calibrated predictions.
        page: the evaluation report (report.html: PR and ROC curves per finding, per view and band, reliability per
            band, subgroups, unseen findings against chance), shown by the KFP UI.
        split: dev or test.
    """
    import shutil
    from collections import namedtuple

    from cxrlt.dataplane import resolve
    from cxrlt.evaluation import evaluate_system
    from cxrlt.evaluation_report import REPORT_HTML

    result = evaluate_system(ensemble.path, resolve(zeroshot.path), data_dir, split, report.path)
    shutil.copyfile(f"{report.path}/{REPORT_HTML}", page.path)
    confusion.log_confusion_matrix(["frontal", "lateral"], result["confusion"])
    keys = ("mAP", "mAUROC", "mECE", "unseen_mAP", "unseen_prevalence")
    for key in (*keys, "mF1", "router_accuracy"):
        metrics.log_metric(key, float(result[key]))
    return namedtuple("Outputs", keys)(*(float(result[k]) for k in keys))
