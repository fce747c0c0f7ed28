"""Zero-shot inference: prompt-ensembled text embeddings (cached), CheXzero or scaled-sigmoid scoring, TTA,
optional calibration fitted on known classes, and the export pieces for serving.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from cxrlt.data.images import PreprocessConfig
from cxrlt.errors import InvalidInputError, NotFoundError
from cxrlt.zeroshot.bank import NEGATIVE_TEMPLATE, Finding, free_text_finding, load_bank, prompts_for
from cxrlt.zeroshot.model import DualBranchCLIP, ImageEncoder, build_clip, tokenize

SCORING_MODES = ("sigmoid", "softmax_pn")
TEXT_EMBEDDINGS = "text_embeddings.npy"
TEXT_CLASSES = "text_classes.json"


class ZeroShotPredictor:
    """Loads ``zeroshot.json`` + ``best.pt`` from a model directory; all scoring is keyed by class name."""

    def __init__(self, model_dir: str | Path, device: str = "cpu"):
        self.dir = Path(model_dir)
        card_path = self.dir / "zeroshot.json"
        if not card_path.exists():
            raise NotFoundError(f"{model_dir} is not a zero-shot model directory (no zeroshot.json)")
        self.card = json.loads(card_path.read_text())
        self.settings = self.card["settings"]
        self.device = torch.device(device)
        self.model = DualBranchCLIP(build_clip(self.settings)[0], self.settings["context_length"])
        self.preprocess = PreprocessConfig.from_dict(self.settings.get("preprocess") or
                                                     {"size": self.settings["image_size"]})
        state = torch.load(self.dir / "best.pt", map_location="cpu", weights_only=True)
        self.model.load_state_dict(state["model"])
        self.model.to(self.device).eval()
        self.bank = load_bank(self.settings["bank"])
        self.calibration = self.card.get("calibration")
        self._cache: dict[tuple, dict] = {}

    @property
    def image_size(self) -> int:
        return int(self.settings["image_size"])

    def finding(self, name: str) -> Finding:
        return free_text_finding(name, self.bank)

    @torch.no_grad()
    def text_embeddings(self, classes: Sequence[str], prompts: str | None = None) -> dict:
        """Per class: mean (prompt ensemble), every prompt's embedding, and the negative-prompt mean. Cached."""
        prompts = prompts or self.settings["prompts"]
        key = (tuple(classes), prompts)
        if key not in self._cache:
            ctx = int(self.settings["context_length"])
            per_class = []
            for c in classes:
                texts = prompts_for(self.finding(c), prompts)
                pos = self.model.encode_text(tokenize(texts, ctx).to(self.device))
                neg = self.model.encode_text(tokenize([NEGATIVE_TEMPLATE.format(t) for t in texts], ctx)
                                             .to(self.device))
                per_class.append((pos, torch.nn.functional.normalize(pos.mean(0), dim=-1),
                                  torch.nn.functional.normalize(neg.mean(0), dim=-1)))
            self._cache[key] = {"prompts": [p for p, _, _ in per_class],
                                "mean": torch.stack([m for _, m, _ in per_class]),
                                "negative": torch.stack([n for _, _, n in per_class])}
        return self._cache[key]

    @torch.no_grad()
    def image_embeddings(self, images: np.ndarray, tta: str | None = None, batch_size: int = 128) -> torch.Tensor:
        from cxrlt.tta import tta_views

        tta = tta or self.settings.get("tta", "none")
        out = []
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(self.preprocess.normalize(images[i : i + batch_size])).to(self.device)
            emb = torch.stack([self.model.encode_image(v) for v in tta_views(x, tta)]).mean(0)
            out.append(torch.nn.functional.normalize(emb, dim=-1))
        return torch.cat(out) if out else torch.zeros(0, 1)

    @torch.no_grad()
    def raw_scores(self, images: np.ndarray, classes: Sequence[str], scoring: str | None = None,
                   prompts: str | None = None, tta: str | None = None) -> np.ndarray:
        """Uncalibrated per-class scores: mean prompt cosine (sigmoid mode) or s_pos - s_neg (softmax_pn)."""
        scoring = scoring or self.settings["scoring"]
        if scoring not in SCORING_MODES:
            raise InvalidInputError(f"unknown scoring {scoring!r}: choose one of {SCORING_MODES}")
        img = self.image_embeddings(images, tta)
        emb = self.text_embeddings(classes, prompts)
        if scoring == "sigmoid":
            return torch.stack([(img @ p.T).mean(1) for p in emb["prompts"]], dim=1).cpu().numpy()
        return (img @ emb["mean"].T - img @ emb["negative"].T).cpu().numpy()

    def predict(self, images: np.ndarray, classes: Sequence[str], scoring: str | None = None,
                prompts: str | None = None, tta: str | None = None, calibrated: bool = True) -> np.ndarray:
        """Probabilities ``(N, len(classes))``: sigmoid(a * mean cosine) (HPH, a = 5) or CheXzero's
        exp(s_pos) / (exp(s_pos) + exp(s_neg)); a calibration fitted on known classes replaces a and adds a bias."""
        scoring = scoring or self.settings["scoring"]
        s = self.raw_scores(images, classes, scoring, prompts, tta)
        cal = self.calibration if calibrated else None
        if cal and cal.get("scoring") == scoring:
            return 1 / (1 + np.exp(-(cal["a"] * s + cal["b"])))
        if scoring == "sigmoid":
            return 1 / (1 + np.exp(-float(self.settings["sigmoid_scale"]) * s))
        return 1 / (1 + np.exp(-s))  # == exp(s_pos) / (exp(s_pos) + exp(s_neg))

    def fit_calibration(self, images: np.ndarray, labels: np.ndarray, classes: Sequence[str],
                        scoring: str | None = None) -> dict:
        """Platt scaling (one slope and bias) fitted on known classes' scores; saved in the card for unseen ones.
        Refused for a model whose profile sets ``zeroshot.calibration: none`` (served as sigmoid(scale x cosine))."""
        from sklearn.linear_model import LogisticRegression

        if self.settings.get("calibration", "platt") == "none":
            raise InvalidInputError(f"{self.dir}: the profile sets zeroshot.calibration: none, so the scores are "
                                    f"served as sigmoid({self.settings['sigmoid_scale']} x mean cosine); set it to "
                                    "platt and retrain to calibrate")
        scoring = scoring or self.settings["scoring"]
        s = self.raw_scores(images, classes, scoring)
        lr = LogisticRegression(C=100.0).fit(s.reshape(-1, 1), np.asarray(labels).reshape(-1))
        self.calibration = {"scoring": scoring, "a": float(lr.coef_[0, 0]), "b": float(lr.intercept_[0]),
                            "fitted_on": list(classes)}
        self.card["calibration"] = self.calibration
        (self.dir / "zeroshot.json").write_text(json.dumps(self.card, indent=2, default=str))
        return self.calibration

    def export_pieces(self, out_dir: str | Path, classes: Sequence[str], prompts: str | None = None) -> dict:
        """The text-embedding matrix with its class order and scoring constants, for the served zero-shot head.

        Row c is the mean of class c's L2-normalised prompt embeddings, so ``img @ E.T`` is exactly the mean prompt
        cosine and the served head ``sigmoid(a * img @ E.T + b)`` equals :meth:`predict` in sigmoid mode.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        emb = torch.stack([p.mean(0) for p in self.text_embeddings(classes, prompts)["prompts"]])
        emb = emb.cpu().numpy().astype(np.float32)
        np.save(out / TEXT_EMBEDDINGS, emb)
        scoring = {"classes": list(classes), "prompts": prompts or self.settings["prompts"],
                   "a": float(self.settings["sigmoid_scale"]), "b": 0.0, "image_size": self.image_size}
        if self.calibration and self.calibration.get("scoring") == "sigmoid":
            scoring.update(a=self.calibration["a"], b=self.calibration["b"])
        (out / TEXT_CLASSES).write_text(json.dumps(scoring, indent=2))
        return scoring

    def image_encoder(self) -> torch.nn.Module:
        return ImageEncoder(self.model).eval()
