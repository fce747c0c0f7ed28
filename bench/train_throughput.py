"""Benchmark: training-step samples/s vs data-loader samples/s, side by side, per profile and member.

A ratio loader/step well above 1 means the model is the bottleneck; below 1 the loader starves training.
The paper profile runs a few batches only (it is meant for GPUs). Usage:
    python bench/train_throughput.py [--profiles tiny paper] [--members pcam swin cait router] [--steps 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from cxrlt.config import load_config, task1_preprocess
from cxrlt.data.split import split_frames
from cxrlt.data.synth import SynthConfig, generate
from cxrlt.labels import KNOWN_CLASSES
from cxrlt.losses import build_loss
from cxrlt.models.factory import build_member, build_router
from cxrlt.training.augment import AugmentConfig
from cxrlt.training.data import ImageStore, ManifestDataset

ROOT = Path(__file__).resolve().parents[1]


def measure(profile: str, member: str, steps: int, batch: int, data: Path, device: torch.device) -> tuple[float, float]:
    cfg = load_config(ROOT / "configs" / f"{profile}.yaml")
    contract = task1_preprocess(cfg)
    size, chans = contract.size, contract.channels
    train, _, _ = split_frames(data / "CXRLT_2026_training.csv", data / "padchest_metadata.csv", None, 0.1, 0)
    store = ImageStore(data / "images", contract)
    ds = ManifestDataset(train, store, train[list(KNOWN_CLASSES)].to_numpy(), AugmentConfig(), seed=0)
    loader = DataLoader(ds, batch_size=batch, shuffle=True, drop_last=True, num_workers=0)
    it = iter(loader)
    next(it)
    t0 = time.perf_counter()
    batches = [next(it) for _ in range(steps)]
    loader_rate = steps * batch / (time.perf_counter() - t0)
    if member == "router":
        model, loss_fn = build_router(cfg["models"]["router"], chans), torch.nn.CrossEntropyLoss()
    else:
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if member == "cait":
                pcam = build_member("pcam", cfg["models"], 30, size, chans)
                ckpt = Path(tmp) / "pcam.pt"
                torch.save({"model": pcam.state_dict()}, ckpt)
            model = build_member(member, cfg["models"], 30, size, chans, pcam_checkpoint=ckpt)
        loss_fn = build_loss("asl")
    model.to(device).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step(x, y):
        x, y = x.to(device), y.to(device)
        out = model(x)
        target = y[:, :2].argmax(1) if member == "router" else y
        loss = loss_fn(out, target)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step(*batches[0][:2])  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for x, y, _ in batches:
        step(x, y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0), loader_rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profiles", nargs="+", default=["tiny", "paper"])
    ap.add_argument("--members", nargs="+", default=["pcam", "swin", "cait", "router"])
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device: {device}; synthetic data")
    header = ("profile", "member", "batch", "train samples/s", "loader samples/s", "loader/train")
    print(f"{header[0]:<7} {header[1]:<7} {header[2]:>5} {header[3]:>16} {header[4]:>17} {header[5]:>13}")
    for profile in args.profiles:
        cfg = load_config(ROOT / "configs" / f"{profile}.yaml")
        size = int(cfg["data"]["image_size"])
        batch = 32 if profile == "tiny" else (4 if device.type == "cpu" else 32)
        steps = args.steps if profile == "tiny" or device.type == "cuda" else 2
        with tempfile.TemporaryDirectory() as tmp:
            generate(tmp, SynthConfig(n_images=max(200, batch * (steps + 2) * 2), size=size, seed=0, workers=2),
                     progress=False)
            for member in args.members:
                train_rate, loader_rate = measure(profile, member, steps, batch, Path(tmp), device)
                print(f"{profile:<7} {member:<7} {batch:>5} {train_rate:>16.1f} {loader_rate:>17.1f} "
                      f"{loader_rate / train_rate:>13.2f}")


if __name__ == "__main__":
    main()
