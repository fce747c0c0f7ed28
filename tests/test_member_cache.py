"""The member cache: a job's key changes with exactly what decides its weights, and entries are copied whole."""

import json

import pandas as pd
import pytest
import yaml

from cxrlt.data.split import split_dataset
from cxrlt.ops import member_cache
from tests.conftest import TINY_CONFIG

LAUNCH = {"launcher": "local", "nproc": 1, "num_nodes": 1, "gpus_per_node": 1, "threads": 1, "epochs": 0}


@pytest.fixture()
def setting(synth_data, tmp_path):
    profile = tmp_path / "profile.yaml"
    profile.write_text(yaml.safe_dump(TINY_CONFIG))
    meta = synth_data / "padchest_metadata.csv"
    split_dataset(synth_data / "CXRLT_2026_training.csv", tmp_path / "splits", meta, val_fraction=0.2, seed=0)
    return profile, tmp_path / "splits", synth_data, tmp_path / "caches" / "abc123-32px-def"


def _key(setting, view="frontal", networks=("frontal/pcam",), profile=None, splits=None, launch=LAUNCH):
    from cxrlt.config import load_config

    prof, spl, data, cache = setting
    profile = profile or prof
    return member_cache.job_key(view, f"{view}-x", list(networks), load_config(profile), splits or spl, str(data),
                                cache, launch)


def test_the_key_follows_the_views_rows_profile_launch_and_weights(setting, synth_data, tmp_path):
    profile, splits, _, _ = setting
    frontal, inputs = _key(setting)
    lateral, _ = _key(setting, "lateral", ("lateral/pcam",))
    router, _ = _key(setting, "", ("router",))
    assert frontal and lateral and router and len({frontal, lateral, router}) == 3
    assert _key(setting)[0] == frontal, "the same inputs give the same key"
    assert inputs["train_rows"] > 0 and inputs["val_rows"] > 0 and inputs["weights"] == {"frontal/pcam": None}

    # half the lateral images removed: the lateral and router keys change, the frontal one does not
    meta = pd.read_csv(synth_data / "padchest_metadata.csv", dtype=str).set_index("ImageID")
    train = pd.read_csv(synth_data / "CXRLT_2026_training.csv", dtype={"ImageID": str})
    lateral_ids = train.loc[train["ImageID"].map(meta["Projection"]) == "L", ["ImageID"]]
    removal = tmp_path / "removal.csv"
    lateral_ids.sample(frac=0.5, random_state=0).to_csv(removal, index=False)
    split_dataset(synth_data / "CXRLT_2026_training.csv", tmp_path / "splits2", synth_data / "padchest_metadata.csv",
                  removal, val_fraction=0.2, seed=0)
    assert _key(setting, splits=tmp_path / "splits2")[0] == frontal
    assert _key(setting, "lateral", ("lateral/pcam",), splits=tmp_path / "splits2")[0] != lateral
    assert _key(setting, "", ("router",), splits=tmp_path / "splits2")[0] != router

    # one label flipped in a frontal training row changes the frontal key
    flipped = tmp_path / "splits3"
    split_dataset(synth_data / "CXRLT_2026_training.csv", flipped, synth_data / "padchest_metadata.csv",
                  val_fraction=0.2, seed=0)
    rows = pd.read_csv(flipped / "train.csv", dtype={"ImageID": str, "PatientID": str}, keep_default_na=False)
    first = rows.index[rows["view"] == "frontal"][0]
    rows.loc[first, "Nodule"] = 1 - rows.loc[first, "Nodule"]
    rows.to_csv(flipped / "train.csv", index=False)
    assert _key(setting, splits=flipped)[0] != frontal

    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**TINY_CONFIG, "train": {**TINY_CONFIG["train"], "lr": 2e-3}}))
    assert _key(setting, profile=other)[0] != frontal
    # an override decides only the networks it names: another network's override, a comment or the key order does
    # not retrain this job; its own override does
    train = TINY_CONFIG["train"]
    for name, overrides, same_frontal in (("lateral", {"lateral/pcam": {"epochs": 9}}, True),
                                          ("swin", {"swin": {"lr": 5e-4}}, True),
                                          ("own", {"frontal/pcam": {"epochs": 9}}, False),
                                          ("view", {"frontal": {"weight_decay": 0.01}}, False)):
        changed = tmp_path / f"override-{name}.yaml"
        changed.write_text(yaml.safe_dump({**TINY_CONFIG, "train": {
            **train, "overrides": {**(train.get("overrides") or {}), **overrides}}}))
        assert (_key(setting, profile=changed)[0] == frontal) is same_frontal, name
    lateral_override = tmp_path / "override-lateral.yaml"
    assert _key(setting, "lateral", ("lateral/pcam",), profile=lateral_override)[0] != lateral
    reordered = tmp_path / "reordered.yaml"
    reordered.write_text("# the same profile, commented, its keys in another order\n"
                         + yaml.safe_dump(dict(reversed(list(TINY_CONFIG.items()))), sort_keys=False))
    assert _key(setting, profile=reordered)[0] == frontal
    assert _key(setting, launch={**LAUNCH, "nproc": 2})[0] != frontal
    assert _key(setting, launch={**LAUNCH, "epochs": 3})[0] != frontal

    # weights by content: a local file's sha256 is in the key; a tag can change under its name, so no key
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"one")
    pcam = {**TINY_CONFIG["models"]["pcam"], "pretrained": str(weights)}
    with_file = tmp_path / "file.yaml"
    with_file.write_text(yaml.safe_dump({**TINY_CONFIG, "models": {**TINY_CONFIG["models"], "pcam": pcam}}))
    before, inputs = _key(setting, profile=with_file)
    assert inputs["weights"]["frontal/pcam"] == "7692c3ad3540bb803c020b3aee66cd8887123234ea0c6e7143c0add73ff431ed"
    weights.write_bytes(b"two")
    assert _key(setting, profile=with_file)[0] not in (before, None)
    tagged = tmp_path / "tag.yaml"
    tagged.write_text(yaml.safe_dump({**TINY_CONFIG, "models": {
        **TINY_CONFIG["models"], "pcam": {**pcam, "pretrained": "convnextv2_tiny.fcmae_ft_in22k_in1k"}}}))
    key, inputs = _key(setting, profile=tagged)
    assert key is None and "tag reference" in inputs["not_reused"]


def test_store_and_restore_copy_the_whole_job(tmp_path):
    job = tmp_path / "run1" / "members" / "frontal-pcam"
    (job / "frontal" / "pcam").mkdir(parents=True)
    (job / "frontal" / "pcam" / "best.pt").write_bytes(b"weights")
    (job / "frontal" / "pcam" / "member.json").write_text("{}")
    (job / "frontal" / "pcam" / "last.pt").write_bytes(b"optimizer state")  # resume only: not cached
    shared = tmp_path / "shared"
    assert not member_cache.restore(shared, "k1", tmp_path / "run2" / "frontal-pcam")
    entry = member_cache.store(shared, "k1", job, {"job": "frontal-pcam"})
    assert json.loads((entry / member_cache.INPUTS_FILE).read_text()) == {"job": "frontal-pcam"}
    assert [p.name for p in (shared / member_cache.MEMBER_CACHE_DIR).iterdir()] == ["k1"], "no temporary left"
    assert not (entry / "frontal" / "pcam" / "last.pt").exists()
    # a later write into the run's folder does not reach the cached copy
    (job / "frontal" / "pcam" / "best.pt").write_bytes(b"changed")
    assert (entry / "frontal" / "pcam" / "best.pt").read_bytes() == b"weights"
    # the first writer wins: a second store of the same key keeps the entry
    member_cache.store(shared, "k1", job, {"job": "other"})
    assert json.loads((entry / member_cache.INPUTS_FILE).read_text()) == {"job": "frontal-pcam"}
    # restore replaces what a failed attempt left in the job's folder
    target = tmp_path / "run2" / "frontal-pcam"
    (target / "frontal" / "pcam").mkdir(parents=True)
    (target / "frontal" / "pcam" / "last.pt").write_bytes(b"partial")
    assert member_cache.restore(shared, "k1", target)
    assert sorted(p.name for p in (target / "frontal" / "pcam").iterdir()) == ["best.pt", "member.json"]
    assert (target / "frontal" / "pcam" / "best.pt").read_bytes() == b"weights"
    assert not (target / member_cache.INPUTS_FILE).exists()
