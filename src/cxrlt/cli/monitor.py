"""``cxrlt monitor``: drift of the served traffic from what the registered version was validated on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cxrlt.cli._app import _fail, app
from cxrlt.platform import CHAMPION_ALIAS

monitor_app = typer.Typer(help="Drift monitoring of the served model: a Prometheus window against the registered "
                               "version's validated reference.", no_args_is_help=True)
app.add_typer(monitor_app, name="monitor")


@monitor_app.command("check")
def monitor_check(
    prometheus: Annotated[str, typer.Option(help="Prometheus base URL (it scrapes Triton's metrics port).")],
    version: Annotated[str, typer.Option(
        help="Registered version whose validation is the reference (@alias or a number).")] = f"@{CHAMPION_ALIAS}",
    reference: Annotated[Path | None, typer.Option(
        help="A drift reference JSON to use instead of the registered version's drift_reference.json.")] = None,
    window: Annotated[str | None, typer.Option(
        help="Served window, a Prometheus duration [default: the profile's monitor.window, 6h].")] = None,
    at: Annotated[float | None, typer.Option(help="Judge the window that ends at this Unix time (default: now).")]
    = None,
    config: Annotated[Path | None, typer.Option(
        help="Profile whose monitor.* settings judge the window (their defaults without it).")] = None,
    tracking_uri: Annotated[str | None, typer.Option(
        envvar="MLFLOW_TRACKING_URI", help="MLflow: the version's reference, and where the result is logged.")]
    = None,
    kfp_host: Annotated[str | None, typer.Option(
        help="KFP endpoint: when the window drifts past the threshold, start one training run there.")] = None,
    package: Annotated[Path, typer.Option(help="Compiled training pipeline to start.")] = Path(
        "pipelines/compiled/training_pipeline.yaml"),
    param: Annotated[list[str] | None, typer.Option(help="Training run parameter NAME=VALUE (repeatable).")] = None,
    namespace: Annotated[str | None, typer.Option(help="KFP namespace (multi-user).")] = None,
) -> None:
    """Judge the served window against the reference: per finding's score histogram and for the routed-view and
    declared-bit-depth mix, a chi-square test (scipy) and the population stability index. Logs the result to MLflow
    (experiment cxrlt-monitor) when a tracking URI is set and, with --kfp-host, starts the training pipeline when
    the input mix or the profile's share of findings drifted. Prints the report as JSON (run_id: the training run
    started, or null)."""
    from cxrlt.ops.monitor import monitor_once

    if reference is None and not tracking_uri:
        _fail("give --reference, or set MLFLOW_TRACKING_URI so the registered version's reference can be read")
    out = monitor_once(prometheus, version, tracking_uri, config, window, reference, at=at)
    if out["retrain"] and kfp_host:
        from cxrlt.cli.pipeline import _params
        from pipelines.cluster import run_once

        out["run_id"] = run_once(kfp_host, package, _params(param), run_name=f"cxrlt-drift-{Path(out['version']).name}",
                                 namespace=namespace)
        out["outcome"] = "retrain"
    typer.echo(json.dumps(out, indent=2, default=float))
