"""Evaluation gates: a candidate is registered only if it clears every threshold; the evidence is kept."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class GateResult:
    passed: bool
    checks: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_gates(metrics: dict, min_map: float, max_ece: float, min_mauroc: float = 0.0,
                   min_unseen_lift: float = 0.0) -> GateResult:
    """mAP >= min_map, mAUROC >= min_mauroc, (calibrated) mECE <= max_ece and, when ``min_unseen_lift`` > 0, the
    zero-shot unseen mAP >= min_unseen_lift x its chance level (the unseen classes' mean prevalence, which is the AP
    of a random ranking). A missing or NaN metric fails its check."""
    checks = [
        {"metric": "mAP", "value": metrics.get("mAP"), "op": ">=", "threshold": min_map},
        {"metric": "mAUROC", "value": metrics.get("mAUROC"), "op": ">=", "threshold": min_mauroc},
        {"metric": "mECE", "value": metrics.get("mECE"), "op": "<=", "threshold": max_ece},
    ]
    if min_unseen_lift > 0:
        chance = metrics.get("unseen_prevalence")
        lift = metrics["unseen_mAP"] / chance if chance and metrics.get("unseen_mAP") is not None else None
        checks.append({"metric": "unseen_mAP / prevalence", "value": lift, "op": ">=", "threshold": min_unseen_lift})
    for c in checks:
        v = c["value"]
        ok = v is not None and v == v  # NaN fails
        c["passed"] = bool(ok and (v >= c["threshold"] if c["op"] == ">=" else v <= c["threshold"]))
    return GateResult(all(c["passed"] for c in checks), checks)
