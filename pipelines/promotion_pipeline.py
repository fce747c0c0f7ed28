"""Promotion: champion <- challenger when the challenger passed its gate and is non-inferior on the same
evaluation set (paired bootstrap CI on mAP) and in no subgroup worse beyond the profile's margin."""

from kfp import dsl, kubernetes

from components.promote.component import promote
from cxrlt.evidence import VERIFY_KEY_ENV
from cxrlt.platform import (
    EVIDENCE_VERIFY_CONFIGMAP,
    EVIDENCE_VERIFY_KEY_FILE,
    MLFLOW_CLIENT_KEYS,
    PROMOTION_MARGIN,
    REGISTERED_MODEL,
    SECRETS,
)


@dsl.pipeline(name="cxrlt-promotion", description="Move the champion alias to a non-inferior challenger.")
def promotion_pipeline(tracking_uri: str, labels_csv: str, model_name: str = REGISTERED_MODEL,
                       margin: float = PROMOTION_MARGIN, rollout: bool = True, config: str = ""):
    """On a cluster a promotion also pins the Triton Deployment to the new champion's version (``rollout``);
    ``config`` is the profile whose subgroup thresholds apply (its defaults when empty)."""
    task = promote(tracking_uri=tracking_uri, labels_csv=labels_csv, model_name=model_name, margin=margin,
                   rollout=rollout, config=config).set_caching_options(False)
    # the promotion role: the only account meant to move the champion (basic auth in every overlay)
    kubernetes.use_secret_as_env(task, secret_name=SECRETS["mlflow_promotion"],
                                 secret_key_to_env={k: k for k in MLFLOW_CLIENT_KEYS})
    # the challenger's gate evidence must carry the registration step's signature
    kubernetes.use_config_map_as_env(task, config_map_name=EVIDENCE_VERIFY_CONFIGMAP,
                                     config_map_key_to_env={EVIDENCE_VERIFY_KEY_FILE: VERIFY_KEY_ENV})
