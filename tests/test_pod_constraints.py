"""The Triton pod's commands, run on this machine under the pod's constraints (no cluster needed).

The prod overlay is rendered; its Triton init container (``cxrlt serve build`` from the champion) and server
container (``tritonserver``) run with exactly their command, arguments and environment, inside bubblewrap: a
read-only root filesystem, uid 1000, only the pod's declared volumes writable (each emptyDir a fresh directory,
read-only mounts read-only), against this test's own MLflow. What a cluster would supply is the only substitution:
the MLflow Service name becomes the test server's loopback address, Secrets become test values, and the images'
layout (``cxrlt`` and ``tritonserver`` on PATH, Triton's backends in ``/opt/tritonserver/backends``) comes from this
machine's environments. The server runs in its own network namespace, so its fixed ports cannot clash.

Debian's ``bubblewrap`` provides ``bwrap`` (the Makefile installs it); without it, or without user namespaces, the
tests skip and say why. Inside the user namespace the process is uid 1000; its file access outside is that of the
user running the tests (a real image would have uid 1000 own its files).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cxrlt import platform as P

ROOT = Path(__file__).resolve().parents[1]
POD_UID = 1000
#: further paths the images would contain (the Triton serving environment), added by the tests that use them
IMAGE_PATHS: set[Path] = set()


def _bwrap() -> str:
    path = shutil.which("bwrap")
    if path is None:
        pytest.skip("bwrap not found: install Debian's bubblewrap package (apt-get install bubblewrap)")
    probe = subprocess.run([path, "--unshare-user", "--uid", str(POD_UID), "--ro-bind", "/", "/", "true"],
                           capture_output=True, text=True)
    if probe.returncode:
        pytest.skip(f"bubblewrap cannot create a user namespace here: {probe.stderr.strip()}")
    return path


def _triton_pod(overlay: str = "prod") -> dict:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not found: install Debian's kubectl package to render the overlays")
    out = subprocess.run([kubectl, "kustomize", str(ROOT / "infra" / "overlays" / overlay)], capture_output=True,
                         text=True, check=True).stdout
    dep = next(d for d in yaml.safe_load_all(out) if d and d["kind"] == "Deployment"
               and d["metadata"]["name"] == P.TRITON_SERVICE)
    return dep["spec"]["template"]["spec"]


def _sandbox_args(pod: dict, container: dict, volumes: dict[str, Path], binds: dict[str, Path],
                  env: dict[str, str], net: bool) -> list[str]:
    """bwrap arguments for one container: a read-only copy of this machine's root, the pod's volumes as declared
    (emptyDirs writable, ``readOnly`` mounts read-only), the image layout in ``binds`` (read-only), the pod's uid."""
    assert pod["securityContext"]["runAsUser"] == POD_UID and pod["securityContext"]["runAsNonRoot"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    args = [_bwrap(), "--unshare-user", "--uid", str(POD_UID), "--gid", str(POD_UID), "--unshare-pid",
            "--die-with-parent", "--clearenv", "--tmpfs", "/"]
    if not net:
        args.append("--unshare-net")
    def copy_tree(folder: Path, depth: int) -> None:
        """Bind ``folder``'s entries read-only; descend where an image path must be mounted inside it."""
        for entry in sorted(folder.iterdir()):
            if depth == 0 and entry.name in ("proc", "dev", "tmp", "sys", "run"):
                continue
            if entry.is_symlink():
                args.extend(["--symlink", os.readlink(entry), str(entry)])
            elif entry.is_dir() and any(t.startswith(f"{entry}/") for t in binds):
                args.extend(["--dir", str(entry)])
                copy_tree(entry, depth + 1)
            elif entry.is_dir() or entry.is_file():
                args.extend(["--ro-bind", str(entry), str(entry)])

    copy_tree(Path("/"), 0)
    args += ["--proc", "/proc", "--dev", "/dev", "--ro-bind", "/sys", "/sys"]
    for target, source in binds.items():
        args += ["--ro-bind", str(source), target]
    for mount in container.get("volumeMounts", []):
        source = volumes[mount["name"]]
        args += ["--ro-bind" if mount.get("readOnly") else "--bind", str(source), mount["mountPath"]]
    # the "image" (this checkout, its venv, the serving env) stays visible read-only where it is, even when it lives
    # under a path the pod mounts a volume on (a clone under /tmp): bound after the volumes, so on top of them
    hidden = ("/tmp", "/run", "/dev", "/proc", "/sys", *(m["mountPath"] for m in container.get("volumeMounts", [])))
    for path in sorted({ROOT, Path(sys.prefix), *IMAGE_PATHS}):
        if any(str(path) == h or str(path).startswith(f"{h}/") for h in hidden):
            args += ["--ro-bind", str(path), str(path)]
    for key, value in env.items():
        args += ["--setenv", key, value]
    return [*args, "--remount-ro", "/"]


def _pod_env(container: dict, tracking_uri: str, extra_path: list[Path],
             config_maps: dict[str, dict[str, str]] | None = None) -> dict[str, str]:
    """The container's env as the cluster would give it: values as written (the MLflow Service name pointed at the
    test's server), ConfigMap references from ``config_maps``, Secret references resolved to test values; PATH as in
    the images."""
    env = {"PATH": ":".join([*map(str, extra_path), "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin",
                              "/sbin", "/bin"])}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"].replace(P.MLFLOW_TRACKING_URI, tracking_uri)
        elif "configMapKeyRef" in item["valueFrom"]:
            ref = item["valueFrom"]["configMapKeyRef"]
            env[item["name"]] = (config_maps or {})[ref["name"]][ref["key"]]
        else:
            env[item["name"]] = f"test-{item['valueFrom']['secretKeyRef']['key'].lower()}"
    return env


def _expand(args: list[str], env: dict[str, str]) -> list[str]:
    """``$(VAR)`` in a container's command/args, replaced from its env as the kubelet does."""
    import re

    return [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), a) for a in args]


#: the Secrets a Triton pod may mount, and the files each holds (made here from one test PKI): the server's TLS
#: Secret, and in prod the integrations CA, of which only ca.crt is projected (the volume's ``items``)
_POD_SECRETS = {P.SECRETS["triton_tls"]: {"tls.crt": "server.pem", "tls.key": "server.key", "ca.crt": "ca.pem"},
                "cxrlt-integrations-ca": {"ca.crt": "ca.pem", "tls.key": "ca.key"}}


def _volumes(pod: dict, root: Path) -> dict[str, Path]:
    """Each emptyDir a fresh directory; each Secret a directory with the keys the volume projects."""
    from tests.pki import make_pki

    out = {}
    for volume in pod["volumes"]:
        out[volume["name"]] = root / volume["name"]
        out[volume["name"]].mkdir(parents=True)
        if "secret" in volume:
            keys = _POD_SECRETS.get(volume["secret"]["secretName"])
            assert keys is not None, f"{volume['name']}: the Triton pod mounts an unexpected Secret"
            wanted = [item["key"] for item in volume["secret"].get("items", [])] or list(keys)
            pki = make_pki(root / "pki-source") if not (root / "pki-source").exists() else root / "pki-source"
            for key in wanted:
                shutil.copyfile(pki / keys[key], out[volume["name"]] / key)
        else:
            assert "emptyDir" in volume, f"{volume['name']}: only emptyDirs and Secrets in the Triton pod"
    return out


@pytest.fixture(scope="module")
def champion(tiny_bundle, evidence_keys, tmp_path_factory):
    """This test's MLflow server with a registered (signed), promoted ``cxrlt-bundle`` version."""
    import mlflow

    from cxrlt.export import export_bundle
    from cxrlt.ops import mlflow_server
    from cxrlt.registry import promote, register_bundle

    before = os.environ.get("MLFLOW_TRACKING_URI")  # register/promote set it: restored when the server stops
    root = tmp_path_factory.mktemp("pod-mlflow")
    bundle = root / "bundle"
    export_bundle(tiny_bundle / "ensemble", tiny_bundle / "zeroshot", bundle)
    state = mlflow_server.start(root / "data", port=0, state_dir=root / "state")
    try:
        labels = root / "labels.csv"
        labels.write_text("ImageID\n")
        version = register_bundle(bundle, {"mAP": 0.5}, {"passed": True, "checks": []}, {"git_commit": "test"},
                                  tracking_uri=state["tracking_uri"], signing_key=evidence_keys[0])
        assert promote(labels, tracking_uri=state["tracking_uri"], public_key=evidence_keys[1])["promoted"]
        yield state["tracking_uri"], version
    finally:
        mlflow.set_tracking_uri(before)  # None unsets it: later in-process training must not log to a dead server
        assert mlflow_server.stop(state_dir=root / "state")


def _run_init(pod: dict, tracking_uri: str, root: Path, version: str, verify_key: Path,
              onnx_runtime: str | None = None):
    """The init container with the rollout ConfigMap pinning ``version`` (what `cxrlt serve rollout` writes)."""
    init = pod["initContainers"][0]
    args = list(init["args"])
    if onnx_runtime:  # the wheel's tritonserver has only the python backend (see the module docstring)
        args[args.index("--onnx-runtime") + 1] = onnx_runtime
        if "--device" in args:  # ... and no GPU here
            del args[args.index("--device") : args.index("--device") + 2]
    volumes = _volumes(pod, root)
    env = _pod_env(init, tracking_uri, [Path(sys.executable).parent],
                   {P.ROLLOUT_CONFIGMAP: {P.ROLLOUT_KEY: version, P.ROLLOUT_SHADOW_KEY: "none"},
                    P.EVIDENCE_VERIFY_CONFIGMAP: {P.EVIDENCE_VERIFY_KEY_FILE: verify_key.read_text()}})
    sandbox = _sandbox_args(pod, init, volumes, {}, env, net=True)
    result = subprocess.run([*sandbox, *_expand([*init["command"], *args], env)], capture_output=True, text=True,
                            timeout=600)
    return result, volumes


def test_init_container_builds_the_verified_champion_repository_under_pod_constraints(champion, evidence_keys,
                                                                                      tmp_path):
    tracking_uri, version = champion
    pod = _triton_pod("prod")
    result, volumes = _run_init(pod, tracking_uri, tmp_path, version, evidence_keys[1])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    repo = volumes["models"]
    assert (repo / "cxr" / "config.pbtxt").exists() and list(repo.glob("*/1/model.onnx"))
    assert f"{P.REGISTERED_MODEL}/{version}" in (repo / "cxr" / "config.pbtxt").read_text()
    written = {p.relative_to(tmp_path).parts[0] for p in tmp_path.rglob("*") if p.is_file()}
    made_here = {"tls", "client-ca", "pki-source"}  # the Secrets' files, written by the test
    assert written - made_here <= {"models", "tmp"}, "the init container wrote only into its volumes"
    leftovers = [p for p in volumes["tmp"].rglob("*") if p.suffix == ".onnx" or p.name in ("MLmodel", "bundle.json")]
    assert not leftovers, "the downloaded bundle is removed from /tmp afterwards"


def test_init_container_refuses_a_version_the_registration_step_did_not_sign(champion, evidence_keys, tiny_bundle,
                                                                              tmp_path):
    """A version registered without the signing key (what a compromised training pod could do) is pinned: the init
    container fails with the reason, and the repository stays empty."""
    from cxrlt.export import export_bundle
    from cxrlt.registry import register_bundle

    tracking_uri, _ = champion
    bundle = tmp_path / "bundle"
    export_bundle(tiny_bundle / "ensemble", tiny_bundle / "zeroshot", bundle)
    forged = register_bundle(bundle, {"mAP": 0.99}, {"passed": True, "checks": []}, {"git_commit": "forged"},
                             tracking_uri=tracking_uri)
    result, volumes = _run_init(_triton_pod("prod"), tracking_uri, tmp_path / "pod", forged, evidence_keys[1])
    assert result.returncode == 1 and "carries no evidence signature" in result.stderr, result.stderr[-3000:]
    assert not list(volumes["models"].iterdir())


def test_server_and_front_door_become_ready_under_pod_constraints(champion, evidence_keys, tmp_path):
    """Both init containers, then tritonserver and the front door (nginx) with their exact commands in one network
    namespace: the readiness probe passes through the front door, the admin APIs answer only to the key from the
    Secret, Triton's own liveness probe command passes, and the key is on no command line in the pod."""
    from serving.front_door import FrontDoorError, nginx_binary
    from serving.server import _backend_dir, _tritonserver_dir, ensure_serving_env

    try:
        nginx_binary()
    except FrontDoorError as exc:
        pytest.skip(str(exc))
    tracking_uri, version = champion
    pod = _triton_pod("prod")
    result, volumes = _run_init(pod, tracking_uri, tmp_path / "pod", version, evidence_keys[1], onnx_runtime="python")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    config = next(c for c in pod["initContainers"] if c["name"] == "front-door-config")
    config_env = _pod_env(config, tracking_uri, [Path(sys.executable).parent])
    written = subprocess.run([*_sandbox_args(pod, config, volumes, {}, config_env, net=False),
                              *_expand([*config["command"], *config["args"]], config_env)],
                             capture_output=True, text=True, timeout=120)
    assert written.returncode == 0, written.stdout[-2000:] + written.stderr[-2000:]
    admin_key = config_env["TRITON_ADMIN_KEY"]
    env_dir = ensure_serving_env()
    IMAGE_PATHS.add(env_dir.resolve())
    tritonserver = _tritonserver_dir(env_dir)
    backends = _backend_dir(env_dir, tmp_path / "image")  # the image's /opt/tritonserver/backends
    by_name = {c["name"]: c for c in pod["containers"]}
    server, front = by_name["triton"], by_name["front-door"]
    # one sandbox for the pod's two containers (they share the network namespace): the volumes either mounts
    mounts = {m["mountPath"]: m for m in [*server["volumeMounts"], *front["volumeMounts"]]}
    both = {**server, "volumeMounts": list(mounts.values())}
    # the binary stays where its bundled libraries are ($ORIGIN-relative); Triton's default backend directory is
    # where the NGC image keeps the backends
    env = _pod_env(server, tracking_uri, [env_dir / "bin", tritonserver / "bin"])
    binds = {"/opt/tritonserver/backends": backends}
    sandbox = _sandbox_args(pod, both, volumes, binds, env, net=False)
    http = next(p["containerPort"] for p in front["ports"] if p["name"] == "http")
    probe = server["readinessProbe"]["httpGet"]
    assert probe["port"] == http
    # inside the sandbox's own network: start both commands, poll the readiness probe, try the admin API, stop
    script = (
        'import glob, subprocess, sys, time, urllib.error, urllib.request\n'
        'key = sys.stdin.readline().strip()\n'  # the operator's key, on no command line (this one included)
        f'procs = [subprocess.Popen({_expand([*server["command"], *server["args"]], env)!r}),\n'
        f'         subprocess.Popen({front["command"]!r})]\n'
        'deadline, ready = time.time() + 240, False\n'
        'while time.time() < deadline and all(p.poll() is None for p in procs) and not ready:\n'
        '    try:\n'
        f'        ready = urllib.request.urlopen("http://127.0.0.1:{http}{probe["path"]}", timeout=2).status == 200\n'
        '    except OSError:\n'
        '        time.sleep(1)\n'
        'print("READY" if ready else f"NOT READY (exit {[p.poll() for p in procs]})", flush=True)\n'
        f'stats = "http://127.0.0.1:{http}/v2/models/stats"\n'
        'try:\n'
        '    urllib.request.urlopen(stats, timeout=10)\n'
        '    print("ADMIN OPEN")\n'
        'except urllib.error.HTTPError as exc:\n'
        '    print(f"ADMIN REFUSED {exc.code}")\n'
        'keyed = urllib.request.Request(stats, headers={"cxrlt-admin-key": key})\n'
        'print(f"ADMIN WITH KEY {urllib.request.urlopen(keyed, timeout=10).status}")\n'
        f'live = subprocess.run({server["livenessProbe"]["exec"]["command"]!r})\n'
        'print(f"LIVE {live.returncode}")\n'
        'lines = [open(f, "rb").read() for f in glob.glob("/proc/[0-9]*/cmdline")]\n'
        'print("KEY ON A COMMAND LINE" if any(key.encode() in line for line in lines) else "NO KEY")\n'
        'for p in procs:\n'
        '    p.terminate()\n'
        'for p in procs:\n'
        '    p.wait(60)\n'
        'sys.exit(0 if ready else 1)\n'
    )
    run = subprocess.run([*sandbox, str(env_dir / "bin" / "python"), "-c", script], input=f"{admin_key}\n",
                         capture_output=True, text=True, timeout=400)
    assert run.returncode == 0 and "READY" in run.stdout, run.stdout[-3000:] + run.stderr[-4000:]
    out = run.stdout.splitlines()
    assert {"ADMIN REFUSED 403", "ADMIN WITH KEY 200", "LIVE 0", "NO KEY"} <= set(out), run.stdout + run.stderr[-3000:]
    written = {p.relative_to(tmp_path / "pod").parts[0] for p in (tmp_path / "pod").rglob("*") if p.is_file()}
    assert written <= {"models", "tmp", "dshm", "tls", "client-ca", "pki-source", "front"}
    conf = volumes["front"] / "nginx.conf"
    assert admin_key in conf.read_text() and conf.stat().st_mode & 0o077 == 0


def test_training_command_runs_under_the_trainjob_pod_constraints(synth_data, tmp_path):
    """A TrainJob from ``trainjob_body`` (its command, args, env and pod patch): training writes only to its
    volumes (the cache PVC, /tmp, /dev/shm) and runs as uid 1000 with a read-only root filesystem."""
    from cxrlt.config import load_config
    from cxrlt.ops.launch import trainjob_body
    from tests.conftest import TINY_CONFIG

    pvc = tmp_path / "pvc"
    shutil.copytree(synth_data, pvc / "data")
    cfg = load_config({**TINY_CONFIG, "train": {**TINY_CONFIG["train"], "epochs": 1}})
    (pvc / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    args = ["train", "--member", "mixed/pcam", "--config", "/data/tiny.yaml", "--data", "/data/data", "--out",
            "/data/runs/mixed/pcam", "--resume"]
    job = trainjob_body("cxrlt-mixed-pcam-test", args, env={"OMP_NUM_THREADS": "2"})
    trainer = job["spec"]["trainer"]
    patch = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    pod = patch["template"]["spec"]["template"]["spec"]
    container = {**pod["containers"][0], "env": trainer["env"]}
    volumes = {}
    for volume in pod["volumes"]:
        volumes[volume["name"]] = pvc if "persistentVolumeClaim" in volume else tmp_path / volume["name"]
        volumes[volume["name"]].mkdir(exist_ok=True)
    env = _pod_env(container, P.MLFLOW_TRACKING_URI, [Path(sys.executable).parent])
    env.pop("MLFLOW_TRACKING_URI", None)  # no registry for this run: the trainer logs to MLflow only when set
    sandbox = _sandbox_args(pod, container, volumes, {}, env, net=False)
    before = {p for p in pvc.rglob("*")}
    run = subprocess.run([*sandbox, *trainer["command"], *trainer["args"]], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    card = (pvc / "runs" / "mixed" / "pcam" / "member.json")
    assert card.exists() and (pvc / "runs" / "mixed" / "pcam" / "best.pt").exists()
    new = {p for p in pvc.rglob("*") if p.is_file()} - before
    assert all(p.is_relative_to(pvc / "runs") for p in new), sorted(map(str, new))[:5]
    written = {p.relative_to(tmp_path).parts[0] for p in tmp_path.rglob("*") if p.is_file()}
    assert written <= {"pvc", "tmp", "dshm"}
