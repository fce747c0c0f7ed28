"""Compile every pipeline to KFP IR YAML (what CI runs and what a cluster uploads)."""

from __future__ import annotations

from pathlib import Path

from kfp import compiler

from pipelines.monitor_pipeline import monitor_pipeline
from pipelines.promotion_pipeline import promotion_pipeline
from pipelines.training_pipeline import training_pipeline

PIPELINES = {"training_pipeline": training_pipeline, "promotion_pipeline": promotion_pipeline,
             "monitor_pipeline": monitor_pipeline}


def compile_all(out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fn in PIPELINES.items():
        path = out / f"{name}.yaml"
        compiler.Compiler().compile(fn, str(path))
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in compile_all(Path(__file__).parent / "compiled"):
        print(p)
