"""Launch distributed training: ``torchrun`` locally, or a Kubeflow Trainer ``TrainJob`` on a cluster.

The TrainJob path creates ``trainer.kubeflow.org/v1alpha1`` TrainJobs (``torch-distributed`` runtime) through the
Kubernetes API, streams their conditions, and fails with the job's own reason.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable

from cxrlt.errors import InvalidInputError, OperationError
from cxrlt.platform import (
    CACHE_PVC,
    IMAGES,
    MLFLOW_CLIENT_KEYS,
    NAMESPACE,
    POD_UID,
    S3_SECRET_KEYS,
    SECRETS,
    SERVICE_ACCOUNTS,
    SHARED_ROOT,
    TRAINER_API,
    TRAINJOB_RUNTIME,
)

LAUNCHERS = ("local", "trainjob")


def local_command(cli_args: list[str], nproc: int = 1) -> list[str]:
    if nproc > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                "-m", "cxrlt.cli", *cli_args]
    return [sys.executable, "-m", "cxrlt.cli", *cli_args]


def launch_local(cli_args: list[str], nproc: int = 1, out=None, threads: int = 0, env: dict | None = None) -> None:
    """Run ``cxrlt <cli_args>`` (under torchrun when nproc > 1), streaming its output line by line to ``out``
    (the step's log; default stdout; any object with ``write``/``flush``) as it runs; raises with the tail of the
    output on failure. ``env`` replaces the inherited environment.

    ``threads`` > 0 sets the child's intra-op threads (``OMP_NUM_THREADS``): steps that run side by side on a small
    machine are much faster with one thread each than with every step using every core."""
    out = out or sys.stdout
    tail: collections.deque[str] = collections.deque(maxlen=60)
    if threads > 0:
        env = {**(env or os.environ), "OMP_NUM_THREADS": str(threads)}
    with subprocess.Popen(local_command(cli_args, nproc), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1, env=env) as proc:
        for line in proc.stdout:
            out.write(line)
            out.flush()
            tail.append(line)
    if proc.returncode != 0:
        what = " ".join(cli_args[:2])
        raise OperationError(f"cxrlt {what} failed (exit {proc.returncode}):\n{''.join(tail)[-4000:]}")


@contextlib.contextmanager
def intra_op_threads(threads: int):
    """torch's intra-op threads set to ``threads`` for the block (0: left as they are), then restored: the
    in-process counterpart of the ``OMP_NUM_THREADS`` that :func:`launch_local` gives a child."""
    if threads <= 0:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def trainjob_name(prefix: str, cli_args: list[str], run_key: str) -> str:
    """A TrainJob name that is a function of what it trains and of the pipeline run (``run_key``): a retried step
    gets the same name and attaches to the job it already created (Python's ``hash()`` differs per process)."""
    digest = hashlib.sha256(json.dumps([run_key, cli_args]).encode()).hexdigest()[:10]
    stem = re.sub(r"[^a-z0-9-]+", "-", prefix.lower()).strip("-")[: 63 - len(digest) - 1]
    return f"{stem}-{digest}"


#: what a TrainJob node runs: torchrun, which reads the torch-distributed runtime's PET_NNODES, PET_NODE_RANK,
#: PET_NPROC_PER_NODE, PET_MASTER_ADDR and PET_MASTER_PORT (set by the Trainer on every node) as its arguments
TRAINJOB_COMMAND = ["torchrun", "-m", "cxrlt.cli"]


def trainjob_body(name: str, cli_args: list[str], gpus_per_node: int = 1, num_nodes: int = 1,
                  image: str | None = None, env: dict | None = None, namespace: str = NAMESPACE,
                  nproc_per_node: int = 1) -> dict:
    """A Kubeflow Trainer TrainJob that runs ``cxrlt <cli_args>`` under torchrun on the torch-distributed runtime
    (``num_nodes`` pods of ``nproc_per_node`` processes), hardened like every cxrlt pod (non-root, read-only root
    filesystem with emptyDirs for /tmp and /dev/shm, seccomp RuntimeDefault, no capabilities, a service account
    without permissions or token). The pods mount only the shared volume at ``SHARED_ROOT``: every path in
    ``cli_args`` must be a pod path there (:class:`cxrlt.dataplane.SharedVolume`). Credentials come from Secrets,
    never inline: the training role's MLflow account (runs only) and the pipeline's object-storage keys (weights
    mirror, data)."""
    if num_nodes < 1 or nproc_per_node < 1:
        raise InvalidInputError(f"a TrainJob needs num_nodes >= 1 and nproc_per_node >= 1, got {num_nodes}, "
                                f"{nproc_per_node}")
    group, version, _ = TRAINER_API
    from_secret = [{"name": k, "valueFrom": {"secretKeyRef": {"name": SECRETS[secret], "key": k}}}
                   for secret, keys in (("mlflow_training", MLFLOW_CLIENT_KEYS), ("s3_pipeline", S3_SECRET_KEYS))
                   for k in keys]
    pod = {
        "serviceAccountName": SERVICE_ACCOUNTS["trainer"],
        "securityContext": {"runAsNonRoot": True, "runAsUser": POD_UID, "runAsGroup": POD_UID, "fsGroup": POD_UID,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{"name": "node",  # the torch-distributed runtime's container
                        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}},
                        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"},
                                         {"name": "dshm", "mountPath": "/dev/shm"},
                                         {"name": "data", "mountPath": SHARED_ROOT}]}],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "20Gi"}},
                    {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}},
                    {"name": "data", "persistentVolumeClaim": {"claimName": CACHE_PVC}}],
    }
    return {
        "apiVersion": f"{group}/{version}", "kind": "TrainJob",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/part-of": "cxrlt"}},
        "spec": {
            "runtimeRef": {"name": TRAINJOB_RUNTIME, "apiGroup": group, "kind": "ClusterTrainingRuntime"},
            "trainer": {"image": image or IMAGES["train"], "command": TRAINJOB_COMMAND, "args": cli_args,
                        "numNodes": num_nodes, "numProcPerNode": nproc_per_node,
                        "resourcesPerNode": {"limits": {"nvidia.com/gpu": str(gpus_per_node)}},
                        # HOME on the writable /tmp: library caches (torch, matplotlib) need a writable home
                        "env": [{"name": k, "value": str(v)} for k, v in {"HOME": "/tmp", **(env or {})}.items()]
                        + from_secret},
            "runtimePatches": [{"manager": "cxrlt.io/launcher", "trainingRuntimeSpec": {"template": {"spec": {
                "replicatedJobs": [{"name": "node", "template": {"spec": {"template": {"spec": pod}}}}]}}}}],
        },
    }


def _custom_objects_api():
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:  # KUBECONFIG read now (the client reads it once, at import)
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
    return client.CustomObjectsApi()


def launch_trainjob(body: dict, api=None, poll_s: float = 10.0, timeout_s: float = 24 * 3600,
                    log: Callable[[str], None] = print) -> dict:
    """Create the TrainJob (or attach to it if a retried step already did: 409 AlreadyExists) and wait for
    ``Complete``; raise with the ``Failed`` condition's reason and message."""
    api = api or _custom_objects_api()
    group, version, plural = TRAINER_API
    ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
    try:
        api.create_namespaced_custom_object(group, version, ns, plural, body)
    except Exception as exc:  # kubernetes.client.ApiException; 409: created by an earlier try of this step
        if getattr(exc, "status", None) != 409:
            raise
        log(f"TrainJob {ns}/{name} already exists (a retried step): attaching to it")
    deadline, last = time.time() + timeout_s, None
    while time.time() < deadline:
        obj = api.get_namespaced_custom_object(group, version, ns, plural, name)
        conditions = {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}
        summary = ", ".join(f"{t}={c.get('status')}" for t, c in conditions.items()) or "pending"
        if summary != last:
            log(f"TrainJob {ns}/{name}: {summary}")
            last = summary
        if conditions.get("Failed", {}).get("status") == "True":
            c = conditions["Failed"]
            raise OperationError(f"TrainJob {name} failed: {c.get('reason')}: {c.get('message')}")
        if conditions.get("Complete", {}).get("status") == "True":
            return obj
        time.sleep(poll_s)
    raise TimeoutError(f"TrainJob {name} did not finish within {timeout_s:.0f} s")
