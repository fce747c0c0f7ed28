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

Shadow scoring (a repository built with a challenger): a fixed share of the scored items (``shadow_fraction``) is
scored by the challenger (its models prefixed ``shadow_``) in a background task after the answers are made: its
networks take the champion's preprocessed images when the two bundles' preprocessing contracts are the same, its
own entry (``shadow_cxr``) the request's bytes otherwise; the answer never waits for it and never changes. At most
``shadow_queue`` items are in flight; items beyond that are dropped and counted
(``cxrlt_shadow_dropped_total{reason}``), as are failed shadow calls. Agreement is added per finding to
``cxrlt_shadow_sums_total{stat}`` (``cxrlt_shadow.py`` says which sums), labelled with both versions, so a window of
them says how the challenger agrees with the champion; the sums are added every ``shadow_flush_s`` seconds (a
metric call per sum and item would cost more than the comparison).

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
from cxrlt_shadow import STATS, ShadowSampler, agreement_sums

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
        self.prefix = p.get("model_prefix", "")  # "shadow_" in the challenger's own entry
        self.shadow_model = p.get("shadow_model", "")
        if self.shadow_model:
            self._shadow_init(p)

    # ---- shadow scoring -----------------------------------------------------------------------------------------
    def _shadow_init(self, p: dict):
        self.sampler = ShadowSampler(float(p["shadow_fraction"]))
        self.shadow_queue, self.shadow_threshold = int(p["shadow_queue"]), float(p["shadow_threshold"])
        self.shadow_flush_s = float(p.get("shadow_flush_s", "2"))
        self.shadow_inflight, self.shadow_tasks, self.shadow_flusher = 0, set(), None
        # the challenger's scoring when its preprocessing contracts are the champion's: the champion's preprocessed
        # images go straight to its networks (no second decode); else its own entry gets the request's bytes
        scoring = p.get("shadow_scoring")
        self.shadow_scorer = BundleScorer(json.loads(scoring)) if scoring else None
        self.shadow_prefix = p.get("shadow_prefix", "shadow_")
        versions = {"champion": self.version, "challenger": p["shadow_version"]}
        family = pb_utils.MetricFamily
        self.m_shadow_sums = family("cxrlt_shadow_sums_total", "Per-finding sums of the challenger's agreement with "
                                    "the champion on the shadow-scored items (stat: n, flips, abs_diff, x, y, xx, yy, "
                                    "xy; x is the champion's score)", family.COUNTER)
        self.m_shadow_dropped = family("cxrlt_shadow_dropped_total", "Items chosen for shadow scoring but not "
                                       "compared (queue_full: too many in flight; failed: the challenger's call "
                                       "failed or refused the item)", family.COUNTER)
        self.shadow_sums = {(kind, name, stat): self.m_shadow_sums.Metric(labels={
            "finding": name, "kind": kind, "stat": stat, **versions})
            for kind, names in (("known", self.known), ("unseen", self.unseen)) for name in names for stat in STATS}
        self.shadow_pending: dict = {}  # sums not yet added to the counters (one metric call each, so batched)
        self.shadow_dropped = {reason: self.m_shadow_dropped.Metric(labels={"reason": reason, **versions})
                               for reason in ("queue_full", "failed")}

    def _shadow(self, inputs: dict, idx: np.ndarray, known: np.ndarray, unseen: np.ndarray, t1: np.ndarray,
                zs: np.ndarray) -> None:
        """Send the sampled ones of one request's scored items (``idx``; their champion scores ``known``/``unseen``,
        their preprocessed images ``t1``/``zs``) to the challenger in the background, or count them dropped when
        too many are in flight."""
        chosen = self.sampler.take(len(idx))
        if not chosen.any():
            return
        n = int(chosen.sum())
        if self.shadow_inflight + n > self.shadow_queue:
            self.shadow_dropped["queue_full"].increment(n)
            return
        loop = asyncio.get_running_loop()
        if self.shadow_flusher is None:
            self.shadow_flusher = loop.create_task(self._flush_loop())
        self.shadow_inflight += n
        if self.shadow_scorer is not None:
            work = self._compare_preprocessed(t1[chosen], zs[chosen], known[chosen], unseen[chosen])
        else:
            work = self._compare({name: value[idx[chosen]] for name, value in inputs.items()}, known[chosen],
                                 unseen[chosen])
        task = loop.create_task(self._guarded(n, work))
        self.shadow_tasks.add(task)  # the loop keeps only weak references to its tasks
        task.add_done_callback(self.shadow_tasks.discard)

    async def _flush_loop(self):
        """Add the pending sums to the counters every ``shadow_flush_s`` seconds (a metric call per sum is too
        dear to make per item)."""
        while True:
            await asyncio.sleep(self.shadow_flush_s)
            pending, self.shadow_pending = self.shadow_pending, {}
            for key, value in pending.items():
                self.shadow_sums[key].increment(value)

    def _add_agreement(self, known, unseen, their_known, their_unseen, their_known_names, their_unseen_names):
        for kind, ours, names, theirs, their_names in (("known", known, self.known, their_known, their_known_names),
                                                       ("unseen", unseen, self.unseen, their_unseen,
                                                        their_unseen_names)):
            if not len(ours) or not names or not their_names:
                continue
            column = {name: j for j, name in enumerate(their_names)}  # by class name, never by position
            shared = [i for i, name in enumerate(names) if name in column]
            aligned = theirs[:, [column[names[i]] for i in shared]]
            sums = agreement_sums(ours[:, shared], aligned, self.shadow_threshold)
            for stat, values in sums.items():
                for k, i in enumerate(shared):
                    if values[k]:
                        key = (kind, names[i], stat)
                        self.shadow_pending[key] = self.shadow_pending.get(key, 0.0) + float(values[k])

    async def _guarded(self, n: int, work) -> None:
        """One background comparison of ``n`` items: a failure only counts (the answer is long gone), and the items
        leave the in-flight count either way."""
        try:
            await work
        except Exception:  # noqa: BLE001 - a failed or timed-out shadow call is counted, never raised
            self.shadow_dropped["failed"].increment(n)
        finally:
            self.shadow_inflight -= n

    async def _compare_preprocessed(self, t1, zs, known, unseen) -> None:
        scorer = self.shadow_scorer
        (their_known, _, _), their_unseen = await asyncio.gather(
            self._task1(t1, scorer, self.shadow_prefix), self._zeroshot(zs, bool(scorer.unseen), self.shadow_prefix))
        self._add_agreement(known, unseen, their_known, their_unseen, scorer.known, scorer.unseen)

    async def _compare(self, sent: dict, known: np.ndarray, unseen: np.ndarray) -> None:
        out = await call(self.shadow_model, sent, ["KNOWN_PROBS", "UNSEEN_PROBS", "ERROR", "KNOWN_CLASSES",
                                                   "UNSEEN_CLASSES"], self.timeout_s)
        ok = np.array([not e[0] for e in out["ERROR"]])
        if not ok.all():
            self.shadow_dropped["failed"].increment(int((~ok).sum()))

        def names(rows):
            return [c.decode() if isinstance(c, bytes) else str(c) for c in rows[0]] if len(rows) else []

        self._add_agreement(known[ok], unseen[ok], out["KNOWN_PROBS"][ok], out["UNSEEN_PROBS"][ok],
                            names(out["KNOWN_CLASSES"]), names(out["UNSEEN_CLASSES"]))

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

    @staticmethod
    def _inputs(request) -> dict:
        inputs = {}
        for name in IMAGE_INPUTS:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                inputs[name] = tensor.as_numpy()
        return inputs

    async def _preprocess(self, inputs: dict) -> dict:
        refused = over_cap(inputs, self.max_image_bytes)
        if not refused:
            return await call(self.prefix + "preprocess", inputs, ["TASK1_INPUT", "ZS_INPUT", "ERROR"], self.timeout_s)
        n = len(inputs["IMAGE"] if "IMAGE" in inputs else inputs["PIXELS"])
        keep = [i for i in range(n) if i not in refused]
        if not keep:
            raise CalleeError("cxr", "; ".join(refused.values()))
        sent = {name: value[keep] for name, value in inputs.items()}  # only the items within the cap travel on
        sent["INDEX"] = np.array(keep, np.int32)[:, None]
        try:
            out = await call(self.prefix + "preprocess", sent, ["TASK1_INPUT", "ZS_INPUT", "ERROR"], self.timeout_s)
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

    async def _view_probs(self, view: str, x: np.ndarray, scorer: BundleScorer, prefix: str) -> np.ndarray:
        target = scorer.target(view)
        return (await call(f"{prefix}{target}_ensemble", {"INPUT": x}, ["PROBS"], self.timeout_s))["PROBS"]

    async def _task1(self, x: np.ndarray, scorer: BundleScorer | None = None, prefix: str | None = None):
        """Known-finding probabilities, view names and router confidence for a batch of preprocessed images (by
        this entry's models, or by the challenger's: ``scorer`` and ``prefix``)."""
        scorer, prefix = scorer or self.scorer, self.prefix if prefix is None else prefix
        n = len(x)
        if not scorer.router_classes:  # no router (HPH): the mixed ensemble serves every image
            return await self._view_probs("mixed", x, scorer, prefix), ["mixed"] * n, np.ones(n, np.float32)
        logits = (await call(prefix + "router", {"INPUT": x}, ["OUTPUT"], self.timeout_s))["OUTPUT"]
        views, confidence = scorer.route(logits, n)
        groups = [(view, np.flatnonzero(views == view)) for view in np.unique(views)]
        known = np.zeros((n, len(scorer.known)), np.float32)
        answers = await asyncio.gather(*(self._view_probs(view, x[sel], scorer, prefix) for view, sel in groups))
        for (_, sel), probs in zip(groups, answers, strict=True):
            known[sel] = probs
        return known, [str(v) for v in views], confidence.astype(np.float32)

    async def _zeroshot(self, x: np.ndarray, has_zeroshot: bool | None = None, prefix: str | None = None):
        if not (self.has_zeroshot if has_zeroshot is None else has_zeroshot):
            return np.full((len(x), len(self.unseen)), np.nan, np.float32)
        prefix = self.prefix if prefix is None else prefix
        return (await call(prefix + "zeroshot", {"INPUT": x}, ["PROBS"], self.timeout_s))["PROBS"]

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
        inputs = [self._inputs(r) for r in requests]
        results = await asyncio.gather(*(self._preprocess(x) for x in inputs), return_exceptions=True)
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
                if self.shadow_model:
                    self._shadow(inputs[i], idx, known[start:stop], unseen[start:stop], t1[start:stop],
                                 zs[start:stop])
                errors = [e[0].decode() if isinstance(e[0], bytes) else str(e[0]) for e in pre["ERROR"]]
                self._count(described[i], v, errors=errors)
                start = stop
        return responses
