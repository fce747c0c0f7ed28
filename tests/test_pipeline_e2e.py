"""The training pipeline on kfp.local against a real MLflow server: a passing gate registers a challenger, a failing
gate registers nothing, promotion and rollback move champion; serve build pulls the champion bundle."""

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cxrlt.ops import mlflow_server
from cxrlt.platform import CHALLENGER_ALIAS, CHAMPION_ALIAS, REGISTERED_MODEL
from tests.conftest import TINY_CONFIG

pytestmark = pytest.mark.slow


SERVER_DATA: list = []  # the MLflow server's data directory (its artifact store), for the tampering test


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    state = mlflow_server.start(root / "data", port=0, state_dir=root / "state")
    SERVER_DATA[:] = [root / "data"]
    yield state["tracking_uri"]
    assert mlflow_server.stop(state_dir=root / "state")
    from cxrlt.ops.procs import alive

    assert not alive(state["pid"])


@pytest.fixture(scope="module")
def pipeline_config(tmp_path_factory):
    cfg = {**TINY_CONFIG, "data": {**TINY_CONFIG["data"], "cache_size": 32}}
    cfg["models"] = {**cfg["models"], "pcam": {"backbone": "resnet18", "head": "pcam", "pretrained": None}}
    path = tmp_path_factory.mktemp("cfg") / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(root, data, config, uri, min_map):
    from pipelines.local_run import run_training_local

    return run_training_local(root, data_dir=str(data), config=str(config), tracking_uri=uri, epochs=1,
                              zeroshot_epochs=1, min_map=min_map, max_ece=1.0, cache_size=32,
                              # plumbing test on 1-epoch models: only the mAP threshold is exercised here
                              min_mauroc=0.0, min_unseen_lift=0.0,
                              jobs=[{"view": "frontal", "member": "pcam"}, {"view": "lateral", "member": "pcam-only"},
                                    {"view": "mixed", "member": "swin"}])


def test_gate_register_promote_rollback(synth_data, pipeline_config, mlflow_uri, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    from cxrlt.registry import RegistryError, audit_trail, promote, register_bundle, rollback

    mlflow.set_tracking_uri(mlflow_uri)
    client = MlflowClient()
    first = _run(tmp_path / "run1", synth_data, pipeline_config, mlflow_uri, min_map=0.0)
    versions = client.search_model_versions(f"name='{REGISTERED_MODEL}'")
    assert len(versions) == 1
    v1 = versions[0]
    assert client.get_registered_model(REGISTERED_MODEL).aliases == {CHALLENGER_ALIAS: v1.version}
    assert {"lineage.data_manifest_hash", "lineage.git_commit", "lineage.config_hash", "lineage.pipeline_run",
            "metrics", "gate_evidence"} <= set(v1.tags)
    assert json.loads(v1.tags["gate_evidence"])["passed"] is True

    # impossible gate, in the same root: every member's rows, profile and settings are the first run's, so each
    # is copied from the member cache (the same checkpoints) instead of trained again
    second = _run(tmp_path / "run1", synth_data, pipeline_config, mlflow_uri, min_map=1.1)
    assert len(client.search_model_versions(f"name='{REGISTERED_MODEL}'")) == 1, "a failed gate registers nothing"
    jobs = {run: [json.loads(p.read_text()) for p in Path(run).rglob("location.json")] for run in
            (first["run_dir"], second["run_dir"])}
    jobs = {run: {tuple(j["metadata"]["networks"]): j["metadata"] for j in found if j["kind"] == "member-runs"}
            for run, found in jobs.items()}
    assert len(jobs[second["run_dir"]]) == 4 and second["run_dir"] != first["run_dir"]
    for networks, meta in jobs[second["run_dir"]].items():
        assert meta.get("reused") and meta["checkpoints"] == jobs[first["run_dir"]][networks]["checkpoints"]
        assert not jobs[first["run_dir"]][networks].get("reused")
    assert client.get_registered_model(REGISTERED_MODEL).aliases == {CHALLENGER_ALIAS: v1.version}

    labels = synth_data / "CXRLT_2026_dev_labels.csv"
    decision = promote(labels, tracking_uri=mlflow_uri)
    assert decision["promoted"] and client.get_registered_model(REGISTERED_MODEL).aliases == {CHAMPION_ALIAS: "1"}
    # the drift reference the version was validated on travels with it: every finding's scores of every dev image
    from cxrlt.drift import SCORE_EDGES
    from cxrlt.labels import KNOWN_CLASSES, UNSEEN_CLASSES
    from cxrlt.ops.monitor import reference_of

    reference, number = reference_of(f"@{CHAMPION_ALIAS}", tracking_uri=mlflow_uri)
    n_dev = len(pd.read_csv(labels, dtype=str))
    assert number == "1" and set(reference) == {f"score:{c}" for c in (*KNOWN_CLASSES, *UNSEEN_CLASSES)} | {
        "view", "bits"}
    assert all(len(reference[f"score:{c}"]) == len(SCORE_EDGES) + 1 and sum(reference[f"score:{c}"].values()) == n_dev
               for c in (*KNOWN_CLASSES, *UNSEEN_CLASSES))
    assert sum(reference["view"].values()) == n_dev and reference["bits"] == {"16": n_dev}

    # a second version scored on the same evaluation set (same predictions -> non-inferior)
    run_dir = Path(first["run_dir"])
    bundle = next(run_dir.rglob("bundle.json")).parent
    report = next(run_dir.rglob("predictions.csv")).parent
    # the evaluation report: in the evaluate step's report folder, as its KFP HTML artifact, and registered with v1
    page = (report / "report.html").read_text()
    assert "<h2>By view and frequency band</h2>" in page and "<h2>Subgroups" in page and "<h2>Unseen findings" in page
    assert next(p for p in run_dir.rglob("page") if p.is_file()).read_text() == page
    registered = Path(mlflow.artifacts.download_artifacts(v1.tags["evaluation_artifact"]))
    assert (registered / "report.html").read_text() == page and (registered / "groups.csv").is_file()
    v2 = register_bundle(bundle, json.loads((report / "summary.json").read_text()), {"passed": True},
                         {"data_manifest_hash": "same"}, report / "predictions.csv", tracking_uri=mlflow_uri)
    decision = promote(labels, tracking_uri=mlflow_uri, report=tmp_path / "promotion.html")
    assert decision["promoted"] and abs(decision["diff"]) < 1e-12 and decision["ci95"][0] <= 0 <= decision["ci95"][1]
    # same predictions: every finding's challenger - champion AP is 0 and the page says so beside its positives
    assert all(r["diff"] == 0.0 for r in decision["per_class"] if r["n_pos"])
    assert "PROMOTED: " in (tmp_path / "promotion.html").read_text()
    assert client.get_registered_model(REGISTERED_MODEL).aliases == {CHAMPION_ALIAS: v2}
    assert rollback(tracking_uri=mlflow_uri) == {"champion": "1", "previous": v2}
    assert client.get_registered_model(REGISTERED_MODEL).aliases == {CHAMPION_ALIAS: "1"}
    audit = audit_trail(tracking_uri=mlflow_uri)
    done = [e for e in audit if e["phase"] == "done"]  # each move: its intent, then its outcome
    assert [e["phase"] for e in audit] == ["intent", "done"] * len(done)
    assert [e["alias"] for e in done][-2:] == [CHALLENGER_ALIAS, CHAMPION_ALIAS] and done[-1]["reason"] == "rollback"
    assert audit[0] == {**audit[0], "alias": CHALLENGER_ALIAS, "from": None, "to": "1"}  # complete: the first move too
    # the CLI reads the same state; stdout holds exactly one JSON document (MLflow's notices go to stderr)
    from typer.testing import CliRunner

    from cxrlt.cli import app

    status = CliRunner().invoke(app, ["registry", "status", "--tracking-uri", mlflow_uri])
    assert status.exit_code == 0, status.output
    state = json.loads(status.stdout)
    assert state[CHAMPION_ALIAS]["version"] == "1" and state[CHAMPION_ALIAS]["gate_passed"] is True
    assert state[CHALLENGER_ALIAS] is None and "data_manifest_hash" in state[CHAMPION_ALIAS]["lineage"]
    history = CliRunner().invoke(app, ["registry", "history", "--tracking-uri", mlflow_uri])
    assert history.exit_code == 0 and json.loads(history.stdout) == audit
    with pytest.raises(RegistryError, match="challenger"):
        promote(labels, tracking_uri=mlflow_uri)
    with pytest.raises(RegistryError, match="gate"):
        register_bundle(bundle, {}, {"passed": False}, {}, tracking_uri=mlflow_uri)
    # a version chosen by number, with no challenger alias: the same checks, then the champion moves to it
    with pytest.raises(RegistryError, match="number"):
        promote(labels, tracking_uri=mlflow_uri, version="latest")
    with pytest.raises(RegistryError, match="version 99 cannot be read"):
        promote(labels, tracking_uri=mlflow_uri, version="99")
    decision = promote(labels, tracking_uri=mlflow_uri, version=v2)
    assert decision["promoted"] and (decision["challenger"], decision["champion"]) == (v2, "1")
    assert client.get_registered_model(REGISTERED_MODEL).aliases == {CHAMPION_ALIAS: v2}

    # the champion is a loadable pyfunc model and the source of the Triton repository
    from cxrlt.registry import download_bundle

    pyfunc = mlflow.pyfunc.load_model(f"models:/{REGISTERED_MODEL}@{CHAMPION_ALIAS}")

    ids = pd.read_csv(labels, dtype=str)["ImageID"][:2]
    out = pyfunc.predict(pd.DataFrame({"image_path": [str(synth_data / "images" / i) for i in ids]}))
    assert list(out.columns[:2]) == ["Normal", "aortic elongation"] and len(out) == 2
    from serving.repository import build_repository

    local = download_bundle(f"models:/{REGISTERED_MODEL}@{CHAMPION_ALIAS}", tmp_path / "dl", mlflow_uri)
    summary = build_repository(local, tmp_path / "repo", model_version=f"{REGISTERED_MODEL}/1")
    assert "cxr" in summary["models"] and "first" not in str(first)
    # the pod's init command: it writes only --out (the bundle goes to $TMPDIR and is removed)
    import os
    import subprocess
    import sys

    (tmp_path / "pod").mkdir()
    (tmp_path / "pod-tmp").mkdir()
    champion = client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION_ALIAS).version
    r = subprocess.run([sys.executable, "-m", "cxrlt.cli", "serve", "build", "--bundle",
                        f"models:/{REGISTERED_MODEL}@{CHAMPION_ALIAS}", "--out", str(tmp_path / "pod" / "models")],
                       capture_output=True, text=True, env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri,
                                                            "TMPDIR": str(tmp_path / "pod-tmp")})
    assert r.returncode == 0, r.stderr[-2000:]
    assert [p.name for p in (tmp_path / "pod").iterdir()] == ["models"]
    assert f"version {REGISTERED_MODEL}/{champion}" in r.stdout and not any((tmp_path / "pod-tmp").iterdir())
    # a served file changed in the artifact store after the gate passed is refused, by name

    stored = Path(mlflow.artifacts.download_artifacts(f"models:/{REGISTERED_MODEL}/{champion}",
                                                      dst_path=str(tmp_path / "x")))
    router = next(stored.rglob("router.onnx")).read_bytes()
    victims = [p for p in SERVER_DATA[0].rglob("router.onnx") if p.read_bytes() == router]
    assert victims
    for victim in victims:  # the champion's stored copy (byte-identical copies, if any, too)
        victim.write_bytes(router + b"tampered")
    onnx_name = "onnx/router.onnx"
    r = subprocess.run([sys.executable, "-m", "cxrlt.cli", "serve", "build", "--bundle",
                        f"models:/{REGISTERED_MODEL}@{CHAMPION_ALIAS}", "--out", str(tmp_path / "pod2" / "models")],
                       capture_output=True, text=True, env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri})
    assert r.returncode != 0 and "does not match the manifest" in r.stderr and onnx_name in r.stderr


def test_experiment_lookup_is_safe_when_processes_create_it_at_once(mlflow_uri):
    """Eight callers create one experiment at the same moment on a fresh name: all get the same id, and the process
    environment is left alone (mlflow.set_experiment writes MLFLOW_EXPERIMENT_ID there, which later subprocesses
    inherit, and loses the race's loser to the Default experiment)."""
    import os
    import threading

    from mlflow import MlflowClient

    from cxrlt.tracking import experiment_id

    before = os.environ.get("MLFLOW_EXPERIMENT_ID")
    barrier, ids = threading.Barrier(8), []

    def create() -> None:
        barrier.wait()
        ids.append(experiment_id("race-for-one-experiment", MlflowClient(mlflow_uri)))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 8 and len(set(ids)) == 1
    assert MlflowClient(mlflow_uri).get_experiment(ids[0]).name == "race-for-one-experiment"
    assert os.environ.get("MLFLOW_EXPERIMENT_ID") == before
