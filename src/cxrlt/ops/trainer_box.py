"""A Kubeflow Trainer in a box: TrainJobs whose pods run as podman containers on this machine.

There is no Kubernetes here, so this module plays the Trainer controller's part, and only that part: a TrainJob
posted to its Kubernetes-shaped API (``POST/GET /apis/trainer.kubeflow.org/v1alpha1/namespaces/NS/trainjobs``, what
``kubernetes.client.CustomObjectsApi`` sends) is rendered into one pod per node from the real ClusterTrainingRuntime
(``torch-distributed``) plus the job's ``runtimePatches`` and ``trainer`` overrides, with the torch plugin's
``PET_*`` variables, and every pod runs as a container that gets exactly what its spec declares:

- the image, command, args and environment of the ``node`` container (Secret references resolved from the secrets
  the box was given; a missing one fails the job like ``CreateContainerConfigError``);
- its security context (``runAsUser``/``runAsGroup``, ``readOnlyRootFilesystem``, dropped capabilities,
  ``allowPrivilegeEscalation: false``);
- its volumes and nothing else: a ``persistentVolumeClaim`` is the podman volume of the claim's name (one volume
  shared by every pod, like an RWX PVC), an ``emptyDir`` a fresh tmpfs.

Where a cluster gives each pod its own network namespace and DNS, the box runs the nodes on the host network: the
master's DNS name (``<job>-node-0-0.<job>``) is mapped to 127.0.0.1 and the rendezvous port is a free loopback port
instead of 29400, so that two jobs can run side by side. GPU limits are not enforced (CPU only here).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

from cxrlt.errors import CxrltError
from cxrlt.ops.containers import container_env, engine_command
from cxrlt.ops.procs import free_port
from cxrlt.platform import TRAINER_API

#: list fields merged by key when a patch is applied (strategic-merge style); other lists are replaced
MERGE_KEYS = {"containers": "name", "initContainers": "name", "volumes": "name", "env": "name",
              "volumeMounts": "mountPath", "replicatedJobs": "name"}
NODE = "node"
TORCH_MASTER_PORT = 29400


def merge(base, patch, field: str = ""):
    """Apply ``patch`` to ``base``: dicts deep-merged, named lists (:data:`MERGE_KEYS`) merged by key."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = merge(base[key], value, key) if key in base else copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(patch, list) and field in MERGE_KEYS:
        key = MERGE_KEYS[field]
        out = [copy.deepcopy(item) for item in base]
        for item in patch:
            match = next((i for i, b in enumerate(out) if b.get(key) == item.get(key)), None)
            if match is None:
                out.append(copy.deepcopy(item))
            else:
                out[match] = merge(out[match], item, field)
        return out
    return copy.deepcopy(patch)


def render_pods(trainjob: dict, runtime: dict, master_port: int = TORCH_MASTER_PORT) -> list[dict]:
    """The pod specs of a TrainJob's nodes: the runtime's ``node`` replicated job with the job's runtime patches,
    the trainer overrides on the ``node`` container and the torch plugin's environment for each node rank."""
    spec = trainjob["spec"]
    template = copy.deepcopy(runtime["spec"]["template"])
    for patch in spec.get("runtimePatches", []):
        template = merge(template, patch.get("trainingRuntimeSpec", {}).get("template", {}))
    replicated = next(j for j in template["spec"]["replicatedJobs"] if j["name"] == NODE)
    pod = replicated["template"]["spec"]["template"]["spec"]
    trainer = spec.get("trainer", {})
    policy = runtime["spec"].get("mlPolicy", {})
    num_nodes = int(trainer.get("numNodes", policy.get("numNodes", 1)))
    nproc = trainer.get("numProcPerNode", policy.get("torch", {}).get("numProcPerNode", "auto"))
    name = trainjob["metadata"]["name"]
    pods = []
    for rank in range(num_nodes):
        node_pod = copy.deepcopy(pod)
        container = next(c for c in node_pod["containers"] if c["name"] == NODE)
        for key in ("image", "command", "args"):
            if key in trainer:
                container[key] = copy.deepcopy(trainer[key])
        if "resourcesPerNode" in trainer:
            container["resources"] = copy.deepcopy(trainer["resourcesPerNode"])
        torch_env = [{"name": "PET_NNODES", "value": str(num_nodes)},
                     {"name": "PET_NPROC_PER_NODE", "value": str(nproc)},
                     {"name": "PET_NODE_RANK", "value": str(rank)},
                     {"name": "PET_MASTER_ADDR", "value": f"{name}-{NODE}-0-0.{name}"},
                     {"name": "PET_MASTER_PORT", "value": str(master_port)}]
        container["env"] = merge(container.get("env", []), [*trainer.get("env", []), *torch_env], "env")
        pods.append({"name": f"{name}-{NODE}-0-{rank}", "spec": node_pod})
    return pods


class PodSpecError(CxrltError, ValueError):
    """A pod spec the box cannot run as written (a missing Secret or PVC, an unsupported volume)."""


def container_args(pod: dict, secrets: dict[str, dict[str, str]], env_file: Path, extra_hosts: dict[str, str],
                   engine: list[str], claims: dict[str, str] | None = None) -> list[str]:
    """``podman run`` arguments for a rendered pod's ``node`` container: its declared volumes only."""
    spec, name = pod["spec"], pod["name"]
    container = next(c for c in spec["containers"] if c["name"] == NODE)
    pod_sc, sc = spec.get("securityContext", {}), container.get("securityContext", {})
    args = ["run", "--name", name, "--network", "host", "--hostname", name]
    for host, ip in extra_hosts.items():
        args += ["--add-host", f"{host}:{ip}"]
    uid, gid = sc.get("runAsUser", pod_sc.get("runAsUser")), sc.get("runAsGroup", pod_sc.get("runAsGroup"))
    if uid is not None:
        args += ["--user", f"{uid}:{gid if gid is not None else uid}"]
    if sc.get("readOnlyRootFilesystem"):
        args += ["--read-only", "--read-only-tmpfs=false"]
    for cap in sc.get("capabilities", {}).get("drop", []):
        args += ["--cap-drop", cap]
    if sc.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        volume = volumes.get(mount["name"])
        if volume is None:
            raise PodSpecError(f"{name}: volumeMount {mount['name']!r} names no volume of the pod")
        ro = ",ro" if mount.get("readOnly") else ""
        if "persistentVolumeClaim" in volume:
            claim = (claims or {}).get(volume["persistentVolumeClaim"]["claimName"],
                                       volume["persistentVolumeClaim"]["claimName"])
            if subprocess.run([*engine, "volume", "exists", claim], env=container_env()).returncode:
                raise PodSpecError(f"{name}: persistentVolumeClaim {claim!r} not found (create the podman volume)")
            args += ["--mount", f"type=volume,source={claim},destination={mount['mountPath']}{ro}"]
        elif "emptyDir" in volume:
            args += ["--mount", f"type=tmpfs,destination={mount['mountPath']},tmpfs-mode=1777"]
        else:
            raise PodSpecError(f"{name}: volume {mount['name']!r} of type {sorted(volume)} is not supported here")
    lines = []
    for item in container.get("env", []):
        if "value" in item:
            value = item["value"]
        else:
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            if ref is None:
                raise PodSpecError(f"{name}: env {item['name']} uses an unsupported valueFrom")
            if ref["key"] not in secrets.get(ref["name"], {}):
                raise PodSpecError(f"CreateContainerConfigError: {name}: secret {ref['name']!r} has no key "
                                   f"{ref['key']!r}")
            value = secrets[ref["name"]][ref["key"]]
        if "\n" in str(value):
            raise PodSpecError(f"{name}: env {item['name']} holds a newline, which an env file cannot carry")
        lines.append(f"{item['name']}={value}")
    env_file.write_text("\n".join(lines) + "\n")
    args += ["--env-file", str(env_file)]
    command = container.get("command")
    if command:
        args += ["--entrypoint", json.dumps(command[:1])]
        return [*args, container["image"], *command[1:], *container.get("args", [])]
    return [*args, container["image"], *container.get("args", [])]


class PodmanTrainer:
    """The controller: creates, runs and reports TrainJobs; ``jobs`` holds each job's object with its status.
    ``claims`` maps a PVC name to the podman volume that plays it (default: the volume of the same name)."""

    def __init__(self, runtime: dict, secrets: dict[str, dict[str, str]] | None = None, log_dir: Path | None = None,
                 claims: dict[str, str] | None = None):
        self.runtime, self.secrets, self.claims = runtime, secrets or {}, claims or {}
        self.running: set[str] = set()
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="cxrlt-trainer-box-"))
        self.jobs: dict[tuple[str, str], dict] = {}
        self._lock = threading.Lock()
        self.engine = engine_command()

    def create(self, namespace: str, body: dict) -> dict | None:
        key = (namespace, body["metadata"]["name"])
        with self._lock:
            if key in self.jobs:
                return None
            obj = copy.deepcopy(body)
            obj.setdefault("metadata", {})["namespace"] = namespace
            obj["status"] = {"conditions": [{"type": "Created", "status": "True", "reason": "JobSetCreated"}]}
            self.jobs[key] = obj
        threading.Thread(target=self._run, args=(key,), daemon=True).start()
        return obj

    def get(self, namespace: str, name: str) -> dict | None:
        with self._lock:
            return copy.deepcopy(self.jobs.get((namespace, name)))

    def _finish(self, key, kind: str, reason: str, message: str = "") -> None:
        with self._lock:
            self.jobs[key]["status"]["conditions"].append(
                {"type": kind, "status": "True", "reason": reason, "message": message[-3000:]})

    def _run(self, key) -> None:
        job = self.get(*key)
        try:
            pods = render_pods(job, self.runtime, master_port=free_port())
            master = pods[0]["spec"]["containers"][0]["env"]
            host = next(e["value"] for e in master if e["name"] == "PET_MASTER_ADDR")
            procs = []
            for pod in pods:
                args = container_args(pod, self.secrets, self.log_dir / f"{pod['name']}.env", {host: "127.0.0.1"},
                                      self.engine, self.claims)
                self.running.add(pod["name"])
                log = open(self.log_dir / f"{pod['name']}.log", "w")  # noqa: SIM115 - closed below
                procs.append((pod["name"], subprocess.Popen([*self.engine, *args], stdout=log,
                                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                            env=container_env()), log))
            failed = []
            for name, proc, log in procs:
                code = proc.wait()
                log.close()
                if code:
                    tail = (self.log_dir / f"{name}.log").read_text(errors="replace")[-2000:]
                    failed.append(f"{name} exited {code}: {tail}")
            for name, _, _ in procs:
                subprocess.run([*self.engine, "rm", "-f", name], capture_output=True, env=container_env())
                self.running.discard(name)
            if failed:
                self._finish(key, "Failed", "NodeFailed", "\n".join(failed))
            else:
                self._finish(key, "Complete", "JobSetCompleted", f"{len(pods)} node(s) completed")
        except Exception as exc:  # the job fails with the reason, like the controller's condition
            self._finish(key, "Failed", type(exc).__name__, str(exc))


class JsonReplyHandler(BaseHTTPRequestHandler):
    """An HTTP handler that answers JSON, as the Kubernetes API server does (here and in the tests' API stubs)."""

    def _reply(self, code: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _handler(trainer: PodmanTrainer):
    group, version, plural = TRAINER_API
    prefix = f"/apis/{group}/{version}/namespaces/"

    class Handler(JsonReplyHandler):
        def _status(self, code: int, reason: str, message: str) -> None:
            self._reply(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
                               "message": message, "code": code})

        def _parts(self) -> list[str] | None:
            path = self.path.split("?", 1)[0]
            if not path.startswith(prefix):
                return None
            parts = path[len(prefix):].strip("/").split("/")
            return parts if len(parts) in (2, 3) and parts[1] == plural else None

        def do_POST(self):  # noqa: N802 - http.server API
            parts = self._parts()
            if parts is None or len(parts) != 2:
                return self._status(404, "NotFound", f"no route {self.path}")
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            obj = trainer.create(parts[0], body)
            if obj is None:
                return self._status(409, "AlreadyExists", f"trainjobs {body['metadata']['name']!r} already exists")
            self._reply(201, obj)

        def do_GET(self):  # noqa: N802
            parts = self._parts()
            if parts is None or len(parts) != 3:
                return self._status(404, "NotFound", f"no route {self.path}")
            obj = trainer.get(parts[0], parts[2])
            if obj is None:
                return self._status(404, "NotFound", f"trainjobs {parts[2]!r} not found")
            self._reply(200, obj)

        def log_message(self, *args):
            pass

    return Handler


class TrainerBox:
    """The controller behind a loopback Kubernetes-shaped API; ``kubeconfig`` is what clients load."""

    def __init__(self, runtime: dict | str | Path, secrets: dict[str, dict[str, str]] | None = None,
                 work_dir: str | Path | None = None, host: str = "127.0.0.1", claims: dict[str, str] | None = None):
        if not isinstance(runtime, dict):
            runtime = yaml.safe_load(Path(runtime).read_text())
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="cxrlt-trainer-box-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.trainer = PodmanTrainer(runtime, secrets, self.work_dir / "pods", claims)
        self.trainer.log_dir.mkdir(parents=True, exist_ok=True)
        self.server = ThreadingHTTPServer((host, 0), _handler(self.trainer))
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self.kubeconfig = self.work_dir / "kubeconfig"
        self.kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "box",
            "clusters": [{"name": "box", "cluster": {"server": self.url}}],
            "users": [{"name": "box", "user": {"token": "box"}}],
            "contexts": [{"name": "box", "context": {"cluster": "box", "user": "box"}}]}))
        os.chmod(self.kubeconfig, 0o644)
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> TrainerBox:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        """Stop the API and remove any pod container still running (a test that failed half-way)."""
        self.server.shutdown()
        self.server.server_close()
        for name in list(self.trainer.running):
            subprocess.run([*self.trainer.engine, "rm", "-f", name], capture_output=True, env=container_env())
        deadline = time.time() + 10
        while time.time() < deadline and self.trainer.running:
            time.sleep(0.2)
