from kfp import dsl
from kfp.dsl import Artifact, Output

from components._base import TOOLS_IMAGE


@dsl.component(base_image=TOOLS_IMAGE, install_kfp_package=False)
def gate(mAP: float, mECE: float, min_map: float, max_ece: float, evidence: Output[Artifact]) -> str:  # noqa: N803
    """Evaluation gate: mAP >= min_map and mECE <= max_ece. Returns "pass" or "fail" (the single return value keeps
    the condition resolvable by kfp.local); the evidence JSON is an artifact that travels to the registry.

    Args:
        mAP: macro mAP of the candidate.
        mECE: macro ECE of the candidate.
        min_map: threshold on mAP.
        max_ece: threshold on mECE.
        evidence: gate_evidence.json with every check.
    """
    import json
    from pathlib import Path

    from cxrlt.gates import evaluate_gates

    result = evaluate_gates({"mAP": mAP, "mECE": mECE}, min_map, max_ece)
    Path(evidence.path).write_text(json.dumps(result.to_dict(), indent=2))
    evidence.metadata["passed"] = result.passed
    return "pass" if result.passed else "fail"
