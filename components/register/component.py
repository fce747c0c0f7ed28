from kfp import dsl
from kfp.dsl import Artifact, Input, Model

from components._base import TOOLS_IMAGE


@dsl.component(base_image=TOOLS_IMAGE, install_kfp_package=False)
def register(bundle: Input[Model], report: Input[Artifact], evidence: Input[Artifact], tracking_uri: str,
             data_hash: str, config: str, model_name: str) -> str:
    """Register the bundle in MLflow with lineage and gate evidence; move alias ``challenger``. Returns the version.

    Args:
        bundle: served-bundle directory.
        report: evaluation report (summary.json, predictions.csv).
        evidence: gate evidence artifact (must have passed).
        tracking_uri: MLflow tracking URI.
        data_hash: data manifest hash from validate_data.
        config: profile YAML path (hashed into the lineage).
        model_name: registered model name.
    """
    import json
    import os
    import subprocess
    from pathlib import Path

    from cxrlt.config import config_hash, load_config
    from cxrlt.registry import register_bundle

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = os.environ.get("CXRLT_GIT_COMMIT", "unknown")
    lineage = {"data_manifest_hash": data_hash, "git_commit": commit, "config_hash": config_hash(load_config(config)),
               "pipeline_run": os.environ.get("KFP_RUN_ID", str(Path(bundle.path).parent.parent.name))}
    metrics = json.loads((Path(report.path) / "summary.json").read_text())
    return register_bundle(bundle.path, metrics, json.loads(Path(evidence.path).read_text()), lineage,
                           Path(report.path) / "predictions.csv", model_name, tracking_uri)
