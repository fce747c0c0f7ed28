"""Schedule the compiled training pipeline on Kubeflow Pipelines as a recurring run (updated in place when it
already exists).

Usage (from a machine that reaches the KFP API):
    python infra/scripts/schedule_retraining.py --host http://ml-pipeline-ui.kubeflow:80 \\
        --package pipelines/compiled/training_pipeline.yaml --cron "0 0 2 * * 0" \\
        --param data_dir=/data/datasets/padchest --param config=/opt/cxrlt/configs/paper.yaml \\
        --param tracking_uri=http://mlflow.cxrlt.svc.cluster.local:5000 --param launcher=trainjob

The cron expression has six fields with seconds (robfig/cron), e.g. "0 0 2 * * 0" = Sundays 02:00:00. Parameters are
typed by the compiled package (JSON for numbers and lists). Runs use the cxrlt-pipeline-runner service account
(infra/pipelines/serviceaccount.yaml), never catch up on missed slots and never overlap (max_concurrency 1).
"""

from __future__ import annotations

import argparse

try:
    from pipelines.cluster import PipelineParamError, schedule
except ImportError as exc:  # the compiled pipeline and this script come with the cxrlt project
    raise SystemExit("install the cxrlt project first (pip install -e .): this script uses pipelines.cluster") from exc


def parse_params(items: list[str]) -> dict[str, str]:
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--param must be KEY=VALUE, got {item!r}")
        params[key] = value
    return params


def main(argv: list[str] | None = None, client=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", required=True, help="KFP API endpoint")
    ap.add_argument("--package", required=True, help="compiled pipeline YAML (cxrlt pipeline compile)")
    ap.add_argument("--cron", default="0 0 2 * * 0", help="six-field cron with seconds (default: %(default)s)")
    ap.add_argument("--param", action="append", default=[], help="pipeline parameter KEY=VALUE (repeatable)")
    ap.add_argument("--job-name", default="cxrlt-weekly-retraining", help="recurring run name (default: %(default)s)")
    ap.add_argument("--namespace", default=None, help="KFP namespace (multi-user installs)")
    args = ap.parse_args(argv)
    try:
        run = schedule(args.host, args.package, args.cron, parse_params(args.param), args.job_name,
                       namespace=args.namespace, client=client)
    except (PipelineParamError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"recurring run {getattr(run, 'recurring_run_id', run)} scheduled with cron {args.cron!r}")


if __name__ == "__main__":
    main()
