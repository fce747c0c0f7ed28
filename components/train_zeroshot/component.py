from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components._base import TRAIN_IMAGE


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def train_zeroshot(run_id: str, data_dir: str, cache: Input[Dataset], splits: Input[Dataset],
                   model: Output[Model], shared_root: str, alpha: float = 1.5, launcher: str = "local",
                   nproc: int = 1, num_nodes: int = 1, epochs: int = 0, gpus_per_node: int = 1,
                   threads: int = 0) -> float:
    """Fine-tune the dual-branch CLIP (contrastive + alpha * ASL) into the run's folder on the shared volume and
    calibrate it; returns the known-class validation mAP.

    Args:
        run_id: the pipeline run's id: the run's folder and its copy of the profile (plan_run wrote it) follow.
        data_dir: CXR-LT data directory (on the shared volume for a TrainJob).
        cache: preprocess cache (used when its size and scaling match the CLIP's contract).
        splits: manifests from the split step (removal list and label source applied).
        model: location of the zero-shot model on the shared volume.
        shared_root: where this step sees the shared volume (pods mount it at /data).
        alpha: ASL branch weight.
        launcher: local (torchrun) or trainjob.
        nproc: processes per node.
        num_nodes: TrainJob nodes (torch-distributed runtime).
        epochs: override (0 = profile).
        gpus_per_node: GPUs per node for a TrainJob.
        threads: intra-op threads of a local run (0 = the library's default, every core).
    """
    from cxrlt.dataplane import resolve
    from cxrlt.ops.pipeline_steps import train_zeroshot_run

    meta = train_zeroshot_run(shared_root, run_id, data_dir, resolve(cache.path), resolve(splits.path), model.path,
                              alpha=alpha, launcher=launcher, nproc=nproc, num_nodes=num_nodes, epochs=epochs,
                              gpus_per_node=gpus_per_node, threads=threads)
    model.metadata.update(meta)
    return float(meta["best_val_known_mAP"])
