"""Results where radiologists read them: the DICOM SR writer checked by dicom3tools' dciodvfy, and the DICOM gateway
between real software that no one here wrote: dcmtk's storescu as the modality, the real tritonserver, and Orthanc
as the PACS that receives the reports (C-STORE, and STOW-RS through its DICOMweb plugin)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pydicom
import pytest

from cxrlt.data.dicom import array_to_dicom
from cxrlt.errors import InvalidInputError
from cxrlt.labels import KNOWN_CLASSES, UNSEEN_CLASSES
from cxrlt.ops.procs import free_port, spawn, stop_group, tail
from tests.pacs import missing_tools, start_orthanc, stop_orthanc, storescu

PROBABILITY_ATOL = 1e-9  # the SR stores the served float32 probability as a decimal string of 16 characters
GATEWAY_AET, MODALITY_AET = "CXRLT", "MODALITY1"
RADIOGRAPHS = ("plain", "jpeg", "j2k")


def _image(tmp_path: Path, name: str = "img.dcm", value: int = 1000) -> pydicom.Dataset:
    ramp = (value + np.arange(64 * 64).reshape(64, 64) % 500).astype(np.uint16)
    return pydicom.dcmread(array_to_dicom(ramp, tmp_path / name, patient_id="PAT0001"))


def _served(seed: int = 0) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    return ({c: float(np.float32(rng.random())) for c in KNOWN_CLASSES},
            {c: float(np.float32(rng.random())) for c in UNSEEN_CLASSES})


def test_sr_carries_every_finding_by_name_with_its_threshold_and_the_model_version(tmp_path):
    from serving.dicom_sr import build_sr, device_uid, read_sr

    image = _image(tmp_path)
    known, unseen = _served()
    known["cardiomegaly"], known["Nodule"] = 0.5, 0.4999  # at the threshold: present; just below: absent
    sr = build_sr(image, known, unseen, "cxrlt-bundle/7", thresholds={"Mass": 0.9, "Bulla": 0.05})
    sr.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    read = read_sr(pydicom.dcmread(tmp_path / "sr.dcm"))
    assert read["image"] == image.SOPInstanceUID and read["verification"] == "UNVERIFIED"
    assert read["model_version"] == "cxrlt-bundle/7" and read["device_uid"] == device_uid("cxrlt-bundle/7")
    assert set(read["findings"]) == set(KNOWN_CLASSES) | set(UNSEEN_CLASSES)
    for name, p in {**known, **unseen}.items():
        row = read["findings"][name]
        expected_threshold = {"Mass": 0.9, "Bulla": 0.05}.get(name, 0.5)
        assert row["probability"] == pytest.approx(p, abs=PROBABILITY_ATOL)
        assert row["threshold"] == expected_threshold and row["present"] == (p >= expected_threshold)
        assert row["zero_shot"] == (name in UNSEEN_CLASSES)
    assert read["findings"]["cardiomegaly"]["present"] and not read["findings"]["Nodule"]["present"]
    saved = pydicom.dcmread(tmp_path / "sr.dcm")
    assert saved.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert saved.StudyInstanceUID == image.StudyInstanceUID and saved.PatientID == "PAT0001"
    assert saved.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    purpose = saved.ContributingEquipmentSequence[0].PurposeOfReferenceCodeSequence[0]
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("Newcode1", "99IHE")
    evidence = saved.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == image.SOPInstanceUID


def test_finding_codes_are_snomed_where_the_standard_has_them_and_distinct_everywhere():
    from serving.dicom_sr import LOCAL_SCHEME, finding_code

    codes = {name: finding_code(name) for name in (*KNOWN_CLASSES, *UNSEEN_CLASSES)}
    assert (codes["pleural effusion"].value, codes["pleural effusion"].scheme_designator) == ("60046008", "SCT")
    assert (codes["Pneumothorax"].value, codes["Pneumothorax"].scheme_designator) == ("36118008", "SCT")
    assert codes["Adenopathy"].meaning == "Lymphadenopathy"
    assert len({(c.value, c.scheme_designator) for c in codes.values()}) == len(codes)
    assert all(len(c.value) <= 16 for c in codes.values())
    future = finding_code("a finding added next year")
    assert future.scheme_designator == LOCAL_SCHEME and future.meaning == "a finding added next year"


def test_device_uid_is_stable_per_version_and_new_for_a_new_version():
    from serving.dicom_sr import device_uid

    assert device_uid("cxrlt-bundle/3") == device_uid("cxrlt-bundle/3")
    assert device_uid("cxrlt-bundle/3") != device_uid("cxrlt-bundle/4")
    assert device_uid("cxrlt-bundle/3").startswith("2.25.") and len(device_uid("cxrlt-bundle/3")) <= 64  # UI


def test_sr_refuses_what_it_cannot_report_truthfully(tmp_path):
    from serving.dicom_sr import build_sr

    image = _image(tmp_path)
    known, unseen = _served()
    with pytest.raises(InvalidInputError, match="does not serve.*Masss"):
        build_sr(image, known, unseen, "v1", thresholds={"Masss": 0.3})
    with pytest.raises(InvalidInputError, match=r"outside \[0, 1\]"):
        build_sr(image, {**known, "Mass": 1.5}, unseen, "v1")
    with pytest.raises(InvalidInputError, match="model version"):
        build_sr(image, known, unseen, "")
    with pytest.raises(InvalidInputError, match="not scored"):
        build_sr(image, {}, {}, "v1")
    del image.StudyInstanceUID
    with pytest.raises(InvalidInputError, match="StudyInstanceUID"):
        build_sr(image, known, unseen, "v1")


def test_sr_passes_dciodvfy(tmp_path):
    """dicom3tools checks the SR against the Comprehensive 3D SR IOD: no errors. (Its warnings name the local coding
    scheme, which it cannot know, and the Device UID of the Contributing Equipment, newer than its tables.)"""
    from serving.dicom_sr import build_sr

    if "dciodvfy" in missing_tools():
        pytest.skip("dicom3tools (dciodvfy) is not installed: apt-get install dicom3tools")
    known, unseen = _served(1)
    build_sr(_image(tmp_path), known, unseen, "cxrlt-bundle/2").save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    done = subprocess.run(["dciodvfy", str(tmp_path / "sr.dcm")], capture_output=True, text=True)
    report = done.stdout + done.stderr
    assert "Comprehensive3DSR" in report
    errors = [line for line in report.splitlines() if line.startswith("Error")]
    assert errors == [], "\n".join(errors)


# ---- the gateway, end to end -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    missing = missing_tools()
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (apt-get install orthanc orthanc-dicomweb dcmtk dicom3tools)")
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    yield server
    stop_orthanc(server)


@pytest.fixture(scope="module")
def triton(tiny_bundle, tmp_path_factory):
    """The real tritonserver on the tiny bundle, on a fixed gRPC port so a test can stop and restart it."""
    from cxrlt.export import export_bundle
    from serving.repository import build_repository
    from serving.server import start, stop

    root = tmp_path_factory.mktemp("gateway-triton")
    export_bundle(tiny_bundle / "ensemble", tiny_bundle / "zeroshot", root / "bundle")
    build_repository(root / "bundle", root / "repo")
    grpc_port = free_port()
    name = f"gateway-{root.name}"

    def up():
        return start(root / "repo", name=name, http_port=0, grpc_port=grpc_port, metrics_port=0,
                     state_dir=root / "state")

    def down():
        assert stop(name, state_dir=root / "state")

    handle = up()
    yield {"url": f"127.0.0.1:{grpc_port}", "up": up, "down": down, "handle": handle}
    stop(name, state_dir=root / "state")


def _echo(port: int, calling: str = MODALITY_AET) -> bool:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=GATEWAY_AET)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and status.Status == 0


def _start_gateway(spool: Path, port: int, triton_url: str, send_to: str, log: Path, *extra: str):
    cmd = [sys.executable, "-m", "cxrlt.cli", "gateway", "--ae-title", GATEWAY_AET, "--port", str(port),
           "--allow-calling", MODALITY_AET, "--allow-calling", "PACS2", "--url", triton_url, "--send-to", send_to,
           "--spool", str(spool), "--timeout", "10", "--max-backoff", "1", *extra]
    proc = spawn(cmd, log)
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the gateway exited:\n{tail(log)}")
        try:
            if _echo(port):
                return proc
        except Exception:  # noqa: BLE001 - not listening yet
            pass
        time.sleep(0.5)
    stop_group(proc.pid)
    raise RuntimeError(f"the gateway did not answer C-ECHO:\n{tail(log)}")


def _stop_gateway(proc) -> str:
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    return proc.returncode


def _srs(pacs) -> dict[str, dict]:
    """Every SR in the PACS, by the SOP Instance UID of the image it reports on."""
    from serving.dicom_sr import read_sr

    out = {}
    for instance in pacs.instances():
        ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(pacs.file(instance)))
        if ds.Modality == "SR":
            read = read_sr(ds)
            out[read["image"]] = read
    return out


def _srs_of(pacs, *images: str) -> dict[str, dict] | None:
    """The PACS's SRs once there is one for each of ``images``; None before."""
    found = _srs(pacs)
    return found if set(images) <= set(found) else None


def _wait_for(predicate, timeout: float, what: str, log: Path | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}" + (f":\n{tail(log, 40)}" if log else ""))


@pytest.fixture(scope="module")
def radiographs(synth_data, tmp_path_factory):
    """Three radiographs of the synthetic test set as DX DICOM of one synthetic patient: uncompressed, JPEG Lossless
    (compressed by dcmtk's dcmcjpeg, as a modality would) and JPEG 2000 lossless; and a CT slice."""
    from pydicom.uid import JPEG2000Lossless

    folder = tmp_path_factory.mktemp("modality")
    ids = pd.read_csv(synth_data / "CXRLT_2026_test_labels.csv", dtype=str)["ImageID"][:3]
    files = {kind: array_to_dicom(cv2.imread(str(synth_data / "images" / i), cv2.IMREAD_UNCHANGED),
                                  folder / f"{kind}.dcm", patient_id="PAT0042")
             for kind, i in zip(("plain", "jpeg", "j2k"), ids, strict=True)}
    subprocess.run(["dcmcjpeg", str(files["jpeg"]), str(folder / "jpeg-lossless.dcm")], check=True)
    files["jpeg"] = folder / "jpeg-lossless.dcm"
    assert pydicom.dcmread(files["jpeg"]).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    ds = pydicom.dcmread(files["j2k"])
    ds.compress(JPEG2000Lossless)
    ds.save_as(files["j2k"])
    ct = array_to_dicom(np.full((32, 32), 1000, np.uint16), folder / "ct.dcm", patient_id="PAT0042")
    ds = pydicom.dcmread(ct)
    ds.Modality, ds.SOPClassUID = "CT", "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.save_as(ct)
    return {**files, "ct": ct}


@pytest.mark.slow
def test_gateway_reports_radiographs_to_the_pacs_and_nothing_else(pacs, triton, radiographs, tmp_path):
    from serving.client import CXRClient

    port, log = free_port(), tmp_path / "gateway.log"
    gateway = _start_gateway(tmp_path / "spool", port, triton["url"], f"{pacs.aet}@127.0.0.1:{pacs.dicom_port}",
                             log)
    try:
        sent = storescu([radiographs[k] for k in ("plain", "jpeg", "j2k", "ct")], port, GATEWAY_AET, MODALITY_AET)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        refused = storescu([radiographs["plain"]], port, GATEWAY_AET, "INTRUDER")
        assert refused.returncode != 0 and "reject" in (refused.stdout + refused.stderr).lower()
        uids = {k: str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for k, p in radiographs.items()}
        srs = _wait_for(lambda: _srs_of(pacs, *(uids[k] for k in RADIOGRAPHS)), 120, "three SRs in Orthanc", log)
    finally:
        assert _stop_gateway(gateway) == 0
    assert uids["ct"] not in srs, "a CT slice must get no report"
    text = log.read_text()
    assert "Modality CT is not a projection radiograph" in text
    client = CXRClient(triton["url"], batch_size=1)  # one image per request, as the gateway sends them
    direct = dict(zip(RADIOGRAPHS, client.infer_files([radiographs[k] for k in RADIOGRAPHS]), strict=True))
    client.close()
    for kind in RADIOGRAPHS:
        report, served = srs[uids[kind]], direct[kind]
        assert served.error == "" and report["model_version"] == served.model_version
        for name, p in {**served.known, **served.unseen}.items():
            assert report["findings"][name]["probability"] == pytest.approx(p, abs=PROBABILITY_ATOL), (kind, name)
            assert report["findings"][name]["present"] == (p >= 0.5)
    # no patient data in the log: names, IDs and UIDs never appear
    image = pydicom.dcmread(radiographs["plain"], stop_before_pixels=True)
    for secret in ("PAT0042", str(image.PatientName), *uids.values(), str(image.StudyInstanceUID)):
        assert secret not in text, f"{secret!r} leaked into the gateway log"
    assert "gateway stopped: 4 received, 1 refused, 3 scored, 3 reports stored" in text


@pytest.mark.slow
def test_triton_and_gateway_outages_delay_reports_but_lose_none(pacs, triton, radiographs, tmp_path):
    """Triton stops; an image arrives and waits in the spool; the gateway itself is stopped and started again (now
    sending by STOW-RS); a second image is refused with 0xA700 while the spool is full; Triton comes back and the
    waiting image's SR reaches the PACS."""
    from pynetdicom import AE

    spool, port, log = tmp_path / "spool", free_port(), tmp_path / "gateway.log"
    image = pydicom.dcmread(radiographs["plain"])
    image.SOPInstanceUID = pydicom.uid.generate_uid()  # a new image, not one the PACS has a report for
    image.file_meta.MediaStorageSOPInstanceUID = image.SOPInstanceUID
    image.save_as(tmp_path / "late.dcm")
    triton["down"]()
    try:
        gateway = _start_gateway(spool, port, triton["url"], f"{pacs.aet}@127.0.0.1:{pacs.dicom_port}", log,
                                 "--max-queue", "1")
        assert storescu([tmp_path / "late.dcm"], port, GATEWAY_AET, MODALITY_AET).returncode == 0
        _wait_for(lambda: "the model server cannot answer" in log.read_text(), 60, "a retry", log)
        assert image.SOPInstanceUID not in _srs(pacs)
        assert _stop_gateway(gateway) == 0
        assert len(list((spool / "incoming").glob("*.dcm"))) == 1, "the waiting image survives the gateway's stop"

        stow = f"{pacs.url}/dicom-web"
        gateway = _start_gateway(spool, port, triton["url"], stow, log, "--max-queue", "1")
        second = pydicom.dcmread(radiographs["j2k"])
        ae = AE(ae_title=MODALITY_AET)
        ae.add_requested_context(second.SOPClassUID, second.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", port, ae_title=GATEWAY_AET)
        assert assoc.is_established
        status = assoc.send_c_store(second)
        assoc.release()
        assert status.Status == 0xA700, "a full spool refuses new images (out of resources) for the sender to retry"
    finally:
        triton["handle"] = triton["up"]()
    srs = _wait_for(lambda: _srs_of(pacs, image.SOPInstanceUID), 120, "the delayed SR in Orthanc", log)
    assert _stop_gateway(gateway) == 0
    assert set(srs[image.SOPInstanceUID]["findings"]) == set(KNOWN_CLASSES) | set(UNSEEN_CLASSES)
    assert not list((spool / "incoming").glob("*.dcm")) and not list((spool / "outbox").glob("*.dcm"))
    origins = {pacs.get(f"/instances/{i}/metadata/Origin").decode() for i in pacs.instances()
               if pacs.get(f"/instances/{i}/simplified-tags")["SOPInstanceUID"] == srs[image.SOPInstanceUID]["uid"]}
    assert origins and "DicomProtocol" not in origins, "the restarted gateway stored it by STOW-RS"


@pytest.mark.parametrize(("args", "message"), [
    (["--send-to", "pacs"], "expected AE_TITLE@HOST:PORT or a DICOMweb"),
    (["--allow-calling", "A_CALLING_AE_TITLE_OF_17"], "1 to 16 ASCII characters"),
    (["--allow-calling", ","], "name the calling AE titles allowed"),
    (["--threshold", "1.5"], "threshold"),
])
def test_gateway_refuses_bad_settings_before_listening(tmp_path, args, message):
    base = {"--send-to": "PACS@127.0.0.1:104", "--allow-calling": "MODALITY1", "--spool": str(tmp_path / "spool")}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    done = subprocess.run([sys.executable, "-m", "cxrlt.cli", "gateway", *(x for kv in base.items() for x in kv),
                           "--port", "0"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and message in done.stderr + done.stdout and "Traceback" not in done.stderr


def test_gateway_says_why_it_cannot_start(tmp_path):
    """A spool it cannot write, a port already taken: one line each, no traceback."""
    import socket

    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")
    base = ["--send-to", "PACS@127.0.0.1:104", "--allow-calling", "MODALITY1"]
    done = subprocess.run([sys.executable, "-m", "cxrlt.cli", "gateway", *base, "--spool", str(blocked / "spool"),
                           "--port", "0"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "needs a writable spool" in done.stderr and "Traceback" not in done.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        done = subprocess.run([sys.executable, "-m", "cxrlt.cli", "gateway", *base, "--spool", str(tmp_path / "s"),
                               "--port", str(taken.getsockname()[1])], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "cannot listen on 127.0.0.1" in done.stderr and "Traceback" not in done.stderr
