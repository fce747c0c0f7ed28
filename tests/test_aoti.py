"""The AOTInductor runtime: torch.export programs in the bundle, compiled at ``serve build`` for the serving
device, run by the same python-backend runner (``serving/models/network_runner.py`` over ``_engines.py``) as the
ONNX files. On CPU in float32 here; bf16 on a GPU and its CUDA graphs are measured by ``bench/gpu/check.py``."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from cxrlt.errors import InvalidInputError
from cxrlt.export import MAX_PROGRAM_BATCH, compile_program, export_bundle, onnx_outputs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving" / "models"))
from _engines import AotiEngine, OnnxEngine, engine_for  # noqa: E402


@pytest.fixture(scope="module")
def program_bundle(tiny_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("programs") / "bundle"
    export_bundle(tiny_bundle / "ensemble", tiny_bundle / "zeroshot", out, programs=True)
    return out


def test_the_bundle_carries_a_program_for_every_network(program_bundle):
    onnx = sorted(p.stem for p in (program_bundle / "onnx").glob("*.onnx"))
    assert onnx == sorted(p.stem for p in (program_bundle / "programs").glob("*.pt2"))
    assert {"router", "frontal_trunk", "frontal_pcam", "frontal_cait", "clip_image"} <= set(onnx)
    assert json.loads((program_bundle / "bundle.json").read_text())["programs"] is True


def test_compiled_package_computes_what_the_onnx_file_computes(program_bundle, tmp_path):
    """One network compiled for CPU (about a minute on 2 cores): the engine the runner uses, at batch 1 and 5,
    equals ONNX Runtime on the same ONNX file; a wrong item shape is refused; CUDA graphs are a GPU matter."""
    package = compile_program(program_bundle / "programs" / "lateral_pcam.pt2", tmp_path / "model.pt2")
    rng = np.random.default_rng(0)
    onnx_file = str(program_bundle / "onnx" / "lateral_pcam.onnx")
    item = (1, 32, 32)
    aoti = engine_for(str(package), item, graph_batches=(1, 2))
    assert isinstance(aoti, AotiEngine) and aoti.graphs == {}  # no CUDA graphs on CPU
    onnx = engine_for(onnx_file, item, threads=1)
    assert isinstance(onnx, OnnxEngine)
    for batch in (1, 5):
        x = rng.standard_normal((batch, *item)).astype(np.float32)
        expected = onnx_outputs(onnx_file, x)
        np.testing.assert_allclose(aoti(x), expected, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(onnx(x), expected, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="items of shape"):
        aoti(np.zeros((1, 1, 16, 16), np.float32))
    with pytest.raises(ValueError, match="not an .onnx file"):
        engine_for("model.bin", item)
    with pytest.raises(ValueError, match="runs on CPU in float32"):
        engine_for(onnx_file, item, device="cuda")
    assert MAX_PROGRAM_BATCH >= 64


def test_a_bf16_package_is_re_exported_from_the_fp32_program(program_bundle, tmp_path):
    """The GPU build's path (weights and inputs moved to the serving dtype, the program exported again, then
    compiled), taken on CPU. bf16 keeps 8 bits of mantissa, so the package is held to the error of the same network
    run eagerly in bf16 (Inductor keeps fused intermediates in fp32, so its error is at most that, within a factor
    of 2), not to float32's rounding; and it is not computing in fp32 by mistake."""
    import torch

    program = program_bundle / "programs" / "router.pt2"
    package = compile_program(program, tmp_path / "router_bf16.pt2", "cpu", "bfloat16")
    item = (1, 32, 32)
    x = np.random.default_rng(1).standard_normal((3, *item)).astype(np.float32)
    fp32 = onnx_outputs(str(program_bundle / "onnx" / "router.onnx"), x)
    with torch.no_grad():
        eager_bf16 = torch.export.load(str(program)).module().to(torch.bfloat16)(
            torch.from_numpy(x).bfloat16()).float().numpy()
    got = AotiEngine(str(package), item, "cpu", "bfloat16")(x)
    assert got.dtype == np.float32 and got.shape == fp32.shape
    bf16_error = np.abs(eager_bf16 - fp32).max()
    assert np.abs(got - fp32).max() <= 2 * bf16_error
    assert np.abs(got - fp32).max() > 1e-6  # bf16 did run: float32 would agree to rounding


def test_aoti_repository_serves_the_packages_with_the_shared_runner(program_bundle, tmp_path, monkeypatch):
    """The repository's configs for the aoti runtime (CPU and GPU). Compiling all eight networks takes minutes on
    2 cores, so the compile step here copies the program (the compile itself is the test above)."""
    from tritonclient.grpc import model_config_pb2 as mc

    import cxrlt.export
    from serving.repository import ServingOptions, build_repository
    from tests.test_serving import _parsed

    compiled = []

    def copy_program(program, package, device="cpu", dtype="float32"):
        compiled.append((Path(program).stem, device, dtype))
        shutil.copyfile(program, package)
        return Path(package)

    monkeypatch.setattr(cxrlt.export, "compile_program", copy_program)
    build_repository(program_bundle, tmp_path / "cpu", ServingOptions(onnx_runtime="aoti", instances=1))
    pcam = _parsed(tmp_path / "cpu/frontal_pcam/config.pbtxt")
    assert pcam.backend == "python" and pcam.parameters["model_file"].string_value == "model.pt2"
    assert pcam.parameters["dtype"].string_value == "float32" and pcam.parameters["device"].string_value == "cpu"
    for name in ("model.py", "model.pt2", "_engines.py", "_common.py"):
        assert (tmp_path / "cpu/frontal_pcam/1" / name).exists()
    assert (tmp_path / "cpu/frontal_pcam/1/model.py").read_text() == \
        (Path("serving/models/network_runner.py")).read_text()
    assert {c[0] for c in compiled} >= {"router", "frontal_trunk", "frontal_pcam", "clip_image"}

    compiled.clear()
    build_repository(program_bundle, tmp_path / "gpu", ServingOptions(onnx_runtime="aoti", device="gpu",
                                                                      cuda_graph_batches=[1, 4]))
    swin = _parsed(tmp_path / "gpu/frontal_swin/config.pbtxt")
    assert swin.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU and swin.instance_group[0].count == 1
    assert swin.parameters["dtype"].string_value == "bfloat16"
    assert swin.parameters["cuda_graph_batches"].string_value == "1,4"
    assert {(d, t) for _, d, t in compiled} == {("cuda", "bfloat16")}
    assert _parsed(tmp_path / "gpu/preprocess/config.pbtxt").instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU


def test_aoti_needs_the_programs_and_says_how_to_export_them(tiny_bundle, tmp_path):
    from pydantic import ValidationError

    from serving.repository import ServingOptions, build_repository

    plain = tmp_path / "plain"
    export_bundle(tiny_bundle / "ensemble", tiny_bundle / "zeroshot", plain)
    assert not (plain / "programs").exists()
    with pytest.raises(InvalidInputError, match="cxrlt export --programs"):
        build_repository(plain, tmp_path / "repo", ServingOptions(onnx_runtime="aoti"))
    with pytest.raises(ValidationError, match="TensorRT"):
        ServingOptions(onnx_runtime="aoti", device="gpu", tensorrt=True)
    with pytest.raises(ValidationError, match="aoti"):
        ServingOptions(onnx_runtime="python", device="gpu")
