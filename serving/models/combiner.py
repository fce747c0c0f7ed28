"""One view's ensemble head: weighted sum of member logits (fitted weights), sigmoid, optional normal gating."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils
from _common import parameters


class TritonPythonModel:
    def initialize(self, args):
        p = parameters(args)
        self.weights = json.loads(p["weights"])  # {"LOGITS_pcam": 0.4, ...}
        self.alpha = float(p.get("normal_gate_alpha", "0") or 0)
        self.normal_index = int(p.get("normal_index", "0"))

    def execute(self, requests):
        responses = []
        for r in requests:
            logits = sum(w * pb_utils.get_input_tensor_by_name(r, name).as_numpy().astype(np.float64)
                         for name, w in self.weights.items())
            probs = 1.0 / (1.0 + np.exp(-logits))
            if self.alpha:
                gate = (1.0 - probs[:, self.normal_index : self.normal_index + 1]) ** self.alpha
                gated = np.clip(probs * gate, 1e-6, 1 - 1e-6)
                gated[:, self.normal_index] = probs[:, self.normal_index]
                probs = gated
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("PROBS", probs.astype(np.float32))]))
        return responses
