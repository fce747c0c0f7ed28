"""Factory functions: build the router and each ensemble member from a profile's model config.

``weights=True`` loads each network's configured ``pretrained`` weights (training); ``weights=False`` builds the
bare architecture because a trained checkpoint is loaded right after (inference, export).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cxrlt.contract import MemberCard
from cxrlt.errors import InvalidInputError
from cxrlt.kinds import member_kind
from cxrlt.models.members import CaiTOverCNN, PooledCNN, TimmClassifier

ROUTER_CLASSES: tuple[str, ...] = ("frontal", "lateral")


@dataclass(frozen=True)
class BuildRequest:
    """What a kind's builder gets: the profile's ``models`` section (its own under ``models[kind]``) and the input."""

    kind: str
    models: dict
    num_classes: int
    image_size: int
    in_chans: int = 1
    #: the trained checkpoint of the kind whose trunk this one reads (cait: the view's pcam member)
    trunk_checkpoint: str | Path | None = None
    #: a complete state dict (trunk included) is loaded right after: no trunk checkpoint needed
    for_loading: bool = False
    weights: bool = False
    mirror: str | None = None

    @property
    def settings(self) -> dict:
        return self.models[self.kind]

    @property
    def pretrained(self) -> str | None:
        return self.settings.get("pretrained") if self.weights else None


Builder = Callable[[BuildRequest], nn.Module]
_BUILDERS: dict[str, Builder] = {}


def builds(kind: str) -> Callable[[Builder], Builder]:
    """Register the builder of a member kind (the kind itself is registered in :mod:`cxrlt.kinds`)."""

    def register(builder: Builder) -> Builder:
        _BUILDERS[kind] = builder
        return builder

    return register


def _pretrained(cfg: dict, weights: bool) -> str | None:
    return cfg.get("pretrained") if weights else None


def build_router(cfg: dict, in_chans: int = 1, weights: bool = False, mirror: str | None = None) -> nn.Module:
    """EfficientNet-B0 (paper) or any timm classifier with 2 outputs: frontal, lateral."""
    return TimmClassifier(cfg["arch"], len(ROUTER_CLASSES), in_chans, _pretrained(cfg, weights), mirror,
                          cfg.get("checkpoint_keys"), **cfg.get("kwargs", {}))


def build_pooled_cnn(cfg: dict, num_classes: int, in_chans: int = 1, weights: bool = False,
                     mirror: str | None = None) -> PooledCNN:
    return PooledCNN(cfg["backbone"], num_classes, cfg.get("head", "pcam"), in_chans, cfg.get("backbone_kwargs"),
                     cfg.get("drop", 0.0), _pretrained(cfg, weights), mirror, cfg.get("checkpoint_keys"))


@builds("pcam")
@builds("mlp")
@builds("csra")
def _pooled_cnn(req: BuildRequest) -> nn.Module:
    return build_pooled_cnn(req.settings, req.num_classes, req.in_chans, req.weights, req.mirror)


@builds("swin")
def _swin(req: BuildRequest) -> nn.Module:
    return TimmClassifier(req.settings["arch"], req.num_classes, req.in_chans, req.pretrained, req.mirror,
                          req.settings.get("checkpoint_keys"), img_size=req.image_size,
                          **req.settings.get("kwargs", {}))


@builds("cait")
def _cait(req: BuildRequest) -> nn.Module:
    trunk_kind = member_kind("cait").reads_trunk_of
    if req.trunk_checkpoint is None and not req.for_loading:
        raise InvalidInputError(f"the cait member needs the trained {trunk_kind} member of the same view "
                                "(--pcam-checkpoint)")
    cnn = build_pooled_cnn(req.models[trunk_kind], req.num_classes, req.in_chans)
    if req.trunk_checkpoint is not None:
        state = torch.load(req.trunk_checkpoint, map_location="cpu", weights_only=True)
        cnn.load_state_dict(state.get("model", state))
    with torch.no_grad():  # eval: a batch of one through BatchNorm in training mode is an error
        hw = cnn.eval().features(torch.zeros(1, req.in_chans, req.image_size, req.image_size)).shape[-1]
    return CaiTOverCNN(cnn, req.num_classes, hw, req.settings.get("arch", "cait_xxs24_224"),
                       req.settings.get("kwargs"), req.pretrained, req.mirror, req.settings.get("checkpoint_keys"))


def build_member(kind: str, models_cfg: dict, num_classes: int, image_size: int, in_chans: int = 1,
                 pcam_checkpoint: str | Path | None = None, for_loading: bool = False, weights: bool = False,
                 mirror: str | None = None) -> nn.Module:
    """Build one ensemble member of a registered kind (:mod:`cxrlt.kinds`) with the builder registered for it.

    A kind that reads another's frozen trunk (``cait``) needs that member's checkpoint, unless ``for_loading`` is
    set because a complete state dict (trunk included) is loaded right after.
    """
    member_kind(kind)  # an unknown kind names the registered ones
    if kind not in _BUILDERS:
        raise InvalidInputError(f"member kind {kind!r} has no builder: register one with cxrlt.models.factory.builds")
    if models_cfg.get(kind) is None:
        raise InvalidInputError(f"the profile defines no models.{kind} network")
    return _BUILDERS[kind](BuildRequest(kind, models_cfg, num_classes, image_size, in_chans, pcam_checkpoint,
                                        for_loading, weights, mirror))


def load_member(member_dir: str | Path) -> tuple[nn.Module, MemberCard]:
    """Rebuild a trained member from its directory (``member.json`` + ``best.pt``) for inference or export."""
    member_dir = Path(member_dir)
    card = MemberCard.load(member_dir)
    models_cfg = {card.kind: card.model_config_}
    if card.kind == "router":
        model = build_router(card.model_config_, card.in_chans)
    elif member_kind(card.kind).reads_trunk_of:  # the trunk's settings travel in the card; the weights in best.pt
        models_cfg[member_kind(card.kind).reads_trunk_of] = card.pcam_model_config
        model = build_member(card.kind, models_cfg, len(card.classes), card.image_size, card.in_chans,
                             for_loading=True)
    else:
        model = build_member(card.kind, models_cfg, len(card.classes), card.image_size, card.in_chans)
    state = torch.load(member_dir / "best.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    return model.eval(), card


# ------------------------------------------------------------------------------------------------------------ MLflow
