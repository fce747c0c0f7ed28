"""One source of truth for deployment names: images, ports, secrets, namespaces, the registered model.

KFP components, the serving code and the kustomize manifests in ``infra/`` all use these values; a test renders the
manifests and checks that they agree.
"""

from __future__ import annotations

from cxrlt import __version__

IMAGE_REGISTRY = "ghcr.io/cxrlt"
IMAGE_TAG = __version__
IMAGES = {
    "train": f"{IMAGE_REGISTRY}/cxrlt-train:{IMAGE_TAG}",  # CUDA PyTorch + project + kfp (training components)
    "serve": f"{IMAGE_REGISTRY}/cxrlt-serve:{IMAGE_TAG}",  # NGC tritonserver + python-model dependencies
    "tools": f"{IMAGE_REGISTRY}/cxrlt-tools:{IMAGE_TAG}",  # CPU steps: validation, evaluation, registration
    # pytriton's tritonserver + the python-backend environment (what `cxrlt serve up` runs): CPU clusters, tests
    "serve_cpu": f"{IMAGE_REGISTRY}/cxrlt-serve-cpu:{IMAGE_TAG}",
    # the DICOM gateway (`cxrlt gateway`): C-STORE in, DICOM SR out; no torch
    "gateway": f"{IMAGE_REGISTRY}/cxrlt-gateway:{IMAGE_TAG}",
}

NAMESPACE = "cxrlt"
PIPELINES_NAMESPACE = "kubeflow"
HOSPITAL_NAMESPACE_LABEL = {"cxrlt.io/hospital-integration": "true"}

TRITON_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
#: The DICOM gateway (cxrlt gateway): its Service, DIMSE port (the registered DICOM port 11112), AE title, and the
#: ConfigMap a site edits (allowed calling AE titles, where reports go)
GATEWAY_SERVICE = "dicom-gateway"
DICOM_PORT = 11112
GATEWAY_AE_TITLE = "CXRLT"
GATEWAY_CONFIGMAP = "cxrlt-gateway"
MLFLOW_PORT = 5000
#: the largest item the served entry takes (encoded bytes, or 4 bytes per raw pixel): 64 MiB. An uncompressed 16-bit
#: 4300 x 3500 detector image is about 30 MB, the same as raw float32 values about 60 MB.
MAX_IMAGE_BYTES = 64 << 20
MLFLOW_SERVICE = "mlflow"
TRITON_SERVICE = "triton"
MLFLOW_TRACKING_URI = f"http://{MLFLOW_SERVICE}.{NAMESPACE}.svc.cluster.local:{MLFLOW_PORT}"

SECRETS = {
    "mlflow_db": "cxrlt-mlflow-db",  # key: uri (postgresql://...)
    # Object storage keys per workload (least privilege; bucket policies in docs/deploy.md), each with the keys
    # AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, MLFLOW_S3_ENDPOINT_URL:
    "s3_mlflow": "cxrlt-s3-mlflow",  # the MLflow server: read/write its artifact bucket (clients go through it)
    "s3_pipeline": "cxrlt-s3-pipeline",  # pipeline steps and TrainJobs: read data + weights mirror, write run outputs
    "mlflow_auth": "cxrlt-mlflow-auth",  # keys: MLFLOW_FLASK_SERVER_SECRET_KEY, basic_auth.ini (server side)
    # keys MLFLOW_TRACKING_USERNAME (MLFLOW_ROLE_USERS[role]), MLFLOW_TRACKING_PASSWORD: one MLflow account per role,
    # each with only what it needs (`cxrlt registry roles` grants it; docs/deploy.md has the table)
    "mlflow_training": "cxrlt-mlflow-training",  # pipeline steps, TrainJobs: their own experiments and runs
    "mlflow_registration": "cxrlt-mlflow-registration",  # the register step: new versions, the challenger alias
    "mlflow_promotion": "cxrlt-mlflow-promotion",  # the promote step: the champion alias
    "mlflow_serving": "cxrlt-mlflow-serving",  # the Triton init container: read-only
    # the MLflow admin (the basic_auth.ini admin): used only by the role bootstrap Job
    "mlflow_admin": "cxrlt-mlflow-admin",
    # key: TRITON_ADMIN_KEY, the header value the front door asks for before Triton's admin APIs (operators only)
    "triton_admin": "cxrlt-triton-admin",
    # keys: tls.crt, tls.key, ca.crt: Triton's gRPC certificate and the CA of hospital clients (mutual TLS)
    "triton_tls": "cxrlt-triton-tls",
    # keys: tls.crt, tls.key (the DICOM gateway's client certificate for Triton's mutual TLS), ca.crt (the CA of
    # Triton's server certificate)
    "gateway_tls": "cxrlt-gateway-tls",
    # key: evidence-signing.pem, the Ed25519 key that signs each registered version's gate evidence; mounted in the
    # registration step only (cxrlt registry keygen makes the pair)
    "evidence_signing": "cxrlt-evidence-signing",
}
#: the public half, key evidence-verify.pem: serve build (the Triton init container) and promotion refuse a version
#: whose evidence it does not verify
EVIDENCE_VERIFY_CONFIGMAP = "cxrlt-evidence-verify"
EVIDENCE_SIGNING_KEY_FILE, EVIDENCE_VERIFY_KEY_FILE = "evidence-signing.pem", "evidence-verify.pem"
MLFLOW_CLIENT_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
MLFLOW_ROLES = ("training", "registration", "promotion", "serving")
MLFLOW_ROLE_USERS = {role: f"cxrlt-{role}" for role in MLFLOW_ROLES}
#: where the role bootstrap reads each role's password (from that role's Secret)
MLFLOW_ROLE_PASSWORD_ENV = {role: f"CXRLT_MLFLOW_PASSWORD_{role.upper()}" for role in MLFLOW_ROLES}
S3_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL")

REGISTERED_MODEL = "cxrlt-bundle"
#: promotion: the lower end of the 95 % CI of (challenger - champion) mAP must be >= -PROMOTION_MARGIN
PROMOTION_MARGIN = 0.02
#: each evaluated image's subgroups (ImageID, sex, age_band, projection), written beside the evaluation's predictions
#: and registered with them: promotion compares versions within these groups
GROUPS_CSV = "groups.csv"
#: the evaluation report (one HTML page) beside the evaluation's predictions
REPORT_HTML = "report.html"
#: what drift monitoring compares served traffic with: the evaluation's score histograms per finding and input mix
#: (cxrlt.drift.reference_features), written beside the predictions and registered with them
DRIFT_REFERENCE_JSON = "drift_reference.json"
CHAMPION_ALIAS = "champion"
CHALLENGER_ALIAS = "challenger"

#: the ConfigMap that pins the model version every Triton replica serves (set by `cxrlt serve rollout` / promotion),
#: its key, and the pod-template annotation whose change rolls the Deployment
ROLLOUT_CONFIGMAP = "cxrlt-rollout"
ROLLOUT_KEY = "model_version"
#: the challenger every replica shadow-scores beside the served version ("none": no shadow scoring)
ROLLOUT_SHADOW_KEY = "shadow_version"
ROLLOUT_ANNOTATION = "cxrlt.io/model-version"

#: the KFP experiment of training runs and the service account they run as (scheduled, one-off or drift-started)
TRAINING_EXPERIMENT = "cxrlt-retraining"
PIPELINE_RUNNER_SERVICE_ACCOUNT = "cxrlt-pipeline-runner"
SERVICE_ACCOUNTS = {
    "pipeline": PIPELINE_RUNNER_SERVICE_ACCOUNT,  # in PIPELINES_NAMESPACE; may create/watch TrainJobs in NAMESPACE
    "trainer": "cxrlt-trainer",  # TrainJob pods: no permissions, no token
}
#: the shared volume of pipeline steps and TrainJobs (preprocess cache, split manifests, training runs), and where
#: both mount it (cxrlt.dataplane)
CACHE_PVC = "cxrlt-cache"
SHARED_ROOT = "/data"
#: uid/gid the images run as (images/*.Dockerfile create this user)
POD_UID = 1000

TRAINJOB_RUNTIME = "torch-distributed"
TRAINER_API = ("trainer.kubeflow.org", "v1alpha1", "trainjobs")
