"""Per-view logit ensembles: simplex grid search of member weights on validation mAP, and the ensemble bundle.

An ensemble directory holds ``ensemble.json`` plus one sub-directory per trained member (``router/``,
``frontal/pcam/`` ...). ``ensemble.json`` records the views, each view's members and fitted weights, the class order
(always addressed by name), the preprocessing contract, TTA settings, how members are combined (logits or
probabilities, fitted or fixed weights), one per-class calibration of the served output (fitted on the validation
images after ensembling, routing and gating) and the optional normal-gating exponent. Order at inference: route ->
combine the view's members -> normal gating -> calibrate.
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlt import scoring
from cxrlt.config import task1_preprocess
from cxrlt.contract import EnsembleSpec, MemberCard
from cxrlt.data.tables import read_training_csv
from cxrlt.errors import InvalidInputError
from cxrlt.kinds import member_kinds
from cxrlt.labels import KNOWN_CLASSES, NORMAL, frequency_bands
from cxrlt.metrics import macro_ap
from cxrlt.models.factory import ROUTER_CLASSES

ENSEMBLE_JSON = EnsembleSpec.FILE


def simplex_grid(n: int, step: float = 0.05) -> np.ndarray:
    """All weight vectors of length ``n`` on the simplex with the given step (weights sum to 1)."""
    k = int(round(1 / step))
    rows = [c for c in itertools.product(range(k + 1), repeat=n - 1) if sum(c) <= k]
    return np.array([[*c, k - sum(c)] for c in rows], dtype=np.float64) / k


COMBINES = scoring.COMBINES
sigmoid, logit, combine = scoring.sigmoid, scoring.logit, scoring.combine


CALIBRATIONS = ("none", "platt", "temperature")
#: a class needs this many positives *and* negatives on validation to be calibrated; others keep identity
MIN_CALIBRATION_EXAMPLES = 3



def fit_calibration(probs: np.ndarray, y: np.ndarray, classes: list[str], method: str = "platt") -> dict:
    """Per-class scaling of the ensemble's logit(p): p' = sigmoid(a_c * logit(p_c) + b_c), keyed by class name.

    ``platt`` fits (a, b) by logistic regression, ``temperature`` fits a alone (b = 0); both are monotonic per class,
    so rankings (AP, AUROC) are unchanged. A class with too few positives or negatives on validation for its own fit
    (the long tail), or whose fit has a non-positive slope, takes the *pooled* map fitted on every class at once:
    identity would leave it as miscalibrated as the loss made it (ASL inflates rare-class probabilities).
    """
    if method not in CALIBRATIONS:
        raise InvalidInputError(f"unknown calibration {method!r}: choose one of {CALIBRATIONS}")
    if method == "none":
        return {"method": method, "a": dict.fromkeys(classes, 1.0), "b": dict.fromkeys(classes, 0.0),
                "stage": scoring.AFTER_GATING}
    z_all, t_all = logit(probs), np.asarray(y, np.float64)
    pooled = _fit_scaling(z_all.ravel(), t_all.ravel(), method) or (1.0, 0.0)
    a, b, fallback = {}, {}, []
    for j, c in enumerate(classes):
        t = t_all[:, j]
        own = (_fit_scaling(z_all[:, j], t, method) if min(t.sum(), len(t) - t.sum()) >= MIN_CALIBRATION_EXAMPLES
               else None)
        if own is None:
            fallback.append(c)
        a[c], b[c] = own or pooled
    return {"method": method, "a": a, "b": b, "pooled": list(pooled), "pooled_classes": fallback,
            "stage": scoring.AFTER_GATING}


def _fit_scaling(z: np.ndarray, t: np.ndarray, method: str) -> tuple[float, float] | None:
    """(slope, bias) of one Platt or temperature fit; None when it is not a usable monotonic map."""
    from scipy.optimize import minimize_scalar
    from sklearn.linear_model import LogisticRegression

    if t.min() == t.max():
        return None
    if method == "platt":
        lr = LogisticRegression(C=1.0).fit(z[:, None], t)
        slope, bias = float(lr.coef_[0, 0]), float(lr.intercept_[0])
    else:
        slope = float(minimize_scalar(_scaled_nll, bounds=(0.01, 100), args=(z, t), method="bounded").x)
        bias = 0.0
    return (slope, bias) if slope > 0 else None


def _scaled_nll(scale: float, z: np.ndarray, t: np.ndarray) -> float:
    from scipy.special import expit

    q = np.clip(expit(scale * z), 1e-12, 1 - 1e-12)
    return -float(np.mean(t * np.log(q) + (1 - t) * np.log(1 - q)))


def calibrate(probs: np.ndarray, calibration: dict | None, classes: list[str]) -> np.ndarray:
    """Apply a :func:`fit_calibration` result (by class name); None is the identity."""
    return scoring.calibrate(probs, scoring.calibration_vectors(calibration, classes))


def normalised(weights: dict[str, float]) -> dict[str, float]:
    total = float(sum(weights.values()))
    return {k: float(v) / total for k, v in weights.items()}


def fit_weights(member_logits: dict[str, np.ndarray], y: np.ndarray, step: float = 0.05,
                mode: str = "logit") -> tuple[dict, float]:
    """Grid-search member weights maximising macro mAP; ties keep the most uniform weights."""
    names = list(member_logits)
    best_w, best_score = None, -1.0
    grid = simplex_grid(len(names), step)
    order = np.argsort(np.abs(grid - 1 / len(names)).sum(1), kind="stable")  # uniform-first tie-breaking
    for w in grid[order]:
        score = macro_ap(y, combine(member_logits, dict(zip(names, w, strict=True)), mode))
        if score > best_score + 1e-12:
            best_w, best_score = w, score
    return {n: float(v) for n, v in zip(names, best_w, strict=True)}, float(best_score)


def normal_gate(probs: pd.DataFrame, alpha: float | None) -> pd.DataFrame:
    """:func:`cxrlt.scoring.normal_gate` on a frame of known-class columns (off when alpha is None or 0)."""
    if not alpha or probs.empty:
        return probs
    known = [c for c in KNOWN_CLASSES if c in probs]
    out = probs.copy()
    out[known] = scoring.normal_gate(probs[known].to_numpy(), known.index(NORMAL), alpha)
    return out


def served_validation(view_probs: dict[str, pd.DataFrame], routed: bool) -> pd.DataFrame:
    """Validation probabilities as the system serves them: with a router each image gets its own view's ensemble
    (the mixed one where its view has none); without one, the mixed ensemble. One calibration is fitted on these,
    after ensembling and routing, so it is a per-class monotonic map of the final output: AP and AUROC unchanged."""
    if not routed:
        return view_probs.get("mixed", pd.DataFrame())
    parts = [view_probs[v] for v in ("frontal", "lateral") if v in view_probs]
    covered = set().union(*(set(p.index) for p in parts)) if parts else set()
    if "mixed" in view_probs:
        mixed = view_probs["mixed"]
        parts.append(mixed.loc[[i for i in mixed.index if i not in covered]])
    return pd.concat(parts) if parts else pd.DataFrame()


def _mece(y: np.ndarray, p: np.ndarray) -> float:
    from cxrlt.metrics import evaluate

    return float(evaluate(y.astype(int), p, list(KNOWN_CLASSES)).summary()["mECE"])


def _val_logits(member_dir: Path) -> pd.DataFrame:
    return pd.read_csv(member_dir / "val_logits.csv", dtype={"ImageID": str}).set_index("ImageID")


def build_ensemble(runs_dir: str | Path, out_dir: str | Path, train_csv: str | Path, config: dict,
                   views: tuple[str, ...] = ("frontal", "lateral", "mixed")) -> dict:
    """Collect trained members from ``runs_dir`` (``router/``, ``<view>/<kind>/``), fit weights per view, bundle."""
    runs, out = Path(runs_dir), Path(out_dir)
    labels = read_training_csv(train_csv).set_index("ImageID")
    contract = task1_preprocess(config)
    spec = {"classes": list(KNOWN_CLASSES), "views": {}, "image_size": contract.size,
            "preprocess": contract.to_dict(),
            "tta": config["inference"]["tta"], "tta_merge": config["inference"]["tta_merge"],
            "normal_gate_alpha": config["inference"]["normal_gate_alpha"], "profile": config.get("profile"),
            "grid_step": config["ensemble"]["grid_step"], "combine": config["ensemble"]["combine"]}
    fixed = config["ensemble"]["weights"]
    view_probs: dict[str, pd.DataFrame] = {}
    spec["bands"] = frequency_bands({c: int(labels[c].sum()) for c in KNOWN_CLASSES}, len(labels))
    out.mkdir(parents=True, exist_ok=True)
    if (runs / "router" / "member.json").exists():
        shutil.copytree(runs / "router", out / "router", dirs_exist_ok=True)
        spec["router"] = "router"
    for view in views:
        members = [k for k in member_kinds() if (runs / view / k / "member.json").exists()]
        if not members:
            continue
        frames = {k: _val_logits(runs / view / k) for k in members}
        common = sorted(set.intersection(*(set(f.index) for f in frames.values())))
        y = labels.loc[common, list(KNOWN_CLASSES)].to_numpy()
        logits = {k: frames[k].loc[common, list(KNOWN_CLASSES)].to_numpy() for k in members}
        if fixed:  # HPH: fixed raw weights (1.0 : 1.5), normalised over the members this view has
            missing = [k for k in members if k not in fixed]
            if missing:
                raise InvalidInputError(f"ensemble.weights gives no weight for the {view} members {missing}")
            weights = normalised({k: fixed[k] for k in members})
            score = macro_ap(y, combine(logits, weights, spec["combine"]))
        else:
            weights, score = fit_weights(logits, y, spec["grid_step"], spec["combine"])
        single = {k: macro_ap(y, sigmoid(v)) for k, v in logits.items()}
        view_probs[view] = pd.DataFrame(combine(logits, weights, spec["combine"]), index=common,
                                        columns=list(KNOWN_CLASSES))
        spec["views"][view] = {"members": {k: f"{view}/{k}" for k in members}, "weights": weights,
                               "val_mAP": score, "val_mAP_members": single, "n_val": len(common)}
        for k in members:
            shutil.copytree(runs / view / k, out / view / k, dirs_exist_ok=True)
    if not spec["views"]:
        raise InvalidInputError(f"{runs}: no trained members found (expected <view>/<kind>/member.json)")
    # fitted on the gated output, as served (combine -> gate -> calibrate; cxrlt.scoring)
    served = normal_gate(served_validation(view_probs, "router" in spec), spec["normal_gate_alpha"])
    if len(served):
        y = labels.loc[served.index, list(KNOWN_CLASSES)].to_numpy()
        spec["calibration"] = fit_calibration(served.to_numpy(), y, list(KNOWN_CLASSES),
                                              config["ensemble"]["calibration"])
        spec["val_mECE"] = {"uncalibrated": _mece(y, served.to_numpy()), "calibrated": _mece(
            y, calibrate(served.to_numpy(), spec["calibration"], list(KNOWN_CLASSES)))}
    for card_path in sorted(out.glob(f"**/{MemberCard.FILE}")):  # one contract for every network the ensemble serves
        card = MemberCard.load(card_path.parent)
        if card.preprocess != spec["preprocess"]:
            raise InvalidInputError(f"{card_path.parent}: trained with preprocessing {card.preprocess}, but the "
                                    f"profile's contract is {spec['preprocess']}; retrain it or use the profile it "
                                    "was trained with")
    EnsembleSpec.model_validate(spec).save(out)
    return load_spec(out)


def spec_scorer(spec: dict) -> scoring.BundleScorer:
    """The scorer of an ensemble directory's ``ensemble.json``: the same one the served bundle builds."""
    return scoring.BundleScorer({
        "known_classes": spec["classes"], "router_classes": list(ROUTER_CLASSES) if spec["router"] else [],
        "views": spec["views"], "combine": spec["combine"], "calibration": spec["calibration"],
        "normal_gate_alpha": spec["normal_gate_alpha"]})


def load_spec(ensemble_dir: str | Path) -> dict:
    """``ensemble.json`` read through :class:`cxrlt.contract.EnsembleSpec`: validated, every default filled in."""
    return EnsembleSpec.load(ensemble_dir).model_dump(mode="json")
