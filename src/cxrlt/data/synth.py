"""Synthetic CXR-LT: a generated dataset in exactly the challenge's file format, for tests and the demo.

No PadChest data can be downloaded here, so cxrlt generates radiograph-like images whose structure makes every
method measurable:

- frontal and lateral views have different anatomy (a router can learn the projection);
- each of the 36 findings is a distinct pattern composed from one attribute vocabulary (location x shape x density
  x extent) and has a description in the same words, so unseen findings are recognisable from text alone;
- prevalence is long-tailed (head / medium / tail bands all present), findings co-occur, patients have several
  studies and views, images carry noise, a narrow 16-bit range and burned-in markers (like PadChest);
- unseen findings are *rendered* in training images but never labelled there, as in the challenge;
- patients have PadChest's sex and age mix, and age and sex change the prevalence of a few findings mildly
  (:data:`AGE_EFFECT_PER_DECADE`, :data:`SEX_EFFECT`), so subgroup results differ as they would on real data.

Everything is a deterministic function of the seed: each image draws from its own generator seeded by
``(seed, index)``, so the result does not depend on the number of worker processes.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from cxrlt.data.images import write_png16
from cxrlt.data.tables import DEV_LABELS_CSV, IMAGES_DIR, PADCHEST_METADATA_CSV, TEST_LABELS_CSV, TRAINING_CSV
from cxrlt.labels import KNOWN_CLASSES, NORMAL, TRAINING_META_COLUMNS, UNSEEN_CLASSES

log = logging.getLogger(__name__)

LOCATIONS = ("upper left", "upper right", "lower left", "lower right", "central", "spine")
SHAPES = ("round", "linear", "wedge", "diffuse", "curved")
DENSITIES = ("dense", "lucent")
EXTENTS = ("small", "large")

_LOCATION_PHRASES = {
    "upper left": "upper left lung",
    "upper right": "upper right lung",
    "lower left": "lower left lung",
    "lower right": "lower right lung",
    "central": "central mediastinum",
    "spine": "thoracic spine",
}
#: Description templates; index 0 is the canonical one. All use only the attribute words.
DESCRIPTION_TEMPLATES = (
    "{extent} {density} {shape} lesion in the {place}",
    "{density} {shape} pattern, {extent}, in the {place}",
    "in the {place}, a {extent} {shape} {density} area",
    "{place}: {extent} {density} {shape} finding",
)
NORMAL_REPORTS = ("no acute abnormality. clear lungs.", "normal chest radiograph without findings.")


@dataclass(frozen=True)
class FindingPattern:
    """How one finding looks in the synthetic world, in the shared attribute vocabulary."""

    location: str
    shape: str
    density: str
    extent: str

    def describe(self, template: int = 0) -> str:
        return DESCRIPTION_TEMPLATES[template % len(DESCRIPTION_TEMPLATES)].format(
            extent=self.extent, density=self.density, shape=self.shape, place=_LOCATION_PHRASES[self.location]
        )

    def descriptions(self) -> list[str]:
        return [self.describe(i) for i in range(len(DESCRIPTION_TEMPLATES))]


def _p(loc: str, shape: str, density: str, extent: str) -> FindingPattern:
    return FindingPattern(loc, shape, density, extent)


#: Attribute tuples of the 29 known abnormal findings (``Normal`` = none of them) and the 6 unseen ones.
#: Each unseen tuple differs from its nearest known tuple in 1-2 attributes, and every attribute value occurs in at
#: least two known findings, so the words of an unseen description were all seen in training text.
FINDING_PATTERNS: dict[str, FindingPattern] = {
    "aortic elongation": _p("central", "curved", "dense", "large"),
    "cardiomegaly": _p("central", "round", "dense", "large"),
    "pleural effusion": _p("lower left", "diffuse", "dense", "large"),
    "Nodule": _p("upper left", "round", "dense", "small"),
    "atelectasis": _p("lower left", "linear", "dense", "small"),
    "pleural thickening": _p("upper right", "linear", "dense", "large"),
    "aortic atheromatosis": _p("central", "curved", "dense", "small"),
    "Support Devices": _p("upper left", "linear", "dense", "large"),
    "alveolar pattern": _p("lower right", "diffuse", "dense", "large"),
    "fracture": _p("upper left", "linear", "lucent", "small"),
    "Hernia": _p("lower left", "round", "lucent", "large"),
    "Emphysema": _p("upper left", "diffuse", "lucent", "large"),
    "azygos lobe": _p("upper right", "curved", "dense", "small"),
    "Hydropneumothorax": _p("lower right", "wedge", "lucent", "large"),
    "Kyphosis": _p("spine", "curved", "lucent", "large"),
    "Mass": _p("lower right", "round", "dense", "large"),
    "Pneumothorax": _p("upper right", "wedge", "lucent", "large"),
    "Subcutaneous Emphysema": _p("lower left", "diffuse", "lucent", "small"),
    "pneumoperitoneo": _p("lower right", "curved", "lucent", "large"),
    "vascular hilar enlargement": _p("central", "round", "dense", "small"),
    "vertebral degenerative changes": _p("spine", "linear", "dense", "small"),
    "hyperinflated lung": _p("upper right", "diffuse", "lucent", "large"),
    "interstitial pattern": _p("lower right", "diffuse", "dense", "small"),
    "central venous catheter": _p("upper right", "linear", "dense", "small"),
    "hypoexpansion": _p("lower left", "wedge", "dense", "small"),
    "bronchiectasis": _p("upper left", "round", "lucent", "small"),
    "hemidiaphragm elevation": _p("lower left", "curved", "dense", "large"),
    "sternotomy": _p("central", "linear", "dense", "large"),
    "calcified densities": _p("upper right", "round", "dense", "small"),
    # unseen (Task 2)
    "Scoliosis": _p("spine", "curved", "dense", "large"),
    "Osteopenia": _p("spine", "diffuse", "lucent", "large"),
    "Bulla": _p("upper right", "round", "lucent", "large"),
    "Infarction": _p("lower right", "wedge", "dense", "large"),
    "Adenopathy": _p("central", "diffuse", "dense", "small"),
    "goiter": _p("central", "wedge", "dense", "large"),
}

ABNORMAL_KNOWN = tuple(c for c in KNOWN_CLASSES if c != NORMAL)


def _long_tail(n: int, top: float, bottom: float) -> np.ndarray:
    return top * (bottom / top) ** (np.arange(n) / (n - 1))


#: Base prevalence per finding (before co-occurrence): geometric from 16 % to 0.3 % in CSV order (which is roughly
#: frequency-descending in the real data), giving about 4 head, 16 medium and 9 tail classes.
BASE_PREVALENCE: dict[str, float] = dict(zip(ABNORMAL_KNOWN, _long_tail(len(ABNORMAL_KNOWN), 0.16, 0.003), strict=True))
BASE_PREVALENCE.update(
    {"Scoliosis": 0.05, "Osteopenia": 0.04, "Bulla": 0.03, "Infarction": 0.03, "Adenopathy": 0.04, "goiter": 0.025}
)
#: ``(a, b, p)``: when ``a`` is present, ``b`` is added with probability ``p`` (clinically plausible pairs).
CO_OCCURRENCE: tuple[tuple[str, str, float], ...] = (
    ("central venous catheter", "Support Devices", 0.85),
    ("sternotomy", "Support Devices", 0.3),
    ("pleural effusion", "atelectasis", 0.3),
    ("cardiomegaly", "vascular hilar enlargement", 0.25),
    ("aortic elongation", "aortic atheromatosis", 0.35),
    ("Emphysema", "hyperinflated lung", 0.4),
    ("Hydropneumothorax", "pleural effusion", 0.5),
    ("Pneumothorax", "Subcutaneous Emphysema", 0.2),
    ("Kyphosis", "vertebral degenerative changes", 0.4),
    ("Osteopenia", "fracture", 0.15),
    ("Bulla", "Emphysema", 0.4),
)
#: Findings that persist across a patient's studies (chronic or post-surgical).
CHRONIC = frozenset(
    {"Kyphosis", "Scoliosis", "Osteopenia", "sternotomy", "aortic elongation", "calcified densities", "azygos lobe",
     "vertebral degenerative changes", "goiter", "Emphysema", "Hernia"}
)
#: Fraction of positive training labels that the report-derived labeller missed (label noise; evaluation is clean).
TRAIN_LABEL_MISS_RATE = 0.02
#: PadChest's ``MethodLabel``: 24.3 % of images were labelled by physicians, the rest by an RNN on the report
#: (shared/notes/padchest_facts.md). The generator marks the same share as ``Physician``.
PHYSICIAN_LABEL_RATE = 0.243
SPLIT_FRACTIONS = {"train": 0.7, "dev": 0.15, "test": 0.15}
#: Age at a patient's first study, by band (PadChest's shares by image, shared/notes/padchest_facts.md: <18 4.5 %,
#: 18-39 12.0 %, 40-59 28.9 %, 60-79 41.3 %, 80+ 13.3 %); uniform within a band. Sex: F and M about equally
#: (PadChest: M 80,920, F 79,919), a rare ``O``.
AGE_BANDS_AT_FIRST_STUDY: tuple[tuple[int, int, float], ...] = (
    (1, 18, 0.045), (18, 40, 0.12), (40, 60, 0.289), (60, 80, 0.413), (80, 101, 0.133))
SEX_SHARES = {"F": 0.497, "M": 0.5025, "O": 0.0005}
#: A mild, documented effect of age and sex on prevalence, so subgroup numbers differ the way they do in real
#: chest radiographs: the base prevalence of each finding below is multiplied by ``per_decade ** ((age - 60) / 10)``
#: (degenerative and vascular findings rise with age; a 30-year-old has about 0.6x, an 85-year-old about 1.6x the
#: rate of a 60-year-old for ``per_decade`` 1.2) and by the sex factor (osteopenia and goitre more often in women,
#: emphysema more often in men). Findings not listed are independent of age and sex.
AGE_EFFECT_PER_DECADE: dict[str, float] = {
    "aortic elongation": 1.2, "aortic atheromatosis": 1.2, "vertebral degenerative changes": 1.2,
    "Kyphosis": 1.15, "cardiomegaly": 1.15, "calcified densities": 1.1, "Emphysema": 1.1, "Osteopenia": 1.2,
}
SEX_EFFECT: dict[str, dict[str, float]] = {
    "F": {"Osteopenia": 1.5, "goiter": 1.5, "Scoliosis": 1.2, "Emphysema": 0.8},
    "M": {"Osteopenia": 0.67, "goiter": 0.67, "Scoliosis": 0.85, "Emphysema": 1.25},
}


#: PadChest's projection mix (shared/notes/padchest_facts.md): per study one frontal image (PA 57.0 %, AP_horizontal
#: 8.9 %, AP 2.8 % of all images) and a lateral one for most PA studies (L 30.8 %). COSTAL, EXCLUDE and UNK images
#: (0.4 %, 11 and 8 images in PadChest) must be excluded by the split; their rates are raised here so that a few
#: hundred synthetic images already contain some.
FRONTAL_PROJECTIONS = {"PA": 0.57, "AP_horizontal": 0.089, "AP": 0.028}
EXCLUDED_PROJECTIONS = {"COSTAL": 0.006, "EXCLUDE": 0.003, "UNK": 0.003}
#: P(a lateral image | frontal projection): PA studies mostly come as PA + L pairs, bedside AP ones rarely.
LATERAL_GIVEN_FRONTAL = {"PA": 0.52, "AP_horizontal": 0.05, "AP": 0.1}
#: Studies per patient: PadChest has mean 1.63, median 1, max 116 (a long tail of frequently imaged patients);
#: a Zipf law with exponent 2.6 has mean ~1.66 and median 1. The cap scales with the dataset (116 studies is 0.1 %
#: of PadChest's; uncapped, one patient could fill half of a small synthetic dev split).
STUDIES_ZIPF_A, MAX_STUDIES = 2.6, 116


def max_studies(n_images: int) -> int:
    """Studies-per-patient cap for a dataset of ``n_images`` images: PadChest's 116 at its size, less when smaller."""
    return int(min(MAX_STUDIES, max(5, n_images // 250)))
#: BitsStored: 12 bits for 89.6 % of PadChest images, 10 bits for the rest; both stored in 16-bit PNGs.
TEN_BIT_RATE = 0.104
#: Columns / rows: PadChest images range from 612 to 4280 columns around a median near square.
WIDTH_RANGE = (0.8, 1.15)
FIRST_DAY, LAST_DAY = np.datetime64("2007-05-01"), np.datetime64("2017-11-30")


@dataclass(frozen=True)
class SynthConfig:
    n_images: int = 1000
    size: int = 256
    seed: int = 0
    faulty: bool = False
    workers: int = 1


# ----------------------------------------------------------------------------------------------------------- layout
@dataclass
class _ImageSpec:
    index: int
    image_id: str
    patient_id: str
    study_id: str
    study_date: str
    projection: str
    split: str
    findings: tuple[str, ...]
    anatomy_seed: int
    bits_stored: int
    sex: str
    birth_year: int
    height: int = 0
    width: int = 0


def _digits(rng: np.random.Generator, n: int) -> str:
    return "".join(map(str, rng.integers(0, 10, n)))


def prevalence_factor(finding: str, age: int, sex: str) -> float:
    """How much more often than its base rate ``finding`` occurs at ``age`` (years) in sex ``sex``."""
    factor = AGE_EFFECT_PER_DECADE.get(finding, 1.0) ** ((age - 60) / 10)
    return factor * SEX_EFFECT.get(sex, {}).get(finding, 1.0)


def _sample_findings(rng: np.random.Generator, scale: float = 1.0, age: int = 60, sex: str = "O") -> set[str]:
    names = list(BASE_PREVALENCE)
    probs = np.array([BASE_PREVALENCE[n] * prevalence_factor(n, age, sex) for n in names]) * scale
    present = {n for n, hit in zip(names, rng.random(len(names)) < probs, strict=True) if hit}
    for a, b, p in CO_OCCURRENCE:
        if a in present and rng.random() < p:
            present.add(b)
    return present


def _study_views(rng: np.random.Generator) -> list[str]:
    """The projections of one study: a frontal image (or an excluded one) and often a lateral."""
    kinds = {**FRONTAL_PROJECTIONS, **EXCLUDED_PROJECTIONS}
    names, weights = list(kinds), np.array(list(kinds.values()))
    first = str(rng.choice(names, p=weights / weights.sum()))
    lateral = first in LATERAL_GIVEN_FRONTAL and rng.random() < LATERAL_GIVEN_FRONTAL[first]
    return [first, "L"] if lateral else [first]


def _study_dates(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` study dates of one patient, in order, spread over months to years inside PadChest's 2007-2017 range."""
    span = int((LAST_DAY - FIRST_DAY).astype(int))
    day = int(rng.integers(0, span))
    days = [day]
    for _ in range(n - 1):
        day = min(span, day + 1 + int(rng.exponential(240)))
        days.append(day)
    return [str(FIRST_DAY + np.timedelta64(d, "D")).replace("-", "") for d in days]


def _demographics(rng: np.random.Generator) -> tuple[str, int]:
    """One patient's sex and age at the first study (:data:`SEX_SHARES`, :data:`AGE_BANDS_AT_FIRST_STUDY`)."""
    sexes, shares = list(SEX_SHARES), np.array(list(SEX_SHARES.values()))
    sex = str(rng.choice(sexes, p=shares / shares.sum()))
    weights = np.array([w for _, _, w in AGE_BANDS_AT_FIRST_STUDY])
    low, high, _ = AGE_BANDS_AT_FIRST_STUDY[int(rng.choice(len(weights), p=weights / weights.sum()))]
    return sex, int(rng.integers(low, high))


def _plan(cfg: SynthConfig) -> list[_ImageSpec]:
    """Patients -> studies (over years) -> views, until ``n_images`` images; patients are assigned to one split."""
    rng = np.random.default_rng([cfg.seed, 0])
    specs: list[_ImageSpec] = []
    splits, weights = list(SPLIT_FRACTIONS), np.array(list(SPLIT_FRACTIONS.values()))
    while len(specs) < cfg.n_images:
        patient_id = _digits(rng, 36)
        split = str(rng.choice(splits, p=weights))
        anatomy_seed = int(rng.integers(2**31))
        n_studies = int(min(max_studies(cfg.n_images), rng.zipf(STUDIES_ZIPF_A)))
        dates = _study_dates(rng, n_studies)
        sex, age = _demographics(rng)
        birth_year = int(dates[0][:4]) - age
        findings = _sample_findings(rng, 1.0, age, sex)
        for study, date in enumerate(dates):
            if study:
                # sorted: a set iterates in an order that changes with PYTHONHASHSEED, and each draw consumes the rng
                kept = {f for f in sorted(findings) if f in CHRONIC or rng.random() < 0.5}
                findings = kept | _sample_findings(rng, 0.5, int(date[:4]) - birth_year, sex)
            stem, study_id = _digits(rng, 38), _digits(rng, 32)
            bits = 10 if rng.random() < TEN_BIT_RATE else 12
            for k, projection in enumerate(_study_views(rng)):
                if len(specs) == cfg.n_images:
                    break
                image_id = f"{stem}_{k:02d}-{_digits(rng, 3)}-{_digits(rng, 3)}.png"
                # rows = size (the cache and tests rely on it); columns vary like real detectors and cassettes
                width = int(round(cfg.size * rng.uniform(*WIDTH_RANGE)))
                specs.append(_ImageSpec(len(specs), image_id, patient_id, study_id, date, projection, split,
                                        tuple(sorted(findings)), anatomy_seed, bits, sex, birth_year, cfg.size,
                                        width))
            if len(specs) == cfg.n_images:
                break
    return specs


# -------------------------------------------------------------------------------------------------------- rendering
_FRONTAL_CENTRES = {
    "upper left": (0.68, 0.36), "upper right": (0.32, 0.36), "lower left": (0.68, 0.6),
    "lower right": (0.32, 0.6), "central": (0.5, 0.42), "spine": (0.5, 0.55),
}
_LATERAL_CENTRES = {
    "upper left": (0.42, 0.34), "upper right": (0.6, 0.34), "lower left": (0.42, 0.6),
    "lower right": (0.6, 0.6), "central": (0.45, 0.45), "spine": (0.8, 0.5),
}


def _ellipse(canvas: np.ndarray, centre, axes, value: float, angle: float = 0.0) -> None:
    h, w = canvas.shape
    cv2.ellipse(canvas, (int(centre[0] * w), int(centre[1] * h)), (max(1, int(axes[0] * w)), max(1, int(axes[1] * h))),
                angle, 0, 360, value, -1, cv2.LINE_AA)


def _anatomy(view: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    j = lambda s=0.02: float(rng.normal(0, s))  # noqa: E731 - tiny jitter helper
    canvas = np.full((h, w), 0.04, np.float32)
    if view == "lateral":
        _ellipse(canvas, (0.5 + j(), 0.55 + j()), (0.4 + j(), 0.5), 0.55)
        _ellipse(canvas, (0.5 + j(), 0.45 + j()), (0.26 + j(), 0.3 + j()), 0.22)
        x0 = int((0.78 + j(0.01)) * w)
        cv2.rectangle(canvas, (x0, int(0.12 * h)), (x0 + max(2, int(0.08 * w)), h), 0.78, -1)
        for y in np.arange(0.15, 1.0, 0.065):  # vertebral gaps
            cv2.line(canvas, (x0, int(y * h)), (x0 + int(0.08 * w), int(y * h)), 0.45, max(1, h // 128))
        _ellipse(canvas, (0.38 + j(), 0.6 + j()), (0.15 + j(), 0.12 + j()), 0.68)
        cv2.line(canvas, (int(0.16 * w), int(0.22 * h)), (int(0.2 * w), int(0.62 * h)), 0.82, max(1, w // 64))
    else:
        _ellipse(canvas, (0.5 + j(), 0.56 + j()), (0.43 + j(), 0.5), 0.55)
        for cx in (0.32, 0.68):
            _ellipse(canvas, (cx + j(), 0.45 + j()), (0.14 + j(0.01), 0.27 + j()), 0.22)
        cv2.rectangle(canvas, (int((0.47 + j(0.005)) * w), int(0.08 * h)), (int((0.53 + j(0.005)) * w), h), 0.74, -1)
        _ellipse(canvas, (0.56 + j(), 0.62 + j()), (0.13 + j(0.01), 0.1 + j(0.01)), 0.7)
        for sign in (-1, 1):
            p1 = (int((0.5 + sign * 0.05) * w), int((0.24 + j(0.01)) * h))
            p2 = (int((0.5 + sign * 0.27) * w), int((0.19 + j(0.01)) * h))
            cv2.line(canvas, p1, p2, 0.82, max(1, w // 60), cv2.LINE_AA)
    return canvas


#: Finding radius as a fraction of the image side. Findings are drawn large enough to be visible at 64 px, the
#: demo's input side (a synthetic choice: real small findings need the paper profile's 512 px).
RADIUS = {"large": 0.11, "small": 0.075}


def _finding_mask(pattern: FindingPattern, view: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A finding's footprint. A lateral view projects the chest sideways: positions follow the lateral anatomy and
    shapes are compressed front-to-back (x), so a view specialist sees a consistently different picture."""
    centres = _LATERAL_CENTRES if view == "lateral" else _FRONTAL_CENTRES
    cx, cy = centres[pattern.location]
    side = min(h, w)
    cx, cy = (cx + rng.normal(0, 0.02)) * w, (cy + rng.normal(0, 0.02)) * h
    r = side * RADIUS[pattern.extent] * rng.uniform(0.85, 1.15)
    vertical = pattern.location == "spine"
    angle = (90.0 if vertical else 0.0) + rng.uniform(-25, 25)
    mask = np.zeros((h, w), np.float32)
    c = (int(cx), int(cy))
    thick = max(2, int(r / 2.5))
    if pattern.shape == "round":
        cv2.circle(mask, c, max(1, int(r)), 1.0, -1, cv2.LINE_AA)
    elif pattern.shape == "linear":
        t = np.deg2rad(angle)
        d = np.array([np.cos(t), np.sin(t)]) * 1.6 * r
        cv2.line(mask, (int(cx - d[0]), int(cy - d[1])), (int(cx + d[0]), int(cy + d[1])), 1.0,
                 max(2, int(r / 3)), cv2.LINE_AA)
    elif pattern.shape == "wedge":
        t = np.deg2rad(angle)
        tip = np.array([cx, cy]) + np.array([np.cos(t), np.sin(t)]) * 1.3 * r
        base = np.array([cx, cy]) - np.array([np.cos(t), np.sin(t)]) * 1.0 * r
        normal = np.array([-np.sin(t), np.cos(t)]) * 1.1 * r
        pts = np.array([tip, base + normal, base - normal], np.int32)
        cv2.fillConvexPoly(mask, pts, 1.0, cv2.LINE_AA)
    elif pattern.shape == "diffuse":
        axes = (int(1.5 * r), int(1.2 * r)) if not vertical else (int(0.7 * r), int(2.2 * r))
        cv2.ellipse(mask, c, axes, 0, 0, 360, 1.0, -1)
        noise = cv2.GaussianBlur(rng.random((h, w), dtype=np.float32), (0, 0), max(1.0, r / 6))
        noise = (noise - noise.min()) / max(1e-6, float(np.ptp(noise)))
        mask *= 0.35 + 0.65 * noise
    else:  # curved
        axes = (int(1.2 * r), int(0.7 * r)) if not vertical else (int(0.5 * r), int(2.0 * r))
        cv2.ellipse(mask, c, axes, angle - (90.0 if vertical else 0.0), 200, 340, 1.0, thick, cv2.LINE_AA)
    if view == "lateral" and not vertical:  # seen from the side: thinner front-to-back
        squash = cv2.getRotationMatrix2D((cx, cy), 0.0, 1.0)
        squash[0, 0], squash[0, 2] = 0.6, 0.4 * cx
        mask = cv2.warpAffine(mask, squash, (w, h))
    return cv2.GaussianBlur(mask, (0, 0), max(0.6, r / 8))


def render(spec: _ImageSpec, size: int, index_seed: tuple[int, int]) -> np.ndarray:
    """Render one radiograph: 10- or 12-bit values in a 16-bit PNG with a narrow, image-dependent window, noise and
    (often) a burned-in marker at the top of the stored range, as in PadChest."""
    rng = np.random.default_rng(index_seed)
    anatomy_rng = np.random.default_rng([spec.anatomy_seed, 0 if spec.projection != "L" else 1])
    view = "lateral" if spec.projection == "L" else "frontal"
    h = spec.height or size
    w = spec.width or int(round(size * rng.uniform(*WIDTH_RANGE)))
    img = _anatomy(view, h, w, anatomy_rng)
    overlap = 0.85 if view == "lateral" else 1.0  # both lungs superimpose in a lateral view: lower contrast
    for name in spec.findings:
        amplitude = rng.uniform(0.28, 0.45) * overlap * (1 if FINDING_PATTERNS[name].density == "dense" else -1)
        img += amplitude * _finding_mask(FINDING_PATTERNS[name], view, h, w, rng)
    img = cv2.GaussianBlur(img, (0, 0), 0.6 * size / 256)
    img = img * rng.uniform(0.9, 1.1) + rng.normal(0, 0.02, img.shape).astype(np.float32)
    top = 2**spec.bits_stored - 1
    lo, span = rng.uniform(0.05, 0.25) * top, rng.uniform(0.35, 0.6) * top
    pixels = np.clip(lo + np.clip(img, 0, 1.2) * span, 0, top)
    if rng.random() < 0.6:  # burned-in laterality marker at the top of the stored range, < 0.5 % of pixels
        m = max(2, size // 24)
        x0 = int(rng.uniform(0.03, 0.15) * w)
        pixels[int(0.04 * h) : int(0.04 * h) + m, x0 : x0 + m // 2] = top
    return pixels.astype(np.uint16)


def _render_job(args: tuple[_ImageSpec, int, int, str]) -> str:
    spec, size, seed, out_dir = args
    write_png16(Path(out_dir) / spec.image_id, render(spec, size, (seed, spec.index + 1)))
    return spec.image_id


# --------------------------------------------------------------------------------------------------------- the writer
def _label_frame(specs: list[_ImageSpec], classes: tuple[str, ...]) -> pd.DataFrame:
    rows = []
    for s in specs:
        present = set(s.findings)
        row = {c: int(c in present) for c in classes}
        if NORMAL in row:
            row[NORMAL] = int(not present)  # Normal = nothing at all was drawn (unseen findings included)
        rows.append(row)
    return pd.DataFrame(rows, columns=list(classes)).astype(np.int8)


#: The PadChest master CSV's columns that the generator fills, in the master file's order.
MASTER_COLUMNS = ("ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth",
                  "PatientSex_DICOM", "ViewPosition_DICOM", "Projection", "MethodProjection", "Pediatric",
                  "Modality_DICOM", "PhotometricInterpretation_DICOM", "BitsStored_DICOM", "Rows_DICOM",
                  "Columns_DICOM", "MethodLabel", "Labels")
_VIEW_POSITION = {"PA": "POSTEROANTERIOR", "L": "LATERAL", "AP": "ANTEROPOSTERIOR", "AP_horizontal": "ANTEROPOSTERIOR"}


def _master_table(specs: list[_ImageSpec], rng: np.random.Generator) -> pd.DataFrame:
    """Metadata in the PadChest master CSV's layout. ``Labels`` lists the *known* findings only (lower case, a Python
    list string, ``['normal']`` when there are none): unseen findings must not reach training through metadata."""
    known = set(KNOWN_CLASSES) - {NORMAL}
    rows = []
    for s in specs:
        labels = sorted(f.lower() for f in s.findings if f in known) or ["normal"]
        age = int(s.study_date[:4]) - s.birth_year
        rows.append({
            "ImageID": s.image_id, "ImageDir": s.index % 50, "StudyDate_DICOM": s.study_date, "StudyID": s.study_id,
            "PatientID": s.patient_id, "PatientBirth": float(s.birth_year), "PatientSex_DICOM": s.sex,
            "ViewPosition_DICOM": _VIEW_POSITION.get(s.projection, ""), "Projection": s.projection,
            "MethodProjection": "Manual review of DICOM fields", "Pediatric": "PED" if age < 18 else "",
            "Modality_DICOM": "CR" if rng.random() < 0.925 else "DX", "PhotometricInterpretation_DICOM": "MONOCHROME2",
            "BitsStored_DICOM": s.bits_stored, "Rows_DICOM": s.height, "Columns_DICOM": s.width,
            "MethodLabel": "Physician" if rng.random() < PHYSICIAN_LABEL_RATE else "RNN_model",
            "Labels": str(labels),
        })
    return pd.DataFrame(rows, columns=list(MASTER_COLUMNS))


def generate(out: str | Path, cfg: SynthConfig, progress: bool = True) -> dict:
    """Write the dataset to ``out`` and return a summary (also saved as ``synth_manifest.json``)."""
    out = Path(out)
    (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    specs = _plan(cfg)
    jobs = [(s, cfg.size, cfg.seed, str(out / IMAGES_DIR)) for s in specs]
    bar = tqdm(total=len(jobs), desc="synth images", unit="img", disable=not progress)
    if cfg.workers > 1:
        with ProcessPoolExecutor(cfg.workers) as pool:
            for _ in pool.map(_render_job, jobs, chunksize=16):
                bar.update()
    else:
        for job in jobs:
            _render_job(job)
            bar.update()
    bar.close()

    meta = _master_table(specs, np.random.default_rng([cfg.seed, 4]))
    meta.to_csv(out / PADCHEST_METADATA_CSV, index=False)

    noise_rng = np.random.default_rng([cfg.seed, 2])
    train = [s for s in specs if s.split == "train"]
    train_labels = _label_frame(train, KNOWN_CLASSES)
    missed = (train_labels.to_numpy() == 1) & (noise_rng.random(train_labels.shape) < TRAIN_LABEL_MISS_RATE)
    missed[:, KNOWN_CLASSES.index(NORMAL)] = False
    train_labels = train_labels.mask(missed, 0)
    train_df = pd.concat([meta.set_index("ImageID").loc[[s.image_id for s in train], ["StudyDate_DICOM", "PatientID"]]
                          .reset_index(), train_labels], axis=1)[list(TRAINING_META_COLUMNS) + list(KNOWN_CLASSES)]
    train_df.to_csv(out / TRAINING_CSV, index=False)
    for split, name in (("dev", DEV_LABELS_CSV), ("test", TEST_LABELS_CSV)):
        part = [s for s in specs if s.split == split]
        df = pd.concat([pd.DataFrame({"ImageID": [s.image_id for s in part]}),
                        _label_frame(part, KNOWN_CLASSES + UNSEEN_CLASSES)], axis=1)
        df.to_csv(out / name, index=False)

    studies = meta.groupby("PatientID")["StudyID"].nunique()
    defects = plant_defects(out, np.random.default_rng([cfg.seed, 3])) if cfg.faulty else []
    summary = {
        "generator": "cxrlt synthetic CXR-LT (synthetic data, not PadChest)",
        "config": asdict(cfg),
        "n_images": len(specs),
        "splits": {k: sum(s.split == k for s in specs) for k in SPLIT_FRACTIONS},
        "n_patients": int(meta["PatientID"].nunique()),
        "n_studies": int(meta["StudyID"].nunique()),
        "studies_per_patient": {"mean": round(float(studies.mean()), 3), "median": float(studies.median()),
                                "max": int(studies.max())},
        "projections": meta["Projection"].value_counts().to_dict(),
        "bits_stored": {int(k): int(v) for k, v in meta["BitsStored_DICOM"].value_counts().items()},
        "train_positive_counts": {c: int(train_df[c].sum()) for c in KNOWN_CLASSES},
        "patterns": {k: asdict(v) | {"description": v.describe()} for k, v in FINDING_PATTERNS.items()},
        "planted_defects": defects,
    }
    (out / "synth_manifest.json").write_text(json.dumps(summary, indent=2))
    return summary


def plant_defects(out: Path, rng: np.random.Generator) -> list[dict]:
    """Damage a clean dataset in known ways (validation must name every one); returns what was planted."""
    train = pd.read_csv(out / TRAINING_CSV, dtype={"ImageID": str, "PatientID": str, "StudyDate_DICOM": str})
    ids = list(rng.choice(train["ImageID"].to_numpy(), size=4, replace=False))
    truncated, missing, duplicated, non_binary = ids
    img = out / IMAGES_DIR / truncated
    img.write_bytes(img.read_bytes()[: img.stat().st_size // 2])
    (out / IMAGES_DIR / missing).unlink()
    label = "cardiomegaly"
    train.loc[train["ImageID"] == non_binary, label] = 2
    train = pd.concat([train, train[train["ImageID"] == duplicated]], ignore_index=True)
    leak = UNSEEN_CLASSES[0]
    train[leak] = 0
    leaked_id = train["ImageID"].iloc[0]
    train.loc[0, leak] = 1
    train.to_csv(out / TRAINING_CSV, index=False)
    defects = [
        {"defect": "truncated_png", "image_ids": [truncated]},
        {"defect": "missing_file", "image_ids": [missing]},
        {"defect": "duplicate_image_id", "image_ids": [duplicated]},
        {"defect": "non_binary_label", "image_ids": [non_binary], "column": label},
        {"defect": "unseen_leak", "image_ids": [leaked_id], "column": leak},
    ]
    (out / "planted_defects.json").write_text(json.dumps(defects, indent=2))
    return defects
