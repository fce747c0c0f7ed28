"""Pinned rollouts: `cxrlt serve rollout` resolves @champion once against a real MLflow server and pins the Triton
Deployment through the Kubernetes API (the real kubernetes client against a stub API server that keeps the
ConfigMap and the Deployment), and the rendered Deployment reads its version from that ConfigMap."""

import json
import shutil
import subprocess
import threading
from http.server import ThreadingHTTPServer

import pytest
import yaml
from typer.testing import CliRunner

from cxrlt import platform as P
from cxrlt.cli import app
from cxrlt.ops.trainer_box import JsonReplyHandler

pytestmark = pytest.mark.slow
CONFIGMAP = f"/api/v1/namespaces/{P.NAMESPACE}/configmaps/{P.ROLLOUT_CONFIGMAP}"
DEPLOYMENT = f"/apis/apps/v1/namespaces/{P.NAMESPACE}/deployments/{P.TRITON_SERVICE}"


def _merge(base: dict, patch: dict) -> dict:
    out = dict(base)
    for key, value in patch.items():
        out[key] = _merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


class StubKube(JsonReplyHandler):
    objects: dict = {}
    patches: list = []

    def do_GET(self):  # noqa: N802 - http.server API
        if self.path in self.objects:
            return self._reply(200, self.objects[self.path])
        self._reply(404, {"kind": "Status", "code": 404, "reason": "NotFound"})

    def do_PATCH(self):  # noqa: N802
        patch = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.patches.append((self.path, self.headers["Content-Type"], patch))
        if self.path not in self.objects:
            return self._reply(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
        self.objects[self.path] = _merge(self.objects[self.path], patch)
        self._reply(200, self.objects[self.path])

    def log_message(self, *args):
        pass


@pytest.fixture
def kube(tmp_path, monkeypatch):
    StubKube.objects = {
        CONFIGMAP: {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": P.ROLLOUT_CONFIGMAP},
                    "data": {P.ROLLOUT_KEY: "none"}},
        DEPLOYMENT: {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": P.TRITON_SERVICE},
                     "spec": {"selector": {"matchLabels": {"app.kubernetes.io/name": "triton"}},
                              "template": {"metadata": {"annotations": {P.ROLLOUT_ANNOTATION: "none"}},
                                           "spec": {"containers": [{"name": "triton", "image": "serve"}]}}}}}
    StubKube.patches = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubKube)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = tmp_path / "kubeconfig"
    config.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "t",
        "clusters": [{"name": "t", "cluster": {"server": f"http://127.0.0.1:{server.server_address[1]}"}}],
        "users": [{"name": "t", "user": {"token": "t"}}],
        "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t"}}]}))
    monkeypatch.setenv("KUBECONFIG", str(config))
    yield StubKube
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def registry(tiny_bundle, tmp_path_factory):
    """A real MLflow server with version 1 (champion), version 2 (passed its gate, challenger) and version 3 (failed
    its gate)."""
    import os

    import mlflow

    from cxrlt.export import export_bundle
    from cxrlt.ops import mlflow_server
    from cxrlt.registry import promote, register_bundle

    before = os.environ.get("MLFLOW_TRACKING_URI")
    root = tmp_path_factory.mktemp("rollout-mlflow")
    export_bundle(tiny_bundle / "ensemble", tiny_bundle / "zeroshot", root / "bundle")
    state = mlflow_server.start(root / "data", port=0, state_dir=root / "state")
    uri = state["tracking_uri"]
    try:
        labels = root / "labels.csv"
        labels.write_text("ImageID\n")
        passed = {"passed": True, "checks": []}
        assert register_bundle(root / "bundle", {"mAP": 0.5}, passed, {"git_commit": "t"}, tracking_uri=uri) == "1"
        assert promote(labels, tracking_uri=uri)["promoted"]
        assert register_bundle(root / "bundle", {"mAP": 0.5}, passed, {"git_commit": "t"}, tracking_uri=uri) == "2"
        assert register_bundle(root / "bundle", {"mAP": 0.5}, passed, {"git_commit": "t"}, tracking_uri=uri) == "3"
        mlflow.MlflowClient(uri).set_model_version_tag(P.REGISTERED_MODEL, "3", "gate_evidence",
                                                       json.dumps({"passed": False}))
        yield uri
    finally:
        mlflow.set_tracking_uri(before)
        assert mlflow_server.stop(state_dir=root / "state")


def test_rollout_pins_the_champion_version_once(kube, registry):
    result = CliRunner().invoke(app, ["serve", "rollout", "--tracking-uri", registry])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["version"] == "1" and out["previous"] == "none" and out["applied"] is True
    assert kube.objects[CONFIGMAP]["data"][P.ROLLOUT_KEY] == "1"
    annotations = kube.objects[DEPLOYMENT]["spec"]["template"]["metadata"]["annotations"]
    assert annotations[P.ROLLOUT_ANNOTATION] == "1"
    assert [p for p, _, _ in kube.patches] == [CONFIGMAP, DEPLOYMENT]  # the version first, then the rolling update


def test_rollout_of_an_explicit_version_dry_run_and_refusals(kube, registry):
    dry = CliRunner().invoke(app, ["serve", "rollout", "--version", "2", "--dry-run", "--tracking-uri", registry])
    assert dry.exit_code == 0 and json.loads(dry.stdout)["applied"] is False and not kube.patches
    done = CliRunner().invoke(app, ["serve", "rollout", "--version", "2", "--tracking-uri", registry])
    assert json.loads(done.stdout)["version"] == "2" and kube.objects[CONFIGMAP]["data"][P.ROLLOUT_KEY] == "2"
    refused = CliRunner().invoke(app, ["serve", "rollout", "--version", "3", "--tracking-uri", registry])
    assert refused.exit_code == 1 and "did not pass its gate" in refused.output
    assert kube.objects[CONFIGMAP]["data"][P.ROLLOUT_KEY] == "2"


def test_rollout_pins_a_shadow_challenger_beside_the_served_version(kube, registry):
    """--shadow pins the challenger every replica shadow-scores (same ConfigMap, pods rolled); a version cannot
    shadow itself or one that failed its gate; none stops it; leaving it out keeps it."""
    def run(*args):
        return CliRunner().invoke(app, ["serve", "rollout", "--tracking-uri", registry, *args])

    done = run("--version", "1", "--shadow", "2")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["shadow"] == "2"
    assert kube.objects[CONFIGMAP]["data"] == {P.ROLLOUT_KEY: "1", P.ROLLOUT_SHADOW_KEY: "2"}
    annotations = kube.objects[DEPLOYMENT]["spec"]["template"]["metadata"]["annotations"]
    assert annotations[P.ROLLOUT_ANNOTATION] == "1+shadow-2"
    kept = run("--version", "1")
    assert json.loads(kept.stdout)["shadow"] == "2" and kube.objects[CONFIGMAP]["data"][P.ROLLOUT_SHADOW_KEY] == "2"
    assert run("--version", "2").exit_code == 1  # would shadow itself
    assert "did not pass its gate" in run("--version", "1", "--shadow", "3").output
    stopped = run("--version", "1", "--shadow", "none")
    assert stopped.exit_code == 0 and kube.objects[CONFIGMAP]["data"][P.ROLLOUT_SHADOW_KEY] == "none"
    assert kube.objects[DEPLOYMENT]["spec"]["template"]["metadata"]["annotations"][P.ROLLOUT_ANNOTATION] == "1"


def test_the_deployment_reads_its_version_from_the_rollout_configmap():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not found: install Debian's kubectl package to render the overlays")
    from pathlib import Path

    from cxrlt.registry import RegistryError, resolve_version

    root = Path(__file__).resolve().parents[1]
    for overlay in ("dev", "prod"):
        docs = [d for d in yaml.safe_load_all(subprocess.run(
            [kubectl, "kustomize", str(root / "infra" / "overlays" / overlay)], capture_output=True, text=True,
            check=True).stdout) if d]
        dep = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == P.TRITON_SERVICE)
        # the repository builder; the other init container writes the front door's configuration
        builder, front = dep["spec"]["template"]["spec"]["initContainers"]
        init = builder
        assert front["name"] == "front-door-config" and not any("models:/" in a for a in front["args"])
        assert f"models:/{P.REGISTERED_MODEL}/$(CXRLT_MODEL_VERSION)" in init["args"]
        assert not any("@" in a for a in init["args"]), "no replica resolves an alias itself"
        ref = next(e for e in init["env"] if e["name"] == "CXRLT_MODEL_VERSION")["valueFrom"]["configMapKeyRef"]
        assert ref == {"name": P.ROLLOUT_CONFIGMAP, "key": P.ROLLOUT_KEY}
        assert f"models:/{P.REGISTERED_MODEL}/$(CXRLT_SHADOW_VERSION)" in init["args"]
        ref = next(e for e in init["env"] if e["name"] == "CXRLT_SHADOW_VERSION")["valueFrom"]["configMapKeyRef"]
        assert ref == {"name": P.ROLLOUT_CONFIGMAP, "key": P.ROLLOUT_SHADOW_KEY}
        assert any(d["kind"] == "ConfigMap" and d["metadata"]["name"] == P.ROLLOUT_CONFIGMAP for d in docs)
        role = next(d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "cxrlt-rollout")
        assert {n for r in role["rules"] for n in r["resourceNames"]} == {P.ROLLOUT_CONFIGMAP, P.TRITON_SERVICE}
    with pytest.raises(RegistryError, match="no version has been rolled out yet"):
        resolve_version(f"models:/{P.REGISTERED_MODEL}/none")
