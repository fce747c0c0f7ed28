import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score
from typer.testing import CliRunner

from cxrlt.cli import app
from cxrlt.labels import KNOWN_CLASSES
from cxrlt.metrics import calibration_error, evaluate, macro_ap


def _random_task(seed, n=300, c=6):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < rng.uniform(0.02, 0.4, c)).astype(int)
    p = np.clip(0.3 * y + rng.random((n, c)) * 0.7, 0, 1)
    return y, p


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_class_ap_and_auroc_equal_sklearn(seed):
    y, p = _random_task(seed)
    res = evaluate(y, p, [f"c{j}" for j in range(y.shape[1])])
    for j in range(y.shape[1]):
        assert abs(res.per_class[f"c{j}"].AP - average_precision_score(y[:, j], p[:, j])) < 1e-9
        assert abs(res.per_class[f"c{j}"].AUROC - roc_auc_score(y[:, j], p[:, j])) < 1e-9
    assert res.summary()["mAP"] == pytest.approx(np.mean(average_precision_score(y, p, average=None)), abs=1e-12)
    assert macro_ap(y, p) == pytest.approx(res.summary()["mAP"], abs=1e-12)


def test_class_without_positives_is_excluded_and_reported():
    y, p = _random_task(0, c=3)
    y[:, 1] = 0
    res = evaluate(y, p, ["a", "b", "c"])
    s = res.summary()
    assert s["per_class"]["b"]["AP"] is None and "b" in s["excluded"]
    assert s["mAP"] == pytest.approx(np.mean([res.per_class["a"].AP, res.per_class["c"].AP]))
    assert s["n_classes_scored"] == 2


def test_f1_threshold_is_strictly_greater_than_half():
    y = np.array([[1], [1], [0], [0]])
    p = np.array([[0.5], [0.9], [0.1], [0.6]])
    assert pytest.approx(0.5) == evaluate(y, p, ["x"]).per_class["x"].F1  # TP=1 (0.9), FN=1 (0.5), FP=1 (0.6)


def test_ece_by_hand():
    # 10 equal-width bins: 0.05 bin has p=[.05,.05] y=[0,1] -> |0.5-0.05|*2/4 ; 0.95 bin p=[.95,.95] y=[1,1] -> .05*2/4
    p = np.array([0.05, 0.05, 0.95, 0.95])
    y = np.array([0, 1, 1, 1])
    assert calibration_error(p, y, n_bins=10) == pytest.approx(0.45 * 0.5 + 0.05 * 0.5)


def test_column_ece_by_hand_and_against_torchmetrics():
    from cxrlt.metrics import column_calibration_errors, macro_ece

    # the hand example above in column 0; column 1: p = 1.0 (its own bin) with y = 0 -> |0 - 1| * 1/4, and three
    # p = 0.1 with y = 0, 0, 1 in one bin -> |1/3 - 0.1| * 3/4
    p = np.array([[0.05, 1.0], [0.05, 0.1], [0.95, 0.1], [0.95, 0.1]])
    y = np.array([[0, 0], [1, 0], [1, 0], [1, 1]])
    got = column_calibration_errors(y, p)
    assert got == pytest.approx([0.45 * 0.5 + 0.05 * 0.5, 0.25 + (1 / 3 - 0.1) * 0.75], abs=1e-12)
    assert macro_ece(y, p) == pytest.approx(np.mean(got), abs=1e-12)
    # torchmetrics, column by column, on scores with ties at the bin edges, 0 and 1
    rng = np.random.default_rng(3)
    p = np.round(rng.random((300, 7)), 1)
    y = (rng.random((300, 7)) < p).astype(int)
    for bins in (10, 15):
        expected = [calibration_error(p[:, j], y[:, j], n_bins=bins) for j in range(7)]
        assert column_calibration_errors(y, p, bins) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="probabilities"):
        column_calibration_errors(y, p - 0.5)


def test_bands_and_bootstrap():
    y, p = _random_task(3, c=3)
    res = evaluate(y, p, ["a", "b", "c"], bands={"a": "head", "b": "tail", "c": "tail"}, n_bootstrap=50)
    s = res.summary()
    assert s["bands"]["tail"]["mAP"] == pytest.approx(np.mean([res.per_class["b"].AP, res.per_class["c"].AP]))
    lo, hi = s["ci95"]["mAP"]
    assert lo <= s["mAP"] <= hi


@pytest.mark.parametrize(("bad", "match"), [(np.nan, "finite"), (1.5, "within")])
def test_invalid_probabilities_are_rejected(bad, match):
    y, p = _random_task(0, n=10, c=2)
    p[0, 0] = bad
    with pytest.raises(ValueError, match=match):
        evaluate(y, p, ["a", "b"])


def _write_pred_and_labels(tmp_path, synth_data, shuffle_columns=False):
    labels = pd.read_csv(synth_data / "CXRLT_2026_dev_labels.csv", dtype={"ImageID": str})
    rng = np.random.default_rng(0)
    pred = labels[["ImageID"]].copy()
    for c in KNOWN_CLASSES:
        pred[c] = np.clip(0.6 * labels[c] + 0.4 * rng.random(len(labels)), 0, 1)
    if shuffle_columns:
        pred = pred[["ImageID", *reversed(KNOWN_CLASSES)]].iloc[::-1]
    pred.to_csv(tmp_path / "pred.csv", index=False)
    return tmp_path / "pred.csv", synth_data / "CXRLT_2026_dev_labels.csv"


def test_eval_cli_writes_report_and_is_keyed_by_name(synth_data, tmp_path):
    (tmp_path / "a").mkdir()
    pred, labels = _write_pred_and_labels(tmp_path / "a", synth_data)
    args = ["eval", "--labels", str(labels), "--train-csv", str(synth_data / "CXRLT_2026_training.csv"),
            "--bootstrap", "20"]
    result = CliRunner().invoke(app, [*args, "--pred", str(pred), "--out", str(tmp_path / "ra")])
    assert result.exit_code == 0, result.output
    m = json.loads((tmp_path / "ra" / "metrics.json").read_text())
    assert {"mAP", "mAUROC", "mF1", "mECE", "per_class", "bands"} <= set(m)
    assert set(m["per_class"]["cardiomegaly"]) >= {"AP", "AUROC", "F1", "ECE", "n_pos"}
    for png in ("reliability.png", "per_class_ap.png"):
        assert (tmp_path / "ra" / png).stat().st_size > 1000
    assert (tmp_path / "ra" / "per_class.csv").exists()
    (tmp_path / "b").mkdir()
    pred_b, _ = _write_pred_and_labels(tmp_path / "b", synth_data, shuffle_columns=True)
    CliRunner().invoke(app, [*args, "--pred", str(pred_b), "--out", str(tmp_path / "rb")])
    mb = json.loads((tmp_path / "rb" / "metrics.json").read_text())
    assert mb["mAP"] == pytest.approx(m["mAP"], abs=1e-12)


def test_eval_cli_names_missing_ids_and_classes(synth_data, tmp_path):
    pred, labels = _write_pred_and_labels(tmp_path, synth_data)
    df = pd.read_csv(pred, dtype={"ImageID": str})
    df.iloc[1:].to_csv(tmp_path / "missing_row.csv", index=False)
    df.drop(columns=["Mass"]).to_csv(tmp_path / "missing_col.csv", index=False)
    df.assign(Pneumonia=0.1).to_csv(tmp_path / "extra_col.csv", index=False)
    r1 = CliRunner().invoke(app, ["eval", "--pred", str(tmp_path / "missing_row.csv"), "--labels", str(labels),
                                  "--out", str(tmp_path / "o1")])
    assert r1.exit_code == 1 and "no prediction" in r1.output and df["ImageID"][0] in r1.output
    r2 = CliRunner().invoke(app, ["eval", "--pred", str(tmp_path / "missing_col.csv"), "--labels", str(labels),
                                  "--out", str(tmp_path / "o2")])
    assert r2.exit_code == 1 and "Mass" in r2.output
    r3 = CliRunner().invoke(app, ["eval", "--pred", str(tmp_path / "extra_col.csv"), "--labels", str(labels),
                                  "--out", str(tmp_path / "o3")])
    assert r3.exit_code == 1 and "Pneumonia" in r3.output


def test_column_ap_and_auroc_by_hand_and_equal_to_sklearn_with_ties():
    from cxrlt.metrics import column_ap, column_auroc

    # by hand: pairs (pos, neg) 0.9>0.8, 0.9>0.1, 0.8=0.8 (one half), 0.8>0.1 -> 3.5 / 4; thresholds 0.9 (P 1, R 1/2)
    # and 0.8 (P 2/3, R 1) -> AP = 1/2 * 1 + 1/2 * 2/3
    y, p = np.array([[1], [0], [1], [0]]), np.array([[0.9], [0.8], [0.8], [0.1]])
    assert column_auroc(y, p)[0] == pytest.approx(0.875, abs=1e-12)
    assert column_ap(y, p)[0] == pytest.approx(0.5 + 1 / 3, abs=1e-12)
    rng = np.random.default_rng(0)
    for _ in range(100):
        n = int(rng.integers(2, 60))
        y = (rng.random((n, 4)) < rng.random()).astype(int)
        p = np.round(rng.random((n, 4)), int(rng.integers(1, 3)))  # one or two decimals: many ties
        for j in range(4):
            if y[:, j].any():
                assert column_ap(y[:, [j]], p[:, [j]])[0] == pytest.approx(average_precision_score(y[:, j], p[:, j]),
                                                                           abs=1e-12)
            if 0 < y[:, j].sum() < n:
                assert column_auroc(y[:, [j]], p[:, [j]])[0] == pytest.approx(roc_auc_score(y[:, j], p[:, j]),
                                                                              abs=1e-12)
