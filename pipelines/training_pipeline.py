"""The retraining pipeline: check weights -> validate -> preprocess -> split -> (zero-shot CLIP, members, router in
one loop) -> fit ensemble -> evaluate -> gate -> export -> register (challenger).

One *flat* ParallelFor over every training job that ``plan_jobs`` reads from the profile (the CLIP, the (view,
member) jobs, the router): kfp.local mixes up nested loop items and runs only a loop's items side by side, and the
same shape compiles for a cluster, where each job is a pod or TrainJob of its own. Side-effect steps have caching off.

The big files (preprocess cache, split manifests, training runs) live on the shared volume (``cxrlt-cache`` PVC at
``/data``), and the artifacts between steps carry only their locations (:mod:`cxrlt.dataplane`): a TrainJob's pods
mount the same volume, so they read and write exactly what the launching step sees. kfp-kubernetes settings (GPU
limits, /dev/shm, MLflow/S3 secrets as env, the PVC) apply on a cluster; the local runner ignores them.
"""

from kfp import dsl, kubernetes

from components.check_weights.component import check_weights
from components.evaluate.component import evaluate
from components.export_onnx.component import export_onnx
from components.fit_ensemble.component import fit_ensemble
from components.gate.component import gate
from components.plan_run.component import plan_jobs, plan_run
from components.preprocess.component import preprocess
from components.register.component import register
from components.split_projection.component import split_projection
from components.train_member.component import train_member
from components.validate_data.component import validate_data
from cxrlt.evidence import SIGNING_KEY_ENV
from cxrlt.platform import (
    CACHE_PVC,
    EVIDENCE_SIGNING_KEY_FILE,
    MLFLOW_CLIENT_KEYS,
    REGISTERED_MODEL,
    S3_SECRET_KEYS,
    SECRETS,
    SHARED_ROOT,
)


def _mlflow_account(task, role: str):
    """The MLflow account of ``role`` (basic-auth credentials from its Secret; what it may do: docs/deploy.md)."""
    kubernetes.use_secret_as_env(task, secret_name=SECRETS[f"mlflow_{role}"],
                                 secret_key_to_env={k: k for k in MLFLOW_CLIENT_KEYS})
    return task


def _cluster_settings(task, gpu: bool = False, s3: bool = True):
    """Kubernetes-only settings (ignored by kfp.local): GPUs, shared memory, secrets as env, the shared volume."""
    if gpu:
        task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
        kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                                   size_limit="8Gi")
    if s3:
        kubernetes.use_secret_as_env(task, secret_name=SECRETS["s3_pipeline"],
                                     secret_key_to_env={k: k for k in S3_SECRET_KEYS})
    # every step may log runs to MLflow (the training account: its own experiments and runs, nothing in the registry)
    _mlflow_account(task, "training")
    kubernetes.mount_pvc(task, pvc_name=CACHE_PVC, mount_path=SHARED_ROOT)
    return task


@dsl.pipeline(name="cxrlt-training", description="Retrain the CXR-LT ensemble and zero-shot model; register a "
                                                  "challenger when the evaluation gate passes.")
def training_pipeline(data_dir: str, config: str, tracking_uri: str, jobs: list = [],  # noqa: B006
                      min_map: float = -1.0, min_mauroc: float = -1.0, max_ece: float = -1.0,
                      min_unseen_lift: float = -1.0, launcher: str = "local", nproc: int = 1, num_nodes: int = 1,
                      epochs: int = 0, zeroshot_epochs: int = 0, cache_size: int = 0, eval_split: str = "dev",
                      removal_csv: str = "", val_fraction: float = 0.0,
                      split_seed: int = -1, member_threads: int = 0, shared_root: str = SHARED_ROOT,
                      reuse_members: bool = True):
    """Settings the profile defines (cache size, members, split, gate) are read from it at run time by plan_run;
    a parameter left at its marker (0, -1.0, -1 or []) takes the profile's value, any other value overrides it.
    ``reuse_members``: a member whose rows, profile, launch settings and code match a finished member of an earlier
    run on the shared volume is copied instead of trained again (cxrlt.ops.member_cache). ``member_threads``: each
    local training job's intra-op threads (two run side by side; 0: every core)."""
    run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER  # the run's UUID: unique, and the same in every step and loop iteration
    plan = _cluster_settings(plan_run(
        config=config, shared_root=shared_root, run_id=run_id, cache_size=cache_size,
        val_fraction=val_fraction, split_seed=split_seed, min_map=min_map, min_mauroc=min_mauroc, max_ece=max_ece,
        min_unseen_lift=min_unseen_lift), s3=False)
    profile, run_dir = plan.outputs["profile"], plan.outputs["run_dir"]
    planned_jobs = plan_jobs(config=profile, jobs=jobs)
    # first: a profile whose weights are missing fails here, in seconds, before the data steps
    weights = _cluster_settings(check_weights(config=profile)).set_caching_options(False)
    validated = _cluster_settings(validate_data(data_dir=data_dir, min_positives=0)).after(weights)
    validated.set_caching_options(False)
    cache = _cluster_settings(preprocess(data_dir=data_dir, data_hash=validated.outputs["Output"],
                                         shared_root=shared_root, size=plan.outputs["cache_size"]))
    split = _cluster_settings(split_projection(
        data_dir=data_dir, run_dir=run_dir, removal_csv=removal_csv,
        val_fraction=plan.outputs["val_fraction"], seed=plan.outputs["split_seed"])).after(validated)
    splits = split.outputs["splits"]
    # Only pipeline parameters, constants and artifacts enter the loop: kfp.local replaces every task-output
    # *parameter* of a loop iteration with the loop item. The run's folder and profile follow from run_id.
    training = {"run_id": run_id, "data_dir": data_dir, "cache": cache.outputs["cache"], "splits": splits,
                "launcher": launcher, "nproc": nproc, "num_nodes": num_nodes, "shared_root": shared_root}
    with dsl.ParallelFor(planned_jobs.output, parallelism=2) as job:
        trained = train_member(view=job.view, member=job.member, epochs=epochs, zeroshot_epochs=zeroshot_epochs,
                               threads=member_threads, reuse=reuse_members, **training)
        _cluster_settings(trained, gpu=True).set_caching_options(False)
    ensemble = _cluster_settings(fit_ensemble(trained=dsl.Collected(trained.outputs["model"]), config=profile,
                                              data_dir=data_dir), s3=False)
    zeroshot = ensemble.outputs["zeroshot"]
    scores = _cluster_settings(evaluate(ensemble=ensemble.outputs["ensemble"], zeroshot=zeroshot,
                                        data_dir=data_dir, split=eval_split), s3=False)
    decision = gate(mAP=scores.outputs["mAP"], mAUROC=scores.outputs["mAUROC"], mECE=scores.outputs["mECE"],
                    unseen_mAP=scores.outputs["unseen_mAP"], unseen_prevalence=scores.outputs["unseen_prevalence"],
                    min_map=plan.outputs["min_map"], min_mauroc=plan.outputs["min_mauroc"],
                    max_ece=plan.outputs["max_ece"], min_unseen_lift=plan.outputs["min_unseen_lift"])
    with dsl.If(decision.outputs["Output"] == "pass", name="register-challenger"):
        bundle = _cluster_settings(export_onnx(ensemble=ensemble.outputs["ensemble"], zeroshot=zeroshot,
                                               config=profile), s3=False)
        registered = register(bundle=bundle.outputs["bundle"], report=scores.outputs["report"],
                              evidence=decision.outputs["evidence"], tracking_uri=tracking_uri,
                              data_hash=validated.outputs["Output"], config=profile, model_name=REGISTERED_MODEL)
        registered.set_caching_options(False)
        _mlflow_account(registered, "registration")  # new versions and the challenger alias
        # only this step holds the key that signs the gate's evidence (serve build and promotion verify it)
        kubernetes.use_secret_as_env(registered, secret_name=SECRETS["evidence_signing"],
                                     secret_key_to_env={EVIDENCE_SIGNING_KEY_FILE: SIGNING_KEY_ENV})
