from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components._base import TRAIN_IMAGE


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def train_member(view: str, member: str, config: str, data_dir: str, cache: Input[Dataset], splits: Input[Dataset],
                 model: Output[Model], launcher: str = "local", nproc: int = 1, epochs: int = 0,
                 gpus_per_node: int = 1, threads: int = 0) -> float:
    """Train one ensemble member (``pcam`` also trains that view's ``cait`` on its frozen trunk) or the router.

    A profile without a router (HPH) makes the router step a no-op: the ensemble then serves every image with its
    mixed members.

    Args:
        view: frontal, lateral, mixed, or "" for the router.
        member: pcam (+cait when the profile has one), swin, mlp, csra, cait-less pcam ("pcam-only"), or router.
        config: profile YAML path.
        data_dir: CXR-LT data directory.
        cache: preprocess cache.
        splits: manifests from the split step (removal list and label source applied).
        model: run directory holding <view>/<kind>/ member runs.
        launcher: local (torchrun) or trainjob (Kubeflow Trainer).
        nproc: processes per node.
        epochs: override the profile's epochs (0 = profile).
        gpus_per_node: GPUs per node for a TrainJob.
        threads: intra-op threads of a local run (0 = the library's default, every core).
    """
    import json
    from pathlib import Path

    from cxrlt.config import load_config
    from cxrlt.launch import launch_local, launch_trainjob, trainjob_body, trainjob_name

    if launcher not in ("local", "trainjob"):
        raise ValueError(f"launcher must be local or trainjob, got {launcher!r}")
    models = load_config(config)["models"] or {}
    if member == "router" and models.get("router") is None:
        Path(model.path).mkdir(parents=True, exist_ok=True)
        model.metadata.update({"members": [], "skipped": "the profile defines no router"})
        return 0.0
    plan = [("router", "router")] if member == "router" else [(f"{view}/pcam", f"{view}/pcam")]
    if member == "pcam" and models.get("cait") is not None:
        plan.append((f"{view}/cait", f"{view}/cait"))
    elif member not in ("router", "pcam-only"):
        plan = [(f"{view}/{member}", f"{view}/{member}")]
    scores = []
    for name, rel in plan:
        out = Path(model.path) / rel
        args = ["train", "--member", name, "--config", config, "--data", data_dir, "--out", str(out),
                "--cache", cache.path, "--splits", splits.path, "--resume"]
        if epochs:
            args += ["--epochs", str(epochs)]
        if name.endswith("/cait"):
            args += ["--pcam-checkpoint", str(Path(model.path) / name.replace("cait", "pcam") / "best.pt")]
        if launcher == "local":
            launch_local(args, nproc, threads=threads)
        else:
            job = trainjob_name(f"cxrlt-{name.replace('/', '-')}", args, model.uri)
            launch_trainjob(trainjob_body(job, args, gpus_per_node))
        card = json.loads((out / "member.json").read_text())
        scores.append(card["best_val_score"])
    model.metadata.update({"members": [n for n, _ in plan], "best_val_score": scores[0]})
    return float(scores[0])
