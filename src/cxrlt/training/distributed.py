"""torch.distributed plumbing: works under ``torchrun`` (gloo on CPU, nccl on GPU) and as a plain process."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: torch.device | None = None) -> tuple[DistInfo, torch.device]:
    """Initialise the process group when launched by torchrun; pick the device for this rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world, local), device


def start_run(out_dir, seed: int) -> tuple[DistInfo, torch.device]:
    """Process group (if any), the global seed, and the run directory made by rank 0 before anyone uses it."""
    from pathlib import Path

    info, device = setup()
    torch.manual_seed(seed)
    if info.is_main:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    barrier(info)
    return info, device


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def gather_objects(obj, info: DistInfo) -> list:
    """All ranks' objects (every rank receives the list); a 1-element list without DDP."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def teardown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
