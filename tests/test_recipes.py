"""Recipe fidelity: seed 000's loss balance and checkpoint selection, the removal list and label-source filter reaching
training, and test labels never read by anything that trains, tunes or calibrates."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from cxrlt.cli import app
from cxrlt.data.tables import PADCHEST_METADATA_CSV, TEST_LABELS_CSV, TRAINING_CSV
from cxrlt.errors import InvalidInputError
from cxrlt.metrics import macro_ap, macro_auroc, selection_score
from cxrlt.zeroshot.loss import DualBranchLoss
from tests.conftest import TINY_CONFIG


def test_dual_branch_asl_is_the_class_mean_of_seed_000_eq_2():
    """With gamma = 0 and no clip, ASL is BCE: the ASL term must equal the BCE averaged over images *and* classes."""
    img = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8]]), dim=-1)
    cls = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]), dim=-1)
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    loss = DualBranchLoss(alpha=2.0, gamma_neg=0.0, gamma_pos=0.0, clip=0.0)
    total, parts = loss(img, img.clone(), cls, torch.tensor(0.0), torch.tensor(0.0), torch.tensor(0.0), targets,
                        torch.arange(2))
    z = (img @ cls.T).numpy()  # asl scale exp(0) = 1, bias 0: the logits are the cosines
    y = targets.numpy()
    bce = -(y * np.log(1 / (1 + np.exp(-z))) + (1 - y) * np.log(1 - 1 / (1 + np.exp(-z))))
    assert parts["asl"] == pytest.approx(bce.mean(), rel=1e-5)  # mean over 2 x 3, not the per-image sum
    assert total.item() == pytest.approx(parts["contrastive"] + 2.0 * bce.mean(), rel=1e-5)


def test_training_overrides_apply_kind_then_view_then_member():
    from cxrlt.config import ConfigError, load_config, train_settings

    cfg = load_config(TINY_CONFIG)
    cfg["train"]["overrides"] = {"pcam": {"epochs": 4, "lr": 1e-3}, "lateral": {"epochs": 8},
                                 "lateral/pcam": {"epochs": 12}}
    cfg = load_config(cfg)
    assert train_settings(cfg, "frontal/pcam")["epochs"] == 4
    assert train_settings(cfg, "lateral/swin")["epochs"] == 8  # the view's override
    lateral_pcam = train_settings(cfg, "lateral/pcam")
    assert lateral_pcam["epochs"] == 12 and lateral_pcam["lr"] == pytest.approx(1e-3)  # most specific wins
    assert train_settings(cfg, "router")["epochs"] == cfg["train"]["epochs"]
    cfg["train"]["overrides"] = {"lateral/router": {"epochs": 1}}
    with pytest.raises(ConfigError, match="overrides"):
        load_config(cfg)


def test_selection_score_is_map_plus_mauc_minus_bce():
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    logits = np.array([[2.0, -1.0], [-1.0, 0.5], [0.3, 1.0], [-2.0, -0.5]])
    p = 1 / (1 + np.exp(-logits))
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()
    assert selection_score(y, logits, "mAP") == pytest.approx(macro_ap(y, p))
    assert selection_score(y, logits, "mAP+mAUC-BCE") == pytest.approx(macro_ap(y, p) + macro_auroc(y, p) - bce)
    with pytest.raises(ValueError, match="unknown selection rule"):
        selection_score(y, logits, "loss")


def test_split_writes_both_label_sources_over_the_same_patients(synth_data, tmp_path):
    """One patient-disjoint split; the physician-verified manifests are the physician-labelled rows of the same train
    and validation patients; split_summary.json counts both; each task reads the source its profile names."""
    from cxrlt.data.split import SPLIT_SUMMARY, split_dataset, training_frames

    meta = pd.read_csv(synth_data / PADCHEST_METADATA_CSV, dtype=str)
    share = (meta["MethodLabel"] == "Physician").mean()
    assert 0.15 < share < 0.35  # PadChest: 24.3 % physician-labelled
    summary = split_dataset(synth_data / TRAINING_CSV, tmp_path, synth_data / PADCHEST_METADATA_CSV, None, 0.2, 0)
    methods = dict(zip(meta["ImageID"], meta["MethodLabel"], strict=True))
    every = {p: pd.read_csv(tmp_path / f"{p}.csv", dtype=str) for p in ("train", "val")}
    physician = {p: pd.read_csv(tmp_path / "physician" / f"{p}.csv", dtype=str) for p in ("train", "val")}
    for part in ("train", "val"):
        assert {methods[i] for i in physician[part]["ImageID"]} == {"Physician"}
        expected = {i for i in every[part]["ImageID"] if methods[i] == "Physician"}
        assert set(physician[part]["ImageID"]) == expected  # the same patients' physician rows, no re-split
        assert summary["label_sources"]["physician"][part] == len(expected)
        assert summary["label_sources"]["all"][part] == len(every[part])
    assert not set(physician["train"]["PatientID"]) & set(every["val"]["PatientID"])
    on_disk = json.loads((tmp_path / SPLIT_SUMMARY).read_text())
    assert on_disk["label_sources"] == summary["label_sources"] and "physician/train_frontal" in on_disk["files"]
    assert summary["label_methods"]["Physician"] == sum(v == "Physician" for v in every["train"]["ImageID"].map(
        methods)) + sum(v == "Physician" for v in every["val"]["ImageID"].map(methods))
    train, val = training_frames(synth_data, tmp_path, 0.2, 0, "physician")
    assert list(train["ImageID"]) == list(physician["train"]["ImageID"]) and len(val) == len(physician["val"])
    train, _ = training_frames(synth_data, tmp_path, 0.2, 0, "all")
    assert len(train) == len(every["train"])  # Task 1 keeps every label
    # without manifests the trainers split in memory the same way
    mem_train, _ = training_frames(synth_data, None, 0.2, 0, "physician")
    assert list(mem_train["ImageID"]) == list(physician["train"]["ImageID"])


def test_physician_labels_need_the_method_label_column(synth_data, tmp_path):
    from cxrlt.data.split import split_dataset, training_frames

    meta = pd.read_csv(synth_data / PADCHEST_METADATA_CSV, dtype=str).drop(columns=["MethodLabel"])
    meta.to_csv(tmp_path / "meta.csv", index=False)
    summary = split_dataset(synth_data / TRAINING_CSV, tmp_path / "splits", tmp_path / "meta.csv", None, 0.2, 0)
    assert list(summary["label_sources"]) == ["all"] and not (tmp_path / "splits" / "physician").exists()
    with pytest.raises(InvalidInputError, match="no physician/ manifests.*label_source to all"):
        training_frames(synth_data, tmp_path / "splits", 0.2, 0, "physician")
    with pytest.raises(InvalidInputError, match="label source must be one of"):
        training_frames(synth_data, tmp_path / "splits", 0.2, 0, "radiologist")


@pytest.mark.slow
def test_removed_images_never_reach_a_batch(synth_data, tmp_path, monkeypatch):
    from cxrlt.training.data import ManifestDataset
    from cxrlt.training.trainer import TrainRequest, train_member

    ids = pd.read_csv(synth_data / TRAINING_CSV, dtype={"ImageID": str})["ImageID"]
    removed = set(ids.sample(60, random_state=0))
    pd.DataFrame({"ImageID": sorted(removed)}).to_csv(tmp_path / "removal.csv", index=False)
    result = CliRunner().invoke(app, ["data", "split", "--data", str(synth_data), "--out", str(tmp_path / "splits"),
                                      "--removal", str(tmp_path / "removal.csv"), "--val-fraction", "0.2",
                                      "--seed", "0"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["removed_images"] == 60
    seen: list[str] = []
    original = ManifestDataset.__getitem__

    def recording(self, index):
        seen.append(self.ids[index])
        return original(self, index)

    monkeypatch.setattr(ManifestDataset, "__getitem__", recording)
    train_member(TrainRequest("mixed/pcam", TINY_CONFIG, synth_data, tmp_path / "run", epochs=1, progress=False,
                              splits=tmp_path / "splits"))
    val_ids = pd.read_csv(tmp_path / "run" / "val_logits.csv", dtype={"ImageID": str})["ImageID"]
    assert len(seen) > 100 and not set(seen) & removed and not set(val_ids) & removed


@pytest.mark.slow
def test_test_labels_are_never_read_by_training_tuning_or_calibration(synth_data, tmp_path):
    """A sentinel replaces the test labels and an audit hook fails any open of it: training, ensemble fitting,
    zero-shot training, calibration and proxy validation all run to the end without touching it."""
    from cxrlt.config import load_config
    from cxrlt.ensemble import build_ensemble
    from cxrlt.training.trainer import TrainRequest, train_member
    from cxrlt.zeroshot.proxy import proxy_validate
    from cxrlt.zeroshot.train import ZeroShotRequest, train_zeroshot

    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    sentinel = data / TEST_LABELS_CSV
    sentinel.write_text("SENTINEL: test labels must never be read while training, tuning or calibrating\n")
    touched: list[str] = []
    armed = [True]

    def hook(event, args):
        if armed[0] and event == "open" and args and isinstance(args[0], str | bytes) and \
                str(args[0]).endswith(TEST_LABELS_CSV) and str(data) in str(args[0]):
            touched.append(str(args[0]))
            raise PermissionError(f"test labels read: {args[0]}")

    sys.addaudithook(hook)  # hooks cannot be removed: disarmed at the end
    try:
        with pytest.raises(PermissionError):  # the tripwire works for the way the code reads CSVs
            pd.read_csv(sentinel)
        touched.clear()
        cfg = load_config({**TINY_CONFIG, "train": {**TINY_CONFIG["train"], "epochs": 1}})
        for member in ("router", "mixed/pcam"):
            train_member(TrainRequest(member, cfg, data, tmp_path / "runs" / member, progress=False))
        build_ensemble(tmp_path / "runs", tmp_path / "ensemble", data / TRAINING_CSV, cfg)
        train_zeroshot(ZeroShotRequest(cfg, data, tmp_path / "zs", epochs=1, progress=False))
        result = CliRunner().invoke(app, ["zeroshot", "calibrate", "--model", str(tmp_path / "zs"), "--data",
                                          str(data)])
        assert result.exit_code == 0, result.output
        refused = CliRunner().invoke(app, ["zeroshot", "calibrate", "--model", str(tmp_path / "zs"), "--data",
                                           str(data), "--split", "test"])
        assert refused.exit_code != 0 and "never used" in refused.output
        summary = proxy_validate(cfg, data, tmp_path / "proxy", groups=["C"], epochs=1)
        assert summary["scored_on"].startswith("validation part of the training set")
    finally:
        armed[0] = False
    assert touched == []
