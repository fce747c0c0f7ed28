import pytest

from cxrlt import labels as L


def test_known_classes_are_the_challenge_columns_in_csv_order():
    assert len(L.KNOWN_CLASSES) == 30 and len(set(L.KNOWN_CLASSES)) == 30
    assert L.KNOWN_CLASSES[:4] == ("Normal", "aortic elongation", "cardiomegaly", "pleural effusion")
    assert L.KNOWN_CLASSES[19] == "pneumoperitoneo"
    assert L.KNOWN_CLASSES[-1] == "calcified densities"
    assert list(L.KNOWN_CLASSES) != sorted(L.KNOWN_CLASSES), "CSV order is not sorted; code must key by name"


def test_unseen_classes_and_goiter_alias():
    assert L.UNSEEN_CLASSES == ("Scoliosis", "Osteopenia", "Bulla", "Infarction", "Adenopathy", "goiter")
    assert L.canonical_unseen("Goiter") == "goiter"
    assert L.canonical_class("GOITER") == "goiter"
    assert L.canonical_class("cardiomegaly") == "cardiomegaly"
    with pytest.raises(L.LabelSpaceError, match="not one of the unseen"):
        L.canonical_unseen("Pneumonia")
    assert not set(L.KNOWN_CLASSES) & set(L.UNSEEN_CLASSES)


@pytest.mark.parametrize(
    ("prevalence", "band"),
    [(0.5, "head"), (0.1001, "head"), (0.10, "medium"), (0.05, "medium"), (0.01, "medium"), (0.0099, "tail"),
     (0, "tail")],
)
def test_band_thresholds(prevalence, band):
    assert L.band_of(prevalence) == band


def test_frequency_bands_from_counts():
    bands = L.frequency_bands({"a": 300, "b": 50, "c": 5}, 1000)
    assert bands == {"a": "head", "b": "medium", "c": "tail"}
    with pytest.raises(L.LabelSpaceError):
        L.frequency_bands({"a": 1}, 0)


def test_proxy_groups_are_three_disjoint_sixes_of_known_abnormal_classes():
    assert set(L.PROXY_GROUPS) == {"A", "B", "C"}
    members = [c for group in L.PROXY_GROUPS.values() for c in group]
    assert all(len(g) == 6 for g in L.PROXY_GROUPS.values())
    assert len(set(members)) == 18
    assert set(members) <= set(L.KNOWN_CLASSES) - {"Normal"}


def test_check_columns_names_the_difference():
    with pytest.raises(L.LabelSpaceError, match="missing"):
        L.check_columns(["a"], ["a", "b"])
    with pytest.raises(L.LabelSpaceError, match="different order"):
        L.check_columns(["b", "a"], ["a", "b"])
    assert L.unseen_columns_in(["x", "Goiter", "Bulla"]) == ["Goiter", "Bulla"]
