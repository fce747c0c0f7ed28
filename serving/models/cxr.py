"""The entry point (BLS): preprocess -> router -> the chosen view's ensemble, plus the zero-shot head.

A bundle without a router (HPH) sends every image to the mixed ensemble and reports the view as "mixed".

Outputs per item: 30 known-finding probabilities, 6 unseen-finding probabilities, the chosen view, its confidence,
the served model version, an error string (empty when the item was fine), and the class names (and bands) in the
order of the probabilities: clients key every probability by name without reading the model config, which a
production server restricts to administrators.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils
from _common import bytes_array, call, invalid, parameters


class TritonPythonModel:
    def initialize(self, args):
        p = parameters(args)
        self.known = json.loads(p["known_classes"])
        self.unseen = json.loads(p["unseen_classes"])
        self.router_classes = json.loads(p["router_classes"])
        self.views = json.loads(p["views"])
        self.version = p["model_version"]
        bands = json.loads(p.get("bands") or "{}")
        # one row of names per answered item: encoded once here, repeated per response
        self.name_rows = {"KNOWN_CLASSES": np.array([c.encode() for c in self.known], dtype=np.object_),
                          "UNSEEN_CLASSES": np.array([c.encode() for c in self.unseen], dtype=np.object_),
                          "KNOWN_BANDS": np.array([bands.get(c, "").encode() for c in self.known], dtype=np.object_)}
        self.has_zeroshot = p.get("zeroshot", "false") == "true"

    def _inputs(self, request):
        out = {}
        for name in ("IMAGE", "PIXELS"):
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                out[name] = tensor.as_numpy()
        return out

    def _infer(self, request):
        pre = call("preprocess", self._inputs(request), ["TASK1_INPUT", "ZS_INPUT", "ERROR"])
        errors = [e[0].decode() if isinstance(e[0], bytes) else str(e[0]) for e in pre["ERROR"]]
        n = len(errors)
        good = np.array([not e for e in errors])
        known = np.full((n, len(self.known)), np.nan, np.float32)
        unseen = np.full((n, len(self.unseen)), np.nan, np.float32)
        views = [""] * n
        confidence = np.zeros((n, 1), np.float32)
        idx = np.flatnonzero(good)
        x = pre["TASK1_INPUT"][idx]
        if not self.router_classes:  # no router (HPH): the mixed ensemble serves every image
            known[idx] = call("mixed_ensemble", {"INPUT": x}, ["PROBS"])["PROBS"]
            for j in idx:
                views[j] = "mixed"
            confidence[idx, 0] = 1.0
            return self._response(pre, idx, known, unseen, views, confidence, errors)
        logits = call("router", {"INPUT": x}, ["OUTPUT"])["OUTPUT"].astype(np.float64)
        prob = np.exp(logits - logits.max(1, keepdims=True))
        prob /= prob.sum(1, keepdims=True)
        chosen = prob.argmax(1)
        for k, view in enumerate(self.router_classes):
            sel = np.flatnonzero(chosen == k)
            if not len(sel):
                continue
            target = view if view in self.views else "mixed"
            known[idx[sel]] = call(f"{target}_ensemble", {"INPUT": x[sel]}, ["PROBS"])["PROBS"]
            for j in sel:
                views[idx[j]] = view
        confidence[idx, 0] = prob.max(1)
        return self._response(pre, idx, known, unseen, views, confidence, errors)

    def _response(self, pre, idx, known, unseen, views, confidence, errors):
        n = len(errors)
        if self.has_zeroshot:
            unseen[idx] = call("zeroshot", {"INPUT": pre["ZS_INPUT"][idx]}, ["PROBS"])["PROBS"]
        return pb_utils.InferenceResponse([
            pb_utils.Tensor("KNOWN_PROBS", known), pb_utils.Tensor("UNSEEN_PROBS", unseen),
            pb_utils.Tensor("VIEW", bytes_array(views)), pb_utils.Tensor("VIEW_CONFIDENCE", confidence),
            pb_utils.Tensor("MODEL_VERSION", bytes_array([self.version] * n)),
            pb_utils.Tensor("ERROR", bytes_array(errors)),
            *(pb_utils.Tensor(name, np.tile(row, (n, 1))) for name, row in self.name_rows.items())])

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._infer(request))
            except pb_utils.TritonModelException as exc:  # preprocess refused the whole request
                responses.append(invalid(str(exc)))
        return responses
