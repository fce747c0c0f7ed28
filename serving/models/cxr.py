"""The entry point (async BLS): preprocess -> router -> the chosen view's ensemble, alongside the zero-shot head.

Dynamic batching hands this model several requests at once: each is preprocessed on its own (its errors stay its
own), then the good items of all of them are scored together, so concurrent single-image requests reach the networks
as one batch. Zero-shot runs at the same time as routing and the view ensembles (``async_exec``). Every call carries
the configured timeout and its response is checked: a failed or timed-out call fails the requests of that batch
with the callee's message, never the server.

A bundle without a router (HPH) sends every image to the mixed ensemble and reports the view as "mixed".

Metrics (Triton custom metrics on the metrics port, beside the ``nv_*`` ones; ``_observe.py`` says what is counted):
``cxrlt_entry_items_total`` by input kind, bit depth and routed view (``refused`` for refused items),
``cxrlt_entry_refusals_total`` by reason, ``cxrlt_entry_score`` (a histogram per finding with fixed buckets), and
``cxrlt_entry_{preprocess,scoring}_duration_us_total`` with ``cxrlt_entry_batches_total`` (their sums per batch).

Outputs per item: 30 known-finding probabilities, 6 unseen-finding probabilities, the chosen view, its confidence,
the served model version, an error string (empty when the item was fine), and the class names (and bands) in the
order of the probabilities: clients key every probability by name without reading the model config, which a
production server restricts to administrators.
"""

import asyncio
import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils
from _common import CalleeError, bytes_array, call, failed, invalid, parameters
from _observe import SCORE_BUCKETS, bit_depth, input_kind, pixels_depth, refusal_reason, refusal_reasons
from cxrlt_scoring import BundleScorer

IMAGE_INPUTS = ("IMAGE", "PIXELS", "BITS")


def over_cap(inputs: dict, max_bytes: int) -> dict[int, str]:
    """Items larger than ``max_bytes`` (encoded bytes, or 4 bytes per raw pixel), by position, with the reason; they
    are refused here, before any copy into another model."""
    if "IMAGE" in inputs:
        sizes = [len(row.reshape(-1)[0]) for row in inputs["IMAGE"]]
        kind = "encoded image"
    elif "PIXELS" in inputs and inputs["PIXELS"].ndim == 3:
        sizes = [inputs["PIXELS"][0].nbytes] * len(inputs["PIXELS"])
        kind = f"raw {inputs['PIXELS'].shape[1]}x{inputs['PIXELS'].shape[2]} float32 image"
    else:
        return {}
    return {i: f"item {i}: {kind} of {n} bytes is larger than this server's limit of {max_bytes} bytes "
               "(max_image_bytes)" for i, n in enumerate(sizes) if n > max_bytes}


class TritonPythonModel:
    def initialize(self, args):
        p = parameters(args)
        self.scorer = BundleScorer(json.loads(p["scoring"]))
        self.known, self.unseen = self.scorer.known, self.scorer.unseen
        self.router_classes = self.scorer.router_classes
        self.version = p["model_version"]
        self.timeout_s = float(p.get("bls_timeout_s", "60"))
        self.max_image_bytes = int(p["max_image_bytes"])
        bands = json.loads(p.get("bands") or "{}")
        # one row of names per answered item: encoded once here, repeated per response
        self.name_rows = {"KNOWN_CLASSES": np.array([c.encode() for c in self.known], dtype=np.object_),
                          "UNSEEN_CLASSES": np.array([c.encode() for c in self.unseen], dtype=np.object_),
                          "KNOWN_BANDS": np.array([bands.get(c, "").encode() for c in self.known], dtype=np.object_)}
        self.has_zeroshot = bool(self.unseen)
        self.metrics_on = p.get("entry_metrics", "on") == "on"
        if self.metrics_on:
            self._metrics_init()

    # ---- metrics ------------------------------------------------------------------------------------------------
    def _metrics_init(self):
        family = pb_utils.MetricFamily
        self.m_items = family("cxrlt_entry_items_total", "Items received by the cxr entry, by input kind, bit depth "
                              "and routed view (refused: not scored)", family.COUNTER)
        self.m_refusals = family("cxrlt_entry_refusals_total", "Items the cxr entry refused, by reason",
                                 family.COUNTER)
        self.m_scores = family("cxrlt_entry_score", "Served probability of every finding of every scored item",
                               family.HISTOGRAM)
        self.m_batches = family("cxrlt_entry_batches_total", "Batches the cxr entry executed", family.COUNTER)
        self.m_pre = family("cxrlt_entry_preprocess_duration_us_total", "Wall time of the entry's preprocessing, "
                            "summed over batches (microseconds)", family.COUNTER)
        self.m_score = family("cxrlt_entry_scoring_duration_us_total", "Wall time of routing, view ensembles and "
                              "zero-shot, summed over batches (microseconds)", family.COUNTER)
        self.batches, self.pre_us, self.score_us = (self.m_batches.Metric(labels={}), self.m_pre.Metric(labels={}),
                                                    self.m_score.Metric(labels={}))
        self.score_metrics = {(kind, name): self.m_scores.Metric(labels={"finding": name, "kind": kind},
                                                                 buckets=list(SCORE_BUCKETS))
                              for kind, names in (("known", self.known), ("unseen", self.unseen)) for name in names}
        self._labelled = {}

    def _counter(self, family, **labels):
        key = (id(family), tuple(sorted(labels.items())))
        if key not in self._labelled:
            self._labelled[key] = family.Metric(labels=labels)
        return self._labelled[key]

    @staticmethod
    def _describe(request) -> list[tuple[str, str]]:
        """(input kind, bit depth) of every item of a request, from the bytes' headers or the PIXELS/BITS inputs."""
        image = pb_utils.get_input_tensor_by_name(request, "IMAGE")
        if image is not None:
            out = []
            for row in image.as_numpy():
                payload = row.reshape(-1)[0]
                payload = payload if isinstance(payload, bytes) else bytes(payload)
                out.append((input_kind(payload), bit_depth(payload)))
            return out
        pixels = pb_utils.get_input_tensor_by_name(request, "PIXELS")
        if pixels is None:
            return []
        bits = pb_utils.get_input_tensor_by_name(request, "BITS")
        depth = bits.as_numpy().reshape(-1) if bits is not None else [None] * len(pixels.as_numpy())
        return [("pixels", pixels_depth(d)) for d in depth]

    def _count(self, described, views, errors=None, request_error=None):
        """Count one request's items: their routed views (or ``refused``) and every refusal's reason."""
        if not self.metrics_on:
            return
        if request_error is not None:
            for reason in refusal_reasons(request_error):
                self._counter(self.m_refusals, reason=reason).increment(1)
            views = ["refused"] * len(described)
        for j, (kind, bits) in enumerate(described):
            refused = errors is not None and errors[j]
            if refused:
                self._counter(self.m_refusals, reason=refusal_reason(errors[j])).increment(1)
            view = "refused" if refused else views[j]
            self._counter(self.m_items, input=kind, bits=bits, view=view).increment(1)

    def _observe_scores(self, known, unseen):
        if not self.metrics_on:
            return
        for values, names, kind in ((known, self.known, "known"), (unseen, self.unseen, "unseen")):
            for col, name in enumerate(names):
                metric = self.score_metrics[(kind, name)]
                for value in values[:, col]:
                    if np.isfinite(value):
                        metric.observe(float(value))

    async def _preprocess(self, request) -> dict:
        inputs = {}
        for name in IMAGE_INPUTS:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                inputs[name] = tensor.as_numpy()
        refused = over_cap(inputs, self.max_image_bytes)
        if not refused:
            return await call("preprocess", inputs, ["TASK1_INPUT", "ZS_INPUT", "ERROR"], self.timeout_s)
        n = len(inputs["IMAGE"] if "IMAGE" in inputs else inputs["PIXELS"])
        keep = [i for i in range(n) if i not in refused]
        if not keep:
            raise CalleeError("cxr", "; ".join(refused.values()))
        sent = {name: value[keep] for name, value in inputs.items()}  # only the items within the cap travel on
        sent["INDEX"] = np.array(keep, np.int32)[:, None]
        try:
            out = await call("preprocess", sent, ["TASK1_INPUT", "ZS_INPUT", "ERROR"], self.timeout_s)
        except CalleeError as exc:
            if exc.timed_out:
                raise
            raise CalleeError("cxr", "; ".join([*refused.values(), exc.message])) from None
        full = {"ERROR": np.array([[refused.get(i, "").encode()] for i in range(n)], dtype=np.object_)}
        for name in ("TASK1_INPUT", "ZS_INPUT"):
            full[name] = np.zeros((n, *out[name].shape[1:]), np.float32)
            full[name][keep] = out[name]
        full["ERROR"][keep] = out["ERROR"]
        return full

    async def _view_probs(self, view: str, x: np.ndarray) -> np.ndarray:
        target = self.scorer.target(view)
        return (await call(f"{target}_ensemble", {"INPUT": x}, ["PROBS"], self.timeout_s))["PROBS"]

    async def _task1(self, x: np.ndarray):
        """Known-finding probabilities, view names and router confidence for a batch of preprocessed images."""
        n = len(x)
        if not self.router_classes:  # no router (HPH): the mixed ensemble serves every image
            return await self._view_probs("mixed", x), ["mixed"] * n, np.ones(n, np.float32)
        logits = (await call("router", {"INPUT": x}, ["OUTPUT"], self.timeout_s))["OUTPUT"]
        views, confidence = self.scorer.route(logits, n)
        groups = [(view, np.flatnonzero(views == view)) for view in np.unique(views)]
        known = np.zeros((n, len(self.known)), np.float32)
        answers = await asyncio.gather(*(self._view_probs(view, x[sel]) for view, sel in groups))
        for (_, sel), probs in zip(groups, answers, strict=True):
            known[sel] = probs
        return known, [str(v) for v in views], confidence.astype(np.float32)

    async def _zeroshot(self, x: np.ndarray) -> np.ndarray:
        if not self.has_zeroshot:
            return np.full((len(x), len(self.unseen)), np.nan, np.float32)
        return (await call("zeroshot", {"INPUT": x}, ["PROBS"], self.timeout_s))["PROBS"]

    def _response(self, pre: dict, known, unseen, views, confidence) -> "pb_utils.InferenceResponse":
        errors = [e[0].decode() if isinstance(e[0], bytes) else str(e[0]) for e in pre["ERROR"]]
        n = len(errors)
        return pb_utils.InferenceResponse([
            pb_utils.Tensor("KNOWN_PROBS", known), pb_utils.Tensor("UNSEEN_PROBS", unseen),
            pb_utils.Tensor("VIEW", bytes_array(views)), pb_utils.Tensor("VIEW_CONFIDENCE", confidence[:, None]),
            pb_utils.Tensor("MODEL_VERSION", bytes_array([self.version] * n)),
            pb_utils.Tensor("ERROR", bytes_array(errors)),
            *(pb_utils.Tensor(name, np.tile(row, (n, 1))) for name, row in self.name_rows.items())])

    async def execute(self, requests):
        started = time.perf_counter()
        described = [self._describe(r) for r in requests] if self.metrics_on else [[]] * len(requests)
        results = await asyncio.gather(*(self._preprocess(r) for r in requests), return_exceptions=True)
        preprocessed = time.perf_counter()
        if self.metrics_on:
            self.batches.increment(1)
            self.pre_us.increment(int((preprocessed - started) * 1e6))
        responses = [None] * len(requests)
        good_items = {}  # request index -> indices of its items that decoded
        for i, result in enumerate(results):
            if isinstance(result, CalleeError):  # preprocess refused every item of this request (or timed out)
                responses[i] = failed(str(result)) if result.timed_out else invalid(result.message)
                self._count(described[i], [], request_error=result.message)
            elif isinstance(result, Exception):
                responses[i] = failed(f"preprocess: {type(result).__name__}: {result}")
                self._count(described[i], [], request_error=f"{type(result).__name__}: {result}")
            else:
                good_items[i] = np.flatnonzero([not e[0] for e in result["ERROR"]])
        if good_items:
            order = list(good_items)
            t1 = np.concatenate([results[i]["TASK1_INPUT"][good_items[i]] for i in order])
            zs = np.concatenate([results[i]["ZS_INPUT"][good_items[i]] for i in order])
            try:
                (known, views, confidence), unseen = await asyncio.gather(self._task1(t1), self._zeroshot(zs))
            except Exception as exc:  # a callee failed or timed out: this batch's requests fail, the server stays
                for i in order:
                    responses[i] = failed(f"scoring failed ({exc})")
                    self._count(described[i], [], request_error=f"scoring failed ({exc})")
                return responses
            finally:
                if self.metrics_on:
                    self.score_us.increment(int((time.perf_counter() - preprocessed) * 1e6))
            self._observe_scores(known, unseen)
            start = 0
            for i in order:
                pre, idx = results[i], good_items[i]
                n, stop = len(pre["ERROR"]), start + len(idx)
                k = np.full((n, len(self.known)), np.nan, np.float32)
                u = np.full((n, len(self.unseen)), np.nan, np.float32)
                v, c = [""] * n, np.zeros(n, np.float32)
                k[idx], u[idx], c[idx] = known[start:stop], unseen[start:stop], confidence[start:stop]
                for j, view in zip(idx, views[start:stop], strict=True):
                    v[j] = view
                responses[i] = self._response(pre, k, u, v, c)
                errors = [e[0].decode() if isinstance(e[0], bytes) else str(e[0]) for e in pre["ERROR"]]
                self._count(described[i], v, errors=errors)
                start = stop
        return responses
