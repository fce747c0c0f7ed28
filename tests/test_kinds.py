"""The member-kind registry: a new kind is a registry entry plus its model module, and nothing else.

The toy kind below is the example of docs/glossary.md: registered here, it is accepted in a profile, gets its own
pipeline job, is built by the factory, trains through the one training loop and loads back from its member card.
"""

from __future__ import annotations

import pytest
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from cxrlt.kinds import MemberKind, job_kinds, member_kinds, register_kind, unregister_kind


class ToySettings(BaseModel):
    """The profile's ``models.toy`` section."""

    model_config = ConfigDict(extra="forbid")
    width: int = 8
    pretrained: str | None = None


class ToyNet(nn.Module):
    """One convolution, global pooling, a linear layer: the smallest network with the member interface."""

    def __init__(self, in_chans: int, width: int, num_classes: int):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(in_chans, width, 3, padding=1), nn.Linear(width, num_classes)
        self.weights = None  # where pretrained weights came from (member cards record it): random init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


@pytest.fixture
def toy_kind():
    from cxrlt.models import factory

    register_kind(MemberKind("toy", ToySettings, "one convolution (test kind)"))

    @factory.builds("toy")
    def _build(req: factory.BuildRequest) -> nn.Module:
        return ToyNet(req.in_chans, req.settings["width"], req.num_classes)

    yield "toy"
    unregister_kind("toy")
    factory._BUILDERS.pop("toy", None)


def test_the_builtin_kinds_and_who_trains_with_whom():
    from cxrlt.kinds import riders

    assert member_kinds() == ("pcam", "swin", "cait", "mlp", "csra")
    assert job_kinds() == ("pcam", "swin", "mlp", "csra") and riders("pcam") == ("cait",)


def test_a_registered_kind_is_accepted_built_planned_trained_and_loaded(toy_kind, synth_data, tmp_path):
    from cxrlt.config import load_config, pipeline_jobs
    from cxrlt.models.factory import build_member, load_member
    from cxrlt.training.trainer import TrainRequest, train_member
    from tests.conftest import TINY_CONFIG

    cfg = load_config({**TINY_CONFIG, "models": {"toy": {"width": 4}},
                       "train": {**TINY_CONFIG["train"], "epochs": 1, "overrides": {"mixed/toy": {"lr": 2e-3}}}})
    assert cfg["models"]["toy"] == {"width": 4, "pretrained": None}
    assert pipeline_jobs(cfg) == [{"view": "mixed", "member": "toy"}]  # no router: the mixed view only
    assert build_member("toy", cfg["models"], 30, 32)(torch.zeros(2, 1, 32, 32)).shape == (2, 30)
    summary = train_member(TrainRequest("mixed/toy", cfg, synth_data, tmp_path / "toy", progress=False))
    assert summary["kind"] == "toy" and len(summary["history"]) == 1
    model, card = load_member(tmp_path / "toy")
    assert isinstance(model, ToyNet) and card.model_config_ == {"width": 4, "pretrained": None}


def test_an_unknown_kind_is_refused_naming_the_registered_ones():
    from cxrlt.config import ConfigError, load_config
    from tests.conftest import TINY_CONFIG

    with pytest.raises(ConfigError, match="models.toy: unknown key"):
        load_config({**TINY_CONFIG, "models": {"toy": {"width": 4}}})
