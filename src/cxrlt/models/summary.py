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
    """One row per network: router, pcam, swin, cait (if the profile has Task 1 networks) and the zero-shot CLIP."""
    from cxrlt.models.factory import build_member, build_router
    from cxrlt.zeroshot.model import build_clip

    cfg = load_config(config)
    mirror = mirror_uri(cfg.get("weights_mirror"))
    rows = []
    with torch.device("meta"):
        if cfg["models"] is not None:
            models, contract = cfg["models"], task1_preprocess(cfg)
            router = build_router(models["router"], contract.channels)
            rows.append(_row("router", models["router"]["arch"], router, router.net, contract,
                             models["router"]["pretrained"], mirror))
            k, size, ch = len(KNOWN_CLASSES), contract.size, contract.channels
            pcam = build_member("pcam", models, k, size, ch)
            rows.append(_row("pcam", f"{models['pcam']['backbone']} + {models['pcam']['head']} head", pcam, pcam.trunk,
                             contract, models["pcam"]["pretrained"], mirror))
            swin = build_member("swin", models, k, size, ch)
            rows.append(_row("swin", models["swin"]["arch"], swin, swin.net, contract, models["swin"]["pretrained"],
                             mirror))
            cait = build_member("cait", models, k, size, ch, for_loading=True)
            rows.append(_row("cait", f"{models['cait']['arch']} over the frozen pcam trunk", cait, cait.cait,
                             contract, models["cait"]["pretrained"], mirror))
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
