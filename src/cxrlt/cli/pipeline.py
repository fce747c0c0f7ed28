"""``cxrlt pipeline``: compile, upload, run (here or on a cluster), schedule the Kubeflow pipelines."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from cxrlt.cli._app import _fail, app

pipeline_app = typer.Typer(help="Kubeflow pipelines: compile, upload, run here or on a cluster, schedule.",
                           no_args_is_help=True)
app.add_typer(pipeline_app, name="pipeline")

TRAINING_PACKAGE = Path("pipelines/compiled/training_pipeline.yaml")
Host = Annotated[str, typer.Option(help="KFP API endpoint, e.g. http://ml-pipeline-ui.kubeflow:80.")]
Package = Annotated[Path, typer.Option(help="Compiled pipeline YAML (cxrlt pipeline compile).")]
Params = Annotated[list[str] | None, typer.Option(
    "--param", help="Pipeline parameter KEY=VALUE, typed by the package (JSON for numbers, lists); repeatable.")]
Namespace = Annotated[str | None, typer.Option(help="Kubernetes namespace of a multi-user KFP (profile).")]


class Runner(StrEnum):
    subprocess = "subprocess"
    docker = "docker"


def _params(items: list[str] | None) -> dict[str, str]:
    params = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _fail(f"--param must be KEY=VALUE, got {item!r}")
        params[key] = value
    return params


@pipeline_app.command("compile")
def pipeline_compile(out: Annotated[Path, typer.Option(help="Output folder.")] = Path("pipelines/compiled")) -> None:
    """Compile every pipeline to KFP IR YAML."""
    from pipelines.compile import compile_all

    for path in compile_all(out):
        typer.echo(str(path))


@pipeline_app.command("upload")
def pipeline_upload(
    host: Host,
    compiled: Annotated[Path, typer.Option(help="Folder of compiled pipelines.")] = Path("pipelines/compiled"),
    version: Annotated[str | None, typer.Option(
        help="Version name; default <pipeline>-<git commit> (what CI uploads on the main branch).")] = None,
    namespace: Namespace = None,
) -> None:
    """Upload every compiled pipeline as a new version (the pipeline is created on first upload); prints JSON."""
    from pipelines.cluster import git_commit, upload

    packages = sorted(compiled.glob("*.yaml"))
    if not packages:
        _fail(f"no compiled pipelines in {compiled}: run cxrlt pipeline compile first")
    commit = None if version else git_commit()
    results = [upload(host, p, version or f"{p.stem.replace('_', '-')}-{commit}", namespace=namespace)
               for p in packages]
    typer.echo(json.dumps(results, indent=2))


@pipeline_app.command("run")
def pipeline_run(
    data: Annotated[Path | None, typer.Option("--data", help="CXR-LT data directory (local runs).")] = None,
    config: Annotated[Path, typer.Option(help="Profile YAML (local runs).")] = Path("configs/tiny.yaml"),
    host: Annotated[str | None, typer.Option(
        help="Start one run on this KFP endpoint instead of running here (give every setting with --param).")] = None,
    package: Package = TRAINING_PACKAGE,
    param: Params = None,
    namespace: Namespace = None,
    run_name: Annotated[str | None, typer.Option(help="Cluster run name.")] = None,
    tracking_uri: Annotated[str | None, typer.Option(envvar="MLFLOW_TRACKING_URI", help="MLflow URI.")] = None,
    root: Annotated[Path, typer.Option(help="Local pipeline root (the shared volume is ROOT/shared).")] = Path(
        "local_outputs"),
    epochs: Annotated[int, typer.Option(help="Member epochs (0 = profile).")] = 0,
    zeroshot_epochs: Annotated[int, typer.Option(help="Zero-shot epochs (0 = profile).")] = 0,
    min_map: Annotated[float | None, typer.Option(help="Gate: minimum mAP [default: profile's gate.min_map].")] = None,
    min_mauroc: Annotated[float | None, typer.Option(
        help="Gate: minimum mAUROC [default: profile's gate.min_mauroc].")] = None,
    max_ece: Annotated[float | None, typer.Option(
        help="Gate: maximum calibrated mECE [default: profile's gate.max_ece].")] = None,
    min_unseen_lift: Annotated[float | None, typer.Option(
        help="Gate: minimum unseen mAP over chance; 0 = off [default: profile's gate.min_unseen_lift].")] = None,
    removal: Annotated[Path | None, typer.Option(help="CSV of ImageIDs to drop before splitting.")] = None,
    member_threads: Annotated[int, typer.Option(
        help="Threads per training job (members, router and CLIP; two run side by side); 0 = every core each.")] = 0,
    runner: Annotated[Runner, typer.Option(
        help="subprocess (the project venv; fast) or docker (every component in its image, built by `make "
             "images`; through podman's Docker API where no Docker daemon runs).")] = Runner.subprocess,
    reuse_members: Annotated[bool, typer.Option(
        help="Copy a member from an earlier run under the same --root when its rows, profile, launch settings and "
             "code are the same, instead of training it again.")] = True,
) -> None:
    """Run the training pipeline here (kfp.local), or with --host start one run on a cluster.

    Cache size, members, split and gate come from the profile; the options here only override."""
    if host:
        from pipelines.cluster import run_once

        run_id = run_once(host, package, _params(param), run_name=run_name, namespace=namespace)
        typer.echo(json.dumps({"run_id": run_id, "host": host}))
        return
    if data is None:
        _fail("give --data for a local run, or --host to start a cluster run")
    if not tracking_uri:
        _fail("set MLFLOW_TRACKING_URI or --tracking-uri (cxrlt mlflow up prints it)")
    from pipelines.local_run import run_training_local

    gate = {k: v for k, v in {"min_map": min_map, "min_mauroc": min_mauroc, "max_ece": max_ece,
                              "min_unseen_lift": min_unseen_lift}.items() if v is not None}
    result = run_training_local(root, runner=runner.value, data_dir=str(data.resolve()), config=str(config.resolve()),
                                tracking_uri=tracking_uri, epochs=epochs, zeroshot_epochs=zeroshot_epochs,
                                removal_csv=str(removal.resolve()) if removal else "",
                                member_threads=member_threads, reuse_members=reuse_members, **gate)
    typer.echo(f"pipeline finished; outputs under {result['run_dir']}")


@pipeline_app.command("schedule")
def pipeline_schedule(
    host: Host,
    cron: Annotated[str, typer.Option(help="Six-field cron with seconds, e.g. '0 0 2 * * 0' (Sundays 02:00).")],
    package: Package = TRAINING_PACKAGE,
    param: Params = None,
    job_name: Annotated[str, typer.Option(help="Recurring run name (one per name: a second call updates it).")] = (
        "cxrlt-weekly-retraining"),
    namespace: Namespace = None,
    pipeline_id: Annotated[str | None, typer.Option(help="Uploaded pipeline (cxrlt pipeline upload).")] = None,
    version_id: Annotated[str | None, typer.Option(
        help="Uploaded pipeline version to run; default: the package itself.")] = None,
) -> None:
    """Create or update the KFP recurring run of the training pipeline."""
    from pipelines.cluster import schedule

    if bool(pipeline_id) != bool(version_id):
        _fail("give --pipeline-id and --version-id together (cxrlt pipeline upload prints both)")
    run = schedule(host, package, cron, _params(param), job_name, namespace=namespace, pipeline_id=pipeline_id,
                   version_id=version_id)
    typer.echo(f"recurring run {getattr(run, 'recurring_run_id', '?')} {job_name!r} scheduled ({cron})")
