"""The HPH recipe (seed 002) end to end: MLP and CSRA heads over one trunk, probability-level TTA and 1.0 : 1.5
ensemble, normal gating, no router; training-free zero-shot from a CLIP checkpoint; the same export and Triton path
as seed 000, with parity against the in-process predictors. Plus: both paper profiles run a training step."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from cxrlt.config import load_config, task1_preprocess, zeroshot_settings
from cxrlt.labels import KNOWN_CLASSES, UNSEEN_CLASSES
from cxrlt.losses import build_loss
from cxrlt.models.factory import build_member, build_router
from cxrlt.tta import TTAModel

ROOT = Path(__file__).resolve().parents[1]


def _without_weights(profile: str, size: int) -> dict:
    """The profile as written, at a reduced input size and with no pretrained weights (none can be downloaded)."""
    raw = yaml.safe_load((ROOT / "configs" / profile).read_text())
    for net in raw["models"].values():
        net["pretrained"] = None
    raw["zeroshot"]["pretrained"] = None
    raw["data"].update(image_size=size, cache_size=size)
    return load_config(raw)


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["paper.yaml", "hph.yaml"])
def test_profiles_run_one_training_step(profile):
    cfg = _without_weights(profile, 64)
    contract = task1_preprocess(cfg)
    x = torch.randn(2, contract.channels, 64, 64)
    y = torch.zeros(2, len(KNOWN_CLASSES))
    y[0, 3] = y[1, 0] = 1
    counts = [10 + i for i in range(len(KNOWN_CLASSES))]
    for kind, net_cfg in cfg["models"].items():
        if net_cfg is None:
            continue
        if kind == "router":
            model, loss_fn, target = build_router(net_cfg, contract.channels), torch.nn.CrossEntropyLoss(), \
                torch.tensor([0, 1])
        else:
            model = build_member(kind, cfg["models"], len(KNOWN_CLASSES), 64, contract.channels, for_loading=True)
            loss_fn, target = build_loss(cfg["train"]["loss"], counts, **cfg["train"]["loss_kwargs"]), y
        params = [p for p in model.parameters() if p.requires_grad]
        before = [p.detach().clone() for p in params]
        optimizer = torch.optim.AdamW(params, lr=1e-3)
        loss = loss_fn(model.train()(x), target)
        loss = loss / len(x) if getattr(loss_fn, "reduction", "mean") == "sum" else loss
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss), kind
        assert any(not torch.equal(a, b) for a, b in zip(before, params, strict=True)), kind
    zs = zeroshot_settings(cfg)
    assert zs["train"] == (profile == "paper.yaml")  # HPH's CLIP is training-free
    if zs["train"]:
        from cxrlt.zeroshot.loss import DualBranchLoss
        from cxrlt.zeroshot.model import DualBranchCLIP, build_clip, tokenize

        model = DualBranchCLIP(build_clip(zs)[0], zs["context_length"])
        img = torch.randn(2, zs["preprocess"]["channels"], zs["image_size"], zs["image_size"])
        emb = model(img, tokenize(["a", "b"], 77), tokenize(["c", "d", "e"], 77))
        loss, _ = DualBranchLoss(zs["alpha"], **zs["asl"])(*emb, model.clip.logit_scale, model.asl_scale,
                                                             model.asl_bias, torch.ones(2, 3), torch.arange(2))
        loss.backward()
        assert torch.isfinite(loss) and model.clip.visual.conv1.weight.grad is not None


def test_probability_merge_tta_is_the_mean_of_view_probabilities():
    torch.manual_seed(0)
    lin = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x = torch.randn(2, 1, 4, 4)
    from cxrlt.tta import tta_views

    expected = torch.stack([torch.sigmoid(lin(v)) for v in tta_views(x, "medium")]).mean(0)
    torch.testing.assert_close(torch.sigmoid(TTAModel(lin, "medium", "probability")(x)), expected, rtol=1e-5,
                               atol=1e-6)


def test_probability_level_ensemble_with_fixed_weights():
    from cxrlt.ensemble import combine, normalised

    z = {"mlp": np.array([[0.0, 2.0]]), "csra": np.array([[1.0, -1.0]])}
    w = normalised({"mlp": 1.0, "csra": 1.5})
    assert w == pytest.approx({"mlp": 0.4, "csra": 0.6})
    s = 1 / (1 + np.exp(-np.array([[0.0, 2.0], [1.0, -1.0]])))
    np.testing.assert_allclose(combine(z, w, "probability")[0], 0.4 * s[0] + 0.6 * s[1])
    np.testing.assert_allclose(combine(z, w, "logit"), 1 / (1 + np.exp(-(0.4 * z["mlp"] + 0.6 * z["csra"]))))


TINY_VIT_CLIP = {"model": "tiny", "image_size": 32, "embed_dim": 32,
                 "vision": {"layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
                 "text": {"context_length": 32, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def hph(synth_data, tmp_path_factory):
    """A CPU-sized HPH system: atto trunk with MLP and CSRA heads, medium TTA merged on probabilities, 1 : 1.5
    probability ensemble, gating 0.5, no router; training-free ViT CLIP from a checkpoint the test writes."""
    from cxrlt.ensemble import build_ensemble
    from cxrlt.training.trainer import TrainRequest, train_member
    from cxrlt.zeroshot.model import build_clip
    from cxrlt.zeroshot.train import ZeroShotRequest, train_zeroshot

    root = tmp_path_factory.mktemp("hph")
    torch.manual_seed(0)
    writer, _ = build_clip(TINY_VIT_CLIP)
    torch.save({"state_dict": writer.state_dict()}, root / "clip.pt")
    raw = yaml.safe_load((ROOT / "configs" / "tiny_hph.yaml").read_text())
    raw["data"].update(image_size=32, cache_size=32, val_fraction=0.2, split_seed=0)
    raw["models"] = {k: {"backbone": "convnextv2_atto", "head": k, "pretrained": None} for k in ("mlp", "csra")}
    raw["train"].update(epochs=1, batch_size=16)
    raw["inference"].update(tta="medium")
    raw["zeroshot"] = {**TINY_VIT_CLIP, "pretrained": str(root / "clip.pt"), "train": False, "bank": "synthetic",
                       "input": {"channels": 3, "normalization": "clip", "scaling": "bit_depth"}, "batch_size": 32}
    cfg = load_config(raw)
    for member in ("mixed/mlp", "mixed/csra"):
        train_member(TrainRequest(member, cfg, synth_data, root / "runs" / member, progress=False))
    spec = build_ensemble(root / "runs", root / "ensemble", synth_data / "CXRLT_2026_training.csv", cfg)
    card = train_zeroshot(ZeroShotRequest(cfg, synth_data, root / "zeroshot", progress=False))
    return root, spec, card, writer


@pytest.mark.slow
def test_hph_ensemble_spec_and_training_free_clip(hph, synth_data):
    from cxrlt.data.images import load_preprocessed
    from cxrlt.inference import EnsemblePredictor
    from cxrlt.zeroshot.predict import ZeroShotPredictor

    root, spec, card, writer = hph
    assert spec["router"] is None and set(spec["views"]) == {"mixed"}
    assert spec["views"]["mixed"]["weights"] == pytest.approx({"mlp": 0.4, "csra": 0.6})
    assert spec["combine"] == "probability" and spec["tta_merge"] == "probability"
    assert card["training_free"] and card["history"] == [] and card["pretrained"]["source"].startswith("file ")
    predictor = EnsemblePredictor(root / "ensemble")
    assert predictor.mixed  # no router: every image goes to the mixed members
    zs = ZeroShotPredictor(root / "zeroshot")
    assert zs.preprocess.scaling == "bit_depth" and zs.preprocess.channels == 3
    png = sorted((synth_data / "images").iterdir())[0]
    img = load_preprocessed(png, zs.preprocess)
    x = torch.from_numpy(zs.preprocess.normalize(img))[None]
    with torch.no_grad():  # the training-free model is exactly the checkpoint it was given
        torch.testing.assert_close(zs.model.clip.encode_image(x), writer.eval().encode_image(x), rtol=0, atol=1e-6)
    raw16 = np.asarray(__import__("cv2").imread(str(png), -1))
    if raw16.dtype == np.uint16:  # bit-depth scaling: /65535, no percentile clipping
        assert img.max() <= raw16.max() / 65535 + 1e-6


@pytest.mark.slow
def test_hph_bundle_served_by_triton_matches_in_process(hph, synth_data, tmp_path):
    from cxrlt.export import export_bundle, load_bundle
    from cxrlt.inference import EnsemblePredictor
    from cxrlt.zeroshot.predict import ZeroShotPredictor
    from serving.client import CXRClient
    from serving.repository import build_repository
    from serving.server import start, stop

    root, _, _, _ = hph
    bundle = load_bundle(export_bundle(root / "ensemble", root / "zeroshot", tmp_path / "bundle") and
                         tmp_path / "bundle")
    assert bundle["router_classes"] == [] and bundle["combine"] == "probability"
    summary = build_repository(tmp_path / "bundle", tmp_path / "repo")
    assert "router" not in summary["models"] and "mixed_ensemble" in summary["models"]
    ids = pd.read_csv(synth_data / "CXRLT_2026_test_labels.csv", dtype=str)["ImageID"][:3]
    pngs = [synth_data / "images" / i for i in ids]
    handle = start(tmp_path / "repo", name=f"pytest-hph-{tmp_path.name}", state_dir=tmp_path / "state")
    try:
        client = CXRClient(handle.grpc_url, batch_size=3)
        results = client.infer_files(pngs)
        client.close()
    finally:
        stop(handle.name, state_dir=tmp_path / "state")
    ref = EnsemblePredictor(root / "ensemble").predict_files(pngs)
    zs = ZeroShotPredictor(root / "zeroshot")
    from cxrlt.data.images import load_preprocessed

    zs_ref = zs.predict(np.stack([load_preprocessed(p, zs.preprocess) for p in pngs]), list(UNSEEN_CLASSES),
                        "sigmoid")
    for i, r in enumerate(results):
        assert r.error == "" and r.view == "mixed" and r.view_confidence == pytest.approx(1.0)
        np.testing.assert_allclose([r.known[c] for c in KNOWN_CLASSES], ref.loc[i, list(KNOWN_CLASSES)].to_numpy(float),
                                   atol=1e-4)
        np.testing.assert_allclose([r.unseen[c] for c in UNSEEN_CLASSES], zs_ref[i], atol=1e-4)
    assert json.loads((tmp_path / "bundle" / "bundle.json").read_text())["normal_gate_alpha"] == 0.5


def test_exportable_affine_grid_equals_torch():
    import math

    import torch.nn.functional as F

    from cxrlt.tta import affine_grid

    a, zoom = math.radians(5.0), 1.1
    theta = torch.tensor([[math.cos(a) / zoom, -math.sin(a) / zoom, 0.0],
                          [math.sin(a) / zoom, math.cos(a) / zoom, 0.0]])
    torch.testing.assert_close(affine_grid(theta, 7, 9), F.affine_grid(theta[None], [1, 1, 7, 9], align_corners=False),
                               rtol=0, atol=1e-6)


@pytest.mark.slow
def test_registry_pyfunc_serves_a_router_less_bundle_like_the_predictor(hph, synth_data, tmp_path):
    import mlflow.pyfunc

    from cxrlt.export import export_bundle
    from cxrlt.inference import EnsemblePredictor
    from cxrlt.registry import save_bundle_model

    root, _, _, _ = hph
    export_bundle(root / "ensemble", None, tmp_path / "bundle")
    model = mlflow.pyfunc.load_model(str(save_bundle_model(tmp_path / "bundle", tmp_path / "pyfunc")))
    pngs = [str(p) for p in sorted((synth_data / "images").iterdir())[:3]]
    got = model.predict(pd.DataFrame({"image_path": pngs}))
    ref = EnsemblePredictor(root / "ensemble").predict_files(pngs)
    assert (got["view"] == "mixed").all()
    np.testing.assert_allclose(got[list(KNOWN_CLASSES)].to_numpy(), ref[list(KNOWN_CLASSES)].to_numpy(), atol=1e-4)
