"""One view's ensemble head: members combined by the bundle's rule, then optional normal gating.

``logit``: sigmoid of the weighted sum of member logits (seed 000); ``probability``: weighted mean of member
probabilities (HPH). The same rule as ``cxrlt.ensemble.combine``; then the view's per-class calibration
p' = sigmoid(a_c * logit(p_c) + b_c) (``cxrlt.ensemble.calibrate``), then gating.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils
from _common import check_finite, invalid, parameters


class TritonPythonModel:
    def initialize(self, args):
        p = parameters(args)
        self.weights = json.loads(p["weights"])  # {"LOGITS_pcam": 0.4, ...}
        self.alpha = float(p.get("normal_gate_alpha", "0") or 0)
        self.normal_index = int(p.get("normal_index", "0"))
        self.combine = p.get("combine", "logit")
        calibration = json.loads(p.get("calibration") or '{"a": [], "b": []}')
        self.cal_a = np.asarray(calibration["a"], np.float64) if calibration["a"] else None
        self.cal_b = np.asarray(calibration["b"], np.float64) if calibration["b"] else None

    def execute(self, requests):
        responses = []
        for r in requests:
            error = check_finite(r, self.weights)
            if error:
                responses.append(invalid(error))
                continue
            logits = {name: pb_utils.get_input_tensor_by_name(r, name).as_numpy().astype(np.float64)
                      for name in self.weights}
            if self.combine == "probability":
                probs = sum(w * (1.0 / (1.0 + np.exp(-logits[name]))) for name, w in self.weights.items())
            else:
                probs = 1.0 / (1.0 + np.exp(-sum(w * logits[name] for name, w in self.weights.items())))
            if self.cal_a is not None:
                q = np.clip(probs, 1e-7, 1 - 1e-7)
                probs = 1.0 / (1.0 + np.exp(-(self.cal_a * (np.log(q) - np.log1p(-q)) + self.cal_b)))
            if self.alpha:
                gate = (1.0 - probs[:, self.normal_index : self.normal_index + 1]) ** self.alpha
                gated = np.clip(probs * gate, 1e-6, 1 - 1e-6)
                gated[:, self.normal_index] = probs[:, self.normal_index]
                probs = gated
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("PROBS", probs.astype(np.float32))]))
        return responses
