import json

import cv2
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cxrlt.cli import app
from cxrlt.data.images import PreprocessConfig, load_preprocessed
from cxrlt.data.preprocess import build_cache, cached_name
from cxrlt.data.split import read_manifest, split_dataset
from cxrlt.data.tables import PADCHEST_METADATA_CSV, TRAINING_CSV, read_id_list


def test_cache_matches_in_memory_preprocessing_and_is_idempotent(synth_data, tmp_path):
    ids = read_id_list(synth_data / TRAINING_CSV)[:30]
    cfg = PreprocessConfig(size=32)
    first = build_cache(ids, synth_data / "images", tmp_path, cfg, workers=2, progress=False)
    assert (first.written, first.skipped, first.failures) == (30, 0, {})
    cached = cv2.imread(str(tmp_path / cached_name(ids[0])), cv2.IMREAD_UNCHANGED)
    assert cached.dtype == np.uint16 and cached.shape == (32, 32)
    expected = load_preprocessed(synth_data / "images" / ids[0], cfg)
    np.testing.assert_allclose(cached / 65535.0, expected, atol=1 / 65535)
    again = build_cache(ids, synth_data / "images", tmp_path, cfg, progress=False)
    assert (again.written, again.skipped) == (0, 30)
    with pytest.raises(ValueError, match="another --out"):
        build_cache(ids, synth_data / "images", tmp_path, PreprocessConfig(size=64), progress=False)


def test_failures_are_reported_and_good_images_kept(faulty_data, tmp_path):
    result = CliRunner().invoke(app, ["data", "preprocess", "--data", str(faulty_data), "--out", str(tmp_path),
                                      "--size", "32", "--workers", "1"])
    assert result.exit_code == 1
    failures = pd.read_csv(tmp_path / "failures.csv")
    planted = {d["defect"]: d["image_ids"][0] for d in json.loads((faulty_data / "planted_defects.json").read_text())}
    assert {planted["truncated_png"], planted["missing_file"]} <= set(failures["ImageID"])
    assert failures["error"].str.contains("truncated|not found").all()
    n_ids = len(set(read_id_list(faulty_data / TRAINING_CSV)))
    assert len(list(tmp_path.glob("*.png"))) >= n_ids - len(failures)


def test_split_is_patient_disjoint_and_projection_aware(synth_data, tmp_path):
    summary = split_dataset(synth_data / TRAINING_CSV, tmp_path, synth_data / PADCHEST_METADATA_CSV, seed=1)
    train, val = read_manifest(tmp_path / "train.csv"), read_manifest(tmp_path / "val.csv")
    assert not set(train["PatientID"]) & set(val["PatientID"])
    assert 0.03 < summary["patients"]["val"] / (summary["patients"]["val"] + summary["patients"]["train"]) < 0.2
    for part in ("train", "val"):
        for view in ("frontal", "lateral"):
            manifest = read_manifest(tmp_path / f"{part}_{view}.csv")
            assert (manifest["view"] == view).all()
    assert summary["excluded_images"] == sum(summary["excluded_projections"].values())
    assert set(summary["excluded_projections"]) <= {"COSTAL", "EXCLUDE", "UNK"}  # PadChest's non-radiograph views
    again = split_dataset(synth_data / TRAINING_CSV, tmp_path / "again", synth_data / PADCHEST_METADATA_CSV, seed=1)
    assert again["images"] == summary["images"]


def test_split_cli(synth_data, tmp_path):
    result = CliRunner().invoke(app, ["data", "split", "--data", str(synth_data), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "train_frontal.csv").exists() and '"images"' in result.output
