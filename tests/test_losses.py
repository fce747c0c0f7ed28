import math

import pytest
import torch

from cxrlt.losses import AsymmetricLoss, DistributionBalancedLoss, build_loss, class_balanced_weights


def _sig(x):
    return 1 / (1 + math.exp(-x))


def test_asl_matches_hand_computation():
    logits = torch.tensor([[0.0, 2.0, -1.0]])
    y = torch.tensor([[1.0, 0.0, 0.0]])
    # positive x=0: p=.5 -> log(.5) * (1-.5)^1
    pos = math.log(0.5) * 0.5
    # negatives: xs_neg = min(1 - p + 0.05, 1); term = log(xs_neg) * (1 - xs_neg)^4
    neg = 0.0
    for x in (2.0, -1.0):
        xs = min(1 - _sig(x) + 0.05, 1.0)
        neg += math.log(xs) * (1 - xs) ** 4
    expected = -(pos + neg)
    assert AsymmetricLoss()(logits, y).item() == pytest.approx(expected, rel=1e-6)
    assert AsymmetricLoss(reduction="mean")(logits, y).item() == pytest.approx(expected / 3, rel=1e-6)


def test_asl_clip_zeroes_easy_negatives():
    # p = sigmoid(-5) = 0.0067 < clip 0.05 -> shifted probability 0 -> no loss at all
    assert AsymmetricLoss()(torch.tensor([[-5.0]]), torch.tensor([[0.0]])).item() == pytest.approx(0.0, abs=1e-7)


def test_class_weighted_asl_scales_per_class():
    logits, y = torch.tensor([[0.3, -0.2]]), torch.tensor([[1.0, 0.0]])
    plain = AsymmetricLoss(reduction="sum")
    weighted = AsymmetricLoss(class_weights=[2.0, 0.5])
    per_class = [AsymmetricLoss()(logits[:, i : i + 1], y[:, i : i + 1]).item() for i in range(2)]
    assert weighted(logits, y).item() == pytest.approx(2.0 * per_class[0] + 0.5 * per_class[1], rel=1e-6)
    assert plain(logits, y).item() == pytest.approx(sum(per_class), rel=1e-6)


def test_db_loss_matches_hand_computation():
    counts, beta = [1000, 10], 0.9999
    raw = [(1 - beta) / (1 - beta**n) for n in counts]
    w = [r / (sum(raw) / 2) for r in raw]
    inv = [1 / v for v in w]
    margins = [0.2 * (i - min(inv)) / (max(inv) - min(inv)) for i in inv]
    logits, y = [0.5, -0.3], [1.0, 1.0]
    terms = []
    for z, t, m, wc in zip(logits, y, margins, w, strict=True):
        zs = z - t * m
        bce = -(t * math.log(_sig(zs)) + (1 - t) * math.log(1 - _sig(zs)))
        terms.append(bce * wc**0.5)
    expected = sum(terms) / 2
    loss = DistributionBalancedLoss(counts)(torch.tensor([logits]), torch.tensor([y]))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert margins[0] > margins[1], "the head class gets the larger margin"


def test_class_balanced_weights_favour_rare_classes():
    w = class_balanced_weights([5000, 50, 5])
    assert w.mean().item() == pytest.approx(1.0) and w[2] > w[1] > w[0]


@pytest.mark.parametrize("name", ["bce", "asl", "asl_weighted", "db"])
def test_every_loss_trains_down(name):
    torch.manual_seed(0)
    y = (torch.rand(64, 5) < 0.2).float()
    logits = torch.zeros(64, 5, requires_grad=True)
    loss_fn = build_loss(name, class_counts=y.sum(0).int().tolist())
    opt = torch.optim.SGD([logits], lr=0.5)
    first = None
    for _ in range(20):
        loss = loss_fn(logits, y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first


def test_unknown_loss_and_missing_counts():
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("focal")
    with pytest.raises(ValueError, match="class_counts"):
        build_loss("db")
