"""What the training pipeline's steps do, as library functions the thin KFP components call.

- :func:`plan_run` reads the profile once, at run time, and turns it into the run's settings: the profile defines
  the cache size, the members, the split and the gate; pipeline parameters only override (0, -1 or an empty list
  mean "the profile's"). It also copies the profile onto the shared volume, so every step and TrainJob pod reads
  the same bytes.
- :func:`train_networks` trains one job's networks, locally or as a Kubeflow Trainer TrainJob whose pods see only
  the shared volume, then verifies what they wrote (member card, checkpoint digest) and publishes it. A local run of
  one process trains in the step's own process (:func:`in_process`); more processes run under torchrun.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pydantic import BaseModel

from cxrlt.dataplane import DataPlaneError, Location, SharedVolume, publish, run_scoped, sha256_file
from cxrlt.errors import InvalidInputError
from cxrlt.kinds import member_kind, riders
from cxrlt.ops import member_cache

#: the pipeline parameters' "take the profile's value" markers
FROM_PROFILE = {"cache_size": 0, "val_fraction": 0.0, "split_seed": -1, "min_map": -1.0, "min_mauroc": -1.0,
                "max_ece": -1.0, "min_unseen_lift": -1.0}


class RunPlan(BaseModel):
    run_dir: str
    profile: str
    cache_size: int
    val_fraction: float
    split_seed: int
    min_map: float
    min_mauroc: float
    max_ece: float
    min_unseen_lift: float


def plan_run(config: str, shared_root: str, run_id: str, **overrides) -> RunPlan:
    """The run's settings: the profile's, with every override that is not its :data:`FROM_PROFILE` marker."""
    from cxrlt.config import load_config

    unknown = set(overrides) - set(FROM_PROFILE)
    if unknown:
        raise InvalidInputError(f"unknown run settings {sorted(unknown)}; known: {sorted(FROM_PROFILE)}")
    cfg = load_config(config)
    from_profile = {"cache_size": cfg["data"]["cache_size"], "val_fraction": cfg["data"]["val_fraction"],
                    "split_seed": cfg["data"]["split_seed"],
                    # the registration gate's thresholds (gate.subgroup_* are promotion's, read there)
                    **{k: v for k, v in cfg["gate"].items() if k in FROM_PROFILE}}
    settings = {k: (v if overrides.get(k, FROM_PROFILE[k]) == FROM_PROFILE[k] else overrides[k])
                for k, v in from_profile.items()}
    if settings["cache_size"] < cfg["data"]["image_size"]:
        raise InvalidInputError(f"cache_size {settings['cache_size']} is smaller than the profile's data.image_size "
                                f"{cfg['data']['image_size']} ({config}): the cache would be upsampled")
    run_dir, profile = run_paths(shared_root, run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(config, profile)
    return RunPlan(run_dir=str(run_dir), profile=str(profile), **settings)


def run_paths(shared_root: str | Path, run_id: str) -> tuple[Path, Path]:
    """The run's folder on the shared volume and its copy of the profile (written by :func:`plan_run`)."""
    run_dir = run_scoped(shared_root, run_id)
    return run_dir, run_dir / "profile.yaml"


#: the training loop's jobs besides the ensemble members: the zero-shot CLIP first (the longest job: kfp.local starts
#: a loop's items in order, two at a time) and the router (a no-op for a profile without one)
ZEROSHOT_JOB = {"view": "", "member": "zeroshot"}
ROUTER_JOB = {"view": "", "member": "router"}


def training_jobs(cfg: dict, jobs: list[dict] | None = None) -> list[dict]:
    """Every training job of a run, for one loop: the CLIP, the (view, member) jobs (``jobs``, or the profile's:
    :func:`cxrlt.config.pipeline_jobs`), the router. On a cluster each is a pod or TrainJob of its own; on kfp.local
    the loop is the only place where steps run side by side, so the router and the CLIP share the cores with the
    members instead of running alone afterwards."""
    from cxrlt.config import pipeline_jobs

    special = (ZEROSHOT_JOB["member"], ROUTER_JOB["member"])
    members = [dict(j) for j in jobs if j["member"] not in special] if jobs else pipeline_jobs(cfg)
    return [dict(ZEROSHOT_JOB), *members, dict(ROUTER_JOB)]


def job_networks(view: str, member: str, models: dict) -> list[str]:
    """The networks one pipeline job trains, in order: a kind, then the kinds that read its frozen trunk
    (:func:`cxrlt.kinds.riders`: ``pcam`` also trains its view's ``cait``) where the profile defines them;
    ``<kind>-only`` trains the kind alone; ``router`` the router."""
    if member == "router":
        return ["router"]
    if member.endswith("-only"):
        return [f"{view}/{member.removesuffix('-only')}"]
    return [f"{view}/{member}", *(f"{view}/{r}" for r in riders(member) if models.get(r) is not None)]


def in_process(launcher: str, nproc: int) -> bool:
    """Whether a job trains in the step's own process: a local run of one process. A ``cxrlt`` child would only
    import torch, timm and the rest again (about 7 s of CPU per network on a 2-core machine, where the demo trains
    nine networks per pipeline), and the step already isolates the job."""
    return launcher == "local" and nproc == 1


def _launch(args: list[str], launcher: str, key: str, run_dir: str, nproc: int, num_nodes: int,
            gpus_per_node: int, threads: int) -> None:
    from cxrlt.ops.launch import launch_local, launch_trainjob, trainjob_body, trainjob_name

    if launcher == "local":
        launch_local(args, nproc, threads=threads)
    else:
        launch_trainjob(trainjob_body(trainjob_name(f"cxrlt-{key}", args, str(run_dir)), args, gpus_per_node,
                                      num_nodes=num_nodes, nproc_per_node=nproc))


def _verified_card(folder: Path, card_name: str) -> dict:
    """The card a training run wrote, after checking that its checkpoint is the one the card describes."""
    card_path = folder / card_name
    if not card_path.exists():
        raise DataPlaneError(f"training finished but wrote no {card_name} in {folder}: did the pods mount the shared "
                             "volume at the path they were given?")
    card = json.loads(card_path.read_text())
    expected = card.get("checkpoint_sha256")
    if expected and sha256_file(folder / "best.pt") != expected:
        raise DataPlaneError(f"{folder / 'best.pt'} does not match the sha256 its card records: a partial or "
                             "concurrent write")
    return card


def train_networks(view: str, member: str, shared_root: str, run_id: str, data_dir: str, cache: Path,
                   splits: Path, artifact_dir: str, launcher: str = "local", nproc: int = 1, num_nodes: int = 1,
                   epochs: int = 0, gpus_per_node: int = 1, threads: int = 0, pod_root: str = "",
                   reuse: bool = True) -> dict:
    """Train one job's networks into ``<run>/members/<job>/`` and publish that folder in ``artifact_dir``.

    With ``reuse``, a job whose inputs match a finished job of an earlier run on the same shared volume is copied
    from :mod:`cxrlt.ops.member_cache` instead of trained again (the metadata's ``reused`` names the entry).

    With ``launcher="trainjob"`` every path handed to the pods is translated from the step's view of the shared
    volume (``shared_root``) to the pods' (``pod_root``); a path that is not on the volume is refused before any job
    is created. Returns the artifact metadata (networks, best validation score, checkpoint digests)."""
    from cxrlt.config import load_config
    from cxrlt.platform import SHARED_ROOT

    if launcher not in ("local", "trainjob"):
        raise InvalidInputError(f"launcher must be local or trainjob, got {launcher!r}")
    plan_run_dir, profile = run_paths(shared_root, run_id)
    cfg = load_config(profile)
    models = cfg["models"] or {}
    key = f"{view}-{member}" if view else member
    job_dir = plan_run_dir / "members" / key
    if member == "router" and models.get("router") is None:
        job_dir.mkdir(parents=True, exist_ok=True)
        publish(artifact_dir, job_dir, "member-runs", networks=[], skipped="the profile defines no router")
        return {"networks": [], "skipped": "the profile defines no router"}
    volume = SharedVolume(shared_root, pod_root or SHARED_ROOT)
    where = (lambda p, what: volume.to_pod(p, what)) if launcher == "trainjob" else (lambda p, what: str(p))
    common = ["--config", where(profile, "profile"), "--data", where(data_dir, "data_dir"),
              "--cache", where(cache, "cache"), "--splits", where(splits, "splits"), "--resume"]
    if epochs:
        common += ["--epochs", str(epochs)]
    networks = job_networks(view, member, models)
    launch = {"launcher": launcher, "nproc": nproc, "num_nodes": num_nodes, "gpus_per_node": gpus_per_node,
              "threads": threads, "epochs": epochs}
    cache_key, inputs = member_cache.job_key(view, key, networks, cfg, splits, data_dir, cache, launch) \
        if reuse else (None, {"not_reused": "reuse is off"})
    if cache_key and member_cache.restore(shared_root, cache_key, job_dir):
        print(f"train-member: reused {', '.join(networks)} from {member_cache.MEMBER_CACHE_DIR}/{cache_key[:12]} "
              "(same rows, settings, launch and code)", flush=True)
        return _publish_job(artifact_dir, job_dir, networks, reused=cache_key)
    print(f"train-member: training {', '.join(networks)} ({launcher}"
          f"{f', {num_nodes} nodes' if launcher == 'trainjob' else ''})"
          f"{'' if cache_key else '; not reused: ' + inputs['not_reused']}", flush=True)  # names the step in the log
    for name in networks:
        out = job_dir / name
        trunk_of = member_kind(name.rsplit("/", 1)[-1]).reads_trunk_of if name != "router" else None
        trunk = job_dir / view / trunk_of / "best.pt" if trunk_of else None
        if in_process(launcher, nproc):
            _train_network_here(name, profile, data_dir, out, cache, splits, epochs, trunk, threads)
        else:
            args = ["train", "--member", name, "--out", where(out, "output"), *common]
            if trunk is not None:
                args += ["--pcam-checkpoint", where(trunk, "checkpoint")]
            _launch(args, launcher, f"{key}-{name.rsplit('/', 1)[-1]}", plan_run_dir, nproc, num_nodes,
                    gpus_per_node, threads)
        _verified_card(out, "member.json")
    meta = _publish_job(artifact_dir, job_dir, networks)
    if cache_key:
        member_cache.store(shared_root, cache_key, job_dir, inputs)
    return meta


def train_job(view: str, member: str, shared_root: str, run_id: str, data_dir: str, cache: Path, splits: Path,
              artifact_dir: str, epochs: int = 0, zeroshot_epochs: int = 0, **launch) -> dict:
    """One job of :func:`training_jobs`: the zero-shot CLIP (:func:`train_zeroshot_run`, ``zeroshot_epochs``) or
    networks of the ensemble (:func:`train_networks`, ``epochs``). The metadata's ``best_val_score`` is the job's
    selection score (the CLIP's: its known-class validation mAP)."""
    if member == ZEROSHOT_JOB["member"]:
        launch.pop("reuse", None)  # the CLIP is not cached between runs
        meta = train_zeroshot_run(shared_root, run_id, data_dir, cache, splits, artifact_dir, epochs=zeroshot_epochs,
                                  **launch)
        return {**meta, "best_val_score": meta["best_val_known_mAP"]}
    return train_networks(view, member, shared_root, run_id, data_dir, cache, splits, artifact_dir, epochs=epochs,
                          **launch)


def collect_trained(artifact_dirs: list[str]) -> tuple[list[Path], Location]:
    """What the training loop published, split by kind (each checked by :func:`cxrlt.dataplane.resolve`): the
    member-run folders (the router's included) and the location of the one zero-shot run, to publish again as it is."""
    from cxrlt.dataplane import read_location, resolve

    members, zeroshot = [], []
    for artifact in artifact_dirs:
        folder, location = resolve(artifact), read_location(artifact)
        if location.kind == "zeroshot-run":
            zeroshot.append(location)
        else:
            members.append(folder)
    if len(zeroshot) != 1:
        raise DataPlaneError(f"the training loop published {len(zeroshot)} zero-shot runs; one was expected")
    return members, zeroshot[0]


def _train_network_here(name: str, profile: Path, data_dir: str, out: Path, cache: Path, splits: Path, epochs: int,
                        trunk: Path | None, threads: int) -> None:
    """``cxrlt train`` for one network, in this process (:func:`in_process`), with ``threads`` intra-op threads."""
    from cxrlt.ops.launch import intra_op_threads
    from cxrlt.training.trainer import TrainRequest, result_line, train_member

    with intra_op_threads(threads):
        summary = train_member(TrainRequest(name, profile, Path(data_dir), out, resume=True, pcam_checkpoint=trunk,
                                            cache_dir=cache, epochs=epochs or None, splits=splits))
    print(result_line(summary, out), flush=True)


def _publish_job(artifact_dir: str, job_dir: Path, networks: list[str], **extra) -> dict:
    """Verify every network's card and checkpoint in ``job_dir`` and publish the folder; returns the metadata."""
    cards = {name: _verified_card(job_dir / name, "member.json") for name in networks}
    first = next(iter(cards.values()))
    meta = {"networks": list(cards), "best_val_score": first["best_val_score"],
            "checkpoints": {n: c.get("checkpoint_sha256") for n, c in cards.items()}, **extra}
    publish(artifact_dir, job_dir, "member-runs", hashed=tuple(f"{n}/member.json" for n in cards), **meta)
    return meta


def train_zeroshot_run(shared_root: str, run_id: str, data_dir: str, cache: Path, splits: Path,
                       artifact_dir: str, alpha: float | None = None, launcher: str = "local", nproc: int = 1,
                       num_nodes: int = 1, epochs: int = 0, gpus_per_node: int = 1, pod_root: str = "",
                       threads: int = 0) -> dict:
    """Fine-tune the dual-branch CLIP into ``<run>/zeroshot`` (locally, in this process for one process, or as a
    TrainJob), calibrate it on the training split's validation part in this step, verify and publish it.
    ``threads``: intra-op threads of a local run (0: every core); ``alpha``: the ASL branch's weight (None: the
    profile's ``zeroshot.alpha``)."""
    from cxrlt.ops.launch import intra_op_threads
    from cxrlt.platform import SHARED_ROOT

    if launcher not in ("local", "trainjob"):
        raise InvalidInputError(f"launcher must be local or trainjob, got {launcher!r}")
    plan_run_dir, profile = run_paths(shared_root, run_id)
    out = plan_run_dir / "zeroshot"
    volume = SharedVolume(shared_root, pod_root or SHARED_ROOT)
    where = (lambda p, what: volume.to_pod(p, what)) if launcher == "trainjob" else (lambda p, what: str(p))
    if in_process(launcher, nproc):
        from cxrlt.zeroshot.train import ZeroShotRequest, result_line, train_zeroshot

        with intra_op_threads(threads):
            trained = train_zeroshot(ZeroShotRequest(profile, Path(data_dir), out, resume=True, cache_dir=cache,
                                                     epochs=epochs or None, alpha=alpha, splits=splits))
        print(f"zeroshot: {result_line(trained, out)}", flush=True)
    else:
        args = ["zeroshot", "train", "--config", where(profile, "profile"), "--data", where(data_dir, "data_dir"),
                "--out", where(out, "output"), "--cache", where(cache, "cache"), "--splits", where(splits, "splits"),
                "--resume", *(["--alpha", str(alpha)] if alpha is not None else [])]
        if epochs:
            args += ["--epochs", str(epochs)]
        _launch(args, launcher, "zeroshot", plan_run_dir, nproc, num_nodes, gpus_per_node, threads)
    card = _verified_card(out, "zeroshot.json")
    if card["settings"].get("calibration", "platt") == "platt":
        # Platt calibration on the known classes of the training split's validation part (monotonic: AP unchanged)
        from cxrlt.zeroshot.proxy import calibrate_on_known

        with intra_op_threads(threads):
            cal = calibrate_on_known(out, data_dir, "val", splits)
        print(f"zeroshot: calibration a={cal['a']:.3f} b={cal['b']:.3f} ({cal['scoring']}) on the known classes",
              flush=True)
    card = json.loads((out / "zeroshot.json").read_text())
    meta = {"best_val_known_mAP": card["best_val_known_mAP"], "checkpoint_sha256": card.get("checkpoint_sha256")}
    publish(artifact_dir, out, "zeroshot-run", hashed=("zeroshot.json",), **meta)
    return meta
