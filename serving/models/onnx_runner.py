"""Runs one ONNX file with ONNX Runtime (the embedded default; production uses platform onnxruntime_onnx).

Dynamic batching hands several requests over at once; the valid ones run as one ORT batch. Inputs with NaN/Inf are
refused per request (internal models are reachable by any client that can reach ``cxr``).
"""

import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils
from _common import check_finite, invalid, parameters


class TritonPythonModel:
    def initialize(self, args):
        params = parameters(args)
        path = os.path.join(args["model_repository"], args["model_version"], params.get("onnx_file", "model.onnx"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_threads", "1"))
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        errors = [check_finite(r, ["INPUT"]) for r in requests]
        responses = [invalid(e) if e else None for e in errors]
        valid = [i for i, r in enumerate(responses) if r is None]
        if not valid:
            return responses
        arrays = [pb_utils.get_input_tensor_by_name(requests[i], "INPUT").as_numpy() for i in valid]
        out = self.session.run(["OUTPUT"], {"INPUT": np.concatenate(arrays).astype(np.float32)})[0]
        start = 0
        for i, a in zip(valid, arrays, strict=True):
            responses[i] = pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", out[start : start + len(a)])])
            start += len(a)
        return responses
