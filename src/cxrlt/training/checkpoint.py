"""Checkpoints every training loop shares: atomic saves, resume from ``last.pt``, and the kill-for-test hook."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

#: fault injection for the resume tests: the main process SIGKILLs itself after this epoch
KILL_AFTER_EPOCH_ENV = "CXRLT_KILL_AFTER_EPOCH"


def atomic_save(obj, path: Path) -> None:
    """``torch.save`` to a temporary name, then rename: a crash never leaves a half-written checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def restore_checkpoint(path: Path, **stateful) -> tuple[int, float, int, list]:
    """Load ``last.pt`` into each stateful object (model, ema, optimizer, scheduler, sampler ...).

    Returns (next epoch, best score, best epoch, history); a fresh start when there is no checkpoint. The file sits on
    a volume other steps can write, so it is read with ``weights_only=True``: tensors, numbers, strings and containers
    only, never code.
    """
    if not path.exists():
        return 0, -1.0, -1, []
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key, obj in stateful.items():
        obj.load_state_dict(state[key])
    log.info("resumed from %s (epoch %d done)", path, state["epoch"] + 1)
    return state["epoch"] + 1, state["best"], state["best_epoch"], state["history"]
