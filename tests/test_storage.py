"""Object storage against a real S3-compatible server (SeaweedFS `weed mini`, loopback only, telemetry off)."""

import hashlib

import pytest

from cxrlt import storage

pytestmark = pytest.mark.slow


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
