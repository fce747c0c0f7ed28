"""One HTML page per evaluation, for the people who decide whether a model version is fit to serve.

A pooled number flatters a long-tailed multi-label model: the pooled reliability diagram over 30 classes is dominated
by the many easy negatives of the head classes, and a mean AP hides which findings carry it. The page therefore shows
every finding's PR and ROC curve (scikit-learn's ``PrecisionRecallDisplay`` and ``RocCurveDisplay``), results per view
and per frequency band, a reliability diagram per band (``CalibrationDisplay``), the subgroup table, the unseen
findings against chance, and, when a champion is compared, each finding's challenger-minus-champion AP with a paired
bootstrap CI (the numbers promotion decides on). The number of positives stands beside every per-class figure: an AP
over three positives is not an AP over three hundred.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from cxrlt.errors import InvalidInputError
from cxrlt.metrics import macro_ap, macro_auroc, paired_bootstrap_diff, score_class
from cxrlt.platform import REPORT_HTML  # noqa: F401  (re-exported: the file the evaluation writes)
from cxrlt.plots import BAND_COLOURS, pyplot

BANDS = ("head", "medium", "tail")


def per_class_deltas(y_true: np.ndarray, challenger: np.ndarray, champion: np.ndarray, classes: Sequence[str],
                     n_bootstrap: int = 200, seed: int = 0) -> list[dict]:
    """Per class: challenger - champion AP on the same images with a paired percentile bootstrap CI; classes without
    positives have no AP and are listed with ``diff`` None."""
    y_true, challenger, champion = np.asarray(y_true), np.asarray(challenger), np.asarray(champion)
    if not y_true.shape == challenger.shape == champion.shape or y_true.shape[1] != len(classes):
        raise InvalidInputError(f"labels {y_true.shape}, challenger {challenger.shape} and champion "
                                f"{champion.shape} disagree with {len(classes)} classes")
    rows = []
    for j, name in enumerate(classes):
        y, a, b = y_true[:, [j]], challenger[:, [j]], champion[:, [j]]
        row = {"class": name, "n_pos": int(y.sum()), "diff": None, "ci95": None}
        if y.sum():
            row.update(paired_bootstrap_diff(y, a, b, macro_ap, n_bootstrap, seed))  # one column: its AP
        rows.append(row)
    return rows


def _png(fig) -> bytes:
    plt = pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def curves_figure(y_true: np.ndarray, y_prob: np.ndarray, classes: Sequence[str], kind: str,
                  bands: Mapping[str, str] | None = None) -> bytes:
    """Small multiples: one PR (``kind="pr"``) or ROC (``"roc"``) curve per class, its positives in the title."""
    from sklearn.metrics import PrecisionRecallDisplay, RocCurveDisplay

    plt = pyplot()
    cols = 6
    rows = math.ceil(len(classes) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.4 * rows), squeeze=False)
    for ax, (j, name) in zip(axes.ravel(), enumerate(classes), strict=False):
        y, p = np.asarray(y_true)[:, j], np.asarray(y_prob)[:, j]
        n_pos = int(y.sum())
        colour = BAND_COLOURS.get((bands or {}).get(name))
        if n_pos == 0 or (kind == "roc" and n_pos == len(y)):
            ax.text(0.5, 0.5, "no positives" if n_pos == 0 else "no negatives", ha="center", va="center")
        elif kind == "pr":
            PrecisionRecallDisplay.from_predictions(y, p, ax=ax, plot_chance_level=True,
                                                    curve_kwargs={"color": colour})
        elif kind == "roc":
            RocCurveDisplay.from_predictions(y, p, ax=ax, plot_chance_level=True,
                                             curve_kwargs={"color": colour})
        else:
            raise InvalidInputError(f"curve kind {kind!r}: pr or roc")
        ax.set_title(f"{name} (n+={n_pos})", fontsize=8)
        ax.set_xlabel("")
        ax.set_ylabel("")
        ax.tick_params(labelsize=6)
        if ax.get_legend() is not None:
            for text in ax.get_legend().get_texts():
                text.set_fontsize(6)
    for ax in axes.ravel()[len(classes):]:
        ax.axis("off")
    fig.suptitle("Precision-recall per finding (recall on x)" if kind == "pr" else
                 "ROC per finding (false positive rate on x)", fontsize=10)
    fig.subplots_adjust(left=0.03, right=0.99, bottom=0.03, top=0.94, wspace=0.25, hspace=0.35)  # tight_layout: 2x
    return _png(fig)


def band_reliability_figure(y_true: np.ndarray, y_prob: np.ndarray, classes: Sequence[str],
                            bands: Mapping[str, str], n_bins: int = 10) -> bytes:
    """One reliability diagram per frequency band (the band's classes pooled), with its positives and images."""
    from sklearn.calibration import CalibrationDisplay

    plt = pyplot()
    fig, axes = plt.subplots(1, len(BANDS), figsize=(4.2 * len(BANDS), 4.2), squeeze=False)
    for ax, band in zip(axes.ravel(), BANDS, strict=True):
        cols = [j for j, c in enumerate(classes) if bands.get(c) == band]
        y, p = np.asarray(y_true)[:, cols].ravel(), np.asarray(y_prob)[:, cols].ravel()
        if not cols or not y.sum():
            ax.text(0.5, 0.5, f"{band}: no positives", ha="center", va="center")
            ax.axis("off")
            continue
        CalibrationDisplay.from_predictions(y, p, n_bins=n_bins, ax=ax, name=band, color=BAND_COLOURS[band])
        ax.set_title(f"{band}: {len(cols)} classes, n+={int(y.sum())}", fontsize=9)
    fig.suptitle("Reliability per frequency band (equal-width bins)", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def view_band_rows(y_true: np.ndarray, y_prob: np.ndarray, classes: Sequence[str], bands: Mapping[str, str],
                   views: Sequence[str]) -> list[dict]:
    """mAP and mAUROC for every view (and all images) x band (and all classes), with images and positives."""
    y_true, y_prob, views = np.asarray(y_true), np.asarray(y_prob), np.asarray(list(views))
    rows = []
    for view in ["all", *sorted(set(views.tolist()))]:
        mask = np.ones(len(views), bool) if view == "all" else views == view
        for band in ["all", *BANDS]:
            cols = [j for j, c in enumerate(classes) if band == "all" or bands.get(c) == band]
            yt, yp = y_true[mask][:, cols], y_prob[mask][:, cols]
            rows.append({"view": view, "band": band, "n_images": int(mask.sum()), "n_classes": len(cols),
                         "n_pos": int(yt.sum()), "mAP": macro_ap(yt, yp) if cols else float("nan"),
                         "mAUROC": macro_auroc(yt, yp) if cols else float("nan")})
    return rows


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else \
        f"{value:.{digits}f}"


def _ci(ci) -> str:
    return f"[{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci is not None and len(ci) == 2 else ""


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{e(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(png: bytes, alt: str) -> str:
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"


def build_report(labels: pd.DataFrame, pred: pd.DataFrame, classes: Sequence[str], bands: Mapping[str, str],
                 views: Sequence[str], title: str, subgroups: Sequence[Mapping] | None = None,
                 unseen: Mapping[str, Mapping] | None = None, champion: pd.DataFrame | None = None,
                 n_bootstrap: int = 200) -> tuple[str, dict]:
    """The page and what it shows as data. ``labels``, ``pred`` and ``champion`` are keyed by ImageID with one
    column per class name (rows are matched by ImageID, columns by name); ``views`` is each label row's view;
    ``unseen`` maps an unseen finding to ``{"AP", "chance", "n_pos"}``."""
    e = html.escape
    classes = list(classes)
    missing = [c for c in classes if c not in pred.columns or c not in labels.columns]
    if missing:
        raise InvalidInputError(f"the report needs every class in labels and predictions; missing: {missing}")
    ids = labels["ImageID"].astype(str).tolist()
    scored = pred.astype({"ImageID": str}).set_index("ImageID")
    if scored.index.duplicated().any() or not set(ids) <= set(scored.index):
        raise InvalidInputError("the predictions do not cover every labelled image exactly once")
    y = labels[classes].to_numpy()
    p = scored.loc[ids, classes].to_numpy(dtype=np.float64)
    per_class = []
    for j, name in enumerate(classes):
        s = score_class(y[:, j], p[:, j])
        per_class.append({"class": name, "band": bands.get(name), "n_pos": s.n_pos, "AP": s.AP, "AUROC": s.AUROC,
                          "ECE": s.ECE})
    deltas = None
    if champion is not None:
        theirs = champion.astype({"ImageID": str}).set_index("ImageID")
        if not set(ids) <= set(theirs.index):
            raise InvalidInputError("the champion's predictions do not cover every labelled image")
        deltas = per_class_deltas(y, p, theirs.loc[ids, classes].to_numpy(dtype=np.float64), classes, n_bootstrap)
        for row, delta in zip(per_class, deltas, strict=True):
            row.update(delta_AP=delta["diff"], delta_ci95=delta["ci95"])
    grid = view_band_rows(y, p, classes, bands, views)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{e(title)}</title><style>body{{font-family:sans-serif;max-width:75em;margin:auto}}"
        "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;"
        "font-size:0.9em}img{max-width:100%}</style></head><body>",
        f"<h1>{e(title)}</h1><p>{len(ids)} images, {len(classes)} known findings; "
        f"{sum(r['AP'] is not None for r in per_class)} have positives here. n+ is the number of positive images "
        "behind each figure.</p>",
        "<h2>By view and frequency band</h2>",
        _table(["view", "band", "images", "classes", "n+", "mAP", "mAUROC"],
               [(r["view"], r["band"], r["n_images"], r["n_classes"], r["n_pos"], _fmt(r["mAP"]), _fmt(r["mAUROC"]))
                for r in grid]),
        "<h2>Per finding</h2>",
        _table(["finding", "band", "n+", "AP", "AUROC", "ECE"]
               + (["AP challenger - champion", "95 % CI (paired bootstrap)"] if deltas else []),
               [(r["class"], r["band"] or "", r["n_pos"], _fmt(r["AP"]), _fmt(r["AUROC"]), _fmt(r["ECE"]))
                + ((_fmt(r["delta_AP"], 4), _ci(r["delta_ci95"])) if deltas else ()) for r in per_class]),
        _img(curves_figure(y, p, classes, "pr", bands), "precision-recall curves"),
        _img(curves_figure(y, p, classes, "roc", bands), "ROC curves"),
        "<h2>Calibration per frequency band</h2>",
        _img(band_reliability_figure(y, p, classes, bands), "reliability per band"),
    ]
    if subgroups:
        parts += ["<h2>Subgroups (95 % CI, bootstrap stratified by rarest finding)</h2><p>Percentile intervals. "
                  "Resampling duplicates positive images, which raises AP, so in small groups an mAP interval sits "
                  "mostly above its point estimate; promotion's paired differences are not affected this way (both "
                  "models see the same duplicates).</p>",
                  _table(["attribute", "group", "images", "n+", "mAP", "mAP CI", "mAUROC", "mAUROC CI", "mECE",
                          *(f"mAP {band}" for band in BANDS), "flags"],
                         [(r.get("attribute"), r.get("group"), r.get("n_images", ""), r.get("n_positive_labels", ""),
                           _fmt(r.get("mAP")),
                           _ci((r.get("ci95") or {}).get("mAP")), _fmt(r.get("mAUROC")),
                           _ci((r.get("ci95") or {}).get("mAUROC")), _fmt(r.get("mECE")),
                           *(_fmt((r.get("band_mAP") or {}).get(band)) for band in BANDS),
                           "; ".join(r.get("flags", []))) for r in subgroups])]
    if unseen:
        parts += ["<h2>Unseen findings (zero-shot) against chance</h2><p>Chance is a random ranking's expected AP, "
                  "the finding's prevalence.</p>",
                  _table(["finding", "n+", "AP", "chance", "AP / chance"],
                         [(name, u["n_pos"], _fmt(u["AP"]), _fmt(u["chance"]),
                           _fmt(u["AP"] / u["chance"], 1) if u["chance"] else "n/a") for name, u in unseen.items()])]
    parts.append("</body></html>\n")
    return "".join(parts), {"per_class": per_class, "view_band": grid, "deltas": deltas}
