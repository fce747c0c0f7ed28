"""Helpers shared by the python-backend models (copied next to each model.py as ``_common.py``)."""

import asyncio
import json

import numpy as np
import triton_python_backend_utils as pb_utils


def parameters(args) -> dict:
    config = json.loads(args["model_config"])
    return {k: v["string_value"] for k, v in config.get("parameters", {}).items()}


def invalid(message: str) -> "pb_utils.InferenceResponse":
    """A per-request INVALID_ARGUMENT error: the server stays ready and other requests are unaffected."""
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG))


def failed(message: str) -> "pb_utils.InferenceResponse":
    """A per-request INTERNAL error (a called model failed or timed out); other requests are unaffected."""
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INTERNAL))


class CalleeError(Exception):
    """A BLS call answered with an error, or not in time. ``message`` is the callee's own text (BLS responses do not
    keep the callee's error code, so the caller decides what the error means)."""

    def __init__(self, model: str, message: str, timed_out: bool = False):
        super().__init__(f"{model}: {message}")
        self.model, self.message, self.timed_out = model, message, timed_out




def _outputs(model: str, response, outputs: list[str]) -> dict:
    if response.has_error():
        error = response.error()
        raise CalleeError(model, error.message())
    return {name: pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in outputs}


async def call(model: str, inputs: dict, outputs: list[str], timeout_s: float) -> dict:
    """Async BLS call bounded by ``timeout_s``; the callee's error is checked per response and raised as
    CalleeError (a timeout too: the caller answers instead of waiting on a stuck model)."""
    request = pb_utils.InferenceRequest(model_name=model, requested_output_names=outputs,
                                        inputs=[pb_utils.Tensor(k, v) for k, v in inputs.items()])
    try:
        response = await asyncio.wait_for(request.async_exec(), timeout_s)
    except TimeoutError:
        raise CalleeError(model, f"no answer within {timeout_s:g} s (timeout)", timed_out=True) from None
    return _outputs(model, response, outputs)


def check_finite(request, names) -> str:
    """Internal models can be called directly by any client that can call ``cxr``: refuse NaN/Inf inputs with a
    message instead of scoring them. Returns the error, or "" when every named input is finite."""
    for name in names:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is not None and not np.isfinite(tensor.as_numpy()).all():
            return f"{name} contains NaN or Inf values; this is an internal model, send images to 'cxr'"
    return ""


def bytes_array(items) -> np.ndarray:
    return np.array([[s.encode() if isinstance(s, str) else s] for s in items], dtype=np.object_)
