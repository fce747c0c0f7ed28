"""``cxrlt mlflow``: a local MLflow tracking/registry server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxrlt.cli._app import app

mlflow_app = typer.Typer(help="A local MLflow tracking/registry server (SQLite + local or S3 artifacts).",
                         no_args_is_help=True)
app.add_typer(mlflow_app, name="mlflow")


@mlflow_app.command("up")
def mlflow_up(
    data: Annotated[Path, typer.Option(help="Directory for mlflow.db and local artifacts.")] = Path("mlflow_data"),
    port: Annotated[int, typer.Option(help="Port (0 = a free one).")] = 5000,
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    artifacts: Annotated[str | None, typer.Option(help="Artifact destination (default DATA/artifacts; or "
                                                       "s3://bucket/prefix with MLFLOW_S3_ENDPOINT_URL/AWS_* set).")]
    = None,
    allowed_hosts: Annotated[str | None, typer.Option(help="Comma-separated Host headers to accept.")] = None,
) -> None:
    """Start mlflow server (one worker, job execution off) and wait until /health answers."""
    from cxrlt.ops.mlflow_server import start

    state = start(data, port, host, artifacts, allowed_hosts)
    uri = state["tracking_uri"]
    typer.echo(f"MLflow at {uri} (pid {state['pid']}); export MLFLOW_TRACKING_URI={uri}")


@mlflow_app.command("down")
def mlflow_down() -> None:
    """Stop the server started by cxrlt mlflow up."""
    from cxrlt.ops.mlflow_server import stop

    typer.echo("stopped" if stop() else "no MLflow server is recorded")
