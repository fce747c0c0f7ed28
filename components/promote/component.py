from kfp import dsl
from kfp.dsl import HTML, Output

from components._base import TOOLS_IMAGE


@dsl.component(base_image=TOOLS_IMAGE, install_kfp_package=False)
def promote(tracking_uri: str, labels_csv: str, model_name: str, margin: float, page: Output[HTML],
            rollout: bool = False, config: str = "") -> str:
    """Move ``champion`` to ``challenger`` if it passed its gate and is non-inferior (paired bootstrap CI) overall and
    in every subgroup (sex, age band, projection) the profile's ``gate.subgroup_*`` settings judge; with ``rollout``,
    pin the Triton Deployment to the new champion's version (cxrlt.ops.rollout).

    Args:
        tracking_uri: MLflow tracking URI.
        labels_csv: labels of the evaluation set both versions were scored on.
        model_name: registered model name.
        margin: non-inferiority margin on mAP.
        rollout: after a promotion, pin the served version to the new champion (needs the cxrlt-rollout Role).
        page: the challenger's evaluation report with each finding's challenger-minus-champion AP and its paired
            95 % CI, the decision at its top (shown by the KFP UI).
        config: profile whose gate.subgroup_* settings the subgroup rule uses ("" = the defaults).
    """
    import json

    from cxrlt.config import GateConfig, load_profile
    from cxrlt.registry import promote as promote_version

    gate = load_profile(config).gate if config else GateConfig()
    decision = promote_version(labels_csv, model_name, tracking_uri, margin, subgroup_gate=gate.subgroup_gate(),
                               report=page.path)
    if rollout and decision["promoted"]:
        from cxrlt.ops.rollout import rollout as pin

        decision["rollout"] = pin(str(decision["challenger"]), model_name, tracking_uri)
    return json.dumps(decision)
