from kfp import dsl
from kfp.dsl import Artifact, Output

from components._base import TOOLS_IMAGE


@dsl.component(base_image=TOOLS_IMAGE, install_kfp_package=False)
def check_weights(config: str, report: Output[Artifact]) -> str:
    """Resolve every network's configured pretrained weights and load each strictly into its network, reading no data:
    the run's first step, so a profile whose weights are missing or do not fit fails in seconds, naming where it
    looked and the command that fixes it. Returns the rows as JSON (network, status, source, sha256).

    Args:
        config: the run's profile (plan_run's copy on the shared volume).
        report: weights.json, the same rows.
    """
    import json
    from pathlib import Path

    from cxrlt.model_summary import check_weights as check

    rows = check(config)
    Path(report.path).parent.mkdir(parents=True, exist_ok=True)
    Path(report.path).write_text(json.dumps(rows, indent=2))
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        raise RuntimeError("pretrained weights missing or not fitting:\n\n" +
                           "\n\n".join(f"{r['network']}: {r['detail']}" for r in failed))
    return json.dumps(rows)
