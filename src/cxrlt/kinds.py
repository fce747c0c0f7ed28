"""The registry of member kinds: the one list from which the profile schema, the factory, the pipeline's jobs, the
ensemble, export, the model summary and the reports take theirs.

A *kind* is an architecture family of ensemble member (``pcam``, ``swin`` ...). Adding one is two changes:

1. here (or in any module imported before the profile is read), :func:`register_kind` with its profile section's
   settings (a pydantic model) and how it trains (its own pipeline job, or inside another kind's job);
2. in the new model's module, the network and its builder, registered with
   :func:`cxrlt.models.factory.builds`.

docs/glossary.md shows a toy kind end to end (tests/test_kinds.py runs it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cxrlt.errors import InvalidInputError


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class CheckpointKeys(_Settings):
    """How a pretrained checkpoint's keys become the network's (strict loading checks the result): a fine-tune that
    keeps the trunk under ``backbone.`` declares ``strip_prefix: backbone.`` (keys outside it, its own heads, are
    dropped); ``rename`` replaces leading ``old`` with ``new`` after that."""

    strip_prefix: str = ""
    rename: dict[str, str] = {}


class PooledCNNSettings(_Settings):
    """A timm CNN trunk with one of cxrlt's heads over its feature map (PCAM pooling, MLP, CSRA)."""

    backbone: str
    head: Literal["pcam", "csra", "mlp"] = "pcam"
    backbone_kwargs: dict[str, Any] = {}
    drop: Annotated[float, Field(ge=0, le=1)] = 0.0
    pretrained: str | None = Field(description="timm tag, weight file/URI or mirror name; null = random init")
    checkpoint_keys: CheckpointKeys | None = None


class TimmSettings(_Settings):
    """Any timm classifier by name (Swin-V2 member, EfficientNet-B0 router)."""

    arch: str
    kwargs: dict[str, Any] = {}
    pretrained: str | None = Field(description="timm tag, weight file/URI or mirror name; null = random init")
    checkpoint_keys: CheckpointKeys | None = None


class CaiTSettings(TimmSettings):
    arch: str = "cait_xxs24_224"


@dataclass(frozen=True)
class MemberKind:
    """One kind of ensemble member."""

    name: str
    #: the schema of the profile's ``models.<name>`` section
    settings: type[BaseModel]
    description: str
    #: a head over a CNN trunk built from the pooled-CNN settings (its trunk can feed a ``reads_trunk_of`` kind)
    pooled_cnn: bool = False
    #: the kind whose trained, frozen trunk this one reads (CaiT over the PCAM CNN): trained in that kind's job, and
    #: the profile must define that kind too
    reads_trunk_of: str | None = None


_KINDS: dict[str, MemberKind] = {}


def register_kind(kind: MemberKind) -> MemberKind:
    """Add a kind (its name must be new and usable as a profile key and a folder name)."""
    if kind.name in _KINDS or kind.name == "router" or not kind.name.isidentifier():
        raise InvalidInputError(f"member kind {kind.name!r} is taken or not a valid name")
    if kind.reads_trunk_of is not None and kind.reads_trunk_of not in _KINDS:
        raise InvalidInputError(f"member kind {kind.name!r} reads the trunk of unknown kind {kind.reads_trunk_of!r}")
    _KINDS[kind.name] = kind
    return kind


def unregister_kind(name: str) -> None:
    """Remove a kind (tests that register a toy kind clean up with this)."""
    _KINDS.pop(name, None)


def member_kind(name: str) -> MemberKind:
    if name not in _KINDS:
        raise InvalidInputError(f"unknown member kind {name!r}: choose one of {member_kinds()}")
    return _KINDS[name]


def member_kinds() -> tuple[str, ...]:
    """Every registered kind, in registration order."""
    return tuple(_KINDS)


def job_kinds() -> tuple[str, ...]:
    """The kinds that get their own training job (a kind that reads another's trunk trains inside that job)."""
    return tuple(k for k, v in _KINDS.items() if v.reads_trunk_of is None)


def riders(name: str) -> tuple[str, ...]:
    """The kinds trained inside ``name``'s job, on its frozen trunk (``pcam`` -> ``cait``)."""
    return tuple(k for k, v in _KINDS.items() if v.reads_trunk_of == name)


def pooled_cnn_kinds() -> tuple[str, ...]:
    return tuple(k for k, v in _KINDS.items() if v.pooled_cnn)


# seed 000: PCAM CNN, Swin-V2, CaiT over the frozen PCAM trunk; HPH (seed 002): one trunk with an MLP and a CSRA head
register_kind(MemberKind("pcam", PooledCNNSettings, "CNN trunk with PCAM pooling (seed 000)", pooled_cnn=True))
register_kind(MemberKind("swin", TimmSettings, "Swin-V2 classifier (seed 000)"))
register_kind(MemberKind("cait", CaiTSettings, "CaiT over the frozen PCAM trunk's feature map (seed 000)",
                         reads_trunk_of="pcam"))
register_kind(MemberKind("mlp", PooledCNNSettings, "ConvNeXtV2 trunk with an MLP head (HPH)", pooled_cnn=True))
register_kind(MemberKind("csra", PooledCNNSettings, "ConvNeXtV2 trunk with a CSRA head (HPH)", pooled_cnn=True))
