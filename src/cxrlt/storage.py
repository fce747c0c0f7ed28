"""Object storage (S3 or any S3-compatible server) for datasets and artifacts, through boto3.

The endpoint and credentials come from the environment that MLflow uses too: ``MLFLOW_S3_ENDPOINT_URL`` (or
``AWS_ENDPOINT_URL``), ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``.
"""

from __future__ import annotations

import os
from pathlib import Path

from tqdm import tqdm

from cxrlt.errors import InvalidInputError, NotFoundError


def parse_s3(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise InvalidInputError(f"not an s3:// URI: {uri!r}")
    bucket, _, prefix = uri[5:].partition("/")
    if len(bucket) < 3:
        raise InvalidInputError(f"invalid bucket name in {uri!r}")
    return bucket, prefix.strip("/")


def client(endpoint_url: str | None = None):
    import boto3

    endpoint = endpoint_url or os.environ.get("MLFLOW_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
    return boto3.client("s3", endpoint_url=endpoint, region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))


def ensure_bucket(bucket: str, s3=None) -> None:
    s3 = s3 or client()
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        s3.create_bucket(Bucket=bucket)


def upload_dir(local: str | Path, uri: str, s3=None, progress: bool = True) -> int:
    """Upload every file under ``local`` to ``uri`` (keys keep relative paths); returns the file count."""
    s3 = s3 or client()
    bucket, prefix = parse_s3(uri)
    files = sorted(p for p in Path(local).rglob("*") if p.is_file())
    for path in tqdm(files, desc=f"upload {uri}", unit="file", disable=not progress):
        key = "/".join(filter(None, [prefix, path.relative_to(local).as_posix()]))
        s3.upload_file(str(path), bucket, key)
    return len(files)


def download_dir(uri: str, local: str | Path, s3=None, progress: bool = True) -> int:
    """Download every object under ``uri`` into ``local``; returns the object count."""
    s3 = s3 or client()
    bucket, prefix = parse_s3(uri)
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    if not keys:
        raise NotFoundError(f"nothing stored under {uri}")
    for key in tqdm(keys, desc=f"download {uri}", unit="file", disable=not progress):
        target = Path(local) / (key[len(prefix) :].lstrip("/") if prefix else key)
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, key, str(target))
    return len(keys)
