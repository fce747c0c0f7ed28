"""Shared fixtures: small synthetic CXR-LT datasets generated once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxrlt.data.synth import SynthConfig, generate


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """A clean synthetic dataset: 400 images of 64 px (train/dev/test, both views)."""
    out = tmp_path_factory.mktemp("synth")
    generate(out, SynthConfig(n_images=400, size=64, seed=0), progress=False)
    return out


@pytest.fixture(scope="session")
def faulty_data(tmp_path_factory) -> Path:
    """The same kind of dataset with every known defect planted (see ``planted_defects.json``)."""
    out = tmp_path_factory.mktemp("faulty")
    generate(out, SynthConfig(n_images=200, size=64, seed=1, faulty=True), progress=False)
    return out
