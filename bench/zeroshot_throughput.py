"""Benchmark: dual-branch CLIP training samples/s (contrastive + ASL step) per profile, with the text-side cost.

Prints image-only forward, full training step and the ratio, so the cost of encoding reports and class prompts
every step is visible, then the training step with the image tower in NHWC (``zeroshot.channels_last``) against the
contiguous layout, side by side in the same process. Usage:
    python bench/zeroshot_throughput.py [--profiles tiny paper] [--steps 5]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from cxrlt.config import load_config, zeroshot_settings
from cxrlt.labels import KNOWN_CLASSES
from cxrlt.zeroshot.bank import load_bank, prompts_for
from cxrlt.zeroshot.loss import DualBranchLoss
from cxrlt.zeroshot.model import DualBranchCLIP, build_clip, tokenize
from cxrlt.zeroshot.text import synth_report

ROOT = Path(__file__).resolve().parents[1]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profiles", nargs="+", default=["tiny", "paper"])
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device: {device}")
    for profile in args.profiles:
        run_profile(profile, args.steps, device)


def run_profile(profile: str, steps_arg: int, device: torch.device) -> None:
    zs = zeroshot_settings(load_config(ROOT / "configs" / f"{profile}.yaml"))
    batch = int(zs["batch_size"]) if device.type == "cuda" or profile == "tiny" else 8
    steps = steps_arg if device.type == "cuda" or profile == "tiny" else 2
    model = DualBranchCLIP(build_clip(zs)[0], zs["context_length"]).to(device)
    bank = load_bank(zs["bank"])
    rng = np.random.default_rng(0)
    y = torch.from_numpy((rng.random((batch, 30)) < 0.05).astype(np.float32)).to(device)
    texts = [synth_report([c for c, v in zip(KNOWN_CLASSES, row, strict=True) if v], bank, rng)
             for row in y.cpu().numpy()]
    prompts = [prompts_for(bank[c], "hybrid")[0] for c in KNOWN_CLASSES]
    x = torch.randn(batch, zs["preprocess"]["channels"], zs["image_size"], zs["image_size"], device=device)
    loss_fn = DualBranchLoss(1.5)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    amp = device.type == "cuda"

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            img, txt, cls = model(x, tokenize(texts, zs["context_length"]).to(device),
                                  tokenize(prompts, zs["context_length"]).to(device))
        loss, _ = loss_fn(img.float(), txt.float(), cls.float(), model.clip.logit_scale, model.asl_scale,
                          model.asl_bias, y, torch.arange(batch, device=device))
        opt.zero_grad()
        loss.backward()
        opt.step()

    def image_only():
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            model.encode_image(x)

    def rate(fn) -> float:
        fn()
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        _sync(device)
        return steps * batch / (time.perf_counter() - t0)

    rates = {"train step": rate(step), "image forward": rate(image_only)}
    print(f"{profile:<6} model={zs['model']:<8} size={zs['image_size']:<4} batch={batch:<4} "
          f"train {rates['train step']:8.1f} samples/s | image forward {rates['image forward']:8.1f} samples/s "
          f"| forward/train {rates['image forward'] / rates['train step']:.1f}")
    layouts = {}
    for _ in range(2):  # alternated, so that a drift of the machine's speed does not favour one layout
        for fmt in (torch.contiguous_format, torch.channels_last):
            model.to(memory_format=fmt)
            x = x.contiguous(memory_format=fmt)
            layouts.setdefault(fmt, []).append(rate(step))
    plain, nhwc = (max(layouts[f]) for f in (torch.contiguous_format, torch.channels_last))
    print(f"{profile:<6} train step, contiguous {plain:8.1f} samples/s | channels_last {nhwc:8.1f} samples/s "
          f"| x {nhwc / plain:.2f} (best of 2 each)")


if __name__ == "__main__":
    main()
