"""Shared fixtures: small synthetic CXR-LT datasets generated once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxrlt.data.synth import SynthConfig, generate


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """A clean synthetic dataset: 400 images of 64 px (train/dev/test, both views)."""
    out = tmp_path_factory.mktemp("synth")
    generate(out, SynthConfig(n_images=400, size=64, seed=0), progress=False)
    return out


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
    """A tiny trained ensemble (router; frontal pcam+swin; lateral pcam; mixed pcam; flip TTA) and zero-shot model."""
    from cxrlt.config import load_config
    from cxrlt.ensemble import build_ensemble
    from cxrlt.training.trainer import TrainRequest, train_member
    from cxrlt.zeroshot.train import ZeroShotRequest, train_zeroshot

    root = tmp_path_factory.mktemp("bundle")
    cfg = load_config({**TINY_CONFIG, "train": {**TINY_CONFIG["train"], "epochs": 1}, "inference": {"tta": "flip"}})
    for member in ("router", "frontal/pcam", "frontal/swin", "lateral/pcam", "mixed/pcam"):
        train_member(TrainRequest(member, cfg, synth_data, root / "runs" / member, progress=False))
    build_ensemble(root / "runs", root / "ensemble", synth_data / "CXRLT_2026_training.csv", cfg)
    train_zeroshot(ZeroShotRequest(cfg, synth_data, root / "zeroshot", progress=False))
    return root
