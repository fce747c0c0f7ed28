"""``cxrlt serve build``: a Triton model repository from a served bundle (local directory or MLflow model URI).

Models: ``preprocess`` (python), ``router`` and one model per view member (ONNX), ``<view>_ensemble``
(platform ensemble: members in parallel, then ``<view>_combiner``), ``clip_image`` + ``zeroshot_head`` in the
``zeroshot`` ensemble, and ``cxr`` (BLS entry point). ONNX models run either on the native ``onnxruntime_onnx``
platform (production, NGC image) or through a python-backend ONNX Runtime runner (the embedded default, since the
bundled server only has the python backend); the tensor names are the same either way.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from cxrlt.export import bundle_contracts, load_bundle

MODELS_DIR = Path(__file__).parent / "models"
ONNX_RUNTIMES = ("python", "native")
DEFAULT_MAX_BATCH = 16


def _dims(shape) -> str:
    return "[ " + ", ".join(str(d) for d in shape) + " ]"


def _tensor(name: str, dtype: str, shape, optional: bool = False) -> str:
    opt = " optional: true" if optional else ""
    return f'{{ name: "{name}" data_type: {dtype} dims: {_dims(shape)}{opt} }}'


def _params(params: dict) -> str:
    return "\n".join(f'parameters {{ key: "{k}" value: {{ string_value: {json.dumps(str(v))} }} }}'
                     for k, v in params.items())


def _config(name: str, inputs: list[str], outputs: list[str], backend: str | None = "python",
            platform: str | None = None, max_batch: int = DEFAULT_MAX_BATCH, dynamic: bool = True, instances: int = 1,
            params: dict | None = None, extra: str = "") -> str:
    lines = [f'name: "{name}"']
    lines.append(f'platform: "{platform}"' if platform else f'backend: "{backend}"')
    lines.append(f"max_batch_size: {max_batch}")
    lines.append("input [\n  " + ",\n  ".join(inputs) + "\n]")
    lines.append("output [\n  " + ",\n  ".join(outputs) + "\n]")
    if platform != "ensemble":
        if dynamic:
            lines.append("dynamic_batching { max_queue_delay_microseconds: 2000 }")
        lines.append(f"instance_group [ {{ kind: KIND_CPU count: {instances} }} ]")
    if params:
        lines.append(_params(params))
    if extra:
        lines.append(extra)
    return "\n".join(lines) + "\n"


def _write(repo: Path, name: str, config: str, sources: dict[str, Path] | None = None,
           files: dict[str, Path] | None = None) -> None:
    version = repo / name / "1"
    version.mkdir(parents=True, exist_ok=True)
    (repo / name / "config.pbtxt").write_text(config)
    for target, src in (sources or {}).items():
        shutil.copyfile(src, version / target)
    for target, src in (files or {}).items():
        shutil.copyfile(src, version / target)


def _python_model(repo: Path, name: str, source: str, config: str, files: dict[str, Path] | None = None) -> None:
    _write(repo, name, config, {"model.py": MODELS_DIR / source, "_common.py": MODELS_DIR / "_common.py"}, files)


def _onnx_model(repo: Path, name: str, onnx_file: Path, shape: list[int], out_dim: int, runtime: str,
                instances: int) -> None:
    inputs = [_tensor("INPUT", "TYPE_FP32", shape)]
    outputs = [_tensor("OUTPUT", "TYPE_FP32", [out_dim])]
    if runtime == "native":
        _write(repo, name, _config(name, inputs, outputs, platform="onnxruntime_onnx", instances=instances),
               files={"model.onnx": onnx_file})
    else:
        _python_model(repo, name, "onnx_runner.py",
                      _config(name, inputs, outputs, instances=instances, params={"onnx_file": "model.onnx"}),
                      files={"model.onnx": onnx_file})


def _class_vectors(calibration: dict | None, classes: list[str]) -> dict:
    """The bundle's per-class calibration as vectors in the served class order (identity when absent)."""
    calibration = calibration or {}
    return {"a": [float(calibration.get("a", {}).get(c, 1.0)) for c in classes],
            "b": [float(calibration.get("b", {}).get(c, 0.0)) for c in classes]}


def _ensemble(name: str, input_shape, steps: list[tuple[str, dict, dict]], output: tuple[str, list[int]]) -> str:
    step_txt = []
    for model, in_map, out_map in steps:
        ins = " ".join(f'input_map {{ key: "{k}" value: "{v}" }}' for k, v in in_map.items())
        outs = " ".join(f'output_map {{ key: "{k}" value: "{v}" }}' for k, v in out_map.items())
        step_txt.append(f'  {{ model_name: "{model}" model_version: -1 {ins} {outs} }}')
    return _config(name, [_tensor("INPUT", "TYPE_FP32", input_shape)], [_tensor(output[0], "TYPE_FP32", output[1])],
                   platform="ensemble", extra="ensemble_scheduling { step [\n" + ",\n".join(step_txt) + "\n] }")


def build_repository(bundle_dir: str | Path, out_dir: str | Path, onnx_runtime: str = "python",
                     instances: int = 1, model_version: str | None = None) -> dict:
    """Write the model repository for ``bundle_dir`` into ``out_dir`` (its previous contents replaced); returns a
    summary. ``out_dir`` itself is kept: in a pod it is a volume's mount point, which cannot be removed."""
    if onnx_runtime not in ONNX_RUNTIMES:
        raise ValueError(f"onnx runtime must be one of {ONNX_RUNTIMES}")
    bundle_dir, repo = Path(bundle_dir), Path(out_dir)
    bundle = load_bundle(bundle_dir)
    repo.mkdir(parents=True, exist_ok=True)
    for old in repo.iterdir():
        shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
    known, zs = bundle["known_classes"], bundle.get("zeroshot")
    task1, zs_contract = bundle_contracts(bundle)
    zs_contract = zs_contract or task1
    shape = [task1.channels, task1.size, task1.size]  # every network input follows the bundle's contracts
    zs_shape = [zs_contract.channels, zs_contract.size, zs_contract.size]
    onnx = bundle_dir / "onnx"

    import cxrlt.data.images as images_module

    _python_model(repo, "preprocess", "preprocess.py", _config(
        "preprocess", [_tensor("IMAGE", "TYPE_STRING", [1], optional=True),
                       _tensor("PIXELS", "TYPE_FP32", [-1, -1], optional=True)],
        [_tensor("TASK1_INPUT", "TYPE_FP32", shape), _tensor("ZS_INPUT", "TYPE_FP32", zs_shape),
         _tensor("ERROR", "TYPE_STRING", [1])], dynamic=False, instances=instances,
        params={"task1_preprocess": json.dumps(task1.to_dict()),
                "zeroshot_preprocess": json.dumps(zs_contract.to_dict())}),
        files={"cxrlt_images.py": Path(images_module.__file__)})
    if bundle["router_classes"]:
        _onnx_model(repo, "router", onnx / "router.onnx", shape, len(bundle["router_classes"]), onnx_runtime,
                    instances)
    for view, vspec in bundle["views"].items():
        steps = []
        for kind, name in vspec["members"].items():
            _onnx_model(repo, name, onnx / f"{name}.onnx", shape, len(known), onnx_runtime, instances)
            steps.append((name, {"INPUT": "INPUT"}, {"OUTPUT": f"logits_{kind}"}))
        weights = {f"LOGITS_{k}": w for k, w in vspec["weights"].items()}
        _python_model(repo, f"{view}_combiner", "combiner.py", _config(
            f"{view}_combiner", [_tensor(n, "TYPE_FP32", [len(known)]) for n in weights],
            [_tensor("PROBS", "TYPE_FP32", [len(known)])], instances=instances,
            params={"weights": json.dumps(weights), "normal_gate_alpha": bundle.get("normal_gate_alpha") or 0,
                    "combine": bundle.get("combine", "logit"),
                    "calibration": json.dumps(_class_vectors(bundle.get("calibration"), known)),
                    "normal_index": known.index("Normal")}))
        steps.append((f"{view}_combiner", {f"LOGITS_{k}": f"logits_{k}" for k in vspec["members"]},
                      {"PROBS": "PROBS"}))
        (repo / f"{view}_ensemble" / "1").mkdir(parents=True)
        (repo / f"{view}_ensemble" / "config.pbtxt").write_text(
            _ensemble(f"{view}_ensemble", shape, steps, ("PROBS", [len(known)])))
    if zs:
        import numpy as np

        dim = int(np.load(bundle_dir / "zeroshot" / "text_embeddings.npy").shape[1])
        _onnx_model(repo, "clip_image", onnx / "clip_image.onnx", zs_shape, dim, onnx_runtime, instances)
        _python_model(repo, "zeroshot_head", "zeroshot_head.py", _config(
            "zeroshot_head", [_tensor("EMBEDDING", "TYPE_FP32", [dim])],
            [_tensor("PROBS", "TYPE_FP32", [len(zs["classes"])])], instances=instances),
            files={"text_embeddings.npy": bundle_dir / "zeroshot" / "text_embeddings.npy",
                   "text_classes.json": bundle_dir / "zeroshot" / "text_classes.json"})
        (repo / "zeroshot" / "1").mkdir(parents=True)
        (repo / "zeroshot" / "config.pbtxt").write_text(_ensemble(
            "zeroshot", zs_shape,
            [("clip_image", {"INPUT": "INPUT"}, {"OUTPUT": "embedding"}),
             ("zeroshot_head", {"EMBEDDING": "embedding"}, {"PROBS": "PROBS"})], ("PROBS", [len(zs["classes"])])))
    version = model_version or bundle.get("lineage", {}).get("model_version") or f"local:{bundle_dir.resolve().name}"
    _python_model(repo, "cxr", "cxr.py", _config(
        "cxr", [_tensor("IMAGE", "TYPE_STRING", [1], optional=True),
                _tensor("PIXELS", "TYPE_FP32", [-1, -1], optional=True)],
        [_tensor("KNOWN_PROBS", "TYPE_FP32", [len(known)]),
         _tensor("UNSEEN_PROBS", "TYPE_FP32", [len(zs["classes"]) if zs else 6]),
         _tensor("VIEW", "TYPE_STRING", [1]), _tensor("VIEW_CONFIDENCE", "TYPE_FP32", [1]),
         _tensor("MODEL_VERSION", "TYPE_STRING", [1]), _tensor("ERROR", "TYPE_STRING", [1]),
         # names (and bands) in the probabilities' order, so clients never need the (restricted) model config
         _tensor("KNOWN_CLASSES", "TYPE_STRING", [len(known)]),
         _tensor("UNSEEN_CLASSES", "TYPE_STRING", [len(zs["classes"]) if zs else 6]),
         _tensor("KNOWN_BANDS", "TYPE_STRING", [len(known)])],
        dynamic=False, instances=max(1, instances),
        params={"known_classes": json.dumps(known),
                "unseen_classes": json.dumps(zs["classes"] if zs else []),
                "router_classes": json.dumps(bundle["router_classes"]), "views": json.dumps(list(bundle["views"])),
                "bands": json.dumps(bundle.get("bands", {})),
                "model_version": version, "zeroshot": "true" if zs else "false"}))
    models = sorted(p.name for p in repo.iterdir() if p.is_dir())
    return {"repository": str(repo), "models": models, "onnx_runtime": onnx_runtime, "model_version": version}
