"""Zero-shot head: sigmoid(a * image_embedding @ E.T + b) against the stored prompt-embedding matrix E
(``cxrlt_scoring.zeroshot_probs``; a and b from the bundle's scoring fields)."""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils
from _common import check_finite, invalid, parameters
from cxrlt_scoring import BundleScorer


class TritonPythonModel:
    def initialize(self, args):
        folder = os.path.join(args["model_repository"], args["model_version"])
        self.embeddings = np.load(os.path.join(folder, "text_embeddings.npy"))
        self.scorer = BundleScorer(json.loads(parameters(args)["scoring"]))

    def execute(self, requests):
        responses = []
        for r in requests:
            error = check_finite(r, ["EMBEDDING"])
            if error:
                responses.append(invalid(error))
                continue
            emb = pb_utils.get_input_tensor_by_name(r, "EMBEDDING").as_numpy()
            probs = self.scorer.zeroshot(emb, self.embeddings)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("PROBS", probs.astype(np.float32))]))
        return responses
