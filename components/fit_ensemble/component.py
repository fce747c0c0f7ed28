from kfp import dsl
from kfp.dsl import Input, Model, Output

from components._base import TOOLS_IMAGE


@dsl.component(base_image=TOOLS_IMAGE, install_kfp_package=False)
def fit_ensemble(members: Input[list[Model]], router: Input[Model], config: str, data_dir: str,
                 ensemble: Output[Model]) -> str:
    """Merge the member runs, grid-search each view's logit weights on validation mAP, write the ensemble.

    Args:
        members: locations of train_member's runs on the shared volume (each holds <view>/<kind>/).
        router: location of the router's run.
        config: profile YAML path.
        data_dir: CXR-LT data directory.
        ensemble: the ensemble directory (ensemble.json + member copies).
    """
    import json
    import shutil
    import tempfile
    from pathlib import Path

    from cxrlt.config import load_config
    from cxrlt.dataplane import resolve
    from cxrlt.ensemble import build_ensemble

    with tempfile.TemporaryDirectory() as tmp:
        for artifact in [*members, router]:
            shutil.copytree(resolve(artifact.path), tmp, dirs_exist_ok=True)
        spec = build_ensemble(tmp, ensemble.path, Path(data_dir) / "CXRLT_2026_training.csv", load_config(config))
    weights = {v: s["weights"] for v, s in spec["views"].items()}
    ensemble.metadata.update({"weights": weights, "views": list(spec["views"])})
    return json.dumps(weights)
