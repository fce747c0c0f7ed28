"""Drift monitoring: the served window against the champion's validated reference; past the profile's threshold the
training pipeline is started (scheduled like retraining: ``cxrlt pipeline schedule --package
monitor_pipeline.yaml``)."""

from kfp import dsl, kubernetes

from components.check_drift.component import check_drift
from cxrlt.platform import CHAMPION_ALIAS, MLFLOW_CLIENT_KEYS, SECRETS


@dsl.pipeline(name="cxrlt-monitor", description="Judge served traffic against the champion's validation; start "
                                                "retraining when it drifted.")
def monitor_pipeline(prometheus_url: str, tracking_uri: str, model_version: str = f"@{CHAMPION_ALIAS}",
                     config: str = "", window: str = "", reference_json: str = "", kfp_host: str = "",
                     training_pipeline_id: str = "", training_version_id: str = "",
                     training_params: dict = {}):  # noqa: B006 - KFP needs a literal default
    """``training_pipeline_id``/``training_version_id`` name the uploaded training version a drift starts (with
    ``training_params``); without them the drift is reported and logged only."""
    task = check_drift(prometheus_url=prometheus_url, tracking_uri=tracking_uri, model_version=model_version,
                       config=config, window=window, reference_json=reference_json, kfp_host=kfp_host,
                       training_pipeline_id=training_pipeline_id, training_version_id=training_version_id,
                       training_params=training_params).set_caching_options(False)
    # the training account: it reads the registry's versions and logs runs, and may move no alias
    kubernetes.use_secret_as_env(task, secret_name=SECRETS["mlflow_training"],
                                 secret_key_to_env={k: k for k in MLFLOW_CLIENT_KEYS})
