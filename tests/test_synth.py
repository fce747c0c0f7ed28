import hashlib
import itertools
import json

import pandas as pd
import pytest

from cxrlt.data import synth as S
from cxrlt.data.tables import DEV_LABELS_CSV, PADCHEST_METADATA_CSV, TEST_LABELS_CSV, TRAINING_CSV
from cxrlt.labels import KNOWN_CLASSES, NORMAL, TRAINING_META_COLUMNS, UNSEEN_CLASSES, frequency_bands


def _digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != "synth_manifest.json":
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_regardless_of_workers(tmp_path):
    a = S.generate(tmp_path / "a", S.SynthConfig(n_images=40, size=48, seed=7), progress=False)
    S.generate(tmp_path / "b", S.SynthConfig(n_images=40, size=48, seed=7, workers=2), progress=False)
    S.generate(tmp_path / "c", S.SynthConfig(n_images=40, size=48, seed=8), progress=False)
    assert a["n_images"] == 40
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_challenge_file_format(synth_data):
    train = pd.read_csv(synth_data / TRAINING_CSV, dtype=str)
    assert list(train.columns) == [*TRAINING_META_COLUMNS, *KNOWN_CLASSES]
    for name in (DEV_LABELS_CSV, TEST_LABELS_CSV):
        df = pd.read_csv(synth_data / name, dtype={"ImageID": str})
        assert list(df.columns) == ["ImageID", *KNOWN_CLASSES, *UNSEEN_CLASSES]
    meta = pd.read_csv(synth_data / PADCHEST_METADATA_CSV, dtype=str)
    assert list(meta.columns) == list(S.MASTER_COLUMNS), "the PadChest master CSV layout"
    assert list(meta.columns[:5]) == ["ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID"]
    assert set(meta["Projection"]) >= {"PA", "AP", "L"}
    for image_id in meta["ImageID"]:
        assert (synth_data / "images" / image_id).exists()


def test_16bit_narrow_range_images(synth_data):
    import cv2

    meta = pd.read_csv(synth_data / PADCHEST_METADATA_CSV, dtype=str)
    img = cv2.imread(str(synth_data / "images" / meta["ImageID"][0]), cv2.IMREAD_UNCHANGED)
    assert img.dtype == "uint16" and img.shape[0] == 64
    body = img[img < 65535]
    assert body.max() - body.min() < 30000, "PadChest-like PNGs use a narrow part of the 16-bit range"


def test_patients_have_several_images_and_splits_are_patient_disjoint(synth_data):
    meta = pd.read_csv(synth_data / PADCHEST_METADATA_CSV, dtype=str)
    assert meta.groupby("PatientID").size().max() >= 3
    split_of = {}
    for split, name in (("train", TRAINING_CSV), ("dev", DEV_LABELS_CSV), ("test", TEST_LABELS_CSV)):
        for image_id in pd.read_csv(synth_data / name, dtype=str)["ImageID"]:
            split_of[image_id] = split
    per_patient = meta.assign(split=meta["ImageID"].map(split_of)).groupby("PatientID")["split"].nunique()
    assert per_patient.max() == 1


def test_unseen_findings_never_labelled_in_training_but_present_in_test(synth_data):
    train = pd.read_csv(synth_data / TRAINING_CSV, dtype={"ImageID": str})
    assert not set(UNSEEN_CLASSES) & set(train.columns)
    test = pd.read_csv(synth_data / TEST_LABELS_CSV, dtype={"ImageID": str})
    assert test[list(UNSEEN_CLASSES)].to_numpy().sum() > 0
    # Normal means nothing drawn at all: it never co-occurs with another finding
    abnormal = test[[c for c in KNOWN_CLASSES + UNSEEN_CLASSES if c != NORMAL]].sum(axis=1)
    assert (abnormal[test[NORMAL] == 1] == 0).all()


def test_long_tail_has_all_three_bands(tmp_path):
    summary = S.generate(tmp_path, S.SynthConfig(n_images=1500, size=32, seed=3), progress=False)
    counts = summary["train_positive_counts"]
    bands = frequency_bands(counts, summary["splits"]["train"])
    tally = {b: sum(v == b for v in bands.values()) for b in ("head", "medium", "tail")}
    assert tally["head"] >= 2 and tally["medium"] >= 8 and tally["tail"] >= 3, tally


def test_pattern_vocabulary_makes_unseen_findings_describable():
    patterns = S.FINDING_PATTERNS
    assert set(patterns) == set(KNOWN_CLASSES + UNSEEN_CLASSES) - {NORMAL}
    assert len(set(patterns.values())) == len(patterns), "every finding looks different"
    known = [patterns[c] for c in KNOWN_CLASSES if c != NORMAL]
    for attr, values in (("location", S.LOCATIONS), ("shape", S.SHAPES), ("density", S.DENSITIES),
                         ("extent", S.EXTENTS)):
        for value in values:
            assert sum(getattr(p, attr) == value for p in known) >= 2, (attr, value)
    for name in UNSEEN_CLASSES:
        text = patterns[name].describe()
        assert name.lower() not in text.lower()
        nearest = min(sum(a != b for a, b in zip(vars(patterns[name]).values(), vars(k).values(), strict=True))
                      for k in known)
        assert 1 <= nearest <= 2
    assert all(len(set(p.descriptions())) == len(S.DESCRIPTION_TEMPLATES) for p in patterns.values())


def test_co_occurrence_is_realistic(tmp_path):
    summary = S.generate(tmp_path, S.SynthConfig(n_images=800, size=32, seed=4), progress=False)
    df = pd.read_csv(tmp_path / TEST_LABELS_CSV)
    assert summary["n_images"] == 800
    dev = pd.concat([df, pd.read_csv(tmp_path / DEV_LABELS_CSV)])
    cvc = dev["central venous catheter"] == 1
    if cvc.sum():
        assert dev.loc[cvc, "Support Devices"].mean() > dev["Support Devices"].mean()
    pairs = itertools.combinations([c for c in KNOWN_CLASSES if c != NORMAL], 2)
    assert any((dev[a] & dev[b]).sum() for a, b in pairs)


@pytest.mark.parametrize("defect", ["truncated_png", "missing_file", "duplicate_image_id", "non_binary_label",
                                    "unseen_leak"])
def test_faulty_option_plants_each_defect(faulty_data, defect):
    planted = {d["defect"]: d for d in json.loads((faulty_data / "planted_defects.json").read_text())}
    assert defect in planted and planted[defect]["image_ids"]
