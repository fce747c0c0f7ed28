from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components._base import TRAIN_IMAGE


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def train_member(view: str, member: str, run_id: str, data_dir: str, cache: Input[Dataset],
                 splits: Input[Dataset], model: Output[Model], shared_root: str, launcher: str = "local",
                 nproc: int = 1, num_nodes: int = 1, epochs: int = 0, gpus_per_node: int = 1,
                 threads: int = 0, reuse: bool = True, zeroshot_epochs: int = 0) -> float:
    """Train one job of the run's training loop into the run's folder on the shared volume: an ensemble member
    (``pcam`` also trains that view's ``cait`` on its frozen trunk), the router, or the zero-shot CLIP (then
    calibrated); ``model`` records where, with the checkpoints' digests. Returns the job's validation score.

    A profile without a router (HPH) makes the router job a no-op: the ensemble then serves every image with its
    mixed members.

    Args:
        view: frontal, lateral, mixed, or "" for the router.
        member: pcam (+cait when the profile has one), swin, mlp, csra, cait-less pcam ("pcam-only"), router, or
            zeroshot.
        run_id: the pipeline run's id: the run's folder and its copy of the profile (plan_run wrote it) follow.
        data_dir: CXR-LT data directory (on the shared volume for a TrainJob).
        cache: preprocess cache (a location on the shared volume).
        splits: manifests from the split step (removal list and label source applied).
        model: location of <view>/<kind>/ member runs (or of the zero-shot run) on the shared volume.
        shared_root: where this step sees the shared volume (pods mount it at /data).
        launcher: local (torchrun) or trainjob (Kubeflow Trainer).
        nproc: processes per node.
        num_nodes: TrainJob nodes (torch-distributed runtime).
        epochs: override the profile's epochs of members and router (0 = profile).
        gpus_per_node: GPUs per node for a TrainJob.
        threads: intra-op threads of a local run (0 = the library's default, every core).
        reuse: copy a member job from an earlier run on the shared volume when everything that decides its weights
            is the same (cxrlt.ops.member_cache), instead of training it again.
        zeroshot_epochs: override the zero-shot CLIP's epochs (0 = profile).
    """
    from cxrlt.dataplane import resolve
    from cxrlt.ops.pipeline_steps import train_job

    meta = train_job(view, member, shared_root, run_id, data_dir, resolve(cache.path), resolve(splits.path),
                     model.path, epochs=epochs, zeroshot_epochs=zeroshot_epochs, launcher=launcher, nproc=nproc,
                     num_nodes=num_nodes, gpus_per_node=gpus_per_node, threads=threads, reuse=reuse)
    model.metadata.update(meta)
    return float(meta.get("best_val_score", 0.0))
