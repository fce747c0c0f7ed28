"""Run the training pipeline on this machine with kfp.local: the SubprocessRunner (use_venv=False: the project venv;
the default, fast) or the DockerRunner (every component in its image, through podman's Docker-compatible API where
no Docker daemon runs)."""

from __future__ import annotations

import shutil
from pathlib import Path

from cxrlt.errors import InvalidInputError


def latest_run(pipeline_root: str | Path) -> Path | None:
    """The newest ``cxrlt-training-*`` run directory under a local pipeline root (None when there is none)."""
    runs = sorted(Path(pipeline_root).glob("cxrlt-training-*"), key=lambda p: p.stat().st_mtime)
    return runs[-1] if runs else None


RUNNERS = ("subprocess", "docker")
#: pipeline parameters that name host paths (the DockerRunner mounts only the pipeline root into the containers)
PATH_PARAMS = ("data_dir", "config", "removal_csv")


def _inputs_on_volume(volume: Path, params: dict) -> dict:
    """Copy inputs that live outside the shared volume into ``VOLUME/inputs`` (once) and point the parameters there:
    the DockerRunner mounts only the pipeline root into the step containers, and TrainJob pods mount only the
    shared volume."""
    params = dict(params)
    for key in PATH_PARAMS:
        value = params.get(key)
        if not value or Path(value).resolve().is_relative_to(volume):
            continue
        source = Path(value).resolve()
        target = volume / "inputs" / key / source.name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(source, target) if source.is_dir() else shutil.copyfile(source, target)
        params[key] = str(target)
    return params


def run_training_local(pipeline_root: str | Path, runner: str = "subprocess", kubeconfig: str | Path | None = None,
                       **params) -> dict:
    """Execute ``training_pipeline`` locally; returns the task outputs' root and the parameters used.

    The shared volume is ``ROOT/shared`` (``shared_root``; on a cluster the PVC at /data). ``runner="docker"`` runs
    each component in its image (``cxrlt.platform.IMAGES``; ``make images``) with the host network (the MLflow server
    on loopback): inputs outside the shared volume are copied onto it, and the root is handed to the images'
    non-root user. ``kubeconfig``: the Kubernetes API that ``launcher="trainjob"`` steps create TrainJobs through
    (for example :class:`cxrlt.ops.trainer_box.TrainerBox`'s)."""
    import os

    from kfp import local

    from pipelines.training_pipeline import training_pipeline

    if runner not in RUNNERS:
        raise InvalidInputError(f"runner must be one of {RUNNERS}, got {runner!r}")
    root = Path(pipeline_root).resolve()
    volume = root / "shared"
    volume.mkdir(parents=True, exist_ok=True)
    params = {"shared_root": str(volume), **params}
    env = {"KUBECONFIG": str(Path(kubeconfig).resolve())} if kubeconfig else {}
    if runner == "subprocess":
        before = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
            training_pipeline(**params)
        finally:
            for key, value in before.items():
                os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    else:
        from cxrlt.ops.containers import docker_api, give_to_container_user

        params = _inputs_on_volume(volume, params)
        if kubeconfig:  # the step containers see only the pipeline root
            shutil.copyfile(kubeconfig, root / "kubeconfig")
            env = {"KUBECONFIG": str(root / "kubeconfig")}
        from cxrlt.evidence import SIGNING_KEY_ENV, key_text, signing_key

        if signing_key():  # the register step signs in its container as on a cluster (the key as PEM text in env)
            env[SIGNING_KEY_ENV] = key_text(signing_key())
        give_to_container_user(root)
        with docker_api():
            from cxrlt.ops.containers import podman_missing_container_is_not_found

            podman_missing_container_is_not_found()  # a step that exits at once must not fail the run
            local.init(runner=local.DockerRunner(network_mode="host", environment=env), pipeline_root=str(root),
                       raise_on_error=True)
            training_pipeline(**params)
    run = latest_run(root)
    return {"pipeline_root": str(root), "run_dir": str(run) if run else None, "params": params}


def run_promotion_local(pipeline_root: str | Path, **params) -> None:
    """Execute ``promotion_pipeline`` here; there is no Triton Deployment to roll, so ``rollout`` defaults off."""
    params.setdefault("rollout", False)
    from kfp import local

    from pipelines.promotion_pipeline import promotion_pipeline

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(Path(pipeline_root).resolve()),
               raise_on_error=True)
    promotion_pipeline(**params)
