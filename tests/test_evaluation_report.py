"""The evaluation report: per-class deltas, the view x band table and the page's content, against hand-computed
values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrlt.errors import InvalidInputError
from cxrlt.evaluation_report import build_report, per_class_deltas, view_band_rows

TOL = 1e-9


def test_per_class_delta_is_challenger_minus_champion_ap_by_hand():
    y = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
    # class 0 - challenger ranks both positives first: AP 1; champion ranks them 1st and 3rd: AP (1 + 2/3) / 2 = 5/6
    a = np.array([[0.9, 0.1], [0.2, 0.2], [0.8, 0.3], [0.1, 0.4]])
    b = np.array([[0.9, 0.1], [0.5, 0.2], [0.3, 0.3], [0.1, 0.4]])
    rows = per_class_deltas(y, a, b, ["x", "y"], n_bootstrap=50)
    assert rows[0]["class"] == "x" and rows[0]["n_pos"] == 2
    assert rows[0]["diff"] == pytest.approx(1 - 5 / 6, abs=TOL)
    low, high = rows[0]["ci95"]
    assert low <= rows[0]["diff"] + TOL and high >= rows[0]["diff"] - TOL
    assert rows[1] == {"class": "y", "n_pos": 0, "diff": None, "ci95": None}  # no positives: no AP
    with pytest.raises(InvalidInputError, match="disagree"):
        per_class_deltas(y, a, b[:3], ["x", "y"])


def test_view_band_rows_by_hand():
    y = np.array([[1, 1], [0, 0], [1, 0], [0, 1]])
    p = np.array([[0.9, 0.2], [0.1, 0.1], [0.2, 0.3], [0.8, 0.9]])
    rows = {(r["view"], r["band"]): r for r in view_band_rows(y, p, ["h", "t"], {"h": "head", "t": "tail"},
                                                            ["frontal", "frontal", "lateral", "lateral"])}
    # all images, class h: ranks 0 (pos), 3, 2 (pos), 1 -> AP (1 + 2/3) / 2; class t: ranks 3 (pos), 2, 0 (pos), 1
    assert rows[("all", "head")]["mAP"] == pytest.approx(5 / 6, abs=TOL)
    assert rows[("all", "tail")]["mAP"] == pytest.approx(5 / 6, abs=TOL)
    assert rows[("all", "all")]["mAP"] == pytest.approx(5 / 6, abs=TOL) and rows[("all", "all")]["n_pos"] == 4
    # frontal = images 0, 1: both classes rank their one positive first
    assert rows[("frontal", "all")]["mAP"] == pytest.approx(1.0, abs=TOL) and rows[("frontal", "all")]["n_images"] == 2
    # lateral = images 2, 3: h positive is image 2 at 0.2 < 0.8 -> AP 1/2, AUROC 0
    assert rows[("lateral", "head")]["mAP"] == pytest.approx(0.5, abs=TOL)
    assert rows[("lateral", "head")]["mAUROC"] == pytest.approx(0.0, abs=TOL)
    assert np.isnan(rows[("all", "medium")]["mAP"]) and rows[("all", "medium")]["n_classes"] == 0


def _frames(seed: int = 0, n: int = 60):
    rng = np.random.default_rng(seed)
    classes = ["cardiomegaly", "Nodule", "Hernia"]
    y = (rng.random((n, 3)) < [0.4, 0.2, 0.0]).astype(int)  # Hernia: no positives here
    ids = [f"img{i:03d}.png" for i in range(n)]
    labels = pd.DataFrame(y, columns=classes).assign(ImageID=ids)
    prob = np.clip(0.5 * y + 0.5 * rng.random(y.shape), 0, 1)
    pred = pd.DataFrame(prob, columns=classes).assign(ImageID=ids).iloc[::-1]  # rows reversed
    return labels, pred[["ImageID", *classes[::-1]]], classes  # columns reordered: matched by name


def test_report_page_shows_every_finding_with_its_positives_and_the_deltas_when_a_champion_is_compared():
    labels, pred, classes = _frames()
    bands = {"cardiomegaly": "head", "Nodule": "medium", "Hernia": "tail"}
    views = ["frontal"] * 40 + ["lateral"] * 20
    unseen = {"goiter": {"AP": 0.2, "chance": 0.05, "n_pos": 3}}
    subgroups = [{"attribute": "sex", "group": "F", "n_images": 30, "n_positive_labels": 12, "mAP": 0.7,
                  "mAUROC": 0.8, "mECE": 0.1, "ci95": {"mAP": [0.6, 0.8]}, "flags": []}]
    page, data = build_report(labels, pred, classes, bands, views, "Evaluation", subgroups, unseen)
    assert page.startswith("<!doctype html>") and page.count("data:image/png;base64,") == 3  # PR, ROC, reliability
    by_class = {r["class"]: r for r in data["per_class"]}
    for name in classes:
        assert f"<td>{name}</td>" in page
    assert by_class["Hernia"]["AP"] is None and by_class["Nodule"]["n_pos"] == int(labels["Nodule"].sum())
    assert data["deltas"] is None and "challenger - champion" not in page
    assert "goiter" in page and "4.0" in page  # AP / chance = 0.2 / 0.05
    # the challenger against itself as champion: every delta exactly 0 with a degenerate interval
    page, data = build_report(labels, pred, classes, bands, views, "Promotion", champion=pred, n_bootstrap=20)
    assert "challenger - champion" in page
    for row in data["deltas"]:
        if row["n_pos"]:
            assert row["diff"] == pytest.approx(0.0, abs=TOL) and row["ci95"] == pytest.approx([0.0, 0.0], abs=TOL)
    with pytest.raises(InvalidInputError, match="cover every labelled image"):
        build_report(labels, pred.iloc[1:], classes, bands, views, "x")
    with pytest.raises(InvalidInputError, match="missing"):
        build_report(labels, pred.drop(columns="Nodule"), classes, bands, views, "x")
