"""The two paper profiles pinned to their papers: every value a seed states, one row each, citing the seed, section and
words; the YAMLs cite only sections that hold methods or results; and the numbers behind the recipes (heads, the
dual-branch loss, calibration after gating, the EMA schedule) against values computed by hand from the papers'
formulas."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrlt.config import load_config, zeroshot_settings
from cxrlt.ensemble import simplex_grid

ROOT = Path(__file__).resolve().parents[1]
PAPER, HPH = "configs/paper.yaml", "configs/hph.yaml"

# (profile, dotted key in the validated profile or "zs:<key>" in the resolved zero-shot settings, value, citation)
RECIPE = [
    (PAPER, "data.image_size", 512, "seed 000 sec. 4.1: 'zero-padded and resized to 512 x 512 (uint16)'"),
    (PAPER, "data.val_fraction", 0.1, "seed 000 sec. 3.1: 'split 9:1 for training and validation'"),
    (PAPER, "data.input.channels", 3, "seed 000 sec. 4.1: 'standard normalization for 3-channel inputs'"),
    (PAPER, "data.input.normalization", "imagenet", "seed 000 sec. 4.1: 'initialized with ImageNet pre-trained "
                                                    "weights, using standard normalization'"),
    (PAPER, "models.router.arch", "efficientnet_b0", "seed 000 sec. 5.1: 'The EfficientNet-B0 router'"),
    (PAPER, "models.pcam.backbone", "convnextv2_tiny", "seed 000 sec. 4.1: 'ConvNeXt-v2-tiny backbones'"),
    (PAPER, "models.pcam.head", "pcam", "seed 000 sec. 3.1: 'ConvNeXt-v2 ... followed by PCAM pooling'"),
    (PAPER, "models.swin.arch", "swinv2_tiny_window16_256", "seed 000 sec. 4.1: 'The Swinv2-tiny ... backbones'"),
    (PAPER, "models.cait.arch", "cait_xxs24_224", "seed 000 sec. 3.1: 'CaiT is applied to the projected CNN "
                                                  "features' (its size: our choice)"),
    (PAPER, "train.label_source", "all", "seed 000 sec. 5.2 filters labels for Task 2 only"),
    (PAPER, "train.augment.flip_p", 0.5, "seed 000 sec. 4.1: 'horizontal flip (p = 0.5)'"),
    (PAPER, "train.augment.rotate_deg", 20.0, "seed 000 sec. 4.1: 'rotation (+-20 deg)'"),
    (PAPER, "train.augment.scale", [0.9, 1.1], "seed 000 sec. 4.1: 'scaling ([0.9, 1.1])'"),
    (PAPER, "train.augment.translate", 0.05, "seed 000 sec. 4.1: 'translation (<= 5 %)'"),
    (PAPER, "train.augment.clahe_p", 0.3, "seed 000 sec. 4.1: 'CLAHE (p = 0.3)'"),
    (PAPER, "train.select_on", "mAP+mAUC-BCE", "seed 000 sec. 3.1: 'Model selection was based on mAP, mAUC, and BCE "
                                               "loss on the augmented validation set'"),
    (PAPER, "inference.tta", "flip", "seed 000 sec. 3.1: 'TTA (horizontal flip)'"),
    (PAPER, "inference.tta_merge", "logit", "seed 000 sec. 3.1: 'was used to average logits'"),
    (PAPER, "inference.normal_gate_alpha", None, "seed 000 has no normal gating"),
    (PAPER, "ensemble.combine", "logit", "seed 000 sec. 3.1: 'grid search at the logit level'"),
    (PAPER, "ensemble.weights", None, "seed 000 sec. 3.1: 'coefficients were determined via grid search'"),
    (PAPER, "zeroshot.model", "ViT-B-32-quickgelu", "seed 000 sec. 4.2: 'initialized with CheXzero weights' "
                                                    "(CheXzero is OpenAI CLIP ViT-B/32, QuickGELU)"),
    (PAPER, "zeroshot.pretrained", "chexzero", "seed 000 sec. 4.2: 'initialized with CheXzero [15] weights'"),
    (PAPER, "zeroshot.train", True, "seed 000 sec. 4.2: 'fine-tuned on in-distribution CXRs'"),
    (PAPER, "zs:image_size", 224, "seed 000 sec. 4.2: 'resized to 224 x 224'"),
    (PAPER, "zeroshot.label_source", "physician", "seed 000 sec. 5.2: 'Building upon this filtered dataset' "
                                                  "(physician-verified labels, Table 2)"),
    (PAPER, "zeroshot.alpha", 1.5, "seed 000 sec. 5.2: 'Setting alpha = 1.5 achieved the best overall average mAP'"),
    (PAPER, "zeroshot.lr", 1e-6, "seed 000 sec. 4.2: 'AdamW (learning rate 10^-6'"),
    (PAPER, "zeroshot.weight_decay", 0.01, "seed 000 sec. 4.2: 'weight decay 0.01)'"),
    (PAPER, "zeroshot.cosine_t_max", 7, "seed 000 sec. 4.2: 'a cosine annealing scheduler (Tmax = 7)'"),
    (PAPER, "zeroshot.ema_decay", 0.999, "seed 000 sec. 4.2: 'EMA (decay=0.999)'"),
    (PAPER, "zeroshot.ema_warmup", False, "seed 000 sec. 4.2: decay 0.999, no warm-up mentioned"),
    (PAPER, "zeroshot.bank", "clinical", "seed 000 sec. 3.2.2: 'clinical descriptions instead of simple class "
                                         "names'"),
    (PAPER, "zeroshot.prompts", "hybrid", "seed 000 sec. 3.2.2: 'we used both class names and descriptive prompts'"),
    (PAPER, "zeroshot.tta", "flip", "seed 000 sec. 3.2.2: 'Prompt ensembling and TTA were further applied'"),
    (HPH, "data.image_size", 512, "seed 002 sec. 3.1: 'Each image is resized to 512 x 512'"),
    (HPH, "data.input.channels", 3, "seed 002 sec. 3.1: 'converted to 3-channel RGB (by channel replication'"),
    (HPH, "data.input.normalization", "imagenet", "seed 002 sec. 3.1: 'normalized with ImageNet mean and standard "
                                                  "deviation'"),
    (HPH, "data.input.scaling", "percentile", "seed 002 sec. 3.1: 'percentile-based intensity clipping followed by "
                                              "rescaling'"),
    (HPH, "models.mlp.backbone", "convnextv2_base", "seed 002 sec. 3.1: 'We use ConvNeXtV2-Base as the backbone'"),
    (HPH, "models.mlp.head", "mlp", "seed 002 sec. 3.1: '(i) a standard MLP head'"),
    (HPH, "models.csra.backbone", "convnextv2_base", "seed 002 sec. 3.1: 'two complementary variants that differ "
                                                     "only in the classification head'"),
    (HPH, "models.csra.head", "csra", "seed 002 sec. 3.1: '(ii) a CSRA head'"),
    (HPH, "train.loss", "db", "seed 002 sec. 3.1: 'Distribution-Balanced (DB) loss'"),
    (HPH, "train.sampler", "repeat_factor", "seed 002 sec. 3.1: 'a repeat-factor style sampler'"),
    (HPH, "train.label_source", "all", "seed 002 sec. 2: the challenge's training labels"),
    (HPH, "inference.tta", "medium", "seed 002 sec. 3.1: 'identity, horizontal flip, rotations by +-5 deg, and mild "
                                     "zoom-in/zoom-out (scaling factors 1.1 and 0.9'"),
    (HPH, "inference.tta_merge", "probability", "seed 002 sec. 3.1: p_tta = 1/|T| sum_t sigmoid(z(t(x)))"),
    (HPH, "inference.normal_gate_alpha", 0.5, "seed 002 sec. 3.1: 'alpha_ng = 0.5 in our submission'"),
    (HPH, "ensemble.combine", "probability", "seed 002 sec. 3.1: p_ens = sum_k a_k p_tta^(k)"),
    (HPH, "ensemble.weights", {"mlp": 1.0, "csra": 1.5}, "seed 002 sec. 3.1: 'raw weights a1=1.0 and a2=1.5, "
                                                         "normalized internally'"),
    (HPH, "ensemble.calibration", "none", "seed 002 sec. 3.1: the gated probabilities are the output"),
    (HPH, "zeroshot.model", "ViT-L-14", "seed 002 sec. 3.2: 'built upon an OpenCLIP ViT-L/14 backbone'"),
    (HPH, "zeroshot.pretrained", "hf-hub:yyupenn/whyxrayclip", "seed 002 sec. 3.2: 'We adopt WhyXrayCLIP'"),
    (HPH, "zeroshot.train", False, "seed 002 sec. 3.2: 'These prompts are fixed and used only at inference time'"),
    (HPH, "zs:image_size", 224, "seed 002 sec. 3.2: 'resize to 224 x 224'"),
    (HPH, "zeroshot.input.normalization", "clip", "seed 002 sec. 3.2: 'apply CLIP-style mean/std normalization'"),
    (HPH, "zeroshot.input.scaling", "bit_depth", "seed 002 sec. 3.2: 'division by 255 or 65535 depending on the "
                                                 "dynamic range'"),
    (HPH, "zeroshot.input.channels", 3, "seed 002 sec. 3.2: 'we replicate the grayscale image to form a 3-channel "
                                        "input'"),
    (HPH, "zeroshot.scoring", "sigmoid", "seed 002 sec. 3.2: p_c = sigmoid(alpha * 1/K sum_k <v, t_ck>)"),
    (HPH, "zeroshot.sigmoid_scale", 5.0, "seed 002 sec. 3.2: 'a fixed scaling factor (e.g., alpha = 5)'"),
    (HPH, "zeroshot.calibration", "none", "seed 002 sec. 3.2: the scaled sigmoid is the probability"),
]


def _value(profile: str, key: str):
    cfg = load_config(ROOT / profile)
    if key.startswith("zs:"):
        return zeroshot_settings(cfg)[key[3:]]
    value = cfg
    for part in key.split("."):
        value = value[part]
    return value


@pytest.mark.parametrize(("profile", "key", "expected", "citation"), RECIPE,
                         ids=[f"{Path(p).stem}:{k}" for p, k, _, _ in RECIPE])
def test_profile_holds_what_its_seed_states(profile, key, expected, citation):
    got = _value(profile, key)
    if isinstance(expected, float):
        assert got == pytest.approx(expected, rel=1e-12), citation
    elif isinstance(expected, list):
        assert list(got) == pytest.approx(expected), citation
    else:
        assert got == expected, citation


#: the sections of each seed that hold methods, experiments or results (sec. 2 of seed 000 is its related work)
CITABLE = {"000": {"3.1", "3.2", "3.2.1", "3.2.2", "4.1", "4.2", "5.1", "5.2"},
           "002": {"2", "3.1", "3.2", "4.1", "4.2"}}


@pytest.mark.parametrize("profile", [PAPER, HPH, "configs/tiny_hph.yaml", "configs/tiny.yaml"])
def test_profiles_cite_only_method_and_result_sections(profile):
    text = (ROOT / profile).read_text()
    cited = re.findall(r"seed (\d{3}) sec\. ([\d.]*\d)", text)
    assert cited or "tiny" in profile
    wrong = [f"seed {s} sec. {sec}" for s, sec in cited if sec not in CITABLE.get(s, set())]
    assert not wrong, f"{profile} cites sections that hold no method or result: {wrong}"


def _sourced(lines: list[str], i: int) -> bool:
    """A key line is sourced by its own comment, by a comment block above it or above the run of uncommented
    siblings it ends, or by the comment of its parent section."""
    def indent(line: str) -> int:
        return len(line) - len(line.lstrip())

    if "#" in lines[i]:
        return True
    j = i - 1
    while j >= 0:
        above = lines[j]
        if not above.strip():
            return False
        if above.strip().startswith("#"):
            return indent(above) >= indent(lines[i])
        if indent(above) < indent(lines[i]):  # the parent section
            return "#" in above or (j > 0 and lines[j - 1].strip().startswith("#"))
        if "#" in above:  # a sibling with its own comment covers only itself
            return False
        j -= 1
    return False


@pytest.mark.parametrize("profile", [PAPER, HPH])
def test_every_line_says_where_it_comes_from(profile):
    """Each key line of the paper profiles is covered by a comment: a seed citation or "not stated; our choice
    because ..."; and the behaviours that change outputs are declared, not left to defaults."""
    lines = (ROOT / profile).read_text().splitlines()
    keys = [i for i, line in enumerate(lines) if line.strip() and not line.strip().startswith("#")
            and not line.rstrip().endswith(":") and not line.startswith("profile:")]
    unexplained = [lines[i].strip() for i in keys if not _sourced(lines, i)]
    assert not unexplained, f"{profile}: lines without a source: {unexplained}"
    cfg = load_config(ROOT / profile)
    text = (ROOT / profile).read_text()
    for section, key in (("ensemble", "calibration"), ("train", "label_source"), ("train", "ema_warmup"),
                         ("zeroshot", "calibration"), ("zeroshot", "label_source")):
        assert key in cfg[section] and re.search(rf"^\s+{key}:", text, re.M), f"{profile} leaves {section}.{key} " \
                                                                               "undeclared"
    if cfg["zeroshot"]["train"]:
        for key in ("ema_warmup", "asl_scale_init", "asl_bias_init", "contrastive_targets", "min_lr_ratio"):
            assert re.search(rf"^\s+{key}:", text, re.M), f"{profile} leaves zeroshot.{key} undeclared"


def test_seed_000_reported_ensemble_weights_lie_on_the_grid():
    """seed 000 sec. 5.1: PCAM : SWIN : CAIT = 0.40 : 0.40 : 0.20 (AP/PA) and 0.45 : 0.45 : 0.10 (L)."""
    grid = simplex_grid(3, load_config(ROOT / PAPER)["ensemble"]["grid_step"])
    for weights in ([0.40, 0.40, 0.20], [0.45, 0.45, 0.10]):
        assert np.isclose(grid, weights, atol=1e-9).all(axis=1).any(), weights


def test_db_loss_uses_the_effective_number_beta_0_9999():
    """seed 002 sec. 3.1: eff_c = (1 - beta) / (1 - beta^n_c) with beta = 0.9999, normalised (mean 1)."""
    from cxrlt.losses import build_loss

    cfg = load_config(ROOT / HPH)
    loss = build_loss(cfg["train"]["loss"], [10, 1000], **cfg["train"]["loss_kwargs"])
    raw = [(1 - 0.9999) / (1 - 0.9999 ** n) for n in (10, 1000)]
    expected = [r / (sum(raw) / 2) for r in raw]
    np.testing.assert_allclose(loss.weights.double().numpy(), expected, rtol=1e-6)


# ---------------------------------------------------------------------------------------------------- the heads
def test_pcam_head_against_the_pcam_equations():
    """PCAM: P = sigmoid(W x_hw + b) per location, x_k = sum_hw (P_khw / sum P_k) x_hw, LayerNorm,
    logit = W_k x_k + b_k. Values worked by hand: C = 3 channels, K = 1 class, two locations."""
    from cxrlt.models.heads import PCAMHead

    head = PCAMHead(3, 1)
    with torch.no_grad():
        head.classifier.weight.copy_(torch.tensor([1.0, -1.0, 0.5]).view(1, 3, 1, 1))
        head.classifier.bias.fill_(0.25)
    feats = torch.tensor([[1.0, 2.0], [0.0, 1.0], [2.0, 0.0]]).view(1, 3, 1, 2)  # locations (1, 0, 2), (2, 1, 0)
    # maps: 1 - 0 + 1 + 0.25 = 2.25 and 2 - 1 + 0 + 0.25 = 1.25
    p1, p2 = 1 / (1 + math.exp(-2.25)), 1 / (1 + math.exp(-1.25))
    w1, w2 = p1 / (p1 + p2), p2 / (p1 + p2)
    pooled = [w1 * 1 + w2 * 2, w2 * 1, w1 * 2]
    mean = sum(pooled) / 3
    var = sum((v - mean) ** 2 for v in pooled) / 3
    normed = [(v - mean) / math.sqrt(var + 1e-5) for v in pooled]
    expected = normed[0] * 1.0 - normed[1] + 0.5 * normed[2] + 0.25
    logits, maps = head.eval()(feats)
    torch.testing.assert_close(maps.flatten(), torch.tensor([2.25, 1.25]))
    assert logits.item() == pytest.approx(expected, rel=1e-5)


def test_csra_head_with_lambda_against_the_csra_equations():
    """CSRA as HPH uses it (lambda = 0.1): logit = fc(mean_hw x) + lambda * (W_k . sum_hw softmax_hw(A_k x_hw) x_hw
    + b_k). Worked by hand: C = 2, K = 1, two locations."""
    from cxrlt.models.heads import CSRAHead

    head = CSRAHead(2, 1)
    assert head.lam == pytest.approx(0.1)
    with torch.no_grad():
        head.fc.weight.copy_(torch.tensor([[2.0, -1.0]]))
        head.fc.bias.fill_(0.5)
        head.attention.weight.copy_(torch.tensor([1.0, 1.0]).view(1, 2, 1, 1))
    feats = torch.tensor([[1.0, 3.0], [2.0, 0.0]]).view(1, 2, 1, 2)  # locations (1, 2), (3, 0)
    gap = 2 * 2.0 - 1 * 1.0 + 0.5  # mean features (2, 1)
    a1, a2 = math.exp(3) / (math.exp(3) + math.exp(3)), math.exp(3) / (math.exp(3) + math.exp(3))  # scores 3, 3
    pooled = (a1 * 1 + a2 * 3, a1 * 2 + a2 * 0)
    att = 2 * pooled[0] - 1 * pooled[1] + 0.5
    logits, _ = head(feats)
    assert logits.item() == pytest.approx(gap + 0.1 * att, rel=1e-6)
    with torch.no_grad():
        head.attention.weight.copy_(torch.tensor([1.0, 0.0]).view(1, 2, 1, 1))  # scores 1, 3: attention to loc 2
    s1, s2 = math.exp(1) / (math.exp(1) + math.exp(3)), math.exp(3) / (math.exp(1) + math.exp(3))
    att = 2 * (s1 * 1 + s2 * 3) - 1 * (s1 * 2 + s2 * 0) + 0.5
    assert head(feats)[0].item() == pytest.approx(gap + 0.1 * att, rel=1e-6)


# ------------------------------------------------------------------------------------------ the dual-branch loss
def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_dual_branch_total_against_seed_000_eq_1_and_2_by_hand():
    """L = L_con + alpha L_ASL (eq. 1), L_ASL averaged over the images and K classes (eq. 2) with ASL's gammas and
    probability shift; L_con = symmetric cross-entropy of the scaled cosines against the one-hot (hard) or
    same-label-set (soft) targets. Two images, two classes, every term worked out here."""
    from cxrlt.zeroshot.loss import DualBranchLoss

    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    cls = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    scale, asl_scale, asl_bias = math.log(2.0), math.log(3.0), -1.0
    # contrastive, hard targets: logits = 2 * img @ txt.T = [[1.2, 0], [1.6, 2]]
    rows = [[1.2, 0.0], [1.6, 2.0]]
    cols = [[1.2, 1.6], [0.0, 2.0]]

    def xent(row, i):
        return -(row[i] - math.log(sum(math.exp(v) for v in row)))

    hard = (xent(rows[0], 0) + xent(rows[1], 1) + xent(cols[0], 0) + xent(cols[1], 1)) / 4
    # ASL: class logits = 3 * img @ cls.T - 1 = [[2, 0.8], [-1, 1.4]]; gamma+ = 0, gamma- = 4, clip 0.05
    z = [[2.0, 0.8], [-1.0, 1.4]]
    asl = 0.0
    for i in range(2):
        for k in range(2):
            p = _sigmoid(z[i][k])
            if targets[i, k] == 1:
                asl += -math.log(p)
            else:
                pm = max(p - 0.05, 0.0)
                asl += -math.log(1 - pm) * pm ** 4
    asl /= 4
    loss = DualBranchLoss(alpha=1.5, gamma_neg=4, gamma_pos=0, clip=0.05)
    total, parts = loss(img, txt, cls, torch.tensor(scale), torch.tensor(asl_scale), torch.tensor(asl_bias),
                        targets, torch.arange(2))
    assert parts["contrastive"] == pytest.approx(hard, rel=1e-5)
    assert parts["asl"] == pytest.approx(asl, rel=1e-5)
    assert total.item() == pytest.approx(hard + 1.5 * asl, rel=1e-5)
    # alpha = 0 is the contrastive loss alone, which differs from the total by exactly 1.5 x the ASL worked out above
    plain, _ = DualBranchLoss(alpha=0.0)(img, txt, cls, torch.tensor(scale), torch.tensor(asl_scale),
                                         torch.tensor(asl_bias), targets, torch.arange(2))
    assert plain.item() == pytest.approx(hard, rel=1e-5)
    assert total.item() - plain.item() == pytest.approx(1.5 * asl, rel=1e-5)
    # soft targets: both images in one label-set group -> every target row is (1/2, 1/2)
    soft = sum(0.5 * xent(r, 0) + 0.5 * xent(r, 1) for r in rows + cols) / 4
    soft_total, soft_parts = loss(img, txt, cls, torch.tensor(scale), torch.tensor(asl_scale),
                                  torch.tensor(asl_bias), targets, torch.tensor([7, 7]))
    assert soft_parts["contrastive"] == pytest.approx(soft, rel=1e-5)


def test_label_set_ids_are_the_same_on_every_rank():
    """Soft targets gather the label-set ids of every rank: an id must name the same set wherever it is computed."""
    from cxrlt.zeroshot.train import _groups

    a = _groups(np.array([[1, 0, 1], [0, 0, 0]], np.float32))
    b = _groups(np.array([[0, 1, 0], [1, 0, 1]], np.float32))
    assert a.tolist() == [5, 0] and b.tolist() == [2, 5]


# --------------------------------------------------------------------------------------------------- EMA schedule
def test_ema_schedule_follows_the_profile():
    """seed 000 sec. 4.2: EMA decay 0.999 (paper.yaml: no warm-up); with timm's warm-up the decay after t updates
    is min(decay, 1 - (1 + t)^(-2/3))."""
    from cxrlt.training.loop import make_ema

    zs = zeroshot_settings(load_config(ROOT / PAPER))
    ema = make_ema(torch.nn.Linear(2, 2), zs)
    assert ema.get_decay(2) == pytest.approx(0.999) and ema.get_decay(500) == pytest.approx(0.999)
    warm = make_ema(torch.nn.Linear(2, 2), {**zs, "ema_warmup": True})
    assert warm.get_decay(101) == pytest.approx(1 - 101 ** (-2 / 3), rel=1e-12)  # 0.9536, after 100 updates
    assert warm.get_decay(10**7) == pytest.approx(0.999)


# --------------------------------------------------------------------------------------- calibration after gating
def test_calibration_applies_after_normal_gating():
    """HPH's order: combine -> gate p_c (1 - p_0)^alpha -> (calibration). A calibration written before the stage
    existed ran before the gate and keeps that order."""
    from cxrlt.scoring import BundleScorer

    known = ["Normal", "cardiomegaly"]
    logits = {"mlp": np.array([[0.0, 1.0]]), "csra": np.array([[0.0, 1.0]])}
    calibration = {"method": "platt", "a": {"cardiomegaly": 2.0}, "b": {"cardiomegaly": -0.5},
                   "stage": "after_gating"}
    bundle = {"known_classes": known, "views": {"mixed": {"members": {"mlp": "m", "csra": "c"},
                                                          "weights": {"mlp": 0.4, "csra": 0.6}}},
              "combine": "probability", "calibration": calibration, "normal_gate_alpha": 0.5}
    p = _sigmoid(1.0)
    gated = p * (1 - 0.5) ** 0.5  # p_Normal = sigmoid(0) = 0.5
    after = _sigmoid(2.0 * math.log(gated / (1 - gated)) - 0.5)
    got = BundleScorer(bundle).view_probs("mixed", logits)
    assert got[0, 1] == pytest.approx(after, rel=1e-9) and got[0, 0] == pytest.approx(0.5)
    before = _sigmoid(2.0 * math.log(p / (1 - p)) - 0.5) * (1 - 0.5) ** 0.5
    legacy = BundleScorer({**bundle, "calibration": {k: v for k, v in calibration.items() if k != "stage"}})
    assert legacy.view_probs("mixed", logits)[0, 1] == pytest.approx(before, rel=1e-9)
    assert abs(after - before) > 0.01  # the two orders serve different numbers


def test_fitted_calibration_is_marked_after_gating():
    from cxrlt.ensemble import fit_calibration

    rng = np.random.default_rng(0)
    y = (rng.random((200, 2)) < 0.3).astype(int)
    probs = np.clip(0.2 + 0.5 * y + 0.1 * rng.standard_normal((200, 2)), 0.01, 0.99)
    assert fit_calibration(probs, y, ["a", "b"])["stage"] == "after_gating"
    assert fit_calibration(probs, y, ["a", "b"], "none")["stage"] == "after_gating"
