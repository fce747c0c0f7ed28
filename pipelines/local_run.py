"""Run the training pipeline on this machine with kfp.local's SubprocessRunner (use_venv=False: the project venv)."""

from __future__ import annotations

from pathlib import Path


def latest_run(pipeline_root: str | Path) -> Path | None:
    """The newest ``cxrlt-training-*`` run directory under a local pipeline root (None when there is none)."""
    runs = sorted(Path(pipeline_root).glob("cxrlt-training-*"), key=lambda p: p.stat().st_mtime)
    return runs[-1] if runs else None


def run_training_local(pipeline_root: str | Path, **params) -> dict:
    """Execute ``training_pipeline`` locally; returns the task outputs' root and the parameters used."""
    from kfp import local

    from pipelines.training_pipeline import training_pipeline

    root = Path(pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    training_pipeline(**params)
    run = latest_run(root)
    return {"pipeline_root": str(root), "run_dir": str(run) if run else None, "params": params}


def run_promotion_local(pipeline_root: str | Path, **params) -> None:
    from kfp import local

    from pipelines.promotion_pipeline import promotion_pipeline

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(Path(pipeline_root).resolve()),
               raise_on_error=True)
    promotion_pipeline(**params)
