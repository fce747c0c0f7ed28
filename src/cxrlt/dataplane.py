"""The data plane of a pipeline run: where the big files live and how steps and TrainJob pods find them.

The preprocessing cache (about 85 GB for PadChest at 512 px, 16 bits), the split manifests and every training run
live on the shared volume (the ``cxrlt-cache`` PVC, mounted at :data:`cxrlt.platform.SHARED_ROOT` in pipeline steps
and TrainJob pods), under paths scoped by the run. KFP artifacts carry a small ``location.json``: the path on the
shared volume, a digest and metadata, never the bytes. A consumer calls :func:`resolve`, which checks the digest
before it hands out the path.

A pipeline step can see the shared volume at another path than the pods do (on this machine: a folder under the
pipeline root, mounted into the pod containers at ``/data``): :class:`SharedVolume` translates between the two and
refuses any path that a pod could not read because it is not on the volume.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from pydantic import BaseModel, Field

from cxrlt.errors import CxrltError

#: the file a KFP artifact holds instead of the data it points to
POINTER = "location.json"
#: layout under the shared root
RUNS, CACHES = "runs", "caches"


class DataPlaneError(CxrltError, RuntimeError):
    """A path is not on the shared volume, a pointer is missing, or its target changed; the message says which."""


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def listing_digest(folder: str | Path, contents: tuple[str, ...] = ()) -> str:
    """A digest of a folder's file names and sizes, plus the full contents of the named small files.

    Hashing every byte of an 85 GB cache would take longer than using it; names and sizes catch a missing, extra or
    truncated file, and the named files (the cache's contract, a member card) are hashed whole."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != POINTER):
        rel = path.relative_to(folder).as_posix()
        digest.update(f"{rel}\0{path.stat().st_size}\n".encode())
        if rel in contents:
            digest.update(path.read_bytes())
    return digest.hexdigest()


class Location(BaseModel):
    """What a KFP artifact records about data on the shared volume."""

    kind: str = Field(description="cache, splits, member-runs, zeroshot-run")
    path: str = Field(description="absolute path as the pipeline steps see the shared volume")
    digest: str = Field(description="listing_digest of the folder when it was published")
    hashed: tuple[str, ...] = Field(default=(), description="files whose contents the digest covers")
    metadata: dict = {}


def publish(artifact_dir: str | Path, target: str | Path, kind: str, hashed: tuple[str, ...] = (),
            **metadata) -> Location:
    """Write ``location.json`` into a KFP output artifact's folder, pointing at ``target`` on the shared volume."""
    target = Path(target)
    if not target.is_dir():
        raise DataPlaneError(f"cannot publish {target}: no such folder on the shared volume")
    location = Location(kind=kind, path=str(target), digest=listing_digest(target, hashed), hashed=hashed,
                        metadata=metadata)
    Path(artifact_dir).mkdir(parents=True, exist_ok=True)
    (Path(artifact_dir) / POINTER).write_text(location.model_dump_json(indent=2))
    return location


def read_location(artifact_dir: str | Path) -> Location:
    pointer = Path(artifact_dir) / POINTER
    if not pointer.exists():
        raise DataPlaneError(f"{artifact_dir} holds no {POINTER}: it is not an artifact published on the shared "
                             "volume (was it made by an older pipeline?)")
    return Location.model_validate_json(pointer.read_text())


def resolve(artifact_dir: str | Path, verify: bool = True) -> Path:
    """The shared-volume folder an artifact points to, after checking that it is there and unchanged."""
    location = read_location(artifact_dir)
    target = Path(location.path)
    if not target.is_dir():
        raise DataPlaneError(f"{location.kind} at {target} is gone (recorded by {artifact_dir}); is the shared volume "
                             "mounted at the same path in this step?")
    if verify:
        now = listing_digest(target, location.hashed)
        if now != location.digest:
            raise DataPlaneError(f"{location.kind} at {target} changed after it was published (digest "
                                 f"{location.digest[:12]} -> {now[:12]}): a later step or run wrote into it")
    return target


def run_scoped(shared_root: str | Path, run_id: str, *parts: str) -> Path:
    """``<shared_root>/runs/<run_id>/<parts...>``: one run never writes where another reads."""
    if not run_id or "/" in run_id or run_id in (".", ".."):
        raise DataPlaneError(f"run id {run_id!r} cannot name a folder")
    return Path(shared_root, RUNS, run_id, *parts)


def cache_folder(shared_root: str | Path, data_hash: str, contract: dict) -> Path:
    """The preprocessing cache is a function of the images and of the contract: runs on the same data share it
    (a weekly retraining does not rewrite 85 GB), and a new contract or new data gets a new folder."""
    key = hashlib.sha256(json.dumps(contract, sort_keys=True).encode()).hexdigest()[:12]
    return Path(shared_root, CACHES, f"{data_hash[:12]}-{contract['size']}px-{key}")


class SharedVolume:
    """The shared volume as a step sees it (``step_root``) and as TrainJob pods mount it (``pod_root``)."""

    def __init__(self, step_root: str | Path, pod_root: str | Path):
        self.step_root, self.pod_root = Path(step_root).resolve(), Path(pod_root)

    def to_pod(self, path: str | Path, what: str = "path") -> str:
        resolved = Path(path).resolve()
        if not resolved.is_relative_to(self.step_root):
            raise DataPlaneError(f"{what} {path} is not on the shared volume ({self.step_root}, mounted at "
                                 f"{self.pod_root} in TrainJob pods): the pods could not read it. Put it on the "
                                 "volume (for example the data under <shared root>/datasets/).")
        return str(self.pod_root / resolved.relative_to(self.step_root))

    def writable_check(self) -> None:
        if not os.access(self.step_root, os.W_OK):
            raise DataPlaneError(f"the shared volume {self.step_root} is not writable by this step")
