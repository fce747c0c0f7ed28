"""Promotion: champion <- challenger when the challenger passed its gate and is non-inferior on the same
evaluation set (paired bootstrap CI on mAP)."""

from kfp import dsl

from components.promote.component import promote


@dsl.pipeline(name="cxrlt-promotion", description="Move the champion alias to a non-inferior challenger.")
def promotion_pipeline(tracking_uri: str, labels_csv: str, model_name: str = "cxrlt-bundle", margin: float = 0.02):
    promote(tracking_uri=tracking_uri, labels_csv=labels_csv, model_name=model_name,
            margin=margin).set_caching_options(False)
