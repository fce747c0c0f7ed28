"""``cxrlt monitor``: compare a window of served traffic (from Prometheus) with the reference the registered version
was validated on, log the result to MLflow and, past the profile's threshold, start the training pipeline.

The window is what the ``cxr`` entry counted (``cxrlt_entry_score`` buckets per finding, ``cxrlt_entry_items_total``
by routed view and declared bit depth), summed with ``increase(...[window])`` at one instant; the reference is the
version's registered evaluation (``drift_reference.json``, written by the evaluate step). The judgement is
:func:`cxrlt.drift.compare`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from cxrlt.drift import DriftReport, DriftSettings, compare, le_name
from cxrlt.errors import CxrltError, InvalidInputError

MONITOR_EXPERIMENT = "cxrlt-monitor"
_DURATION = re.compile(r"\d+[smhdw]")


class PrometheusError(CxrltError):
    """Prometheus could not be queried or answered with an error."""


def query(url: str, promql: str, at: float | None = None, timeout: float = 30.0) -> list[dict]:
    """One instant query (``/api/v1/query``); returns its vector's samples."""
    import requests

    params = {"query": promql, **({"time": at} if at is not None else {})}
    try:
        reply = requests.get(f"{url.rstrip('/')}/api/v1/query", params=params, timeout=timeout)
    except requests.RequestException as exc:
        raise PrometheusError(f"Prometheus at {url} did not answer ({exc}); check --prometheus") from exc
    body = reply.json() if reply.headers.get("content-type", "").startswith("application/json") else {}
    if reply.status_code != 200 or body.get("status") != "success":
        raise PrometheusError(f"Prometheus at {url} refused {promql!r}: {body.get('error') or reply.text[:300]}")
    return body["data"]["result"]


def served_window(url: str, window: str = "6h", at: float | None = None) -> tuple[dict, int]:
    """The window's features (``score:<finding>``, ``view``, ``bits``: bin -> count) and its scored items."""
    if not _DURATION.fullmatch(window):
        raise InvalidInputError(f"window must be a Prometheus duration such as 6h or 7d, got {window!r}")
    features: dict[str, dict[str, int]] = {}
    cumulative: dict[str, list[tuple[float, str, float]]] = {}
    for sample in query(url, f"sum by (finding, le) (increase(cxrlt_entry_score_bucket[{window}]))", at):
        le = sample["metric"]["le"]
        cumulative.setdefault(sample["metric"]["finding"], []).append((float(le), le, float(sample["value"][1])))
    for finding, rows in cumulative.items():
        rows.sort()
        previous, bins = 0.0, {}
        for _, le, count in rows:  # Prometheus buckets are cumulative: each bin is the step from the last one
            bins[le_name(le)] = max(int(round(count - previous)), 0)
            previous = count
        features[f"score:{finding}"] = bins
    views: dict[str, int] = {}
    bits: dict[str, int] = {}
    for sample in query(url, f"sum by (view, bits) (increase(cxrlt_entry_items_total[{window}]))", at):
        view, depth = sample["metric"].get("view", ""), sample["metric"].get("bits", "unknown")
        count = int(round(float(sample["value"][1])))
        if view == "refused" or not count:
            continue
        views[view] = views.get(view, 0) + count
        bits[depth] = bits.get(depth, 0) + count
    features["view"], features["bits"] = views, bits
    return features, sum(views.values())


def check(prometheus: str, reference: dict, window: str = "6h", settings: DriftSettings = DriftSettings(),
          at: float | None = None) -> DriftReport:
    served, items = served_window(prometheus, window, at)
    return compare(reference, served, items, settings)


def log_to_mlflow(report: DriftReport, version: str, window: str, tracking_uri: str | None = None) -> str:
    """One MLflow run in :data:`MONITOR_EXPERIMENT`: every feature's PSI and p-value, the drifted count, the report
    as JSON; returns the run id."""
    import mlflow

    from cxrlt.tracking import experiment_id

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(experiment_id=experiment_id(MONITOR_EXPERIMENT), run_name=f"drift {version}") as run:
        mlflow.set_tags({"model_version": version, "window": window, "judged": str(report.judged),
                         "retrain": str(report.retrain)})
        mlflow.log_metrics({"window_items": report.window_items, "drifted_features": len(report.drifted)})
        for f in report.features:
            key = f.feature.replace(":", "_").replace(" ", "_")
            mlflow.log_metrics({f"psi_{key}": f.psi, f"p_{key}": f.p_value})
        mlflow.log_dict(report.to_dict(), "drift_report.json")
        return run.info.run_id


def reference_of(version: str, name: str | None = None, tracking_uri: str | None = None) -> tuple[dict, str]:
    """The drift reference a registered version was validated on (``@alias`` or a number), and its number."""
    from cxrlt.platform import DRIFT_REFERENCE_JSON, REGISTERED_MODEL
    from cxrlt.registry import evaluation_file

    path, number = evaluation_file(version, DRIFT_REFERENCE_JSON, name or REGISTERED_MODEL, tracking_uri)
    return json.loads(Path(path).read_text()), number


#: the KFP API inside the cluster (Kubeflow Pipelines' standalone install), and the projected token kfp.Client reads
IN_CLUSTER_KFP = "http://ml-pipeline.kubeflow.svc.cluster.local:8888"
KFP_TOKEN_PATH = "/var/run/secrets/kubeflow/pipelines/token"


def start_training_version(host: str | None, pipeline_id: str, version_id: str, params: dict, run_name: str,
                           namespace: str | None = None) -> str:
    """Start one run of an uploaded training pipeline version (what the in-cluster monitor can name: it has no
    package file) in the training experiment; returns the run id. Through KFP's generated API client: kfp.Client
    cannot be imported inside a pipeline step (kfp leaves it out of its runtime import)."""
    import os

    import kfp_server_api as kfp_api

    from cxrlt.platform import PIPELINE_RUNNER_SERVICE_ACCOUNT, TRAINING_EXPERIMENT

    config = kfp_api.Configuration(host=host or IN_CLUSTER_KFP)
    token = Path(os.environ.get("KF_PIPELINES_SA_TOKEN_PATH", KFP_TOKEN_PATH))
    if token.is_file():  # the pipeline-runner's projected service-account token
        config.api_key["authorization"], config.api_key_prefix["authorization"] = token.read_text().strip(), "Bearer"
    client = kfp_api.ApiClient(config)
    experiments = kfp_api.ExperimentServiceApi(client)
    named = json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name",
                                        "stringValue": TRAINING_EXPERIMENT}]})
    found = experiments.experiment_service_list_experiments(filter=named, namespace=namespace).experiments or []
    experiment = found[0] if found else experiments.experiment_service_create_experiment(
        kfp_api.V2beta1Experiment(display_name=TRAINING_EXPERIMENT, namespace=namespace))
    run = kfp_api.RunServiceApi(client).run_service_create_run(kfp_api.V2beta1Run(
        display_name=run_name, experiment_id=experiment.experiment_id,
        pipeline_version_reference=kfp_api.V2beta1PipelineVersionReference(pipeline_id=pipeline_id,
                                                                           pipeline_version_id=version_id),
        runtime_config=kfp_api.V2beta1RuntimeConfig(parameters=params),
        service_account=PIPELINE_RUNNER_SERVICE_ACCOUNT))
    return run.run_id


def monitor_once(prometheus: str, version: str = "@champion", tracking_uri: str | None = None,
                 config: str | Path | None = None, window: str | None = None, reference: str | Path | None = None,
                 kfp_host: str | None = None, pipeline_id: str | None = None, version_id: str | None = None,
                 training_params: dict | None = None, at: float | None = None) -> dict:
    """One monitoring pass (what the monitor pipeline's step runs): the reference (a file, or the registered
    version's), the window judged with the profile's ``monitor`` settings, the result logged to MLflow when a
    tracking URI is given, and the uploaded training version started when the window drifted past the threshold.
    Returns the report with ``version``, ``window``, ``mlflow_run``, ``run_id`` and ``outcome``."""
    from cxrlt.config import MonitorConfig, load_profile

    monitor = load_profile(config).monitor if config else MonitorConfig()
    window = window or monitor.window
    if reference is not None:
        ref, judged = json.loads(Path(reference).read_text()), str(reference)
    else:
        ref, judged = reference_of(version, tracking_uri=tracking_uri)
    report = check(prometheus, ref, window, monitor.settings(), at)
    out = {**report.to_dict(), "version": judged, "window": window, "mlflow_run": None, "run_id": None}
    if tracking_uri:
        out["mlflow_run"] = log_to_mlflow(report, judged, window, tracking_uri)
    if report.retrain and pipeline_id and version_id:
        out["run_id"] = start_training_version(kfp_host, pipeline_id, version_id, training_params or {},
                                               f"cxrlt-drift-{Path(judged).name}")
    out["outcome"] = "retrain" if out["run_id"] else "drift" if report.retrain else \
        "ok" if report.judged else "not judged"
    return out
