import numpy as np
import pandas as pd
import pytest
import torch

from cxrlt.ensemble import fit_weights, normal_gate, simplex_grid
from cxrlt.labels import KNOWN_CLASSES
from cxrlt.models.factory import build_member, build_router
from cxrlt.models.heads import CSRAHead, PCAMHead
from cxrlt.training.augment import AugmentConfig, augment
from cxrlt.training.sampler import EpochShardedSampler, repeat_factors
from cxrlt.training.trainer import parse_member
from cxrlt.tta import TTAModel, tta_views

TINY_MODELS = {
    "router": {"arch": "mobilenetv3_small_100", "pretrained": None},
    "pcam": {"backbone": "convnextv2_atto", "head": "pcam", "pretrained": None},
    "swin": {"arch": "swinv2_tiny_window8_256",
             "kwargs": {"window_size": 4, "embed_dim": 24, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 2, 2]}},
    "cait": {"arch": "cait_xxs24_224", "kwargs": {"depth": 1, "embed_dim": 48, "num_heads": 2}},
}


def test_pcam_head_pools_with_probability_maps():
    head = PCAMHead(8, 3)
    feats = torch.randn(2, 8, 4, 4)
    logits, maps = head(feats)
    assert logits.shape == (2, 3) and maps.shape == (2, 3, 4, 4)
    # a map concentrated on one location pools (almost) exactly that location's features
    with torch.no_grad():
        head.classifier.weight.zero_()
        head.classifier.bias.fill_(-30.0)
    feats2 = feats.clone()
    feats2[:, 0, 1, 2] = 100.0
    with torch.no_grad():
        head.classifier.weight[:, 0] = 1.0
    _, maps = head(feats2)
    assert maps[0, 0].argmax().item() == 1 * 4 + 2


def test_csra_head_is_gap_plus_attention():
    head = CSRAHead(8, 3, lam=0.0)
    feats = torch.randn(2, 8, 4, 4)
    logits, _ = head(feats)
    torch.testing.assert_close(logits, head.fc(feats.mean(dim=(2, 3))))


@pytest.mark.parametrize("kind", ["pcam", "swin"])
def test_members_build_and_return_30_logits(kind):
    model = build_member(kind, TINY_MODELS, len(KNOWN_CLASSES), 32)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 30)


def test_pcam_member_returns_maps_and_cait_uses_frozen_trunk(tmp_path):
    pcam = build_member("pcam", TINY_MODELS, 30, 32)
    logits, maps = pcam(torch.randn(2, 1, 32, 32), return_maps=True)
    assert logits.shape == (2, 30) and maps.shape[:2] == (2, 30)
    torch.save({"model": pcam.state_dict()}, tmp_path / "best.pt")
    cait = build_member("cait", TINY_MODELS, 30, 32, pcam_checkpoint=tmp_path / "best.pt")
    assert cait(torch.randn(2, 1, 32, 32)).shape == (2, 30)
    assert not any(p.requires_grad for p in cait.cnn.parameters())
    key = "head.classifier.weight"
    torch.testing.assert_close(cait.cnn.state_dict()[key], pcam.state_dict()[key])
    cait.train()
    assert not cait.cnn.training
    with pytest.raises(ValueError, match="pcam"):
        build_member("cait", TINY_MODELS, 30, 32)


def test_router_has_two_outputs():
    assert build_router(TINY_MODELS["router"])(torch.randn(2, 1, 32, 32)).shape == (2, 2)


@pytest.mark.parametrize(("name", "expected"), [("router", (None, "router")), ("frontal/pcam", ("frontal", "pcam")),
                                                ("mixed/cait", ("mixed", "cait"))])
def test_member_names(name, expected):
    assert parse_member(name) == expected


@pytest.mark.parametrize("bad", ["frontal", "side/pcam", "frontal/resnet"])
def test_bad_member_names(bad):
    with pytest.raises(ValueError, match="member must be"):
        parse_member(bad)


def test_repeat_factors():
    labels = np.zeros((1000, 2), bool)
    labels[:500, 0] = True
    labels[500, 1] = True  # frequency 0.001 -> sqrt(0.01 / 0.001)
    r = repeat_factors(labels, threshold=0.01, cap=10)
    assert r[0] == 1.0 and r[999] == 1.0
    assert r[500] == pytest.approx(np.sqrt(10))
    assert repeat_factors(labels, threshold=1.0, cap=5)[500] == 5


def test_sampler_shards_cover_the_global_order_and_are_deterministic():
    factors = np.array([1.0] * 10 + [3.5] * 2)
    one = EpochShardedSampler(12, factors, seed=3)
    shards = [EpochShardedSampler(12, factors, seed=3, rank=r, world_size=2) for r in range(2)]
    for s in [one, *shards]:
        s.set_epoch(1)
    order = list(one)
    assert sorted(order[::2] + order[1::2]) == sorted(order)
    padded = shards[0]._global_order()  # padded to a multiple of the world size with leading items
    assert list(padded[: len(order)]) == order and len(padded) % 2 == 0
    assert list(shards[0]) == list(padded[0::2]) and list(shards[1]) == list(padded[1::2])
    assert np.mean([list(one).count(10) for _ in range(1)]) >= 3  # repeated (3 or 4 times)
    again = EpochShardedSampler(12, factors, seed=3)
    again.load_state_dict(one.state_dict())
    assert list(again) == order


def test_augment_is_seeded_per_sample():
    img = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    cfg = AugmentConfig(clahe_p=1.0)
    a = augment(img, np.random.default_rng([1, 2, 3]), cfg)
    b = augment(img, np.random.default_rng([1, 2, 3]), cfg)
    c = augment(img, np.random.default_rng([1, 2, 4]), cfg)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.shape == img.shape and a.dtype == np.float32 and a.min() >= 0 and a.max() <= 1


@pytest.mark.parametrize(("mode", "n"), [("none", 1), ("flip", 2), ("medium", 6)])
def test_tta_views(mode, n):
    x = torch.randn(2, 1, 16, 16)
    views = tta_views(x, mode)
    assert len(views) == n and all(v.shape == x.shape for v in views)
    if mode == "flip":
        torch.testing.assert_close(views[1], x.flip(3))


def test_tta_model_averages_logits():
    lin = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x = torch.randn(4, 1, 4, 4)
    torch.testing.assert_close(TTAModel(lin, "flip")(x), (lin(x) + lin(x.flip(3))) / 2)


def test_normal_gating():
    probs = pd.DataFrame({"Normal": [0.9, 0.0], "cardiomegaly": [0.5, 0.5]})
    gated = normal_gate(probs, 0.5)
    assert gated["cardiomegaly"].tolist() == pytest.approx([0.5 * 0.1**0.5, 0.5])
    assert gated["Normal"].tolist() == [0.9, 0.0]
    assert normal_gate(probs, None) is probs


def test_simplex_grid_and_weight_search():
    grid = simplex_grid(3, 0.05)
    assert len(grid) == 231 and np.allclose(grid.sum(1), 1)
    rng = np.random.default_rng(0)
    y = (rng.random((400, 4)) < 0.2).astype(int)
    good = (y * 4 - 2) + rng.normal(0, 1, y.shape)
    noise = rng.normal(0, 1, y.shape)
    weights, score = fit_weights({"good": good, "noise": noise, "noise2": rng.normal(0, 1, y.shape)}, y)
    assert weights["good"] >= 0.8 and score > 0.8
    assert sum(weights.values()) == pytest.approx(1.0)
