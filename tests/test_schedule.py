"""The cluster commands (`cxrlt pipeline upload | run --host | schedule`, infra/scripts/schedule_retraining.py)
against a stub KFP API server that keeps state: the real kfp.Client over real HTTP."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cxrlt.cli import app
from tests.kfp_stub import posted as _posted

ROOT = Path(__file__).resolve().parents[1]
#: what the README's schedule example passes (the pipeline's required parameters and a trainjob launcher)
README_PARAMS = ["data_dir=/data/datasets/padchest", "config=/opt/cxrlt/configs/paper.yaml",
                 "tracking_uri=http://mlflow.cxrlt.svc.cluster.local:5000", "launcher=trainjob", "num_nodes=2",
                 'jobs=[{"view": "frontal", "member": "pcam"}]']


def test_schedule_is_idempotent_typed_and_complete(kfp_stub, compiled):
    host, state = kfp_stub
    args = ["pipeline", "schedule", "--host", host, "--cron", "0 0 2 * * 0", "--package",
            str(compiled / "training_pipeline.yaml"), *[a for p in README_PARAMS for a in ("--param", p)]]
    for _ in range(2):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
    assert len(state["recurring"]) == 1, "a second call replaces the recurring run instead of adding one"
    assert len(_posted(state, "/apis/v2beta1/recurringruns")) == 2
    assert [m for m, p, _ in state["requests"] if m == "DELETE"] == ["DELETE"]
    run = next(iter(state["recurring"].values()))
    assert run["trigger"]["cron_schedule"]["cron"] == "0 0 2 * * 0"
    assert int(run["max_concurrency"]) == 1 and run["no_catchup"] is True and run["experiment_id"] == "exp-1"
    params = run["runtime_config"]["parameters"]
    assert params["num_nodes"] == 2 and isinstance(params["num_nodes"], int)  # typed by the package, not a string
    assert params["jobs"] == [{"view": "frontal", "member": "pcam"}] and params["launcher"] == "trainjob"
    spec = run["pipeline_spec"]
    spec = spec.get("pipeline_spec", spec)  # with a platform spec the IR is nested under pipeline_spec
    assert spec["pipelineInfo"]["name"] == "cxrlt-training"


@pytest.mark.parametrize(("param", "message"), [
    ("data_uri=s3://x", "no parameter 'data_uri'"),
    ("num_nodes=two", "not a NUMBER_INTEGER"),
])
def test_schedule_refuses_unknown_or_mistyped_parameters(kfp_stub, compiled, param, message):
    host, state = kfp_stub
    result = CliRunner().invoke(app, ["pipeline", "schedule", "--host", host, "--cron", "0 0 2 * * 0", "--package",
                                      str(compiled / "training_pipeline.yaml"), "--param", param])
    assert result.exit_code == 1 and message in result.output
    assert not state["recurring"]


def test_schedule_names_missing_required_parameters(kfp_stub, compiled):
    host, _ = kfp_stub
    result = CliRunner().invoke(app, ["pipeline", "schedule", "--host", host, "--cron", "0 0 2 * * 0", "--package",
                                      str(compiled / "training_pipeline.yaml"), "--param", "data_dir=/data/x"])
    assert result.exit_code == 1 and "config, tracking_uri" in result.output


def test_schedule_refuses_five_field_cron(kfp_stub, tmp_path):
    host, _ = kfp_stub
    result = CliRunner().invoke(app, ["pipeline", "schedule", "--host", host, "--cron", "0 2 * * 0",
                                      "--package", str(tmp_path / "x.yaml")])
    assert result.exit_code == 1 and "6 fields" in result.output


def test_schedule_script_runs_as_its_docstring_says(kfp_stub, compiled):
    """infra/scripts/schedule_retraining.py, run as a program with the parameters its usage shows."""
    host, state = kfp_stub
    script = ROOT / "infra" / "scripts" / "schedule_retraining.py"
    usage = script.read_text().split('"""')[1]
    for param in README_PARAMS[:3]:
        assert param.split("=")[0] + "=" in usage
    done = subprocess.run([sys.executable, str(script), "--host", host, "--package",
                           str(compiled / "training_pipeline.yaml"), "--cron", "0 0 2 * * 0",
                           *[a for p in README_PARAMS for a in ("--param", p)]],
                          capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT),
                                                                          "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(state["recurring"]) == 1 and "scheduled" in done.stdout


def test_run_on_a_cluster_starts_one_run(kfp_stub, compiled):
    host, state = kfp_stub
    result = CliRunner().invoke(app, ["pipeline", "run", "--host", host, "--package",
                                      str(compiled / "training_pipeline.yaml"),
                                      *[a for p in README_PARAMS for a in ("--param", p)]])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["run_id"] == "run-7"  # the UI links go to stderr
    (run,) = _posted(state, "/apis/v2beta1/runs")
    assert run["runtime_config"]["parameters"]["config"] == "/opt/cxrlt/configs/paper.yaml"
    assert run["service_account"] == "cxrlt-pipeline-runner"


def test_upload_names_versions_by_commit_and_is_a_no_op_when_repeated(kfp_stub, compiled):
    host, state = kfp_stub
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                            text=True, check=True).stdout.strip()
    first = CliRunner().invoke(app, ["pipeline", "upload", "--host", host, "--compiled", str(compiled)])
    assert first.exit_code == 0, first.output
    made = json.loads(first.stdout)
    assert {m["version"] for m in made} == {f"{name}-pipeline-{commit}" for name in ("training", "promotion",
                                                                                   "monitor")}
    assert all(m["created"] for m in made) and len(state["pipelines"]) == 3 and len(state["versions"]) == 3
    again = json.loads(CliRunner().invoke(app, ["pipeline", "upload", "--host", host, "--compiled",
                                                str(compiled)]).stdout)
    assert not any(m["created"] for m in again) and len(state["versions"]) == 3
    sizes = {v["display_name"]: v["size"] for v in state["versions"].values()}
    assert sizes[f"training-pipeline-{commit}"] == (compiled / "training_pipeline.yaml").stat().st_size


def test_ci_workflow_lints_tests_compiles_and_uploads_on_main():
    import yaml

    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    steps = [s.get("run", "") for job in workflow["jobs"].values() for s in job["steps"]]
    assert any("make test" in s for s in steps) and any("pipeline compile" in s for s in steps)
    upload = next(job for job in workflow["jobs"].values() if any("pipeline upload" in s.get("run", "")
                                                                 for s in job["steps"]))
    assert "refs/heads/main" in upload["if"]


def test_schedule_points_at_an_uploaded_version(kfp_stub, compiled):
    host, state = kfp_stub
    result = CliRunner().invoke(app, ["pipeline", "schedule", "--host", host, "--cron", "0 0 2 * * 0", "--package",
                                      str(compiled / "training_pipeline.yaml"), "--pipeline-id", "p-9",
                                      "--version-id", "v-3", *[a for p in README_PARAMS for a in ("--param", p)]])
    assert result.exit_code == 0, result.output
    (run,) = state["recurring"].values()
    assert run["pipeline_version_reference"] == {"pipeline_id": "p-9", "pipeline_version_id": "v-3"}
    assert "pipeline_spec" not in run  # the uploaded version runs, not the local package
    half = CliRunner().invoke(app, ["pipeline", "schedule", "--host", host, "--cron", "0 0 2 * * 0",
                                    "--version-id", "v-3"])
    assert half.exit_code == 1 and "together" in half.output
