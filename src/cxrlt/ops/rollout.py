"""Pinned rollouts: every Triton replica serves one registered *version*, named by the rollout.

A Triton pod's init container builds its repository from ``models:/cxrlt-bundle/$(CXRLT_MODEL_VERSION)``, the version
read from the ``cxrlt-rollout`` ConfigMap. :func:`rollout` resolves an alias (``@champion``) exactly once, writes the
version there, then changes the Deployment's pod-template annotation ``cxrlt.io/model-version``, which starts a
rolling update. A replica added by the autoscaler or restarted after a crash reads the same ConfigMap, so replicas
never disagree because one of them resolved ``@champion`` later than the others.
"""

from __future__ import annotations

import os

from cxrlt.platform import (
    NAMESPACE,
    REGISTERED_MODEL,
    ROLLOUT_ANNOTATION,
    ROLLOUT_CONFIGMAP,
    ROLLOUT_KEY,
    ROLLOUT_SHADOW_KEY,
    TRITON_SERVICE,
)
from cxrlt.registry import RegistryError, resolve_version


def _kube_apis():
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:  # KUBECONFIG read now (the client reads it once, at import)
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
    return client.CoreV1Api(), client.AppsV1Api()


def pinned_version(spec: str, name: str = REGISTERED_MODEL, tracking_uri: str | None = None) -> str:
    """``@alias`` or a version number -> the version number, checked to exist and to have passed its gate."""
    import json

    from cxrlt.registry import _client

    uri = f"models:/{name}{spec}" if spec.startswith("@") else f"models:/{name}/{spec}"
    _, version = resolve_version(uri, tracking_uri)
    mv = _client(tracking_uri).get_model_version(name, version)
    if not json.loads(mv.tags.get("gate_evidence", "{}")).get("passed"):
        raise RegistryError(f"{name} version {version} did not pass its gate: it is not rolled out")
    return version


def rollout(spec: str = "@champion", name: str = REGISTERED_MODEL, tracking_uri: str | None = None,
            namespace: str = NAMESPACE, deployment: str = TRITON_SERVICE, apis=None, dry_run: bool = False,
            shadow: str | None = None) -> dict:
    """Pin the Triton Deployment to the version ``spec`` names; returns ``{version, previous, ...}``. ``shadow``
    (@alias, a number, or ``none``) also pins the challenger every replica shadow-scores; None leaves it."""
    version = pinned_version(spec, name, tracking_uri)
    core, apps = apis or _kube_apis()
    current = core.read_namespaced_config_map(ROLLOUT_CONFIGMAP, namespace)
    data = current.data or {}
    previous = data.get(ROLLOUT_KEY)
    shadowed = data.get(ROLLOUT_SHADOW_KEY, "none") if shadow is None else \
        "none" if shadow == "none" else pinned_version(shadow, name, tracking_uri)
    if shadowed == version:
        raise RegistryError(f"version {version} cannot shadow itself: choose another challenger, or --shadow none")
    result = {"model": name, "requested": spec, "version": version, "previous": previous, "shadow": shadowed,
              "namespace": namespace, "deployment": deployment, "applied": False}
    if dry_run:
        return result
    core.patch_namespaced_config_map(ROLLOUT_CONFIGMAP, namespace, {"data": {ROLLOUT_KEY: version,
                                                                             ROLLOUT_SHADOW_KEY: shadowed}})
    # the pods roll when either version changes
    stamp = version if shadowed == "none" else f"{version}+shadow-{shadowed}"
    apps.patch_namespaced_deployment(deployment, namespace, {"spec": {"template": {"metadata": {
        "annotations": {ROLLOUT_ANNOTATION: stamp}}}}})
    return {**result, "applied": True}
