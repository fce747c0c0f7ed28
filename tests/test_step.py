"""The fast training step computes what the plain fp32 eager step computes (cxrlt.training.step), key by key, on a
ConvNeXt-V2 + PCAM member (the paper's PCAM architecture at toy size) on CPU."""

from __future__ import annotations

import copy

import pytest
import torch

from cxrlt.config import load_config, train_settings
from cxrlt.losses import build_loss
from cxrlt.models.factory import build_member
from cxrlt.training.step import StepOptions

CPU = torch.device("cpu")
MODELS = {"pcam": {"backbone": "convnextv2_atto", "head": "pcam", "backbone_kwargs": {}, "drop": 0.0,
                   "pretrained": None, "checkpoint_keys": None}}


def _member_and_batch(seed: int = 0):
    torch.manual_seed(seed)
    model = build_member("pcam", MODELS, 30, 32, 1)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 1, 32, 32, generator=g)
    y = (torch.rand(8, 30, generator=g) < 0.2).float()
    return model, x, y


def _loss_and_grads(model, x, y, step: StepOptions):
    model = step.place(model).train()
    net = step.compiled(model)
    with step.autocast():
        logits = net(step.inputs(x))
    loss = build_loss("bce")(logits.float(), y)
    model.zero_grad(set_to_none=True)
    loss.backward()
    return loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_channels_last_and_compile_compute_the_fp32_eager_step():
    model, x, y = _member_and_batch()
    ref_loss, ref_grad = _loss_and_grads(copy.deepcopy(model), x, y, StepOptions(CPU))
    loss, grad = _loss_and_grads(model, x, y, StepOptions(CPU, channels_last=True, compile="default"))
    # fp32 both: only the order of the sums differs (fused kernels, NHWC reductions)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
    assert torch.allclose(grad, ref_grad, rtol=1e-3, atol=1e-5 * ref_grad.abs().max().item())


def test_bf16_autocast_stays_within_bf16_precision_of_fp32():
    model, x, y = _member_and_batch(1)
    ref_loss, ref_grad = _loss_and_grads(copy.deepcopy(model), x, y, StepOptions(CPU))
    bf16 = StepOptions(CPU)
    object.__setattr__(bf16, "amp", True)  # from_settings keeps amp for CUDA; the numerics are checked here on CPU
    loss, grad = _loss_and_grads(model, x, y, bf16)
    # bf16 keeps 8 significant bits (relative rounding 2^-9 = 0.2 %); the loss sums 240 such terms
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-2)
    cosine = torch.nn.functional.cosine_similarity(grad, ref_grad, dim=0).item()
    assert cosine > 0.99
    assert not torch.equal(grad, ref_grad)  # autocast did run in bf16


def test_fused_adamw_takes_the_same_steps_as_the_default_adamw():
    model, x, y = _member_and_batch(2)
    twins = []
    for fused in (False, True):
        m = copy.deepcopy(model)
        step = StepOptions(CPU, fused_optimizer=fused)
        opt = step.adamw(m.parameters(), lr=1e-3, weight_decay=0.05)
        assert bool(opt.defaults["fused"]) is fused
        for _ in range(3):
            _loss_and_grads(m, x, y, step)
            opt.step()
        twins.append(torch.cat([p.detach().flatten() for p in m.parameters()]))
    start = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert not torch.equal(twins[0], start)
    assert torch.allclose(twins[1], twins[0], rtol=0, atol=1e-6)


def test_step_options_from_a_profile():
    cfg = load_config("configs/paper.yaml")
    ts = train_settings(cfg, "frontal/pcam")
    on_cpu, on_gpu = StepOptions.from_settings(ts, CPU), StepOptions.from_settings(ts, torch.device("cuda"))
    assert on_gpu.amp and not on_cpu.amp  # bf16 on GPUs only
    assert (on_gpu.channels_last, on_gpu.compile, on_gpu.fused_optimizer) == (True, "default", True)
    assert on_gpu.log_every == ts["log_every"] > 1
    tiny = StepOptions.from_settings(train_settings(load_config("configs/tiny.yaml"), "frontal/pcam"), CPU)
    assert (tiny.channels_last, tiny.compile, tiny.fused_optimizer, tiny.log_every) == (False, "none", False, 1)
    with pytest.raises(ValueError, match="compile must be one of"):
        StepOptions(CPU, compile="fast")
    with pytest.raises(ValueError, match="log_every"):
        StepOptions(CPU, log_every=0)


def test_a_member_trains_with_the_fast_step_to_the_eager_result(synth_data, tmp_path):
    """The whole trainer with every fast key on (bf16 aside, CPU has no fast bf16): the same epoch losses as the
    plain run, within the reordered sums' rounding compounded over the epoch's steps."""
    import json

    from cxrlt.training.trainer import TrainRequest, train_member
    from tests.conftest import TINY_CONFIG

    fast = {"channels_last": True, "compile": "default", "fused_optimizer": True, "log_every": 4}
    runs = {}
    for name, keys in (("eager", {}), ("fast", fast)):
        cfg = load_config({**TINY_CONFIG, "train": {**TINY_CONFIG["train"], **keys}})
        runs[name] = train_member(TrainRequest("frontal/pcam", cfg, synth_data, tmp_path / name, progress=False))
    eager, quick = ([r["train_loss"] for r in runs[n]["history"]] for n in ("eager", "fast"))
    assert len(eager) == len(quick) == 2
    assert quick == pytest.approx(eager, rel=1e-3)
    assert json.loads((tmp_path / "fast" / "member.json").read_text())["best_epoch"] >= 0
