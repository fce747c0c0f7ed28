"""``cxrlt pipeline``: compile, run locally, schedule the Kubeflow pipelines."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxrlt.cli._app import DataDir, _fail, app

pipeline_app = typer.Typer(help="Kubeflow pipelines: compile, run locally, schedule.", no_args_is_help=True)
app.add_typer(pipeline_app, name="pipeline")


@pipeline_app.command("compile")
def pipeline_compile(out: Annotated[Path, typer.Option(help="Output folder.")] = Path("pipelines/compiled")) -> None:
    """Compile every pipeline to KFP IR YAML."""
    from pipelines.compile import compile_all

    for path in compile_all(out):
        typer.echo(str(path))


@pipeline_app.command("run")
def pipeline_run(
    data: DataDir,
    config: Annotated[Path, typer.Option(help="Profile YAML.")] = Path("configs/tiny.yaml"),
    local: Annotated[bool, typer.Option("--local", help="Run with kfp.local's SubprocessRunner.")] = True,
    tracking_uri: Annotated[str | None, typer.Option(envvar="MLFLOW_TRACKING_URI", help="MLflow URI.")] = None,
    root: Annotated[Path, typer.Option(help="Local pipeline root.")] = Path("local_outputs"),
    epochs: Annotated[int, typer.Option(help="Member epochs (0 = profile).")] = 0,
    zeroshot_epochs: Annotated[int, typer.Option(help="Zero-shot epochs (0 = profile).")] = 0,
    min_map: Annotated[float, typer.Option(help="Gate: minimum mAP (30 known classes).")] = 0.1,
    min_mauroc: Annotated[float, typer.Option(help="Gate: minimum mAUROC.")] = 0.75,
    max_ece: Annotated[float, typer.Option(help="Gate: maximum mECE of the calibrated output.")] = 0.15,
    min_unseen_lift: Annotated[float, typer.Option(
        help="Gate: minimum zero-shot unseen mAP over its chance level (mean unseen prevalence); 0 = off.")] = 1.5,
    label_source: Annotated[str, typer.Option(help="all, or physician (PadChest MethodLabel == Physician).")] = "all",
    removal: Annotated[Path | None, typer.Option(help="CSV of ImageIDs to drop before splitting.")] = None,
    member_threads: Annotated[int, typer.Option(
        help="Threads per member training (two run side by side); 0 = every core each.")] = 0,
    runner: Annotated[str, typer.Option(
        help="subprocess (the project venv; fast) or docker (every component in its image, built by `make "
             "images`; through podman's Docker API where no Docker daemon runs).")] = "subprocess",
) -> None:
    """Run the training pipeline on this machine (validate ... register); the jobs follow the profile's networks."""
    from pipelines.local_run import run_training_local

    if not local:
        _fail("only --local runs from here; compile and upload for a cluster (cxrlt pipeline schedule)")
    if not tracking_uri:
        _fail("set MLFLOW_TRACKING_URI or --tracking-uri (cxrlt mlflow up prints it)")
    from cxrlt.config import load_config, pipeline_jobs

    cfg = load_config(config)
    if runner not in ("subprocess", "docker"):
        _fail(f"--runner must be subprocess or docker, got {runner!r}")
    result = run_training_local(root, runner=runner, data_dir=str(data.resolve()), config=str(config.resolve()),
                                tracking_uri=tracking_uri, epochs=epochs, zeroshot_epochs=zeroshot_epochs,
                                min_map=min_map, min_mauroc=min_mauroc, max_ece=max_ece,
                                min_unseen_lift=min_unseen_lift, cache_size=int(cfg["data"]["cache_size"]),
                                jobs=pipeline_jobs(cfg), label_source=label_source,
                                removal_csv=str(removal.resolve()) if removal else "",
                                val_fraction=cfg["data"]["val_fraction"], split_seed=cfg["data"]["split_seed"],
                                member_threads=member_threads)
    typer.echo(f"pipeline finished; outputs under {result['run_dir']}")


@pipeline_app.command("schedule")
def pipeline_schedule(
    host: Annotated[str, typer.Option(help="KFP API endpoint.")],
    cron: Annotated[str, typer.Option(help="Six-field cron with seconds, e.g. '0 0 2 * * 0'.")],
    package: Annotated[Path, typer.Option(help="Compiled pipeline YAML.")] = Path(
        "pipelines/compiled/training_pipeline.yaml"),
    param: Annotated[list[str] | None, typer.Option(help="Pipeline parameter KEY=VALUE (repeatable).")] = None,
    job_name: Annotated[str, typer.Option(help="Recurring run name.")] = "cxrlt-weekly-retraining",
) -> None:
    """Create a KFP recurring run of the compiled training pipeline on a KFP endpoint."""
    from pipelines.schedule import schedule

    params = {}
    for item in param or []:
        key, sep, value = item.partition("=")
        if not sep:
            _fail(f"--param must be KEY=VALUE, got {item!r}")
        params[key] = value
    try:
        run = schedule(host, str(package), cron, params, job_name)
    except ValueError as exc:
        _fail(str(exc))
    typer.echo(f"recurring run {getattr(run, 'recurring_run_id', '?')} created ({cron})")
