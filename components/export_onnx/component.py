from kfp import dsl
from kfp.dsl import Input, Model, Output

from components._base import TOOLS_IMAGE


@dsl.component(base_image=TOOLS_IMAGE, install_kfp_package=False)
def export_onnx(ensemble: Input[Model], zeroshot: Input[Model], bundle: Output[Model], config: str = "") -> str:
    """Export router, view members and the CLIP image encoder to ONNX: the served bundle.

    Args:
        ensemble: ensemble directory.
        zeroshot: location of the zero-shot model on the shared volume.
        bundle: served-bundle directory.
        config: profile YAML path ("" = defaults); its inference.export_programs adds torch.export programs.
    """
    import json

    from cxrlt.config import load_config
    from cxrlt.dataplane import resolve
    from cxrlt.export import export_bundle

    programs = bool(config) and load_config(config)["inference"]["export_programs"]
    spec = export_bundle(ensemble.path, resolve(zeroshot.path), bundle.path, programs=programs)
    bundle.metadata.update({"views": list(spec["views"]), "zeroshot": bool(spec["zeroshot"])})
    return json.dumps(list(spec["views"]))
