"""One view's ensemble head: its members' logits -> the bundle's combine rule -> normal gating -> calibration.

The arithmetic is ``cxrlt.scoring`` (copied beside this file as ``cxrlt_scoring.py``), the same module the
in-process predictor and the MLflow pyfunc run; the ``scoring`` parameter is the bundle's scoring fields and ``view``
names the ensemble this model serves. Inputs are ``LOGITS_<member kind>``.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils
from _common import check_finite, invalid, parameters
from cxrlt_scoring import BundleScorer


class TritonPythonModel:
    def initialize(self, args):
        p = parameters(args)
        self.scorer = BundleScorer(json.loads(p["scoring"]))
        self.view = p["view"]
        self.inputs = {f"LOGITS_{kind}": kind for kind in self.scorer.views[self.view]["weights"]}

    def execute(self, requests):
        responses = []
        for r in requests:
            error = check_finite(r, self.inputs)
            if error:
                responses.append(invalid(error))
                continue
            logits = {kind: pb_utils.get_input_tensor_by_name(r, name).as_numpy()
                      for name, kind in self.inputs.items()}
            probs = self.scorer.view_probs(self.view, logits)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("PROBS", probs.astype(np.float32))]))
        return responses
