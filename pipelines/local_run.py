"""Run the training pipeline on this machine with kfp.local: the SubprocessRunner (use_venv=False: the project venv;
the default, fast) or the DockerRunner (every component in its image, through podman's Docker-compatible API where
no Docker daemon runs)."""

from __future__ import annotations

import shutil
from pathlib import Path


def latest_run(pipeline_root: str | Path) -> Path | None:
    """The newest ``cxrlt-training-*`` run directory under a local pipeline root (None when there is none)."""
    runs = sorted(Path(pipeline_root).glob("cxrlt-training-*"), key=lambda p: p.stat().st_mtime)
    return runs[-1] if runs else None


RUNNERS = ("subprocess", "docker")
#: pipeline parameters that name host paths (the DockerRunner mounts only the pipeline root into the containers)
PATH_PARAMS = ("data_dir", "config", "removal_csv")


def _inputs_under_root(root: Path, params: dict) -> dict:
    """Copy inputs that live outside the pipeline root into ``ROOT/inputs`` (once) and point the parameters there."""
    params = dict(params)
    for key in PATH_PARAMS:
        value = params.get(key)
        if not value or Path(value).resolve().is_relative_to(root):
            continue
        source = Path(value).resolve()
        target = root / "inputs" / key / source.name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(source, target) if source.is_dir() else shutil.copyfile(source, target)
        params[key] = str(target)
    return params


def run_training_local(pipeline_root: str | Path, runner: str = "subprocess", **params) -> dict:
    """Execute ``training_pipeline`` locally; returns the task outputs' root and the parameters used.

    ``runner="docker"`` runs each component in its image (``cxrlt.platform.IMAGES``; ``make images``) with the host
    network (the MLflow server on loopback): inputs outside the pipeline root are copied under it, and the root is
    handed to the images' non-root user."""
    from kfp import local

    from pipelines.training_pipeline import training_pipeline

    if runner not in RUNNERS:
        raise ValueError(f"runner must be one of {RUNNERS}, got {runner!r}")
    root = Path(pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    if runner == "subprocess":
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
        training_pipeline(**params)
    else:
        from cxrlt.containers import docker_api, give_to_container_user

        params = _inputs_under_root(root, params)
        give_to_container_user(root)
        with docker_api():
            local.init(runner=local.DockerRunner(network_mode="host"), pipeline_root=str(root), raise_on_error=True)
            training_pipeline(**params)
    run = latest_run(root)
    return {"pipeline_root": str(root), "run_dir": str(run) if run else None, "params": params}


def run_promotion_local(pipeline_root: str | Path, **params) -> None:
    from kfp import local

    from pipelines.promotion_pipeline import promotion_pipeline

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(Path(pipeline_root).resolve()),
               raise_on_error=True)
    promotion_pipeline(**params)
