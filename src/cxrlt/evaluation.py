"""``cxrlt eval``: join a submission CSV with a label CSV by ImageID and class name, score it, write the report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlt.data.tables import TableError, bands_from_training, read_label_csv
from cxrlt.errors import CxrltError
from cxrlt.labels import KNOWN_CLASSES, UNSEEN_CLASSES, frequency_bands
from cxrlt.metrics import EvalResult, evaluate
from cxrlt.plots import per_class_ap_chart, reliability_diagram


class EvalInputError(CxrltError, ValueError):
    """Predictions and labels cannot be matched; the message says which IDs or classes are at fault."""


def _preview(items) -> str:
    items = sorted(items)
    return f"{items[:5]}{' ...' if len(items) > 5 else ''} ({len(items)} in all)"


def align(pred: pd.DataFrame, pred_classes: list[str], labels: pd.DataFrame, label_classes: list[str],
          classes: list[str] | None = None) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """Match rows by ImageID and columns by class name; refuse anything missing, extra or duplicated."""
    for name, df in (("predictions", pred), ("labels", labels)):
        dup = df["ImageID"][df["ImageID"].duplicated()]
        if len(dup):
            raise EvalInputError(f"{name}: duplicate ImageIDs {_preview(set(dup))}")
    pred_ids, label_ids = set(pred["ImageID"]), set(labels["ImageID"])
    if pred_ids - label_ids:
        raise EvalInputError(f"predictions have ImageIDs that are not in the labels: {_preview(pred_ids - label_ids)}")
    if label_ids - pred_ids:
        raise EvalInputError(f"labels have ImageIDs with no prediction: {_preview(label_ids - pred_ids)}")
    if classes is None:
        extra = [c for c in pred_classes if c not in label_classes]
        if extra:
            raise EvalInputError(f"predicted classes have no label column: {extra}")
        classes = list(pred_classes)
        for group, task in ((KNOWN_CLASSES, "Task 1"), (UNSEEN_CLASSES, "Task 2")):
            present = [c for c in group if c in classes]
            if present and len(present) < len(group):
                raise EvalInputError(f"predictions have {len(present)} of the {len(group)} {task} classes; "
                                     f"missing {[c for c in group if c not in present]}")
    missing = [c for c in classes if c not in pred_classes]
    if missing:
        raise EvalInputError(f"predictions lack classes {missing}")
    if not classes:
        raise EvalInputError("no CXR-LT class columns in the predictions")
    labels = labels.set_index("ImageID").loc[pred["ImageID"]]
    y_true = labels[classes].to_numpy()
    y_prob = pred[classes].to_numpy(dtype=np.float64)
    return y_true, y_prob, classes, list(pred["ImageID"])


def _clean(obj):
    """JSON without NaN: undefined scores become null."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def evaluate_files(pred_csv: str | Path, labels_csv: str | Path, out_dir: str | Path,
                   train_csv: str | Path | None = None, classes: list[str] | None = None,
                   n_bootstrap: int = 200, seed: int = 0) -> dict:
    """Score ``pred_csv`` against ``labels_csv`` and write metrics.json, per_class.csv and two PNG plots."""
    pred, pred_classes = read_label_csv(pred_csv)
    unknown = [c for c in pred.columns if c != "ImageID" and c not in pred_classes]
    if unknown:
        raise EvalInputError(f"{pred_csv}: columns that are not CXR-LT classes: {unknown}")
    labels, label_classes = read_label_csv(labels_csv)
    y_true, y_prob, classes, _ = align(pred, pred_classes, labels, label_classes, classes)
    if train_csv is not None:
        bands, band_source = bands_from_training(train_csv), f"training prevalence ({Path(train_csv).name})"
    else:
        prevalence = {c: int(y_true[:, j].sum()) for j, c in enumerate(classes)}
        bands, band_source = frequency_bands(prevalence, len(y_true)), "evaluation-set prevalence (no --train-csv)"
    bands = {c: b for c, b in bands.items() if c in classes}
    try:
        result: EvalResult = evaluate(y_true, y_prob, classes, bands, n_bootstrap=n_bootstrap, seed=seed)
    except ValueError as exc:
        raise EvalInputError(str(exc)) from None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = _clean({**result.summary(), "band_source": band_source, "n_images": len(y_true),
                      "predictions": str(pred_csv), "labels": str(labels_csv)})
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    table = pd.DataFrame.from_dict(summary["per_class"], orient="index")
    table.index.name = "class"
    table.to_csv(out / "per_class.csv")
    reliability_diagram(y_true, y_prob, out / "reliability.png")
    per_class_ap_chart({c: result.per_class[c].AP for c in classes}, bands, out / "per_class_ap.png", classes)
    return summary


__all__ = ["EvalInputError", "TableError", "align", "evaluate_files"]


def evaluate_system(ensemble_dir: str | Path, zeroshot_dir: str | Path, data_dir: str | Path, split: str,
                    out_dir: str | Path) -> dict:
    """Score a trained system on a labelled split, as the pipeline's gate sees it.

    Task 1: the projection-aware ensemble's calibrated predictions (``predictions.csv``, the per-class/band report
    and plots of :func:`evaluate_files`, and a reliability diagram before/after calibration); Task 2: the zero-shot
    model's AP on the unseen classes; the router's confusion matrix against the metadata's projections. Writes
    ``summary.json`` and returns the summary (with ``confusion`` and ``router_accuracy``).
    """
    from sklearn.metrics import average_precision_score, confusion_matrix

    from cxrlt.data.images import load_preprocessed
    from cxrlt.data.preprocess import load_eval_images
    from cxrlt.data.tables import IMAGES_DIR, PADCHEST_METADATA_CSV, TRAINING_CSV, read_projections, write_submission
    from cxrlt.evaluation_report import REPORT_HTML, build_report
    from cxrlt.inference import EnsemblePredictor
    from cxrlt.plots import reliability_before_after
    from cxrlt.zeroshot.predict import ZeroShotPredictor

    data, out = Path(data_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels_csv = data / f"CXRLT_2026_{split}_labels.csv"
    predictor = EnsemblePredictor(ensemble_dir)
    labels, images = load_eval_images(data, labels_csv.name, predictor.preprocess)
    known = list(KNOWN_CLASSES)
    before, pred = predictor.predict_before_after(images)
    reliability_before_after(labels[known].to_numpy(), before[known].to_numpy(), pred[known].to_numpy(),
                             out / "reliability_before_after.png")
    write_submission(out / "predictions.csv", labels["ImageID"], pred, known)
    summary = evaluate_files(out / "predictions.csv", labels_csv, out, train_csv=data / TRAINING_CSV, n_bootstrap=100)
    zs = ZeroShotPredictor(zeroshot_dir)
    zs_images = np.stack([load_preprocessed(data / IMAGES_DIR / i, zs.preprocess) for i in labels["ImageID"]])
    probs = zs.predict(zs_images, list(UNSEEN_CLASSES))
    present = [(j, c) for j, c in enumerate(UNSEEN_CLASSES) if labels[c].sum()]
    aps = [average_precision_score(labels[c], probs[:, j]) for j, c in present]
    chance = [float(labels[c].mean()) for _, c in present]  # a random ranking's expected AP
    views = read_projections(data / PADCHEST_METADATA_CSV).views
    truth = [views.get(i, "frontal") for i in labels["ImageID"]]
    cm = confusion_matrix(truth, pred["view"], labels=["frontal", "lateral"])
    bands = {c: row["band"] for c, row in summary["per_class"].items() if row.get("band")}
    scored = pd.read_csv(out / "predictions.csv", dtype={"ImageID": str})  # what promotion reads, keyed by ImageID
    subgroups = write_subgroups(labels, scored, known, data / PADCHEST_METADATA_CSV, views, out, bands=bands)
    unseen = {c: {"AP": float(a), "chance": ch, "n_pos": int(labels[c].sum())}
              for (_, c), a, ch in zip(present, aps, chance, strict=True)}
    page, _ = build_report(labels, scored, known, bands, truth, f"Evaluation on the {split} split (calibrated "
                           "ensemble, Task 1; zero-shot, Task 2)", subgroups, unseen)
    (out / REPORT_HTML).write_text(page)
    result = {**{k: summary[k] for k in ("mAP", "mAUROC", "mF1", "mECE")},
              "unseen_mAP": float(np.mean(aps)) if aps else float("nan"),
              "unseen_prevalence": float(np.mean(chance)) if chance else float("nan"),
              "unseen_AP": {c: float(a) for (_, c), a in zip(present, aps, strict=True)},
              # zero-shot scores must depend on the image: a constant head would rank at chance
              "unseen_score_std": float(probs.std(axis=0).mean())}
    (out / "summary.json").write_text(json.dumps(result, indent=2))
    # what drift monitoring compares served traffic with: this evaluation's scores, routed views and bit depths
    from cxrlt.drift import declared_bit_depth, reference_features
    from cxrlt.platform import DRIFT_REFERENCE_JSON

    scores = {**{c: pred[c].to_numpy() for c in known}, **{c: probs[:, j] for j, c in enumerate(UNSEEN_CLASSES)}}
    depths = [declared_bit_depth(data / IMAGES_DIR / i) for i in labels["ImageID"]]
    (out / DRIFT_REFERENCE_JSON).write_text(json.dumps(reference_features(scores, pred["view"].tolist(), depths)))
    return {**result, "confusion": cm.tolist(), "router_accuracy": float(np.trace(cm) / max(cm.sum(), 1)),
            "subgroups": subgroups}


#: the metadata columns subgroups are read from (PadChest's names)
DEMOGRAPHIC_COLUMNS = ("ImageID", "PatientSex_DICOM", "PatientBirth", "StudyDate_DICOM")


def write_subgroups(labels: pd.DataFrame, pred: pd.DataFrame, classes: list[str], metadata_csv: Path,
                    views: dict[str, str], out: Path, n_bootstrap: int = 100,
                    bands: dict[str, str] | None = None) -> list[dict]:
    """Per sex, age band and projection: mAP, mAUROC and mECE of ``pred`` (rows by ImageID, columns by class name)
    with stratified bootstrap
    CIs, written to ``subgroups.json`` and ``subgroups.csv``, and each image's groups to ``groups.csv``. Images the
    metadata does not describe are in the group ``unknown``."""
    from cxrlt.subgroups import GROUPS_CSV, UNKNOWN, demographics, subgroup_table

    ids = labels["ImageID"].astype(str)
    meta = pd.read_csv(metadata_csv, dtype={"ImageID": str}, usecols=lambda c: c in DEMOGRAPHIC_COLUMNS)
    people = demographics(meta.drop_duplicates("ImageID")).reindex(ids).fillna(UNKNOWN)
    attributes = {"sex": people["sex"].tolist(), "age_band": people["age_band"].tolist(),
                  "projection": [views.get(i, UNKNOWN) for i in ids]}
    # each image's groups travel with the registered predictions: promotion compares versions within them
    pd.DataFrame({"ImageID": ids.tolist(), **attributes}).to_csv(out / GROUPS_CSV, index=False)
    scored = pred.astype({"ImageID": str}).set_index("ImageID")
    if not set(ids) <= set(scored.index):
        raise EvalInputError("the predictions do not cover every labelled image")
    rows = _clean([r.to_dict() for r in subgroup_table(labels[classes].to_numpy(),
                                                       scored.loc[ids, classes].to_numpy(dtype=np.float64),
                                                       classes, attributes, n_bootstrap=n_bootstrap,
                                                       bands=bands)])
    (out / "subgroups.json").write_text(json.dumps(rows, indent=2))
    flat = [{**{k: v for k, v in r.items() if k not in ("ci95", "flags", "band_mAP")},
             **{f"mAP_{band}": value for band, value in r["band_mAP"].items()},
             **{f"{m}_ci95_{end}": (r["ci95"].get(m) or (None, None))[i]
                for m in ("mAP", "mAUROC", "mECE") for i, end in enumerate(("low", "high"))},
             "flags": "; ".join(r["flags"])} for r in rows]
    pd.DataFrame(flat).to_csv(out / "subgroups.csv", index=False)
    return rows
