"""``cxrlt models summary``: every network of a profile with its size, input contract and weight source.

Networks are built on PyTorch's ``meta`` device, so even the paper profile's ~240 M parameters cost no memory and
no weights are resolved: the summary says where the weights *would* come from.
"""

from __future__ import annotations

import torch
from torch import nn

from cxrlt.config import load_config, task1_preprocess, zeroshot_settings
from cxrlt.data.images import PreprocessConfig
from cxrlt.labels import KNOWN_CLASSES
from cxrlt.weights import mirror_uri, spec_kind


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
         spec: str | None, mirror: str | None) -> dict:
    return {"network": network, "architecture": arch, "params": count_params(model),
            "trainable_params": count_params(model, trainable_only=True), "backbone_params": count_params(backbone),
            "input_size": contract.size, "channels": contract.channels,
            "mean": [round(v, 5) for v in contract.mean], "std": [round(v, 5) for v in contract.std],
            "pretrained": spec, "weight_source": weight_source(spec, mirror)}


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
                         PreprocessConfig.from_dict(zs["preprocess"]), zs["pretrained"], mirror))
    return rows


def format_table(rows: list[dict]) -> str:
    head = f"{'network':9} {'architecture':44} {'params':>9} {'input':>9} {'mean / std':26} weights"
    lines = [head, "-" * len(head)]
    for r in rows:
        norm = f"{r['mean'][0]:.3f}../{r['std'][0]:.3f}.." if r["channels"] == 3 else f"{r['mean'][0]}/{r['std'][0]}"
        lines.append(f"{r['network']:9} {r['architecture'][:44]:44} {r['params'] / 1e6:8.2f}M "
                     f"{r['channels']}x{r['input_size']:<4} {norm:26} {r['weight_source']}")
    return "\n".join(lines)
