"""The one training loop: every ensemble member, the router and the zero-shot CLIP train through :func:`fit`.

What differs between them is a :class:`Task` (how a batch becomes a loss, how validation scores the EMA weights);
everything else is here, once: resume from ``last.pt`` (model, EMA, optimizer, scheduler *and* sampler state),
the per-epoch seeding that makes a resumed run equal an uninterrupted one, the optimisation step (zero_grad, backward,
gradient clipping, optimizer, per-step scheduler, EMA), the training loss averaged over every rank, model selection
on the EMA weights with atomic ``best.pt``/``last.pt`` saves on rank 0, progress bars and one log line per epoch, and
the kill-for-test hook (:data:`~cxrlt.training.checkpoint.KILL_AFTER_EPOCH_ENV`).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import nn
from tqdm import tqdm

from cxrlt.errors import InvalidInputError
from cxrlt.training import distributed as D
from cxrlt.training.checkpoint import KILL_AFTER_EPOCH_ENV, atomic_save, restore_checkpoint

log = logging.getLogger(__name__)


class Task(Protocol):
    """What one kind of network contributes to the loop."""

    #: the history key of the selection score (higher is better), and its name in the log line
    metric: str
    label: str

    def loss(self, net: nn.Module, batch, epoch: int, step: int) -> tuple[torch.Tensor, int, dict[str, float]]:
        """Forward + loss for one batch: (loss to backpropagate, batch size, named loss parts for the log)."""

    def validate(self, model: nn.Module, epoch: int) -> float:
        """The selection score of ``model`` (the EMA weights); called on every rank (it may be collective)."""


@dataclass
class LoopState:
    """What the loop hands back: the best score, its epoch (-1: none), and one record per epoch."""

    best: float = -1.0
    best_epoch: int = -1
    history: list[dict] = field(default_factory=list)


def make_ema(model: nn.Module, settings: dict):
    """timm's EMA of ``model`` at the profile's ``ema_decay``. With ``ema_warmup`` the decay after t updates is
    min(ema_decay, 1 - (1 + t)^(-2/3)) (timm's warm-up: 0.954 after 100, 0.996 after 4,000); without it,
    ``ema_decay`` from the second update on (seed 000's Task 2: 0.999 throughout)."""
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=float(settings["ema_decay"]), use_warmup=bool(settings["ema_warmup"]))


def per_rank_batch(batch: int, info: D.DistInfo) -> int:
    """The per-process batch of a global ``batch`` (the global batch is the one the recipe specifies)."""
    if batch % info.world_size:
        raise InvalidInputError(f"global batch {batch} is not divisible by {info.world_size} processes")
    return batch // info.world_size


def optimisation_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, params: list[torch.Tensor],
                      grad_clip: float = 0.0) -> None:
    """Backward, gradient clipping (0: none) and the optimizer step; nothing here waits for the device."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(params, float(grad_clip))
    optimizer.step()


def fit(task: Task, *, name: str, model: nn.Module, net: nn.Module, loader: Iterable, epochs: int,
        steps_per_epoch: int, optimizer: torch.optim.Optimizer, scheduler, ema, out_dir: Path, seed: int,
        info: D.DistInfo, epoch_hooks: Iterable = (), grad_clip: float = 0.0, resume: bool = False,
        progress: bool = True, on_epoch: Callable[[dict], None] | None = None, log_every: int = 1) -> LoopState:
    """Train ``net`` (``model`` itself, or its DDP wrapper) for ``epochs`` with ``task``; see the module docstring.

    ``epoch_hooks`` are the objects whose ``set_epoch`` is called before each epoch (the sampler, the augmenting
    dataset); the first of them with a ``state_dict`` (the sampler) is saved and restored with the checkpoint.
    ``on_epoch`` receives each epoch's record on rank 0 (MLflow logging). The running loss stays on the device and
    is read (a host-device sync) every ``log_every`` steps for the progress bar, and once at the epoch's end."""
    out_dir = Path(out_dir)
    hooks = list(epoch_hooks)
    sampler = next((h for h in hooks if hasattr(h, "state_dict")), None)
    stateful = {"model": model, "ema": ema, "optimizer": optimizer, "scheduler": scheduler}
    if sampler is not None:
        stateful["sampler"] = sampler
    params = [p for p in model.parameters() if p.requires_grad]
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    state = LoopState()
    start = 0
    if resume:
        start, state.best, state.best_epoch, state.history = restore_checkpoint(last_path, **stateful)
    for epoch in range(start, epochs):
        t0 = time.time()
        for hook in hooks:
            hook.set_epoch(epoch)
        torch.manual_seed(seed * 1000 + epoch * 10 + info.rank)  # dropout/drop-path: a function of the epoch
        net.train()
        total, seen, parts = torch.zeros((), dtype=torch.float64), 0, {}
        bar = tqdm(loader, desc=f"{name} epoch {epoch + 1}/{epochs}", unit="batch", leave=False,
                   disable=not (progress and info.is_main))
        for step, batch in enumerate(bar):
            loss, n, named = task.loss(net, batch, epoch, step)
            optimisation_step(loss, optimizer, params, grad_clip)
            scheduler.step_update(epoch * steps_per_epoch + step + 1)
            ema.update(model, step=epoch * steps_per_epoch + step)
            if total.device != loss.device:
                total = total.to(loss.device)
            total += loss.detach().double() * n
            seen += n
            for key, value in named.items():
                parts[key] = parts.get(key, 0.0) + value * n
            if (step + 1) % log_every == 0:
                bar.set_postfix(loss=f"{total.item() / seen:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
        total = total.item()
        score = float(task.validate(ema.module, epoch))  # plain floats: checkpoints load with weights_only=True
        count = sum(D.gather_objects(seen, info))
        record = {"epoch": epoch, "train_loss": float(sum(D.gather_objects(total, info)) / count),
                  **{k: float(sum(D.gather_objects(v, info)) / count) for k, v in parts.items()},
                  task.metric: score, "seconds": time.time() - t0}
        state.history.append(record)
        improved = score > state.best
        if improved:
            state.best, state.best_epoch = score, epoch
        if info.is_main:
            detail = "".join(f", {k} {record[k]:.4f}" for k in parts)
            log.info("%s epoch %d/%d loss %.4f%s %s %.4f%s", name, epoch + 1, epochs, record["train_loss"], detail,
                     task.label, score, " (best)" if improved else "")
            if improved:
                atomic_save({"model": ema.module.state_dict(), "epoch": epoch, "score": score}, best_path)
            atomic_save({**{k: v.state_dict() for k, v in stateful.items()}, "epoch": epoch, "best": state.best,
                         "best_epoch": state.best_epoch, "history": state.history}, last_path)
            if on_epoch is not None:
                on_epoch(record)
        D.barrier(info)
        if os.environ.get(KILL_AFTER_EPOCH_ENV) == str(epoch) and info.is_main:
            os.kill(os.getpid(), signal.SIGKILL)
    return state
