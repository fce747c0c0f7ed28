from typing import NamedTuple

from kfp import dsl

from components._base import TOOLS_IMAGE


@dsl.component(base_image=TOOLS_IMAGE, install_kfp_package=False)
def plan_run(config: str, shared_root: str, run_id: str, cache_size: int = 0, val_fraction: float = 0.0,
             split_seed: int = -1, min_map: float = -1.0, min_mauroc: float = -1.0, max_ece: float = -1.0,
             min_unseen_lift: float = -1.0,
             ) -> NamedTuple("Outputs", [("run_dir", str), ("profile", str), ("cache_size", int),
                                         ("val_fraction", float), ("split_seed", int), ("min_map", float),
                                         ("min_mauroc", float), ("max_ece", float), ("min_unseen_lift", float)]):
    """The run's settings, read from the profile at run time; a parameter left at its marker (0 or -1) takes the
    profile's value. Copies the profile into the run's folder on the shared volume, where every step and TrainJob
    pod reads it.

    Args:
        config: profile YAML path.
        shared_root: where this step sees the shared volume (the cxrlt-cache PVC at /data on a cluster).
        run_id: the pipeline run's id (scopes every path the run writes).
        cache_size: preprocess side in pixels (0 = profile's data.cache_size).
        val_fraction: validation fraction of patients (0 = profile's data.val_fraction).
        split_seed: split seed (-1 = profile's data.split_seed).
        min_map: gate threshold (-1 = profile's gate.min_map).
        min_mauroc: gate threshold (-1 = profile's gate.min_mauroc).
        max_ece: gate threshold (-1 = profile's gate.max_ece).
        min_unseen_lift: gate threshold (-1 = profile's gate.min_unseen_lift).
    """
    from collections import namedtuple

    from cxrlt.ops.pipeline_steps import plan_run as plan

    result = plan(config, shared_root, run_id, cache_size=cache_size, val_fraction=val_fraction,
                  split_seed=split_seed, min_map=min_map, min_mauroc=min_mauroc, max_ece=max_ece,
                  min_unseen_lift=min_unseen_lift)
    print(result.model_dump_json(indent=2))
    keys = ("run_dir", "profile", "cache_size", "val_fraction", "split_seed", "min_map", "min_mauroc", "max_ece",
            "min_unseen_lift")
    return namedtuple("Outputs", keys)(*(getattr(result, k) for k in keys))


@dsl.component(base_image=TOOLS_IMAGE, install_kfp_package=False)
def plan_jobs(config: str, jobs: list = []) -> list:  # noqa: B006 - KFP needs a literal default
    """The run's training jobs, for one loop: the zero-shot CLIP, the (view, member) jobs (the profile's unless
    ``jobs`` names others) and the router.

    Args:
        config: profile YAML path.
        jobs: [{"view": ..., "member": ...}] to train instead of the profile's members ([] = the profile's).
    """
    from cxrlt.config import load_config
    from cxrlt.ops.pipeline_steps import training_jobs

    return training_jobs(load_config(config), list(jobs))
