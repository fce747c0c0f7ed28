import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from cxrlt.cli import app
from cxrlt.data.validate import check_images, validate_dataset, validate_training_frame
from cxrlt.labels import KNOWN_CLASSES


@pytest.fixture(scope="module")
def faulty_report(faulty_data):
    return validate_dataset(faulty_data, min_positives=0)


def test_clean_dataset_passes(synth_data):
    report = validate_dataset(synth_data, min_positives=0, image_check="decode")
    assert report.success, report.to_markdown()
    assert report.statistics["images_checked"] == 400


@pytest.mark.parametrize(
    ("defect", "check"),
    [("truncated_png", "truncated_png"), ("missing_file", "missing_file"), ("duplicate_image_id", "unique_image_id"),
     ("non_binary_label", "binary_labels"), ("unseen_leak", "unseen_leak")],
)
def test_every_planted_defect_is_caught_and_named(faulty_data, faulty_report, defect, check):
    planted = {d["defect"]: d for d in json.loads((faulty_data / "planted_defects.json").read_text())}[defect]
    hits = [f for f in faulty_report.failures if f.check == check]
    assert hits, f"{defect} not reported: {faulty_report.to_markdown()}"
    named = {i for f in hits for i in f.image_ids}
    assert set(planted["image_ids"]) <= named
    if "column" in planted:
        assert planted["column"] in {f.column for f in hits}


def test_min_positives_expectation_names_the_class(synth_data):
    df = pd.read_csv(synth_data / "CXRLT_2026_training.csv", dtype={"ImageID": str, "PatientID": str})
    df["Mass"] = 0
    failures, _ = validate_training_frame(df, min_positives=1)
    assert any(f.check == "min_positives" and f.column == "Mass" for f in failures)


def test_missing_label_column_is_reported(synth_data):
    df = pd.read_csv(synth_data / "CXRLT_2026_training.csv", dtype={"ImageID": str, "PatientID": str})
    failures, _ = validate_training_frame(df.drop(columns=[KNOWN_CLASSES[5]]), min_positives=0)
    assert any(f.check == "columns" and KNOWN_CLASSES[5] in f.message for f in failures)


def test_image_check_modes(faulty_data, tmp_path):
    ids = pd.read_csv(faulty_data / "CXRLT_2026_training.csv", dtype=str)["ImageID"]
    assert check_images(ids, faulty_data / "images", mode="none") == []
    (tmp_path / "junk.png").write_bytes(b"not a png at all")
    kinds = {f.check for f in check_images(["junk.png"], tmp_path, mode="header")}
    assert kinds == {"not_png"}
    with pytest.raises(ValueError):
        check_images(ids, faulty_data / "images", mode="bogus")


def test_cli_exits_non_zero_and_writes_reports(faulty_data, tmp_path):
    result = CliRunner().invoke(app, ["data", "validate", "--data", str(faulty_data), "--out", str(tmp_path),
                                      "--min-positives", "0"])
    assert result.exit_code == 1
    assert "unseen_leak" in result.output and "truncated_png" in result.output
    report = json.loads((tmp_path / "validation.json").read_text())
    assert report["success"] is False and len(report["failures"]) >= 5
    assert "FAILED" in (tmp_path / "validation.md").read_text()
