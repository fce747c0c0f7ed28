"""Evaluation gates: a candidate is registered only if it clears every threshold; the evidence is kept."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class GateResult:
    passed: bool
    checks: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_gates(metrics: dict, min_map: float, max_ece: float, min_unseen_map: float | None = None) -> GateResult:
    """mAP >= min_map and mECE <= max_ece (and, if given, unseen mAP >= min_unseen_map)."""
    checks = [
        {"metric": "mAP", "value": metrics.get("mAP"), "op": ">=", "threshold": min_map},
        {"metric": "mECE", "value": metrics.get("mECE"), "op": "<=", "threshold": max_ece},
    ]
    if min_unseen_map is not None:
        checks.append({"metric": "unseen_mAP", "value": metrics.get("unseen_mAP"), "op": ">=",
                       "threshold": min_unseen_map})
    for c in checks:
        v = c["value"]
        c["passed"] = v is not None and (v >= c["threshold"] if c["op"] == ">=" else v <= c["threshold"])
    return GateResult(all(c["passed"] for c in checks), checks)
