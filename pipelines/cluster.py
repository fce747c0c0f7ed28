"""The compiled pipelines on a Kubeflow Pipelines cluster: upload a version, start a run, keep one recurring run.

Used by ``cxrlt pipeline upload|run --host|schedule``, ``infra/scripts/schedule_retraining.py`` and the CI workflow.
Parameters are typed from the compiled package itself (``root.inputDefinitions``): an unknown name or a value of
the wrong type fails here, naming the parameter, instead of in the cluster hours later.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import yaml

from cxrlt.errors import CxrltError, InvalidInputError, OperationError
from cxrlt.platform import PIPELINE_RUNNER_SERVICE_ACCOUNT, TRAINING_EXPERIMENT

EXPERIMENT = TRAINING_EXPERIMENT
SERVICE_ACCOUNT = PIPELINE_RUNNER_SERVICE_ACCOUNT
#: KFP IR parameter types -> how a command-line string becomes that type
_KINDS = {"STRING": str, "NUMBER_INTEGER": int, "NUMBER_DOUBLE": float, "BOOLEAN": bool, "LIST": list,
          "STRUCT": dict}


class PipelineParamError(CxrltError, ValueError):
    """A pipeline parameter that the compiled package does not declare, or a value of the wrong type."""


def validate_cron(cron: str) -> str:
    fields = cron.split()
    if len(fields) != 6:
        raise InvalidInputError(f"KFP cron needs 6 fields (seconds first), got {len(fields)}: {cron!r}")
    return cron


def _ir(package: str | Path) -> dict:
    docs = [d for d in yaml.safe_load_all(Path(package).read_text()) if d]
    return docs[0].get("pipeline_spec", docs[0]) if docs else {}


def parameter_types(package: str | Path) -> dict[str, str]:
    """``{name: KFP parameter type}`` of a compiled pipeline's inputs."""
    params = _ir(package)["root"].get("inputDefinitions", {}).get("parameters", {})
    return {name: spec["parameterType"] for name, spec in params.items()}


def typed_params(package: str | Path, raw: dict[str, object]) -> dict[str, object]:
    """Convert ``KEY=VALUE`` strings (or already typed values) to the package's declared parameter types."""
    types = parameter_types(package)
    out = {}
    for key, value in raw.items():
        if key not in types:
            raise PipelineParamError(f"the pipeline has no parameter {key!r}; it takes: {', '.join(sorted(types))}")
        kind = _KINDS[types[key]]
        if isinstance(value, str) and kind is not str:
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise PipelineParamError(f"{key}={value!r} is not a {types[key]} (write JSON: 3, 0.5, true, "
                                         '[{"view": "frontal", "member": "pcam"}])') from None
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise PipelineParamError(f"{key}={value!r} is not a {types[key]}")
        out[key] = value
    return out


def required_params(package: str | Path) -> list[str]:
    params = _ir(package)["root"].get("inputDefinitions", {}).get("parameters", {})
    return sorted(n for n, spec in params.items() if "defaultValue" not in spec and not spec.get("isOptional"))


def _check_required(package: str | Path, params: dict) -> None:
    missing = [n for n in required_params(package) if n not in params]
    if missing:
        raise PipelineParamError(f"missing required pipeline parameters: {', '.join(missing)} (--param KEY=VALUE)")


def _client(host: str, namespace: str | None, client=None):
    if client is not None:
        return client
    import kfp

    return kfp.Client(host=host, namespace=namespace)


def git_commit(root: str | Path = ".") -> str:
    done = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                          text=True)
    if done.returncode:
        raise OperationError(f"cannot name the version by the git commit: {done.stderr.strip() or 'not a checkout'}")
    return done.stdout.strip()


def upload(host: str, package: str | Path, version: str, pipeline_name: str | None = None,
           namespace: str | None = None, client=None) -> dict:
    """Upload ``package`` as version ``version`` of its pipeline (created on first upload); returns the ids.

    An existing version of the same name is left as it is (CI re-runs on the same commit are no-ops)."""
    client = _client(host, namespace, client)
    name = pipeline_name or _ir(package)["pipelineInfo"]["name"]
    pipeline_id = client.get_pipeline_id(name)
    if pipeline_id is None:
        with contextlib.redirect_stdout(sys.stderr):  # kfp.Client prints its UI links
            pipeline = client.upload_pipeline(str(package), pipeline_name=name, namespace=namespace)
        pipeline_id = pipeline.pipeline_id
    versions = client.list_pipeline_versions(pipeline_id, page_size=100, filter=json.dumps(
        {"predicates": [{"operation": 1, "key": "display_name", "stringValue": version}]}))  # 1: EQUALS
    existing = next((v for v in (versions.pipeline_versions or []) if v.display_name == version), None)
    if existing is not None:
        return {"pipeline": name, "pipeline_id": pipeline_id, "version": version,
                "version_id": existing.pipeline_version_id, "created": False}
    with contextlib.redirect_stdout(sys.stderr):
        made = client.upload_pipeline_version(str(package), pipeline_version_name=version, pipeline_id=pipeline_id)
    return {"pipeline": name, "pipeline_id": pipeline_id, "version": version,
            "version_id": made.pipeline_version_id, "created": True}


def run_once(host: str, package: str | Path, params: dict, run_name: str | None = None,
             experiment: str = EXPERIMENT, namespace: str | None = None, client=None) -> str:
    """Start one run of ``package`` on the cluster; returns its run id."""
    params = typed_params(package, params)
    _check_required(package, params)
    client = _client(host, namespace, client)
    with contextlib.redirect_stdout(sys.stderr):  # kfp.Client prints its UI links: stdout stays machine-readable
        result = client.create_run_from_pipeline_package(
            str(package), arguments=params, run_name=run_name, experiment_name=experiment, namespace=namespace,
            enable_caching=False, service_account=SERVICE_ACCOUNT)
    return result.run_id


def schedule(host: str, package: str | Path, cron: str, params: dict, job_name: str = "cxrlt-weekly-retraining",
             experiment: str = EXPERIMENT, namespace: str | None = None, pipeline_id: str | None = None,
             version_id: str | None = None, client=None):
    """Keep exactly one recurring run named ``job_name`` in ``experiment``: an existing one of that name is
    replaced (KFP cannot edit a recurring run), so calling this again updates the schedule instead of adding a
    second one. With ``pipeline_id``/``version_id`` it runs that uploaded version; otherwise the package itself."""
    validate_cron(cron)
    params = typed_params(package, params)
    _check_required(package, params)
    client = _client(host, namespace, client)
    exp = client.create_experiment(experiment, namespace=namespace)
    existing = client.list_recurring_runs(experiment_id=exp.experiment_id, page_size=100, namespace=namespace)
    for old in existing.recurring_runs or []:
        if old.display_name == job_name:
            client.delete_recurring_run(old.recurring_run_id)
    source = ({"pipeline_id": pipeline_id, "version_id": version_id} if version_id
              else {"pipeline_package_path": str(package)})
    with contextlib.redirect_stdout(sys.stderr):
        return client.create_recurring_run(
                experiment_id=exp.experiment_id, job_name=job_name, cron_expression=cron, params=params,
            max_concurrency=1, no_catchup=True, enable_caching=False, service_account=SERVICE_ACCOUNT, enabled=True,
            **source)
