"""TrainJobs as their pods would run them: rendered from the real ``torch-distributed`` ClusterTrainingRuntime plus
the job's runtime patches, and (with podman and the built images) the whole training pipeline with
``launcher=trainjob`` on kfp.local's DockerRunner, each TrainJob's two nodes as containers that mount only the shared
volume, through registration."""

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from cxrlt import platform as P
from cxrlt.ops.launch import trainjob_body

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "tests" / "fixtures" / "kubeflow-trainer" / "torch_distributed_runtime.yaml"
SECRETS = {P.SECRETS["mlflow_training"]: {k: "box" for k in P.MLFLOW_CLIENT_KEYS},
           P.SECRETS["s3_pipeline"]: {k: "box" for k in P.S3_SECRET_KEYS}}


def _env(container: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_trainjob_renders_one_pod_per_node_from_the_runtime_and_its_patches():
    from cxrlt.ops.trainer_box import render_pods

    runtime = yaml.safe_load(RUNTIME.read_text())
    args = ["train", "--member", "frontal/pcam", "--out", "/data/runs/r/members/frontal-pcam/frontal/pcam"]
    pods = render_pods(trainjob_body("job-1", args, num_nodes=2, nproc_per_node=3), runtime, master_port=29400)
    assert [p["name"] for p in pods] == ["job-1-node-0-0", "job-1-node-0-1"]
    for rank, pod in enumerate(pods):
        (node,) = pod["spec"]["containers"]
        assert node["image"] == P.IMAGES["train"]  # the trainer's image replaces the runtime's pytorch image
        assert node["command"] == ["torchrun", "-m", "cxrlt.cli"] and node["args"] == args
        env = _env(node)
        assert env["PET_NNODES"] == "2" and env["PET_NPROC_PER_NODE"] == "3" and env["PET_NODE_RANK"] == str(rank)
        assert env["PET_MASTER_ADDR"] == "job-1-node-0-0.job-1" and env["HOME"] == "/tmp"
        assert env["MLFLOW_TRACKING_USERNAME"] == {"secretKeyRef": {"name": P.SECRETS["mlflow_training"],
                                                                     "key": "MLFLOW_TRACKING_USERNAME"}}
        # the runtime patch: hardened, and the shared volume is the only persistent mount
        assert node["securityContext"]["readOnlyRootFilesystem"] is True
        assert pod["spec"]["securityContext"]["runAsUser"] == P.POD_UID
        mounts = {m["mountPath"]: m["name"] for m in node["volumeMounts"]}
        assert mounts == {"/tmp": "tmp", "/dev/shm": "dshm", P.SHARED_ROOT: "data"}
        claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"]
                  if "persistentVolumeClaim" in v]
        assert claims == [P.CACHE_PVC]


def test_pod_containers_get_only_their_declared_volumes_and_resolved_secrets(tmp_path):
    from cxrlt.ops.trainer_box import PodSpecError, container_args, render_pods

    runtime = yaml.safe_load(RUNTIME.read_text())
    (pod,) = render_pods(trainjob_body("job-2", ["train"]), runtime)
    engine = ["true"]  # `true volume exists NAME` succeeds: the claim's podman volume is taken as present
    args = container_args(pod, SECRETS, tmp_path / "env", {"job-2-node-0-0.job-2": "127.0.0.1"}, engine,
                          claims={P.CACHE_PVC: "box-volume"})
    mounts = [args[i + 1] for i, a in enumerate(args) if a == "--mount"]
    assert mounts == ["type=tmpfs,destination=/tmp,tmpfs-mode=1777",
                      "type=tmpfs,destination=/dev/shm,tmpfs-mode=1777",
                      f"type=volume,source=box-volume,destination={P.SHARED_ROOT}"]
    assert "-v" not in args and "--volume" not in args and "--privileged" not in args
    assert args[args.index("--user") + 1] == "1000:1000" and "--read-only" in args
    assert args[args.index("--cap-drop") + 1] == "ALL"
    env = dict(line.split("=", 1) for line in (tmp_path / "env").read_text().splitlines())
    assert env["MLFLOW_TRACKING_PASSWORD"] == "box" and env["PET_NODE_RANK"] == "0"
    assert args[args.index("--entrypoint") + 1] == '["torchrun"]'
    assert args[-4:] == [P.IMAGES["train"], "-m", "cxrlt.cli", "train"]
    with pytest.raises(PodSpecError, match="CreateContainerConfigError: .*cxrlt-mlflow-training"):
        container_args(pod, {}, tmp_path / "env", {}, engine)


def test_step_refuses_paths_the_pods_cannot_see(tmp_path):
    from cxrlt.dataplane import DataPlaneError, SharedVolume

    volume = SharedVolume(tmp_path / "shared", "/data")
    (tmp_path / "shared" / "datasets").mkdir(parents=True)
    assert volume.to_pod(tmp_path / "shared" / "datasets", "data_dir") == "/data/datasets"
    with pytest.raises(DataPlaneError, match="data_dir .* is not on the shared volume"):
        volume.to_pod(tmp_path / "elsewhere", "data_dir")


def test_trainjob_step_fails_when_the_pods_write_nothing(tmp_path, monkeypatch):
    """The step verifies what the TrainJob wrote: a job that 'completes' without a member card fails the step
    naming the folder (the bug where pods wrote to paths the step never saw)."""
    from cxrlt.dataplane import DataPlaneError, publish
    from cxrlt.ops import launch, pipeline_steps
    from tests.conftest import TINY_CONFIG

    shared = tmp_path / "shared"
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_CONFIG))
    pipeline_steps.plan_run(str(config), str(shared), "r1")
    for name in ("cache", "splits", "data"):
        (shared / name).mkdir()
    publish(tmp_path / "c", shared / "cache", "cache")
    created = []
    monkeypatch.setattr(launch, "launch_trainjob", created.append)  # the job "completes" and writes nothing
    with pytest.raises(DataPlaneError, match="wrote no member.json in .*members/frontal-swin/frontal/swin"):
        pipeline_steps.train_networks("frontal", "swin", str(shared), "r1", str(shared / "data"), shared / "cache",
                                      shared / "splits", str(tmp_path / "art"), launcher="trainjob", num_nodes=2,
                                      reuse=False)  # no split manifests here to key a member on
    (body,) = created
    trainer = body["spec"]["trainer"]
    args = trainer["args"]
    assert trainer["numNodes"] == 2 and trainer["command"] == ["torchrun", "-m", "cxrlt.cli"]
    assert args[args.index("--out") + 1] == "/data/runs/r1/members/frontal-swin/frontal/swin"
    assert args[args.index("--config") + 1] == "/data/runs/r1/profile.yaml"
    assert args[args.index("--cache") + 1] == "/data/cache" and args[args.index("--data") + 1] == "/data/data"


def test_a_changed_artifact_target_is_refused(tmp_path):
    from cxrlt.dataplane import DataPlaneError, publish, resolve

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "member.json").write_text("{}")
    publish(tmp_path / "art", tmp_path / "run", "member-runs", hashed=("member.json",))
    assert resolve(tmp_path / "art") == tmp_path / "run"
    (tmp_path / "run" / "member.json").write_text("[]")  # same size, other contents: the card is hashed whole
    with pytest.raises(DataPlaneError, match="changed after it was published"):
        resolve(tmp_path / "art")


@pytest.mark.slow
@pytest.mark.containers
def test_training_pipeline_with_two_node_trainjobs_in_containers(synth_data, tmp_path):
    """launcher=trainjob, num_nodes=2: every member, the router and the zero-shot CLIP train as TrainJobs whose two
    pods (containers of the train image, uid 1000, read-only root, only the shared volume and tmpfs mounted) run
    DDP over gloo; the steps run on kfp.local's DockerRunner and register the bundle in a real MLflow server."""
    import mlflow

    from cxrlt.ops import mlflow_server
    from cxrlt.ops.containers import ContainerError, container_env, engine_command
    from cxrlt.ops.trainer_box import TrainerBox
    from pipelines.local_run import run_training_local
    from tests.conftest import TINY_CONFIG

    try:
        engine = engine_command()
    except ContainerError as exc:
        pytest.skip(str(exc))
    from tests.conftest import require_current_images

    require_current_images(engine, "train", "tools")
    root = tmp_path / "pipeline"
    (root / "shared").mkdir(parents=True)
    claim = f"cxrlt-cache-{tmp_path.name}"[:60]
    subprocess.run([*engine, "volume", "create", "--opt", "type=none", "--opt", "o=bind", "--opt",
                    f"device={root / 'shared'}", claim], check=True, capture_output=True, env=container_env())
    state = mlflow_server.start(tmp_path / "mlflow", port=0, state_dir=tmp_path / "mlflow-state")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY_CONFIG, "data": {**TINY_CONFIG["data"], "cache_size": 32}}))
    try:
        with TrainerBox(RUNTIME, SECRETS, tmp_path / "box", claims={P.CACHE_PVC: claim}) as box:
            result = run_training_local(
                root, runner="docker", kubeconfig=box.kubeconfig, data_dir=str(synth_data), config=str(config),
                tracking_uri=state["tracking_uri"], launcher="trainjob", num_nodes=2, epochs=1, zeroshot_epochs=1,
                min_map=0.0, min_mauroc=0.0, max_ece=1.0, min_unseen_lift=0.0,
                jobs=[{"view": "frontal", "member": "pcam"}, {"view": "lateral", "member": "pcam-only"}])
            jobs = box.trainer.jobs
        # frontal pcam + cait, lateral pcam, router, zero-shot: five TrainJobs of two nodes, all complete
        assert len(jobs) == 5
        assert all(j["status"]["conditions"][-1]["type"] == "Complete" for j in jobs.values())
        assert all(j["spec"]["trainer"]["numNodes"] == 2 for j in jobs.values())
        run = Path(result["run_dir"])
        (runs,) = (root / "shared" / "runs").iterdir()  # one run, named by its id
        card = json.loads((runs / "members" / "frontal-pcam" / "frontal" / "pcam" / "member.json").read_text())
        assert card["world_size"] == 2 and card["data_dir"].startswith(P.SHARED_ROOT)
        assert json.loads((runs / "zeroshot" / "zeroshot.json").read_text())["world_size"] == 2
        bundle = json.loads((run / "export-onnx" / "bundle" / "bundle.json").read_text())
        assert bundle["views"]["frontal"]["shared_trunk"]["members"] == ["pcam", "cait"]
        versions = mlflow.MlflowClient(state["tracking_uri"]).search_model_versions(f"name='{P.REGISTERED_MODEL}'")
        assert len(versions) == 1
    finally:
        mlflow_server.stop(state_dir=tmp_path / "mlflow-state")
        subprocess.run([*engine, "volume", "rm", "-f", claim], capture_output=True, env=container_env())
