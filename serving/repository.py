"""``cxrlt serve build``: a Triton model repository from a served bundle (local directory or MLflow model URI).

Models: ``preprocess`` (python), ``router`` and one model per view member (ONNX), a ``<view>_trunk`` when the view's
CaiT reads the PCAM member's frozen trunk (computed once; ``<view>_pcam`` and ``<view>_cait`` then take its
features), ``<view>_ensemble`` (platform ensemble: members in parallel, then ``<view>_combiner``), ``clip_image`` +
``zeroshot_head`` in the ``zeroshot`` ensemble, and ``cxr`` (async BLS entry point). With a shadow bundle (a
challenger), its own models sit beside them, every name prefixed ``shadow_`` (its entry: ``shadow_cxr``), and the
``cxr`` entry sends a share of its items there to measure agreement (serving/models/cxr.py). ONNX models run either
on the native ``onnxruntime_onnx`` platform (production, NGC image; CPU or GPU with optional TensorRT) or through a
python-backend ONNX Runtime runner (the embedded default, since the bundled server only has the python backend); the
tensor names are the same either way.

Every ``config.pbtxt`` is a ``ModelConfig`` protobuf message (Triton's own definition, from ``tritonclient``) built
with ``json_format.ParseDict``: a misspelt field or a wrong enum fails here, at build time, not in the server.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator

import cxrlt.scoring
import cxrlt.shadow
from cxrlt.errors import InvalidInputError
from cxrlt.export import PROGRAMS_DIR, bundle_contracts, load_bundle
from cxrlt.labels import UNSEEN_CLASSES
from cxrlt.machine import usable_cpus
from cxrlt.outdir import OUTPUT_MARKER, claim_output_dir
from cxrlt.platform import MAX_IMAGE_BYTES
from cxrlt.scoring import scoring_fields

MODELS_DIR = Path(__file__).parent / "models"
#: the one scoring module, shipped beside every python model that scores (as the image contract is)
SCORING_FILE = {"cxrlt_scoring.py": Path(cxrlt.scoring.__file__)}
#: the challenger's models in a repository that shadow-scores it
SHADOW_PREFIX = "shadow_"
ONNX_RUNTIMES = ("python", "native", "aoti")


class ServingOptions(BaseModel):
    """How the repository schedules work: batching, queues, timeouts, instances and threads.

    Defaults are sized to the CPUs the server may use (``serve build`` runs where the server will run: the init
    container of the Triton pod, whose CPU limit is the pod's, or the host of ``serve up``): the container's CPU limit
    (cgroup ``cpu.max``), never the node's core count. On GPUs, ``gpu_instances`` of every ONNX model run on each
    GPU the pod sees (Triton's KIND_GPU places them per visible device)."""

    #: python: ONNX Runtime in the python backend (CPU); native: the onnxruntime_onnx backend (CPU or GPU);
    #: aoti: the bundle's torch.export programs compiled here with AOTInductor, run by the python backend
    onnx_runtime: Literal["python", "native", "aoti"] = "python"
    device: Literal["cpu", "gpu"] = Field("cpu", description="where the native ONNX models run (KIND_CPU/KIND_GPU)")
    tensorrt: bool = Field(False, description="GPU only: TensorRT execution accelerator for the ONNX models")
    precision: Literal["fp32", "fp16"] = Field("fp32", description="TensorRT precision (fp16 only with --tensorrt)")
    instances: int = Field(default_factory=lambda: max(1, usable_cpus() // 2), ge=1, le=64,
                           description="instances of every compute model (ONNX, preprocess, heads)")
    gpu_instances: int = Field(1, ge=1, le=8, description="GPU only: instances of every ONNX model per visible GPU")
    cuda_graph_batches: list[int] = Field([1, 2, 4, 8], description="aoti on GPU: batch sizes replayed as CUDA "
                                          "graphs (a request is padded to the next one; larger batches run directly)")
    ort_threads: int = Field(1, ge=1, le=64, description="ONNX Runtime intra-op threads per instance")
    max_batch: int = Field(16, ge=1, le=1024, description="largest batch any model runs (images)")
    batch_delay_us: int = Field(1000, ge=0, description="how long a request may wait at the cxr entry for others to "
                                "batch with (inner models batch what is already queued, without waiting)")
    max_queue: int = Field(64, ge=1, description="requests queued at the cxr entry before new ones are refused")
    queue_timeout_ms: int = Field(30_000, ge=1, description="a request waiting longer in the entry's queue is refused")
    bls_timeout_ms: float = Field(60_000, gt=0, description="each call the cxr entry makes to a model must answer "
                                  "within this time, or the requests of that batch fail with a timeout error")
    max_image_bytes: int = Field(MAX_IMAGE_BYTES, ge=1 << 16, description="largest item the cxr entry accepts: "
                                 "encoded IMAGE bytes, or 4 bytes per PIXELS value; larger items are refused before "
                                 "they are copied to any other model")
    entry_metrics: bool = Field(True, description="the cxr entry's Prometheus metrics (input mix, refusals by "
                                "reason, score histograms, entry latency) beside Triton's own")
    shadow_fraction: float = Field(0.1, gt=0, le=1, description="with a shadow bundle: the share of scored items "
                                   "the challenger scores too (in the background; the answer is the champion's)")
    shadow_queue: int = Field(16, ge=1, description="with a shadow bundle: items in flight to the challenger at "
                              "most; further sampled items are dropped and counted")
    shadow_threshold: float = Field(0.5, gt=0, lt=1, description="with a shadow bundle: the operating threshold at "
                                    "which a finding's flip between champion and challenger is counted "
                                    "(probabilities are calibrated)")
    shadow_reuse_inputs: bool = Field(True, description="with a shadow bundle whose preprocessing contracts are the "
                                      "champion's: its networks take the champion's preprocessed images (no second "
                                      "decode); off: its own entry always gets the request's bytes")
    shadow_flush_s: float = Field(2.0, gt=0, le=60, description="with a shadow bundle: how often the agreement sums "
                                  "are added to the counters")

    @model_validator(mode="after")
    def _consistent(self) -> ServingOptions:
        if self.tensorrt and self.device != "gpu":
            raise ValueError("TensorRT needs --device gpu")
        if self.precision != "fp32" and not self.tensorrt:
            raise ValueError("fp16 is applied by TensorRT: add --tensorrt (and --device gpu)")
        if self.device == "gpu" and self.onnx_runtime == "python":
            raise ValueError("GPU serving runs the native ONNX Runtime backend (--onnx-runtime native) or the "
                             "AOTInductor packages (--onnx-runtime aoti)")
        if self.tensorrt and self.onnx_runtime != "native":
            raise ValueError("TensorRT is an accelerator of the native ONNX Runtime backend (--onnx-runtime native)")
        return self


# ------------------------------------------------------------------------------------------------ protobuf configs
def model_config(spec: dict):
    """A ``ModelConfig`` message from its JSON form; unknown fields and bad enum values raise ``ParseError``."""
    from google.protobuf import json_format
    from tritonclient.grpc import model_config_pb2

    return json_format.ParseDict(spec, model_config_pb2.ModelConfig())


def tensor(name: str, dtype: str, dims, optional: bool = False) -> dict:
    spec = {"name": name, "data_type": dtype, "dims": [int(d) for d in dims]}
    return {**spec, "optional": True} if optional else spec


def _string_params(params: dict) -> dict:
    return {k: {"string_value": v if isinstance(v, str) else json.dumps(v)} for k, v in params.items()}


def _batching(opts: ServingOptions, max_queue: int | None = None, delay_us: int = 0) -> dict:
    """Dynamic batching. With ``max_queue`` (the entry): a bounded queue, so requests over the queue size, or
    waiting past the queue timeout, are refused at once with UNAVAILABLE instead of piling up.

    Inner models get no queue policy: they are only reached through the entry, whose queue bounds their load, and
    the entry bounds every call it makes with its own timeout. Measured (docs/performance.md): a queue policy with
    timeouts on the inner models made their batchers stall 0.5-1 s under concurrent load (p99 ~600 ms instead of
    ~110 ms at concurrency 8, with this tritonserver)."""
    batching: dict = {"max_queue_delay_microseconds": delay_us}
    if max_queue:
        batching["default_queue_policy"] = {"timeout_action": "REJECT", "max_queue_size": max_queue,
                                            "default_timeout_microseconds": opts.queue_timeout_ms * 1000}
    return batching


def compute_config(name: str, inputs: list[dict], outputs: list[dict], opts: ServingOptions, *,
                   backend: str | None = "python", platform: str | None = None, params: dict | None = None,
                   instances: int | None = None, kind: str = "KIND_CPU", max_queue: int | None = None,
                   optimization: dict | None = None, batch_delay_us: int = 0) -> dict:
    spec = {"name": name, "max_batch_size": opts.max_batch, "input": inputs, "output": outputs,
            "dynamic_batching": _batching(opts, max_queue, batch_delay_us),
            "instance_group": [{"kind": kind, "count": instances or opts.instances}]}
    spec.update({"platform": platform} if platform else {"backend": backend})
    if params:
        spec["parameters"] = _string_params(params)
    if optimization:
        spec["optimization"] = optimization
    return spec


def ensemble_config(name: str, inputs: list[dict], outputs: list[dict], steps: list[tuple[str, dict, dict]],
                    opts: ServingOptions) -> dict:
    return {"name": name, "platform": "ensemble", "max_batch_size": opts.max_batch, "input": inputs,
            "output": outputs, "ensemble_scheduling": {"step": [
                {"model_name": model, "model_version": -1, "input_map": ins, "output_map": outs}
                for model, ins, outs in steps]}}


def _write(repo: Path, spec: dict, files: dict[str, Path] | None = None) -> None:
    from google.protobuf import text_format

    name = spec["name"]
    version = repo / name / "1"
    version.mkdir(parents=True, exist_ok=True)
    (repo / name / "config.pbtxt").write_text(text_format.MessageToString(model_config(spec)))
    for target, src in (files or {}).items():
        shutil.copyfile(src, version / target)


def _python_model(repo: Path, spec: dict, source: str, files: dict[str, Path] | None = None) -> None:
    """A python-backend model: its ``model.py``, the shared helpers, and the library files it imports."""
    _write(repo, spec, {"model.py": MODELS_DIR / source, "_common.py": MODELS_DIR / "_common.py", **(files or {})})


def _onnx_model(repo: Path, name: str, onnx_file: Path, in_dims: list[int], out_dims: list[int],
                opts: ServingOptions) -> None:
    inputs, outputs = [tensor("INPUT", "TYPE_FP32", in_dims)], [tensor("OUTPUT", "TYPE_FP32", out_dims)]
    gpu = opts.device == "gpu"
    # where the network runs: gpu_instances per visible GPU, or the CPU instance count
    placement = {"kind": "KIND_GPU", "instances": opts.gpu_instances} if gpu else {"kind": "KIND_CPU"}
    runner_files = {"_engines.py": MODELS_DIR / "_engines.py"}
    if opts.onnx_runtime == "native":
        accelerators = None
        if opts.tensorrt:
            trt = {"name": "tensorrt", "parameters": {"precision_mode": opts.precision.upper(),
                                                      "max_workspace_size_bytes": str(1 << 30)}}
            accelerators = {"execution_accelerators": {"gpu_execution_accelerator": [trt]}}
        params = {"intra_op_thread_count": str(opts.ort_threads), "inter_op_thread_count": "1"}
        _write(repo, compute_config(name, inputs, outputs, opts, platform="onnxruntime_onnx", params=params,
                                    optimization=accelerators, **placement), {"model.onnx": onnx_file})
    elif opts.onnx_runtime == "aoti":
        import tempfile

        from cxrlt.export import compile_program

        program = onnx_file.parent.parent / PROGRAMS_DIR / f"{name}.pt2"
        if not program.exists():
            raise InvalidInputError(f"{program} is missing: --onnx-runtime aoti compiles the bundle's torch.export "
                                    "programs (export with `cxrlt export --programs`, or a profile with "
                                    "inference.export_programs: true)")
        device, dtype = ("cuda", "bfloat16") if gpu else ("cpu", "float32")
        with tempfile.TemporaryDirectory(prefix="cxrlt-aoti-") as tmp:
            package = compile_program(program, Path(tmp) / "model.pt2", device, dtype)
            params = {"model_file": "model.pt2", "device": device, "dtype": dtype,
                      "cuda_graph_batches": ",".join(map(str, opts.cuda_graph_batches)) if gpu else ""}
            _python_model(repo, compute_config(name, inputs, outputs, opts, params=params, **placement),
                          "network_runner.py", {"model.pt2": package, **runner_files})
    else:
        _python_model(repo, compute_config(name, inputs, outputs, opts, params={
            "model_file": "model.onnx", "intra_op_threads": str(opts.ort_threads)}), "network_runner.py",
            {"model.onnx": onnx_file, **runner_files})


def _view_models(repo: Path, bundle: dict, view: str, vspec: dict, onnx: Path, shape: list[int],
                 opts: ServingOptions) -> None:
    """One view: its members (a shared trunk computed once where the bundle has one), the combiner, the ensemble."""
    known, scoring = bundle["known_classes"], json.dumps(scoring_fields(bundle))
    shared = vspec["shared_trunk"]
    steps = []
    if shared:
        _onnx_model(repo, shared["model"], onnx / f"{shared['model']}.onnx", shape, shared["features"], opts)
        steps.append((shared["model"], {"INPUT": "INPUT"}, {"OUTPUT": "features"}))
    for kind, name in vspec["members"].items():
        reads_trunk = bool(shared) and kind in shared["members"]
        _onnx_model(repo, name, onnx / f"{name}.onnx", shared["features"] if reads_trunk else shape, [len(known)],
                    opts)
        steps.append((name, {"INPUT": "features" if reads_trunk else "INPUT"}, {"OUTPUT": f"logits_{kind}"}))
    weights = {f"LOGITS_{k}": w for k, w in vspec["weights"].items()}
    _python_model(repo, compute_config(
        f"{view}_combiner", [tensor(n, "TYPE_FP32", [len(known)]) for n in weights],
        [tensor("PROBS", "TYPE_FP32", [len(known)])], opts, instances=1,
        params={"scoring": scoring, "view": view}), "combiner.py", SCORING_FILE)
    steps.append((f"{view}_combiner", {f"LOGITS_{k}": f"logits_{k}" for k in vspec["members"]}, {"PROBS": "PROBS"}))
    _write(repo, ensemble_config(f"{view}_ensemble", [tensor("INPUT", "TYPE_FP32", shape)],
                                 [tensor("PROBS", "TYPE_FP32", [len(known)])], steps, opts))


def _add_prefixed(built: Path, repo: Path, prefix: str) -> list[str]:
    """Move the models of the repository ``built`` into ``repo`` under ``prefix``: every name, every ensemble
    step's model, and the entry's ``model_prefix`` (so it calls its own models); the entry's own metrics off (its
    scores are not served traffic). Configs are re-read and re-written as ``ModelConfig`` messages."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    moved = []
    for folder in sorted(p for p in built.iterdir() if p.is_dir() and p.name != OUTPUT_MARKER):
        config = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        config.name = prefix + config.name
        for step in config.ensemble_scheduling.step:
            step.model_name = prefix + step.model_name
        if folder.name == "cxr":
            config.parameters["model_prefix"].string_value = prefix
            config.parameters["entry_metrics"].string_value = "off"
        target = repo / config.name
        shutil.move(str(folder), str(target))
        (target / "config.pbtxt").write_text(text_format.MessageToString(config))
        moved.append(config.name)
    return moved


def build_repository(bundle_dir: str | Path, out_dir: str | Path, options: ServingOptions | None = None,
                     model_version: str | None = None, shadow_dir: str | Path | None = None,
                     shadow_version: str | None = None) -> dict:
    """Write the model repository for ``bundle_dir`` into ``out_dir`` (its previous contents replaced); returns a
    summary. ``out_dir`` itself is kept: in a pod it is a volume's mount point, which cannot be removed. With
    ``shadow_dir`` (a challenger's bundle, ``shadow_version`` its name), the challenger is served beside the
    champion for shadow scoring (:data:`SHADOW_PREFIX`)."""
    opts = options or ServingOptions()
    bundle_dir, repo = Path(bundle_dir), Path(out_dir)
    bundle = load_bundle(bundle_dir)
    claim_output_dir(repo, "cxrlt serve build")
    shadow = None
    if shadow_dir is not None:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="cxrlt-shadow-") as tmp:
            built = build_repository(shadow_dir, Path(tmp) / "repo", opts.model_copy(update={"entry_metrics": False}),
                                     shadow_version)
            _add_prefixed(Path(tmp) / "repo", repo, SHADOW_PREFIX)
        shadow = {"shadow_model": f"{SHADOW_PREFIX}cxr", "shadow_prefix": SHADOW_PREFIX,
                  "shadow_version": built["model_version"],
                  "shadow_fraction": str(opts.shadow_fraction), "shadow_queue": str(opts.shadow_queue),
                  "shadow_threshold": str(opts.shadow_threshold), "shadow_flush_s": str(opts.shadow_flush_s)}
        challenger = load_bundle(Path(shadow_dir))
        same = [c.to_dict() if c else None for c in bundle_contracts(bundle)] == \
            [c.to_dict() if c else None for c in bundle_contracts(challenger)]
        if opts.shadow_reuse_inputs and same:
            shadow["shadow_scoring"] = json.dumps(scoring_fields(challenger))
    known, zs = bundle["known_classes"], bundle["zeroshot"]
    task1, zs_contract = bundle_contracts(bundle)
    zs_contract = zs_contract or task1
    shape = [task1.channels, task1.size, task1.size]  # every network input follows the bundle's contracts
    zs_shape = [zs_contract.channels, zs_contract.size, zs_contract.size]
    onnx = bundle_dir / "onnx"
    image_inputs = [tensor("IMAGE", "TYPE_STRING", [1], optional=True),
                    tensor("PIXELS", "TYPE_FP32", [-1, -1], optional=True),
                    # bits per pixel of PIXELS (8 or 16: integer values scaled like a PNG of that depth; absent or 0:
                    # any real values, percentile-clipped like a DICOM after its LUTs)
                    tensor("BITS", "TYPE_INT32", [1], optional=True)]

    import cxrlt.data.images as images_module

    _python_model(repo, compute_config(
        # INDEX: each item's position in the client's request, for messages (the entry drops items it refused)
        "preprocess", [*image_inputs, tensor("INDEX", "TYPE_INT32", [1], optional=True)],
        [tensor("TASK1_INPUT", "TYPE_FP32", shape), tensor("ZS_INPUT", "TYPE_FP32", zs_shape),
         tensor("ERROR", "TYPE_STRING", [1])], opts,
        params={"task1_preprocess": task1.to_dict(), "zeroshot_preprocess": zs_contract.to_dict()}),
        "preprocess.py", {"cxrlt_images.py": Path(images_module.__file__)})
    if bundle["router_classes"]:
        _onnx_model(repo, "router", onnx / "router.onnx", shape, [len(bundle["router_classes"])], opts)
    for view, vspec in bundle["views"].items():
        _view_models(repo, bundle, view, vspec, onnx, shape, opts)
    if zs:
        import numpy as np

        dim = int(np.load(bundle_dir / "zeroshot" / "text_embeddings.npy").shape[1])
        _onnx_model(repo, "clip_image", onnx / "clip_image.onnx", zs_shape, [dim], opts)
        _python_model(repo, compute_config(
            "zeroshot_head", [tensor("EMBEDDING", "TYPE_FP32", [dim])],
            [tensor("PROBS", "TYPE_FP32", [len(zs["classes"])])], opts, instances=1,
            params={"scoring": json.dumps(scoring_fields(bundle))}), "zeroshot_head.py",
            {"text_embeddings.npy": bundle_dir / "zeroshot" / "text_embeddings.npy", **SCORING_FILE})
        _write(repo, ensemble_config(
            "zeroshot", [tensor("INPUT", "TYPE_FP32", zs_shape)], [tensor("PROBS", "TYPE_FP32", [len(zs["classes"])])],
            [("clip_image", {"INPUT": "INPUT"}, {"OUTPUT": "embedding"}),
             ("zeroshot_head", {"EMBEDDING": "embedding"}, {"PROBS": "PROBS"})], opts))
    version = model_version or bundle["lineage"].get("model_version") or f"local:{bundle_dir.resolve().name}"
    n_unseen = len(zs["classes"]) if zs else len(UNSEEN_CLASSES)  # a bundle without zero-shot answers NaN for them
    _python_model(repo, compute_config(
        "cxr", image_inputs,
        [tensor("KNOWN_PROBS", "TYPE_FP32", [len(known)]), tensor("UNSEEN_PROBS", "TYPE_FP32", [n_unseen]),
         tensor("VIEW", "TYPE_STRING", [1]), tensor("VIEW_CONFIDENCE", "TYPE_FP32", [1]),
         tensor("MODEL_VERSION", "TYPE_STRING", [1]), tensor("ERROR", "TYPE_STRING", [1]),
         # names (and bands) in the probabilities' order, so clients never need the (restricted) model config
         tensor("KNOWN_CLASSES", "TYPE_STRING", [len(known)]), tensor("UNSEEN_CLASSES", "TYPE_STRING", [n_unseen]),
         tensor("KNOWN_BANDS", "TYPE_STRING", [len(known)])], opts,
        # two batches in flight: one being preprocessed and routed while the other is in the members
        instances=max(2, opts.instances),
        max_queue=opts.max_queue, batch_delay_us=opts.batch_delay_us,
        params={"scoring": json.dumps(scoring_fields(bundle)), "bands": bundle["bands"],
                "model_version": version, "bls_timeout_s": str(opts.bls_timeout_ms / 1000),
                "max_image_bytes": str(opts.max_image_bytes),
                "entry_metrics": "on" if opts.entry_metrics else "off", **(shadow or {})}), "cxr.py",
                 {**SCORING_FILE, "_observe.py": MODELS_DIR / "_observe.py",
                  "cxrlt_shadow.py": Path(cxrlt.shadow.__file__)})
    models = sorted(p.name for p in repo.iterdir() if p.is_dir())
    return {"repository": str(repo), "models": models, "model_version": version,
            "shadow_version": shadow["shadow_version"] if shadow else None, **opts.model_dump()}
