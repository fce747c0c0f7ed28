from kfp import dsl

from components._base import TOOLS_IMAGE


@dsl.component(base_image=TOOLS_IMAGE, install_kfp_package=False)
def promote(tracking_uri: str, labels_csv: str, model_name: str = "cxrlt-bundle", margin: float = 0.02) -> str:
    """Move ``champion`` to ``challenger`` if it passed its gate and is non-inferior (paired bootstrap CI).

    Args:
        tracking_uri: MLflow tracking URI.
        labels_csv: labels of the evaluation set both versions were scored on.
        model_name: registered model name.
        margin: non-inferiority margin on mAP.
    """
    import json

    from cxrlt.registry import promote as promote_version

    return json.dumps(promote_version(labels_csv, model_name, tracking_uri, margin))
