"""The CPUs a process may use, read the way a container sees them, and what is sized from them.

A Kubernetes pod with ``limits.cpu: 4`` on a 96-core node sees every core in its affinity mask but is throttled to
4; sizing thread pools or loader workers from the mask oversubscribes it. Serving sizes its instances from
:func:`usable_cpus`; training sizes its loader workers with :func:`loader_workers`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> int | None:
    """The CPUs this container may use by its CPU limit (cgroup v2 ``cpu.max``, or v1 ``cpu.cfs_quota_us`` over
    ``cpu.cfs_period_us``), rounded up; None when it has no limit. A Kubernetes pod's ``limits.cpu: 4`` reads 4 here,
    while the node's affinity mask shows every core of a 96-core machine."""
    v2 = root / "cpu.max"
    if v2.exists():
        quota, _, period = v2.read_text().strip().partition(" ")
        return None if quota == "max" else max(1, math.ceil(int(quota) / int(period or 100000)))
    quota_file, period_file = root / "cpu" / "cpu.cfs_quota_us", root / "cpu" / "cpu.cfs_period_us"
    if quota_file.exists() and period_file.exists():
        quota = int(quota_file.read_text())
        return None if quota <= 0 else max(1, math.ceil(quota / int(period_file.read_text())))
    return None


def usable_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    """CPUs available to this process: its affinity mask, capped by its container's CPU limit."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit(cgroup_root)
    return min(cores, limit) if limit else cores


def local_processes() -> int:
    """Training processes sharing this machine (or pod): torchrun's ``LOCAL_WORLD_SIZE``, 1 for a plain process."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def loader_workers(setting: int | str, cpus: int | None = None, processes: int | None = None) -> int:
    """DataLoader workers for one training process. An integer is taken as it is; ``auto`` gives each of the
    machine's training processes an equal share of its usable CPUs, less one for the process itself (which runs
    the step and the host-to-device copies), and 0 (load in the main process) when no CPU is left over."""
    if setting != "auto":
        return int(setting)
    cpus = usable_cpus() if cpus is None else cpus
    processes = local_processes() if processes is None else processes
    return max(0, cpus // processes - 1)
