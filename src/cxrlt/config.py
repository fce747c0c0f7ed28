"""Profiles (``configs/*.yaml``): one schema for the tiny CPU profile and the paper profile."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import yaml

DEFAULTS: dict = {
    "profile": "custom",
    "data": {"image_size": 64, "cache_size": 64, "val_fraction": 0.1, "split_seed": 42, "preload": True},
    "models": {},
    "train": {
        "epochs": 3, "batch_size": 32, "lr": 1e-3, "weight_decay": 0.05, "warmup_epochs": 1, "min_lr_ratio": 0.01,
        "grad_clip": 1.0, "ema_decay": 0.99, "loss": "asl", "loss_kwargs": {}, "sampler": "repeat_factor",
        "sampler_threshold": 0.01, "sampler_cap": 10.0, "augment": {}, "num_workers": 0, "seed": 0, "amp": True,
        "overrides": {},
    },
    "inference": {"tta": "flip", "normal_gate_alpha": None},
    "ensemble": {"grid_step": 0.05},
    "zeroshot": {},
}


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def load_config(path: str | Path | dict) -> dict:
    """Read a profile YAML (or take a dict) and fill in defaults."""
    if isinstance(path, dict):
        raw = path
    else:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"config {path} not found (profiles live in configs/)")
        raw = yaml.safe_load(path.read_text()) or {}
    return _merge(DEFAULTS, raw)


def train_settings(cfg: dict, member_kind: str) -> dict:
    """Training settings for one member kind: ``train`` with ``train.overrides[kind]`` applied."""
    return _merge(cfg["train"], cfg["train"].get("overrides", {}).get(member_kind, {}))


def config_hash(cfg: dict) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]
