"""``cxrlt train``: train the router or one ensemble member, as a plain process or under ``torchrun``.

AdamW + per-step cosine schedule with warm-up, gradient clipping, EMA; on GPU the profile's fast step (bf16,
channels_last, torch.compile, fused AdamW: :mod:`cxrlt.training.step`); deterministic on CPU. Every epoch
writes a full checkpoint (model, EMA, optimiser, scheduler, sampler, epoch, best score) atomically, so ``--resume``
continues a killed run to the same result as an uninterrupted one. The best EMA weights by validation mAP (router:
accuracy) are kept in ``best.pt``; validation logits with TTA go to ``val_logits.csv`` for ensemble fitting.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from timm.scheduler import CosineLRScheduler
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from cxrlt.config import config_hash, load_config, task1_preprocess, train_settings
from cxrlt.contract import MemberCard
from cxrlt.data.split import training_frames
from cxrlt.data.tables import IMAGES_DIR, PADCHEST_METADATA_CSV, TRAINING_CSV, VIEWS
from cxrlt.dataplane import sha256_file
from cxrlt.errors import InvalidInputError
from cxrlt.kinds import member_kind, member_kinds
from cxrlt.labels import KNOWN_CLASSES
from cxrlt.losses import build_loss
from cxrlt.machine import loader_workers
from cxrlt.metrics import evaluate, selection_score
from cxrlt.models.factory import ROUTER_CLASSES, build_member, build_router
from cxrlt.training import distributed as D
from cxrlt.training.augment import AugmentConfig, DeviceAugment
from cxrlt.training.data import ImageStore, ManifestDataset
from cxrlt.training.loop import fit, make_ema, per_rank_batch
from cxrlt.training.sampler import EpochShardedSampler, repeat_factors
from cxrlt.training.step import StepOptions
from cxrlt.tta import TTAModel

log = logging.getLogger(__name__)

MEMBER_VIEWS = (*VIEWS, "mixed")


def parse_member(member: str) -> tuple[str | None, str]:
    """``router`` -> (None, "router"); ``frontal/pcam`` -> ("frontal", "pcam")."""
    if member == "router":
        return None, "router"
    view, _, kind = member.partition("/")
    if view not in MEMBER_VIEWS or kind not in member_kinds():
        raise InvalidInputError(f"member must be 'router' or '<view>/<kind>' with view in {MEMBER_VIEWS} and kind in "
                                f"{member_kinds()}; got {member!r}")
    return view, kind


@dataclass
class TrainRequest:
    member: str
    config: dict | str | Path
    data_dir: Path
    out_dir: Path
    resume: bool = False
    pcam_checkpoint: Path | None = None
    cache_dir: Path | None = None
    epochs: int | None = None
    progress: bool = True
    splits: Path | None = None  # manifests from `cxrlt data split` (removal list, both label sources); else split here


def _frames(data_dir: Path, cfg: dict, view: str | None, splits: Path | None = None):
    train, val = training_frames(data_dir, splits, cfg["data"]["val_fraction"], cfg["data"]["split_seed"],
                                 cfg["train"]["label_source"])
    if view in VIEWS:
        if (train["view"] == "").all():
            raise InvalidInputError(f"{data_dir}: no projection metadata ({PADCHEST_METADATA_CSV}); "
                                    "train 'mixed' members")
        train, val = train[train["view"] == view], val[val["view"] == view]
    if view is None and (train["view"] == "").all():
        raise InvalidInputError(f"{data_dir}: the router needs projection labels ({PADCHEST_METADATA_CSV})")
    if len(train) == 0 or len(val) == 0:
        raise InvalidInputError(f"no {view or 'router'} images to train or validate on")
    return train.reset_index(drop=True), val.reset_index(drop=True)


def _targets(df: pd.DataFrame, router: bool) -> np.ndarray:
    if router:
        return np.stack([(df["view"] == v).to_numpy() for v in ROUTER_CLASSES], axis=1).astype(np.float32)
    return df[list(KNOWN_CLASSES)].to_numpy(np.float32)


def _score(router: bool, y: np.ndarray, logits: np.ndarray, rule: str = "mAP") -> float:
    if router:
        return float((logits.argmax(1) == y.argmax(1)).mean())
    return selection_score(y, logits, rule)


@torch.no_grad()
def predict_logits(model: nn.Module, loader: DataLoader, device: torch.device, info: D.DistInfo,
                   n: int, tta: str = "none", merge: str = "logit") -> np.ndarray:
    """Logits for every row of the loader's dataset, gathered across ranks (duplicates from padding dropped)."""
    net = TTAModel(model, tta, merge) if tta != "none" else model
    net.eval()
    idx, out = [], []
    for x, _, i in loader:
        out.append(net(x.to(device)).float().cpu().numpy())
        idx.append(i.numpy())
    parts = D.gather_objects((np.concatenate(idx), np.concatenate(out)), info)
    logits = np.zeros((n, parts[0][1].shape[1]), np.float32)
    for i, o in parts:
        logits[i] = o
    return logits


def train_member(req: TrainRequest) -> dict:
    """Train one member (see the module docstring); returns the summary also written to ``member.json``."""
    cfg = load_config(req.config)
    view, kind = parse_member(req.member)
    router = kind == "router"
    ts = train_settings(cfg, req.member)
    epochs = req.epochs or ts["epochs"]
    seed, out = int(ts["seed"]), Path(req.out_dir)
    info, device = D.start_run(out, seed)

    if cfg["models"] is None or cfg["models"].get(kind) is None:
        raise InvalidInputError(f"the profile defines no models.{kind} network to train")
    contract = task1_preprocess(cfg)
    size, in_chans, mirror = contract.size, contract.channels, cfg.get("weights_mirror")
    train_df, val_df = _frames(Path(req.data_dir), cfg, view, req.splits)
    y_train, y_val = _targets(train_df, router), _targets(val_df, router)
    store = ImageStore(Path(req.data_dir) / IMAGES_DIR, contract, req.cache_dir, cfg["data"]["cache_size"])
    if cfg["data"].get("preload", True):
        store.preload(pd.concat([train_df["ImageID"], val_df["ImageID"]]), progress=req.progress and info.is_main)
    aug = AugmentConfig.from_dict(ts.get("augment"))
    on_device = ts["augment_on"] == "device"
    device_augment = DeviceAugment(aug, contract.channels, contract.mean, contract.std, seed,
                                   allow_flip=not router) if on_device else None
    train_ds = ManifestDataset(train_df, store, y_train, None if on_device else aug, seed, allow_flip=not router,
                               normalize=not on_device)
    val_ds = ManifestDataset(val_df, store, y_val)
    rule = "mAP" if router else ts["select_on"]
    # seed 000 selects on the *augmented* validation set (fixed augmentations per image, the same every epoch);
    # the clean validation set still gives the logits the ensemble weights are fitted on
    select_ds = ManifestDataset(val_df, store, y_val, aug, seed + 1) if rule == "mAP+mAUC-BCE" else val_ds
    factors = repeat_factors(y_train, ts["sampler_threshold"], ts["sampler_cap"]) \
        if (ts["sampler"] == "repeat_factor" and not router) else None
    sampler = EpochShardedSampler(len(train_ds), factors, seed, info.rank, info.world_size)
    batch = int(ts["batch_size"])
    # pinned host memory lets the step's copy to the GPU overlap compute; workers are not persistent because each
    # epoch's augmentation seeds reach them through the dataset's set_epoch
    workers = loader_workers(ts["num_workers"])
    loader = DataLoader(train_ds, batch_size=per_rank_batch(batch, info), sampler=sampler, drop_last=True,
                        num_workers=workers, pin_memory=device.type == "cuda")
    val_loader, select_loader = (
        DataLoader(ds, batch_size=max(1, batch // info.world_size), num_workers=workers,
                   sampler=EpochShardedSampler(len(ds), None, seed, info.rank, info.world_size, False))
        for ds in (val_ds, select_ds))
    if len(loader) == 0:
        raise InvalidInputError(f"{len(train_ds)} training images is less than one batch of {batch}")

    if router:
        model = build_router(cfg["models"]["router"], in_chans, weights=True, mirror=mirror)
        criterion: nn.Module = nn.CrossEntropyLoss()
    else:
        model = build_member(kind, cfg["models"], len(KNOWN_CLASSES), size, in_chans,
                             pcam_checkpoint=req.pcam_checkpoint, weights=True, mirror=mirror)
        counts = y_train.sum(0).astype(int).tolist()
        criterion = build_loss(ts["loss"], counts, **ts.get("loss_kwargs", {}))
    weights = model.weights  # where the pretrained weights came from (None: random init), for the member card
    step = StepOptions.from_settings(ts, device)
    step.place(model)
    ema = make_ema(model, ts)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = step.adamw(params, lr=float(ts["lr"]), weight_decay=float(ts["weight_decay"]))
    steps = len(loader)
    scheduler = CosineLRScheduler(optimizer, t_initial=epochs * steps, lr_min=float(ts["lr"]) * ts["min_lr_ratio"],
                                  warmup_t=int(ts["warmup_epochs"] * steps),
                                  warmup_lr_init=float(ts["lr"]) * ts["warmup_lr_ratio"],
                                  warmup_prefix=True, t_in_epochs=False)
    net = step.compiled(DistributedDataParallel(model) if info.enabled else model)
    task = MemberTask(criterion, step, router, rule, y_val, select_loader, info, len(val_ds), device_augment)
    mlflow_run = _mlflow_start(req, cfg, info)
    state = fit(task, name=req.member, model=model, net=net, loader=loader, epochs=epochs, steps_per_epoch=steps,
                optimizer=optimizer, scheduler=scheduler, ema=ema, out_dir=out, seed=seed, info=info,
                epoch_hooks=(sampler, train_ds), grad_clip=float(ts["grad_clip"] or 0), resume=req.resume,
                progress=req.progress, log_every=step.log_every,
                on_epoch=lambda record: _mlflow_log_epoch(mlflow_run, record, task.label))
    best, best_epoch, history = state.best, state.best_epoch, state.history

    summary = _finish(req, cfg, info, device, model, val_loader, val_df, y_val, router, view, kind, best, best_epoch,
                      history, contract, weights)
    _mlflow_end(mlflow_run, out, summary)
    D.teardown(info)
    return summary


def result_line(summary: dict, out_dir: str | Path) -> str:
    """The line ``cxrlt train`` prints for a trained network (a pipeline step that trains in its own process logs
    the same)."""
    return (f"{summary['member']}: best {summary['val_metric']} {summary['best_val_score']:.4f} at epoch "
            f"{summary['best_epoch'] + 1}; TTA validation {summary['val_tta']}; run dir {out_dir}")


class MemberTask:
    """A member or the router in :func:`cxrlt.training.loop.fit`: logits -> the profile's loss; selection on the
    (augmented, for seed 000's rule) validation set."""

    metric = "val_score"

    def __init__(self, criterion: nn.Module, step: StepOptions, router: bool, rule: str,
                 y_val: np.ndarray, select_loader: DataLoader, info: D.DistInfo, n_val: int,
                 device_augment: DeviceAugment | None = None):
        self.criterion, self.step, self.device, self.router, self.rule = criterion, step, step.device, router, rule
        self.y_val, self.select_loader, self.info, self.n_val = y_val, select_loader, info, n_val
        self.device_augment = device_augment  # augment_on: device; the loader then hands over [0, 1] images
        self.label = "val_accuracy" if router else ("val_mAP" if rule == "mAP" else "val_mAP+mAUC-BCE")

    def loss(self, net: nn.Module, batch, epoch: int, step: int) -> tuple[torch.Tensor, int, dict]:
        x, y, _ = batch
        if self.device_augment is not None:
            x = self.device_augment(x.to(self.device, non_blocking=True), epoch, step, self.info.rank)
        x, y = self.step.inputs(x), y.to(self.device, non_blocking=True)
        with self.step.autocast():
            logits = net(x)
        loss = self.criterion(logits.float(), y)
        if getattr(self.criterion, "reduction", "mean") == "sum":
            loss = loss / len(y)  # per-sample sum over classes, mean over the batch: DDP-invariant
        return loss, len(y), {}

    def validate(self, model: nn.Module, epoch: int) -> float:
        logits = predict_logits(model, self.select_loader, self.device, self.info, self.n_val)
        return _score(self.router, self.y_val, logits, self.rule)


def _finish(req, cfg, info, device, model, val_loader, val_df, y_val, router, view, kind, best, best_epoch, history,
            contract, weights):
    """Reload the best EMA weights, write TTA validation logits and the member card."""
    out = Path(req.out_dir)
    state = torch.load(out / "best.pt", map_location="cpu", weights_only=True) if (out / "best.pt").exists() else None
    D.barrier(info)
    if state is not None:
        model.load_state_dict(state["model"])
    tta = "none" if router else cfg["inference"]["tta"]
    merge = cfg["inference"]["tta_merge"]
    logits = predict_logits(model, val_loader, device, info, len(val_df), tta, merge)
    classes = list(ROUTER_CLASSES) if router else list(KNOWN_CLASSES)
    trunk_of = None if router else member_kind(kind).reads_trunk_of  # its trunk's settings travel in the card
    summary = {
        "member": req.member, "kind": kind, "view": view, "classes": classes,
        "image_size": contract.size, "in_chans": contract.channels, "preprocess": contract.to_dict(), "tta": tta,
        "tta_merge": merge,
        "pretrained": weights.card() if weights is not None else None,
        "best_epoch": best_epoch, "best_val_score": best,
        "val_metric": "accuracy" if router else train_settings(cfg, req.member)["select_on"], "history": history,
        "config_hash": config_hash(cfg), "profile": cfg.get("profile"),
        "model_config": cfg["models"]["router" if router else kind],
        "pcam_model_config": cfg["models"].get(trunk_of) if trunk_of else None,
        "pcam_checkpoint": str(req.pcam_checkpoint) if req.pcam_checkpoint else None,
        "world_size": info.world_size, "data_dir": str(Path(req.data_dir).resolve()),
        # what a launching step verifies before it records the member (a TrainJob writes on a shared volume)
        "checkpoint_sha256": sha256_file(out / "best.pt") if (out / "best.pt").exists() else None,
    }
    if not router:
        res = evaluate(y_val.astype(int), 1 / (1 + np.exp(-logits)), classes)
        summary["val_tta"] = {k: v for k, v in res.summary().items() if k in ("mAP", "mAUROC", "mF1", "mECE")}
    else:
        summary["val_tta"] = {"accuracy": _score(True, y_val, logits)}
    if info.is_main:
        frame = pd.DataFrame(logits, columns=classes)
        frame.insert(0, "ImageID", val_df["ImageID"].to_numpy())
        frame.to_csv(out / "val_logits.csv", index=False)
        MemberCard.model_validate(summary).save(out)
    return summary


def _mlflow_start(req: TrainRequest, cfg: dict, info: D.DistInfo):
    if not info.is_main or not os.environ.get("MLFLOW_TRACKING_URI"):
        return None
    import mlflow

    from cxrlt.tracking import experiment_id

    experiment = experiment_id(os.environ.get("CXRLT_MLFLOW_EXPERIMENT", "cxrlt-train"))
    run = mlflow.start_run(experiment_id=experiment, run_name=req.member.replace("/", "-"))
    flat = {f"train.{k}": v for k, v in train_settings(cfg, req.member).items()
            if not isinstance(v, dict)}
    mlflow.log_params({"member": req.member, "profile": cfg.get("profile"), "config_hash": config_hash(cfg),
                       "world_size": info.world_size, **flat})
    return run


def _mlflow_log_epoch(run, record: dict, metric: str) -> None:
    if run is None:
        return
    import mlflow

    mlflow.log_metrics({"train_loss": record["train_loss"], metric: record["val_score"]}, step=record["epoch"])


def _mlflow_end(run, out: Path, summary: dict) -> None:
    if run is None:
        return
    import mlflow

    mlflow.log_metrics({f"best_{k}": v for k, v in summary["val_tta"].items() if v is not None})
    mlflow.log_artifact(str(out / "member.json"))
    if summary["kind"] != "router":  # per-class AP of the best EMA weights on validation, grouped by band
        from cxrlt.data.tables import bands_from_training
        from cxrlt.plots import per_class_ap_chart

        logits = pd.read_csv(out / "val_logits.csv", dtype={"ImageID": str}).set_index("ImageID")
        train = pd.read_csv(Path(summary["data_dir"]) / TRAINING_CSV, dtype={"ImageID": str}).set_index("ImageID")
        y = train.loc[logits.index, list(KNOWN_CLASSES)].to_numpy()
        res = evaluate(y, 1 / (1 + np.exp(-logits[list(KNOWN_CLASSES)].to_numpy())), list(KNOWN_CLASSES))
        chart = per_class_ap_chart({c: res.per_class[c].AP for c in KNOWN_CLASSES},
                                   bands_from_training(Path(summary["data_dir"]) / TRAINING_CSV),
                                   out / "val_per_class_ap.png", title=f"{summary['member']}: validation AP")
        mlflow.log_artifact(str(chart))
    mlflow.end_run()
