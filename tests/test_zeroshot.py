"""Task 2: description bank, prompts, leak guard, report synthesis, loss, and a tiny end-to-end run."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from cxrlt.cli import app
from cxrlt.labels import ALL_CLASSES, KNOWN_CLASSES, PROXY_GROUPS, UNSEEN_CLASSES
from cxrlt.zeroshot.bank import free_text_finding, load_bank, mentions, prompts_for
from cxrlt.zeroshot.loss import soft_clip_loss
from cxrlt.zeroshot.model import DualBranchCLIP, build_clip, tokenize
from cxrlt.zeroshot.text import LeakError, LeakGuard, synth_report

TINY_ZS = {"model": "tiny", "image_size": 32, "embed_dim": 32, "vision": {"layers": [1, 1, 1, 1], "width": 16},
           "text": {"context_length": 32, "width": 32, "heads": 2, "layers": 1}}


@pytest.mark.parametrize("kind", ["clinical", "synthetic"])
def test_banks_cover_all_36_findings(kind):
    bank = load_bank(kind)
    assert set(ALL_CLASSES) <= set(bank)
    assert all(len(bank[c].descriptions) >= 2 for c in ALL_CLASSES)


@pytest.mark.parametrize("kind", ["clinical", "synthetic"])
def test_no_description_names_another_finding(kind):
    bank = load_bank(kind)
    for c in ALL_CLASSES:
        for other in ALL_CLASSES:
            if other != c:
                for d in bank[c].descriptions:
                    assert not mentions(d, bank[other]), (c, d, other)


def test_clinical_descriptions_are_clinical():
    assert "diffuse decreased bone density" in load_bank("clinical")["Osteopenia"].descriptions


def test_prompt_modes():
    f = load_bank("clinical")["Osteopenia"]
    assert prompts_for(f, "names") == ["osteopenia", "a chest x-ray showing osteopenia"]
    assert prompts_for(f, "hybrid") == prompts_for(f, "names") + list(f.descriptions)
    free = free_text_finding("Pneumonia", load_bank())
    assert prompts_for(free, "hybrid") == ["Pneumonia", "a chest x-ray showing Pneumonia"]
    assert free_text_finding("Goiter", load_bank()).key == "goiter"


def test_reports_are_dynamically_shuffled_and_normal_has_its_text():
    bank = load_bank("synthetic")
    positives = ["cardiomegaly", "Nodule", "fracture"]
    texts = {synth_report(positives, bank, np.random.default_rng(i)) for i in range(30)}
    assert len(texts) > 5
    for t in texts:
        assert all(any(d in t for d in bank[p].descriptions) for p in positives)
    assert synth_report(["Normal"], bank, np.random.default_rng(0)) in bank["Normal"].descriptions
    assert synth_report([], bank, np.random.default_rng(0)) in bank["Normal"].descriptions


@pytest.mark.parametrize("group", sorted(PROXY_GROUPS))
def test_leak_guard_fails_loudly(group):
    bank = load_bank("clinical")
    held = list(PROXY_GROUPS[group])
    guard = LeakGuard(held, bank)
    rest = [c for c in KNOWN_CLASSES if c not in held]
    guard.check_classes(rest)
    guard.check_texts([d for c in rest for d in prompts_for(bank[c], "hybrid")])  # the rest of the bank is clean
    with pytest.raises(LeakError, match="targets"):
        guard.check_classes([*rest, held[0]])
    with pytest.raises(LeakError, match="text"):
        guard.check_texts([f"history of {bank[held[1]].name} noted"])
    with pytest.raises(LeakError, match="text"):
        guard.check_texts(["x. " + bank[held[2]].descriptions[0]])
    with pytest.raises(LeakError, match="positive"):
        guard.check_labels([[held[3]]])


@pytest.mark.parametrize(("groups", "target"), [([0, 0, 2, 3], 0.5), ([0, 1, 2, 3], 0.0)])
def test_soft_clip_loss_pulls_images_towards_reports_of_the_same_label_set(groups, target):
    """Images 0 and 1 share a label set: soft targets pull image 0 towards text 1, one-hot targets push it away.

    With orthonormal features and logit scale s, d loss / d logit[0, 1] = (p01 - t01) / N for each of the two
    cross-entropy directions (averaged), where p01 = 1 / (e^s + N - 1); moving image 0 along text 1 changes the loss
    at s * (p01 - t01) / N. Hand-computed, so the test checks a sign and a value rather than a float comparison.
    """
    n, s = 4, 2.0
    img = torch.eye(n, 8, requires_grad=True)
    txt = torch.eye(n, 8)
    loss = soft_clip_loss(img, txt, torch.tensor(np.log(s)), torch.tensor(groups))
    (grad,) = torch.autograd.grad(loss, img)
    p01 = 1 / (np.exp(s) + n - 1)
    assert float(grad[0] @ txt[1]) == pytest.approx(s * (p01 - target) / n, rel=1e-5)


def test_clip_configurations():
    tiny = DualBranchCLIP(build_clip(TINY_ZS)[0], 32)
    img = tiny.encode_image(torch.randn(2, 1, 32, 32))
    assert img.shape == (2, 32) and torch.allclose(img.norm(dim=-1), torch.ones(2))
    assert tokenize(["a b c"], 32).shape == (1, 32)
    chexzero, _ = build_clip({"model": "ViT-B-32-quickgelu"})
    assert chexzero.context_length == 77 and chexzero.visual.image_size == (224, 224)
    with pytest.raises(FileNotFoundError, match="not found"):
        build_clip({**TINY_ZS, "pretrained": "/nonexistent/chexzero.pt"}, weights=True)


@pytest.fixture(scope="module")
def zs_model(synth_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("zs")
    cfg = {"profile": "test", "data": {"val_fraction": 0.2, "split_seed": 0},
           "zeroshot": {**TINY_ZS, "epochs": 2, "batch_size": 32, "ema_decay": 0.9}}
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(app, ["zeroshot", "train", "--config", str(root / "cfg.yaml"), "--data",
                                      str(synth_data), "--out", str(root / "model")])
    assert result.exit_code == 0, result.output
    return root


@pytest.mark.slow
def test_zeroshot_predict_writes_task2_submission(zs_model, synth_data, tmp_path):
    card = json.loads((zs_model / "model" / "zeroshot.json").read_text())
    assert card["held_out"] == [] and len(card["history"]) == 2
    out = tmp_path / "task2.csv"
    result = CliRunner().invoke(app, ["zeroshot", "predict", "--model", str(zs_model / "model"), "--data",
                                      str(synth_data), "--split", "test", "--out", str(out)])
    assert result.exit_code == 0, result.output
    df = pd.read_csv(out)
    assert list(df.columns) == ["ImageID", *UNSEEN_CLASSES]
    assert ((df[list(UNSEEN_CLASSES)] > 0) & (df[list(UNSEEN_CLASSES)] < 1)).all().all()
    free = CliRunner().invoke(app, ["zeroshot", "predict", "--model", str(zs_model / "model"), "--data",
                                    str(synth_data), "--out", str(tmp_path / "free.csv"),
                                    "--classes", "Goiter,large lucent round lesion in the upper right lung",
                                    "--scoring", "softmax_pn"])
    assert free.exit_code == 0, free.output
    assert list(pd.read_csv(tmp_path / "free.csv").columns)[1] == "goiter"


@pytest.mark.slow
def test_calibration_and_export_pieces(zs_model, synth_data, tmp_path):
    from cxrlt.zeroshot.predict import ZeroShotPredictor

    result = CliRunner().invoke(app, ["zeroshot", "calibrate", "--model", str(zs_model / "model"), "--data",
                                      str(synth_data)])
    assert result.exit_code == 0, result.output
    predictor = ZeroShotPredictor(zs_model / "model")
    assert predictor.calibration["fitted_on"][0] == "Normal"
    scoring = predictor.export_pieces(tmp_path, list(UNSEEN_CLASSES))
    emb = np.load(tmp_path / "text_embeddings.npy")
    assert emb.shape == (6, 32) and (np.linalg.norm(emb, axis=1) <= 1 + 1e-5).all()
    images = np.random.default_rng(0).random((3, 32, 32)).astype(np.float32)
    img = predictor.image_encoder()(torch.from_numpy(predictor.preprocess.normalize(images))).detach().numpy()
    served = 1 / (1 + np.exp(-(scoring["a"] * img @ emb.T + scoring["b"])))
    direct = predictor.predict(images, list(UNSEEN_CLASSES), "sigmoid")
    np.testing.assert_allclose(served, direct, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_calibration_none_serves_hph_scaled_sigmoid_exactly(zs_model, tmp_path):
    """zeroshot.calibration: none (HPH sec. 3.2): p_c = sigmoid(5 x the mean over prompts of cos(v, t_ck)), served
    as it is; calibrating such a model is refused."""
    import shutil

    from cxrlt.errors import InvalidInputError
    from cxrlt.zeroshot.predict import ZeroShotPredictor

    model = tmp_path / "model"
    shutil.copytree(zs_model / "model", model)
    card = json.loads((model / "zeroshot.json").read_text())
    card.pop("calibration", None)
    card["settings"].update(calibration="none", sigmoid_scale=5.0)
    (model / "zeroshot.json").write_text(json.dumps(card))
    predictor = ZeroShotPredictor(model)
    with pytest.raises(InvalidInputError, match="zeroshot.calibration: none"):
        predictor.fit_calibration(np.zeros((2, 32, 32), np.float32), np.zeros((2, 1)), ["Normal"])
    scoring = predictor.export_pieces(tmp_path / "pieces", list(UNSEEN_CLASSES))
    assert scoring["a"] == 5.0 and scoring["b"] == 0.0
    images = np.random.default_rng(1).random((3, 32, 32)).astype(np.float32)
    v = predictor.image_embeddings(images).numpy()
    per_prompt = predictor.text_embeddings(list(UNSEEN_CLASSES))["prompts"]
    hph = 1 / (1 + np.exp(-5.0 * np.stack([(v @ t.numpy().T).mean(1) for t in per_prompt], axis=1)))
    emb = np.load(tmp_path / "pieces" / "text_embeddings.npy")
    served = 1 / (1 + np.exp(-(scoring["a"] * v @ emb.T + scoring["b"])))
    np.testing.assert_allclose(served, hph, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(predictor.predict(images, list(UNSEEN_CLASSES)), hph, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_proxy_validation_holds_out_and_scores_a_group(synth_data, tmp_path):
    cfg = {"profile": "test", "data": {"val_fraction": 0.2, "split_seed": 0},
           "zeroshot": {**TINY_ZS, "epochs": 1, "batch_size": 32}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(app, ["zeroshot", "proxy-validate", "--config", str(tmp_path / "cfg.yaml"), "--data",
                                      str(synth_data), "--out", str(tmp_path / "proxy"), "--groups", "C"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "proxy" / "proxy_validation.json").read_text())
    card = json.loads((tmp_path / "proxy" / "group_C" / "zeroshot.json").read_text())
    assert card["held_out"] == list(PROXY_GROUPS["C"])
    assert not set(card["train_classes"]) & set(PROXY_GROUPS["C"])
    assert set(summary["groups"]["C"]["per_class"]) == set(PROXY_GROUPS["C"])


@pytest.mark.slow
def test_zeroshot_killed_run_resumes_to_the_same_weights(synth_data, tmp_path):
    import os
    import subprocess
    import sys

    from cxrlt.training.checkpoint import KILL_AFTER_EPOCH_ENV

    cfg = {"profile": "test", "data": {"val_fraction": 0.2, "split_seed": 0},
           "zeroshot": {**TINY_ZS, "epochs": 2, "batch_size": 32}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    base = [sys.executable, "-m", "cxrlt.cli", "zeroshot", "train", "--config", str(tmp_path / "cfg.yaml"), "--data",
            str(synth_data)]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    full = subprocess.run([*base, "--out", str(tmp_path / "full")], env=env, capture_output=True, text=True)
    assert full.returncode == 0, full.stderr[-2000:]
    killed = subprocess.run([*base, "--out", str(tmp_path / "k")], env={**env, KILL_AFTER_EPOCH_ENV: "0"},
                            capture_output=True, text=True)
    assert killed.returncode == -9
    resumed = subprocess.run([*base, "--out", str(tmp_path / "k"), "--resume"], env=env, capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "k" / "last.pt", weights_only=False)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


def test_channels_last_trains_the_same_clip(synth_data, tmp_path):
    """The NHWC layout changes how fast the image tower runs, not what one epoch computes: the same loss and the
    same weights as the contiguous layout, within float32 summation order."""
    from cxrlt.zeroshot.train import ZeroShotRequest, train_zeroshot

    runs = {}
    for channels_last in (False, True):
        cfg = {"profile": "test", "data": {"val_fraction": 0.2, "split_seed": 0},
               "zeroshot": {**TINY_ZS, "epochs": 1, "batch_size": 32, "channels_last": channels_last}}
        out = tmp_path / str(channels_last)
        card = train_zeroshot(ZeroShotRequest(cfg, synth_data, out, progress=False))
        runs[channels_last] = card, torch.load(out / "last.pt", weights_only=False)["model"]
    (plain, a), (nhwc, b) = runs[False], runs[True]
    assert nhwc["settings"]["channels_last"] and not plain["settings"]["channels_last"]
    for key in ("train_loss", "contrastive", "asl", "val_known_mAP"):
        assert nhwc["history"][0][key] == pytest.approx(plain["history"][0][key], rel=1e-4), key
    # AdamW divides by the gradient's running scale, so a rounding difference in a near-zero gradient can move a weight
    # by up to a step of lr (1e-3) either way: no weight may be further apart than one such step
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-3, msg=k)
