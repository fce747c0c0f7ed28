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
from cxrlt.ensemble import load_spec, spec_scorer
from cxrlt.errors import InvalidInputError
from cxrlt.models.factory import load_member
from cxrlt.tta import TTAModel


class EnsemblePredictor:
    """Loads an ensemble directory once; ``predict`` takes [0, 1] square images of the ensemble's size and applies
    the ensemble's preprocessing contract."""

    def __init__(self, ensemble_dir: str | Path, mixed: bool = False, device: str = "cpu", calibrated: bool = True):
        self.dir = Path(ensemble_dir)
        self.spec = load_spec(self.dir)
        self.scorer = spec_scorer(self.spec)
        mixed = mixed or not self.spec["router"]  # no router (HPH): every image goes to the mixed members
        self.mixed, self.calibrated = mixed, calibrated
        self.device = torch.device(device)
        self.preprocess = PreprocessConfig.from_dict(self.spec["preprocess"])
        self.size = self.preprocess.size
        if mixed and "mixed" not in self.spec["views"]:
            raise InvalidInputError(f"{ensemble_dir} has no mixed ensemble")
        self.router = None if mixed else load_member(self.dir / self.spec["router"])[0].to(self.device)
        self.members: dict[str, dict[str, torch.nn.Module]] = {}
        for view, vspec in self.spec["views"].items():
            self.members[view] = {
                k: TTAModel(load_member(self.dir / path)[0], self.spec["tta"], self.spec["tta_merge"])
                .to(self.device).eval() for k, path in vspec["members"].items()}

    @torch.no_grad()
    def member_logits(self, view: str, x: torch.Tensor) -> dict[str, np.ndarray]:
        return {k: m(x).cpu().numpy() for k, m in self.members[view].items()}

    def view_probs(self, view: str, x: torch.Tensor) -> np.ndarray:
        """The view ensemble's combined probabilities (before calibration and normal gating)."""
        return self.scorer.view_probs(view, self.member_logits(view, x), calibrated=False, gated=False)

    @torch.no_grad()
    def _scored(self, images: np.ndarray, batch_size: int, calibrated: tuple[bool, ...]) -> list[pd.DataFrame]:
        """Routing and each image's view ensemble through :class:`cxrlt.scoring.BundleScorer`, once per entry of
        ``calibrated`` from one pass of the networks: 30 probabilities, ``view``, ``view_confidence``."""
        known = self.scorer.known
        out: list[list[pd.DataFrame]] = [[] for _ in calibrated]
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(self.preprocess.normalize(images[start : start + batch_size])).to(self.device)
            router_logits = None if self.mixed else self.router(x).cpu().numpy()
            views, conf = self.scorer.route(router_logits, len(x))
            probs = [np.zeros((len(x), len(known)), np.float64) for _ in calibrated]
            for view in np.unique(views):
                idx = np.flatnonzero(views == view)
                logits = self.member_logits(self.scorer.target(view), x[idx])
                for p, cal in zip(probs, calibrated, strict=True):
                    p[idx] = self.scorer.view_probs(self.scorer.target(view), logits, calibrated=cal)
            for frames, p in zip(out, probs, strict=True):
                frame = pd.DataFrame(p, columns=known)
                frame["view"], frame["view_confidence"] = views, conf
                frames.append(frame)
        empty = pd.DataFrame(columns=[*known, "view", "view_confidence"])
        return [pd.concat(frames, ignore_index=True) if frames else empty for frames in out]

    def predict(self, images: np.ndarray, batch_size: int = 64) -> pd.DataFrame:
        """``(N, S, S)`` float [0, 1] images -> frame with 30 class columns, ``view`` and ``view_confidence``."""
        return self._scored(images, batch_size, (self.calibrated,))[0]

    def predict_before_after(self, images: np.ndarray, batch_size: int = 64) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The output without and with the calibration, from one pass of the networks (for reliability plots)."""
        before, after = self._scored(images, batch_size, (False, True))
        return before, after

    def predict_files(self, paths: Sequence[str | Path]) -> pd.DataFrame:
        images = np.stack([load_preprocessed(p, self.preprocess) for p in paths]) if paths else \
            np.zeros((0, self.size, self.size))
        return self.predict(images)
