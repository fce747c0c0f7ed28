"""Profiles (``configs/*.yaml``): one typed, validated schema for the tiny CPU profile, the paper profile and any other.

Every key is declared here with its type and range, so an unknown or misspelt key, a wrong type or an impossible
value fails when the profile is loaded, naming the key and the file, before any GPU hour is spent. Each network's
``pretrained`` key has no default: random initialisation is allowed only where a profile writes ``null``.

``load_profile`` returns the typed :class:`Profile`; ``load_config`` returns its validated plain-dict form, which is
what trainers, cards and hashes use.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from cxrlt.data.images import DEFAULT_MAX_PIXELS, DEFAULT_MODALITIES, DEFAULT_PERCENTILES, PreprocessConfig
from cxrlt.errors import CxrltError, InvalidInputError, NotFoundError
from cxrlt.kinds import CheckpointKeys, job_kinds, member_kind, member_kinds

#: Named input normalisations (per-channel mean, std on [0, 1] pixels). ``cxrlt`` is this project's 1-channel
#: default; ``imagenet`` is timm's ImageNet statistics (seed 000 and HPH); ``clip`` is OpenAI CLIP's;
#: ``chexzero`` is CheXzero's grayscale statistics (101.48761 / 83.43944 on the 0-255 scale).
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cxrlt": ((0.5,), (0.25,)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "chexzero": ((101.48761 / 255,) * 3, (83.43944 / 255,) * 3),
}
PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]


class ConfigError(CxrltError, ValueError):
    """A profile failed validation; the message names the file and every offending key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class InputConfig(_Strict):
    """How a [0, 1] radiograph is presented to the networks (becomes the bundle's preprocessing contract)."""

    channels: Literal[1, 3] = 1
    normalization: Literal["cxrlt", "imagenet", "clip", "chexzero"] = "cxrlt"
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES
    scaling: Literal["percentile", "bit_depth"] = "percentile"
    max_pixels: PositiveInt = DEFAULT_MAX_PIXELS
    #: DICOM modalities accepted as chest radiographs (everything else is refused before decoding)
    modalities: tuple[str, ...] = DEFAULT_MODALITIES

    @field_validator("percentiles")
    @classmethod
    def _ordered(cls, v):
        if not 0 <= v[0] < v[1] <= 100:
            raise InvalidInputError(f"percentiles must satisfy 0 <= low < high <= 100, got {list(v)}")
        return v

    def contract(self, size: int) -> PreprocessConfig:
        mean, std = NORMALIZATIONS[self.normalization]
        if len(mean) == 1 and self.channels == 3:
            mean, std = mean * 3, std * 3
        if len(mean) == 3 and self.channels == 1:
            mean, std = (sum(mean) / 3,), (sum(std) / 3,)
        return PreprocessConfig(size=size, percentiles=tuple(self.percentiles), max_pixels=self.max_pixels,
                                channels=self.channels, mean=tuple(mean), std=tuple(std), scaling=self.scaling,
                                modalities=tuple(self.modalities))


class DataConfig(_Strict):
    image_size: Annotated[int, Field(ge=16)] = 64
    cache_size: Annotated[int, Field(ge=16)] = 64
    val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1
    split_seed: int = 42
    preload: bool = True
    input: InputConfig = InputConfig()


class RouterConfig(_Strict):
    arch: str
    kwargs: dict[str, Any] = {}
    pretrained: str | None = Field(description="timm tag, weight file/URI or mirror name; null = random init")
    checkpoint_keys: CheckpointKeys | None = None


class ModelsConfig(_Strict):
    """Task 1 networks: the router and one optional section per registered member kind (:mod:`cxrlt.kinds`; seed
    000 uses router + pcam/swin/cait, HPH the mlp and csra heads over one trunk). The fields of the kinds are added
    from the registry (:func:`models_schema`), each validated by its kind's settings model."""

    router: RouterConfig | None = None

    @model_validator(mode="after")
    def _some_member(self):
        defined = [k for k in member_kinds() if getattr(self, k, None) is not None]
        if not defined:
            raise InvalidInputError(f"models: define at least one ensemble member ({', '.join(member_kinds())})")
        for name in defined:
            needs = member_kind(name).reads_trunk_of
            if needs and getattr(self, needs, None) is None:
                raise InvalidInputError(f"models.{name} runs over the frozen {needs} trunk: models.{needs} is "
                                        "needed too")
        return self


_SCHEMAS: dict[tuple, tuple[type[ModelsConfig], type[BaseModel]]] = {}


def models_schema() -> tuple[type[ModelsConfig], type[Profile]]:
    """The ``models`` section and the profile with one field per registered member kind (rebuilt when a kind is
    registered, so a new kind needs no change here)."""
    key = tuple((k, member_kind(k).settings) for k in member_kinds())
    if key not in _SCHEMAS:
        models = create_model("ModelsConfig", __base__=ModelsConfig,
                              **{k: (settings | None, None) for k, settings in key})
        profile = create_model("Profile", __base__=Profile, models=(models | None, Field(
            default=None, description="Task 1 networks; a zero-shot-only profile omits it")))
        _SCHEMAS[key] = (models, profile)
    return _SCHEMAS[key]


class AugmentSettings(_Strict):
    flip_p: Fraction = 0.5
    rotate_deg: Annotated[float, Field(ge=0, le=180)] = 20.0
    scale: tuple[PositiveFloat, PositiveFloat] = (0.9, 1.1)
    translate: Annotated[float, Field(ge=0, lt=0.5)] = 0.05
    clahe_p: Fraction = 0.3
    clahe_clip: PositiveFloat = 2.0


class _Optimisation(_Strict):
    """AdamW + warm-up cosine schedule + EMA: the keys Task 1 training and the zero-shot CLIP share."""

    epochs: PositiveInt = 3
    batch_size: PositiveInt = 32
    lr: PositiveFloat = 1e-3
    weight_decay: Annotated[float, Field(ge=0)] = 0.05
    warmup_epochs: Annotated[float, Field(ge=0)] = 1
    min_lr_ratio: Fraction = 0.01
    warmup_lr_ratio: Fraction = 0.01
    grad_clip: Annotated[float, Field(ge=0)] = 1.0
    ema_decay: Annotated[float, Field(ge=0, lt=1)] = 0.99
    #: timm's EMA warm-up: the decay after t updates is min(ema_decay, 1 - (1 + t)^(-2/3)), so a short run's EMA is
    #: not stuck near the initial weights; false = ema_decay from the first step
    ema_warmup: bool = True


#: which labels train a task: every image, or only PadChest's physician-verified ones (MethodLabel == Physician)
LabelSource = Literal["all", "physician"]

_VIEWS = ("frontal", "lateral", "mixed")


def _override_key(key: str) -> str:
    """``router``, a kind, a view, or ``<view>/<kind>``."""
    view, _, kind = key.rpartition("/")
    if key in ("router", *_VIEWS, *member_kinds()) or (view in _VIEWS and kind in member_kinds()):
        return key
    raise ValueError(f"unknown override key {key!r}: router, a view {_VIEWS}, a kind {member_kinds()} or view/kind")


OverrideKey = Annotated[str, AfterValidator(_override_key)]


class TrainConfig(_Optimisation):
    #: the Task 1 networks' training labels (the split writes manifests for both sources)
    label_source: LabelSource = "all"
    loss: Literal["bce", "asl", "asl_weighted", "db"] = "asl"
    loss_kwargs: dict[str, Any] = {}
    sampler: Literal["repeat_factor", "none"] = "repeat_factor"
    sampler_threshold: Fraction = 0.01
    sampler_cap: Annotated[float, Field(ge=1)] = 10.0
    augment: AugmentSettings = AugmentSettings()
    #: where the random affine and CLAHE run: in the loader's workers (per image, OpenCV) or on the training device
    #: (per batch, after the copy), for a GPU whose loader cores cannot keep up (cxrlt.training.augment)
    augment_on: Literal["loader", "device"] = "loader"
    #: loader worker processes; ``auto``: this process's share of the usable CPUs, less one (cxrlt.machine)
    num_workers: Annotated[int, Field(ge=0)] | Literal["auto"] = 0
    seed: int = 0
    amp: bool = True
    #: the step's speed on a GPU (cxrlt.training.step): NHWC layout, torch.compile mode, fused AdamW, and steps
    #: between host reads of the running loss; they change how fast a step runs, not what it computes
    channels_last: bool = False
    compile: Literal["none", "default", "reduce-overhead", "max-autotune"] = "none"
    fused_optimizer: bool = False
    log_every: PositiveInt = 1
    #: checkpoint selection: validation mAP, or seed 000's "mAP, mAUC and BCE on the augmented validation set"
    select_on: Literal["mAP", "mAP+mAUC-BCE"] = "mAP"
    #: per-network settings, keyed by kind (``pcam``), view (``lateral``) or both (``lateral/pcam``); applied in that
    #: order, the most specific last
    overrides: dict[OverrideKey, TrainOverride] = {}


def _partial(model: type[BaseModel], name: str, exclude: tuple[str, ...]) -> type[BaseModel]:
    """The same fields, types and ranges as ``model``, each optional (None = not overridden)."""
    fields = {k: ((Annotated[f.annotation, *f.metadata] if f.metadata else f.annotation) | None, None)
              for k, f in model.model_fields.items() if k not in exclude}
    return create_model(name, __base__=_Strict, __doc__=f"Any subset of {model.__name__}'s keys.", **fields)


#: per-network changes to ``train``: any subset of its keys, validated like them
TrainOverride = _partial(TrainConfig, "TrainOverride", exclude=("overrides",))
TrainConfig.model_rebuild()


class InferenceConfig(_Strict):
    #: ``medium`` = identity, flip, +-5 deg, zoom 1.1 and 0.9 (HPH's set)
    tta: Literal["none", "flip", "medium"] = "flip"
    #: average TTA views on logits (seed 000) or on probabilities (HPH)
    tta_merge: Literal["logit", "probability"] = "logit"
    normal_gate_alpha: Annotated[float, Field(ge=0)] | None = None
    #: the export step also writes every network as a torch.export program (programs/<name>.pt2 in the bundle),
    #: which ``serve build --onnx-runtime aoti`` compiles with AOTInductor for the serving GPU
    export_programs: bool = False


class EnsembleConfig(_Strict):
    grid_step: Annotated[float, Field(gt=0, le=1)] = 0.05
    #: weighted sum of member logits then sigmoid (seed 000), or weighted mean of member probabilities (HPH)
    combine: Literal["logit", "probability"] = "logit"
    #: fixed raw member weights, normalised (HPH: 1.0 : 1.5); null = grid search on validation mAP
    weights: dict[str, PositiveFloat] | None = None
    #: per-class calibration of the ensemble, fitted on validation after combining: ``platt`` (slope and bias),
    #: ``temperature`` (slope only) or ``none``. Monotonic per class: AP and AUROC are unchanged.
    calibration: Literal["none", "platt", "temperature"] = "platt"
    #: with a router: also train mixed (all-view) members, a baseline for the projection-aware ensemble and the
    #: fallback for a view without members. Off saves half the member training (the tiny demo profile).
    mixed_members: bool = True


class TinyCLIPVision(_Strict):
    """``layers`` as 4 stage depths: a ModifiedResNet tower; as one number: a ViT tower (the ViT-B/L-14 layout)."""

    layers: tuple[PositiveInt, PositiveInt, PositiveInt, PositiveInt] | PositiveInt = (1, 1, 1, 1)
    width: PositiveInt = 32
    patch_size: PositiveInt = 16
    head_width: PositiveInt = 64


class TinyCLIPText(_Strict):
    context_length: PositiveInt = 48
    width: PositiveInt = 128
    heads: PositiveInt = 4
    layers: PositiveInt = 3


class ASLSettings(_Strict):
    gamma_neg: Annotated[float, Field(ge=0)] = 4
    gamma_pos: Annotated[float, Field(ge=0)] = 0
    clip: Annotated[float, Field(ge=0, lt=1)] = 0.05


class ZeroShotConfig(_Optimisation):
    """Task 2 CLIP. ``model``: ``tiny`` (small conv-tower CLIP, CPU) or an open_clip architecture name
    (``ViT-B-32-quickgelu`` for CheXzero, ``ViT-L-14`` ...), whose image size and context length come from
    open_clip's own model config."""

    model: str = "tiny"
    pretrained: str | None = Field(default=None, description="open_clip tag, hf-hub:ORG/NAME, weight file/URI or "
                                                             "mirror name")
    checkpoint_keys: CheckpointKeys | None = None
    #: false: training-free (HPH): the pretrained CLIP scores the prompts as it is, nothing is fine-tuned
    train: bool = True
    image_size: PositiveInt = 64
    embed_dim: PositiveInt = 128
    vision: TinyCLIPVision = TinyCLIPVision()
    text: TinyCLIPText = TinyCLIPText()
    input: InputConfig = InputConfig()
    bank: Literal["clinical", "synthetic"] = "synthetic"
    #: the zero-shot fine-tune's training labels (seed 000 sec. 5.2: physician-verified)
    label_source: LabelSource = "all"
    alpha: Annotated[float, Field(ge=0)] = 1.5
    asl: ASLSettings = ASLSettings()
    #: the ASL branch's class logits are exp(s) * cos + b with s and b learned; their starting values (exp(s), b)
    asl_scale_init: PositiveFloat = 10.0
    asl_bias_init: float = -2.0
    #: contrastive targets: ``soft`` = images whose label sets are identical are matches (label-synthesised reports
    #: repeat); ``hard`` = CLIP's one-hot InfoNCE (each image matches its own report only)
    contrastive_targets: Literal["soft", "hard"] = "soft"
    #: ``platt``: one slope and bias fitted on the known classes' validation scores and applied to the unseen ones;
    #: ``none``: sigmoid(sigmoid_scale * mean cosine) served as it is (HPH)
    calibration: Literal["platt", "none"] = "platt"
    epochs: PositiveInt = 20
    batch_size: PositiveInt = 64
    cosine_t_max: PositiveInt | None = Field(default=None, description="cosine period in epochs; null = epochs")
    ema_decay: Annotated[float, Field(ge=0, lt=1)] = 0.999
    prompts: Literal["names", "descriptions", "hybrid"] = "hybrid"
    scoring: Literal["sigmoid", "softmax_pn"] = "sigmoid"
    sigmoid_scale: PositiveFloat = 5.0
    tta: Literal["none", "flip", "medium"] = "none"
    augment: AugmentSettings = AugmentSettings(flip_p=0.0, rotate_deg=5, scale=(0.95, 1.05), clahe_p=0.0)
    seed: int = 0
    num_workers: Annotated[int, Field(ge=0)] | Literal["auto"] = 0
    #: NHWC weights and inputs for a convolutional image tower (cxrlt.training.step): what it computes is unchanged
    channels_last: bool = False

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str) -> str:
        if v == "tiny":
            return v
        import open_clip

        if v not in open_clip.list_models():
            raise InvalidInputError(f"unknown zero-shot model {v!r}: 'tiny' or an open_clip model name such as "
                                    "ViT-B-32-quickgelu (CheXzero) or ViT-L-14")
        return v

    def resolved(self) -> dict:
        """Settings with the architecture's own image size and context length filled in."""
        out = self.model_dump(mode="json")
        if self.model == "tiny":
            out["context_length"] = self.text.context_length
        else:
            import open_clip

            arch = open_clip.get_model_config(self.model)
            size = arch["vision_cfg"]["image_size"]
            out["image_size"] = int(size[0] if isinstance(size, list | tuple) else size)
            out["context_length"] = int(arch["text_cfg"].get("context_length", 77))
        out["preprocess"] = self.input.contract(out["image_size"]).to_dict()
        return out


class GateConfig(_Strict):
    """The evaluation gate a candidate must pass before it is registered (the pipeline reads it from here)."""

    min_map: Annotated[float, Field(ge=0, le=1)] = 0.1
    min_mauroc: Annotated[float, Field(ge=0, le=1)] = 0.75
    #: on the calibrated output
    max_ece: Annotated[float, Field(ge=0, le=1)] = 0.15
    #: zero-shot unseen mAP over its chance level (the unseen classes' mean prevalence); 0 = no zero-shot check
    min_unseen_lift: Annotated[float, Field(ge=0)] = 1.5
    #: promotion, in every subgroup (sex, age band, projection) with at least subgroup_min_images images and
    #: subgroup_min_positive_labels positive labels: the 95 % CI low of challenger - champion subgroup_metric
    #: (paired, stratified bootstrap) must be >= -subgroup_margin, and the challenger's mECE <= subgroup_max_ece
    subgroup_metric: Literal["mAUROC", "mAP"] = "mAUROC"
    subgroup_margin: Annotated[float, Field(ge=0, le=1)] = 0.02
    subgroup_max_ece: Annotated[float, Field(ge=0, le=1)] = 0.2
    subgroup_min_images: Annotated[int, Field(ge=1)] = 100
    subgroup_min_positive_labels: Annotated[int, Field(ge=1)] = 50
    #: promotion, from the challenger's shadow scoring against the champion on served traffic (``cxrlt registry
    #: promote --shadow-prometheus``): at least shadow_min_items compared items (0: not required), and for every
    #: known finding a flip rate at the operating threshold <= shadow_max_flip_rate and a score correlation >=
    #: shadow_min_correlation, over the last shadow_window
    shadow_min_items: Annotated[int, Field(ge=0)] = 0
    shadow_max_flip_rate: Annotated[float, Field(ge=0, le=1)] = 0.1
    shadow_min_correlation: Annotated[float, Field(ge=-1, le=1)] = 0.8
    shadow_window: Annotated[str, Field(pattern=r"^\d+[smhdw]$")] = "7d"

    def shadow_requirement(self):
        """The promotion's shadow rule (:class:`cxrlt.shadow.ShadowRequirement`) from these settings."""
        from cxrlt.shadow import ShadowRequirement

        return ShadowRequirement(self.shadow_min_items, self.shadow_max_flip_rate, self.shadow_min_correlation)

    def subgroup_gate(self):
        """The promotion's subgroup rule (:class:`cxrlt.subgroups.SubgroupGate`) from these settings."""
        from cxrlt.subgroups import SubgroupGate

        return SubgroupGate(self.subgroup_metric, self.subgroup_margin, self.subgroup_max_ece,
                            self.subgroup_min_images, self.subgroup_min_positive_labels)


class MonitorConfig(_Strict):
    """Drift monitoring of the served traffic (``cxrlt monitor check`` and the monitor pipeline): a feature drifts
    when its chi-square p-value is below p_value (Bonferroni over the features) and its PSI is at least min_psi;
    the training pipeline is started when the input mix drifts or at least retrain_share of the findings do."""

    window: Annotated[str, Field(pattern=r"^\d+[smhdw]$")] = "6h"
    p_value: Annotated[float, Field(gt=0, lt=1)] = 0.01
    #: 0.1-0.2 is the usual "moderate shift" band of the population stability index, over 0.2 a large one
    min_psi: Annotated[float, Field(gt=0)] = 0.2
    min_items: Annotated[int, Field(ge=1)] = 200
    retrain_share: Annotated[float, Field(gt=0, le=1)] = 0.2

    def settings(self):
        """The judgement's settings (:class:`cxrlt.drift.DriftSettings`)."""
        from cxrlt.drift import DriftSettings

        return DriftSettings(self.p_value, self.min_psi, self.min_items, self.retrain_share)


class Profile(_Strict):
    profile: str = "custom"
    weights_mirror: str | None = Field(default=None, description="s3:// prefix of a weights mirror")
    data: DataConfig = DataConfig()
    models: ModelsConfig | None = Field(default=None, description="Task 1 networks; a zero-shot-only profile omits it")
    train: TrainConfig = TrainConfig()
    inference: InferenceConfig = InferenceConfig()
    ensemble: EnsembleConfig = EnsembleConfig()
    zeroshot: ZeroShotConfig = ZeroShotConfig()
    gate: GateConfig = GateConfig()
    monitor: MonitorConfig = MonitorConfig()

    @model_validator(mode="after")
    def _sizes(self):
        if self.data.cache_size < self.data.image_size:
            raise InvalidInputError(f"data.cache_size ({self.data.cache_size}) is smaller than data.image_size "
                                    f"({self.data.image_size}): the cache would be upsampled")
        return self


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<top level>"
        msg = "unknown key (not in the schema; misspelt?)" if err["type"] == "extra_forbidden" else err["msg"]
        if err["type"] == "missing" and key.endswith("pretrained"):
            msg += " (write `pretrained: null` for random initialisation)"
        lines.append(f"  {key}: {msg}")
    return f"invalid profile {source}:\n" + "\n".join(lines)


def load_profile(path: str | Path | dict | Profile) -> Profile:
    """Read and validate a profile YAML (or a dict); raises :class:`ConfigError` naming the file and keys."""
    if isinstance(path, Profile):
        return path
    if isinstance(path, dict):
        raw, source = path, "<dict>"
    else:
        path = Path(path)
        if not path.exists():
            raise NotFoundError(f"config {path} not found (profiles live in configs/)")
        raw, source = yaml.safe_load(path.read_text()) or {}, str(path)
    try:
        return models_schema()[1].model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None


def load_config(path: str | Path | dict | Profile) -> dict:
    """The validated profile as a plain dict (every default filled in)."""
    return load_profile(path).model_dump(mode="json")


def train_settings(cfg: dict, member: str) -> dict:
    """Training settings for one network (``router``, a kind such as ``pcam``, or ``<view>/<kind>``): ``train`` with
    the overrides of its kind, then of its view, then of ``<view>/<kind>`` applied."""
    view, _, kind = member.rpartition("/")
    overrides = cfg["train"].get("overrides") or {}
    settings = dict(cfg["train"])
    for key in (kind, view, member) if view else (kind,):
        settings.update({k: v for k, v in (overrides.get(key) or {}).items() if v is not None})
    return settings


def task1_preprocess(cfg: dict) -> PreprocessConfig:
    """The Task 1 networks' preprocessing contract from a validated profile dict."""
    return InputConfig.model_validate(cfg["data"]["input"]).contract(int(cfg["data"]["image_size"]))


def zeroshot_settings(cfg: dict) -> dict:
    """The zero-shot section with the architecture's image size, context length and contract filled in."""
    return ZeroShotConfig.model_validate(cfg["zeroshot"]).resolved()


def pipeline_jobs(cfg: dict) -> list[dict]:
    """The training pipeline's (view, member) jobs for a profile: with a router, every member per view (frontal,
    lateral, and mixed unless ``ensemble.mixed_members`` is off; ``pcam`` also trains ``cait`` on its trunk);
    without one (HPH), the mixed members only."""
    models = cfg["models"] or {}
    if not models.get("router"):
        views: tuple[str, ...] = ("mixed",)
    else:
        views = ("frontal", "lateral", "mixed") if cfg["ensemble"]["mixed_members"] else ("frontal", "lateral")
    members = [k for k in job_kinds() if models.get(k)]
    return [{"view": v, "member": m} for v in views for m in members]


def config_hash(cfg: dict | Profile) -> str:
    """Hash of the validated profile (defaults filled in), so equal profiles hash equally however written."""
    return hashlib.sha256(json.dumps(load_config(cfg), sort_keys=True, default=str).encode()).hexdigest()[:16]
