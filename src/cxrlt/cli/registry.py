"""``cxrlt registry``: promote the challenger, roll the champion back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cxrlt.cli._app import app

registry_app = typer.Typer(help="Registry: promote the challenger, roll the champion back.", no_args_is_help=True)
app.add_typer(registry_app, name="registry")


@registry_app.command("promote")
def registry_promote(
    labels: Annotated[Path, typer.Option(help="Labels of the evaluation set both versions were scored on.")],
    tracking_uri: Annotated[str | None, typer.Option(envvar="MLFLOW_TRACKING_URI", help="MLflow URI.")] = None,
    name: Annotated[str, typer.Option(help="Registered model.")] = "cxrlt-bundle",
    margin: Annotated[float, typer.Option(help="Non-inferiority margin on mAP.")] = 0.02,
) -> None:
    """champion <- challenger if it passed its gate and its mAP CI (paired bootstrap) is within the margin."""
    from cxrlt.registry import promote

    decision = promote(labels, name, tracking_uri, margin)
    typer.echo(json.dumps(decision))


@registry_app.command("rollback")
def registry_rollback(
    tracking_uri: Annotated[str | None, typer.Option(envvar="MLFLOW_TRACKING_URI", help="MLflow URI.")] = None,
    name: Annotated[str, typer.Option(help="Registered model.")] = "cxrlt-bundle",
) -> None:
    """Point champion back at the previous champion (from the alias audit trail)."""
    from cxrlt.registry import rollback

    typer.echo(json.dumps(rollback(name, tracking_uri)))
