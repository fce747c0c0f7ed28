"""Upload the compiled training pipeline to Kubeflow Pipelines and schedule it as a recurring run.

Usage (from a machine that reaches the KFP API):
    python infra/scripts/schedule_retraining.py --host http://ml-pipeline-ui.kubeflow:80 \\
        --package training_pipeline.yaml --cron "0 0 2 * * 0" --param data_uri=s3://cxrlt-data/padchest

The cron expression has six fields with seconds (robfig/cron), e.g. "0 0 2 * * 0" = Sundays 02:00:00.
Runs use the cxrlt-pipeline-runner service account (infra/base/trainer/serviceaccount.yaml), never catch up
on missed slots and never overlap (max_concurrency 1).
"""

from __future__ import annotations

import argparse
import json

try:
    from pipelines.schedule import EXPERIMENT, schedule, validate_cron  # noqa: F401 - re-exported for callers
except ImportError as exc:  # the compiled pipeline and this script come with the cxrlt project
    raise SystemExit("install the cxrlt project first (pip install -e .): this script uses pipelines.schedule") from exc


def parse_params(items: list[str]) -> dict:
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--param must be KEY=VALUE, got {item!r}")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", required=True, help="KFP API endpoint")
    ap.add_argument("--package", required=True, help="compiled pipeline YAML (cxrlt pipeline compile)")
    ap.add_argument("--cron", default="0 0 2 * * 0", help="six-field cron with seconds")
    ap.add_argument("--param", action="append", default=[], help="pipeline parameter KEY=VALUE (JSON values ok)")
    ap.add_argument("--job-name", default="cxrlt-weekly-retraining")
    ap.add_argument("--namespace", default=None)
    args = ap.parse_args(argv)
    run = schedule(args.host, args.package, args.cron, parse_params(args.param), args.job_name,
                   namespace=args.namespace)
    print(f"recurring run {getattr(run, 'recurring_run_id', run)} scheduled with cron {args.cron!r}")


if __name__ == "__main__":
    main()
