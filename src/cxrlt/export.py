"""``cxrlt export``: every served network to ONNX (dynamic batch axis) plus the metadata serving needs.

A *served bundle* is a directory:

    bundle.json                      classes, views, weights, gating, sizes, zero-shot scoring, version, lineage
    onnx/router.onnx                 (B, C, S, S) -> (B, 2) logits (frontal, lateral); absent without a router
    onnx/<view>_<kind>.onnx          (B, C, S, S) -> (B, 30) logits, TTA folded in (logit or probability merge)
    onnx/<view>_trunk.onnx           (B, C, S, S) -> (B, T, F, h, w) the PCAM trunk's features per TTA view, when the
                                     view's CaiT reads the same frozen trunk; then <view>_pcam/<view>_cait.onnx take
                                     these features, (B, T, F, h, w) -> (B, 30), and the trunk runs once for both
    onnx/clip_image.onnx             (B, C2, S2, S2) -> (B, D) normalised image embedding
    programs/<name>.pt2              with ``programs``: each network above as a ``torch.export`` program (dynamic
                                     batch), compiled for a device by ``serve build --onnx-runtime aoti``

``bundle.json["preprocess"]`` and ``bundle.json["zeroshot"]["preprocess"]`` are the preprocessing contracts (size,
channels, mean/std, percentiles, pixel limit) that every consumer of the bundle reads.
    zeroshot/text_embeddings.npy     (6, D): img @ E.T is the mean prompt cosine
    zeroshot/text_classes.json       class order and the sigmoid scale/bias

Every ONNX file uses the tensor names ``INPUT`` / ``OUTPUT`` so the same Triton configs serve the native
onnxruntime backend and the python-backend runner.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from cxrlt import __version__
from cxrlt.contract import Bundle
from cxrlt.data.images import PreprocessConfig
from cxrlt.ensemble import load_spec
from cxrlt.errors import InvalidInputError
from cxrlt.kinds import member_kind
from cxrlt.labels import KNOWN_CLASSES, UNSEEN_CLASSES
from cxrlt.models.factory import load_member
from cxrlt.models.members import shares_trunk
from cxrlt.outdir import claim_output_dir
from cxrlt.tta import FeatureHeadTTA, TrunkTTA, TTAModel

BUNDLE_JSON = Bundle.FILE
INPUT_NAME, OUTPUT_NAME = "INPUT", "OUTPUT"
OPSET = 17
#: the largest batch an exported program (and the AOTInductor package compiled from it) accepts
MAX_PROGRAM_BATCH = 256
PROGRAMS_DIR = "programs"


def export_onnx(module: nn.Module, image_size: int, path: str | Path, channels: int = 1,
                input_shape: tuple[int, ...] | None = None, program: Path | None = None) -> Path:
    """Export a (B, C, S, S) -> (B, ...) module (or one over ``input_shape`` per item) with a dynamic batch axis and
    check the graph; with ``program``, also its ``torch.export`` program there (:func:`export_program`)."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    example = torch.zeros(2, *(input_shape or (channels, image_size, image_size)))
    if program is not None:
        export_program(module, example, program)
    # nn.MultiheadAttention's inference fast path (ViT CLIP towers) has no ONNX export: trace the plain path
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        _export(module, example, path)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    onnx.checker.check_model(onnx.load(str(path)))
    return path


def _export(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    with torch.no_grad():
        torch.onnx.export(module, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, opset_version=OPSET,
                          dynamo=False)


def export_program(module: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """The module as a ``torch.export`` program with a dynamic batch axis (1 to :data:`MAX_PROGRAM_BATCH`), saved
    to ``path``: the device-independent form that ``cxrlt serve build --onnx-runtime aoti`` compiles with
    AOTInductor for the serving machine's device and precision (a compiled package is specific to both)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(_export_batch_dynamic(module.eval(), example), str(path))
    return path


def _export_batch_dynamic(module: nn.Module, example: torch.Tensor):
    """``torch.export`` of ``module`` with its batch axis dynamic from 1 to :data:`MAX_PROGRAM_BATCH`."""
    from torch.export import Dim, export

    with torch.no_grad():
        return export(module, (example,), dynamic_shapes=({0: Dim("batch", min=1, max=MAX_PROGRAM_BATCH)},))


def compile_program(program_path: str | Path, package_path: str | Path, device: str = "cpu",
                    dtype: str = "float32") -> Path:
    """AOTInductor-compile an exported program (:func:`export_program`) for ``device`` with weights and inputs in
    ``dtype`` (bf16 on a GPU, for its tensor cores) into a ``.pt2`` package; the package is specific to the device,
    the dtype and this torch, so it is made where it is served (``serve build --onnx-runtime aoti``)."""
    program = torch.export.load(str(program_path))
    if device != "cpu" or dtype != "float32":  # the program is fp32 on CPU: re-export at the serving device/dtype
        target = {"device": torch.device(device), "dtype": getattr(torch, dtype)}
        program = _export_batch_dynamic(program.module().to(**target), program.example_inputs[0][0].to(**target))
    Path(package_path).parent.mkdir(parents=True, exist_ok=True)
    return Path(torch._inductor.aoti_compile_and_package(program, package_path=str(package_path)))


def onnx_outputs(path: str | Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run([OUTPUT_NAME], {INPUT_NAME: x.astype(np.float32)})[0]


def export_bundle(ensemble_dir: str | Path, zeroshot_dir: str | Path | None, out_dir: str | Path,
                  lineage: dict | None = None, programs: bool = False) -> dict:
    """Write the served bundle (see the module docstring) and return ``bundle.json``'s content; ``programs``: each
    network's ``torch.export`` program too (``programs/<name>.pt2``), for the AOTInductor runtime."""
    ens, out = Path(ensemble_dir), Path(out_dir)

    def program(name: str) -> Path | None:
        return out / PROGRAMS_DIR / f"{name}.pt2" if programs else None

    spec = load_spec(ens)
    has_router = bool(spec["router"])
    if not has_router and "mixed" not in spec["views"]:
        raise InvalidInputError(f"{ens} has neither a router nor a mixed ensemble: nothing could serve every image")
    claim_output_dir(out, "cxrlt export")
    (out / "onnx").mkdir()
    contract = PreprocessConfig.from_dict(spec["preprocess"])
    size, channels = contract.size, contract.channels
    if has_router:
        router, _ = load_member(ens / spec["router"])
        export_onnx(router, size, out / "onnx" / "router.onnx", channels, program=program("router"))
    views = {}
    merge = spec["tta_merge"]
    for view, vspec in spec["views"].items():
        models = {kind: load_member(ens / rel)[0] for kind, rel in vspec["members"].items()}
        members, entry = {}, {}
        # a kind that reads another's frozen trunk (CaiT over PCAM): compute the trunk once, serve both heads over it
        pair = next(((kind_of, kind) for kind in models if (kind_of := member_kind(kind).reads_trunk_of) in models
                     and shares_trunk(models[kind_of], models[kind])), None)
        if pair:
            trunk = TrunkTTA(models[pair[0]], spec["tta"])
            path = export_onnx(trunk, size, out / "onnx" / f"{view}_trunk.onnx", channels,
                               program=program(f"{view}_trunk"))
            with torch.no_grad():
                feature_shape = list(trunk.eval()(torch.zeros(1, channels, size, size)).shape[1:])
            entry["shared_trunk"] = {"model": path.stem, "members": list(pair), "features": feature_shape}
        for kind, model in models.items():
            name = f"{view}_{kind}"
            if pair and kind in pair:
                export_onnx(FeatureHeadTTA(model, merge), size, out / "onnx" / f"{name}.onnx",
                            input_shape=tuple(feature_shape), program=program(name))
            else:
                export_onnx(TTAModel(model, spec["tta"], merge), size, out / "onnx" / f"{name}.onnx", channels,
                            program=program(name))
            members[kind] = name
        views[view] = {"members": members, "weights": vspec["weights"], **entry}
    bundle = {"cxrlt_version": __version__, "known_classes": list(KNOWN_CLASSES),
              "router_classes": ["frontal", "lateral"] if has_router else [], "image_size": size, "tta": spec["tta"],
              "tta_merge": spec["tta_merge"], "combine": spec["combine"], "calibration": spec["calibration"],
              "normal_gate_alpha": spec["normal_gate_alpha"], "views": views,
              "preprocess": contract.to_dict(),
              "bands": spec["bands"], "zeroshot": None, "lineage": lineage or {}, "programs": programs}
    if zeroshot_dir is not None:
        from cxrlt.zeroshot.predict import ZeroShotPredictor

        predictor = ZeroShotPredictor(zeroshot_dir)
        scoring = predictor.export_pieces(out / "zeroshot", list(UNSEEN_CLASSES))
        export_onnx(predictor.image_encoder(), predictor.image_size, out / "onnx" / "clip_image.onnx",
                    predictor.preprocess.channels, program=program("clip_image"))
        bundle["zeroshot"] = {"classes": scoring["classes"], "image_size": predictor.image_size, "a": scoring["a"],
                              "b": scoring["b"], "prompts": scoring["prompts"],
                              "preprocess": predictor.preprocess.to_dict()}
    Bundle.model_validate(bundle).save(out)
    return load_bundle(out)


def bundle_contracts(bundle: dict) -> tuple[PreprocessConfig, PreprocessConfig | None]:
    """The Task 1 and zero-shot preprocessing contracts of a bundle."""
    task1 = PreprocessConfig.from_dict({"size": bundle["image_size"], **bundle["preprocess"]})
    zs = bundle["zeroshot"]
    return task1, (PreprocessConfig.from_dict(zs["preprocess"]) if zs else None)


def load_bundle(bundle_dir: str | Path) -> dict:
    """``bundle.json`` read through :class:`cxrlt.contract.Bundle`: validated, every default filled in."""
    return Bundle.load(bundle_dir).model_dump(mode="json")
