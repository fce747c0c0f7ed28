import numpy as np
import pandas as pd
import pytest

from cxrlt.data import tables as T
from cxrlt.labels import KNOWN_CLASSES, UNSEEN_CLASSES


def test_training_csv_reads_ids_as_strings(synth_data):
    df = T.read_training_csv(synth_data / T.TRAINING_CSV)
    assert list(df.columns) == ["ImageID", "StudyDate_DICOM", "PatientID", *KNOWN_CLASSES]
    # 36-digit patient IDs would collapse as floats; as strings they stay exact
    assert df["PatientID"].map(len).eq(36).all()
    raw = pd.read_csv(synth_data / T.TRAINING_CSV)
    assert raw["PatientID"].nunique() <= df["PatientID"].nunique()


def test_strict_reader_rejects_damaged_training_csv(faulty_data):
    with pytest.raises(T.TableError):
        T.read_training_csv(faulty_data / T.TRAINING_CSV)


@pytest.mark.parametrize(
    ("projection", "view"),
    [("PA", "frontal"), ("AP", "frontal"), ("AP_horizontal", "frontal"), ("L", "lateral"), ("COSTAL", None),
     ("", None)],
)
def test_projection_mapping(projection, view):
    assert T.view_of_projection(projection) == view


def test_read_projections_counts_exclusions(tmp_path):
    path = tmp_path / "meta.csv"
    pd.DataFrame({"ImageID": list("abcde"), "Projection": ["PA", "L", "COSTAL", "", "AP"]}).to_csv(path, index=False)
    table = T.read_projections(path)
    assert table.views == {"a": "frontal", "b": "lateral", "e": "frontal"}
    assert table.excluded == {"COSTAL": 1, "<blank>": 1}


def test_label_csv_accepts_goiter_capitalised(tmp_path):
    path = tmp_path / "l.csv"
    pd.DataFrame({"ImageID": ["x"], "Goiter": [1], "Bulla": [0], "other": [3]}).to_csv(path, index=False)
    df, classes = T.read_label_csv(path)
    assert classes == ["goiter", "Bulla"] and df.loc[0, "goiter"] == 1


def test_submission_is_keyed_by_class_name(tmp_path):
    ids = ["a", "b"]
    probs = {name: np.full(2, i / 10) for i, name in enumerate(reversed(UNSEEN_CLASSES))}
    path = T.write_submission(tmp_path / "sub.csv", ids, probs, UNSEEN_CLASSES)
    df = pd.read_csv(path)
    assert list(df.columns) == ["ImageID", *UNSEEN_CLASSES]
    assert df["goiter"].iloc[0] == pytest.approx(0.0) and df["Scoliosis"].iloc[0] == pytest.approx(0.5)
    with pytest.raises(T.TableError, match="within"):
        T.write_submission(tmp_path / "bad.csv", ids, {"Bulla": np.array([0.1, 1.5])}, ["Bulla"])


def test_removal_list_drops_rows(tmp_path):
    df = pd.DataFrame({"ImageID": ["a", "b", "c"]})
    removal = tmp_path / "Removal.csv"
    pd.DataFrame({"ImageID": ["b"]}).to_csv(removal, index=False)
    assert T.drop_removed(df, removal)["ImageID"].tolist() == ["a", "c"]
    assert T.read_id_list(removal) == ["b"]
