"""``cxrlt models summary`` and ``cxrlt weights check``: every network of a profile with its size, input contract
and weight source.

The summary builds networks on PyTorch's ``meta`` device, so even the paper profile's ~240 M parameters cost no
memory, and downloads nothing: it says where the weights would come from and whether they are on this machine (the
mirror's card, the Hugging Face cache, the file). The check resolves every configured weight (mirror, cache, hub)
and loads it strictly into its network, without data: the training pipeline's first step, so a run without its
weights fails in seconds, not hours later after the data steps.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from cxrlt.config import load_config, task1_preprocess, zeroshot_settings
from cxrlt.data.images import PreprocessConfig
from cxrlt.labels import KNOWN_CLASSES
from cxrlt.weights import locate, mirror_uri, spec_kind


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def weight_source(spec: str | None, mirror: str | None) -> str:
    kind = spec_kind(spec)
    if kind == "random":
        return "random init (pretrained: null)"
    if kind == "tag":
        where = f"mirror {mirror}, then hub cache" if mirror else "hub cache; no weights mirror set"
        return f"tag {spec} ({where})"
    return f"{kind} {spec}"


def _row(network: str, arch: str, model: nn.Module, backbone: nn.Module, contract: PreprocessConfig,
         spec: str | None, mirror: str | None, family: str = "timm", clip_arch: str | None = None) -> dict:
    return {"network": network, "architecture": arch, "params": count_params(model),
            "trainable_params": count_params(model, trainable_only=True), "backbone_params": count_params(backbone),
            "input_size": contract.size, "channels": contract.channels,
            "mean": [round(v, 5) for v in contract.mean], "std": [round(v, 5) for v in contract.std],
            "pretrained": spec, "weight_source": weight_source(spec, mirror),
            "here": locate(spec, family, clip_arch, mirror)}


def summarize_profile(config) -> list[dict]:
    """One row per network the profile defines (router and members in profile order) and the zero-shot CLIP."""
    from cxrlt.kinds import pooled_cnn_kinds
    from cxrlt.models.factory import build_member, build_router
    from cxrlt.zeroshot.model import build_clip

    cfg = load_config(config)
    mirror = mirror_uri(cfg.get("weights_mirror"))
    rows = []
    with torch.device("meta"):
        models = cfg["models"] or {}
        contract = task1_preprocess(cfg)
        k, size, ch = len(KNOWN_CLASSES), contract.size, contract.channels
        for name, net in models.items():
            if net is None:
                continue
            if name == "router":
                model = build_router(net, ch)
                rows.append(_row(name, net["arch"], model, model.net, contract, net["pretrained"], mirror))
            elif name in pooled_cnn_kinds():
                model = build_member(name, models, k, size, ch)
                rows.append(_row(name, f"{net['backbone']} + {net['head']} head", model, model.trunk, contract,
                                 net["pretrained"], mirror))
            elif name == "swin":
                model = build_member(name, models, k, size, ch)
                rows.append(_row(name, net["arch"], model, model.net, contract, net["pretrained"], mirror))
            else:  # cait
                model = build_member(name, models, k, size, ch, for_loading=True)
                rows.append(_row(name, f"{net['arch']} over the frozen pcam trunk", model, model.cait, contract,
                                 net["pretrained"], mirror))
        zs = zeroshot_settings(cfg)
        clip, _ = build_clip(zs)
        rows.append(_row("zeroshot", f"CLIP {zs['model']} (context {zs['context_length']})", clip, clip,
                         PreprocessConfig.from_dict(zs["preprocess"]), zs["pretrained"], mirror, "open_clip",
                         None if zs["model"] == "tiny" else zs["model"]))
    return rows


def check_weights(config) -> list[dict]:
    """Resolve and strictly load every configured weight of the profile into its network (no data read); one row per
    network: ``ok`` with the source and sha256, ``random`` for ``pretrained: null``, or ``failed`` with the error,
    which names where it looked and the command that fixes it. Every network is tried, so one run lists them all."""
    from cxrlt.errors import CxrltError

    cfg = load_config(config)
    mirror = cfg.get("weights_mirror")
    contract = task1_preprocess(cfg)
    models = cfg["models"] or {}

    # the builders import timm and open_clip (seconds of CPU) only for networks that have weights to load
    def router(net: dict):
        from cxrlt.models.factory import build_router

        return build_router(net, contract.channels, True, mirror).weights

    def member(name: str):
        from cxrlt.models.factory import build_member

        return build_member(name, models, len(KNOWN_CLASSES), contract.size, contract.channels, for_loading=True,
                            weights=True, mirror=mirror).weights

    def clip(zs: dict):
        from cxrlt.zeroshot.model import build_clip

        return build_clip(zs, weights=True, mirror=mirror)[1]

    jobs = [(name, net["pretrained"], partial(router, net) if name == "router" else partial(member, name))
            for name, net in models.items() if net is not None]
    zs = zeroshot_settings(cfg)
    jobs.append(("zeroshot", zs["pretrained"], partial(clip, zs)))
    rows = []
    for name, spec, build in jobs:
        row = {"network": name, "pretrained": spec}
        if spec is None:
            rows.append(row | {"status": "random", "detail": "random init (pretrained: null)"})
            continue
        try:
            resolved = build()  # the network is built, loaded strictly and dropped: only the weights' record stays
        except CxrltError as exc:
            rows.append(row | {"status": "failed", "detail": str(exc)})
            continue
        rows.append(row | {"status": "ok", "detail": resolved.source, "sha256": resolved.sha256})
    return rows


def format_table(rows: list[dict]) -> str:
    head = f"{'network':9} {'architecture':44} {'params':>9} {'input':>9} {'mean / std':26} weights (here?)"
    lines = [head, "-" * len(head)]
    for r in rows:
        norm = f"{r['mean'][0]:.3f}../{r['std'][0]:.3f}.." if r["channels"] == 3 else f"{r['mean'][0]}/{r['std'][0]}"
        lines.append(f"{r['network']:9} {r['architecture'][:44]:44} {r['params'] / 1e6:8.2f}M "
                     f"{r['channels']}x{r['input_size']:<4} {norm:26} {r['weight_source']} ({r['here']})")
    return "\n".join(lines)
