"""Factory functions: build the router and each ensemble member from a profile's model config.

``weights=True`` loads each network's configured ``pretrained`` weights (training); ``weights=False`` builds the
bare architecture because a trained checkpoint is loaded right after (inference, export).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cxrlt.contract import MemberCard
from cxrlt.errors import InvalidInputError
from cxrlt.models.members import CaiTOverCNN, PooledCNN, TimmClassifier

#: seed 000: pcam, swin, cait; HPH (seed 002): the same trunk with an MLP head and with a CSRA head
MEMBER_KINDS: tuple[str, ...] = ("pcam", "swin", "cait", "mlp", "csra")
POOLED_CNN_KINDS: tuple[str, ...] = ("pcam", "mlp", "csra")
ROUTER_CLASSES: tuple[str, ...] = ("frontal", "lateral")


def _pretrained(cfg: dict, weights: bool) -> str | None:
    return cfg.get("pretrained") if weights else None


def build_router(cfg: dict, in_chans: int = 1, weights: bool = False, mirror: str | None = None) -> nn.Module:
    """EfficientNet-B0 (paper) or any timm classifier with 2 outputs: frontal, lateral."""
    return TimmClassifier(cfg["arch"], len(ROUTER_CLASSES), in_chans, _pretrained(cfg, weights), mirror,
                          **cfg.get("kwargs", {}))


def build_pooled_cnn(cfg: dict, num_classes: int, in_chans: int = 1, weights: bool = False,
                     mirror: str | None = None) -> PooledCNN:
    return PooledCNN(cfg["backbone"], num_classes, cfg.get("head", "pcam"), in_chans, cfg.get("backbone_kwargs"),
                     cfg.get("drop", 0.0), _pretrained(cfg, weights), mirror)


def build_member(kind: str, models_cfg: dict, num_classes: int, image_size: int, in_chans: int = 1,
                 pcam_checkpoint: str | Path | None = None, for_loading: bool = False, weights: bool = False,
                 mirror: str | None = None) -> nn.Module:
    """Build one ensemble member.

    ``cait`` needs the trained PCAM member's checkpoint (its frozen trunk), unless ``for_loading`` is set because a
    complete cait state dict (trunk included) is loaded right after.
    """
    if kind not in MEMBER_KINDS:
        raise InvalidInputError(f"unknown member kind {kind!r}: choose one of {MEMBER_KINDS}")
    if models_cfg.get(kind) is None:
        raise InvalidInputError(f"the profile defines no models.{kind} network")
    if kind in POOLED_CNN_KINDS:
        return build_pooled_cnn(models_cfg[kind], num_classes, in_chans, weights, mirror)
    if kind == "swin":
        cfg = models_cfg["swin"]
        return TimmClassifier(cfg["arch"], num_classes, in_chans, _pretrained(cfg, weights), mirror,
                              img_size=image_size, **cfg.get("kwargs", {}))
    if kind == "cait":
        if pcam_checkpoint is None and not for_loading:
            raise InvalidInputError("the cait member needs the trained pcam member of the same view "
                                    "(--pcam-checkpoint)")
        cnn = build_pooled_cnn(models_cfg["pcam"], num_classes, in_chans)
        if pcam_checkpoint is not None:
            state = torch.load(pcam_checkpoint, map_location="cpu", weights_only=True)
            cnn.load_state_dict(state.get("model", state))
        with torch.no_grad():  # eval: a batch of one through BatchNorm in training mode is an error
            hw = cnn.eval().features(torch.zeros(1, in_chans, image_size, image_size)).shape[-1]
        cfg = models_cfg["cait"]
        return CaiTOverCNN(cnn, num_classes, hw, cfg.get("arch", "cait_xxs24_224"), cfg.get("kwargs"),
                           _pretrained(cfg, weights), mirror)
    raise InvalidInputError(f"unknown member kind {kind!r}: choose one of {MEMBER_KINDS}")


def load_member(member_dir: str | Path) -> tuple[nn.Module, MemberCard]:
    """Rebuild a trained member from its directory (``member.json`` + ``best.pt``) for inference or export."""
    member_dir = Path(member_dir)
    card = MemberCard.load(member_dir)
    models_cfg = {card.kind: card.model_config_}
    if card.kind == "router":
        model = build_router(card.model_config_, card.in_chans)
    elif card.kind == "cait":
        models_cfg["pcam"] = card.pcam_model_config
        model = build_member("cait", models_cfg, len(card.classes), card.image_size, card.in_chans, for_loading=True)
    else:
        model = build_member(card.kind, models_cfg, len(card.classes), card.image_size, card.in_chans)
    state = torch.load(member_dir / "best.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    return model.eval(), card


# ------------------------------------------------------------------------------------------------------------ MLflow
