"""The served output, computed in one place: combine -> normal gating -> calibrate per view, routing, and the zero-shot
head.

numpy only, and no other cxrlt import: the in-process predictor, the MLflow pyfunc and Triton's python-backend models
all run this file (the model repository and the logged model carry a copy of it as ``cxrlt_scoring.py``, the way
they carry the image contract), so the three paths cannot drift apart.

Everything is keyed by class name at the edges: :class:`BundleScorer` reads a served bundle's ``bundle.json``
(classes, views, weights, calibration by class name, gating, zero-shot constants) and turns it into vectors in the
bundle's class order once.

Order for one image: ``route`` (router softmax, argmax; a view without its own ensemble falls back to ``mixed``) ->
the view's members' logits -> ``combine`` -> ``normal_gate`` -> ``calibrate`` (one per-class map for every view,
fitted on the gated output, so what is served is what was calibrated; HPH gates its probabilities as they are).
A calibration written before this order existed (no ``stage``) ran before the gate and is applied there.
Zero-shot: ``sigmoid(a * embedding @ E.T + b)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

COMBINES = ("logit", "probability")
#: where a calibration applies: after normal gating (what this cxrlt fits) or before it (files written earlier)
AFTER_GATING, BEFORE_GATING = "after_gating", "before_gating"
MIXED = "mixed"
NORMAL = "Normal"
#: probabilities are clipped to [EPS, 1 - EPS] before a logit is taken
LOGIT_EPS = 1e-7
#: gated probabilities are clipped to [GATE_EPS, 1 - GATE_EPS]
GATE_EPS = 1e-6


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), LOGIT_EPS, 1 - LOGIT_EPS)
    return np.log(p) - np.log1p(-p)


def combine(member_logits: Mapping[str, np.ndarray], weights: Mapping[str, float], mode: str = "logit") -> np.ndarray:
    """Ensemble probabilities: sigmoid(sum_k w_k z_k) (``logit``, seed 000) or sum_k w_k sigmoid(z_k)
    (``probability``, HPH); weights sum to 1 and are taken by member name."""
    if mode == "logit":
        return sigmoid(sum(w * np.asarray(member_logits[k], np.float64) for k, w in weights.items()))
    if mode == "probability":
        return sum(w * sigmoid(member_logits[k]) for k, w in weights.items())
    raise ValueError(f"unknown combine mode {mode!r}: choose one of {COMBINES}")


def calibration_vectors(calibration: Mapping | None, classes: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """A per-class calibration keyed by class name (``{"method", "a": {class: slope}, "b": {class: bias}}``) as
    slope and bias vectors in ``classes`` order; None for no calibration (absent or method ``none``). A class the
    calibration does not name keeps the identity (a = 1, b = 0)."""
    if not calibration or calibration.get("method", "none") == "none":
        return None
    a = np.array([float(calibration["a"].get(c, 1.0)) for c in classes], np.float64)
    b = np.array([float(calibration["b"].get(c, 0.0)) for c in classes], np.float64)
    return a, b


def calibrate(probs: np.ndarray, vectors: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """p' = sigmoid(a_c * logit(p_c) + b_c) per class (monotonic: rankings, AP and AUROC unchanged)."""
    if vectors is None:
        return np.asarray(probs, np.float64)
    a, b = vectors
    return sigmoid(a * logit(probs) + b)


def normal_gate(probs: np.ndarray, normal_index: int, alpha: float | None) -> np.ndarray:
    """p_c <- p_c * (1 - p_Normal)^alpha for every class but Normal, clipped to [1e-6, 1 - 1e-6] (off for alpha
    None or 0)."""
    probs = np.asarray(probs, np.float64)
    if not alpha:
        return probs
    gate = (1.0 - probs[:, normal_index : normal_index + 1]) ** float(alpha)
    gated = np.clip(probs * gate, GATE_EPS, 1 - GATE_EPS)
    gated[:, normal_index] = probs[:, normal_index]
    return gated


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def route(router_logits: np.ndarray, router_classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Each image's view (argmax of the router's softmax) and the router's confidence in it."""
    p = softmax(router_logits)
    return np.asarray(router_classes)[p.argmax(1)], p.max(1)


def zeroshot_probs(embeddings: np.ndarray, text_embeddings: np.ndarray, a: float, b: float) -> np.ndarray:
    """sigmoid(a * img @ E.T + b): with L2-normalised image embeddings and E's rows the mean of each class's
    normalised prompt embeddings, img @ E.T is the mean prompt cosine."""
    return sigmoid(float(a) * (np.asarray(embeddings, np.float64) @ np.asarray(text_embeddings, np.float64).T)
                   + float(b))


def scoring_fields(bundle: Mapping) -> dict:
    """The part of a bundle that :class:`BundleScorer` reads (what Triton's models get as their ``scoring``
    parameter)."""
    zs = bundle.get("zeroshot")
    return {"known_classes": list(bundle["known_classes"]), "router_classes": list(bundle.get("router_classes") or []),
            "views": {v: {k: spec[k] for k in ("members", "weights", "shared_trunk") if k in spec}
                      for v, spec in bundle["views"].items()},
            "combine": bundle.get("combine"), "calibration": bundle.get("calibration"),
            "normal_gate_alpha": bundle.get("normal_gate_alpha"),
            "zeroshot": {k: zs[k] for k in ("classes", "a", "b")} if zs else None}


class BundleScorer:
    """The scoring half of a served bundle (``bundle.json``'s content): everything after the networks."""

    def __init__(self, bundle: Mapping):
        self.known = list(bundle["known_classes"])
        self.router_classes = list(bundle.get("router_classes") or [])
        self.views = {view: dict(spec) for view, spec in bundle["views"].items()}
        self.combine_mode = bundle.get("combine") or "logit"
        if self.combine_mode not in COMBINES:
            raise ValueError(f"bundle: unknown combine mode {self.combine_mode!r}: choose one of {COMBINES}")
        self.calibration = calibration_vectors(bundle.get("calibration"), self.known)
        self.calibration_stage = (bundle.get("calibration") or {}).get("stage") or BEFORE_GATING
        self.alpha = float(bundle.get("normal_gate_alpha") or 0.0)
        self.normal_index = self.known.index(NORMAL)
        zs = bundle.get("zeroshot")
        self.unseen = list(zs["classes"]) if zs else []
        self.zeroshot_ab = (float(zs["a"]), float(zs["b"])) if zs else None

    def target(self, view: str) -> str:
        """The ensemble that serves images routed to ``view``: its own, else the mixed one."""
        if view in self.views:
            return view
        if MIXED in self.views:
            return MIXED
        raise ValueError(f"the router chose {view!r} but the bundle has no {view} or {MIXED} ensemble")

    def route(self, router_logits: np.ndarray | None, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Views and confidences; without a router (HPH) every image goes to the mixed ensemble, confidence 1."""
        if not self.router_classes or router_logits is None:
            return np.array([MIXED] * n), np.ones(n)
        return route(router_logits, self.router_classes)

    def member_logits(self, view: str, run: Callable[[str, np.ndarray], np.ndarray], x: np.ndarray) -> dict:
        """Every member's logits for one view, ``run(network_name, input)`` running one exported network: a shared
        trunk (where the view has one) runs once and its features feed the members that read it."""
        spec = self.views[view]
        shared = spec.get("shared_trunk")
        features = run(shared["model"], x) if shared else None
        return {kind: run(name, features if shared and kind in shared["members"] else x)
                for kind, name in spec["members"].items()}

    def view_probs(self, view: str, member_logits: Mapping[str, np.ndarray], calibrated: bool = True,
                   gated: bool = True) -> np.ndarray:
        """One view ensemble's served probabilities from its members' logits (keyed by member kind)."""
        probs = combine(member_logits, self.views[view]["weights"], self.combine_mode)
        calibration = self.calibration if calibrated else None
        if self.calibration_stage == BEFORE_GATING:
            probs = calibrate(probs, calibration)
        if gated:
            probs = normal_gate(probs, self.normal_index, self.alpha)
        return calibrate(probs, calibration) if self.calibration_stage == AFTER_GATING else probs

    def zeroshot(self, embeddings: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
        if self.zeroshot_ab is None:
            return np.full((len(embeddings), 0), np.nan)
        return zeroshot_probs(embeddings, text_embeddings, *self.zeroshot_ab)
