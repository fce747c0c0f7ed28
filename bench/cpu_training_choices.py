"""Benchmark: the CPU training choices behind the tiny profile and the demo, measured side by side in one run.

For the tiny profile's PCAM member (ResNet-18 trunk, 64 px, 1 channel) it times optimisation steps (forward,
backward, AdamW) and prints samples/s with ratios against the baseline (batch 32, contiguous memory, 1 thread):
channels-last memory, batch 16, and 2 threads vs 1, plus two members side by side with 1 thread each (what the
pipeline's ParallelFor does) against one member with 2 threads. It also times the data loader (decode-free: images
preloaded, augmentation on) so the loader/step ratio shows which one bounds training. Usage:
    python bench/cpu_training_choices.py [--steps 12]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _steps_per_s(batch: int, steps: int, threads: int, channels_last: bool) -> float:
    from cxrlt.config import load_config
    from cxrlt.models.factory import build_member

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = load_config(ROOT / "configs" / "tiny.yaml")
    model = build_member("pcam", cfg["models"], 30, 64, in_chans=1)
    x, y = torch.randn(batch, 1, 64, 64), (torch.rand(batch, 30) < 0.1).float()
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for i in range(steps + 3):
        if i == 3:
            t0 = time.perf_counter()
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - t0)


def _worker(args, queue):
    queue.put(_steps_per_s(*args))


def _side_by_side(batch: int, steps: int) -> float:
    """Two single-thread members training at once (separate processes): their summed samples/s."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=((batch, steps, 1, False), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    rates = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    return sum(rates)


def _loader_per_s(n_batches: int, batch: int) -> float:
    from torch.utils.data import DataLoader

    from cxrlt.config import load_config, task1_preprocess
    from cxrlt.data.split import split_frames
    from cxrlt.data.synth import SynthConfig, generate
    from cxrlt.labels import KNOWN_CLASSES
    from cxrlt.training.augment import AugmentConfig
    from cxrlt.training.data import ImageStore, ManifestDataset

    torch.set_num_threads(1)
    cfg = load_config(ROOT / "configs" / "tiny.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        generate(data, SynthConfig(n_images=600, size=64, seed=0, workers=2), progress=False)
        train, _, _ = split_frames(data / "CXRLT_2026_training.csv", data / "padchest_metadata.csv", None, 0.1, 0)
        store = ImageStore(data / "images", task1_preprocess(cfg))
        augment = AugmentConfig.from_dict(cfg["train"]["augment"])
        ds = ManifestDataset(train, store, train[list(KNOWN_CLASSES)].to_numpy(), augment, seed=0)
        loader = DataLoader(ds, batch_size=batch, shuffle=True, drop_last=True, num_workers=0)
        it = iter(loader)
        next(it)
        t0 = time.perf_counter()
        done = 0
        for _ in range(n_batches):
            try:
                next(it)
            except StopIteration:
                it = iter(loader)
                next(it)
            done += batch
        return done / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    base = _steps_per_s(32, args.steps, 1, False)
    rows = [("batch 32, contiguous, 1 thread (baseline)", base),
            ("batch 32, channels-last, 1 thread", _steps_per_s(32, args.steps, 1, True)),
            ("batch 16, contiguous, 1 thread", _steps_per_s(16, args.steps, 1, False)),
            ("batch 32, contiguous, 2 threads (one member alone)", _steps_per_s(32, args.steps, 2, False)),
            ("two members side by side, 1 thread each (sum)", _side_by_side(32, args.steps))]
    loader = _loader_per_s(args.steps, 32)
    print(f"{'setting':<52} {'samples/s':>10} {'x baseline':>11}")
    for name, rate in rows:
        print(f"{name:<52} {rate:>10.1f} {rate / base:>11.2f}")
    print(f"{'data loader (preloaded, augmented), 1 thread':<52} {loader:>10.1f} {loader / base:>11.2f}")
    print(f"loader / step ratio {loader / base:.1f}: {'the model' if loader > base else 'the loader'} bounds training")


if __name__ == "__main__":
    main()
