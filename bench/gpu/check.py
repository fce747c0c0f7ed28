"""The prepared GPU check: how close training, loading and inference of the paper profile come to the hardware.

One command, side by side in one run, every figure also as a fraction of this device's measured matmul rate:

1. peak: the device's bf16 matmul rate (on CPU: fp32), measured here (a square matmul loop);
2. train: images/s of every paper member's training step, eager fp32 vs the profile's fast step
   (:mod:`cxrlt.training.step`: bf16, channels_last, torch.compile, fused AdamW, no per-step host sync), with the
   FLOPs of a step counted by ``torch.utils.flop_counter``; the step is the trainer's own
   (``MemberTask.loss`` + :func:`cxrlt.training.loop.optimisation_step` + EMA) on random batches, so the loader
   does not limit it;
3. loader: images/s of the training dataset (the profile's augmentation) reading the PNG cache and the uint16 shard
   cache, and from the shards without augmentation (``augment_on: device``), with 1 and 2 worker processes; the
   augmentation's images/s on the device; images/s per core, and the cores a GPU needs to feed the fast step 1.2x;
4. inference: the whole pipeline (router, PCAM, Swin, CaiT over the PCAM trunk, the CLIP image tower) at batch 1
   (p50 ms) and batch 64 (images/s): eager fp32, eager bf16, torch.compile (bf16 on GPU) and the AOTInductor
   package (``torch.export`` + ``aoti_compile_and_package``, loaded back from its ``.pt2`` file), each checked
   against eager fp32 (max |difference| of the outputs);
5. served networks: each through the serving code's own AOTInductor path (``export_program`` -> ``compile_program``
   -> the python-backend runner's ``AotiEngine``, bf16 with a CUDA graph at batch 1 on a GPU), against eager fp32.

Usage on a GPU (meant to finish within 8 minutes on one H200; not yet timed there):
``python bench/gpu/check.py --out gpu_check_out``
In ``make test``: ``python bench/gpu/check.py --device cpu --tiny --out DIR`` (the tiny profile's networks, small
images and batches; compiles one member's training step and the AOT packages, not the pipeline's torch.compile).
Needs torch, timm, open_clip and kornia (the augmentation on the device); the wheels the GPU machine lacks:
kornia and kornia_rs (about 3 MB; ``bench/gpu_check.sh`` installs them from ``bench/gpu/wheels`` when they are
missing). Writes ``check.json`` and prints one table per section.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler
from torch.utils.flop_counter import FlopCounterMode

from cxrlt.config import load_config, task1_preprocess, train_settings, zeroshot_settings
from cxrlt.data.images import PreprocessConfig
from cxrlt.data.preprocess import build_cache
from cxrlt.data.shards import build_shards
from cxrlt.data.synth import SynthConfig, generate
from cxrlt.labels import KNOWN_CLASSES
from cxrlt.losses import build_loss
from cxrlt.models.factory import build_member, build_router
from cxrlt.training.augment import AugmentConfig, DeviceAugment
from cxrlt.training.data import ImageStore, ManifestDataset
from cxrlt.training.loop import make_ema, optimisation_step
from cxrlt.training.step import StepOptions
from cxrlt.training.trainer import MemberTask
from cxrlt.tta import FeatureHeadTTA, TrunkTTA, TTAModel
from cxrlt.zeroshot.model import DualBranchCLIP, ImageEncoder, build_clip

ROOT = Path(__file__).resolve().parents[2]
MEMBERS = ("pcam", "swin", "cait", "router")
SECTIONS = ("train", "loader", "inference")
#: the networks of a served request (serving/repository.py's models for a view with a shared trunk)
SERVED = ("router", "trunk", "pcam", "cait", "swin", "clip_image")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, repeats: int) -> list[float]:
    """Seconds per call of ``fn`` (after the caller's warm-up), each call synchronised."""
    out = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return out


def matmul_peak(device: torch.device, tiny: bool) -> dict:
    """The device's dense matmul rate: bf16 on a GPU (the rate the fast step aims at), fp32 on a CPU."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n = 1024 if tiny else 8192
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b
    repeats = 5 if tiny else 50
    seconds = sum(timed(lambda: a @ b, device, repeats))
    return {"dtype": str(dtype).removeprefix("torch."), "n": n, "tflops": 2 * n ** 3 * repeats / seconds / 1e12}


def flops_of(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


# ---------------------------------------------------------------------------------------------------------- training
def build_network(kind: str, cfg: dict, size: int, chans: int) -> nn.Module:
    if kind == "router":
        return build_router(cfg["models"]["router"], chans)
    return build_member(kind, cfg["models"], len(KNOWN_CLASSES), size, chans, for_loading=kind == "cait")


def train_rate(kind: str, cfg: dict, step: StepOptions, batch: int, steps: int) -> dict:
    """Images/s of the trainer's own step for one member with ``step``'s settings (random inputs)."""
    contract = task1_preprocess(cfg)
    torch.manual_seed(0)
    model = build_network(kind, cfg, contract.size, contract.channels)
    ts = train_settings(cfg, f"frontal/{kind}" if kind != "router" else "router")
    step.place(model)
    ema = make_ema(model, ts)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = step.adamw(params, lr=1e-4, weight_decay=0.05)
    router = kind == "router"
    criterion = nn.CrossEntropyLoss() if router else build_loss(ts["loss"], [10] * len(KNOWN_CLASSES),
                                                                **ts.get("loss_kwargs", {}))
    task = MemberTask(criterion, step, router, "mAP", None, None, None, 0)
    net = step.compiled(model)
    x = torch.randn(batch, contract.channels, contract.size, contract.size).pin_memory() \
        if step.device.type == "cuda" else torch.randn(batch, contract.channels, contract.size, contract.size)
    y = (torch.rand(batch, 2 if router else len(KNOWN_CLASSES)) < 0.2).float()
    if router:
        y = nn.functional.one_hot(y[:, 0].long(), 2).float()
    total = torch.zeros((), device=step.device, dtype=torch.float64)

    def one(i: int = 0) -> None:
        nonlocal total
        loss, n, _ = task.loss(net, (x, y, None), 0, i)
        optimisation_step(loss, optimizer, params, float(ts["grad_clip"] or 0))
        ema.update(model, step=i)
        total += loss.detach().double() * n

    t0 = time.perf_counter()
    one()
    one()  # compile (if any) happens here
    sync(step.device)
    warmup = time.perf_counter() - t0
    seconds = sum(timed(one, step.device, steps))
    float(total)  # the loop's one host read per log_every steps
    flops = flops_of(lambda: task.loss(model, (x, y, None), 0, 0)[0].backward())
    optimizer.zero_grad(set_to_none=True)
    return {"images_per_s": steps * batch / seconds, "flops_per_image": flops / batch, "warmup_s": warmup}


# ------------------------------------------------------------------------------------------------------------ loader
def loader_rates(cfg: dict, data: Path, workdir: Path, workers: tuple[int, ...], batch: int, batches: int) -> dict:
    """Training-dataset images/s (the profile's augmentation) from the PNG cache and from the shard cache."""
    contract = task1_preprocess(cfg)
    ids = pd.read_csv(data / "CXRLT_2026_training.csv", dtype={"ImageID": str})
    cache_cfg = PreprocessConfig.from_dict({**contract.to_dict(), "size": contract.size})
    build_cache(ids["ImageID"], data / "images", workdir / "png", cache_cfg, workers=2, progress=False)
    build_shards(ids["ImageID"], data / "images", workdir / "shards", cache_cfg, workers=2, progress=False)
    aug = AugmentConfig.from_dict(train_settings(cfg, "frontal/pcam").get("augment"))
    targets = ids[list(KNOWN_CLASSES)].to_numpy()
    out = {}
    # the third row: what the loader still does when the augmentation runs on the device (augment_on: device)
    for name, cache, augmented in (("png", "png", True), ("shards", "shards", True), ("shards-noaug", "shards", False)):
        store = ImageStore(data / "images", contract, workdir / cache)
        ds = ManifestDataset(ids, store, targets, aug if augmented else None, seed=0, normalize=augmented)
        for n in workers:
            # drawn with replacement: the timed batches do not depend on how many images the split holds
            sampler = RandomSampler(ds, replacement=True, num_samples=(batches + 1) * batch,
                                    generator=torch.Generator().manual_seed(0))
            loader = DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=n, drop_last=True)
            it = iter(loader)
            next(it)  # workers started and warm
            t0 = time.perf_counter()
            for _ in range(batches):
                next(it)
            out[f"{name}/{n}"] = batches * batch / (time.perf_counter() - t0)
            del it
    return out


def device_augment_rate(cfg: dict, device: torch.device, batch: int, repeats: int) -> float:
    """Images/s of the profile's augmentation run on ``device`` for a batch (``augment_on: device``; every image
    gets CLAHE, the worst case)."""
    contract = task1_preprocess(cfg)
    aug = AugmentConfig.from_dict({**train_settings(cfg, "frontal/pcam").get("augment", {}), "clahe_p": 1.0})
    augment = DeviceAugment(aug, contract.channels, contract.mean, contract.std)
    x = torch.rand(batch, 1, contract.size, contract.size, device=device)
    times = timed(lambda: augment(x, 0, 0), device, repeats)
    return batch / statistics.median(times)


# --------------------------------------------------------------------------------------------------------- inference
class Pipeline(nn.Module):
    """The served computation in one module: the router, one view's PCAM, Swin and CaiT (over the PCAM member's
    trunk, run once as in serving) and the CLIP image tower at its own input size."""

    def __init__(self, cfg: dict):
        super().__init__()
        contract = task1_preprocess(cfg)
        size, chans = contract.size, contract.channels
        self.router = build_network("router", cfg, size, chans)
        self.pcam = build_network("pcam", cfg, size, chans)
        self.swin = build_network("swin", cfg, size, chans)
        # CaiT's head over the PCAM member's trunk, computed once for both (as served); the trunk is not registered
        # twice (AOTInductor frees an aliased parameter twice)
        self.cait_head = build_network("cait", cfg, size, chans).cait
        zs = zeroshot_settings(cfg)
        self.clip = ImageEncoder(DualBranchCLIP(build_clip(zs)[0], int(zs["context_length"])))
        self.clip_size = int(zs["image_size"])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats = self.pcam.features(x)
        small = nn.functional.adaptive_avg_pool2d(x, self.clip_size)  # area resize (AOTInductor has its kernel)
        return (self.router(x), self.pcam.from_features(feats), self.swin(x), self.cait_head(feats),
                self.clip(small))


def inference_rates(cfg: dict, device: torch.device, big_batch: int, repeats: int, workdir: Path,
                    with_compile: bool = True) -> dict:
    contract = task1_preprocess(cfg)
    torch.manual_seed(0)
    pipeline = Pipeline(cfg).eval().to(device)
    shape = (contract.channels, contract.size, contract.size)
    x1, xb = torch.randn(1, *shape, device=device), torch.randn(big_batch, *shape, device=device)
    with torch.no_grad():
        reference = [o.float() for o in pipeline(xb)]
    flops = flops_of(lambda: pipeline(x1))  # with autograd on: the counter's module hooks need it
    bf16 = device.type == "cuda"
    results = {"flops_per_image": flops}

    def measure(name: str, run, build_s: float = 0.0) -> None:
        with torch.no_grad():
            out = run(xb)
            diff = max(float((o.float() - r).abs().max()) for o, r in zip(out, reference, strict=True))
            run(x1)
            p50 = statistics.median(timed(lambda: run(x1), device, repeats * 2)) * 1e3
            seconds = statistics.median(timed(lambda: run(xb), device, repeats))
        results[name] = {"p50_ms_batch1": p50, "images_per_s": big_batch / seconds, "max_abs_diff": diff,
                         "build_s": build_s}

    measure("eager fp32", pipeline)
    if bf16:
        def eager_bf16(x):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return pipeline(x)
        measure("eager bf16", eager_bf16)
    dtype = torch.bfloat16 if bf16 else torch.float32
    if with_compile:
        t0 = time.perf_counter()
        compiled_net = torch.compile(pipeline, dynamic=False)

        def compiled(x):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                return compiled_net(x)
        with torch.no_grad():
            compiled(xb), compiled(x1)
        measure(f"compiled {str(dtype).removeprefix('torch.')}", compiled, time.perf_counter() - t0)
    t0 = time.perf_counter()
    pipeline.to(dtype)
    packages = {len(x): torch._inductor.aoti_load_package(str(export_aot(pipeline, x.to(dtype),
                                                                         workdir / f"pipeline_b{len(x)}.pt2")))
                for x in (x1, xb)}
    measure(f"AOT {str(dtype).removeprefix('torch.')} .pt2", lambda x: packages[len(x)](x.to(dtype)),
            time.perf_counter() - t0)
    return results


def served_networks(cfg: dict, names: tuple[str, ...]) -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    """The networks as the model repository serves them (``cxrlt export``'s wrappers with the profile's TTA): the
    router, the view's shared PCAM trunk, the PCAM and CaiT heads over its features, Swin, and the CLIP image
    tower; each with its per-item input shape."""
    contract = task1_preprocess(cfg)
    size, chans = contract.size, contract.channels
    tta, merge = cfg["inference"]["tta"], cfg["inference"]["tta_merge"]
    torch.manual_seed(0)
    pcam = build_network("pcam", cfg, size, chans).eval()
    image = (chans, size, size)
    trunk = TrunkTTA(pcam, tta).eval()
    with torch.no_grad():
        features = tuple(trunk(torch.zeros(1, *image)).shape[1:])
    zs = zeroshot_settings(cfg)
    builders = {
        "router": lambda: (build_network("router", cfg, size, chans), image),
        "trunk": lambda: (trunk, image),
        "pcam": lambda: (FeatureHeadTTA(pcam, merge), features),
        "cait": lambda: (FeatureHeadTTA(build_network("cait", cfg, size, chans), merge), features),
        "swin": lambda: (TTAModel(build_network("swin", cfg, size, chans), tta, merge), image),
        "clip_image": lambda: (ImageEncoder(DualBranchCLIP(build_clip(zs)[0], int(zs["context_length"]))),
                               (int(zs["preprocess"]["channels"]), int(zs["image_size"]), int(zs["image_size"]))),
    }
    return {name: (module.eval(), item) for name in names for module, item in [builders[name]()]}


def served_rates(cfg: dict, device: torch.device, names: tuple[str, ...], big_batch: int, repeats: int,
                 workdir: Path) -> dict:
    """Each served network through the serving code's own path: ``cxrlt.export.export_program`` (dynamic batch)
    -> ``compile_program`` for this device (bf16 on CUDA) -> the runner's ``AotiEngine`` (CUDA graphs for batch 1
    on CUDA), against the eager fp32 network; batch 1 p50 and batch ``big_batch`` images/s per network, and the
    request path's sum (router + trunk + heads + Swin + CLIP run one after another: an upper bound, the view's
    members run in parallel in the repository)."""
    import sys

    sys.path.insert(0, str(ROOT / "serving" / "models"))
    from _engines import AotiEngine

    from cxrlt.export import compile_program, export_program

    bf16 = device.type == "cuda"
    dtype = "bfloat16" if bf16 else "float32"
    out: dict = {}
    for name, (module, item) in served_networks(cfg, names).items():
        t0 = time.perf_counter()
        program = export_program(module, torch.zeros(2, *item), workdir / "programs" / f"{name}.pt2")
        package = compile_program(program, workdir / "packages" / f"{name}.pt2", device.type, dtype)
        engine = AotiEngine(str(package), item, device.type, dtype, graph_batches=(1,) if bf16 else ())
        build_s = time.perf_counter() - t0
        x1, xb = torch.randn(1, *item).numpy(), torch.randn(big_batch, *item).numpy()
        with torch.no_grad():
            reference = module.float()(torch.from_numpy(xb)).numpy()
        diff = float(abs(engine(xb) - reference).max())
        engine(x1)
        p50 = statistics.median(timed(lambda e=engine, x=x1: e(x), device, repeats * 2)) * 1e3
        seconds = statistics.median(timed(lambda e=engine, x=xb: e(x), device, repeats))
        out[name] = {"p50_ms_batch1": p50, "images_per_s": big_batch / seconds, "max_abs_diff": diff,
                     "build_s": build_s, "cuda_graph_batches": sorted(engine.graphs)}
    out["request_path"] = {"p50_ms_batch1": sum(r["p50_ms_batch1"] for r in out.values()),
                           "images_per_s": 1 / sum(1 / r["images_per_s"] for r in out.values())}
    return out


def export_aot(module: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """``torch.export`` at the example's batch size, compiled ahead of time into a ``.pt2`` package. One package
    per batch size: static shapes let Inductor specialise (and CUDA graphs capture) them; a dynamic batch dimension
    over the whole pipeline crashed at batch 1 in torch 2.14's CPU AOTInductor runtime."""
    with torch.no_grad():
        program = torch.export.export(module, (example,))
        return Path(torch._inductor.aoti_compile_and_package(program, package_path=str(path)))


def loader_section(cfg: dict, work: Path, tiny: bool, train: dict, device: torch.device) -> dict:
    size = task1_preprocess(cfg).size
    generate(work / "data", SynthConfig(n_images=64 if tiny else 512, size=max(size, 64), seed=0,
                                        workers=min(8, os.cpu_count() or 1)), progress=False)
    batch, batches, workers = (8, 4, (1, 2)) if tiny else (32, 12, (1, 2))
    rates = loader_rates(cfg, work / "data", work, workers, batch, batches)
    print(f"\nloader ({size} px, the profile's augmentation, batches of {batch}; images/s)", flush=True)
    print(f"{'cache':<12} " + " ".join(f"{f'{n} worker(s)':>12}" for n in workers) + f" {'1 -> 2':>7}")
    for name in ("png", "shards", "shards-noaug"):
        print(f"{name:<12} " + " ".join(f"{rates[f'{name}/{n}']:>12.1f}" for n in workers)
              + f" {rates[f'{name}/2'] / rates[f'{name}/1']:>7.2f}")
    rates["device_augment"] = device_augment_rate(cfg, device, batch, 3 if tiny else 10)
    print(f"augmentation on the device ({device.type}, CLAHE on every image): {rates['device_augment']:.0f} img/s",
          flush=True)
    if train:
        fastest = max(m["fast"]["images_per_s"] for m in train.values())
        for name in ("shards", "shards-noaug"):
            rates[f"cores_to_feed_1_2x/{name}"] = 1.2 * fastest / rates[f"{name}/1"]
            print(f"cores per GPU to feed the fastest step 1.2x from {name}: {1.2 * fastest:.0f} img/s / "
                  f"{rates[f'{name}/1']:.0f} per core = {rates[f'cores_to_feed_1_2x/{name}']:.1f}", flush=True)
    return rates


def inference_section(cfg: dict, device: torch.device, work: Path, tiny: bool, of_peak,
                      served_names: tuple[str, ...] = ("router",)) -> dict:
    big = 16 if tiny else 64
    # the make-test run skips torch.compile of the pipeline (it compiles a training step already; Inductor builds
    # the AOT packages too): about 1.5 minutes less on 2 cores
    inference = inference_rates(cfg, device, big, 3 if tiny else 20, work, with_compile=not tiny)
    print(f"\ninference: the whole pipeline ({inference['flops_per_image'] / 1e9:.2f} GFLOP/img), batch 1 p50 and "
          f"batch {big}", flush=True)
    print(f"{'mode':<16} {'p50 ms (b=1)':>12} {'img/s (b=' + str(big) + ')':>13} {'% peak':>7} {'max |d|':>9} "
          f"{'build s':>8}")
    for mode, r in inference.items():
        if mode in ("flops_per_image", "served"):
            continue
        print(f"{mode:<16} {r['p50_ms_batch1']:>12.2f} {r['images_per_s']:>13.1f} "
              f"{100 * of_peak(inference['flops_per_image'], r['images_per_s']):>6.2f}% "
              f"{r['max_abs_diff']:>9.2e} {r['build_s']:>8.1f}")
    # the make-test run compiles one served network (about 30 s on 2 cores); --served chooses on a GPU
    names = ("router",) if tiny else served_names
    served = served_rates(cfg, device, names, big, 3 if tiny else 20, work)
    inference["served"] = served
    print(f"\nserved networks (serve build --onnx-runtime aoti: export_program -> compile_program -> the runner's "
          f"engine{', CUDA graph at batch 1' if device.type == 'cuda' else ''}), batch 1 p50 and batch {big}")
    print(f"{'network':<16} {'p50 ms (b=1)':>12} {'img/s (b=' + str(big) + ')':>13} {'max |d|':>9} {'build s':>8}")
    for name, r in served.items():
        print(f"{name:<16} {r['p50_ms_batch1']:>12.2f} {r['images_per_s']:>13.1f} "
              f"{r.get('max_abs_diff', float('nan')):>9.2e} {r.get('build_s', float('nan')):>8.1f}", flush=True)
    return inference


# -------------------------------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cuda", "cpu"))
    ap.add_argument("--tiny", action="store_true", help="the tiny profile's networks, small images and batches "
                                                         "(the make-test run)")
    ap.add_argument("--members", nargs="+", default=list(MEMBERS), choices=MEMBERS)
    ap.add_argument("--steps", type=int, default=None, help="timed training steps per member (default 20; tiny 3)")
    ap.add_argument("--out", type=Path, default=Path("gpu_check_out"))
    ap.add_argument("--served", nargs="+", default=["router", "trunk", "pcam"], choices=SERVED,
                    help="served networks compiled through serve build's AOTInductor path (each compile takes "
                         "about a minute; default: the router and the PCAM path; --tiny: the router)")
    ap.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS,
                    help="what to measure (default: all; the peak is always measured)")
    args = ap.parse_args()
    device, tiny = torch.device(args.device), args.tiny
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here (use --device cpu --tiny)")
    args.out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(ROOT / "configs" / ("tiny.yaml" if tiny else "paper.yaml"))
    paper = load_config(ROOT / "configs" / "paper.yaml")
    steps = args.steps or (3 if tiny else 20)
    batch = 8 if tiny else int(cfg["train"]["batch_size"])
    started = time.perf_counter()
    report: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                    "cpu_cores": os.cpu_count(), "torch": torch.__version__, "profile": cfg["profile"],
                    "batch": batch, "synthetic": True}
    print(f"device {report['device']}, {report['cpu_cores']} CPU cores, torch {torch.__version__}, profile "
          f"{cfg['profile']}, synthetic inputs", flush=True)

    peak = matmul_peak(device, tiny)
    report["peak"] = peak
    print(f"\npeak: {peak['dtype']} matmul {peak['n']}^2: {peak['tflops']:.2f} TFLOP/s", flush=True)

    def of_peak(flops_per_image: float, images_per_s: float) -> float:
        return flops_per_image * images_per_s / 1e12 / peak["tflops"]

    print(f"\ntrain (batch {batch}, {steps} timed steps; fast = the paper profile's step keys"
          f"{', bf16 off on CPU' if device.type == 'cpu' else ''})", flush=True)
    print(f"{'member':<8} {'GFLOP/img':>9} {'eager fp32 img/s':>17} {'fast img/s':>11} {'fast/eager':>10} "
          f"{'fast % peak':>11} {'compile s':>9}")
    report["train"] = {}
    for i, kind in enumerate(args.members if "train" in args.sections else ()):
        fast = StepOptions.from_settings(train_settings(paper, kind if kind == "router" else f"frontal/{kind}"),
                                         device)
        if tiny and i > 0:  # one member compiles in the make-test run; the code path is the same for all
            fast = StepOptions(device, fast.amp, fast.channels_last, "none", fast.fused_optimizer, fast.log_every)
        eager = train_rate(kind, cfg, StepOptions(device), batch, steps)
        quick = train_rate(kind, cfg, fast, batch, steps)
        report["train"][kind] = {"eager": eager, "fast": quick, "fast_keys": {
            "amp": fast.amp, "channels_last": fast.channels_last, "compile": fast.compile,
            "fused_optimizer": fast.fused_optimizer}}
        print(f"{kind:<8} {eager['flops_per_image'] / 1e9:>9.2f} {eager['images_per_s']:>17.1f} "
              f"{quick['images_per_s']:>11.1f} {quick['images_per_s'] / eager['images_per_s']:>10.2f} "
              f"{100 * of_peak(quick['flops_per_image'], quick['images_per_s']):>10.2f}% "
              f"{quick['warmup_s']:>9.1f}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "loader" in args.sections:
            report["loader"] = loader_section(cfg, work, tiny, report["train"], device)
        if "inference" in args.sections:
            report["inference"] = inference_section(cfg, device, work, tiny, of_peak, tuple(args.served))
    report["seconds"] = time.perf_counter() - started
    (args.out / "check.json").write_text(json.dumps(report, indent=2))
    print(f"\n{report['seconds']:.0f} s; {args.out / 'check.json'}")


if __name__ == "__main__":
    main()
