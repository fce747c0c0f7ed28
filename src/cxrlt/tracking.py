"""The MLflow experiment of a run, found or created by name, safely when several processes start at once.

``mlflow.set_experiment`` is unsafe here in two ways (MLflow 3.17): when two processes create the same experiment at
the same moment, the loser returns early without making the experiment active, so its next ``start_run`` falls back
to ``$MLFLOW_EXPERIMENT_ID`` or the Default experiment; and it writes ``MLFLOW_EXPERIMENT_ID`` into the process
environment, where every subprocess started later inherits an id that may belong to another tracking server. Runs
therefore start with an explicit experiment id from :func:`experiment_id`.
"""

from __future__ import annotations


def experiment_id(name: str, client=None) -> str:
    """The id of the experiment ``name``, created if missing; a concurrent creation by another process is read back."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = client or MlflowClient()
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    found = client.get_experiment_by_name(name)
    if found is None:
        raise MlflowException(f"experiment {name!r} was reported to exist but cannot be read back")
    return found.experiment_id
