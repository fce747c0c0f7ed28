"""Reuse of trained ensemble members across pipeline runs, keyed by everything that decides their weights.

A retraining whose data changed for one projection only (a site's lateral exports stopped, a relabelled frontal
subset) trains the same networks again for the other views: on CPU the training is deterministic, so those members
come out bit for bit as before, and on a GPU they differ only by nondeterministic
kernels. KFP's own cache cannot help: the member step reads the split of every view and writes into the run's
folder on the shared volume, so its inputs change with any view and its cached outputs point into an old run.

A job (a member with its riders, or the router) is reused when its key matches a finished job of an earlier run on
the same shared volume. The key covers: the run's profile as it applies to the job (every section, with ``train``
resolved for each of the job's networks, so an override of another network, a comment or the key order does not
retrain it; :func:`job_settings`), the job and its networks, the training and
validation rows the job's view trains on (labels included), the preprocess cache (named by the data's hash and the
cache settings), the epoch override, the launch settings (launcher, processes, nodes, GPUs, threads), the cxrlt
sources and the torch and timm versions. Pretrained weights enter by content: a local file by its sha256; a job
whose weights are named by a reference that can change under the same name (a tag, an S3 or MLflow URI) is
trained again, and the step says why.

``<shared>/member-cache/<key>/`` holds a copy of the job's folder without its resume checkpoints (``last.pt``, with
the optimizer state: two to four times ``best.pt``; a finished job is never resumed) and ``inputs.json`` (what the key
covers); it is written to a temporary folder and renamed, so a crash never leaves a half-written entry.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from pathlib import Path

MEMBER_CACHE_DIR = "member-cache"
INPUTS_FILE = "inputs.json"
#: what a finished job does not need: the loop's resume checkpoint
NOT_CACHED = ("last.pt",)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@functools.cache
def code_digest() -> str:
    """sha256 over the cxrlt package's Python sources (path and bytes), with the torch and timm versions."""
    import timm
    import torch

    import cxrlt

    root = Path(cxrlt.__file__).parent
    h = hashlib.sha256(f"torch {torch.__version__} timm {timm.__version__}\n".encode())
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _rows_digest(frame) -> str:
    return _digest(frame.to_csv(index=False).encode())


def weights_inputs(networks: list[str], models: dict) -> tuple[dict, str | None]:
    """Each network's pretrained weights by content, or (``{}``, why) when one cannot be pinned here."""
    from cxrlt.weights import spec_kind

    pinned = {}
    for name in networks:
        kind = name.rsplit("/", 1)[-1]
        spec = (models.get(kind) or {}).get("pretrained")
        how = spec_kind(spec)
        if how == "random":
            pinned[name] = None
        elif how == "file" and Path(spec).expanduser().is_file():
            from cxrlt.dataplane import sha256_file

            pinned[name] = sha256_file(Path(spec).expanduser())
        else:
            return {}, f"{name}'s weights {spec!r} are a {how} reference, which can change under the same name"
    return pinned, None


def job_settings(cfg: dict, networks: list[str]) -> dict:
    """The validated profile as it decides one job's weights: every section as it is, but ``train`` replaced by each
    network's resolved settings (``cxrlt.config.train_settings``: its kind's, view's and own overrides applied)."""
    from cxrlt.config import train_settings

    settings = {k: v for k, v in cfg.items() if k != "train"}
    settings["train"] = {name: {k: v for k, v in train_settings(cfg, name).items() if k != "overrides"}
                         for name in networks}
    return settings


def job_key(view: str, job: str, networks: list[str], cfg: dict, splits: Path, data_dir: str, cache: Path,
            launch: dict) -> tuple[str | None, dict]:
    """(key, inputs) of one training job (``cfg``: the run's validated profile); key None (and inputs["not_reused"]
    the reason) when it cannot be reused."""
    from cxrlt.data.split import training_frames
    from cxrlt.data.tables import VIEWS

    pinned, why = weights_inputs(networks, cfg["models"] or {})
    if why:
        return None, {"not_reused": why}
    train, val = training_frames(data_dir, splits, cfg["data"]["val_fraction"], cfg["data"]["split_seed"],
                                 cfg["train"]["label_source"])
    if view in VIEWS:
        train, val = train[train["view"] == view], val[val["view"] == view]
    settings = json.dumps(job_settings(cfg, networks), sort_keys=True, default=str).encode()
    inputs = {"job": job, "networks": networks, "settings_sha256": _digest(settings),
              "train_rows": len(train), "train_sha256": _rows_digest(train), "val_rows": len(val),
              "val_sha256": _rows_digest(val), "preprocess_cache": Path(cache).name, "weights": pinned,
              "launch": launch, "code_sha256": code_digest()}
    return _digest(json.dumps(inputs, sort_keys=True).encode()), inputs


def restore(shared_root: str | Path, key: str, job_dir: Path) -> bool:
    """Copy a cached job into ``job_dir`` (replacing what a failed attempt left there); False on a miss."""
    entry = Path(shared_root) / MEMBER_CACHE_DIR / key
    if not (entry / INPUTS_FILE).is_file():
        return False
    if job_dir.exists():
        shutil.rmtree(job_dir)
    shutil.copytree(entry, job_dir, ignore=shutil.ignore_patterns(INPUTS_FILE))
    return True


def store(shared_root: str | Path, key: str, job_dir: Path, inputs: dict) -> Path:
    """Copy a finished job into the cache under ``key`` (first writer wins; a copy, so later writes into the run's
    folder cannot change the cached files)."""
    cache = Path(shared_root) / MEMBER_CACHE_DIR
    entry = cache / key
    if (entry / INPUTS_FILE).is_file():
        return entry
    tmp = cache / f".tmp-{key}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(job_dir, tmp, ignore=shutil.ignore_patterns(*NOT_CACHED))
    (tmp / INPUTS_FILE).write_text(json.dumps(inputs, indent=2, sort_keys=True))
    try:
        os.rename(tmp, entry)
    except OSError:  # another run stored the same key meanwhile: the same files
        shutil.rmtree(tmp, ignore_errors=True)
    return entry
