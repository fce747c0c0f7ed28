"""Servers are recorded by PID *and* start time: stop never signals a process that merely reuses a recorded PID."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from cxrlt.ops import mlflow_server
from cxrlt.ops.procs import alive, idle_priority, same_process, start_time, stop_group
from serving import server


@pytest.fixture
def bystander():
    """An unrelated long-running process (its own session) standing in for whoever got the PID later."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def test_start_time_identifies_a_process(bystander):
    started = start_time(bystander.pid)
    assert started is not None and same_process(bystander.pid, started)
    assert not same_process(bystander.pid, started + 1)
    assert stop_group(bystander.pid, timeout=1, started=started + 1) is False and alive(bystander.pid)


def test_server_down_leaves_a_reused_pid_alone(bystander, tmp_path):
    state = tmp_path / "demo"
    state.mkdir()
    recorded = server.ServerHandle("demo", bystander.pid, "127.0.0.1", 1, 2, 3, str(tmp_path), str(tmp_path / "l"),
                                   start_time(bystander.pid) - 1)  # the server that had this PID started earlier
    (state / "server.json").write_text(json.dumps(recorded.__dict__))
    assert server.stop("demo", timeout=1, state_dir=tmp_path)
    time.sleep(0.2)
    assert alive(bystander.pid) and not (state / "server.json").exists()


def test_mlflow_down_leaves_a_reused_pid_alone(bystander, tmp_path):
    (tmp_path / "mlflow").mkdir()
    (tmp_path / "mlflow" / "server.json").write_text(json.dumps(
        {"pid": bystander.pid, "start_time": start_time(bystander.pid) - 1, "tracking_uri": "http://127.0.0.1:1"}))
    assert mlflow_server.stop(state_dir=tmp_path)
    time.sleep(0.2)
    assert alive(bystander.pid)


def test_the_recorded_process_itself_is_stopped(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    assert stop_group(proc.pid, timeout=5, started=start_time(proc.pid)) is True
    proc.wait(timeout=10)
    assert not alive(proc.pid)


def _child(code: str, **env) -> str:
    import os

    # without the variables by which MLflow turns telemetry off on its own (pytest's, CI providers')
    dropped = ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK", "PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", "GITLAB_CI",
               "JENKINS_URL", "BUILDKITE", "TF_BUILD", "TRAVIS", "CIRCLECI")
    base = {k: v for k, v in os.environ.items() if k not in dropped}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**base, **env}).stdout.strip()


def test_importing_cxrlt_turns_mlflow_telemetry_off_for_the_process_and_its_children():
    code = ("import cxrlt, subprocess, sys\n"
            "from mlflow.telemetry.utils import is_telemetry_disabled\n"
            "read = 'import os; print(os.environ[\"MLFLOW_DISABLE_TELEMETRY\"])'\n"
            "child = subprocess.run([sys.executable, '-c', read], capture_output=True, text=True).stdout.strip()\n"
            "print(is_telemetry_disabled(), child)")
    assert _child(code) == "True true"
    # the control: the same environment without cxrlt has MLflow's telemetry on
    assert _child("from mlflow.telemetry.utils import is_telemetry_disabled; print(is_telemetry_disabled())") == "False"
    # a choice the user made is kept
    assert _child("import cxrlt, os; print(os.environ['MLFLOW_DISABLE_TELEMETRY'])",
                  MLFLOW_DISABLE_TELEMETRY="false") == "false"


def test_idle_priority_applies_to_the_child_only():
    import os

    code = "import os; print(os.sched_getscheduler(0) == os.SCHED_IDLE or os.getpriority(os.PRIO_PROCESS, 0) == 19)"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           preexec_fn=idle_priority)
    assert child.stdout.strip() == "True"
    assert os.sched_getscheduler(0) != os.SCHED_IDLE
