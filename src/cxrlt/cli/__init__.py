"""The ``cxrlt`` command line: one module per sub-app, all registered on the root app in :mod:`cxrlt.cli._app`."""

from cxrlt.cli import data, demo, ensemble, mlflow, pipeline, registry, report, serve, task1, weights, zeroshot  # noqa: F401
from cxrlt.cli._app import app

__all__ = ["app"]
