"""The prepared GPU check runs end to end on CPU (``--device cpu --tiny``), so it cannot rot between GPU loans."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_on_cpu_and_reports_every_section(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu" / "check.py"), "--device", "cpu", "--tiny",
                             "--out", str(tmp_path)], capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "check.json").read_text())
    assert report["synthetic"] and report["peak"]["tflops"] > 0
    assert set(report["train"]) == {"pcam", "swin", "cait", "router"}
    assert report["train"]["pcam"]["fast_keys"]["compile"] == "default"  # one member compiles in this run
    for member in report["train"].values():
        for side in ("eager", "fast"):
            assert member[side]["images_per_s"] > 0 and member[side]["flops_per_image"] > 0
    assert all(report["loader"][f"{cache}/{n}"] > 0 for cache in ("png", "shards", "shards-noaug") for n in (1, 2))
    assert report["loader"]["device_augment"] > 0
    inference = report["inference"]
    served = inference["served"]  # the serving code's path: export_program -> compile_program -> AotiEngine
    assert served["router"]["max_abs_diff"] <= 1e-4 and served["router"]["images_per_s"] > 0
    assert served["router"]["cuda_graph_batches"] == []  # CUDA graphs only on a GPU
    assert served["request_path"]["p50_ms_batch1"] == pytest.approx(served["router"]["p50_ms_batch1"])
    modes = [m for m in inference if m not in ("flops_per_image", "served")]
    assert modes == ["eager fp32", "AOT float32 .pt2"]  # --tiny skips the pipeline's torch.compile
    for mode in modes:
        # fp32 on CPU everywhere: compiled and AOT compute what eager computes up to reordered sums
        assert inference[mode]["max_abs_diff"] <= 1e-3, (mode, inference[mode])
        assert inference[mode]["images_per_s"] > 0 and inference[mode]["p50_ms_batch1"] > 0
    assert report["loader"]["cores_to_feed_1_2x/shards"] > 0 and "cores per GPU to feed" in result.stdout
    assert report["loader"]["cores_to_feed_1_2x/shards-noaug"] > 0
