"""The images, for real: built by `make images` (podman here, Docker elsewhere), run as containers.

Skipped, with the reason, when no container engine is usable or the images are not built; `make test` builds them
first wherever podman or Docker works (`make images`; the build is cached, so only the first run pays for it).
"""


import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cxrlt.platform import IMAGES
from cxrlt.procs import free_port

pytestmark = [pytest.mark.slow, pytest.mark.containers]
TRAINING_TOLERANCE = 1e-6
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "images"))


@pytest.fixture(scope="module")
def engine() -> list[str]:
    from build import engine_command

    try:
        return engine_command()
    except SystemExit as exc:
        pytest.skip(str(exc))


def _need(engine, *keys: str) -> None:
    """Skip (saying so) when an image the test runs is not built."""
    from build import container_env

    missing = [IMAGES[k] for k in keys if subprocess.run([*engine, "image", "inspect", IMAGES[k]], capture_output=True,
                                                         env=container_env()).returncode != 0]
    if missing:
        pytest.skip(f"images not built ({', '.join(missing)}): run make images")


def _run(engine, *args, timeout=300, check=True) -> subprocess.CompletedProcess:
    from build import container_env

    done = subprocess.run([*engine, *args], capture_output=True, text=True, timeout=timeout, env=container_env())
    if check:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.mark.parametrize("name", ["train", "tools", "serve_cpu"])
def test_images_run_as_non_root_with_provenance_labels(engine, name):
    _need(engine, name)
    info = json.loads(_run(engine, "image", "inspect", IMAGES[name]).stdout)[0]
    config = info.get("Config") or info["config"]
    assert config["User"] == "1000"
    labels = config["Labels"]
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert labels["org.opencontainers.image.version"] == IMAGES[name].rsplit(":", 1)[1]
    assert len(labels["org.opencontainers.image.revision"]) == 40 and head  # the commit it was built from
    assert labels["org.opencontainers.image.source"].startswith("https://")
    # no build tools or package caches left behind
    listing = _run(engine, "run", "--rm", "--entrypoint", "sh", IMAGES[name], "-c",
                   "command -v gcc || true; ls /root/.cache /home/*/.cache 2>/dev/null || true; id -u").stdout
    assert listing.strip().splitlines() == ["1000"], listing


def test_train_image_runs_the_cli(engine):
    _need(engine, "train")
    help_text = _run(engine, "run", "--rm", IMAGES["train"]).stdout  # the default command: cxrlt --help
    assert "Usage" in help_text and "train" in help_text
    rows = json.loads(_run(engine, "run", "--rm", IMAGES["train"], "cxrlt", "models", "summary", "--config",
                           "configs/tiny.yaml", "--json").stdout)
    assert {r["network"] for r in rows} >= {"router", "pcam", "swin", "cait"}


def test_serve_cpu_image_answers_grpc_from_a_read_only_repository(engine, tiny_bundle, synth_data, tmp_path):
    import pandas as pd

    from cxrlt.export import export_bundle
    from cxrlt.inference import EnsemblePredictor
    from cxrlt.labels import KNOWN_CLASSES
    from serving.client import CXRClient
    from serving.repository import build_repository

    _need(engine, "serve_cpu")
    export_bundle(tiny_bundle / "ensemble", tiny_bundle / "zeroshot", tmp_path / "bundle")
    repo = tmp_path / "repo"
    build_repository(tmp_path / "bundle", repo)
    for path in [repo, *repo.rglob("*")]:  # pytest's directories are 0700: the container's uid 1000 must read them
        path.chmod(0o755 if path.is_dir() else 0o644)
    http, grpc, metrics = free_port(), free_port(), free_port()
    name = f"cxrlt-test-serve-{tmp_path.name}"
    _run(engine, "run", "-d", "--rm", "--name", name, "--network", "host", "--shm-size", "1g",
         "-v", f"{repo}:/models:ro", "--read-only", "--tmpfs", "/tmp", IMAGES["serve_cpu"],
         "--model-repository=/models", "--model-control-mode=none", f"--http-port={http}", f"--grpc-port={grpc}",
         f"--metrics-port={metrics}", "--http-address=127.0.0.1", "--grpc-address=127.0.0.1",
         "--metrics-address=127.0.0.1")
    try:
        import urllib.request

        deadline, ready = time.time() + 240, False
        while time.time() < deadline and not ready:
            try:
                ready = urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=2).status == 200
            except OSError:
                time.sleep(2)
        logs = _run(engine, "logs", name, check=False)
        assert ready, logs.stdout[-3000:] + logs.stderr[-3000:]
        assert _run(engine, "exec", name, "id", "-u").stdout.strip() == "1000"
        ids = pd.read_csv(synth_data / "CXRLT_2026_test_labels.csv", dtype=str)["ImageID"][:3]
        pngs = [synth_data / "images" / i for i in ids]
        client = CXRClient(f"127.0.0.1:{grpc}")
        try:
            results = client.infer_files(pngs)
        finally:
            client.close()
        ref = EnsemblePredictor(tiny_bundle / "ensemble").predict_files(pngs)
        for i, r in enumerate(results):
            assert r.error == "" and r.view == ref.loc[i, "view"]
            np.testing.assert_allclose([r.known[c] for c in KNOWN_CLASSES],
                                       ref.loc[i, list(KNOWN_CLASSES)].to_numpy(float), atol=1e-4)
    finally:
        _run(engine, "stop", "-t", "20", name, check=False)


@pytest.fixture(scope="module")
def docker_socket(engine, tmp_path_factory):
    """kfp.local's DockerRunner talks the Docker API: podman serves it on a socket (stopped by PID afterwards)."""
    from build import container_env

    from cxrlt.procs import alive, spawn, stop_group

    if Path(engine[0]).name == "docker":
        yield None
        return
    folder = tmp_path_factory.mktemp("podman")
    sock = folder / "podman.sock"
    proc = spawn([*engine, "system", "service", "--time=0", f"unix://{sock}"], folder / "service.log",
                 env=container_env())
    deadline = time.time() + 30
    while time.time() < deadline and not sock.exists():
        time.sleep(0.2)
    assert sock.exists(), (folder / "service.log").read_text()
    yield f"unix://{sock}"
    stop_group(proc.pid)
    assert not alive(proc.pid)


def test_data_steps_run_in_their_images_like_subprocesses(engine, docker_socket, synth_data, tmp_path,
                                                         monkeypatch):
    """validate -> preprocess -> split on kfp.local's DockerRunner (each component in its image, artifacts through
    the mounted pipeline root) give exactly the SubprocessRunner's outputs."""
    from kfp import dsl, local

    from components.preprocess.component import preprocess
    from components.split_projection.component import split_projection
    from components.validate_data.component import validate_data

    _need(engine, "tools")

    @dsl.pipeline(name="cxrlt-data-steps")
    def data_steps(data_dir: str):
        checked = validate_data(data_dir=data_dir, min_positives=0).set_caching_options(False)
        preprocess(data_dir=data_dir, size=32).after(checked).set_caching_options(False)
        split_projection(data_dir=data_dir, label_source="all", removal_csv="", val_fraction=0.2,
                         seed=0).after(checked).set_caching_options(False)

    outputs = {}
    for runner in ("subprocess", "docker"):
        root = tmp_path / runner
        data = root / "data"  # the data lives under the pipeline root: the only host folder the runner mounts
        shutil.copytree(synth_data, data)
        for path in [root, *root.rglob("*")]:
            shutil.chown(path, 1000, 1000)  # the components run as uid 1000 in their images
        if runner == "docker":
            if docker_socket:
                monkeypatch.setenv("DOCKER_HOST", docker_socket)
            local.init(runner=local.DockerRunner(network_mode="host"), pipeline_root=str(root), raise_on_error=True)
        else:
            local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
        data_steps(data_dir=str(data))
        run = next(root.glob("cxrlt-data-steps-*"))
        outputs[runner] = {p.relative_to(run).as_posix(): p for p in run.rglob("*") if p.is_file()
                           and p.name != "executor_output.json"}
    assert outputs["docker"].keys() == outputs["subprocess"].keys() and outputs["docker"]
    for rel, path in outputs["subprocess"].items():
        other = outputs["docker"][rel]
        if path.suffix == ".npy":
            np.testing.assert_array_equal(np.load(path), np.load(other), err_msg=rel)
        elif path.suffix in (".json", ".csv", ".txt"):
            assert path.read_text().replace(str(tmp_path / "subprocess"), "ROOT") == \
                other.read_text().replace(str(tmp_path / "docker"), "ROOT"), rel


def test_training_pipeline_runs_in_the_images_like_subprocesses(engine, docker_socket, synth_data, tmp_path,
                                                                 monkeypatch):
    """The whole training pipeline (validate -> ... -> register) on kfp.local's DockerRunner, every component in its
    image against a real MLflow server, compared with the same pipeline on the SubprocessRunner."""
    import yaml
    from kfp import local

    from cxrlt import mlflow_server
    from pipelines.local_run import latest_run
    from pipelines.training_pipeline import training_pipeline
    from tests.conftest import TINY_CONFIG

    _need(engine, "train", "tools")
    state = mlflow_server.start(tmp_path / "mlflow", port=0, state_dir=tmp_path / "mlflow-state")
    try:
        runs = {}
        for runner in ("subprocess", "docker"):
            root = tmp_path / runner
            shutil.copytree(synth_data, root / "data")
            cfg = {**TINY_CONFIG, "data": {**TINY_CONFIG["data"], "cache_size": 32}}
            (root / "tiny.yaml").write_text(yaml.safe_dump(cfg))
            for path in [root, *root.rglob("*")]:
                shutil.chown(path, 1000, 1000)
            if runner == "docker":
                if docker_socket:
                    monkeypatch.setenv("DOCKER_HOST", docker_socket)
                local.init(runner=local.DockerRunner(network_mode="host"), pipeline_root=str(root),
                           raise_on_error=True)
            else:
                local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root),
                           raise_on_error=True)
            training_pipeline(data_dir=str(root / "data"), config=str(root / "tiny.yaml"),
                              tracking_uri=state["tracking_uri"], epochs=1, zeroshot_epochs=1, cache_size=32,
                              min_map=0.0, min_mauroc=0.0, max_ece=1.0, min_unseen_lift=0.0, member_threads=1,
                              jobs=[{"view": "frontal", "member": "pcam"}, {"view": "lateral", "member": "pcam-only"}])
            runs[runner] = latest_run(root)
        reports = {r: json.loads((run / "evaluate/report/summary.json").read_text()) for r, run in runs.items()}
        bundles = {r: json.loads((run / "export-onnx/bundle/bundle.json").read_text()) for r, run in runs.items()}
        print(json.dumps(reports, indent=1, default=str)[:3000])
        assert bundles["docker"]["views"].keys() == bundles["subprocess"]["views"].keys()
        for name in ("mAP", "mAUROC", "mECE"):
            assert reports["docker"][name] == pytest.approx(reports["subprocess"][name], abs=TRAINING_TOLERANCE), name
        import mlflow

        versions = mlflow.MlflowClient(state["tracking_uri"]).search_model_versions("name='cxrlt-bundle'")
        assert len(versions) == 2  # both runs passed the (open) gate and registered their bundle
    finally:
        mlflow_server.stop(state_dir=tmp_path / "mlflow-state")
