import hashlib
import itertools
import json

import numpy as np
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


def test_same_seed_same_bytes_in_every_process(tmp_path):
    """Python salts string hashes per process (PYTHONHASHSEED): a draw made while iterating a set of finding names
    once gave each process its own dataset from one seed. Two processes with different salts must agree."""
    import os
    import subprocess
    import sys

    code = ("import sys; from cxrlt.data import synth as S; "
            "S.generate(sys.argv[1], S.SynthConfig(n_images=60, size=32, seed=11), progress=False)")
    for salt in ("1", "2"):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / salt)], check=True,
                       env={**os.environ, "PYTHONHASHSEED": salt})
    assert _digest(tmp_path / "1") == _digest(tmp_path / "2")


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


@pytest.fixture(scope="module")
def padchest_shaped(tmp_path_factory):
    out = tmp_path_factory.mktemp("padchest_shaped")
    summary = S.generate(out, S.SynthConfig(n_images=3000, size=24, seed=11, workers=2), progress=False)
    return out, summary, pd.read_csv(out / PADCHEST_METADATA_CSV, dtype=str, keep_default_na=False)


def test_projection_mix_follows_padchest(padchest_shaped):
    from cxrlt.data.tables import read_projections

    out, _, meta = padchest_shaped
    share = meta["Projection"].value_counts(normalize=True)
    assert 0.50 < share["PA"] < 0.64 and 0.25 < share["L"] < 0.37  # PadChest: 57.0 % and 30.8 %
    assert 0.05 < share["AP_horizontal"] < 0.13 and 0.01 < share["AP"] < 0.05  # 8.9 % and 2.8 %
    excluded = read_projections(out / PADCHEST_METADATA_CSV).excluded
    assert set(excluded) == {"COSTAL", "EXCLUDE", "UNK"} and sum(excluded.values()) < 0.03 * len(meta)


def test_patients_have_studies_over_years(padchest_shaped):
    _, summary, meta = padchest_shaped
    studies = meta.groupby("PatientID")["StudyID"].nunique()
    assert studies.median() == 1 and 1.4 < studies.mean() < 2.0 and studies.max() >= 5  # PadChest: 1, 1.63, 116
    assert studies.max() <= S.max_studies(3000) < S.MAX_STUDIES  # the tail is capped for a small dataset
    assert summary["studies_per_patient"]["median"] == 1
    dates = pd.to_datetime(meta["StudyDate_DICOM"], format="%Y%m%d")
    assert dates.min() >= pd.Timestamp("2007-05-01") and dates.max() <= pd.Timestamp("2017-11-30")
    per_study = meta.assign(date=dates).groupby(["PatientID", "StudyID"])["date"].nunique()
    assert (per_study == 1).all(), "the images of one study share its date"
    span = meta.assign(date=dates).groupby("PatientID")["date"].agg(lambda d: (d.max() - d.min()).days)
    assert (span[studies > 1] > 365).any(), "some patients come back years later"
    per_image_study = meta.groupby("StudyID").size()
    assert per_image_study.max() == 2 and 1.2 < per_image_study.mean() < 1.7  # PadChest: 1.46 images per study


def test_bit_depth_sizes_and_labels_columns(padchest_shaped):
    import cv2

    out, summary, meta = padchest_shaped
    bits = meta["BitsStored_DICOM"].astype(int)
    assert set(bits) == {10, 12} and 0.04 < (bits == 10).mean() < 0.2  # PadChest: 10.4 % 10-bit
    assert meta["Rows_DICOM"].astype(int).eq(24).all() and meta["Columns_DICOM"].nunique() >= 5
    for _, row in meta.sample(40, random_state=0).iterrows():
        img = cv2.imread(str(out / "images" / row["ImageID"]), cv2.IMREAD_UNCHANGED)
        assert img.dtype == "uint16" and img.max() <= 2 ** int(row["BitsStored_DICOM"]) - 1
        assert img.shape == (int(row["Rows_DICOM"]), int(row["Columns_DICOM"]))
    physician = (meta["MethodLabel"] == "Physician").mean()
    assert 0.19 < physician < 0.3  # PadChest: 24.3 %
    labels = meta["Labels"].map(eval)
    assert all(isinstance(x, list) and x for x in labels)
    unseen = {c.lower() for c in UNSEEN_CLASSES}
    assert not unseen & set().union(*labels), "metadata must not leak unseen findings"
    assert (labels.map(lambda x: x == ["normal"])).mean() > 0.1


def test_lateral_views_show_findings_elsewhere_and_narrower():
    """The same finding lands at a different place, and is thinner front-to-back, in a lateral view."""
    def footprint(view):
        mask = S._finding_mask(S.FINDING_PATTERNS["Mass"], view, 96, 96, np.random.default_rng(0))
        ys, xs = np.nonzero(mask > 0.5 * mask.max())
        return xs.mean() / 96, ys.mean() / 96, np.ptp(xs), np.ptp(ys)

    fx, fy, fw, fh = footprint("frontal")
    lx, ly, lw, lh = footprint("lateral")
    assert abs(fx - lx) > 0.1, "a lower-right finding projects to a different column in the lateral view"
    assert lw < 0.8 * fw and lh > 0.8 * fh


def test_prevalence_factor_by_hand():
    assert S.prevalence_factor("aortic elongation", 80, "M") == pytest.approx(1.2 ** 2, rel=1e-12)
    assert S.prevalence_factor("aortic elongation", 40, "F") == pytest.approx(1.2 ** -2, rel=1e-12)
    assert S.prevalence_factor("Osteopenia", 60, "F") == pytest.approx(1.5, rel=1e-12)
    assert S.prevalence_factor("Osteopenia", 70, "M") == pytest.approx(1.2 * 0.67, rel=1e-12)
    assert S.prevalence_factor("Nodule", 25, "F") == 1.0 and S.prevalence_factor("Nodule", 90, "O") == 1.0


def test_demographics_follow_padchest_and_age_and_sex_change_prevalence_mildly():
    from cxrlt.subgroups import demographics

    specs = S._plan(S.SynthConfig(n_images=30000, seed=5))  # the plan only: no images are rendered
    table = pd.DataFrame({"ImageID": [s.image_id for s in specs], "PatientSex_DICOM": [s.sex for s in specs],
                          "PatientBirth": [float(s.birth_year) for s in specs],
                          "StudyDate_DICOM": [s.study_date for s in specs]})
    people = demographics(table)
    assert 0.45 < (people["sex"] == "F").mean() < 0.55 and (people["age_band"] == "unknown").sum() == 0
    share = people["age_band"].value_counts(normalize=True)
    # PadChest by image: <40 16.5 %, 40-59 28.9 %, 60-79 41.3 %, 80+ 13.3 % (later studies age the patients a bit)
    assert 0.12 < share["<40"] < 0.22 and 0.22 < share["40-59"] < 0.35 and 0.35 < share["60-79"] < 0.48
    assert 0.10 < share["80+"] < 0.22

    # each patient's first study: follow-up studies repeat a patient's chronic findings, so counted by image a few
    # long-followed patients weigh so much that the ratios below moved by +-0.3 between seeds
    first, seen = np.zeros(len(specs), bool), set()
    for i in sorted(range(len(specs)), key=lambda i: (specs[i].patient_id, specs[i].study_date, i)):
        first[i] = specs[i].patient_id not in seen
        seen.add(specs[i].patient_id)

    def prevalence(finding, mask):
        return np.mean([finding in s.findings for s, m, f in zip(specs, mask, first, strict=True) if m and f])

    old, young = people["age_band"].eq("80+").to_numpy(), people["age_band"].eq("<40").to_numpy()
    women, men = people["sex"].eq("F").to_numpy(), people["sex"].eq("M").to_numpy()
    # age-dependent findings are clearly more frequent in the old; an age-independent one is not
    assert prevalence("aortic elongation", old) > 1.5 * prevalence("aortic elongation", young)
    assert prevalence("Osteopenia", women) > 1.5 * prevalence("Osteopenia", men)
    assert prevalence("Emphysema", men) > 1.2 * prevalence("Emphysema", women)
    assert 0.7 < prevalence("Nodule", old) / prevalence("Nodule", young) < 1.4
