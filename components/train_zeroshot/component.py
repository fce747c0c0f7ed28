from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components._base import TRAIN_IMAGE


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def train_zeroshot(config: str, data_dir: str, cache: Input[Dataset], splits: Input[Dataset], model: Output[Model],
                   alpha: float = 1.5, launcher: str = "local", nproc: int = 1, epochs: int = 0,
                   gpus_per_node: int = 1) -> float:
    """Fine-tune the dual-branch CLIP (contrastive + alpha * ASL); returns the known-class validation mAP.

    Args:
        config: profile YAML path.
        data_dir: CXR-LT data directory.
        cache: preprocess cache (used when its size and scaling match the CLIP's contract).
        splits: manifests from the split step (removal list and label source applied).
        model: zero-shot model directory.
        alpha: ASL branch weight.
        launcher: local (torchrun) or trainjob.
        nproc: processes per node.
        epochs: override (0 = profile).
        gpus_per_node: GPUs per node for a TrainJob.
    """
    import json
    from pathlib import Path

    from cxrlt.launch import launch_local, launch_trainjob, trainjob_body, trainjob_name

    args = ["zeroshot", "train", "--config", config, "--data", data_dir, "--out", model.path, "--alpha", str(alpha),
            "--cache", cache.path, "--splits", splits.path, "--resume"]
    if epochs:
        args += ["--epochs", str(epochs)]
    if launcher == "local":
        launch_local(args, nproc)
    elif launcher == "trainjob":
        launch_trainjob(trainjob_body(trainjob_name("cxrlt-zeroshot", args, model.uri), args, gpus_per_node))
    else:
        raise ValueError(f"launcher must be local or trainjob, got {launcher!r}")
    # Platt calibration on the *known* classes of the training split's validation part (monotonic: rankings, hence
    # AP, are unchanged; dev stays for evaluation, test labels are never read)
    launch_local(["zeroshot", "calibrate", "--model", model.path, "--data", data_dir, "--split", "val", "--splits",
                  splits.path])
    card = json.loads((Path(model.path) / "zeroshot.json").read_text())
    model.metadata["best_val_known_mAP"] = card["best_val_known_mAP"]
    return float(card["best_val_known_mAP"])
