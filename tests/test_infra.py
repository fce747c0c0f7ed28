"""infra/: overlays render, core resources validate against Kubernetes schemas, the TrainJob against the Trainer CRD,
and names/ports/images agree with cxrlt.platform."""

import shutil
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from cxrlt import platform as P

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "kubeflow-trainer"
K8S_VERSION = "1.32.0"
CORE_GROUPS = ("v1", "apps/v1", "autoscaling/v2", "networking.k8s.io/v1", "rbac.authorization.k8s.io/v1")


def _kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl not found: install Debian's kubectl package (apt-get install kubectl) to render overlays")
    return path


@pytest.fixture(scope="module", params=["dev", "prod"])
def rendered(request):
    out = subprocess.run([_kubectl(), "kustomize", str(ROOT / "infra" / "overlays" / request.param)],
                         capture_output=True, text=True, check=True).stdout
    return request.param, [d for d in yaml.safe_load_all(out) if d]


def _by_kind(docs, kind, name):
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def test_core_resources_validate_against_kubernetes_schemas(rendered):
    _, docs = rendered
    core = [d for d in docs if d["apiVersion"] in CORE_GROUPS]
    assert len(core) >= 11
    for doc in core:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "HorizontalPodAutoscaler", "NetworkPolicy",
                                         "ServiceMonitor", "ServiceAccount", "Role", "RoleBinding"}
    config_maps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    # one TrainJob definition (cxrlt.ops.launch.trainjob_body), no template; the gateway's site settings
    assert config_maps == {P.ROLLOUT_CONFIGMAP, P.GATEWAY_CONFIGMAP, "cxrlt-grafana-dashboard"}


def test_trainjob_body_validates_against_the_trainer_crd_and_is_hardened():
    """The launcher's TrainJob (the only TrainJob definition) is valid for the Trainer CRD; its pods run as a
    permission-less account, non-root, read-only root filesystem, no capabilities; credentials only from Secrets."""
    from cxrlt.ops.launch import trainjob_body

    crd = yaml.safe_load((FIXTURES / "trainer.kubeflow.org_trainjobs.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    job = trainjob_body("cxrlt-frontal-pcam-0123456789", ["train", "--member", "frontal/pcam"], gpus_per_node=4)
    jsonschema.validate(job, schema)
    assert (job["apiVersion"], job["kind"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob")
    runtime = yaml.safe_load((FIXTURES / "torch_distributed_runtime.yaml").read_text())
    assert job["spec"]["runtimeRef"]["name"] == runtime["metadata"]["name"] == P.TRAINJOB_RUNTIME
    assert job["spec"]["trainer"]["image"] == P.IMAGES["train"]
    runtime_job = runtime["spec"]["template"]["spec"]["replicatedJobs"][0]
    patch = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    assert patch["name"] == runtime_job["name"]
    pod = patch["template"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["name"] == runtime_job["template"]["spec"]["template"]["spec"]["containers"][0]["name"]
    assert pod["serviceAccountName"] == P.SERVICE_ACCOUNTS["trainer"]
    pod_sc = pod["securityContext"]
    assert pod_sc["runAsNonRoot"] and pod_sc["seccompProfile"]["type"] == "RuntimeDefault"
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"] and sc["capabilities"]["drop"] == ["ALL"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/tmp", "/dev/shm"}
    assert all("emptyDir" in volumes[m["name"]] or "persistentVolumeClaim" in volumes[m["name"]]
               for m in container["volumeMounts"])
    env = job["spec"]["trainer"]["env"]
    assert {"name": "HOME", "value": "/tmp"} in env
    assert not [e for e in env if "value" in e and ("KEY" in e["name"] or "PASSWORD" in e["name"])]
    assert {e["valueFrom"]["secretKeyRef"]["name"] for e in env if "valueFrom" in e} == {
        P.SECRETS["mlflow_training"], P.SECRETS["s3_pipeline"]}
    bad = {**job, "spec": {**job["spec"], "trainer": {**job["spec"]["trainer"], "numNodes": "two"}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_service_accounts_and_the_trainjob_role(rendered):
    """The pipeline runner's account lives where pipelines run and may only manage TrainJobs in cxrlt; the
    trainer's account has no token."""
    _, docs = rendered
    runner = _by_kind(docs, "ServiceAccount", P.SERVICE_ACCOUNTS["pipeline"])
    assert runner["metadata"]["namespace"] == P.PIPELINES_NAMESPACE
    binding = _by_kind(docs, "RoleBinding", "cxrlt-trainjob-launcher")
    assert binding["metadata"]["namespace"] == P.NAMESPACE
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": P.SERVICE_ACCOUNTS["pipeline"],
                                    "namespace": P.PIPELINES_NAMESPACE}]
    role = _by_kind(docs, "Role", binding["roleRef"]["name"])
    assert [(r["apiGroups"], r["resources"]) for r in role["rules"]] == [([P.TRAINER_API[0]], [P.TRAINER_API[2]])]
    assert _by_kind(docs, "ServiceAccount", P.SERVICE_ACCOUNTS["trainer"])["automountServiceAccountToken"] is False


def test_object_storage_keys_are_per_workload(rendered, tmp_path):
    """The MLflow server holds the artifact-bucket keys; pipeline steps hold the pipeline keys; the registration step
    and the Triton pod hold none (MLflow proxies artifact uploads and downloads)."""
    from kfp import compiler

    from pipelines.training_pipeline import training_pipeline

    _, docs = rendered
    for dep in (d for d in docs if d["kind"] == "Deployment"):
        pod = dep["spec"]["template"]["spec"]
        for c in pod.get("initContainers", []) + pod["containers"]:
            refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in c.get("env", [])
                    if "secretKeyRef" in e.get("valueFrom", {})}
            # MLflow (and, in dev, the object store it writes to) hold the artifact-bucket keys
            expected = {P.SECRETS["s3_mlflow"]} if dep["metadata"]["name"] in (P.MLFLOW_SERVICE, "object-storage") \
                else set()
            assert refs & {P.SECRETS["s3_mlflow"], P.SECRETS["s3_pipeline"]} == expected, c["name"]
    package = tmp_path / "training.yaml"
    compiler.Compiler().compile(training_pipeline, str(package))
    executors = list(yaml.safe_load_all(package.read_text()))[-1]["platforms"]["kubernetes"]["deploymentSpec"][
        "executors"]
    s3 = {name for name, spec in executors.items() for m in spec.get("secretAsEnv", [])
          if m.get("secretName") == P.SECRETS["s3_pipeline"]}
    assert "exec-train-member" in s3 and "exec-register" not in s3
    assert not any(m.get("secretName") == P.SECRETS["s3_mlflow"] for spec in executors.values()
                   for m in spec.get("secretAsEnv", []))


def test_names_ports_images_and_secrets_agree_with_platform(rendered):
    overlay, docs = rendered
    triton = _by_kind(docs, "Deployment", "triton")["spec"]["template"]["spec"]
    container, front = _containers(triton)
    # dev runs pytriton's CPU tritonserver (cxrlt-serve-cpu), prod the NGC image; the front door runs in the same
    assert container["image"] == front["image"] == P.IMAGES["serve_cpu" if overlay == "dev" else "serve"]
    assert {p["name"]: p["containerPort"] for p in front["ports"]} == P.TRITON_PORTS
    assert "ports" not in container, "Triton listens on loopback only"
    assert {c["image"] for c in triton["initContainers"]} == {P.IMAGES["tools"]}
    assert f"models:/{P.REGISTERED_MODEL}/$(CXRLT_MODEL_VERSION)" in triton["initContainers"][0]["args"]
    assert any(v.get("emptyDir", {}).get("medium") == "Memory" for v in triton["volumes"])
    assert "/v2/health/live" in " ".join(container["livenessProbe"]["exec"]["command"])
    assert container["readinessProbe"]["httpGet"] == container["startupProbe"]["httpGet"] == {
        "path": "/v2/health/ready", "port": P.TRITON_PORTS["http"]}  # through the front door, as clients see it
    assert triton["securityContext"]["runAsNonRoot"] is True
    service = _by_kind(docs, "Service", P.TRITON_SERVICE)
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == P.TRITON_PORTS
    mlflow = _by_kind(docs, "Deployment", P.MLFLOW_SERVICE)["spec"]["template"]["spec"]["containers"][0]
    assert mlflow["image"] == P.IMAGES["tools"] and mlflow["ports"][0]["containerPort"] == P.MLFLOW_PORT
    assert "--workers=1" in mlflow["args"]
    assert any(f"{P.MLFLOW_SERVICE}.{P.NAMESPACE}.svc.cluster.local" in a for a in mlflow["args"])
    secrets = {e["valueFrom"]["secretKeyRef"]["name"] for e in mlflow["env"] if "valueFrom" in e}
    assert secrets == {P.SECRETS["mlflow_db"], P.SECRETS["s3_mlflow"], P.SECRETS["mlflow_auth"]}
    assert "--app-name=basic-auth" in mlflow["args"]  # in every overlay, dev included
    namespaces = {(d["kind"], d["metadata"]["name"]): d["metadata"].get("namespace") for d in docs
                  if d["kind"] != "Namespace"}
    # everything lives in the cxrlt namespace but the pipeline runner's account, which lives where pipelines run
    assert namespaces.pop(("ServiceAccount", P.SERVICE_ACCOUNTS["pipeline"])) == P.PIPELINES_NAMESPACE
    assert set(namespaces.values()) == {P.NAMESPACE}


def test_network_policies_restrict_triton_grpc_and_mlflow(rendered):
    _, docs = rendered
    triton = _by_kind(docs, "NetworkPolicy", "triton-ingress")["spec"]["ingress"]
    grpc_rule = next(r for r in triton if r["ports"][0]["port"] == P.TRITON_PORTS["grpc"])
    assert grpc_rule["from"][0]["namespaceSelector"]["matchLabels"] == P.HOSPITAL_NAMESPACE_LABEL
    mlflow = _by_kind(docs, "NetworkPolicy", "mlflow-ingress")["spec"]["ingress"][0]
    assert mlflow["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": P.PIPELINES_NAMESPACE}


def test_pods_are_hardened(rendered):
    """Every Deployment: non-root, seccomp RuntimeDefault, no service-account token, and every container (init too)
    with a read-only root filesystem, no privilege escalation and no capabilities; writable paths are emptyDirs."""
    _, docs = rendered
    for dep in (d for d in docs if d["kind"] == "Deployment"):
        pod, name = dep["spec"]["template"]["spec"], dep["metadata"]["name"]
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in pod.get("initContainers", []) + pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, c["name"]
            assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
            writable = [m for m in c.get("volumeMounts", []) if not m.get("readOnly")]
            # emptyDirs only, but for the DICOM gateway's spool, which must outlive the pod (nothing lost)
            spool = [m for m in writable if name == P.GATEWAY_SERVICE and m["mountPath"] == "/var/spool/cxrlt"]
            assert all("emptyDir" in volumes[m["name"]] for m in writable if m not in spool), c["name"]
            assert all("persistentVolumeClaim" in volumes[m["name"]] for m in spool)


def test_image_tags_come_from_kustomize_and_the_triton_release_is_fixed():
    for path in (ROOT / "infra" / "base").rglob("*.yaml"):
        if path.name in ("kustomization.yaml", "trainjob.yaml"):
            continue
        for doc in (d for d in yaml.safe_load_all(path.read_text()) if d):
            pod = doc.get("spec", {}).get("template", {}).get("spec", {})
            for c in pod.get("initContainers", []) + pod.get("containers", []):
                assert ":" not in c["image"].rsplit("/", 1)[-1], f"{path.name}: tag in {c['image']}"
    tag = next(line for line in (ROOT / "images" / "serve.Dockerfile").read_text().splitlines()
               if line.startswith("ARG TRITON_TAG=")).split("=")[1]
    year, month = (int(x) for x in tag.split("-")[0].split("."))
    assert (year, month) >= (25, 7), "Triton before 25.07 lacks the 2025 python-backend/HTTP-server fixes"


def _containers(pod: dict) -> tuple[dict, dict]:
    """The Triton and the front-door containers of the Triton pod."""
    by_name = {c["name"]: c for c in pod["containers"]}
    assert set(by_name) == {"triton", "front-door"} and pod["containers"][0]["name"] == "triton"
    return by_name["triton"], by_name["front-door"]


def _flags(args: list[str]) -> dict[str, str]:
    return {a: b for a, b in zip(args, args[1:], strict=False) if a.startswith("--") and not b.startswith("--")}


def test_triton_listens_on_loopback_behind_the_front_door_that_holds_the_admin_key(rendered):
    """tritonserver reads restricted-API keys only from argv (the node's process table shows them): production
    Triton serves a fixed repository on 127.0.0.1 with no key, and the front door (nginx) is the pod's listener; its
    configuration, with the key from the Secret's environment variable, is written by an init container into a
    memory-backed volume. No container's command line carries the key."""
    _, docs = rendered
    pod = _by_kind(docs, "Deployment", "triton")["spec"]["template"]["spec"]
    server, front = _containers(pod)
    args = server["args"]
    assert "--model-control-mode=none" in args and not any(a.startswith("--load-model") for a in args)
    assert not any("restricted" in a or "ssl" in a for a in args)
    flags = dict(a.split("=", 1) for a in args if "=" in a)
    assert flags["--http-address"] == flags["--grpc-address"] == flags["--metrics-address"] == "127.0.0.1"
    config = next(c for c in pod["initContainers"] if c["name"] == "front-door-config")
    assert config["command"] == ["cxrlt", "serve", "front-door"]
    door = _flags(config["args"])
    for kind, port in P.TRITON_PORTS.items():
        assert int(door[f"--{kind}-port"]) == port  # the public ports, named in the Service
        assert int(door[f"--triton-{kind}-port"]) == int(flags[f"--{kind}-port"]) != port
    env = {e["name"]: e for e in config["env"]}
    assert env["TRITON_ADMIN_KEY"]["valueFrom"]["secretKeyRef"]["name"] == P.SECRETS["triton_admin"]
    assert front["command"] == ["nginx", "-e", "stderr", "-c", door["--out"]]
    volume = next(m["name"] for m in config["volumeMounts"] if door["--out"].startswith(m["mountPath"] + "/"))
    assert next(v for v in pod["volumes"] if v["name"] == volume)["emptyDir"]["medium"] == "Memory"
    assert any(m["name"] == volume and m["readOnly"] for m in front["volumeMounts"])
    for container in [*pod["containers"], *pod["initContainers"]]:
        assert "TRITON_ADMIN_KEY" not in " ".join([*container.get("command", []), *container.get("args", [])])
        if container is not config:
            assert "TRITON_ADMIN_KEY" not in {e["name"] for e in container.get("env", [])}, container["name"]


def test_triton_grpc_uses_mutual_tls_from_the_certificate_secret(rendered):
    overlay, docs = rendered
    pod = _by_kind(docs, "Deployment", "triton")["spec"]["template"]["spec"]
    server, front = _containers(pod)
    tls = next(v for v in pod["volumes"] if v["name"] == "tls")
    assert tls["secret"]["secretName"] == P.SECRETS["triton_tls"] and tls["secret"]["defaultMode"] == 0o440
    mount = next(m for m in front["volumeMounts"] if m["name"] == "tls")
    assert mount["readOnly"] is True and not any(m["name"] == "tls" for m in server["volumeMounts"])
    flags = _flags(next(c for c in pod["initContainers"] if c["name"] == "front-door-config")["args"])
    files = {"--tls-cert": "tls.crt", "--tls-key": "tls.key"}
    for flag, key in files.items():
        assert flags[flag] == f"{mount['mountPath']}/{key}"
    if overlay == "dev":  # one CA for the server and the clients, from the hand-made Secret
        assert flags["--tls-ca"] == f"{mount['mountPath']}/ca.crt"
    if overlay == "prod":  # cert-manager issues (and renews) the Secret the pod mounts
        # clients are trusted only from the integrations CA, of which the pod gets the certificate and not the key
        client_ca = next(v for v in pod["volumes"] if v["name"] == "client-ca")["secret"]
        assert client_ca["secretName"] == "cxrlt-integrations-ca" and client_ca["items"] == [
            {"key": "ca.crt", "path": "ca.crt"}]
        ca_mount = next(m for m in front["volumeMounts"] if m["name"] == "client-ca")
        assert ca_mount["readOnly"] and flags["--tls-ca"] == f"{ca_mount['mountPath']}/ca.crt"
        ca = _by_kind(docs, "Certificate", "cxrlt-integrations-ca")["spec"]
        assert ca["isCA"] and ca["secretName"] == "cxrlt-integrations-ca"
        assert _by_kind(docs, "Issuer", "cxrlt-integrations")["spec"]["ca"]["secretName"] == ca["secretName"]
        assert _by_kind(docs, "Certificate", "triton-grpc")["spec"]["issuerRef"]["name"] == "cxrlt-hospital-ca"
        cert = _by_kind(docs, "Certificate", "triton-grpc")
        assert cert["spec"]["secretName"] == P.SECRETS["triton_tls"]
        service = _by_kind(docs, "Service", "triton")
        assert f"triton.{service['metadata']['namespace']}.svc" in cert["spec"]["dnsNames"]
        assert server["resources"]["limits"]["nvidia.com/gpu"] == "1"
        init = pod["initContainers"][0]["args"]
        assert init[init.index("--device") + 1] == "gpu" and init[init.index("--onnx-runtime") + 1] == "native"


def test_triton_init_container_gets_no_object_storage_keys(rendered):
    _, docs = rendered
    init = _by_kind(docs, "Deployment", "triton")["spec"]["template"]["spec"]["initContainers"][0]
    assert not [e for e in init.get("env", []) if e["name"].startswith("AWS_") or "S3" in e["name"]]


def test_only_registration_signs_and_serving_and_promotion_verify(rendered, tmp_path):
    """The evidence signing key reaches the register step alone; the Triton init container and the promotion step get
    the public key from the ConfigMap (required: a missing ConfigMap stops the pod rather than skipping the check)."""
    from kfp import compiler

    from cxrlt.evidence import SIGNING_KEY_ENV, VERIFY_KEY_ENV
    from pipelines.promotion_pipeline import promotion_pipeline
    from pipelines.training_pipeline import training_pipeline

    _, docs = rendered
    init = _by_kind(docs, "Deployment", "triton")["spec"]["template"]["spec"]["initContainers"][0]
    verify = next(e for e in init["env"] if e["name"] == VERIFY_KEY_ENV)["valueFrom"]["configMapKeyRef"]
    assert verify == {"name": P.EVIDENCE_VERIFY_CONFIGMAP, "key": P.EVIDENCE_VERIFY_KEY_FILE}
    for doc in docs:  # the private key is in no manifest of the overlay
        assert P.SECRETS["evidence_signing"] not in yaml.safe_dump(doc), doc["metadata"]["name"]
    signing, verifying = {}, {}
    for pipeline in (training_pipeline, promotion_pipeline):
        package = tmp_path / f"{pipeline.name}.yaml"
        compiler.Compiler().compile(pipeline, str(package))
        platform = list(yaml.safe_load_all(package.read_text()))[-1]["platforms"]["kubernetes"]["deploymentSpec"]
        for executor, spec in platform["executors"].items():
            for m in spec.get("secretAsEnv", []):
                name = m.get("secretName") or m.get("secretNameParameter", {}).get("runtimeValue", {}).get("constant")
                if name == P.SECRETS["evidence_signing"]:
                    signing[executor] = [k["envVar"] for k in m["keyToEnv"]]
            for m in spec.get("configMapAsEnv", []):
                name = m.get("configMapName") or m.get("configMapNameParameter", {}).get("runtimeValue", {}).get(
                    "constant")
                if name == P.EVIDENCE_VERIFY_CONFIGMAP:
                    verifying[executor] = [k["envVar"] for k in m["keyToEnv"]]
    assert signing == {"exec-register": [SIGNING_KEY_ENV]}
    assert verifying == {"exec-promote": [VERIFY_KEY_ENV]}


def test_registry_clients_get_mlflow_credentials_from_the_secret(rendered, tmp_path):
    """MLflow runs basic auth everywhere; its auth store config is a read-only Secret mount, and every client (the
    Triton init container, every pipeline step, TrainJobs) gets MLFLOW_TRACKING_USERNAME/PASSWORD from a Secret."""
    from kfp import compiler

    from cxrlt.ops.launch import trainjob_body
    from pipelines.promotion_pipeline import promotion_pipeline
    from pipelines.training_pipeline import training_pipeline

    _, docs = rendered

    def from_secret(env):
        return {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in env
                if "secretKeyRef" in e.get("valueFrom", {})}

    mlflow = _by_kind(docs, "Deployment", P.MLFLOW_SERVICE)["spec"]["template"]["spec"]
    auth = next(m for m in mlflow["containers"][0]["volumeMounts"] if m["name"] == "auth")
    assert auth["readOnly"] and any(e["name"] == "MLFLOW_AUTH_CONFIG_PATH" and e["value"].startswith(auth["mountPath"])
                                    for e in mlflow["containers"][0]["env"])
    init = _by_kind(docs, "Deployment", "triton")["spec"]["template"]["spec"]["initContainers"][0]

    def account(env):  # the role Secret both credentials come from
        (secret,) = {from_secret(env).get(k) for k in P.MLFLOW_CLIENT_KEYS}
        return secret

    assert account(init["env"]) == P.SECRETS["mlflow_serving"]
    assert account(trainjob_body("j", ["train"])["spec"]["trainer"]["env"]) == P.SECRETS["mlflow_training"]
    roles = {}
    for pipeline in (training_pipeline, promotion_pipeline):
        package = tmp_path / f"{pipeline.name}.yaml"
        compiler.Compiler().compile(pipeline, str(package))
        platform = list(yaml.safe_load_all(package.read_text()))[-1]["platforms"]["kubernetes"]["deploymentSpec"]
        for executor, spec in platform["executors"].items():
            names = {m["secretName"] if "secretName" in m else m.get("secretNameParameter", {}).get("runtimeValue",
                     {}).get("constant") for m in spec.get("secretAsEnv", [])}
            (roles[executor],) = names & {P.SECRETS[f"mlflow_{r}"] for r in P.MLFLOW_ROLES}  # exactly one account
    assert roles.pop("exec-register") == P.SECRETS["mlflow_registration"]
    assert roles.pop("exec-promote") == P.SECRETS["mlflow_promotion"]
    assert set(roles.values()) == {P.SECRETS["mlflow_training"]}, roles
    # the admin account reaches the role bootstrap Job only; it reads every role's password from that role's Secret
    users = {d["metadata"]["name"] for d in docs if d["kind"] in ("Deployment", "Job")
             if P.SECRETS["mlflow_admin"] in yaml.safe_dump(d)}
    assert users == {"mlflow-roles"}
    job = _by_kind(docs, "Job", "mlflow-roles")["spec"]["template"]["spec"]["containers"][0]
    assert job["command"] == ["cxrlt", "registry", "roles"] and account(job["env"]) == P.SECRETS["mlflow_admin"]
    assert {P.MLFLOW_ROLE_PASSWORD_ENV[r]: P.SECRETS[f"mlflow_{r}"] for r in P.MLFLOW_ROLES} == {
        k: v for k, v in from_secret(job["env"]).items() if k.startswith("CXRLT_MLFLOW_PASSWORD_")}


def test_trainjob_pods_may_reach_mlflow(rendered):
    _, docs = rendered
    rule = _by_kind(docs, "NetworkPolicy", "mlflow-ingress")["spec"]["ingress"][0]
    selectors = [f["podSelector"] for f in rule["from"] if "podSelector" in f]
    assert {"key": "jobset.sigs.k8s.io/jobset-name", "operator": "Exists"} in [
        e for s in selectors for e in s.get("matchExpressions", [])]


def test_dicom_gateway_reaches_triton_over_mutual_tls_and_keeps_its_spool(rendered):
    overlay, docs = rendered
    dep = _by_kind(docs, "Deployment", P.GATEWAY_SERVICE)
    pod = dep["spec"]["template"]["spec"]
    (gateway,) = pod["containers"]
    assert gateway["image"] == P.IMAGES["gateway"] and dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"]["type"] == "Recreate", "two pods must never share the spool"
    flags = dict(a.split("=", 1) for a in gateway["args"])
    assert flags["--url"] == f"{P.TRITON_SERVICE}.{P.NAMESPACE}.svc:{P.TRITON_PORTS['grpc']}"
    assert int(flags["--port"]) == P.DICOM_PORT == gateway["ports"][0]["containerPort"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in gateway["volumeMounts"]}
    ca, cert, key = (flags[f] for f in ("--tls-ca", "--tls-cert", "--tls-key"))
    ca_secret = volumes[mounts[str(Path(ca).parent)]]["secret"]
    assert ca_secret["secretName"] == P.SECRETS["triton_tls"] and ca_secret["items"] == [
        {"key": "ca.crt", "path": "ca.crt"}], "the gateway gets Triton's CA certificate, never its key"
    client = volumes[mounts[str(Path(cert).parent)]]["secret"]
    assert client["secretName"] == P.SECRETS["gateway_tls"] and Path(key).parent == Path(cert).parent
    assert "persistentVolumeClaim" in volumes[mounts[flags["--spool"]]]
    claim = volumes[mounts[flags["--spool"]]]["persistentVolumeClaim"]["claimName"]
    assert _by_kind(docs, "PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadWriteOnce"]
    settings = _by_kind(docs, "ConfigMap", P.GATEWAY_CONFIGMAP)["data"]
    env = {e["name"]: e["valueFrom"]["configMapKeyRef"] for e in gateway["env"]}
    assert {ref["key"] for ref in env.values()} == set(settings) and settings["ae_title"] == P.GATEWAY_AE_TITLE
    service = _by_kind(docs, "Service", P.GATEWAY_SERVICE)["spec"]["ports"][0]
    assert service["port"] == P.DICOM_PORT
    triton_rules = _by_kind(docs, "NetworkPolicy", "triton-ingress")["spec"]["ingress"]
    assert any(r["from"][0].get("podSelector", {}).get("matchLabels") == {"app.kubernetes.io/name": P.GATEWAY_SERVICE}
               and r["ports"][0]["port"] == P.TRITON_PORTS["grpc"] for r in triton_rules)
    dicom_rule = _by_kind(docs, "NetworkPolicy", "dicom-gateway-ingress")["spec"]["ingress"][0]
    assert dicom_rule["from"][0]["namespaceSelector"]["matchLabels"] == P.HOSPITAL_NAMESPACE_LABEL
    if overlay == "prod":  # cert-manager issues the client certificate from the integrations CA
        cert = _by_kind(docs, "Certificate", "dicom-gateway-client")["spec"]
        assert cert["secretName"] == P.SECRETS["gateway_tls"] and cert["usages"] == ["client auth"]
        assert cert["issuerRef"]["name"] == "cxrlt-integrations"
