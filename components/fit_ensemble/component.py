from kfp import dsl
from kfp.dsl import Input, Model, Output

from components._base import TOOLS_IMAGE


@dsl.component(base_image=TOOLS_IMAGE, install_kfp_package=False)
def fit_ensemble(trained: Input[list[Model]], config: str, data_dir: str, ensemble: Output[Model],
                 zeroshot: Output[Model]) -> str:
    """Merge the member runs (router included), grid-search each view's logit weights on validation mAP, write the
    ensemble; pass the zero-shot run on to the steps that evaluate and export both.

    Args:
        trained: what the training loop published: member runs (each holds <view>/<kind>/ or router/) and the
            zero-shot run, as locations on the shared volume.
        config: profile YAML path.
        data_dir: CXR-LT data directory.
        ensemble: the ensemble directory (ensemble.json + member copies).
        zeroshot: location of the zero-shot run on the shared volume.
    """
    import json
    import shutil
    import tempfile
    from pathlib import Path

    from cxrlt.config import load_config
    from cxrlt.dataplane import publish
    from cxrlt.ensemble import build_ensemble
    from cxrlt.ops.pipeline_steps import collect_trained

    members, clip = collect_trained([artifact.path for artifact in trained])
    with tempfile.TemporaryDirectory() as tmp:
        for folder in members:
            shutil.copytree(folder, tmp, dirs_exist_ok=True)
        spec = build_ensemble(tmp, ensemble.path, Path(data_dir) / "CXRLT_2026_training.csv", load_config(config))
    publish(zeroshot.path, clip.path, clip.kind, hashed=clip.hashed, **clip.metadata)
    weights = {v: s["weights"] for v, s in spec["views"].items()}
    ensemble.metadata.update({"weights": weights, "views": list(spec["views"])})
    return json.dumps(weights)
