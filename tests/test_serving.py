"""Serving end to end: ONNX parity on golden tensors, the model repository, the real tritonserver over gRPC
(PNG and DICOM vs the in-process predictors), and every kind of bad input."""

import io
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from cxrlt.data.dicom import array_to_dicom
from cxrlt.data.images import PreprocessConfig
from cxrlt.export import export_bundle, onnx_outputs
from cxrlt.inference import EnsemblePredictor
from cxrlt.labels import KNOWN_CLASSES, UNSEEN_CLASSES
from cxrlt.models.factory import load_member
from cxrlt.tta import TTAModel
from tests.pki import make_pki

pytestmark = pytest.mark.slow
GOLDEN = np.load(Path(__file__).parent / "golden" / "radiographs_32.npy")
PARITY_ATOL = 1e-4
#: the test server's per-item limit (the production default is 64 MiB), so the refusal cases stay small
TEST_MAX_IMAGE_BYTES = 1 << 20


@pytest.fixture(scope="module")
def bundle(tiny_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("served") / "bundle"
    export_bundle(tiny_bundle / "ensemble", tiny_bundle / "zeroshot", out)
    return out


def test_onnx_parity_on_golden_tensors(tiny_bundle, bundle):
    x = PreprocessConfig(size=GOLDEN.shape[-1]).normalize(GOLDEN)
    for name, member in (("router", "router"), ("lateral_pcam", "lateral/pcam"), ("frontal_swin", "frontal/swin")):
        model, _ = load_member(tiny_bundle / "ensemble" / member)
        net = model if name == "router" else TTAModel(model, "flip")
        with torch.no_grad():
            ref = net.eval()(torch.from_numpy(x)).numpy()
        got = onnx_outputs(bundle / "onnx" / f"{name}.onnx", x)
        assert got.shape == ref.shape and np.abs(got - ref).max() < PARITY_ATOL, name
    from cxrlt.zeroshot.predict import ZeroShotPredictor

    encoder = ZeroShotPredictor(tiny_bundle / "zeroshot").image_encoder()
    with torch.no_grad():
        ref = encoder(torch.from_numpy(x)).numpy()
    assert np.abs(onnx_outputs(bundle / "onnx" / "clip_image.onnx", x) - ref).max() < PARITY_ATOL
    one = onnx_outputs(bundle / "onnx" / "router.onnx", x[:1])
    assert one.shape == (1, 2), "dynamic batch axis"


def test_shared_trunk_export_equals_the_unshared_members(tiny_bundle, bundle):
    """Golden: the view's trunk computed once, then the pcam and cait heads over its features, equals each member
    run on its own (TTA included) within 1e-5."""
    import json

    view = json.loads((bundle / "bundle.json").read_text())["views"]["frontal"]
    assert view["shared_trunk"]["model"] == "frontal_trunk" and set(view["shared_trunk"]["members"]) == {"pcam", "cait"}
    assert json.loads((bundle / "bundle.json").read_text())["views"]["lateral"]["shared_trunk"] is None  # no cait
    x = PreprocessConfig(size=GOLDEN.shape[-1]).normalize(GOLDEN)
    feats = onnx_outputs(bundle / "onnx" / "frontal_trunk.onnx", x)
    assert list(feats.shape[1:]) == view["shared_trunk"]["features"] and feats.shape[1] == 2  # flip TTA: 2 views
    for kind in ("pcam", "cait"):
        model, _ = load_member(tiny_bundle / "ensemble" / "frontal" / kind)
        with torch.no_grad():
            ref = TTAModel(model, "flip").eval()(torch.from_numpy(x)).numpy()
        got = onnx_outputs(bundle / "onnx" / f"frontal_{kind}.onnx", feats)
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5, err_msg=kind)


def _parsed(path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


@pytest.mark.parametrize("runtime", ["python", "native"])
def test_repository_configs_parse_as_triton_model_configs(bundle, tmp_path, runtime):
    from tritonclient.grpc import model_config_pb2 as mc

    from serving.repository import ServingOptions, build_repository

    opts = ServingOptions(onnx_runtime=runtime, instances=2, ort_threads=3, max_queue=7, queue_timeout_ms=1500)
    summary = build_repository(bundle, tmp_path / "repo", opts)
    assert {"preprocess", "router", "frontal_trunk", "frontal_ensemble", "frontal_combiner", "zeroshot",
            "cxr"} <= set(summary["models"])
    configs = {name: _parsed(tmp_path / "repo" / name / "config.pbtxt") for name in summary["models"]}
    pcam = configs["frontal_pcam"]
    assert pcam.max_batch_size == 16 and pcam.HasField("dynamic_batching")
    assert list(pcam.input[0].dims)[0] == 2  # it reads the trunk's features (2 TTA views), not the image
    assert list(configs["frontal_swin"].input[0].dims) == [1, 32, 32]
    assert [g.count for g in pcam.instance_group] == [2]
    assert pcam.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    if runtime == "native":
        assert pcam.platform == "onnxruntime_onnx" and (tmp_path / "repo/frontal_pcam/1/model.onnx").exists()
        assert pcam.parameters["intra_op_thread_count"].string_value == "3"
    else:
        assert pcam.backend == "python" and (tmp_path / "repo/frontal_pcam/1/model.py").exists()
        assert pcam.parameters["intra_op_threads"].string_value == "3"
    # the entry alone has a bounded queue that refuses (UNAVAILABLE) instead of piling up; inner models batch
    policy = configs["cxr"].dynamic_batching.default_queue_policy
    assert policy.max_queue_size == 7 and policy.default_timeout_microseconds == 1_500_000
    assert policy.timeout_action == mc.ModelQueuePolicy.REJECT
    assert not pcam.dynamic_batching.HasField("default_queue_policy")
    steps = {s.model_name: s for s in configs["frontal_ensemble"].ensemble_scheduling.step}
    assert configs["frontal_ensemble"].platform == "ensemble"
    assert dict(steps["frontal_pcam"].input_map) == {"INPUT": "features"} == dict(steps["frontal_cait"].input_map)
    assert dict(steps["frontal_trunk"].output_map) == {"OUTPUT": "features"}
    assert dict(steps["frontal_swin"].input_map) == {"INPUT": "INPUT"}
    assert "lateral_trunk" not in configs and dict(configs["lateral_ensemble"].ensemble_scheduling.step[0].input_map) \
        == {"INPUT": "INPUT"}


def test_gpu_repository_uses_gpu_instances_and_tensorrt(bundle, tmp_path):
    from pydantic import ValidationError
    from tritonclient.grpc import model_config_pb2 as mc

    from serving.repository import ServingOptions, build_repository

    opts = ServingOptions(onnx_runtime="native", device="gpu", tensorrt=True, precision="fp16")
    build_repository(bundle, tmp_path / "repo", opts)
    swin = _parsed(tmp_path / "repo/frontal_swin/config.pbtxt")
    assert swin.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert swin.instance_group[0].count == 1  # per visible GPU, whatever the node's core count
    trt = swin.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert trt.name == "tensorrt" and trt.parameters["precision_mode"] == "FP16"
    assert _parsed(tmp_path / "repo/preprocess/config.pbtxt").instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    for bad in ({"tensorrt": True}, {"precision": "fp16"}, {"device": "gpu"}, {"instances": 0}):
        with pytest.raises(ValidationError):
            ServingOptions(**bad)


def test_a_wrong_config_field_fails_at_build_time():
    from google.protobuf.json_format import ParseError

    from serving.repository import model_config, tensor

    assert model_config({"name": "m", "backend": "python", "input": [tensor("X", "TYPE_FP32", [3])]}).input[0].dims \
        == [3]
    with pytest.raises(ParseError):
        model_config({"name": "m", "backend": "python", "max_batch": 4})  # the field is max_batch_size
    with pytest.raises(ParseError):
        model_config({"name": "m", "input": [tensor("X", "TYPE_FLOAT32", [3])]})  # no such data type


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    from serving.repository import ServingOptions, build_repository
    from serving.server import start, stop

    root = tmp_path_factory.mktemp("triton")
    build_repository(bundle, root / "repo", ServingOptions(max_image_bytes=TEST_MAX_IMAGE_BYTES))
    handle = start(root / "repo", name=f"pytest-{root.name}", http_port=0, grpc_port=0, metrics_port=0,
                   state_dir=root / "state")
    yield handle
    stop(handle.name, state_dir=root / "state")
    from cxrlt.ops.procs import alive

    assert not alive(handle.pid)


@pytest.fixture(scope="module")
def images(synth_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("imgs")
    ids = pd.read_csv(synth_data / "CXRLT_2026_test_labels.csv", dtype=str)["ImageID"][:4]
    pngs = [synth_data / "images" / i for i in ids]
    dcm = array_to_dicom(cv2.imread(str(pngs[0]), cv2.IMREAD_UNCHANGED), folder / "first.dcm", monochrome1=True)
    return pngs, dcm


def test_grpc_matches_in_process_predictors(server, tiny_bundle, images):
    from cxrlt.zeroshot.predict import ZeroShotPredictor
    from serving.client import CXRClient

    pngs, dcm = images
    client = CXRClient(server.grpc_url, batch_size=3)
    results = client.infer_files([*pngs, dcm])
    client.close()
    ref = EnsemblePredictor(tiny_bundle / "ensemble").predict_files(pngs)
    zs = ZeroShotPredictor(tiny_bundle / "zeroshot")
    from cxrlt.data.images import PreprocessConfig, load_preprocessed

    zs_ref = zs.predict(np.stack([load_preprocessed(p, PreprocessConfig(size=zs.image_size)) for p in pngs]),
                        list(UNSEEN_CLASSES), "sigmoid")
    for i, r in enumerate(results[:4]):
        assert r.error == "" and r.view == ref.loc[i, "view"]
        assert r.view_confidence == pytest.approx(ref.loc[i, "view_confidence"], abs=1e-4)
        np.testing.assert_allclose([r.known[c] for c in KNOWN_CLASSES], ref.loc[i, list(KNOWN_CLASSES)].to_numpy(float),
                                   atol=1e-4)
        np.testing.assert_allclose([r.unseen[c] for c in UNSEEN_CLASSES], zs_ref[i], atol=1e-4)
        assert r.model_version.startswith("local:")
    # the MONOCHROME1 DICOM of the first PNG gives the same answer as the PNG
    np.testing.assert_allclose(list(results[4].known.values()), list(results[0].known.values()), atol=2e-3)


def _scrape(server) -> dict[tuple[str, tuple], float]:
    """Every cxrlt_* sample Triton serves on its metrics port: (sample name, sorted labels) -> value."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{server.host}:{server.metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) if family.name.startswith("cxrlt_")
            for sample in family.samples}


def test_entry_metrics_count_known_requests(server, images, tmp_path):
    """After known requests, the entry's metrics grew by exactly what was sent: items by input kind, bit depth and
    the view each was routed to; refusals by reason; every finding's score histogram by the probabilities the
    client received (bucket counts computed here from them); and the preprocessing and scoring time."""
    from serving.client import CXRClient
    from serving.refusals import dicom_like, over_cap_png

    pngs, dcm = images
    before = _scrape(server)
    client = CXRClient(server.grpc_url, batch_size=1)
    scored = client.infer_files([pngs[0], pngs[1], dcm])
    raw = cv2.imread(str(pngs[2]), cv2.IMREAD_UNCHANGED)
    scored += client.infer_pixels([(raw // 257).astype(np.float32)], bits=8)
    refused = client.infer_bytes([dicom_like(Modality="CT"), over_cap_png(TEST_MAX_IMAGE_BYTES)])
    client.close()
    assert [r.error for r in scored] == [""] * 4 and all(r.error for r in refused), [r.error for r in scored]
    after = _scrape(server)

    def grew(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    expected_items = {}
    for kind, bits, result in zip(("png", "png", "dicom", "pixels"), ("16", "16", "16", "8"), scored, strict=True):
        key = (kind, bits, result.view)
        expected_items[key] = expected_items.get(key, 0) + 1
    expected_items[("dicom", "16", "refused")] = 1  # the CT slice (array_to_dicom writes 16 bits stored)
    expected_items[("png", "16", "refused")] = 1  # the PNG over the byte limit
    counted = {(dict(k[1])["input"], dict(k[1])["bits"], dict(k[1])["view"]): v - before.get(k, 0.0)
               for k, v in after.items() if k[0] == "cxrlt_entry_items_total" and v != before.get(k, 0.0)}
    assert counted == expected_items
    assert grew("cxrlt_entry_refusals_total", reason="not_a_radiograph") == 1
    assert grew("cxrlt_entry_refusals_total", reason="too_large") == 1
    for kind, names in (("known", KNOWN_CLASSES), ("unseen", UNSEEN_CLASSES)):
        for name in names:
            values = [getattr(r, kind)[name] for r in scored]
            assert grew("cxrlt_entry_score_count", finding=name, kind=kind) == len(values)
            assert grew("cxrlt_entry_score_sum", finding=name, kind=kind) == pytest.approx(sum(values), abs=1e-5)
            for le in ("0.1", "0.5", "0.9"):
                assert grew("cxrlt_entry_score_bucket", finding=name, kind=kind, le=le) == sum(
                    v <= float(le) for v in values), (name, le)
    assert grew("cxrlt_entry_batches_total") >= 4
    assert grew("cxrlt_entry_preprocess_duration_us_total") > 0 and grew("cxrlt_entry_scoring_duration_us_total") > 0, [
        (k, v) for k, v in after.items() if "duration" in k[0]]


def test_every_metric_the_rules_and_dashboard_read_is_served(server, images):
    """The alert rules, recording rules and dashboard (infra/base/monitoring/) read only metrics this server serves:
    Triton's nv_* series and the entry's cxrlt_entry_* series, by their sample names (the cxrlt_shadow_* series of
    the dashboard's shadow row are served with a challenger only: tests/test_shadow.py checks those)."""
    import re
    import urllib.request

    from serving.client import CXRClient
    from tests.test_monitoring import referenced_metric_names

    client = CXRClient(server.grpc_url)
    assert client.infer_files(images[0][:1])[0].error == ""
    client.close()
    with urllib.request.urlopen(f"http://{server.host}:{server.metrics_port}/metrics", timeout=10) as r:
        # the names as exposed (a parser would add _total to Triton's counters, which Prometheus does not)
        served = {re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0) for line in r.read().decode().splitlines()
                  if line and not line.startswith("#")}
    referenced = {m for m in referenced_metric_names() if not m.startswith("cxrlt_shadow_")}
    assert {"nv_inference_queue_duration_us", "cxrlt_entry_score_bucket", "cxrlt_entry_items_total"} <= referenced
    assert referenced <= served, referenced - served


def test_entry_metrics_can_be_left_out(strict_server, images):
    """`serve build --no-entry-metrics`: the entry answers the same and exports no cxrlt_* series (what
    bench/entry_metrics_cost.py compares against)."""
    from serving.client import CXRClient

    server = strict_server(entry_metrics=False)
    client = CXRClient(server.grpc_url)
    assert client.infer_files(images[0][:1])[0].error == ""
    client.close()
    assert _scrape(server) == {}


def test_async_client(server, images):
    import asyncio

    from serving.client import AsyncCXRClient

    async def go():
        client = AsyncCXRClient(server.grpc_url, batch_size=2)
        try:
            return await client.infer_files(images[0])
        finally:
            await client.close()

    results = asyncio.run(go())
    assert len(results) == 4 and all(set(r.known) == set(KNOWN_CLASSES) for r in results)


def _raw_request(server, inputs):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    tensors = []
    for name, arr, dtype in inputs:
        t = grpcclient.InferInput(name, list(arr.shape), dtype)
        t.set_data_from_numpy(arr)
        tensors.append(t)
    try:
        return client.infer("cxr", tensors, outputs=[grpcclient.InferRequestedOutput("KNOWN_PROBS"),
                                                     grpcclient.InferRequestedOutput("ERROR")])
    finally:
        client.close()


def test_bad_inputs_get_invalid_argument_and_server_stays_ready(server, tmp_path):
    from tritonclient.utils import InferenceServerException

    from serving.refusals import over_cap_png, oversize_png, png_bytes, refusal_cases

    cases = refusal_cases(TEST_MAX_IMAGE_BYTES)
    cases["oversize strip"] = ([("IMAGE", np.array([[oversize_png()]], dtype=np.object_), "BYTES")], "per side")
    for case, (inputs, fragment) in cases.items():
        with pytest.raises(InferenceServerException) as info:
            _raw_request(server, inputs)
        assert "INVALID_ARG" in str(info.value.status()), (case, info.value)
        assert fragment.lower() in str(info.value).lower(), (case, str(info.value))
    # a batch mixing good and bad items: the good ones still answer, the bad one carries its error
    # (an item over the byte limit is left out before preprocessing; the others keep their positions)
    mixed = np.array([[png_bytes()], [b"garbage bytes"], [over_cap_png(TEST_MAX_IMAGE_BYTES)], [png_bytes((50, 30))]],
                     dtype=np.object_)
    response = _raw_request(server, [("IMAGE", mixed, "BYTES")])
    errors = [e[0].decode() for e in response.as_numpy("ERROR")]
    assert errors[0] == "" and errors[3] == ""
    assert errors[1].startswith("item 1:") and "not a PNG or DICOM" in errors[1]
    assert errors[2].startswith("item 2:") and "max_image_bytes" in errors[2]
    probs = response.as_numpy("KNOWN_PROBS")
    assert np.isfinite(probs[[0, 3]]).all() and np.isnan(probs[[1, 2]]).all()
    alone = _raw_request(server, [("IMAGE", np.array([[png_bytes((50, 30))]], dtype=np.object_), "BYTES")])
    np.testing.assert_allclose(probs[3], alone.as_numpy("KNOWN_PROBS")[0], rtol=0, atol=1e-6)
    import urllib.request

    with urllib.request.urlopen(f"{server.http_url}/v2/health/ready") as r:
        assert r.status == 200
    good = _raw_request(server, [("IMAGE", np.array([[png_bytes()]], dtype=np.object_), "BYTES")])
    assert np.isfinite(good.as_numpy("KNOWN_PROBS")).all()


def _fake_pb_utils():
    """The few pieces of Triton's python-backend API the preprocess model uses, to run it in-process."""
    import types

    class Tensor:
        def __init__(self, name, array):
            self._name, self._array = name, array

        def name(self):
            return self._name

        def as_numpy(self):
            return self._array

    class InferenceResponse:
        def __init__(self, output_tensors=None, error=None):
            self.tensors = {t.name(): t.as_numpy() for t in output_tensors or []}
            self.error = error

    class TritonError:
        INVALID_ARG = 3

        def __init__(self, message, code=None):
            self.message = message

    mod = types.ModuleType("triton_python_backend_utils")
    mod.Tensor, mod.InferenceResponse, mod.TritonError = Tensor, InferenceResponse, TritonError
    mod.get_input_tensor_by_name = lambda request, name: request.get(name)
    return mod


def test_served_preprocess_applies_the_bundle_contract(bundle, synth_data, tmp_path, monkeypatch):
    """Golden: the Triton preprocess model's tensors are exactly the bundle contract's transform of the image,
    for a 3-channel ImageNet-normalised contract (the paper profile's), with no constants of its own."""
    import importlib
    import json
    import shutil
    import sys

    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    from cxrlt.data.images import load_preprocessed
    from cxrlt.export import bundle_contracts
    from serving.repository import build_repository

    served = tmp_path / "bundle"
    shutil.copytree(bundle, served)
    spec = json.loads((served / "bundle.json").read_text())
    spec["preprocess"].update(channels=3, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    (served / "bundle.json").write_text(json.dumps(spec))
    build_repository(served, tmp_path / "repo")
    config = text_format.Parse((tmp_path / "repo/preprocess/config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert list(next(o for o in config.output if o.name == "TASK1_INPUT").dims) == [3, 32, 32]
    router = text_format.Parse((tmp_path / "repo/router/config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert list(router.input[0].dims) == [3, 32, 32]

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb_utils())
    monkeypatch.syspath_prepend(str(tmp_path / "repo/preprocess/1"))
    for name in ("_common", "cxrlt_images", "model"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    model = importlib.import_module("model").TritonPythonModel()
    model.initialize({"model_config": json_format.MessageToJson(config, preserving_proto_field_name=True)})
    png = sorted((synth_data / "images").iterdir())[0]
    request = {"IMAGE": sys.modules["triton_python_backend_utils"].Tensor(
        "IMAGE", np.array([[png.read_bytes()]], dtype=np.object_))}
    response = model.execute([request])[0]
    task1, zs = bundle_contracts(spec)
    np.testing.assert_allclose(response.tensors["TASK1_INPUT"][0], task1.normalize(load_preprocessed(png, task1)),
                               rtol=0, atol=1e-6)
    np.testing.assert_allclose(response.tensors["ZS_INPUT"][0], zs.normalize(load_preprocessed(png, zs)),
                               rtol=0, atol=1e-6)
    for name in ("_common", "cxrlt_images", "model"):
        sys.modules.pop(name, None)


def test_infer_table_marks_the_true_findings(server, images, synth_data):
    from typer.testing import CliRunner

    from cxrlt.cli import app
    from cxrlt.data.tables import read_label_sets

    pngs, dcm = images
    labels = synth_data / "CXRLT_2026_test_labels.csv"
    result = CliRunner().invoke(app, ["infer", str(pngs[0]), str(dcm), "--url", server.grpc_url, "--top", "30",
                                      "--labels", str(labels)])
    assert result.exit_code == 0, result.output
    truth = read_label_sets(labels)[pngs[0].name]
    first = result.output.split(str(dcm))[0]
    for name in truth:  # every true finding of the first image is marked present (all 30 known + 6 unseen shown)
        assert any(line.split()[0] == name.split()[0] and line.rstrip().endswith("present")
                   for line in first.splitlines() if line.startswith(f"  {name}")), name
    assert "truly present, not in the table above: none" in first
    assert "(not in the label CSV: no truth to show)" in result.output.split(str(dcm))[1]


def test_infer_reports_every_item_and_fails_when_any_did(server, images, tmp_path):
    import pandas as pd
    from typer.testing import CliRunner

    from cxrlt.cli import app
    from serving.client import CXRClient

    pngs, _ = images
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    missing = tmp_path / "missing.png"
    # batch size 1: the garbage item is a chunk the server refuses whole; the others are still answered
    results = CXRClient(server.grpc_url, batch_size=1).infer_files([pngs[0], missing, garbage, pngs[1]])
    assert [bool(r.error) for r in results] == [False, True, True, False]
    assert "cannot read file" in results[1].error and results[2].error and results[3].known
    result = CliRunner().invoke(app, ["infer", str(pngs[0]), str(missing), str(garbage), "--url", server.grpc_url,
                                      "--csv", str(tmp_path / "out.csv")])
    assert result.exit_code == 1 and "2 of 3 items failed" in result.output
    assert str(missing) in result.output and str(garbage) in result.output
    table = pd.read_csv(tmp_path / "out.csv")
    assert len(table) == 3 and table["error"].isna().tolist() == [True, False, False]
    assert table.loc[0, "cardiomegaly"] == pytest.approx(results[0].known["cardiomegaly"], abs=1e-6)


@pytest.mark.parametrize("syntax", ["RLELossless", "JPEGLSLossless", "JPEG2000Lossless"])
def test_compressed_dicom_is_served_like_the_uncompressed_file(server, images, syntax):
    """The serving environment decodes PACS transfer syntaxes (the `dicom` extra): a losslessly compressed copy of
    a radiograph gets the uncompressed file's probabilities."""
    import pydicom
    import pydicom.uid

    plain = images[1].read_bytes()
    ds = pydicom.dcmread(io.BytesIO(plain))
    ds.compress(getattr(pydicom.uid, syntax))
    packed = io.BytesIO()
    ds.save_as(packed, enforce_file_format=True)
    batch = np.array([[plain], [packed.getvalue()]], dtype=np.object_)
    result = _raw_request(server, [("IMAGE", batch, "BYTES")])
    errors = [e.decode() if isinstance(e, bytes) else str(e) for e in result.as_numpy("ERROR").ravel()]
    assert errors == ["", ""], errors
    probs = result.as_numpy("KNOWN_PROBS")
    np.testing.assert_allclose(probs[1], probs[0], atol=1e-6)


@pytest.fixture(scope="module")
def locked_server(bundle, tmp_path_factory):
    """A production server (model control none, Triton on loopback behind the nginx front door that holds the admin
    key) with mutual TLS on gRPC."""
    from serving.front_door import FrontDoorError, nginx_binary
    from serving.repository import build_repository
    from serving.server import ServerTLS, start, stop

    try:
        nginx_binary()
    except FrontDoorError as exc:
        pytest.skip(str(exc))

    root = tmp_path_factory.mktemp("locked")
    pki = make_pki(root)
    build_repository(bundle, root / "repo")
    handle = start(root / "repo", name=f"pytest-locked-{root.name}", http_port=0, grpc_port=0, metrics_port=0,
                   state_dir=root / "state", production=True,
                   tls=ServerTLS(pki / "server.pem", pki / "server.key", pki / "ca.pem"))
    yield handle, pki
    assert stop(handle.name, state_dir=root / "state")


def test_production_server_needs_tls_and_a_client_certificate(locked_server, images):
    from serving.client import CXRClient, TLSOptions

    handle, pki = locked_server
    pngs, _ = images
    url = f"localhost:{handle.grpc_port}"
    good = CXRClient(url, retries=0, tls=TLSOptions(pki / "ca.pem", pki / "client.pem", pki / "client.key"))
    result = good.infer_files([pngs[0]])[0]
    assert result.error == "" and len(result.known) == len(KNOWN_CLASSES)
    for tls in (None, TLSOptions(pki / "ca.pem")):  # plaintext; TLS without the client certificate
        refused = CXRClient(url, retries=0, timeout=5, tls=tls).infer_files([pngs[0]])[0]
        assert not refused.known and refused.error, "no answer without TLS and a client certificate"


def test_production_server_refuses_model_control_and_restricts_admin_apis(locked_server):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from serving.server import ADMIN_GRPC_HEADER, ADMIN_HEADER

    handle, pki = locked_server
    client = grpcclient.InferenceServerClient(f"localhost:{handle.grpc_port}", ssl=True,
                                              root_certificates=str(pki / "ca.pem"),
                                              private_key=str(pki / "client.key"),
                                              certificate_chain=str(pki / "client.pem"))
    try:
        with pytest.raises(InferenceServerException, match="(?i)restricted|permission|denied|header"):
            client.unload_model("cxr")
        with pytest.raises(InferenceServerException, match="(?i)restricted|permission|denied|header"):
            client.get_model_config("router")
        # statistics, tracing and logging settings are admin APIs too (a trace could write patient pixels to logs)
        for call in (lambda **kw: client.get_inference_statistics("cxr", **kw),
                     lambda **kw: client.update_trace_settings(settings={"trace_level": ["TENSORS"]}, **kw),
                     lambda **kw: client.update_log_settings(settings={"log_verbose_level": 1}, **kw)):
            with pytest.raises(InferenceServerException, match="(?i)restricted|permission|denied|header"):
                call()
        admin = {ADMIN_GRPC_HEADER: handle.admin_key}
        assert client.get_inference_statistics("cxr", headers=admin)
        assert client.get_model_config("router", headers=admin)  # the admin key opens the restricted API ...
        with pytest.raises(InferenceServerException, match="(?i)not allowed|mode|explicit|poll"):
            client.unload_model("cxr", headers=admin)  # ... but model control mode none refuses unloading anyway
        assert client.is_model_ready("cxr") and client.is_server_ready()
    finally:
        client.close()
    # Triton's HTTP has no TLS: with TLS on gRPC, images are refused over plaintext HTTP (health stays open)
    import tritonclient.http as httpclient

    http = httpclient.InferenceServerClient(f"127.0.0.1:{handle.http_port}")
    try:
        tensor = httpclient.InferInput("IMAGE", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[b"x"]], dtype=np.object_))
        with pytest.raises(InferenceServerException, match="(?i)restricted|permission|denied|header"):
            http.infer("cxr", [tensor])
        assert http.is_server_ready()
        with pytest.raises(InferenceServerException, match="(?i)admin"):
            http.get_inference_statistics("cxr")
        assert http.get_inference_statistics("cxr", headers={ADMIN_HEADER: handle.admin_key})["model_stats"]
    finally:
        http.close()


def test_production_admin_key_is_on_no_command_line(locked_server):
    """tritonserver reads restricted-API keys only from argv, readable by anyone who lists processes: in production
    it restricts nothing and listens on loopback only, and the key lives in the front door's 0600 configuration."""
    handle, _ = locked_server

    def cmdline(pid) -> list[str]:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:  # gone meanwhile
            return []

    for pid in (p.name for p in Path("/proc").iterdir() if p.name.isdigit()):
        assert handle.admin_key not in " ".join(cmdline(pid)), pid
    args = " ".join(cmdline(handle.pid))
    assert "--grpc-address=127.0.0.1" in args and "--http-address=127.0.0.1" in args and "restricted" not in args
    assert f"--grpc-port={handle.grpc_port}" not in args, "Triton does not take the public ports"
    # nginx retitles its master process: "nginx: master process <its command line>"
    conf = Path(" ".join(cmdline(handle.front_pid)).split(" -c ")[1].split()[0])
    assert handle.admin_key in conf.read_text() and conf.stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_pixels_with_their_bit_depth_score_like_the_png(server, dtype):
    """The same image as a PNG and as raw PIXELS with BITS gets the same probabilities (8 and 16 bits)."""
    from serving.client import CXRClient

    rng = np.random.default_rng(3)
    top = 255 if dtype == np.uint8 else 4095  # a 12-bit radiograph stored in 16 bits
    image = (rng.random((48, 40)) * top).astype(dtype)
    client = CXRClient(server.grpc_url)
    try:
        png = client.infer_bytes([cv2.imencode(".png", image)[1].tobytes()])[0]
        pixels = client.infer_pixels([image.astype(np.float32)], bits=8 if dtype == np.uint8 else 16)[0]
        wrong = client.infer_pixels([image.astype(np.float32) + 0.5], bits=16)[0]
        too_deep = client.infer_pixels([np.full((40, 40), 300.0, np.float32)], bits=8)[0]
    finally:
        client.close()
    assert png.error == "" and pixels.error == "" and pixels.view == png.view
    for name in KNOWN_CLASSES:
        assert pixels.known[name] == pytest.approx(png.known[name], abs=1e-6), name
    for name in UNSEEN_CLASSES:
        assert pixels.unseen[name] == pytest.approx(png.unseen[name], abs=1e-6), name
    assert "integers in 0..65535" in wrong.error and "integers in 0..255" in too_deep.error


def test_float32_extremes_are_scored_per_item_beside_a_refused_one(server):
    """Values of +-3e38 overflow float32 arithmetic (3e38 - -3e38 is Inf): preprocessing in float64 scores them like
    the same pattern in [0, 1]; a NaN request sent at the same time is refused on its own, the others answered."""
    from concurrent.futures import ThreadPoolExecutor

    from serving.client import CXRClient

    pattern = (np.add.outer(np.arange(48), np.arange(40)) % 7 < 3).astype(np.float32)  # 0/1 stripes
    requests = {"extremes": np.where(pattern > 0, 3e38, -3e38).astype(np.float32), "unit": pattern,
                "nan": np.where(pattern > 0, np.nan, 0).astype(np.float32)}

    def one(image):
        client = CXRClient(server.grpc_url)
        try:
            return client.infer_pixels([image])[0]
        finally:
            client.close()

    with ThreadPoolExecutor(len(requests)) as pool:  # at once, so the entry may batch them together
        results = dict(zip(requests, pool.map(one, requests.values()), strict=True))
    assert results["extremes"].error == "" and results["unit"].error == ""
    assert "NaN" in results["nan"].error
    for name in KNOWN_CLASSES:
        assert results["extremes"].known[name] == pytest.approx(results["unit"].known[name], abs=1e-6), name
    for name in UNSEEN_CLASSES:
        assert results["extremes"].unseen[name] == pytest.approx(results["unit"].unseen[name], abs=1e-6), name


def test_a_12_bit_jpeg_extended_file_that_libjpeg_refuses_is_served(server):
    """pydicom's JPEG-lossy.dcm (12-bit process 2/4) under a CR header: decoded through GDCM in the serving
    environment, scored, and equal to the same pixels sent as raw values."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    from cxrlt.data.images import decode_image
    from serving.client import CXRClient

    ds = pydicom.dcmread(get_testdata_file("JPEG-lossy.dcm"))
    ds.Modality = "CR"
    out = io.BytesIO()
    ds.save_as(out)
    client = CXRClient(server.grpc_url)
    try:
        served = client.infer_bytes([out.getvalue()])[0]
        raw = client.infer_pixels([decode_image(out.getvalue(), "JPEG-lossy.dcm")])[0]
    finally:
        client.close()
    assert served.error == "" and raw.error == ""
    for name in KNOWN_CLASSES:
        assert served.known[name] == pytest.approx(raw.known[name], abs=1e-6), name


def test_internal_models_refuse_non_finite_inputs(server):
    """A client that calls an internal model directly gets a clear refusal for NaN/Inf, not a score."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        for model, name, shape in (("frontal_swin", "INPUT", [1, 1, 32, 32]), ("zeroshot_head", "EMBEDDING", [1, 32]),
                                   ("frontal_combiner", "LOGITS_pcam", [1, 30])):
            x = np.full(shape, np.nan, np.float32)
            inputs = [grpcclient.InferInput(name, shape, "FP32")]
            inputs[0].set_data_from_numpy(x)
            if model == "frontal_combiner":
                for other in ("LOGITS_swin", "LOGITS_cait"):
                    inputs.append(grpcclient.InferInput(other, shape, "FP32"))
                    inputs[-1].set_data_from_numpy(np.zeros(shape, np.float32))
            with pytest.raises(InferenceServerException) as info:
                client.infer(model, inputs)
            assert "NaN or Inf" in str(info.value) and "internal model" in str(info.value), model
    finally:
        client.close()


@pytest.fixture()
def strict_server(bundle, tmp_path):
    """A server whose entry queues one request at most and whose model calls time out after 1 microsecond."""
    from serving.repository import ServingOptions, build_repository
    from serving.server import start, stop

    def make(**options):
        repo = tmp_path / f"repo{len(handles)}"
        build_repository(bundle, repo, ServingOptions(**options))
        handles.append(start(repo, name=f"strict-{tmp_path.name}-{len(handles)}", http_port=0, grpc_port=0,
                             metrics_port=0, state_dir=tmp_path / "state"))
        return handles[-1]

    handles = []
    yield make
    for h in handles:
        stop(h.name, state_dir=tmp_path / "state")


def _ready(server) -> bool:
    import urllib.request

    with urllib.request.urlopen(f"{server.http_url}/v2/health/ready") as r:
        return r.status == 200


def test_overload_is_refused_quickly_and_model_calls_time_out(strict_server, images):
    from concurrent.futures import ThreadPoolExecutor

    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    payload = np.array([[Path(images[0][0]).read_bytes()]], dtype=np.object_)
    server = strict_server(max_queue=1, batch_delay_us=0)

    def one(_):
        client = grpcclient.InferenceServerClient(server.grpc_url)
        tensor = grpcclient.InferInput("IMAGE", [1, 1], "BYTES")
        tensor.set_data_from_numpy(payload)
        try:
            return client.infer("cxr", [tensor]).as_numpy("KNOWN_PROBS")
        except InferenceServerException as exc:
            return exc
        finally:
            client.close()

    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(one, range(96)))
    refused = [o for o in outcomes if isinstance(o, Exception)]
    answered = [o for o in outcomes if not isinstance(o, Exception)]
    assert refused and answered, "16 concurrent senders against a queue of 1: some refused, some answered"
    assert all("UNAVAILABLE" in str(e.status()) and "queue" in str(e).lower() for e in refused), refused[0]
    assert all(np.allclose(a, answered[0], atol=1e-6) for a in answered)  # the answered ones are all right
    assert _ready(server)

    slow = strict_server(bls_timeout_ms=0.001)  # every call the entry makes outlives a 1 us timeout
    with pytest.raises(InferenceServerException) as info:
        _raw_request(slow, [("IMAGE", payload, "BYTES")])
    assert "timeout" in str(info.value) and "preprocess" in str(info.value)
    assert _ready(slow)


@pytest.mark.parametrize(("files", "expected"), [
    ({"cpu.max": "400000 100000\n"}, 4),             # cgroup v2, limits.cpu: 4
    ({"cpu.max": "150000 100000\n"}, 2),             # limits.cpu: 1500m rounds up
    ({"cpu.max": "max 100000\n"}, None),             # no limit
    ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2),  # cgroup v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({}, None),
])
def test_instance_counts_follow_the_pods_cpu_limit_not_the_nodes_cores(tmp_path, files, expected):
    import os

    from cxrlt.machine import cgroup_cpu_limit, usable_cpus

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_limit(tmp_path) == expected
    affinity = len(os.sched_getaffinity(0))
    assert usable_cpus(tmp_path) == (min(affinity, expected) if expected else affinity)
