"""The bundle contract: what a trained member, an ensemble and a served bundle carry, as typed and versioned models.

Three files travel between training, the ensemble fit, export, the registry and serving: ``member.json`` (one trained
network: :class:`MemberCard`), ``ensemble.json`` (members, weights and calibration per view: :class:`EnsembleSpec`)
and ``bundle.json`` (the served bundle: :class:`Bundle`). They are written and read only through these classes, so
every field has one name, one type and one default, here. A file written by a newer cxrlt (a higher
``format_version``) is refused with a message naming both versions; files written before the version field existed
read as version 1. Class names key every per-class value (weights by member kind, calibration by class).

Glossary (docs/glossary.md): a *kind* is an architecture family (``pcam``, ``swin`` ...); a *member* is one trained
network of a kind for one *view* (``frontal/pcam``); the *spec* is the fitted ensemble; the *bundle* is its exported,
served form.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cxrlt.errors import InvalidInputError, NotFoundError

#: the contract version this cxrlt writes and the newest it reads
FORMAT_VERSION = 1
COMBINES = ("logit", "probability")


class Contract(BaseModel):
    """A JSON file of the bundle contract; unknown fields are refused (a misspelt key is an error, not a default)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    FILE: ClassVar[str] = ""
    WHAT: ClassVar[str] = ""
    HINT: ClassVar[str] = ""

    format_version: int = FORMAT_VERSION

    @model_validator(mode="before")
    @classmethod
    def _version(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            version = int(data.pop("format", None) or data.get("format_version") or 1)  # bundle.json wrote "format"
            if version > FORMAT_VERSION:
                raise ValueError(f"written with contract format {version}; this cxrlt reads up to {FORMAT_VERSION}: "
                                 "upgrade cxrlt or re-export with this version")
            data["format_version"] = version
        return data

    @classmethod
    def path_in(cls, folder: str | Path) -> Path:
        return Path(folder) / cls.FILE

    @classmethod
    def load(cls, folder: str | Path) -> Self:
        """Read ``<folder>/<FILE>``; a missing or invalid file names the folder and what makes one."""
        path = cls.path_in(folder)
        if not path.exists():
            raise NotFoundError(f"{folder} is not {cls.WHAT} (no {cls.FILE}){cls.HINT}")
        try:
            return cls.model_validate_json(path.read_text())
        except ValidationError as exc:
            raise InvalidInputError(f"{path}: not a valid {cls.FILE}: {_first_error(exc)}") from None

    def save(self, folder: str | Path) -> Path:
        """Write ``<folder>/<FILE>`` atomically (a reader never sees half a file)."""
        path = self.path_in(folder)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.model_dump(mode="json"), indent=2) + "\n")
        tmp.replace(path)
        return path


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}" if where else err["msg"]


class MemberCard(Contract):
    """One trained network (``member.json`` beside its ``best.pt``)."""

    FILE: ClassVar[str] = "member.json"
    WHAT: ClassVar[str] = "a trained member directory"
    HINT: ClassVar[str] = "; run cxrlt train"

    member: str
    kind: str
    view: str | None = None
    classes: list[str]
    image_size: int
    in_chans: int = 1
    preprocess: dict[str, Any]
    tta: str = "none"
    tta_merge: str = "logit"
    model_config_: dict[str, Any] = Field(alias="model_config")
    pcam_model_config: dict[str, Any] | None = None
    pcam_checkpoint: str | None = None
    pretrained: dict[str, Any] | None = None
    best_epoch: int = -1
    best_val_score: float | None = None
    val_metric: str | None = None
    val_tta: dict[str, float | None] = {}
    history: list[dict[str, Any]] = []
    config_hash: str | None = None
    profile: str | None = None
    world_size: int = 1
    data_dir: str | None = None
    #: what a launching step verifies before it records the member (a TrainJob writes on a shared volume)
    checkpoint_sha256: str | None = None

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), populate_by_name=True)

    def model_dump(self, **kwargs) -> dict[str, Any]:
        kwargs.setdefault("by_alias", True)  # the file says "model_config" (pydantic reserves that attribute name)
        return super().model_dump(**kwargs)


class EnsembleView(BaseModel):
    """One view's members (kind -> folder inside the ensemble directory) and their fitted weights (sum 1)."""

    model_config = ConfigDict(extra="forbid")
    members: dict[str, str]
    weights: dict[str, float]
    val_mAP: float | None = None
    val_mAP_members: dict[str, float] = {}
    n_val: int | None = None

    @model_validator(mode="after")
    def _weights_name_members(self) -> EnsembleView:
        if set(self.weights) != set(self.members):
            raise ValueError(f"weights {sorted(self.weights)} do not name the members {sorted(self.members)}")
        return self


class Calibration(BaseModel):
    """Per-class p' = sigmoid(a_c * logit(p_c) + b_c), keyed by class name (``method`` none: identity), applied
    after normal gating (``stage``; a file without it was fitted before gating and is applied there)."""

    model_config = ConfigDict(extra="forbid")
    method: str = "none"
    stage: Literal["before_gating", "after_gating"] = "before_gating"
    a: dict[str, float] = {}
    b: dict[str, float] = {}
    pooled: list[float] | None = None
    pooled_classes: list[str] = []


class _Ensembled(Contract):
    """What an ensemble spec and the bundle exported from it share: the input contract, TTA and the scoring."""

    image_size: int
    preprocess: dict[str, Any]
    tta: str = "none"
    tta_merge: str = "logit"
    combine: str = "logit"
    calibration: Calibration | None = None
    normal_gate_alpha: float | None = None
    bands: dict[str, str] = {}

    @model_validator(mode="after")
    def _combine(self) -> _Ensembled:
        if self.combine not in COMBINES:
            raise ValueError(f"combine must be one of {COMBINES}, got {self.combine!r}")
        return self


class EnsembleSpec(_Ensembled):
    """The fitted ensemble (``ensemble.json`` at the top of an ensemble directory)."""

    FILE: ClassVar[str] = "ensemble.json"
    WHAT: ClassVar[str] = "an ensemble directory"
    HINT: ClassVar[str] = "; run cxrlt ensemble build"

    classes: list[str]
    views: dict[str, EnsembleView]
    router: str | None = None
    val_mECE: dict[str, float] | None = None
    grid_step: float | None = None
    profile: str | None = None



class SharedTrunk(BaseModel):
    """A view whose CaiT reads the PCAM member's frozen trunk: the trunk network runs once and feeds ``members``."""

    model_config = ConfigDict(extra="forbid")
    model: str
    members: list[str]
    features: list[int]


class BundleView(BaseModel):
    """One served view: member kind -> exported network name, the weights, and the shared trunk where there is one."""

    model_config = ConfigDict(extra="forbid")
    members: dict[str, str]
    weights: dict[str, float]
    shared_trunk: SharedTrunk | None = None


class ZeroShotScoring(BaseModel):
    """The served zero-shot head: sigmoid(a * img @ E.T + b) over ``classes`` (E in zeroshot/text_embeddings.npy)."""

    model_config = ConfigDict(extra="forbid")
    classes: list[str]
    image_size: int
    a: float
    b: float = 0.0
    prompts: str | None = None
    preprocess: dict[str, Any]


class Bundle(_Ensembled):
    """The served bundle (``bundle.json`` beside ``onnx/`` and ``zeroshot/``)."""

    FILE: ClassVar[str] = "bundle.json"
    WHAT: ClassVar[str] = "a served bundle"
    HINT: ClassVar[str] = "; run cxrlt export"

    cxrlt_version: str
    known_classes: list[str]
    router_classes: list[str] = []
    views: dict[str, BundleView]
    zeroshot: ZeroShotScoring | None = None
    lineage: dict[str, Any] = {}
    #: every network also as a torch.export program (programs/<name>.pt2), for the AOTInductor runtime
    programs: bool = False

    def scoring(self) -> dict[str, Any]:
        """The plain form :class:`cxrlt.scoring.BundleScorer` reads (it runs where cxrlt and pydantic are not)."""
        return self.model_dump(mode="json")
