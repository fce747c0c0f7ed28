"""The served bundle as an MLflow pyfunc model (logged as a *model from code*): both tasks, no cxrlt needed.

MLflow stores this file as the model and the two files it imports as the model's code (``code/cxrlt_scoring.py`` is
:mod:`cxrlt.scoring`, ``code/cxrlt_images.py`` is :mod:`cxrlt.data.images`), so ``mlflow.pyfunc.load_model`` works
in any environment with the logged requirements (numpy, pandas, onnxruntime, OpenCV, pydicom and its codecs):
nothing here imports cxrlt. The scoring is the same module the in-process predictor and Triton's models run.

Input: a frame with an ``image`` column (encoded PNG or DICOM bytes) or an ``image_path`` column (files readable
where the model runs). Output: one row per image, one column per known finding and per unseen (zero-shot) finding,
keyed by class name, plus ``view`` and ``view_confidence``. An image that cannot be read raises, naming it: a bad file
never becomes a row of numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import cxrlt_images as images
import cxrlt_scoring as scoring
import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.models import set_model

BUNDLE_ARTIFACT = "bundle"


class BundleModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        import onnxruntime as ort

        self.dir = Path(context.artifacts[BUNDLE_ARTIFACT])
        self.bundle = json.loads((self.dir / "bundle.json").read_text())
        self.scorer = scoring.BundleScorer(self.bundle)
        zs = self.bundle.get("zeroshot")
        self.task1 = images.PreprocessConfig.from_dict({"size": self.bundle["image_size"],
                                                        **self.bundle["preprocess"]})
        self.zs = images.PreprocessConfig.from_dict(zs["preprocess"]) if zs else None
        self.text_embeddings = np.load(self.dir / "zeroshot" / "text_embeddings.npy") if zs else None
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.sessions = {p.stem: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
                         for p in (self.dir / "onnx").glob("*.onnx")}

    def _run(self, name: str, x: np.ndarray) -> np.ndarray:
        return self.sessions[name].run(["OUTPUT"], {"INPUT": x.astype(np.float32)})[0]

    def _decoded(self, model_input: pd.DataFrame) -> list[np.ndarray]:
        max_pixels = min(self.task1.max_pixels, self.zs.max_pixels if self.zs else self.task1.max_pixels)
        if "image" in model_input:
            return [images.decode_image(bytes(data), f"row {i}", max_pixels, self.task1.modalities)
                    for i, data in enumerate(model_input["image"])]
        if "image_path" in model_input:
            return [images.read_image(path, max_pixels, self.task1.modalities) for path in model_input["image_path"]]
        raise ValueError("send an `image` column (PNG or DICOM bytes) or an `image_path` column")

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        decoded = self._decoded(model_input)
        known = self.scorer.known
        x = np.stack([self.task1.normalize(images.preprocess_array(img, self.task1)) for img in decoded]) \
            if decoded else np.zeros((0, self.task1.channels, self.task1.size, self.task1.size), np.float32)
        router = self._run("router", x) if self.scorer.router_classes and len(x) else None
        views, confidence = self.scorer.route(router, len(x))
        probs = np.zeros((len(x), len(known)))
        for view in np.unique(views):
            idx = np.flatnonzero(views == view)
            target = self.scorer.target(view)
            logits = self.scorer.member_logits(target, self._run, x[idx])
            probs[idx] = self.scorer.view_probs(target, logits)
        out = pd.DataFrame(probs, columns=known)
        if self.zs is not None:
            z = np.stack([self.zs.normalize(images.preprocess_array(img, self.zs)) for img in decoded]) \
                if decoded else np.zeros((0, self.zs.channels, self.zs.size, self.zs.size), np.float32)
            unseen = self.scorer.zeroshot(self._run("clip_image", z), self.text_embeddings) if len(z) else \
                np.zeros((0, len(self.scorer.unseen)))
            out[self.scorer.unseen] = unseen
        out["view"], out["view_confidence"] = views, confidence
        return out


set_model(BundleModel())
