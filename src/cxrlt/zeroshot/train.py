"""``cxrlt zeroshot train``: fine-tune the dual-branch CLIP on label-synthesised reports.

Plain process or ``torchrun``; AdamW, cosine schedule (T_max = ``cosine_t_max`` epochs, default the run's epochs),
EMA; checkpoint every epoch and ``--resume``;
MLflow logging when ``MLFLOW_TRACKING_URI`` is set. ``held_out`` classes (proxy validation) are removed from the
text, the ASL targets and the training images, and a :class:`LeakGuard` checks every batch.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from timm.scheduler import CosineLRScheduler
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from cxrlt.config import config_hash, load_config, zeroshot_settings
from cxrlt.data.images import PreprocessConfig
from cxrlt.data.split import training_frames
from cxrlt.data.tables import IMAGES_DIR
from cxrlt.dataplane import sha256_file
from cxrlt.errors import InvalidInputError
from cxrlt.labels import KNOWN_CLASSES
from cxrlt.machine import loader_workers
from cxrlt.metrics import macro_ap
from cxrlt.training import distributed as D
from cxrlt.training.augment import AugmentConfig
from cxrlt.training.checkpoint import atomic_save
from cxrlt.training.data import ImageStore, ManifestDataset
from cxrlt.training.loop import fit, make_ema, per_rank_batch
from cxrlt.training.sampler import EpochShardedSampler, sample_rng
from cxrlt.training.step import StepOptions
from cxrlt.zeroshot.bank import load_bank, prompts_for
from cxrlt.zeroshot.loss import DualBranchLoss
from cxrlt.zeroshot.model import DualBranchCLIP, build_clip, tokenize
from cxrlt.zeroshot.text import LeakGuard, synth_report

log = logging.getLogger(__name__)

@dataclass
class ZeroShotRequest:
    config: dict | str | Path
    data_dir: Path
    out_dir: Path
    held_out: list[str] = field(default_factory=list)
    resume: bool = False
    cache_dir: Path | None = None
    epochs: int | None = None
    alpha: float | None = None
    progress: bool = True
    splits: Path | None = None  # manifests from `cxrlt data split` (removal list, both label sources); else split here


def _groups(labels: np.ndarray) -> torch.Tensor:
    """An integer id per distinct label set (identical sets are contrastive matches): the set's bits, so the id of a
    set is the same on every rank when the loss gathers the global batch."""
    bits = labels.astype(bool)
    if bits.shape[1] > 62:
        raise InvalidInputError(f"{bits.shape[1]} classes do not fit a 63-bit label-set id")
    return torch.from_numpy((bits.astype(np.int64) << np.arange(bits.shape[1], dtype=np.int64)).sum(axis=1))


def class_text_embeddings(model: DualBranchCLIP, bank, classes, mode: str, context_length: int,
                          device: torch.device) -> torch.Tensor:
    """Prompt-ensembled class embeddings: mean of L2-normalised prompt embeddings, renormalised. (K, D)."""
    out = []
    for c in classes:
        emb = model.encode_text(tokenize(prompts_for(bank[c], mode), context_length).to(device))
        out.append(torch.nn.functional.normalize(emb.mean(0), dim=-1))
    return torch.stack(out)


def train_zeroshot(req: ZeroShotRequest) -> dict:
    cfg = load_config(req.config)
    zs = zeroshot_settings(cfg)
    if req.alpha is not None:
        zs["alpha"] = req.alpha
    epochs = req.epochs or int(zs["epochs"])
    seed, out = int(zs["seed"]), Path(req.out_dir)
    info, device = D.start_run(out, seed)

    bank = load_bank(zs["bank"])
    held_out = list(req.held_out)
    guard = LeakGuard(held_out, bank)
    train_classes = [c for c in KNOWN_CLASSES if c not in held_out]
    guard.check_classes(train_classes)
    train_df, val_df = training_frames(req.data_dir, req.splits, cfg["data"]["val_fraction"], cfg["data"]["split_seed"],
                                       zs["label_source"])
    if held_out:  # the paper also drops images positive for a held-out class
        train_df = train_df[train_df[held_out].sum(axis=1) == 0].reset_index(drop=True)
    y_train = train_df[train_classes].to_numpy(np.float32)
    guard.check_labels([[c for c, v in zip(train_classes, row, strict=True) if v] for row in y_train])
    y_val = val_df[train_classes].to_numpy(np.float32)

    store = ImageStore(Path(req.data_dir) / IMAGES_DIR, PreprocessConfig.from_dict(zs["preprocess"]), req.cache_dir)
    if cfg["data"].get("preload", True):
        # training-free (HPH): only the validation images are read
        ids = [train_df["ImageID"], val_df["ImageID"]] if zs["train"] else [val_df["ImageID"]]
        store.preload(pd.concat(ids), progress=req.progress and info.is_main)
    train_ds = ManifestDataset(train_df, store, y_train, AugmentConfig.from_dict(zs["augment"]), seed)
    val_ds = ManifestDataset(val_df, store, y_val)
    sampler = EpochShardedSampler(len(train_ds), None, seed, info.rank, info.world_size)
    batch = int(zs["batch_size"])
    loader = DataLoader(train_ds, batch_size=per_rank_batch(batch, info), sampler=sampler, drop_last=True,
                        num_workers=loader_workers(zs["num_workers"]))
    val_loader = DataLoader(val_ds, batch_size=batch, num_workers=loader_workers(zs["num_workers"]))
    if len(loader) == 0:
        raise InvalidInputError(f"{len(train_ds)} training images is less than one batch of {batch}")

    ctx = int(zs["context_length"])
    clip, weights = build_clip(zs, weights=True, mirror=cfg.get("weights_mirror"))
    step = StepOptions(device, channels_last=bool(zs["channels_last"]))
    model = step.place(DualBranchCLIP(clip, ctx, float(zs["asl_scale_init"]), float(zs["asl_bias_init"])))
    if not zs["train"]:  # HPH: training-free, the pretrained CLIP scores the prompts as it is
        score = known_class_map(model, val_loader, bank, train_classes, zs, device)
        card = _card(cfg, zs, weights, held_out, train_classes, -1, score, [], info) | {"training_free": True}
        if info.is_main:
            atomic_save({"model": model.state_dict(), "epoch": -1, "score": score}, out / "best.pt")
            (out / "zeroshot.json").write_text(json.dumps(card, indent=2, default=str))
            log.info("zeroshot: training-free model from %s, known-class validation mAP %.4f",
                     weights.source if weights else "random weights", score)
        D.teardown(info)
        return card
    net = DistributedDataParallel(model) if info.enabled else model
    ema = make_ema(model, zs)
    criterion = DualBranchLoss(float(zs["alpha"]), **zs["asl"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(zs["lr"]), weight_decay=float(zs["weight_decay"]))
    steps = len(loader)
    t_max = int(zs["cosine_t_max"] or epochs)  # seed 000: T_max = 7 epochs
    scheduler = CosineLRScheduler(optimizer, t_initial=t_max * steps, lr_min=float(zs["lr"]) * zs["min_lr_ratio"],
                                  warmup_t=int(zs["warmup_epochs"] * steps),
                                  warmup_lr_init=float(zs["lr"]) * zs["warmup_lr_ratio"],
                                  warmup_prefix=True, t_in_epochs=False)
    task = ZeroShotTask(model, criterion, guard, bank, train_classes, zs, seed, step, info, val_loader)
    run = _mlflow_start(zs, cfg, held_out, info)
    state = fit(task, name="zeroshot", model=model, net=net, loader=loader, epochs=epochs, steps_per_epoch=steps,
                optimizer=optimizer, scheduler=scheduler, ema=ema, out_dir=out, seed=seed, info=info,
                epoch_hooks=(sampler, train_ds), grad_clip=float(zs["grad_clip"]), resume=req.resume,
                progress=req.progress, on_epoch=lambda record: _mlflow_log_epoch(run, record))
    best, best_epoch, history = state.best, state.best_epoch, state.history

    card = _card(cfg, zs, weights, held_out, train_classes, best_epoch, best, history, info)
    if (out / "best.pt").exists():
        card["checkpoint_sha256"] = sha256_file(out / "best.pt")
    if info.is_main:
        (out / "zeroshot.json").write_text(json.dumps(card, indent=2, default=str))
        if run is not None:
            import mlflow

            mlflow.log_metric("best_val_known_mAP", best)
            mlflow.log_artifact(str(out / "zeroshot.json"))
            mlflow.end_run()
    D.teardown(info)
    return card


def result_line(card: dict, out_dir: str | Path) -> str:
    """The line ``cxrlt zeroshot train`` prints for a trained CLIP (a pipeline step that trains it in its own process
    logs the same)."""
    return (f"best known-class validation mAP {card['best_val_known_mAP']:.4f} at epoch {card['best_epoch'] + 1}; "
            f"model {out_dir}")


class ZeroShotTask:
    """The dual-branch CLIP in :func:`cxrlt.training.loop.fit`: a synthesised report per image and one prompt per
    training class (both leak-guarded) -> contrastive + alpha x ASL; selection on the known classes' zero-shot mAP."""

    metric = "val_known_mAP"
    label = "val known-class mAP"

    def __init__(self, model: DualBranchCLIP, criterion: DualBranchLoss, guard: LeakGuard, bank, classes: list[str],
                 zs: dict, seed: int, step: StepOptions, info: D.DistInfo, val_loader: DataLoader):
        self.model, self.criterion, self.guard, self.bank, self.classes = model, criterion, guard, bank, classes
        self.zs, self.seed, self.step, self.info, self.val_loader = zs, seed, step, info, val_loader
        self.device = step.device
        self.ctx = int(zs["context_length"])

    def loss(self, net: nn.Module, batch, epoch: int, step: int) -> tuple[torch.Tensor, int, dict]:
        x, y, idx = batch
        texts = [synth_report([c for c, v in zip(self.classes, row, strict=True) if v], self.bank,
                              sample_rng(self.seed + 1, epoch, int(i))) for row, i in zip(y.numpy(), idx, strict=True)]
        prompt_rng = sample_rng(self.seed + 2, epoch, step)
        class_prompts = [(p := prompts_for(self.bank[c], self.zs["prompts"]))[int(prompt_rng.integers(len(p)))]
                         for c in self.classes]
        self.guard.check_texts(texts + class_prompts)
        x, y = self.step.inputs(x), y.to(self.device)
        img, txt, cls = net(x, tokenize(texts, self.ctx).to(self.device),
                            tokenize(class_prompts, self.ctx).to(self.device))
        m = self.model
        if self.zs["contrastive_targets"] == "soft":
            groups = _groups(y.cpu().numpy())
        else:  # one-hot: every image its own group, unique across ranks
            groups = torch.arange(len(y)) + self.info.rank * len(y)
        loss, parts = self.criterion(img, txt, cls, m.clip.logit_scale, m.asl_scale, m.asl_bias, y,
                                     groups.to(self.device), self.info.rank, self.info.world_size)
        return loss, len(y), parts

    def validate(self, model: nn.Module, epoch: int) -> float:
        return known_class_map(model, self.val_loader, self.bank, self.classes, self.zs, self.device)


def _mlflow_log_epoch(run, record: dict) -> None:
    if run is not None:
        import mlflow

        mlflow.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=record["epoch"])


def _card(cfg, zs, weights, held_out, train_classes, best_epoch, best, history, info) -> dict:
    return {"kind": "zeroshot", "settings": zs, "pretrained": weights.card() if weights else None,
            "held_out": held_out, "train_classes": train_classes,
            "data_split": {"val_fraction": cfg["data"]["val_fraction"], "split_seed": cfg["data"]["split_seed"]},
            "best_epoch": best_epoch, "best_val_known_mAP": best, "history": history, "config_hash": config_hash(cfg),
            "profile": cfg.get("profile"), "world_size": info.world_size}


@torch.no_grad()
def known_class_map(model: DualBranchCLIP, loader: DataLoader, bank, classes, zs: dict, device) -> float:
    """Leak-free model selection: zero-shot mAP of the *training* classes on validation images."""
    model.eval()
    emb = class_text_embeddings(model, bank, classes, zs["prompts"], int(zs["context_length"]), device)
    scores, labels = [], []
    for x, y, _ in loader:
        scores.append((model.encode_image(x.to(device)) @ emb.T).cpu().numpy())
        labels.append(y.numpy())
    scale = float(zs["sigmoid_scale"])
    return macro_ap(np.concatenate(labels), 1 / (1 + np.exp(-scale * np.concatenate(scores))))


def _mlflow_start(zs: dict, cfg: dict, held_out: list[str], info: D.DistInfo):
    if not info.is_main or not os.environ.get("MLFLOW_TRACKING_URI"):
        return None
    import mlflow

    from cxrlt.tracking import experiment_id

    experiment = experiment_id(os.environ.get("CXRLT_MLFLOW_EXPERIMENT", "cxrlt-train"))
    run = mlflow.start_run(experiment_id=experiment,
                           run_name="zeroshot" + (f"-holdout-{len(held_out)}" if held_out else ""))
    mlflow.log_params({f"zeroshot.{k}": v for k, v in zs.items() if not isinstance(v, dict)}
                      | {"config_hash": config_hash(cfg), "held_out": ",".join(held_out) or "none"})
    return run
