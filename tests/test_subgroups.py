"""Subgroups: demographic parsing of PadChest-style metadata, the stratified bootstrap, and per-group metrics with
hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from cxrlt.errors import InvalidInputError
from cxrlt.subgroups import (
    UNKNOWN,
    age_band,
    birth_year,
    demographics,
    rarest_finding_strata,
    sex_group,
    stratified_bootstrap,
    stratified_resample,
    study_year,
    subgroup_table,
)

TOL = 1e-9


@pytest.mark.parametrize(("value", "year"), [("1930.0", 1930), (1930.0, 1930), (1930, 1930), (" 1930 ", 1930),
                                             ("", None), (None, None), (float("nan"), None), ("19x0", None),
                                             ("1930.5", None), ("30", None), ("1700", None), ("2300.0", None)])
def test_birth_year_reads_padchest_floats_and_refuses_malformed(value, year):
    assert birth_year(value) == year


@pytest.mark.parametrize(("value", "year"), [(20150312, 2015), ("20150312", 2015), ("2015-03-12", 2015),
                                             (20150312.0, 2015), ("20151312", None), ("2015", None), (None, None),
                                             ("yesterday", None)])
def test_study_year_reads_dicom_dates(value, year):
    assert study_year(value) == year


@pytest.mark.parametrize(("study", "born", "band"), [
    ("20150101", "1976.0", "<40"),     # 39
    ("20150101", "1975.0", "40-59"),   # 40
    ("20150101", "1956.0", "40-59"),   # 59
    ("20150101", "1955.0", "60-79"),   # 60
    ("20150101", "1936.0", "60-79"),   # 79
    ("20150101", "1935.0", "80+"),     # 80
    ("20150101", "1910.0", "80+"),     # 105, PadChest's oldest
    ("20150101", "2015.0", "<40"),     # 0
    ("20150101", "2016.0", UNKNOWN),   # born after the study
    ("20150101", "1890.0", UNKNOWN),   # 125: a data error
    ("20150101", None, UNKNOWN),
    (None, "1950.0", UNKNOWN),
])
def test_age_band_at_the_study_with_every_boundary(study, born, band):
    assert age_band(study, born) == band


def test_sex_groups_and_a_demographics_table_that_drops_nobody():
    assert [sex_group(v) for v in ["F", "m", " M ", "O", "", None, "X"]] == ["F", "M", "M", "other", UNKNOWN,
                                                                             UNKNOWN, UNKNOWN]
    table = pd.DataFrame({"ImageID": ["a.png", "b.png", "c.png"], "PatientSex_DICOM": ["F", None, "M"],
                          "PatientBirth": ["1930.0", "1980.0", "junk"], "StudyDate_DICOM": [20150101] * 3})
    got = demographics(table)
    assert list(got.index) == ["a.png", "b.png", "c.png"]
    assert got["sex"].tolist() == ["F", UNKNOWN, "M"] and got["age_band"].tolist() == ["80+", "<40", UNKNOWN]
    challenge = demographics(pd.DataFrame({"ImageID": ["a.png"], "StudyDate_DICOM": [20150101]}))
    assert challenge.loc["a.png"].tolist() == [UNKNOWN, UNKNOWN]
    with pytest.raises(InvalidInputError):
        demographics(pd.DataFrame({"x": [1]}))


def test_strata_are_the_rarest_present_finding():
    y = np.array([[1, 0, 0], [1, 1, 0], [1, 1, 1], [0, 0, 0], [1, 0, 0]])  # positives per class: 4, 2, 1
    assert rarest_finding_strata(y).tolist() == [0, 1, 2, -1, 0]


def test_stratified_bootstrap_keeps_the_rarest_class_in_every_replicate():
    rng = np.random.default_rng(0)
    y = (rng.random((200, 5)) < [0.5, 0.3, 0.1, 0.05, 0.01]).astype(int)
    y[:2, 4] = 1  # the rarest class: 2 or 3 positives
    rarest = int(np.argmin(y.sum(0)))
    strata = rarest_finding_strata(y)
    draws = np.random.default_rng(1)
    for _ in range(50):
        idx = stratified_resample(strata, draws)
        assert len(idx) == len(y)
        assert y[idx, rarest].sum() == y[:, rarest].sum()  # its positives all have it as their rarest finding
        assert np.bincount(strata[idx] + 1, minlength=7).tolist() == np.bincount(strata + 1, minlength=7).tolist()
    # a plain bootstrap loses the rarest class in some replicates; the stratified one never does
    plain = np.random.default_rng(2)
    assert any(y[plain.integers(0, len(y), len(y)), rarest].sum() == 0 for _ in range(200))


def test_stratified_bootstrap_interval_contains_the_point_estimate_and_is_degenerate_for_perfect_scores():
    rng = np.random.default_rng(3)
    y = (rng.random((300, 4)) < [0.4, 0.2, 0.1, 0.03]).astype(int)
    noisy = 0.3 * y + 0.7 * rng.random(y.shape)  # overlapping scores: AP well below 1
    ci = stratified_bootstrap(y, noisy, n=100, seed=0)
    from cxrlt.metrics import macro_ap

    point = macro_ap(y, noisy)
    assert point < 0.95 and ci["mAP"][0] < point < ci["mAP"][1]
    perfect = stratified_bootstrap(y, y.astype(float), n=20, seed=0)
    assert perfect["mAP"] == pytest.approx((1.0, 1.0), abs=TOL)
    assert perfect["mAUROC"] == pytest.approx((1.0, 1.0), abs=TOL)
    assert perfect["mECE"] == pytest.approx((0.0, 0.0), abs=TOL)


def test_subgroup_metrics_by_hand_and_small_groups_flagged_not_dropped():
    # group A: perfect ranking and calibration; group B: one class, y = [1, 0], p = [0.2, 0.8]
    y = np.array([[1], [0], [1], [0]])
    p = np.array([[1.0], [0.0], [0.2], [0.8]])
    rows = subgroup_table(y, p, ["x"], {"sex": ["F", "F", "M", "M"]}, min_images=3, n_bootstrap=10)
    a, b = rows
    assert (a.group, a.n_images, a.n_positive_labels, a.n_classes_scored) == ("F", 2, 1, 1)
    assert (a.mAP, a.mAUROC, a.mECE) == pytest.approx((1.0, 1.0, 0.0), abs=TOL)
    # B: AP = precision at the only positive's rank (2nd) = 1/2; AUROC = 0 (the negative outranks the positive);
    # ECE = 0.5 * |1 - 0.2| + 0.5 * |0 - 0.8| = 0.8
    assert (b.mAP, b.mAUROC, b.mECE) == pytest.approx((0.5, 0.0, 0.8), abs=TOL)
    assert all("small: 2 images" in r.flags[0] for r in rows) and not a.ci95 and not b.ci95
    # a group with no positives is reported with undefined scores and says why
    rows = subgroup_table(y, p, ["x"], {"view": ["lat", "pa", "lat", "pa"]}, min_images=1, n_bootstrap=0)
    pa = next(r for r in rows if r.group == "pa")
    assert pa.n_positive_labels == 0 and math.isnan(pa.mAP) and math.isnan(pa.mAUROC)
    assert "no positive labels" in pa.flags[0] and pa.to_dict()["mAP"] is None
    with pytest.raises(InvalidInputError, match="3 values for 4 images"):
        subgroup_table(y, p, ["x"], {"sex": ["F", "F", "M"]})


def test_evaluation_writes_subgroups_by_class_name_with_unknown_for_images_the_metadata_lacks(tmp_path):
    from cxrlt.evaluation import EvalInputError, write_subgroups

    labels = pd.DataFrame({"ImageID": ["a", "b", "c", "d"], "x": [1, 0, 1, 0], "y": [0, 1, 1, 0]})
    # predictions keyed by ImageID and class name: rows and columns in another order than the labels'
    pred = pd.DataFrame({"ImageID": ["d", "c", "b", "a"], "y": [0.2, 0.8, 0.9, 0.1], "x": [0.8, 0.2, 0.1, 0.9]})
    meta = tmp_path / "meta.csv"
    pd.DataFrame({"ImageID": ["a", "b", "c"], "PatientSex_DICOM": ["F", "F", "M"],
                  "PatientBirth": ["1930.0", "1931.0", "1990.0"], "StudyDate_DICOM": [20150101] * 3,
                  "Projection": ["PA", "PA", "L"]}).to_csv(meta, index=False)
    rows = write_subgroups(labels, pred, ["x", "y"], meta, {"a": "frontal", "b": "frontal", "c": "lateral"},
                           tmp_path, n_bootstrap=0, bands={"x": "head", "y": "tail"})
    by = {(r["attribute"], r["group"]): r for r in rows}
    assert set(by) == {("sex", "F"), ("sex", "M"), ("sex", "unknown"), ("age_band", "80+"), ("age_band", "<40"),
                       ("age_band", "unknown"), ("projection", "frontal"), ("projection", "lateral"),
                       ("projection", "unknown")}
    assert [by[("sex", g)]["n_images"] for g in ("F", "M", "unknown")] == [2, 1, 1]
    # F = images a and b: x ranks a (positive) first -> AP 1; y ranks b (positive) first -> AP 1
    assert by[("sex", "F")]["mAP"] == pytest.approx(1.0, abs=TOL)
    # age 80+ = images a and b (born 1930/31): x (head) and y (tail) each rank their one positive first
    assert by[("age_band", "80+")]["band_mAP"] == pytest.approx({"head": 1.0, "tail": 1.0}, abs=TOL)
    assert by[("sex", "unknown")]["band_mAP"] == {"head": None, "tail": None}
    with pytest.raises(EvalInputError, match="do not cover"):
        write_subgroups(labels, pred.iloc[1:], ["x", "y"], meta, {}, tmp_path, n_bootstrap=0)
    # unknown = image d: no positives, reported with undefined scores
    assert by[("sex", "unknown")]["mAP"] is None and by[("sex", "unknown")]["flags"]
    table = pd.read_csv(tmp_path / "subgroups.csv")
    assert len(table) == 9 and {"mAP_ci95_low", "flags"} <= set(table.columns)
    assert json_rows(tmp_path / "subgroups.json") == rows


def json_rows(path):
    import json

    return json.loads(path.read_text())


def _scored(seed: int = 5, n: int = 400):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 3)) < [0.3, 0.2, 0.15]).astype(int)
    champion = 0.15 * y + 0.85 * rng.random(y.shape)  # informative but far from perfect
    sex = np.where(np.arange(n) % 2 == 0, "F", "M")
    return rng, y, champion, sex


def test_subgroup_gate_refuses_a_challenger_better_overall_and_worse_in_one_group():
    from cxrlt.metrics import macro_auroc
    from cxrlt.subgroups import SubgroupGate, paired_subgroup_deltas, subgroup_refusals

    rng, y, champion, sex = _scored()
    challenger = champion.copy()
    female, male = sex == "F", sex == "M"
    challenger[female] = 0.8 * y[female] + 0.2 * rng.random((female.sum(), 3))  # much better for women
    challenger[male] = rng.random((male.sum(), 3))                              # at chance for men
    assert macro_auroc(y, challenger) > macro_auroc(y, champion)  # better on average
    gate = SubgroupGate(margin=0.02, max_ece=1.0, min_images=100, min_positive_labels=20, n_bootstrap=100)
    rows = paired_subgroup_deltas(y, challenger, champion, {"sex": sex}, gate)
    refusals = subgroup_refusals(rows, gate)
    assert len(refusals) == 1 and refusals[0].startswith("sex=M (200 images): mAUROC challenger - champion -")
    by = {r["group"]: r for r in rows}
    assert by["F"]["ci95"][0] > 0 and by["M"]["ci95"][1] < 0
    # the same challenger scored on only 60 men: too few to judge, reported as not gated rather than dropped
    small = SubgroupGate(margin=0.02, max_ece=1.0, min_images=250, min_positive_labels=20, n_bootstrap=50)
    rows = paired_subgroup_deltas(y, challenger, champion, {"sex": sex}, small)
    assert not subgroup_refusals(rows, small) and all(r["gated"] is False and "not gated" in r["reason"] for r in rows)


def test_subgroup_gate_accepts_a_fair_challenger_and_caps_each_groups_calibration():
    from cxrlt.subgroups import SubgroupGate, paired_subgroup_deltas, subgroup_refusals

    rng, y, champion, sex = _scored()
    fair = champion.copy()
    fair[sex == "F"] = np.clip(champion[sex == "F"] + 0.05 * y[sex == "F"], 0, 1)  # a little better for women
    gate = SubgroupGate(margin=0.02, max_ece=1.0, min_images=100, min_positive_labels=20, n_bootstrap=100)
    rows = paired_subgroup_deltas(y, fair, champion, {"sex": sex}, gate)
    assert subgroup_refusals(rows, gate) == []
    men = next(r for r in rows if r["group"] == "M")
    assert men["diff"] == 0.0 and men["ci95"] == [0.0, 0.0]  # identical scores: every replicate's difference is 0
    # calibration: 100 images of y = [1, 0] with p = [0.2, 0.8] (mECE 0.8, as computed by hand in
    # test_subgroup_metrics_by_hand...) and 100 perfectly calibrated ones; without a champion only the cap applies
    y2 = np.tile([[1], [0]], (100, 1))
    p2 = np.where(np.arange(200)[:, None] < 100, np.tile([[0.2], [0.8]], (100, 1))[:200], y2.astype(float))
    view = np.where(np.arange(200) < 100, "lateral", "frontal")
    capped = SubgroupGate(max_ece=0.2, min_images=100, min_positive_labels=50)
    rows = paired_subgroup_deltas(y2, p2, None, {"projection": view}, capped)
    by = {r["group"]: r for r in rows}
    assert by["lateral"]["challenger_mECE"] == pytest.approx(0.8, abs=TOL)
    assert by["frontal"]["challenger_mECE"] == pytest.approx(0.0, abs=TOL)
    assert by["lateral"]["diff"] is None and by["lateral"]["ci95"] is None
    assert subgroup_refusals(rows, capped) == ["projection=lateral (100 images): challenger mECE 0.8000 > 0.2"]
    with pytest.raises(InvalidInputError, match="mAUROC or mAP"):
        SubgroupGate(metric="mECE")
