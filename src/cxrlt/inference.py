"""In-process Task 1 predictor: router -> chosen view's ensemble (or the mixed ensemble) -> 30 probabilities.

This is the reference the served Triton pipeline is compared against.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxrlt.data.images import PreprocessConfig, load_preprocessed
from cxrlt.ensemble import calibrate, combine, load_spec, normal_gate
from cxrlt.labels import KNOWN_CLASSES
from cxrlt.models.factory import ROUTER_CLASSES
from cxrlt.training.trainer import load_member
from cxrlt.tta import TTAModel


class EnsemblePredictor:
    """Loads an ensemble directory once; ``predict`` takes [0, 1] square images of the ensemble's size and applies
    the ensemble's preprocessing contract."""

    def __init__(self, ensemble_dir: str | Path, mixed: bool = False, device: str = "cpu", calibrated: bool = True):
        self.dir = Path(ensemble_dir)
        self.spec = load_spec(self.dir)
        mixed = mixed or "router" not in self.spec  # no router (HPH): every image goes to the mixed members
        self.mixed, self.calibrated = mixed, calibrated
        self.device = torch.device(device)
        self.preprocess = PreprocessConfig.from_dict(self.spec.get("preprocess") or {"size": self.spec["image_size"]})
        self.size = self.preprocess.size
        if mixed and "mixed" not in self.spec["views"]:
            raise ValueError(f"{ensemble_dir} has no mixed ensemble")
        self.router = None if mixed else load_member(self.dir / self.spec["router"])[0].to(self.device)
        self.members: dict[str, dict[str, torch.nn.Module]] = {}
        for view, vspec in self.spec["views"].items():
            self.members[view] = {
                k: TTAModel(load_member(self.dir / path)[0], self.spec["tta"], self.spec.get("tta_merge", "logit"))
                .to(self.device).eval() for k, path in vspec["members"].items()}

    @torch.no_grad()
    def view_probs(self, view: str, x: torch.Tensor) -> np.ndarray:
        """The view ensemble's combined probabilities (before calibration and normal gating)."""
        vspec = self.spec["views"][view]
        logits = {k: self.members[view][k](x).cpu().numpy() for k in vspec["members"]}
        return combine(logits, vspec["weights"], self.spec.get("combine", "logit"))

    @torch.no_grad()
    def _combined(self, images: np.ndarray, batch_size: int) -> pd.DataFrame:
        """Routing and each image's view ensemble: 30 combined probabilities, ``view``, ``view_confidence``."""
        rows = []
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(self.preprocess.normalize(images[start : start + batch_size]))
            x = x.to(self.device)
            if self.mixed:
                views = np.array(["mixed"] * len(x))
                conf = np.ones(len(x))
            else:
                p = torch.softmax(self.router(x), dim=1).cpu().numpy()
                views = np.array(ROUTER_CLASSES)[p.argmax(1)]
                conf = p.max(1)
            probs = np.zeros((len(x), len(KNOWN_CLASSES)), np.float64)
            for view in np.unique(views):
                target = view if view in self.spec["views"] else "mixed"
                if target not in self.spec["views"]:
                    raise ValueError(f"router chose {view!r} but the ensemble has no {view} or mixed members")
                idx = np.flatnonzero(views == view)
                probs[idx] = self.view_probs(target, x[idx])
            frame = pd.DataFrame(probs, columns=list(KNOWN_CLASSES))
            frame["view"], frame["view_confidence"] = views, conf
            rows.append(frame)
        return pd.concat(rows, ignore_index=True)

    def _served(self, combined: pd.DataFrame, calibrated: bool) -> pd.DataFrame:
        """The served output: the per-class calibration (one map for every view), then normal gating."""
        out, known = combined.copy(), list(KNOWN_CLASSES)
        if calibrated:
            out[known] = calibrate(out[known].to_numpy(), self.spec.get("calibration"), known)
        out[known] = normal_gate(out[known], self.spec.get("normal_gate_alpha"))
        return out

    def predict(self, images: np.ndarray, batch_size: int = 64) -> pd.DataFrame:
        """``(N, S, S)`` float [0, 1] images -> frame with 30 class columns, ``view`` and ``view_confidence``."""
        return self._served(self._combined(images, batch_size), self.calibrated)

    def predict_before_after(self, images: np.ndarray, batch_size: int = 64) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The output without and with the calibration, from one pass of the networks (for reliability plots)."""
        combined = self._combined(images, batch_size)
        return self._served(combined, False), self._served(combined, True)

    def predict_files(self, paths: Sequence[str | Path]) -> pd.DataFrame:
        images = np.stack([load_preprocessed(p, self.preprocess) for p in paths]) if paths else \
            np.zeros((0, self.size, self.size))
        return self.predict(images)
