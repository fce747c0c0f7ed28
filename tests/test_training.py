"""Trainer behaviour on tiny synthetic data: outputs, kill + resume, and DDP (gloo) equivalence."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from cxrlt.models.factory import load_member
from cxrlt.training.checkpoint import KILL_AFTER_EPOCH_ENV
from tests.conftest import TINY_CONFIG

pytestmark = pytest.mark.slow

CONFIG = TINY_CONFIG


@pytest.fixture(scope="module")
def config_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "test.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return path


def _train(args, env_extra=None, nproc=None, cwd=None):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update({"PYTHONUNBUFFERED": "1", **(env_extra or {})})
    if nproc:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "cxrlt.cli", "train", *args]
    else:
        cmd = [sys.executable, "-m", "cxrlt.cli", "train", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=cwd)


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def test_member_run_writes_card_logits_and_checkpoints(synth_data, config_path, tmp_path):
    out = tmp_path / "pcam"
    r = _train(["--member", "mixed/pcam", "--config", str(config_path), "--data", str(synth_data), "--out", str(out)])
    assert r.returncode == 0, r.stderr[-3000:]
    card = json.loads((out / "member.json").read_text())
    assert card["member"] == "mixed/pcam" and len(card["history"]) == 2 and card["val_metric"] == "mAP"
    assert {"mAP", "mAUROC", "mF1", "mECE"} <= set(card["val_tta"])
    header = (out / "val_logits.csv").read_text().splitlines()[0].split(",")
    assert header[0] == "ImageID" and header[1:4] == ["Normal", "aortic elongation", "cardiomegaly"]
    model, _ = load_member(out)
    assert model(torch.zeros(1, 1, 32, 32)).shape == (1, 30)
    cait = tmp_path / "cait"
    r = _train(["--member", "mixed/cait", "--config", str(config_path), "--data", str(synth_data), "--out", str(cait),
                "--pcam-checkpoint", str(out / "best.pt"), "--epochs", "1"])
    assert r.returncode == 0, r.stderr[-3000:]
    model, card = load_member(cait)
    assert card.kind == "cait" and model(torch.zeros(2, 1, 32, 32)).shape == (2, 30)


def test_killed_run_resumes_to_the_uninterrupted_result(synth_data, config_path, tmp_path):
    args = ["--member", "frontal/swin", "--config", str(config_path), "--data", str(synth_data)]
    full = _train([*args, "--out", str(tmp_path / "full")])
    assert full.returncode == 0, full.stderr[-3000:]
    killed = _train([*args, "--out", str(tmp_path / "killed")], {KILL_AFTER_EPOCH_ENV: "0"})
    assert killed.returncode == -9, "the run should have been SIGKILLed after epoch 1"
    assert (tmp_path / "killed" / "last.pt").exists() and not (tmp_path / "killed" / "member.json").exists()
    resumed = _train([*args, "--out", str(tmp_path / "killed"), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = _weights(tmp_path / "full" / "last.pt"), _weights(tmp_path / "killed" / "last.pt")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


def test_one_and_two_processes_reach_the_same_weights(synth_data, config_path, tmp_path):
    args = ["--member", "mixed/swin", "--config", str(config_path), "--data", str(synth_data), "--epochs", "1"]
    single = _train([*args, "--out", str(tmp_path / "p1")])
    assert single.returncode == 0, single.stderr[-3000:]
    double = _train([*args, "--out", str(tmp_path / "p2")], nproc=2)
    assert double.returncode == 0, double.stderr[-3000:]
    a, b = _weights(tmp_path / "p1" / "last.pt"), _weights(tmp_path / "p2" / "last.pt")
    assert json.loads((tmp_path / "p2" / "member.json").read_text())["world_size"] == 2
    # One process sums the batch's gradients in another order than two processes' all-reduce, and AdamW divides by
    # sqrt(v): a weight whose gradient is float noise can move by +-lr either way. So the property that holds is
    # per tensor, not per element: each tensor agrees to within 1 % of its norm (a different sampler shard, seed or
    # gradient averaging would differ by far more).
    for k in a:
        if a[k].is_floating_point() and a[k].numel() > 1:
            rel = float((a[k] - b[k]).norm() / a[k].norm().clamp_min(1e-12))
            assert rel < 0.01, f"{k}: relative difference {rel:.4f}"


def test_mlflow_logging_when_tracking_uri_is_set(synth_data, config_path, tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    r = _train(["--member", "mixed/pcam", "--config", str(config_path), "--data", str(synth_data), "--out",
                str(tmp_path / "run"), "--epochs", "2"], {"MLFLOW_TRACKING_URI": uri,
                                                         "CXRLT_MLFLOW_EXPERIMENT": "pytest"}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["pytest"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["member"] == "mixed/pcam" and "train.lr" in run.data.params
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "val_mAP")
    assert [m.step for m in history] == [0, 1]
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"member.json", "val_per_class_ap.png"} <= artifacts


def _shared_volume(tmp_path, synth_data, cfg: dict):
    """A pipeline run's shared volume as plan_run, preprocess and the split step leave it: (root, run's profile)."""
    import pandas as pd

    from cxrlt.config import load_config, task1_preprocess
    from cxrlt.data.preprocess import build_cache
    from cxrlt.data.split import split_dataset
    from cxrlt.data.tables import IMAGES_DIR, PADCHEST_METADATA_CSV, TRAINING_CSV
    from cxrlt.ops import pipeline_steps

    shared = tmp_path / "shared"
    config = tmp_path / "profile.yaml"
    config.write_text(yaml.safe_dump(cfg))
    plan = pipeline_steps.plan_run(str(config), str(shared), "r1")
    cfg = load_config(plan.profile)
    split_dataset(synth_data / TRAINING_CSV, shared / "splits", synth_data / PADCHEST_METADATA_CSV,
                  val_fraction=cfg["data"]["val_fraction"], seed=cfg["data"]["split_seed"])
    ids = pd.read_csv(synth_data / TRAINING_CSV, dtype={"ImageID": str})["ImageID"]
    build_cache(ids, synth_data / IMAGES_DIR, shared / "cache", task1_preprocess(cfg), progress=False)
    return shared, plan.profile


def test_a_one_process_pipeline_job_trains_in_the_steps_process_like_cxrlt_train(synth_data, tmp_path, monkeypatch):
    """launcher=local, nproc=1: the step trains in its own process (no child, no second import of torch and timm),
    with the job's intra-op threads for the job only, and reaches the weights ``cxrlt train`` reaches in a child
    process with the same number of threads."""
    from cxrlt.ops import launch, pipeline_steps

    shared, profile = _shared_volume(tmp_path, synth_data, {**CONFIG, "data": {**CONFIG["data"], "cache_size": 32},
                                                            "train": {**CONFIG["train"], "epochs": 1}})

    def no_child(*args, **kwargs):
        raise AssertionError(f"a one-process local job started a child: {args[0]}")

    monkeypatch.setattr(launch.subprocess, "Popen", no_child)
    threads = torch.get_num_threads()
    meta = pipeline_steps.train_networks("frontal", "swin", str(shared), "r1", str(synth_data), shared / "cache",
                                         shared / "splits", str(tmp_path / "art"), threads=1, reuse=False)
    assert torch.get_num_threads() == threads, "the job's thread count leaked into the step"
    assert meta["networks"] == ["frontal/swin"]
    here = shared / "runs" / "r1" / "members" / "frontal-swin" / "frontal" / "swin"
    monkeypatch.undo()
    child = _train(["--member", "frontal/swin", "--config", profile, "--data", str(synth_data), "--cache",
                    str(shared / "cache"), "--splits", str(shared / "splits"), "--out", str(tmp_path / "child")],
                   {"OMP_NUM_THREADS": "1"})
    assert child.returncode == 0, child.stderr[-3000:]
    a, b = _weights(here / "last.pt"), _weights(tmp_path / "child" / "last.pt")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


def test_the_pipelines_clip_job_trains_with_the_profiles_alpha(synth_data, tmp_path):
    """The loop's zero-shot job takes the ASL weight from the profile (here 0.25, not the 1.5 default), trains and
    calibrates the CLIP, and reports its known-class validation mAP as the job's score."""
    from cxrlt.dataplane import read_location
    from cxrlt.ops import pipeline_steps

    zs = {**CONFIG["zeroshot"], "alpha": 0.25}
    shared, _ = _shared_volume(tmp_path, synth_data, {**CONFIG, "data": {**CONFIG["data"], "cache_size": 32},
                                                      "zeroshot": zs})
    meta = pipeline_steps.train_job("", "zeroshot", str(shared), "r1", str(synth_data), shared / "cache",
                                    shared / "splits", str(tmp_path / "art"), zeroshot_epochs=1, reuse=True)
    card = json.loads((shared / "runs" / "r1" / "zeroshot" / "zeroshot.json").read_text())
    assert card["settings"]["alpha"] == 0.25 and len(card["history"]) == 1
    assert card["calibration"]["scoring"] == card["settings"]["scoring"]  # calibrated in the step
    assert meta["best_val_score"] == meta["best_val_known_mAP"] == card["best_val_known_mAP"]
    assert read_location(tmp_path / "art").kind == "zeroshot-run"
