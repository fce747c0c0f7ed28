"""The retraining pipeline: validate -> preprocess -> split -> (members, router, zero-shot in parallel) -> fit
ensemble -> evaluate -> gate -> export -> register (challenger).

One *flat* ParallelFor over (view, member) jobs: kfp.local mixes up nested loop items, and the same shape compiles
for a cluster. Side-effect steps have caching off. kfp-kubernetes settings (GPU limits, /dev/shm, MLflow/S3 secrets
as env, the cache PVC) apply on a cluster; the local runner ignores them.
"""

from kfp import dsl, kubernetes

from components.evaluate.component import evaluate
from components.export_onnx.component import export_onnx
from components.fit_ensemble.component import fit_ensemble
from components.gate.component import gate
from components.preprocess.component import preprocess
from components.register.component import register
from components.split_projection.component import split_projection
from components.train_member.component import train_member
from components.train_zeroshot.component import train_zeroshot
from components.validate_data.component import validate_data
from cxrlt.platform import CACHE_PVC, MLFLOW_CLIENT_KEYS, S3_SECRET_KEYS, SECRETS

DEFAULT_JOBS = [{"view": v, "member": m} for v in ("frontal", "lateral", "mixed") for m in ("pcam", "swin")]


def _cluster_settings(task, gpu: bool = False, s3: bool = True):
    """Kubernetes-only settings (ignored by kfp.local): GPUs, shared memory, secrets as env, the cache PVC."""
    if gpu:
        task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
        kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                                   size_limit="8Gi")
    if s3:
        kubernetes.use_secret_as_env(task, secret_name=SECRETS["s3_pipeline"],
                                     secret_key_to_env={k: k for k in S3_SECRET_KEYS})
    # every step may talk to the registry (training logs, registration): MLflow basic-auth credentials
    kubernetes.use_secret_as_env(task, secret_name=SECRETS["mlflow_client"],
                                 secret_key_to_env={k: k for k in MLFLOW_CLIENT_KEYS})
    kubernetes.mount_pvc(task, pvc_name=CACHE_PVC, mount_path="/data")
    return task


@dsl.pipeline(name="cxrlt-training", description="Retrain the CXR-LT ensemble and zero-shot model; register a "
                                                  "challenger when the evaluation gate passes.")
def training_pipeline(data_dir: str, config: str, tracking_uri: str, jobs: list = DEFAULT_JOBS,
                      min_map: float = 0.1, min_mauroc: float = 0.75, max_ece: float = 0.15,
                      min_unseen_lift: float = 1.5, launcher: str = "local", nproc: int = 1,
                      epochs: int = 0, zeroshot_epochs: int = 0, cache_size: int = 64, eval_split: str = "dev",
                      label_source: str = "all", removal_csv: str = "", val_fraction: float = 0.1,
                      split_seed: int = 42, member_threads: int = 0):
    validated = _cluster_settings(validate_data(data_dir=data_dir, min_positives=0)).set_caching_options(False)
    cache = _cluster_settings(preprocess(data_dir=data_dir, size=cache_size)).after(validated)
    split = _cluster_settings(split_projection(data_dir=data_dir, label_source=label_source, removal_csv=removal_csv,
                                               val_fraction=val_fraction, seed=split_seed)).after(validated)
    splits = split.outputs["splits"]
    with dsl.ParallelFor(jobs, parallelism=2) as job:
        member = train_member(view=job.view, member=job.member, config=config, data_dir=data_dir,
                              cache=cache.outputs["cache"], splits=splits, launcher=launcher, nproc=nproc,
                              epochs=epochs, threads=member_threads)
        _cluster_settings(member, gpu=True).set_caching_options(False)
    router = train_member(view="", member="router", config=config, data_dir=data_dir, cache=cache.outputs["cache"],
                          splits=splits, launcher=launcher, nproc=nproc, epochs=epochs)
    _cluster_settings(router, gpu=True).set_caching_options(False)
    zs = train_zeroshot(config=config, data_dir=data_dir, cache=cache.outputs["cache"], splits=splits,
                        launcher=launcher, nproc=nproc, epochs=zeroshot_epochs)
    _cluster_settings(zs, gpu=True).set_caching_options(False)
    ensemble = fit_ensemble(members=dsl.Collected(member.outputs["model"]), router=router.outputs["model"],
                            config=config, data_dir=data_dir)
    scores = evaluate(ensemble=ensemble.outputs["ensemble"], zeroshot=zs.outputs["model"], data_dir=data_dir,
                      split=eval_split)
    decision = gate(mAP=scores.outputs["mAP"], mAUROC=scores.outputs["mAUROC"], mECE=scores.outputs["mECE"],
                    unseen_mAP=scores.outputs["unseen_mAP"], unseen_prevalence=scores.outputs["unseen_prevalence"],
                    min_map=min_map, min_mauroc=min_mauroc, max_ece=max_ece, min_unseen_lift=min_unseen_lift)
    with dsl.If(decision.outputs["Output"] == "pass", name="register-challenger"):
        bundle = export_onnx(ensemble=ensemble.outputs["ensemble"], zeroshot=zs.outputs["model"])
        registered = register(bundle=bundle.outputs["bundle"], report=scores.outputs["report"],
                              evidence=decision.outputs["evidence"], tracking_uri=tracking_uri,
                              data_hash=validated.outputs["Output"], config=config)
        registered.set_caching_options(False)
        kubernetes.use_secret_as_env(registered, secret_name=SECRETS["mlflow_client"],
                                     secret_key_to_env={k: k for k in MLFLOW_CLIENT_KEYS})
