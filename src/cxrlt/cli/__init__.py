"""The ``cxrlt`` command line: one module per sub-app, all registered on the root app in :mod:`cxrlt.cli._app`."""

from cxrlt.cli import (  # noqa: F401
    data,
    demo,
    ensemble,
    mlflow,
    monitor,
    pipeline,
    registry,
    report,
    serve,
    shadow,
    task1,
    weights,
    zeroshot,
)
from cxrlt.cli._app import app

__all__ = ["app"]
