"""Real DICOM software for the gateway tests: an Orthanc PACS on free loopback ports and dcmtk's storescu as the
modality. Both are Debian packages (`make test` installs them); the tests skip, saying so, where they are missing."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cxrlt.ops.procs import free_port, spawn, stop_group, tail

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def missing_tools() -> list[str]:
    return [tool for tool in ("Orthanc", "storescu", "dciodvfy") if shutil.which(tool) is None and
            not Path(f"/usr/sbin/{tool}").exists()]


@dataclass
class Orthanc:
    pid: int
    http_port: int
    dicom_port: int
    aet: str = "ORTHANC"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def get(self, path: str):
        with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as r:
            body = r.read()
        return json.loads(body) if r.headers.get_content_type() == "application/json" else body

    def instances(self) -> list[str]:
        return self.get("/instances")

    def file(self, instance: str) -> bytes:
        return self.get(f"/instances/{instance}/file")


def start_orthanc(root: Path, timeout: float = 60) -> Orthanc:
    """Orthanc with its own storage under ``root``, HTTP and DICOM on free loopback ports, DICOMweb enabled."""
    binary = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    http_port, dicom_port = free_port(), free_port()
    root.mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "cxrlt-test-pacs", "StorageDirectory": str(root / "db"), "IndexDirectory": str(root / "db"),
        "HttpPort": http_port, "DicomPort": dicom_port, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "DicomCheckCalledAet": True, "DicomAlwaysAllowStore": True,
        "StableAge": 1,
        "Plugins": [str(DICOMWEB_PLUGIN)] if DICOMWEB_PLUGIN.exists() else [],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (root / "orthanc.json").write_text(json.dumps(config))
    proc = spawn([binary, str(root / "orthanc.json")], root / "orthanc.log")
    server = Orthanc(proc.pid, http_port, dicom_port)
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            server.get("/system")
            return server
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.3)
    stop_group(proc.pid, timeout=10)
    raise RuntimeError(f"Orthanc did not start:\n{tail(root / 'orthanc.log')}")


def stop_orthanc(server: Orthanc) -> None:
    stop_group(server.pid, timeout=20)


#: storescu's option that proposes a compressed transfer syntax (with the uncompressed ones after it)
PROPOSE = {"1.2.840.10008.1.2.4.70": "-xs", "1.2.840.10008.1.2.4.90": "-xv", "1.2.840.10008.1.2.4.80": "-xt",
           "1.2.840.10008.1.2.5": "-xr"}


def storescu(files: list[Path], port: int, called: str, calling: str) -> subprocess.CompletedProcess:
    """dcmtk's storescu sending each of ``files`` as it is: one association per file, proposing the file's own
    compressed transfer syntax first where it has one (storescu proposes uncompressed syntaxes only by default, and
    cannot transcode every codestream into them). The first failure is returned, else the last run."""
    import pydicom

    done = None
    for file in files:
        syntax = str(pydicom.dcmread(file, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        flags = [PROPOSE[syntax]] if syntax in PROPOSE else []
        done = subprocess.run(["storescu", *flags, "-aec", called, "-aet", calling, "127.0.0.1", str(port),
                               str(file)], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            return done
    return done
