from kfp import dsl
from kfp.dsl import Artifact, Output

from components._base import TOOLS_IMAGE


@dsl.component(base_image=TOOLS_IMAGE, install_kfp_package=False)
def gate(mAP: float, mAUROC: float, mECE: float, unseen_mAP: float, unseen_prevalence: float,  # noqa: N803
         min_map: float, min_mauroc: float, max_ece: float, min_unseen_lift: float,
         evidence: Output[Artifact]) -> str:
    """Evaluation gate: mAP >= min_map, mAUROC >= min_mauroc, mECE <= max_ece, unseen mAP >= min_unseen_lift x
    chance. Returns "pass" or "fail" (the single return value keeps the condition resolvable by kfp.local); the
    evidence JSON is an artifact that travels to the registry.

    Args:
        mAP: macro mAP of the candidate (30 known classes).
        mAUROC: macro AUROC of the candidate.
        mECE: macro ECE of the candidate's calibrated output.
        unseen_mAP: zero-shot macro AP on the 6 unseen classes.
        unseen_prevalence: mean prevalence of the unseen classes (the AP of chance).
        min_map: threshold on mAP.
        min_mauroc: threshold on mAUROC.
        max_ece: threshold on mECE.
        min_unseen_lift: threshold on unseen_mAP / unseen_prevalence (0 = no zero-shot check).
        evidence: gate_evidence.json with every check.
    """
    import json
    from pathlib import Path

    from cxrlt.gates import evaluate_gates

    metrics = {"mAP": mAP, "mAUROC": mAUROC, "mECE": mECE, "unseen_mAP": unseen_mAP,
               "unseen_prevalence": unseen_prevalence}
    result = evaluate_gates(metrics, min_map, max_ece, min_mauroc, min_unseen_lift)
    Path(evidence.path).write_text(json.dumps(result.to_dict(), indent=2))
    evidence.metadata["passed"] = result.passed
    return "pass" if result.passed else "fail"
