"""Create a KFP recurring run for the compiled training pipeline (used by ``cxrlt pipeline schedule`` and by
``infra/scripts/schedule_retraining.py``)."""

from __future__ import annotations

EXPERIMENT = "cxrlt-retraining"
SERVICE_ACCOUNT = "cxrlt-pipeline-runner"


def validate_cron(cron: str) -> str:
    fields = cron.split()
    if len(fields) != 6:
        raise ValueError(f"KFP cron needs 6 fields (seconds first), got {len(fields)}: {cron!r}")
    return cron


def schedule(host: str, package: str, cron: str, params: dict, job_name: str = "cxrlt-weekly-retraining",
             experiment: str = EXPERIMENT, namespace: str | None = None, client=None):
    """Create (or reuse) the experiment and a recurring run of ``package``; returns the recurring run."""
    if client is None:
        import kfp

        client = kfp.Client(host=host, namespace=namespace)
    exp = client.create_experiment(experiment, namespace=namespace)
    return client.create_recurring_run(
        experiment_id=exp.experiment_id, job_name=job_name, cron_expression=validate_cron(cron),
        pipeline_package_path=package, params=params, max_concurrency=1, no_catchup=True, enable_caching=False,
        service_account=SERVICE_ACCOUNT, enabled=True)
