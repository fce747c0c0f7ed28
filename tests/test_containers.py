"""The images, for real: built by `make images` (podman here, Docker elsewhere), run as containers.

Skipped, with the reason, when no container engine is usable or the images are not built; `make test` builds them
first wherever podman or Docker works (`make images`; the build is cached, so only the first run pays for it).
"""


import json
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from cxrlt.ops.procs import free_port
from cxrlt.platform import IMAGES

pytestmark = [pytest.mark.slow, pytest.mark.containers]
TRAINING_TOLERANCE = 1e-6
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def engine() -> list[str]:
    from cxrlt.ops.containers import ContainerError, engine_command

    try:
        return engine_command()
    except ContainerError as exc:
        pytest.skip(str(exc))


def _need(engine, *keys: str) -> None:
    """Skip (saying so) when an image the test runs is not built from this commit."""
    from tests.conftest import require_current_images

    require_current_images(engine, *keys)


def _run(engine, *args, timeout=300, check=True) -> subprocess.CompletedProcess:
    from cxrlt.ops.containers import container_env

    done = subprocess.run([*engine, *args], capture_output=True, text=True, timeout=timeout, env=container_env())
    if check:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.mark.parametrize("name", ["train", "tools", "serve_cpu", "gateway"])
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
                   "command -v gcc || true; ls ~root/.cache \"$HOME\"/.cache 2>/dev/null || true; id -u").stdout
    assert listing.strip().splitlines() == ["1000"], listing


def test_gateway_image_answers_c_echo_without_torch(engine, tmp_path):
    """The gateway image (no torch) starts `cxrlt gateway`, listens, and answers a DICOM echo from an allowed AE;
    it refuses a calling AE that is not on its list."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    _need(engine, "gateway")
    assert _run(engine, "run", "--rm", "--entrypoint", "python", IMAGES["gateway"], "-c",
                "import importlib.util as u; print(u.find_spec('torch') is None)").stdout.strip() == "True"
    port, name = free_port(), f"cxrlt-test-gateway-{tmp_path.name}"
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o777)
    spool.chmod(0o777)  # the volume the container's user 1000 writes, as a cluster's PersistentVolume
    _run(engine, "run", "-d", "--rm", "--name", name, "--network", "host", "--read-only",
         "-v", f"{spool}:/var/spool/cxrlt", IMAGES["gateway"], "--host", "127.0.0.1", "--port", str(port),
         "--allow-calling", "MODALITY1", "--send-to", "ORTHANC@127.0.0.1:4242", "--spool", "/var/spool/cxrlt")
    try:
        def echo(calling: str) -> bool:
            ae = AE(ae_title=calling)
            ae.add_requested_context(Verification)
            assoc = ae.associate("127.0.0.1", port, ae_title="CXRLT")
            if not assoc.is_established:
                return False
            ok = assoc.send_c_echo().Status == 0
            assoc.release()
            return ok

        deadline = time.time() + 60
        while not echo("MODALITY1"):
            assert time.time() < deadline, _run(engine, "logs", name, check=False).stderr[-3000:]
            time.sleep(0.5)
        assert not echo("INTRUDER")
    finally:
        _run(engine, "stop", "-t", "10", name, check=False)


def test_train_image_runs_the_cli(engine):
    _need(engine, "train")
    help_text = _run(engine, "run", "--rm", IMAGES["train"]).stdout  # the default command: cxrlt --help
    assert "Usage" in help_text and "train" in help_text
    rows = json.loads(_run(engine, "run", "--rm", IMAGES["train"], "cxrlt", "models", "summary", "--config",
                           "configs/tiny.yaml", "--json").stdout)
    assert {r["network"] for r in rows} >= {"router", "pcam", "swin", "cait"}


def test_serve_cpu_image_answers_grpc_from_a_read_only_repository(engine, tiny_bundle, synth_data, tmp_path):
    from cxrlt.export import export_bundle
    from serving.client import CXRClient
    from serving.repository import build_repository
    from tests.conftest import served_images_and_check

    _need(engine, "serve_cpu")
    export_bundle(tiny_bundle / "ensemble", tiny_bundle / "zeroshot", tmp_path / "bundle")
    repo = tmp_path / "repo"
    build_repository(tmp_path / "bundle", repo)
    from cxrlt.ops.containers import start_triton, stop_container

    http, grpc, metrics = free_port(), free_port(), free_port()
    name = start_triton(repo, f"cxrlt-test-serve-{tmp_path.name}", IMAGES["serve_cpu"], http, grpc, metrics)
    try:
        assert _run(engine, "exec", name, "id", "-u").stdout.strip() == "1000"
        client = CXRClient(f"127.0.0.1:{grpc}")
        try:
            served_images_and_check(synth_data, tiny_bundle / "ensemble", client.infer_files)
        finally:
            client.close()
    finally:
        stop_container(name)


def test_pipeline_steps_run_in_their_images_like_subprocesses(engine, synth_data, tmp_path):
    """plan -> validate -> preprocess -> split -> train the router on kfp.local's DockerRunner (each component in
    its image, artifacts through the mounted pipeline root, the run on the shared folder) give exactly the
    SubprocessRunner's outputs: the same files, caches, manifests and locations, and a router trained to the same
    weights (one thread: training is deterministic on CPU). The whole pipeline runs in the images, as TrainJobs, in
    tests/test_trainer_box.py."""
    import yaml
    from kfp import dsl, local

    from components.plan_run.component import plan_run
    from components.preprocess.component import preprocess
    from components.split_projection.component import split_projection
    from components.train_member.component import train_member
    from components.validate_data.component import validate_data
    from cxrlt.ops.containers import docker_api, give_to_container_user
    from tests.conftest import TINY_CONFIG

    _need(engine, "tools", "train")

    @dsl.pipeline(name="cxrlt-data-steps")
    def steps(data_dir: str, shared_root: str, config: str):
        plan = plan_run(config=config, shared_root=shared_root, run_id="r1").set_caching_options(False)
        checked = validate_data(data_dir=data_dir, min_positives=0).set_caching_options(False)
        cache = preprocess(data_dir=data_dir, data_hash=checked.outputs["Output"], shared_root=shared_root,
                           size=plan.outputs["cache_size"]).set_caching_options(False)
        split = split_projection(data_dir=data_dir, run_dir=plan.outputs["run_dir"],
                                 removal_csv="", val_fraction=plan.outputs["val_fraction"],
                                 seed=plan.outputs["split_seed"]).after(checked).set_caching_options(False)
        train_member(view="", member="router", run_id="r1", data_dir=data_dir, cache=cache.outputs["cache"],
                     splits=split.outputs["splits"], shared_root=shared_root, epochs=1,
                     threads=1).set_caching_options(False)

    outputs = {}
    for runner in ("subprocess", "docker"):
        root = tmp_path / runner
        data = root / "data"  # the data lives under the pipeline root: the only host folder the runner mounts
        shutil.copytree(synth_data, data)
        (root / "shared").mkdir()
        config = root / "tiny.yaml"
        config.write_text(yaml.safe_dump({**TINY_CONFIG, "data": {**TINY_CONFIG["data"], "cache_size": 32}}))
        give_to_container_user(root)  # the components run as uid 1000 in their images
        params = {"data_dir": str(data), "shared_root": str(root / "shared"), "config": str(config)}
        if runner == "docker":
            with docker_api():
                local.init(runner=local.DockerRunner(network_mode="host"), pipeline_root=str(root),
                           raise_on_error=True)
                steps(**params)
        else:
            local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
            steps(**params)
        run = next(root.glob("cxrlt-data-steps-*"))
        # the artifacts (locations with digests) and what they point to on the shared volume
        files = {p.relative_to(run).as_posix(): p for p in run.rglob("*") if p.is_file()
                 and p.name != "executor_output.json"}
        files.update({p.relative_to(root).as_posix(): p for p in (root / "shared").rglob("*") if p.is_file()})
        outputs[runner] = files
    assert outputs["docker"].keys() == outputs["subprocess"].keys() and outputs["docker"]
    cards = [p for p in outputs["docker"] if p.endswith("/member.json")]
    # the run's member, and its copy in the member cache (the same key in the image as in the venv: same sources)
    assert len(cards) == 2 and sorted(c.split("/")[1] for c in cards) == ["member-cache", "runs"]
    assert any(c.startswith("shared/runs/r1/members/") for c in cards)
    for rel, path in outputs["subprocess"].items():
        other = outputs["docker"][rel]
        if path.suffix == ".npy":
            np.testing.assert_array_equal(np.load(path), np.load(other), err_msg=rel)
        elif path.suffix == ".png":
            assert path.read_bytes() == other.read_bytes(), rel
        elif rel.endswith("val_logits.csv"):
            np.testing.assert_allclose(np.loadtxt(path, delimiter=",", skiprows=1, usecols=(1, 2)),
                                       np.loadtxt(other, delimiter=",", skiprows=1, usecols=(1, 2)),
                                       atol=TRAINING_TOLERANCE, err_msg=rel)
        elif rel.endswith("member.json"):
            mine, theirs = (json.loads(p.read_text()) for p in (path, other))
            assert mine["best_val_score"] == pytest.approx(theirs["best_val_score"], abs=TRAINING_TOLERANCE)
            assert mine["checkpoint_sha256"] and theirs["world_size"] == 1
        elif path.suffix in (".json", ".csv", ".txt", ".yaml") and "/members/" not in rel and \
                not rel.startswith("train-member"):
            assert path.read_text().replace(str(tmp_path / "subprocess"), "ROOT") == \
                other.read_text().replace(str(tmp_path / "docker"), "ROOT"), rel


def test_serve_images_front_door_accepts_the_configuration_the_cli_writes(engine, tmp_path):
    """The Deployment's front-door container runs ``nginx -e stderr -c /front/nginx.conf`` from the serve image as
    uid 1000 with a read-only root filesystem: the image's nginx must accept what ``cxrlt serve front-door`` writes
    (gRPC proxying, HTTP/2, TLS with client certificates)."""
    import os

    from typer.testing import CliRunner

    from cxrlt.cli import app
    from tests.pki import make_pki

    _need(engine, "serve_cpu")
    pki = make_pki(tmp_path / "pki")
    tls = tmp_path / "tls"
    tls.mkdir()
    for name, source in {"tls.crt": "server.pem", "tls.key": "server.key", "ca.crt": "ca.pem"}.items():
        shutil.copy(pki / source, tls / name)
        os.chmod(tls / name, 0o644)
    front = tmp_path / "front"
    front.mkdir()
    written = CliRunner().invoke(app, ["serve", "front-door", "--out", str(front / "nginx.conf"),
                                       "--tls-cert", "/tls/tls.crt", "--tls-key", "/tls/tls.key",
                                       "--tls-ca", "/tls/ca.crt"],
                                env={"TRITON_ADMIN_KEY": "k" * 32})
    assert written.exit_code == 0, written.output
    os.chmod(front / "nginx.conf", 0o644)  # the pod's fsGroup makes it readable there; here the container's uid
    checked = _run(engine, "run", "--rm", "--read-only", "--tmpfs", "/tmp", "-v", f"{front}:/front:ro",
                   "-v", f"{tls}:/tls:ro", "--entrypoint", "nginx", IMAGES["serve_cpu"], "-t", "-e", "stderr",
                   "-c", "/front/nginx.conf", check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "syntax is ok" in checked.stderr and "test is successful" in checked.stderr


def test_podmans_no_such_container_answer_is_docker_not_found():
    """The race kfp.local's DockerRunner tolerates (a step removed before its logs are read) reaches it as
    NotFound through podman too; any other server error stays an APIError."""
    import docker.api.client as api_client
    import docker.errors
    import requests

    from cxrlt.ops.containers import podman_missing_container_is_not_found

    def error(status: int, message: str):
        response = requests.Response()
        response.status_code, response._content = status, json.dumps({"message": message}).encode()
        return requests.exceptions.HTTPError(response=response)

    podman_missing_container_is_not_found()
    podman_missing_container_is_not_found()  # idempotent
    with pytest.raises(docker.errors.NotFound):
        api_client.create_api_error_from_http_exception(error(500, "container abc does not exist in database: "
                                                                   "no such container"))
    with pytest.raises(docker.errors.APIError) as other:
        api_client.create_api_error_from_http_exception(error(500, "disk full"))
    assert not isinstance(other.value, docker.errors.NotFound)
    with pytest.raises(docker.errors.NotFound):
        api_client.create_api_error_from_http_exception(error(404, "no such container"))
