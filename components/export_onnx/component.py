from kfp import dsl
from kfp.dsl import Input, Model, Output

from components._base import TOOLS_IMAGE


@dsl.component(base_image=TOOLS_IMAGE, install_kfp_package=False)
def export_onnx(ensemble: Input[Model], zeroshot: Input[Model], bundle: Output[Model]) -> str:
    """Export router, view members and the CLIP image encoder to ONNX: the served bundle.

    Args:
        ensemble: ensemble directory.
        zeroshot: location of the zero-shot model on the shared volume.
        bundle: served-bundle directory.
    """
    import json

    from cxrlt.dataplane import resolve
    from cxrlt.export import export_bundle

    spec = export_bundle(ensemble.path, resolve(zeroshot.path), bundle.path)
    bundle.metadata.update({"views": list(spec["views"]), "zeroshot": bool(spec["zeroshot"])})
    return json.dumps(list(spec["views"]))
