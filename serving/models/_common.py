"""Helpers shared by the python-backend models (copied next to each model.py as ``_common.py``)."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils


def parameters(args) -> dict:
    config = json.loads(args["model_config"])
    return {k: v["string_value"] for k, v in config.get("parameters", {}).items()}


def invalid(message: str) -> "pb_utils.InferenceResponse":
    """A per-request INVALID_ARGUMENT error: the server stays ready and other requests are unaffected."""
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG))


def call(model: str, inputs: dict, outputs: list[str]) -> dict:
    """BLS call; an error from the callee is raised with its message (and re-reported by the caller)."""
    request = pb_utils.InferenceRequest(model_name=model, requested_output_names=outputs,
                                        inputs=[pb_utils.Tensor(k, v) for k, v in inputs.items()])
    response = request.exec()
    if response.has_error():
        raise pb_utils.TritonModelException(response.error().message())
    return {name: pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in outputs}


def bytes_array(items) -> np.ndarray:
    return np.array([[s.encode() if isinstance(s, str) else s] for s in items], dtype=np.object_)
