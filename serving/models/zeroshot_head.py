"""Zero-shot head: sigmoid(a * image_embedding @ E.T + b) against the stored prompt-embedding matrix E."""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils
from _common import check_finite, invalid


class TritonPythonModel:
    def initialize(self, args):
        folder = os.path.join(args["model_repository"], args["model_version"])
        self.embeddings = np.load(os.path.join(folder, "text_embeddings.npy")).astype(np.float64)
        with open(os.path.join(folder, "text_classes.json")) as fh:
            scoring = json.load(fh)
        self.a, self.b = float(scoring["a"]), float(scoring["b"])

    def execute(self, requests):
        responses = []
        for r in requests:
            error = check_finite(r, ["EMBEDDING"])
            if error:
                responses.append(invalid(error))
                continue
            emb = pb_utils.get_input_tensor_by_name(r, "EMBEDDING").as_numpy().astype(np.float64)
            probs = 1.0 / (1.0 + np.exp(-(self.a * emb @ self.embeddings.T + self.b)))
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("PROBS", probs.astype(np.float32))]))
        return responses
