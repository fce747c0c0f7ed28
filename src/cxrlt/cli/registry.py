"""``cxrlt registry``: the champion and challenger, their history, promotion and rollback.

Every command prints one JSON document on stdout (MLflow's own notices, such as run links, go to stderr), so its
output can be piped into ``jq`` or read by another program."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from cxrlt.cli._app import app
from cxrlt.platform import PROMOTION_MARGIN, REGISTERED_MODEL

registry_app = typer.Typer(help="Registry: status, history, promote the challenger, roll the champion back.",
                           no_args_is_help=True)
app.add_typer(registry_app, name="registry")

TrackingUri = Annotated[str | None, typer.Option(envvar="MLFLOW_TRACKING_URI", help="MLflow URI.")]
ModelName = Annotated[str, typer.Option(help="Registered model.")]


def _emit(compute) -> None:
    """Run ``compute`` with stdout sent to stderr, then print its result as JSON on the real stdout."""
    with contextlib.redirect_stdout(sys.stderr):
        result = compute()
    typer.echo(json.dumps(result, indent=2))


@registry_app.command("status")
def registry_status(tracking_uri: TrackingUri = None, name: ModelName = REGISTERED_MODEL) -> None:
    """The versions the champion and challenger aliases point at, with each version's gate result and lineage."""
    from cxrlt.registry import status

    _emit(lambda: status(name, tracking_uri))


@registry_app.command("history")
def registry_history(tracking_uri: TrackingUri = None, name: ModelName = REGISTERED_MODEL) -> None:
    """Every alias move, oldest first (the audit trail: alias, from, to, reason, time)."""
    from cxrlt.registry import audit_trail

    _emit(lambda: audit_trail(name, tracking_uri))


@registry_app.command("promote")
def registry_promote(
    labels: Annotated[Path, typer.Option(help="Labels of the evaluation set both versions were scored on.")],
    tracking_uri: TrackingUri = None,
    name: ModelName = REGISTERED_MODEL,
    margin: Annotated[float, typer.Option(help="Non-inferiority margin on mAP.")] = PROMOTION_MARGIN,
) -> None:
    """champion <- challenger if it passed its gate and its mAP CI (paired bootstrap) is within the margin."""
    from cxrlt.registry import promote

    _emit(lambda: promote(labels, name, tracking_uri, margin))


@registry_app.command("rollback")
def registry_rollback(tracking_uri: TrackingUri = None, name: ModelName = REGISTERED_MODEL) -> None:
    """Point champion back at the previous champion (from the alias audit trail)."""
    from cxrlt.registry import rollback

    _emit(lambda: rollback(name, tracking_uri))
