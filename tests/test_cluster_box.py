"""A cluster in a box: the rendered dev overlay's MLflow (basic auth), object storage and Triton Deployments run with
`podman kube play` as written, and a hospital client gets the pinned champion's answer over gRPC with mutual TLS.

What a cluster would supply is the only substitution, each one what the kubelet or the cluster does:
- `$(VAR)` in a container's command and args is expanded from its environment (the kubelet does this; podman 4.3
  does not);
- Secret and ConfigMap references in the environment are resolved into values, as the kubelet injects them
  (podman 4.3 reads env Secrets in another format than volume Secrets); secret volumes are podman secrets holding
  the Kubernetes Secret YAML with the plain values under `data` (podman 4.3 ignores `stringData` and writes `data`
  values verbatim, without base64-decoding them), marked `optional: false` (podman 4.3 crashes without it), and
  the named volume podman fills from each Secret is removed before and after (it outlives `kube down`);
- Services are the host's loopback: pods run with `hostNetwork`, and a Service's DNS name in an environment value
  or argument becomes 127.0.0.1 (podman 4.3 does not write `hostAliases` into a host-network container's
  /etc/hosts), so the fixed ports 5000, 8000-8002 and 8333 must be free; `ports` declarations are dropped, since
  podman 4.3 turns them into port mappings, which the host network refuses;
- each emptyDir is a fresh world-writable folder of this pod (hostPath): podman 4.3 gives an emptyDir the owner and
  mode of the image's folder at that path (root's `/dev/shm`), where Kubernetes makes it writable;
- pods restart `OnFailure` rather than `Always`: podman 4.3 gives init containers the pod's restart policy, so under
  `Always` an init container that succeeded is started again and again and the server never starts;
- probes and the preStop hook are dropped: they are the kubelet's, and podman 4.3 turns HTTP probes into `curl`
  commands that the images do not ship.
Images, users, read-only root filesystems, capabilities, init containers, emptyDirs, environment and arguments are
as rendered. The version Triton serves is pinned the way `cxrlt serve rollout` pins it: `@champion` resolved once
into the `cxrlt-rollout` ConfigMap.
"""

import contextlib
import copy
import re
import secrets
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from cxrlt import platform as P

pytestmark = [pytest.mark.slow, pytest.mark.containers]
ROOT = Path(__file__).resolve().parents[1]
PORTS = (P.MLFLOW_PORT, *P.TRITON_PORTS.values(), 8333)
SERVICES = (P.MLFLOW_SERVICE, P.TRITON_SERVICE, "object-storage")


SERVICE_DNS = re.compile(rf"\b({'|'.join(SERVICES)})\.{P.NAMESPACE}\.svc\.cluster\.local\b")


def _expand(values: list[str], env: dict[str, str]) -> list[str]:
    return [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), v) for v in values]


def _loopback(value: str) -> str:
    """A Service's cluster DNS name -> the host's loopback, where the pod listens (host network)."""
    return SERVICE_DNS.sub("127.0.0.1", value)


def _as_played(deployment: dict, secret_data: dict, config_maps: dict, scratch: Path) -> dict:
    """The Deployment with the cluster's substitutions (see the module docstring) and nothing else changed."""
    dep = copy.deepcopy(deployment)
    pod = dep["spec"]["template"]["spec"]
    pod["hostNetwork"] = True
    pod["restartPolicy"] = "OnFailure"
    for volume in pod.get("volumes", []):
        if "secret" in volume:
            volume["secret"]["optional"] = False
        if "emptyDir" in volume:
            folder = scratch / f"{dep['metadata']['name']}-{volume.pop('name')}"
            folder.mkdir(parents=True)
            folder.chmod(0o1777)
            volume.pop("emptyDir")
            volume.update(name=folder.name, hostPath={"path": str(folder), "type": "Directory"})
            for container in pod.get("initContainers", []) + pod["containers"]:
                for mount in container.get("volumeMounts", []):
                    if mount["name"] == folder.name.removeprefix(f"{dep['metadata']['name']}-"):
                        mount["name"] = folder.name
    for container in pod.get("initContainers", []) + pod["containers"]:
        for key in ("livenessProbe", "readinessProbe", "startupProbe", "lifecycle", "ports"):
            container.pop(key, None)
        env = {}
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = item["value"]
            elif "secretKeyRef" in item["valueFrom"]:
                ref = item["valueFrom"]["secretKeyRef"]
                env[item["name"]] = secret_data[ref["name"]][ref["key"]]
            else:
                ref = item["valueFrom"]["configMapKeyRef"]
                env[item["name"]] = config_maps[ref["name"]][ref["key"]]
        env = {k: _loopback(v) for k, v in env.items()}
        if "env" in container:
            container["env"] = [{"name": k, "value": v} for k, v in env.items()]
        for key in ("command", "args"):
            if key in container:
                container[key] = [_loopback(a) for a in _expand(container[key], env)]
    return dep


def _podman(*args, check=True, timeout=300) -> subprocess.CompletedProcess:
    from cxrlt.ops.containers import container_env, engine_command

    done = subprocess.run([*engine_command("podman"), *args], capture_output=True, text=True, timeout=timeout,
                          env=container_env(), stdin=subprocess.DEVNULL)
    if check:
        assert done.returncode == 0, f"podman {' '.join(args[:3])}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    return done


def _wait(url: str, what: str, pods: list[str], timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with contextlib.suppress(OSError):
            if urllib.request.urlopen(url, timeout=3).status == 200:
                return
        time.sleep(2)
    logs = "".join(_podman("logs", "--tail", "40", c, check=False).stderr[-3000:] for c in pods)
    raise AssertionError(f"{what} did not answer at {url}:\n{logs}")


@pytest.fixture
def engine():
    from cxrlt.ops.containers import ContainerError, engine_command
    from tests.conftest import require_current_images

    try:
        engine = engine_command("podman")
    except ContainerError as exc:
        pytest.skip(f"podman kube play needs podman: {exc}")
    require_current_images(engine, "tools", "serve_cpu")
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not found: install Debian's kubectl package to render the overlays")
    busy = []
    for port in PORTS:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                busy.append(port)
    if busy:
        pytest.skip(f"ports {busy} are in use here; the dev overlay's pods listen on fixed ports")
    return engine


def test_dev_overlay_serves_the_pinned_champion_over_mutual_tls(engine, tiny_bundle, synth_data, evidence_keys,
                                                               tmp_path, monkeypatch):
    import boto3

    from cxrlt.export import export_bundle
    from cxrlt.ops.rollout import pinned_version
    from cxrlt.registry import promote, register_bundle
    from serving.client import CXRClient, TLSOptions
    from tests.conftest import served_images_and_check
    from tests.pki import make_pki

    docs = [d for d in yaml.safe_load_all(subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "infra" / "overlays" / "dev")], capture_output=True, text=True,
        check=True).stdout) if d]
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    config_maps = {d["metadata"]["name"]: dict(d["data"]) for d in docs if d["kind"] == "ConfigMap"}
    # the operator's ConfigMap with the public key (cxrlt registry keygen; docs/deploy.md)
    config_maps[P.EVIDENCE_VERIFY_CONFIGMAP] = {P.EVIDENCE_VERIFY_KEY_FILE: evidence_keys[1].read_text()}
    pki = make_pki(tmp_path / "pki")
    password, s3_key = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    role_passwords = {role: secrets.token_urlsafe(24) for role in P.MLFLOW_ROLES}
    s3 = {"AWS_ACCESS_KEY_ID": "cxrltadmin", "AWS_SECRET_ACCESS_KEY": s3_key,
          "MLFLOW_S3_ENDPOINT_URL": f"http://object-storage.{P.NAMESPACE}.svc.cluster.local:8333"}
    secret_data = {
        P.SECRETS["mlflow_db"]: {"uri": "sqlite:////tmp/mlflow.db"},
        P.SECRETS["s3_mlflow"]: s3,
        P.SECRETS["mlflow_auth"]: {
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
            "basic_auth.ini": "[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:////tmp/basic_auth.db\n"
                              f"admin_username = admin\nadmin_password = {password}\n"
                              "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"},
        P.SECRETS["mlflow_admin"]: {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": password},
        **{P.SECRETS[f"mlflow_{role}"]: {"MLFLOW_TRACKING_USERNAME": P.MLFLOW_ROLE_USERS[role],
                                         "MLFLOW_TRACKING_PASSWORD": role_passwords[role]} for role in P.MLFLOW_ROLES},
        P.SECRETS["triton_admin"]: {"TRITON_ADMIN_KEY": secrets.token_hex(16)},
        P.SECRETS["triton_tls"]: {"tls.crt": (pki / "server.pem").read_text(),
                                  "tls.key": (pki / "server.key").read_text(), "ca.crt": (pki / "ca.pem").read_text()},
    }
    files, pods = [], []
    for name, data in secret_data.items():
        spec = tmp_path / f"secret-{name}.yaml"
        spec.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
                                        "data": data}))
        _podman("secret", "rm", name, check=False)
        _podman("volume", "rm", "-f", name, check=False)
        _podman("secret", "create", name, str(spec))

    def play(name: str) -> None:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(_as_played(deployments[name], secret_data, config_maps, tmp_path / "volumes")))
        files.append(path)
        _podman("kube", "play", str(path), timeout=600)
        pods.extend(c for c in _podman("ps", "-a", "--format", "{{.Names}}").stdout.split() if c.startswith(name))

    try:
        play("object-storage")
        play(P.MLFLOW_SERVICE)
        _wait(f"http://127.0.0.1:{P.MLFLOW_PORT}/health", "MLflow", pods)
        store = boto3.client("s3", endpoint_url="http://127.0.0.1:8333", aws_access_key_id=s3["AWS_ACCESS_KEY_ID"],
                             aws_secret_access_key=s3_key, region_name="us-east-1")
        for attempt in range(60):  # the S3 gateway answers a little after the pod starts
            try:
                store.create_bucket(Bucket="mlflow-artifacts")
                break
            except Exception:
                if attempt == 59:
                    raise
                time.sleep(1)
        # the role bootstrap Job's command as the admin, then the pipeline's registration and promotion, each with
        # its own account, as clients of the cluster's MLflow (basic auth); the init container uses the serving one
        uri = f"http://127.0.0.1:{P.MLFLOW_PORT}"
        from cxrlt.ops.registry_roles import bootstrap_roles

        def login(secret: str) -> None:
            for key, value in secret_data[P.SECRETS[secret]].items():
                monkeypatch.setenv(key, value)

        login("mlflow_admin")
        bootstrap_roles(uri, role_passwords)
        login("mlflow_registration")
        export_bundle(tiny_bundle / "ensemble", tiny_bundle / "zeroshot", tmp_path / "bundle")
        labels = tmp_path / "labels.csv"
        labels.write_text("ImageID\n")
        registered = register_bundle(tmp_path / "bundle", {"mAP": 0.5}, {"passed": True, "checks": []},
                                     {"git_commit": "test"}, tracking_uri=uri, signing_key=evidence_keys[0])
        login("mlflow_promotion")
        assert promote(labels, tracking_uri=uri, public_key=evidence_keys[1])["promoted"]
        assert list(store.list_objects_v2(Bucket="mlflow-artifacts").get("Contents", [])), "artifacts are in S3"
        # the rollout: @champion resolved once into the ConfigMap the init container reads
        version = pinned_version("@champion", tracking_uri=uri)
        assert version == registered
        config_maps[P.ROLLOUT_CONFIGMAP][P.ROLLOUT_KEY] = version
        play(P.TRITON_SERVICE)
        _wait(f"http://127.0.0.1:{P.TRITON_PORTS['http']}/v2/health/ready", "Triton", pods, timeout=600)

        tls = TLSOptions(ca=pki / "ca.pem", cert=pki / "client.pem", key=pki / "client.key")
        client = CXRClient(f"localhost:{P.TRITON_PORTS['grpc']}", tls=tls)
        try:
            results = served_images_and_check(synth_data, tiny_bundle / "ensemble", client.infer_files)
        finally:
            client.close()
        # the pinned version, not one a later promotion would name
        assert {r.model_version for r in results} == {f"{P.REGISTERED_MODEL}/{version}"}
        plain = CXRClient(f"localhost:{P.TRITON_PORTS['grpc']}", tls=TLSOptions(ca=pki / "ca.pem"), retries=0)
        try:
            (refused,) = plain.infer_files([Path(results[0].source)])
        finally:
            plain.close()
        assert refused.error and not refused.known, refused  # no client certificate: the handshake is refused
    finally:
        for path in reversed(files):
            _podman("kube", "down", str(path), check=False)
        for name in secret_data:
            _podman("secret", "rm", name, check=False)
            _podman("volume", "rm", "-f", name, check=False)
