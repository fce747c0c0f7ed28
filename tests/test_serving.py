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
from cxrlt.training.trainer import load_member
from cxrlt.tta import TTAModel

pytestmark = pytest.mark.slow
GOLDEN = np.load(Path(__file__).parent / "golden" / "radiographs_32.npy")
PARITY_ATOL = 1e-4


@pytest.fixture(scope="module")
def bundle(tiny_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("served") / "bundle"
    export_bundle(tiny_bundle / "ensemble", tiny_bundle / "zeroshot", out)
    return out


def test_onnx_parity_on_golden_tensors(tiny_bundle, bundle):
    x = PreprocessConfig(size=GOLDEN.shape[-1]).normalize(GOLDEN)
    for name, member in (("router", "router"), ("frontal_pcam", "frontal/pcam"), ("frontal_swin", "frontal/swin")):
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


@pytest.mark.parametrize("runtime", ["python", "native"])
def test_repository_layout(bundle, tmp_path, runtime):
    from serving.repository import build_repository

    summary = build_repository(bundle, tmp_path / "repo", runtime)
    assert {"preprocess", "router", "frontal_ensemble", "frontal_combiner", "zeroshot", "cxr"} <= set(summary["models"])
    config = (tmp_path / "repo" / "frontal_pcam" / "config.pbtxt").read_text()
    assert "max_batch_size: 16" in config and "dims: [ 1, 32, 32 ]" in config and "dynamic_batching" in config
    if runtime == "native":
        assert 'platform: "onnxruntime_onnx"' in config and (tmp_path / "repo/frontal_pcam/1/model.onnx").exists()
    else:
        assert 'backend: "python"' in config and (tmp_path / "repo/frontal_pcam/1/model.py").exists()
    assert 'platform: "ensemble"' in (tmp_path / "repo" / "frontal_ensemble" / "config.pbtxt").read_text()


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    from serving.repository import build_repository
    from serving.server import start, stop

    root = tmp_path_factory.mktemp("triton")
    build_repository(bundle, root / "repo", "python")
    handle = start(root / "repo", name=f"pytest-{root.name}", http_port=0, grpc_port=0, metrics_port=0,
                   state_dir=root / "state")
    yield handle
    stop(handle.name, state_dir=root / "state")
    from cxrlt.procs import alive

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


def _png_bytes(shape=(40, 40), dtype=np.uint16) -> bytes:
    ok, buf = cv2.imencode(".png", (np.random.default_rng(0).random(shape) * 1000).astype(dtype))
    return buf.tobytes()


def _bad_cases(tmp_path):
    good = _png_bytes()
    no_pixels = array_to_dicom(np.zeros((16, 16), np.uint16), tmp_path / "np.dcm", with_pixels=False).read_bytes()
    nan = np.full((1, 40, 40), np.nan, np.float32)
    inf = np.full((1, 40, 40), np.inf, np.float32)
    obj = lambda b: np.array([[b]], dtype=np.object_)  # noqa: E731
    return {
        "wrong dtype": ([("PIXELS", np.zeros((1, 40, 40), np.int32), "INT32")], "data-type"),
        "wrong rank": ([("PIXELS", np.zeros((1, 2, 40, 40), np.float32), "FP32")], "shape"),
        "empty bytes": ([("IMAGE", obj(b""), "BYTES")], "empty"),
        "truncated png": ([("IMAGE", obj(good[: len(good) // 2]), "BYTES")], "truncated"),
        "random bytes": ([("IMAGE", obj(np.random.default_rng(1).bytes(500)), "BYTES")], "not a PNG or DICOM"),
        "CT slice": ([("IMAGE", obj(_dicom_like(tmp_path, Modality="CT")), "BYTES")], "not a projection radiograph"),
        "ultrasound palette": ([("IMAGE", obj(_dicom_like(tmp_path, Modality="DX",
                                                          PhotometricInterpretation="PALETTE COLOR")), "BYTES")],
                               "not a grayscale radiograph"),
        "colour PNG": ([("IMAGE", obj(cv2.imencode(".png", np.zeros((40, 40, 3), np.uint8))[1].tobytes()),
                         "BYTES")], "colour type 2"),
        "JPEG": ([("IMAGE", obj(cv2.imencode(".jpg", np.zeros((40, 40), np.uint8))[1].tobytes()), "BYTES")],
                 "not a PNG or DICOM"),
        "dicom without pixels": ([("IMAGE", obj(no_pixels), "BYTES")], "no pixel data"),
        "decompression bomb": ([("IMAGE", obj(_png_bomb()), "BYTES")], "over the limit"),
        "nan pixels": ([("PIXELS", nan, "FP32")], "NaN"),
        "inf pixels": ([("PIXELS", inf, "FP32")], "NaN or Inf"),
    }


def _dicom_like(tmp_path, **tags) -> bytes:
    """A valid DICOM image with some tags changed (what a PACS sends for CT, ultrasound ...)."""
    import pydicom

    path = array_to_dicom(np.full((32, 32), 1000, np.uint16), tmp_path / "x.dcm")
    ds = pydicom.dcmread(path)
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.save_as(path)
    return path.read_bytes()


def _png_bomb() -> bytes:
    import struct
    import zlib

    width = height = 20_000  # 400 M pixels declared in the header; tiny file
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def test_bad_inputs_get_invalid_argument_and_server_stays_ready(server, tmp_path):
    from tritonclient.utils import InferenceServerException

    for case, (inputs, fragment) in _bad_cases(tmp_path).items():
        with pytest.raises(InferenceServerException) as info:
            _raw_request(server, inputs)
        assert "INVALID_ARG" in str(info.value.status()), (case, info.value)
        assert fragment.lower() in str(info.value).lower(), (case, str(info.value))
    # a batch mixing good and bad items: the good ones still answer, the bad one carries its error
    mixed = np.array([[_png_bytes()], [b"garbage bytes"], [_png_bytes((50, 30))]], dtype=np.object_)
    response = _raw_request(server, [("IMAGE", mixed, "BYTES")])
    errors = [e[0].decode() for e in response.as_numpy("ERROR")]
    assert errors[0] == "" and "not a PNG or DICOM" in errors[1] and errors[2] == ""
    probs = response.as_numpy("KNOWN_PROBS")
    assert np.isfinite(probs[[0, 2]]).all() and np.isnan(probs[1]).all()
    import urllib.request

    with urllib.request.urlopen(f"{server.http_url}/v2/health/ready") as r:
        assert r.status == 200
    good = _raw_request(server, [("IMAGE", np.array([[_png_bytes()]], dtype=np.object_), "BYTES")])
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
    build_repository(served, tmp_path / "repo", "python")
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


def _pki(folder):
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, all signed by the CA (PEM)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def issue(name, key, issuer_name, issuer_key, ca=False, san=None, usage=None):
        builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                   .issuer_name(issuer_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        if usage:
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    def write(name, cert, key):
        (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (folder / f"{name}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                               serialization.PrivateFormat.PKCS8,
                                                               serialization.NoEncryption()))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cxrlt test CA")])
    ca = issue("cxrlt test CA", ca_key, ca_name, ca_key, ca=True)
    write("ca", ca, ca_key)
    server_key, client_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    write("server", issue("localhost", server_key, ca_name, ca_key,
                          san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
                          usage=ExtendedKeyUsageOID.SERVER_AUTH), server_key)
    write("client", issue("hospital-integration", client_key, ca_name, ca_key,
                          usage=ExtendedKeyUsageOID.CLIENT_AUTH), client_key)
    return folder


@pytest.fixture(scope="module")
def locked_server(bundle, tmp_path_factory):
    """A production server (model control none, admin APIs restricted) with mutual TLS on gRPC."""
    from serving.repository import build_repository
    from serving.server import ServerTLS, start, stop

    root = tmp_path_factory.mktemp("locked")
    pki = _pki(root)
    build_repository(bundle, root / "repo", "python")
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

    from serving.server import ADMIN_GRPC_HEADER

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
        admin = {ADMIN_GRPC_HEADER: handle.admin_key}
        assert client.get_model_config("router", headers=admin)  # the admin key opens the restricted API ...
        with pytest.raises(InferenceServerException, match="(?i)not allowed|mode|explicit|poll"):
            client.unload_model("cxr", headers=admin)  # ... but model control mode none refuses unloading anyway
        assert client.is_model_ready("cxr") and client.is_server_ready()
    finally:
        client.close()
