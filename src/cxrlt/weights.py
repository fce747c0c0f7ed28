"""Pretrained weights for every network, resolved the same way for timm members and the CLIP.

A network's ``pretrained`` value is one of:

* ``null`` - random initialisation (only when a profile writes it);
* a tag: a timm pretrained tag (``convnextv2_tiny.fcmae_ft_in22k_in1k``), an open_clip pretrained tag of the
  configured CLIP architecture (``openai``), or a name stored in the weights mirror (``chexzero``). Tags are looked
  up in the mirror first (``weights_mirror`` in the profile or ``CXRLT_WEIGHTS_MIRROR``), sha256-verified, then in
  the libraries' own hub caches (timm and open_clip resolve through ``huggingface_hub``);
* a Hugging Face hub repository, ``hf-hub:ORG/NAME`` (open_clip's and timm's own spelling: WhyXrayCLIP is
  ``hf-hub:yyupenn/whyxrayclip``) or ``hf-hub:ORG/NAME/FILE``, read from the local Hugging Face cache first, then
  the hub;
* a local file, an ``s3://`` URI, or an MLflow artifact URI (``models:/...``, ``runs:/...``).

A checkpoint whose keys are not the network's own (a fine-tune that keeps its trunk under ``backbone.``) is loaded
through the network's declared ``checkpoint_keys`` (``strip_prefix`` and ``rename``), and every load is strict: a
key the network expects and the checkpoint lacks, or a key the network has no place for, fails with both lists
(only a classifier that is deliberately re-initialised for a new class count may be missing).

The file is always read here into a state dict (``.safetensors``, torch checkpoints wrapped in ``state_dict`` /
``model`` / ``module.``, TorchScript archives) and handed to the library's own loader: timm's ``load_pretrained``
(via ``pretrained_cfg_overlay=dict(state_dict=...)``: its checkpoint filters, stem adaptation for 1-channel input
and classifier reset) or open_clip's state-dict conversion. A configured weight that cannot be found raises
:class:`WeightsNotFoundError` naming what was looked for, where, and how to mirror it; never a silent random init.

Mirror layout: ``<prefix>/<name>/<file>`` plus ``<prefix>/<name>/weights.json`` (file, sha256, size, source).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from cxrlt.dataplane import sha256_file
from cxrlt.errors import CxrltError, InvalidInputError

log = logging.getLogger(__name__)

MIRROR_ENV = "CXRLT_WEIGHTS_MIRROR"
CACHE_ENV = "CXRLT_WEIGHTS_CACHE"
MIRROR_CARD = "weights.json"
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")
HF_HUB = "hf-hub:"
#: weight files a Hugging Face repository of each family keeps, preferred first
HF_FILES = {"timm": ["model.safetensors", "pytorch_model.bin"],
            "open_clip": ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]}
#: Keys OpenAI's CLIP checkpoints carry beside the weights (TorchScript attributes), dropped before loading.
OPENAI_META_KEYS = ("input_resolution", "context_length", "vocab_size")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]*$")


class WeightsNotFoundError(CxrltError, FileNotFoundError):
    """A configured weight could not be found; the message says where it was looked for and how to mirror it."""


class WeightsIntegrityError(CxrltError, ValueError):
    """A downloaded weight file does not match the sha256 recorded in the mirror."""


class WeightsMismatchError(CxrltError, ValueError):
    """A weight file was found but does not fit the configured architecture."""


@dataclass(frozen=True)
class ResolvedWeights:
    """Where a ``pretrained`` spec was found: the local file, a description of the source, and its sha256."""

    spec: str
    path: Path
    source: str
    sha256: str

    def card(self) -> dict:
        return {**asdict(self), "path": str(self.path)}


def spec_kind(spec: str | None) -> str:
    """``random``, ``s3``, ``mlflow``, ``file`` or ``tag`` (timm/open_clip tag or mirror name)."""
    if spec is None:
        return "random"
    if spec.startswith("s3://"):
        return "s3"
    if spec.startswith(MLFLOW_SCHEMES):
        return "mlflow"
    if spec.startswith("hf-hub:"):
        return "tag"
    if "/" in spec or spec.startswith(("~", ".")) or spec.endswith(WEIGHT_SUFFIXES) or Path(spec).exists():
        return "file"
    return "tag"


def mirror_uri(explicit: str | None = None) -> str | None:
    return explicit or os.environ.get(MIRROR_ENV) or None


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "cxrlt" / "weights")


def _how_to_mirror(spec: str, family: str, arch: str | None) -> str:
    clip = f" --clip-arch {arch}" if family == "open_clip" else ""
    name = _mirror_names(spec, family, arch)[0] if spec.startswith(HF_HUB) else spec
    return (f"To use it on a cluster without hub access, run where the hub (or the file) is reachable:\n"
            f"    cxrlt weights mirror {spec}{clip} --to s3://BUCKET/weights\n"
            f"(or `cxrlt weights mirror /path/to/file --name {name} --to s3://BUCKET/weights` for a file you have), "
            f"then set weights_mirror in the profile or {MIRROR_ENV}=s3://BUCKET/weights.")


# ------------------------------------------------------------------------------------------------------ resolution
def _mirror_names(tag: str, family: str, arch: str | None) -> list[str]:
    """Mirror names a tag is stored under, the canonical one first: open_clip tags are per architecture, and a hub
    repository ``hf-hub:ORG/NAME`` is stored as ``ORG--NAME`` (the Hugging Face cache's own spelling)."""
    if tag.startswith(HF_HUB):
        return [tag.removeprefix(HF_HUB).replace("/", "--")]
    return [tag] if family == "timm" or arch is None else [f"{arch}.{tag}", tag]


def resolve(spec: str, family: str = "timm", arch: str | None = None, mirror: str | None = None,
            use_mirror: bool = True) -> ResolvedWeights:
    """Find the weight file for ``spec`` (see the module docstring) and return it as a local file.

    ``use_mirror=False`` goes to the source itself (what ``cxrlt weights mirror`` copies from).
    """
    kind = spec_kind(spec)
    if kind == "random":
        raise InvalidInputError("spec is null: nothing to resolve (random initialisation)")
    if kind == "file":
        path = Path(spec).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"weight file {path} not found (pretrained: {spec!r}); give an existing file, "
                                       "an s3:// or MLflow URI, a tag, or null for random initialisation")
        return ResolvedWeights(spec, path, f"file {path.resolve()}", sha256_file(path))
    if kind == "s3":
        return _from_s3(spec)
    if kind == "mlflow":
        return _from_mlflow(spec)
    looked: list[str] = []
    uri = mirror_uri(mirror) if use_mirror else None
    names = _mirror_names(spec, family, arch)
    if uri:
        for name in names:
            found = fetch_from_mirror(uri, name)
            if found is not None:
                return found
        looked.append(f"the weights mirror {uri} (no {' or '.join(n + '/' + MIRROR_CARD for n in names)})")
    elif use_mirror:
        looked.append(f"no weights mirror (weights_mirror in the profile and {MIRROR_ENV} are unset)")
    if spec.startswith(HF_HUB):
        hub = _hf_hub_repo_file(spec, family, looked)
    else:
        hub = _timm_hub_file(spec, looked) if family == "timm" else _open_clip_file(arch, spec, looked)
    if hub is not None:
        return ResolvedWeights(spec, hub[0], hub[1], sha256_file(hub[0]))
    raise WeightsNotFoundError(f"pretrained weights {spec!r} ({family}{' ' + arch if arch else ''}) not found.\n"
                               "Looked in:\n  - " + "\n  - ".join(looked) + "\n" + _how_to_mirror(spec, family, arch))


def locate(spec: str | None, family: str = "timm", arch: str | None = None, mirror: str | None = None) -> str:
    """Where ``spec`` would resolve on this machine, without downloading anything: ``found: <source>`` or
    ``not here: <where it looked>`` (what ``cxrlt models summary`` shows; ``cxrlt weights check`` loads them)."""
    kind = spec_kind(spec)
    if kind == "random":
        return "random init"
    if kind == "file":
        path = Path(spec).expanduser()
        return f"found: file {path}" if path.is_file() else f"not here: no file {path}"
    if kind in ("s3", "mlflow"):
        return f"remote: {spec} (cxrlt weights check downloads and loads it)"
    looked: list[str] = []
    uri = mirror_uri(mirror)
    if uri:
        try:
            for name in _mirror_names(spec, family, arch):
                if _mirror_card(uri, name) is not None:
                    return f"found: mirror {uri}/{name}"
            looked.append(f"mirror {uri}")
        except Exception as exc:  # unreachable object storage is a finding, not a crash of the summary
            looked.append(f"mirror {uri} unreachable ({type(exc).__name__})")
    if spec.startswith(HF_HUB):
        hub = _hf_hub_repo_file(spec, family, looked, download=False)
    else:
        hub = (_timm_hub_file(spec, looked, download=False) if family == "timm"
               else _open_clip_file(arch, spec, looked, download=False))
    return f"found: {hub[1]} (cached)" if hub else "not here: " + "; ".join(looked)


def _hf_download(repo_id: str, filenames: list[str], looked: list[str], download: bool = True) -> Path | None:
    from huggingface_hub import hf_hub_download

    for local_only in (True, False) if download else (True,):  # the cache first: no network round trip
        for filename in filenames:
            try:
                return Path(hf_hub_download(repo_id, filename, local_files_only=local_only))
            except Exception as exc:  # offline, not cached, no such file: try the next
                reason = type(exc).__name__
        if local_only:
            from huggingface_hub import constants

            looked.append(f"the Hugging Face cache {constants.HF_HUB_CACHE} (no {repo_id}: {'/'.join(filenames)})")
            if constants.HF_HUB_OFFLINE or not download:
                return None
    looked.append(f"the Hugging Face hub {repo_id} ({reason})")
    return None


def _hf_hub_repo_file(spec: str, family: str, looked: list[str], download: bool = True
                      ) -> tuple[Path, str] | None:
    """The weight file of a hub repository named as ``hf-hub:ORG/NAME`` (the file names each library writes) or
    ``hf-hub:ORG/NAME/FILE`` (a repository that names its file otherwise)."""
    parts = spec.removeprefix(HF_HUB).strip("/").split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise InvalidInputError(f"{spec!r}: write a hub repository as hf-hub:ORG/NAME or hf-hub:ORG/NAME/FILE")
    repo_id = "/".join(parts[:2])
    path = _hf_download(repo_id, parts[2:] or HF_FILES[family], looked, download)
    return (path, f"Hugging Face hub {repo_id}") if path else None


def _timm_hub_file(tag: str, looked: list[str], download: bool = True) -> tuple[Path, str] | None:
    import timm
    from timm.models import get_pretrained_cfg

    arch, _, _ = tag.partition(".")
    if not timm.is_model(arch):
        looked.append(f"timm's model registry ({arch!r} is not a timm architecture)")
        return None
    try:
        cfg = get_pretrained_cfg(tag)
    except RuntimeError:
        cfg = None
    if cfg is None or "." not in tag:
        tags = ", ".join(timm.list_pretrained(f"{arch}.*")[:6])
        looked.append(f"timm's pretrained tags for {arch} ({tag!r} is not one; known: {tags or 'none'})")
        return None
    if not cfg.hf_hub_id:
        looked.append(f"timm's pretrained config for {tag} (no Hugging Face hub id; download the file yourself)")
        return None
    files = [cfg.hf_hub_filename] if cfg.hf_hub_filename else HF_FILES["timm"]
    path = _hf_download(cfg.hf_hub_id, files, looked, download)
    return (path, f"timm hub {cfg.hf_hub_id}") if path else None


def _open_clip_file(arch: str | None, tag: str, looked: list[str], download: bool = True
                    ) -> tuple[Path, str] | None:
    import open_clip

    if arch is None:
        looked.append("open_clip (no CLIP architecture given)")
        return None
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        known = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
        looked.append(f"open_clip's pretrained tags for {arch} ({tag!r} is not one; known: {known})")
        return None
    if cfg.get("hf_hub"):
        hub = cfg["hf_hub"].rstrip("/")
        files = [cfg["hf_weights"]] if cfg.get("hf_weights") else HF_FILES["open_clip"]
        path = _hf_download(hub, files, looked, download)
        return (path, f"open_clip hub {hub}") if path else None
    looked.append(f"open_clip's pretrained config for {arch}/{tag} (URL only: {cfg.get('url')}; download it yourself)")
    return None


def _from_s3(uri: str) -> ResolvedWeights:
    from cxrlt import storage

    bucket, key = storage.parse_s3(uri)
    target = cache_dir() / "s3" / hashlib.sha256(uri.encode()).hexdigest()[:16] / Path(key).name
    _download_s3(bucket, key, target, uri)
    return ResolvedWeights(uri, target, f"s3 {uri}", sha256_file(target))


def _download_s3(bucket: str, key: str, target: Path, uri: str) -> None:
    from botocore.exceptions import ClientError

    from cxrlt import storage

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    try:
        storage.client().download_file(bucket, key, str(tmp))
    except ClientError as exc:
        raise WeightsNotFoundError(f"weight file {uri} not found in object storage "
                                   f"({exc.response.get('Error', {}).get('Code', exc)}); check the URI and the "
                                   "endpoint/credentials (MLFLOW_S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID)") from None
    tmp.replace(target)


def _from_mlflow(uri: str) -> ResolvedWeights:
    import mlflow

    dst = cache_dir() / "mlflow" / hashlib.sha256(uri.encode()).hexdigest()[:16]
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    except Exception as exc:  # MlflowException, connection errors
        raise WeightsNotFoundError(f"MLflow artifact {uri} could not be downloaded ({exc}); check the URI and "
                                   "MLFLOW_TRACKING_URI") from None
    if local.is_dir():
        files = sorted(p for p in local.rglob("*") if p.suffix in WEIGHT_SUFFIXES)
        if len(files) != 1:
            raise WeightsNotFoundError(f"MLflow artifact {uri} is a directory with {len(files)} weight files "
                                       f"({[p.name for p in files][:5]}); name the file in the URI")
        local = files[0]
    return ResolvedWeights(uri, local, f"mlflow {uri}", sha256_file(local))


# ---------------------------------------------------------------------------------------------------------- mirror
def mirror_weights(spec: str, to: str, name: str | None = None, family: str = "timm",
                   arch: str | None = None) -> dict:
    """Store the weight file of ``spec`` under ``to`` with its sha256 and source; returns the mirror card."""
    from cxrlt import __version__, storage

    resolved = resolve(spec, family, arch, use_mirror=False)
    if name is None:
        name = _mirror_names(spec, family, arch)[0] if spec_kind(spec) == "tag" else resolved.path.stem
    if not _NAME.match(name):
        raise InvalidInputError(f"mirror name {name!r}: use letters, digits and . _ @ + - (no slashes)")
    bucket, prefix = storage.parse_s3(to)
    s3 = storage.client()
    storage.ensure_bucket(bucket, s3)
    base = "/".join(filter(None, [prefix, name]))
    s3.upload_file(str(resolved.path), bucket, f"{base}/{resolved.path.name}")
    card = {"name": name, "file": resolved.path.name, "sha256": resolved.sha256,
            "size": resolved.path.stat().st_size, "source": resolved.source, "spec": spec, "family": family,
            "arch": arch, "mirrored_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "cxrlt_version": __version__}
    s3.put_object(Bucket=bucket, Key=f"{base}/{MIRROR_CARD}", Body=json.dumps(card, indent=2).encode())
    return card


def list_mirror(uri: str) -> list[dict]:
    """Every mirror card under ``uri``, sorted by name."""
    from cxrlt import storage

    bucket, prefix = storage.parse_s3(uri)
    s3 = storage.client()
    cards = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/" if prefix else ""):
        for obj in page.get("Contents", []):
            if obj["Key"].endswith("/" + MIRROR_CARD):
                cards.append(json.loads(s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()))
    return sorted(cards, key=lambda c: c["name"])


def _mirror_card(uri: str, name: str) -> dict | None:
    """The mirror card of ``name``, or None when it is not mirrored."""
    from botocore.exceptions import ClientError

    from cxrlt import storage

    bucket, prefix = storage.parse_s3(uri)
    base = "/".join(filter(None, [prefix, name]))
    try:
        return json.loads(storage.client().get_object(Bucket=bucket, Key=f"{base}/{MIRROR_CARD}")["Body"].read())
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NoSuchBucket"):
            return None
        raise


def fetch_from_mirror(uri: str, name: str) -> ResolvedWeights | None:
    """Download ``name`` from the mirror into the local cache and verify its sha256; None when not mirrored."""
    from cxrlt import storage

    card = _mirror_card(uri, name)
    if card is None:
        return None
    bucket, prefix = storage.parse_s3(uri)
    base = "/".join(filter(None, [prefix, name]))
    target = cache_dir() / card["sha256"] / card["file"]
    if not (target.exists() and sha256_file(target) == card["sha256"]):
        _download_s3(bucket, f"{base}/{card['file']}", target, f"s3://{bucket}/{base}/{card['file']}")
        digest = sha256_file(target)
        if digest != card["sha256"]:
            target.unlink()
            raise WeightsIntegrityError(f"{uri}/{name}/{card['file']}: sha256 {digest} does not match the mirror's "
                                        f"record {card['sha256']}; the mirrored file was changed or corrupted")
    return ResolvedWeights(name, target, f"mirror {uri}/{name} (from {card['source']})", card["sha256"])


# ------------------------------------------------------------------------------------------------------- loading
def read_state_dict(path: str | Path, prefixes: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """A flat tensor state dict from any of the supported checkpoint layouts.

    Unwraps ``state_dict`` / ``model`` / ``module`` containers and ``module.`` key prefixes (DDP); a TorchScript
    archive (OpenAI CLIP's ``.pt``) gives its parameters. With ``prefixes``, the first prefix that some keys carry
    (``trunk.`` of a cxrlt member checkpoint) is stripped and keys outside it dropped.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj = load_file(str(path))
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            if zipfile.is_zipfile(path) and any(n.endswith("constants.pkl") for n in zipfile.ZipFile(path).namelist()):
                obj = torch.jit.load(str(path), map_location="cpu").state_dict()
            else:
                raise WeightsMismatchError(f"{path}: not a readable weight file ({exc})") from None
    while isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in ("state_dict", "model", "module", "model_state_dict") if k in obj), None)
        if not isinstance(inner, dict):
            break
        obj = inner
    if not isinstance(obj, dict) or not obj:
        raise WeightsMismatchError(f"{path}: no state dict found (top-level keys: {list(obj)[:5] if obj else []})")
    state = {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    for prefix in prefixes:
        if any(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def map_keys(state: dict[str, torch.Tensor], keys: Mapping | None, source: str) -> dict[str, torch.Tensor]:
    """A checkpoint's keys as the network names them, by its declared ``checkpoint_keys``: ``strip_prefix`` keeps
    only the keys under that prefix (a fine-tune's ``backbone.``; its own head is dropped) and removes it, then each
    ``rename`` entry replaces a leading ``old`` with ``new``."""
    if not keys:
        return state
    prefix = keys.get("strip_prefix") or ""
    if prefix:
        if not any(k.startswith(prefix) for k in state):
            raise WeightsMismatchError(f"{source}: checkpoint_keys.strip_prefix is {prefix!r}, but no key starts with "
                                       f"it (keys look like {sorted(state)[:4]})")
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    for old, new in (keys.get("rename") or {}).items():
        state = {(new + k[len(old):] if k.startswith(old) else k): v for k, v in state.items()}
    return state


def _mismatch(source: str, arch: str, missing: list[str], unexpected: list[str], hint: str = "") -> str:
    return (f"{source}: not a checkpoint of {arch}: {len(missing)} missing keys {missing[:6]}, {len(unexpected)} "
            f"unexpected keys {unexpected[:6]}{hint}")


_KEY_HINT = ("; if the checkpoint keeps the network under a prefix (a fine-tune's 'backbone.'), declare it as "
             "checkpoint_keys: {strip_prefix: 'backbone.'} beside pretrained")


def create_timm_model(arch: str, pretrained: str | None, *, mirror: str | None = None,
                      prefixes: tuple[str, ...] = (), checkpoint_keys: Mapping | None = None,
                      **kwargs) -> tuple[nn.Module, ResolvedWeights | None]:
    """``timm.create_model`` with the weights of ``pretrained`` loaded by timm's own loader, strictly.

    timm's ``load_pretrained`` applies the architecture's checkpoint filter (original layouts), adapts the stem to
    ``in_chans`` (1-channel: the RGB kernels summed) and drops a classifier whose class count differs; it then loads
    non-strictly whenever it dropped one, which for a trunk (no classifier) would accept a checkpoint none of whose
    keys fit. So the keys it reports are checked here: only the re-initialised classifier may be missing. A tag must
    name the configured architecture (``arch.tag``), so the tag's own pretrained config applies.
    """
    import sys

    import timm
    from timm.models import load_pretrained

    if pretrained is None:
        return timm.create_model(arch, pretrained=False, **kwargs), None
    name = arch
    if spec_kind(pretrained) == "tag" and not pretrained.startswith(HF_HUB):
        tag_arch = pretrained.partition(".")[0]
        if timm.is_model(tag_arch) and tag_arch != arch:
            raise WeightsMismatchError(f"pretrained tag {pretrained!r} is for {tag_arch}, but the network is {arch}")
        if timm.is_model(tag_arch) and "." in pretrained:
            name = pretrained
    resolved = resolve(pretrained, "timm", mirror=mirror)
    state = read_state_dict(resolved.path, () if checkpoint_keys else prefixes)
    state = map_keys(state, checkpoint_keys, resolved.source)
    model = timm.create_model(name, pretrained=False, **kwargs)
    report: dict[str, list[str]] = {}
    hook = model.register_load_state_dict_post_hook(
        lambda _m, keys: report.update(missing=list(keys.missing_keys), unexpected=list(keys.unexpected_keys)))
    cfg = {**model.pretrained_cfg, "state_dict": state, "source": ""}
    num_classes = getattr(model, "num_classes", kwargs.get("num_classes", 1000))
    builder_log = logging.getLogger("timm.models._builder")
    level, builder_log.level = builder_log.level, logging.ERROR  # its key lists are reported below, once
    try:  # the architecture's own checkpoint filter, as timm's builder passes it
        load_pretrained(model, pretrained_cfg=cfg, num_classes=num_classes, in_chans=kwargs.get("in_chans", 3),
                        filter_fn=getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None),
                        strict=False)
    except (RuntimeError, KeyError) as exc:
        raise WeightsMismatchError(f"{resolved.source}: weights do not fit {arch}: {str(exc)[:500]}") from None
    finally:
        hook.remove()
        builder_log.setLevel(level)
    classifiers = model.pretrained_cfg.get("classifier") or ()
    classifiers = (classifiers,) if isinstance(classifiers, str) else tuple(classifiers)
    reset = num_classes != model.pretrained_cfg.get("num_classes")
    missing = [k for k in report.get("missing", []) if not (reset and k.startswith(tuple(c + "." for c in
                                                                                          classifiers)))]
    if missing or report.get("unexpected"):
        raise WeightsMismatchError(_mismatch(resolved.source, arch, missing, report.get("unexpected", []), _KEY_HINT))
    log.info("%s: weights from %s (sha256 %s)", arch, resolved.source, resolved.sha256[:12])
    return model, resolved


def load_clip_weights(model: nn.Module, pretrained: str, arch: str | None, mirror: str | None = None,
                      checkpoint_keys: Mapping | None = None) -> ResolvedWeights:
    """Load a CLIP checkpoint (OpenAI/CheXzero layout, open_clip layout, or a cxrlt zero-shot checkpoint) strictly."""
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed

    resolved = resolve(pretrained, "open_clip", arch, mirror=mirror)
    state = read_state_dict(resolved.path, prefixes=() if checkpoint_keys else ("clip.",))
    state = map_keys(state, checkpoint_keys, resolved.source)
    for key in OPENAI_META_KEYS:
        state.pop(key, None)
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):  # open_clip CustomTextCLIP
        state = convert_to_custom_text_state_dict(state)
    resize_pos_embed(state, model)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise WeightsMismatchError(f"{resolved.source}: not a checkpoint of {arch or 'this CLIP'}: "
                                   f"{str(exc)[:400]}") from None
    if missing or unexpected:
        raise WeightsMismatchError(_mismatch(resolved.source, arch or "this CLIP", missing, unexpected, _KEY_HINT))
    log.info("CLIP %s: weights from %s (sha256 %s)", arch, resolved.source, resolved.sha256[:12])
    return resolved
