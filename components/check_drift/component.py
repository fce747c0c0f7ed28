from kfp import dsl
from kfp.dsl import Artifact, Output

from components._base import TOOLS_IMAGE


@dsl.component(base_image=TOOLS_IMAGE, install_kfp_package=False)
def check_drift(prometheus_url: str, tracking_uri: str, report: Output[Artifact], model_version: str = "@champion",
                config: str = "", window: str = "", reference_json: str = "", kfp_host: str = "",
                training_pipeline_id: str = "", training_version_id: str = "",
                training_params: dict = {}) -> str:  # noqa: B006 - KFP needs a literal default
    """Compare the served window (Prometheus) with what the registered version was validated on, log the result to
    MLflow and, past the profile's threshold, start the uploaded training pipeline version. Returns "retrain" (a
    run was started), "drift" (past the threshold, no training version to start), "ok" or "not judged".

    Args:
        prometheus_url: Prometheus that scrapes Triton's metrics port.
        tracking_uri: MLflow: the version's registered reference, and where the result is logged.
        report: the drift report (JSON): every feature's bins, PSI, p-value and verdict.
        model_version: the registered version whose validation is the reference (@alias or a number).
        config: profile whose monitor.* settings judge the window ("" = the defaults).
        window: a Prometheus duration ("" = the profile's monitor.window).
        reference_json: a drift reference file to use instead of the registered version's.
        kfp_host: KFP endpoint to start the training run on ("" = the in-cluster default).
        training_pipeline_id: uploaded training pipeline (cxrlt pipeline upload prints it).
        training_version_id: its version to run ("" with the pipeline id: nothing is started).
        training_params: the training run's parameters.
    """
    import json
    from pathlib import Path

    from cxrlt.ops.monitor import monitor_once

    result = monitor_once(prometheus_url, model_version, tracking_uri, config or None, window or None,
                          reference_json or None, kfp_host or None, training_pipeline_id or None,
                          training_version_id or None, dict(training_params))
    Path(report.path).write_text(json.dumps(result, indent=2, default=float))
    return result["outcome"]
