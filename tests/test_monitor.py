"""`cxrlt monitor check` against a real Prometheus: a served window is read with increase() from backfilled entry
metrics, compared with the reference, logged to MLflow, and past the threshold the training pipeline is started
through the KFP API (the stub server of test_schedule)."""

import json
import shutil
import subprocess
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from cxrlt.cli import app
from cxrlt.drift import SCORE_EDGES, reference_features
from tests.kfp_stub import posted as _posted
from tests.test_schedule import README_PARAMS

pytestmark = pytest.mark.skipif(not (shutil.which("prometheus") and shutil.which("promtool")),
                                reason="needs Debian's prometheus (make test installs it)")

FINDINGS = {"Nodule": (1, 8), "Cardiomegaly": (2, 5), "Scoliosis": (1, 12)}
STEP_S, PER_STEP = 300, 12  # 12 items every 5 minutes: 864 in 6 hours


def _draw(rng, n, lateral_share=0.33, bits8=0.0):
    scores = {f: rng.beta(a, b, n) for f, (a, b) in FINDINGS.items()}
    views = np.where(rng.random(n) < lateral_share, "lateral", "frontal")
    bits = np.where(rng.random(n) < bits8, "8", "16")
    return scores, views, bits


def _openmetrics(path, start, phases, rng):
    """Counters as the entry exports them, one sample every STEP_S seconds, phase after phase."""
    edges = [str(e) for e in SCORE_EDGES] + ["+Inf"]
    buckets = {(f, le): 0 for f in FINDINGS for le in edges}
    items: dict[tuple[str, str], int] = {}
    lines = ["# TYPE cxrlt_entry_score_bucket unknown", "# TYPE cxrlt_entry_items_total unknown"]
    t = start
    for steps, shift in phases:
        for _ in range(steps):
            scores, views, bits = _draw(rng, PER_STEP, **shift)
            for f, values in scores.items():
                for le in edges:
                    buckets[f, le] += int(np.sum(values <= float(le)))
            for v, b in zip(views, bits, strict=True):
                items[v, b] = items.get((v, b), 0) + 1
            for (f, le), count in buckets.items():
                lines.append(f'cxrlt_entry_score_bucket{{finding="{f}",kind="known",le="{le}"}} {count} {t}')
            for (v, b), count in items.items():
                lines.append(f'cxrlt_entry_items_total{{input="png",bits="{b}",view="{v}"}} {count} {t}')
            t += STEP_S
    path.write_text("\n".join(lines) + "\n# EOF\n")
    return t - STEP_S


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    """Prometheus over blocks backfilled with promtool: 6 h like the reference, 1 h gap, 6 h of 8-bit lateral."""
    from cxrlt.ops import prometheus_server

    root = tmp_path_factory.mktemp("prometheus")
    rng = np.random.default_rng(1)
    start = int(time.time()) - 14 * 3600
    steps = 6 * 3600 // STEP_S
    end = _openmetrics(root / "entry.om", start, [(steps, {}), (12, {}),
                                                  (steps, {"lateral_share": 0.8, "bits8": 0.9})], rng)
    subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", str(root / "entry.om"),
                    str(root / "data")], check=True, capture_output=True)
    prometheus = prometheus_server.start(root, interval="1h")
    url = prometheus.url
    reference = reference_features(*_draw(np.random.default_rng(2), 2000))
    (root / "reference.json").write_text(json.dumps(reference))
    yield {"url": url, "reference": root / "reference.json", "unshifted_at": start + steps * STEP_S,
           "shifted_at": end}
    prometheus.stop()


def _check(prom, at, *extra):
    result = CliRunner().invoke(app, ["monitor", "check", "--prometheus", prom["url"], "--reference",
                                      str(prom["reference"]), "--window", "6h", "--at", str(at), *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_the_window_read_from_prometheus_has_the_counts_served(prometheus):
    from cxrlt.ops.monitor import served_window

    features, items = served_window(prometheus["url"], "6h", prometheus["unshifted_at"])
    # increase() over 6 h extrapolates to the window's edges: within one 5-minute step of the 12 * 72 items sent
    assert abs(items - 72 * PER_STEP) <= PER_STEP
    assert set(features) == {f"score:{f}" for f in FINDINGS} | {"view", "bits"}
    assert set(features["bits"]) == {"16"} and set(features["score:Nodule"]) == \
        {str(e) for e in SCORE_EDGES} | {"+Inf"}
    assert abs(sum(features["score:Nodule"].values()) - items) <= 2 * PER_STEP


def test_an_unshifted_window_passes_and_a_shift_to_8_bit_laterals_starts_retraining(prometheus, kfp_stub, compiled,
                                                                                   tmp_path):
    host, state = kfp_stub
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    trigger = ["--tracking-uri", uri, "--kfp-host", host, "--package", str(compiled / "training_pipeline.yaml"),
               *[a for p in README_PARAMS for a in ("--param", p)]]
    calm = _check(prometheus, prometheus["unshifted_at"], *trigger)
    assert calm["judged"] and calm["drifted"] == [] and not calm["retrain"] and calm["run_id"] is None
    assert _posted(state, "/apis/v2beta1/runs") == []
    shifted = _check(prometheus, prometheus["shifted_at"], *trigger)
    assert shifted["drifted"] == ["view", "bits"] and shifted["retrain"] and shifted["run_id"] == "run-7"
    (run,) = _posted(state, "/apis/v2beta1/runs")
    assert run["runtime_config"]["parameters"]["config"] == "/opt/cxrlt/configs/paper.yaml"
    # both checks are in MLflow, with every feature's PSI
    import mlflow

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["cxrlt-monitor"])
    assert len(runs) == 2 and set(runs["tags.retrain"]) == {"True", "False"}
    assert runs["metrics.psi_bits"].max() > 1 and runs["metrics.psi_bits"].min() < 0.1


def test_the_monitor_pipeline_starts_the_uploaded_training_version_on_drift(prometheus, kfp_stub, tmp_path):
    """The pipeline's step on kfp.local, judging the window that ends now (its last 5 hours are 8-bit laterals)."""
    from kfp import local

    from pipelines.monitor_pipeline import monitor_pipeline

    host, state = kfp_stub
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path), raise_on_error=True)
    monitor_pipeline(prometheus_url=prometheus["url"], tracking_uri="", reference_json=str(prometheus["reference"]),
                     kfp_host=host, training_pipeline_id="p-1", training_version_id="v-1",
                     training_params={"launcher": "trainjob"})
    (run,) = _posted(state, "/apis/v2beta1/runs")
    assert run["pipeline_version_reference"] == {"pipeline_id": "p-1", "pipeline_version_id": "v-1"}
    assert run["runtime_config"]["parameters"] == {"launcher": "trainjob"}
    assert run["service_account"] == "cxrlt-pipeline-runner"
    report = json.loads(next(tmp_path.rglob("report")).read_text())
    assert report["outcome"] == "retrain" and set(report["drifted"]) >= {"view", "bits"}
