"""Runs one ONNX file with ONNX Runtime (the embedded default; production uses platform onnxruntime_onnx).

Dynamic batching hands several requests over at once; they run as one ORT batch.
"""

import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils
from _common import parameters


class TritonPythonModel:
    def initialize(self, args):
        params = parameters(args)
        path = os.path.join(args["model_repository"], args["model_version"], params.get("onnx_file", "model.onnx"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_threads", "1"))
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, "INPUT").as_numpy() for r in requests]
        out = self.session.run(["OUTPUT"], {"INPUT": np.concatenate(arrays).astype(np.float32)})[0]
        responses, start = [], 0
        for a in arrays:
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", out[start : start + len(a)])]))
            start += len(a)
        return responses
