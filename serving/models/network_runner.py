"""Runs one served network in the python backend: an ONNX file with ONNX Runtime (the embedded default; production
CPU/GPU ONNX uses platform onnxruntime_onnx), or an AOTInductor ``.pt2`` package compiled for this machine's GPU
(``serve build --onnx-runtime aoti``), with CUDA graphs for small batches (``_engines.py``).

Dynamic batching hands several requests over at once; the valid ones run as one batch. Inputs with NaN/Inf are
refused per request (internal models are reachable by any client that can reach ``cxr``).
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils
from _common import check_finite, invalid, parameters
from _engines import engine_for


class TritonPythonModel:
    def initialize(self, args):
        params = parameters(args)
        config = json.loads(args["model_config"])
        item_shape = tuple(int(d) for d in config["input"][0]["dims"])
        path = os.path.join(args["model_repository"], args["model_version"], params.get("model_file", "model.onnx"))
        device = params.get("device", "cpu")
        if device == "cuda":
            device = f"cuda:{args['model_instance_device_id']}"  # KIND_GPU: the instance's own GPU
        graphs = tuple(int(b) for b in params.get("cuda_graph_batches", "").split(",") if b)
        self.engine = engine_for(path, item_shape, device, params.get("dtype", "float32"),
                                 int(params.get("intra_op_threads", "1")), graphs)

    def execute(self, requests):
        errors = [check_finite(r, ["INPUT"]) for r in requests]
        responses = [invalid(e) if e else None for e in errors]
        valid = [i for i, r in enumerate(responses) if r is None]
        if not valid:
            return responses
        arrays = [pb_utils.get_input_tensor_by_name(requests[i], "INPUT").as_numpy() for i in valid]
        out = self.engine(np.concatenate(arrays).astype(np.float32))
        start = 0
        for i, a in zip(valid, arrays, strict=True):
            responses[i] = pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", out[start : start + len(a)])])
            start += len(a)
        return responses
