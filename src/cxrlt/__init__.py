"""cxrlt: long-tailed and zero-shot chest X-ray classification, from training to Triton serving."""

import os as _os

__version__ = "0.1.0"

# MLflow's client sends usage telemetry to an outside endpoint from a background thread. A clinical system should not
# report out of a hospital network (which has no route out anyway), and where the report fails that thread unsets an
# environment variable while other threads iterate the environment (requests' proxy lookup then raises KeyError in a
# training step's metric logging). Off in every cxrlt process and its children unless the user chose otherwise.
_os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
