"""Ensemble bundle + predictor on tiny trained members: routing, mixed mode, CLI, explicit PNG/DICOM files."""

import json

import cv2
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cxrlt.cli import app
from cxrlt.data.dicom import array_to_dicom
from cxrlt.ensemble import calibrate, load_spec
from cxrlt.inference import EnsemblePredictor
from cxrlt.labels import KNOWN_CLASSES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tiny_bundle):
    return tiny_bundle


def test_ensemble_spec(trained):
    spec = load_spec(trained / "ensemble")
    assert spec["router"] == "router" and spec["classes"] == list(KNOWN_CLASSES)
    assert set(spec["views"]) == {"frontal", "lateral", "mixed"}
    assert spec["views"]["frontal"]["members"] == {k: f"frontal/{k}" for k in ("pcam", "swin", "cait")}
    assert sum(spec["views"]["frontal"]["weights"].values()) == pytest.approx(1.0)
    assert spec["views"]["frontal"]["val_mAP"] >= max(spec["views"]["frontal"]["val_mAP_members"].values()) - 1e-9


def test_projection_aware_prediction_is_the_weighted_view_ensemble(trained):
    predictor = EnsemblePredictor(trained / "ensemble")
    images = np.random.default_rng(0).random((5, 32, 32)).astype(np.float32)
    frame = predictor.predict(images)
    assert list(frame.columns[:30]) == list(KNOWN_CLASSES) and set(frame["view"]) <= {"frontal", "lateral"}
    assert ((frame["view_confidence"] >= 0.5) & (frame["view_confidence"] <= 1)).all()
    import torch

    x = torch.from_numpy(predictor.preprocess.normalize(images))
    spec = load_spec(trained / "ensemble")
    for i, view in enumerate(frame["view"]):
        members = {k: m(x[i : i + 1]).detach().numpy() for k, m in predictor.members[view].items()}
        raw = 1 / (1 + np.exp(-sum(spec["views"][view]["weights"][k] * z for k, z in members.items())))
        expected = calibrate(raw, spec["calibration"], list(KNOWN_CLASSES))  # weighted logits, then Platt
        np.testing.assert_allclose(frame.loc[i, list(KNOWN_CLASSES)].to_numpy(float), expected[0], rtol=1e-5)
    mixed = EnsemblePredictor(trained / "ensemble", mixed=True).predict(images)
    assert (mixed["view"] == "mixed").all()


def test_predict_cli_writes_a_scorable_submission(trained, synth_data, tmp_path):
    out = tmp_path / "pred.csv"
    result = CliRunner().invoke(app, ["predict", "--ensemble", str(trained / "ensemble"), "--data", str(synth_data),
                                      "--split", "dev", "--out", str(out)])
    assert result.exit_code == 0, result.output
    pred = pd.read_csv(out, dtype={"ImageID": str})
    assert list(pred.columns) == ["ImageID", *KNOWN_CLASSES]
    ev = CliRunner().invoke(app, ["eval", "--pred", str(out), "--labels", str(synth_data / "CXRLT_2026_dev_labels.csv"),
                                  "--out", str(tmp_path / "ev"), "--bootstrap", "0"])
    assert ev.exit_code == 0, ev.output
    assert 0 < json.loads((tmp_path / "ev" / "metrics.json").read_text())["mAP"] <= 1


def test_predict_cli_on_png_and_dicom_files(trained, synth_data, tmp_path):
    image_id = pd.read_csv(synth_data / "CXRLT_2026_dev_labels.csv", dtype=str)["ImageID"][0]
    png = synth_data / "images" / image_id
    dcm = array_to_dicom(cv2.imread(str(png), cv2.IMREAD_UNCHANGED), tmp_path / "same.dcm")
    out = tmp_path / "files.csv"
    result = CliRunner().invoke(app, ["predict", "--ensemble", str(trained / "ensemble"), "--out", str(out),
                                      str(png), str(dcm)])
    assert result.exit_code == 0, result.output
    pred = pd.read_csv(out)
    np.testing.assert_allclose(pred.iloc[0, 1:].to_numpy(float), pred.iloc[1, 1:].to_numpy(float), atol=1e-3)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    result = CliRunner().invoke(app, ["predict", "--ensemble", str(trained / "ensemble"), "--out", str(out), str(bad)])
    assert result.exit_code == 1 and "bad.png" in result.output


def test_evaluate_system_scores_both_tasks_and_writes_the_report(trained, synth_data, tmp_path):
    import json

    from cxrlt.evaluation import evaluate_system

    result = evaluate_system(trained / "ensemble", trained / "zeroshot", synth_data, "dev", tmp_path)
    assert 0 <= result["mAP"] <= 1 and 0 <= result["unseen_mAP"] <= 1 and 0 <= result["router_accuracy"] <= 1
    assert sum(map(sum, result["confusion"])) > 0
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["mECE"] == result["mECE"] and (tmp_path / "reliability_before_after.png").stat().st_size > 1000
    assert (tmp_path / "predictions.csv").exists()
